//! `comfyrs bench …`: comfyrs measuring itself. Results go into BENCHMARKS.md.

mod executor;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Validate, plan, sign and run generated chain and wide prompts of native string nodes.
    Executor(executor::ExecutorBench),
    /// Time WIDEN filter and merge on synthetic keys of real SDXL and Z-Image shapes, dense vs
    /// low-rank, and report GB/s against the bytes the operation must move.
    Widen(comfyrs_nodes::widen::bench::WidenBenchOptions),
}

pub fn main(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Executor(b) => executor::run(&b)?,
        BenchCommand::Widen(opts) => comfyrs_nodes::widen::bench::run(&opts, &mut std::io::stdout().lock())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Median of `reps` timings of `f`, in seconds.
pub fn median_secs(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut t: Vec<f64> = (0..reps.max(1)).map(|_| f()).collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}
