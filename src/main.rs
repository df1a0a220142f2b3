//! comfyrs: run ComfyUI workflows headless, natively where it matters.

mod bench;
mod commands;
mod load;
mod natives;
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

#[derive(Args)]
pub struct ValidateArgs {
    /// Workflow file (API format or UI format).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Override constants as in `run`, before validating.
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
pub struct NodesArgs {
    /// Only this class.
    #[arg(value_name = "CLASS")]
    class: Option<String>,
    /// Only the class names, one per line.
    #[arg(long, conflicts_with = "class")]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Run(args) => commands::run::main(args, cli.quiet),
        Command::Validate(args) => commands::validate::main(args),
        Command::Nodes(args) => commands::nodes::main(args),
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
