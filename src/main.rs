//! comfyrs: run ComfyUI workflows headless, natively where it matters.

mod bench;
mod commands;
mod engine;
mod load;
mod progress;
mod size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "comfyrs",
    version,
    about = "Run ComfyUI workflows headless: WIDEN merges natively on libtorch, everything else through an embedded ComfyUI.",
    after_help = "Examples:\n  comfyrs run workflows/strings.json\n  comfyrs run my_workflow.json --set 3.seed=42 --output-dir out/\n  comfyrs validate my_workflow.json\n  comfyrs nodes StringConcatenate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors, no progress.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run one or more workflows (API prompt or UI workflow JSON). Files share one cache.
    Run(RunArgs),
    /// Check a workflow without running it; prints ComfyUI's error JSON.
    Validate(ValidateArgs),
    /// Print the /object_info record of every registered node, or of one class.
    Nodes(NodesArgs),
    /// Write random-weight models and LoRAs of the real layouts (for tests, demos, benchmarks).
    Fixtures(FixturesArgs),
    /// Measure comfyrs's own speed (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Args)]
pub struct RunArgs {
    /// Workflow files (API format or UI format).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Where output nodes write their files.
    #[arg(long, default_value = "output", value_name = "DIR")]
    output_dir: PathBuf,
    /// Override a constant input: NODE.INPUT=VALUE (NODE is a node id or a unique title;
    /// VALUE is JSON, or a plain string). Repeatable.
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print a machine-readable result (outputs, per-node timings, cache hits) on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args, Clone)]
pub struct CacheArgs {
    /// How node results are kept between workflows of one call: none, lru, ram-pressure
    /// (lru that also gives memory back when the machine runs low).
    #[arg(long, default_value = "lru", value_name = "MODE")]
    cache: comfyrs_runtime::cache::CacheMode,
    /// Upper bound of the result cache, e.g. 4GiB, 512MB.
    #[arg(long, default_value = "8GiB", value_name = "SIZE", value_parser = size::parse_size)]
    cache_bytes: u64,
}

/// Where models come from, ComfyUI's way.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Models root with loras/, checkpoints/, diffusion_models/ (ComfyUI's models folder works).
    #[arg(long, env = "COMFYRS_MODELS_DIR", default_value = "models", value_name = "DIR")]
    pub models_dir: PathBuf,
    /// An extra_model_paths.yaml adding more model folders (ComfyUI's format).
    #[arg(long, env = "COMFYRS_EXTRA_MODEL_PATHS", value_name = "FILE")]
    pub extra_model_paths: Option<PathBuf>,
    /// When to start the embedded Python ComfyUI for non-native nodes: auto (only when a
    /// workflow needs a node comfyrs does not run natively), always, never.
    #[arg(long, default_value = "auto", value_name = "WHEN")]
    pub python: engine::PythonMode,
    /// The ComfyUI checkout to use for Python nodes (default: the one scripts/setup.sh installs).
    #[arg(long, env = "COMFYUI_PATH", value_name = "DIR")]
    pub comfyui: Option<PathBuf>,
    /// A custom node folder to load (repeatable), after the ComfyUI tree's own custom_nodes/.
    #[arg(long = "custom-nodes", value_name = "DIR")]
    pub custom_nodes: Vec<PathBuf>,
}

#[derive(Args)]
pub struct FixturesArgs {
    /// Where to write (a models root: checkpoints/, diffusion_models/, loras/ are created).
    #[arg(long, env = "COMFYRS_MODELS_DIR", default_value = "models", value_name = "DIR")]
    models_dir: PathBuf,
    /// Also write full-size models (GBs of disk: SDXL ~5 GB in fp16, Flux ~24 GB).
    #[arg(long)]
    full_size: bool,
    /// Only these architectures (sdxl, sdxl_clip, zimage, flux, qwen); default all.
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Workflow file (API format or UI format).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Override constants as in `run`, before validating.
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
pub struct NodesArgs {
    /// Only this class.
    #[arg(value_name = "CLASS")]
    class: Option<String>,
    /// Only the class names, one per line.
    #[arg(long, conflicts_with = "class")]
    list: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Run(args) => commands::run::main(args, cli.quiet),
        Command::Validate(args) => commands::validate::main(args),
        Command::Nodes(args) => commands::nodes::main(args),
        Command::Fixtures(args) => commands::fixtures::main(args),
        Command::Bench(cmd) => bench::main(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
