//! comfyrs: run ComfyUI workflows headless, natively where it matters.

mod bench;
mod commands;
mod config;
mod device_limit;
mod engine;
mod host;
mod load;
mod pinned_env;
mod progress;
mod size;
mod venv;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use config::{Config, ConfigArgs};

// Rust's own allocations only (libtorch and Python keep their allocators). The server builds
// many small JSON values on several threads; glibc's malloc took a third of its time there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "comfyrs",
    version,
    about = "Run ComfyUI workflows headless: WIDEN merges natively on libtorch, everything else through an embedded ComfyUI.",
    after_help = "Examples:\n  comfyrs run workflows/strings.json\n  comfyrs run my_workflow.json --set 3.seed=42 --output-dir out/\n  comfyrs validate my_workflow.json\n  comfyrs nodes StringConcatenate\n  comfyrs config --device cpu\n  comfyrs serve --port 8188"
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
    /// Print the API prompt a workflow file runs as (a UI workflow converted: reroutes
    /// followed, bypassed and muted nodes resolved, widget values named, subgraphs flattened).
    Convert(ValidateArgs),
    /// Serve ComfyUI's HTTP/WebSocket API and web frontend, on a queue that survives restarts.
    Serve(commands::serve::ServeArgs),
    /// Run prompts that a `comfyrs serve --broker` hands out through Redis (one worker per GPU,
    /// on any number of hosts).
    Worker(commands::worker::WorkerArgs),
    /// List the workers of a deployment: device, host, the prompt each runs, prompts done, warm
    /// results (from their heartbeats in the broker).
    Workers(commands::workers::WorkersArgs),
    /// Print the /object_info record of every registered node, or of one class.
    Nodes(NodesArgs),
    /// Print the effective configuration: every setting, its value and where it came from
    /// (default, comfyrs.toml, environment, flag).
    Config(ConfigCmdArgs),
    /// Write random-weight models and LoRAs of the real layouts (for tests, demos, benchmarks).
    Fixtures(FixturesArgs),
    /// Draw the report of a WIDEN merge (who won where, divergences, keys left at the backbone)
    /// as a PNG and a table: from a saved merge's metadata, or from the Exits of a workflow it runs.
    Report(ReportArgs),
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
    /// Print a machine-readable result (outputs, per-node timings, cache hits) on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A merge saved by a WIDEN Exit (.safetensors), or a workflow (.json) to run.
    #[arg(value_name = "FILE")]
    path: PathBuf,
    /// The PNG to write (default: FILE's name with .report.png, in the current folder; with
    /// several Exits in a workflow, each Exit's node id is added).
    #[arg(short, long, value_name = "PNG")]
    output: Option<PathBuf>,
    /// For a workflow: where its output nodes write their files.
    #[arg(long, default_value = "output", value_name = "DIR")]
    output_dir: PathBuf,
    /// For a workflow: override a constant input as in `run`.
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Writes into `models_dir` (a models root: checkpoints/, diffusion_models/, loras/ are created).
#[derive(Args)]
pub struct FixturesArgs {
    /// Also write full-size models (GBs of disk: SDXL ~5 GB in fp16, Flux ~24 GB).
    #[arg(long)]
    full_size: bool,
    /// Only these architectures (sdxl, sdxl_clip, zimage, flux, qwen); default all.
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct ConfigCmdArgs {
    /// As JSON: {"key": {"value": ..., "source": ...}}, sizes in bytes.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Workflow file (API format or UI format).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Override constants as in `run` (applied to the converted prompt).
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
pub struct NodesArgs {
    /// Only this class.
    #[arg(value_name = "CLASS")]
    class: Option<String>,
    /// Only the class names, one per line.
    #[arg(long, conflicts_with = "class")]
    list: bool,
    /// Start the embedded ComfyUI even when the record cache is fresh, and rewrite the cache
    /// (the schemas then list the files on disk now).
    #[arg(long)]
    refresh: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

impl Command {
    /// The configuration flags this command takes; the benchmarks of the engine's parts take
    /// none and run on the file and environment layers.
    fn config_args(&self) -> Option<&ConfigArgs> {
        match self {
            Command::Run(a) => Some(&a.config),
            Command::Serve(a) => Some(&a.config),
            Command::Worker(a) => Some(&a.config),
            Command::Workers(a) => Some(&a.config),
            Command::Validate(a) | Command::Convert(a) => Some(&a.config),
            Command::Nodes(a) => Some(&a.config),
            Command::Config(a) => Some(&a.config),
            Command::Fixtures(a) => Some(&a.config),
            Command::Report(a) => Some(&a.config),
            Command::Bench(b) => b.config_args(),
        }
    }
}

impl Command {
    /// Whether the command computes on the device (and so runs under `memory.device`'s cap of
    /// libtorch's allocator, which needs the device's memory measured first).
    fn computes(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Serve(_) | Command::Worker(_) | Command::Bench(_))
    }
}

fn main() -> ExitCode {
    pinned_env::prepare();
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Serve(a) => a.settings_to_config(),
        Command::Worker(a) => a.settings_to_config(),
        Command::Workers(a) => a.settings_to_config(),
        _ => {}
    }
    let logs = comfyrs_server::LogRing::new(comfyrs_server::LOG_CAPACITY);
    init_tracing(cli.verbose, cli.quiet, &logs);
    let no_flags = ConfigArgs::default();
    let config = match Config::load(cli.command.config_args().unwrap_or(&no_flags)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.command.computes() {
        if let Err(e) = device_limit::apply(&config) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Run(args) => commands::run::main(args, &config, cli.quiet),
        Command::Serve(args) => commands::serve::main(args, &config, logs),
        Command::Worker(args) => commands::worker::main(args, &config),
        Command::Workers(args) => commands::workers::main(args, &config),
        Command::Validate(args) => commands::validate::main(args, &config),
        Command::Convert(args) => commands::validate::convert(args, &config),
        Command::Nodes(args) => commands::nodes::main(args, &config),
        Command::Config(args) => commands::config::main(args, &config),
        Command::Fixtures(args) => commands::fixtures::main(args, &config),
        Command::Report(args) => commands::report::main(args, &config, cli.quiet),
        Command::Bench(cmd) => bench::main(cmd, &config),
    };
    match result {
        Ok(code) => code,
        // Whoever read the output has stopped (`comfyrs nodes | head`): a normal end, as for cat.
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether an error is a write to a stdout whose reader has gone. Rust ignores SIGPIPE, so the
/// write fails with this kind instead of ending the process.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Logs go to stderr, filtered by -v/-q or RUST_LOG; they are also kept in `logs`, the recent
/// log `comfyrs serve` shows at /internal/logs (info and above, whatever the terminal shows).
fn init_tracing(verbose: u8, quiet: bool, logs: &std::sync::Arc<comfyrs_server::LogRing>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(filter);
    let kept = logs.layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry().with(terminal).with(kept).init();
}
