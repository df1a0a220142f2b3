//! `comfyrs bench …`: comfyrs measuring itself. Results go into BENCHMARKS.md.

mod cluster;
mod executor;
#[cfg(feature = "python")]
mod image_loop;
#[cfg(feature = "python")]
mod loop_weights;
mod merge;
mod merge_reference;
mod reference;
mod server;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Validate, plan, sign and run generated chain and wide prompts of native string nodes.
    Executor(executor::ExecutorBench),
    /// Time WIDEN filter and merge on synthetic keys of real SDXL and Z-Image shapes, dense vs
    /// low-rank, and report GB/s against the bytes the operation must move.
    Widen(comfyrs_testkit::widen_bench::WidenBenchOptions),
    /// Run WIDEN merges of one to four LoRAs on a full-size SDXL UNet and a 7-LoRA Z-Image
    /// compose (with --workloads also Flux-dev, Qwen-Image in fp8 and SDXL's text encoders) end
    /// to end through the executor: cold, after a LoRA strength change and after a t_factor
    /// change, with peak host memory and a bit-exactness check; optionally side by side with the
    /// Python WIDEN node pack. Generates random-weight models on first use.
    Merge(merge::MergeBench),
    /// `comfyrs serve` on loopback as a client sees it: POST /prompt → execution_success for a
    /// one-node and 1,000-node prompts, their progress_state bytes, and queued throughput.
    Server(server::ServerBench),
    /// A redis-server, `comfyrs serve --broker` and 1, 2, 4 `comfyrs worker`s on this machine,
    /// running prompts whose one node waits a fixed time: throughput per worker count, the time
    /// the broker adds per prompt over a server without one, and a WIDEN slider change with
    /// cache affinity.
    Cluster(cluster::ClusterBench),
    /// A slider change to the next image: a WIDEN merge feeding ComfyUI's KSampler, VAEDecode
    /// and SaveImage on one executor, timed to the sampler's first step and to the saved image
    /// after new seeds, t_factor changes and LoRA strength changes; optionally side by side with
    /// plain ComfyUI and the Python WIDEN node pack, comparing the images and the merged weights.
    /// Generates a random-weight SDXL checkpoint and LoRAs on first use.
    #[cfg(feature = "python")]
    Loop(image_loop::LoopBench),
    /// Start the embedded ComfyUI (timed by phase) and measure the overhead of a bridged call
    /// beyond the Python function's own time.
    #[cfg(feature = "python")]
    Bridge {
        /// Calls to time (the median is reported).
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        #[command(flatten)]
        config: crate::config::ConfigArgs,
    },
}

impl BenchCommand {
    /// Whether the bench times WIDEN merges through the engine.
    fn times_merges(&self) -> bool {
        match self {
            BenchCommand::Merge(_) => true,
            #[cfg(feature = "python")]
            BenchCommand::Loop(_) => true,
            _ => false,
        }
    }

    pub fn config_args(&self) -> Option<&crate::config::ConfigArgs> {
        match self {
            #[cfg(feature = "python")]
            BenchCommand::Bridge { config, .. } => Some(config),
            BenchCommand::Merge(m) => Some(&m.config),
            #[cfg(feature = "python")]
            BenchCommand::Loop(l) => Some(&l.config),
            _ => None,
        }
    }
}

// `bench merge` takes its merge settings from the configuration (its flags too), `bench bridge`
// its engine.
pub fn main(cmd: BenchCommand, config: &crate::config::Config) -> Result<ExitCode> {
    if cmd.times_merges() {
        warn_if_debug_slows_merges(config);
    }
    match cmd {
        BenchCommand::Executor(b) => executor::run(&b)?,
        BenchCommand::Widen(opts) => comfyrs_testkit::widen_bench::run(&opts, &mut std::io::stdout().lock())?,
        BenchCommand::Merge(opts) => merge::run(&opts, crate::engine::merge_settings(config), &|| crate::engine::memory_budget(config))?,
        BenchCommand::Server(opts) => server::run(&opts, config)?,
        BenchCommand::Cluster(opts) => cluster::run(&opts)?,
        #[cfg(feature = "python")]
        BenchCommand::Loop(opts) => image_loop::run(&opts, config)?,
        #[cfg(feature = "python")]
        BenchCommand::Bridge { calls, .. } => {
            let mut engine = crate::engine::Engine::new(config)?;
            engine.start_python(None)?;
            let bridge = comfyrs_bridge::Bridge::running().ok_or_else(|| anyhow::anyhow!("the embedded ComfyUI did not start"))?;
            let report = comfyrs_bridge::bench::run(&bridge, calls)?.render();
            std::io::Write::write_all(&mut std::io::stdout().lock(), format!("{report}\n").as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With debug logging (`-v`) each step of a merge on a GPU waits for the device, so that the log
/// can time the step: the merge then takes longer than without it (W2 under a 24 GiB limit: 73
/// against 51 ms on an H200). Said before any row is measured.
fn warn_if_debug_slows_merges(config: &crate::config::Config) {
    if comfyrs_nodes::merge::exit::steps_wait_for_device() && config.device.resolve().is_cuda() {
        tracing::warn!("-v: every step of a merge waits for the GPU so that the log can time it; merges measured here take longer than without -v");
    }
}

/// Median of `reps` timings of `f`, in seconds.
pub fn median_secs(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    median((0..reps.max(1)).map(|_| f()).collect())
}

/// The median of measurements (the upper one of an even count); `v` is not empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
