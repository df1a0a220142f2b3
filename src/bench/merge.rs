//! `comfyrs bench merge`: the WIDEN merge workloads of BENCHMARKS.md, end to end through the
//! executor, on generated full-size models (random weights in the real layouts).
//!
//! - W1: one LoRA merged at t 1.0.
//! - W2: a compose of {LoRA0 @0.8 + LoRA1 @0.5} and {LoRA2 @1.0} merged at t 1.0, then LoRA3 @1.0
//!   chained at t 0.5; then only LoRA3's strength changes, then only the last t.
//! - W3: a compose of four single-LoRA branches at t 1.0.
//! - Z-Image: a compose of seven single-LoRA branches at t 1.0.
//! - Flux-dev (bf16) and Qwen-Image (fp8 e4m3fn, as ComfyUI distributes it): a compose of four
//!   single-LoRA branches at t 1.0. Flux's LoRAs cover every linear layer, its fused `qkv` and
//!   `linear1` weights among them.
//! - SDXL CLIP: the text encoders of a full SDXL checkpoint, a compose of two LoRAs through the CLIP
//!   Exit, then the same merge saved (`save_model`: one file per text encoder).
//!
//! SDXL: fp16 UNet, rank-32 LoRAs on every attention projection, proj_in and proj_out (582 keys).
//! Z-Image, Qwen-Image and CLIP: rank-32 LoRAs on their attention projections. Timings are the whole
//! prompt (recipe nodes, Exit, results in host memory in each key's dtype). "Cold" runs start
//! with empty WIDEN caches (subtree results, statistics, device-resident LoRA factors) on an
//! executor that has the base model open, as a server has after its first prompt; the "changed"
//! rows follow the previous run the way a slider change does. The first run of the process
//! (mapping the base, parsing the LoRA files) is reported on its own.
//!
//! With `--reference PACK_DIR` the same prompts, in the order they ran, then run in plain ComfyUI
//! with the Python WIDEN node pack (src/bench/merge_reference.rs), and each row gets both sides.

use std::path::{Path, PathBuf};
use std::io::Write;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use comfyrs_nodes::arch::layout::{layout, LayoutSize};
use comfyrs_nodes::arch::Arch;
use comfyrs_testkit::fixtures::{write_base_model, write_lora, FixtureKind, LoraFixture, LoraTargets};
use comfyrs_nodes::lora::LoraNaming;
use comfyrs_nodes::models::{FileDtype, ModelFolders};
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::NoEvents;
use comfyrs_runtime::memory::MemoryBudget;
use comfyrs_runtime::executor::{Executor, RunOptions};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use comfyrs_runtime::node::{Args as NodeArgs, CallOutput, ExecContext, NodeClass, NodeError};
use comfyrs_runtime::schema::{InputSpec, NodeSchema};
use comfyrs_runtime::{Registry, Value};
use comfyrs_nodes::cuda::{device_memory, release_cached, CudaRuntime, PeakWatch};
use comfyrs_nodes::pack::{MergeEngine, MergeSettings, NativeModel};
use std::sync::Arc;
use serde_json::{json, Map, Value as Json};

use super::median;
use super::merge_reference::LoggedRun;
use crate::progress::fmt_secs;

#[derive(Args)]
pub struct MergeBench {
    /// Where the generated models are kept between runs (written on first use: ~5 GB for SDXL,
    /// ~7 GB for the SDXL checkpoint of `clip`, ~12 GB for Z-Image, ~24 GB for Flux-dev, ~20 GB for
    /// Qwen-Image) [default: $COMFYRS_CACHE/bench-models, else ~/.cache/comfyrs/bench-models].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Workloads to run (flux, qwen and clip write their models on first use: see --dir).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,zimage", value_parser = ["w1", "w2", "w3", "zimage", "flux", "qwen", "clip"])]
    workloads: Vec<String>,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The tiny layouts instead of full size (a quick check of the benchmark itself on a CPU).
    #[arg(long)]
    tiny: bool,
    /// Let each engine's device warm-up finish before its first run, as a server's does before
    /// its first prompt (`comfyrs run` and `serve` start it with the engine).
    #[arg(long)]
    warm_up: bool,
    /// Hold each base model's weights on the device while its workloads run, as ComfyUI holds
    /// the model it samples with (with --device-memory: a consumer card that also samples).
    #[arg(long)]
    hold_base: bool,
    #[command(flatten)]
    reference: super::reference::ReferenceArgs,
    /// The configuration (`--device-memory 24GiB` runs the workloads as on a 24 GiB card).
    #[command(flatten)]
    pub config: crate::config::ConfigArgs,
}

struct Setup {
    /// The base: a diffusion model's file name, or with `clip` a checkpoint's.
    base: String,
    loras: Vec<String>,
    /// Bytes of the base file.
    base_bytes: u64,
    /// Bytes of the LoRA files (mapped too while they are read).
    lora_bytes: u64,
    /// A CLIP merge (the checkpoint's text encoders).
    clip: bool,
}

/// With `--hold-base`, the base's weights on `device`, held by the caller while its workloads run.
fn hold_base(opts: &MergeBench, dir: &Path, s: &Setup, device: tch::Device) -> Result<Vec<tch::Tensor>> {
    if !opts.hold_base {
        return Ok(Vec::new());
    }
    let m = NativeModel::open(&dir.join("diffusion_models").join(&s.base), &s.base, comfyrs_nodes::recipe::RecipeDomain::Diffusion)
        .map_err(|e| anyhow!("holding the base on the device: {e}"))?;
    let held = m
        .keys()
        .map(|k| Ok(m.tensor(k).map_err(|e| anyhow!("{e}"))?.f_to_device(device)?))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            if first.contains("out of memory") {
                anyhow!("--hold-base: {} does not fit on {device:?} under this device memory limit ({first}); raise --device-memory or leave --hold-base out", s.base)
            } else {
                anyhow!("--hold-base: holding {} on {device:?}: {first}", s.base)
            }
        })?;
    let bytes: usize = held.iter().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum();
    eprintln!("holding the base on {device:?}: {}", gib(bytes as u64));
    Ok(held)
}

fn bench_dir(opts: &MergeBench) -> PathBuf {
    if let Some(d) = &opts.dir {
        return d.clone();
    }
    comfyrs_runtime::paths::cache_root().join("bench-models")
}

/// Writes the base and `n` LoRAs of `arch` unless they are there.
fn ensure_models(dir: &Path, arch: Arch, size: LayoutSize, dtype: FileDtype, n: usize) -> Result<Setup> {
    let sz = if size == LayoutSize::Full { "full" } else { "tiny" };
    let l = layout(arch, size);
    let base_rel = format!("bench/{}_{sz}_{}.safetensors", arch.tag(), dtype.name().to_ascii_lowercase());
    let base_path = dir.join("diffusion_models").join(&base_rel);
    if !base_path.exists() {
        eprintln!("writing {}", base_path.display());
        write_base_model(&base_path, &l, dtype, 0, false)?;
    }
    let loras = ensure_loras(dir, arch, size, n)?;
    let base_bytes = std::fs::metadata(&base_path)?.len();
    Ok(Setup { base: base_rel, lora_bytes: lora_bytes(dir, &loras)?, loras, base_bytes, clip: false })
}

/// The full SDXL checkpoint (UNet, both text encoders, VAE; fp16) that `bench loop` samples with
/// and the CLIP workload merges the text encoders of; its name under `checkpoints/`.
pub(super) fn ensure_sdxl_checkpoint(dir: &Path, size: LayoutSize) -> Result<String> {
    let sz = if size == LayoutSize::Full { "full" } else { "tiny" };
    let rel = format!("bench/sdxl_checkpoint_{sz}_f16.safetensors");
    let path = dir.join("checkpoints").join(&rel);
    if !path.exists() {
        eprintln!("writing {}", path.display());
        comfyrs_testkit::fixtures::write_sdxl_checkpoint(&path, size, FileDtype::F16, 0)?;
    }
    Ok(rel)
}

/// The CLIP workload's models: the SDXL checkpoint and `n` LoRAs of its text encoders.
fn ensure_clip_models(dir: &Path, size: LayoutSize, n: usize) -> Result<Setup> {
    let base = ensure_sdxl_checkpoint(dir, size)?;
    let base_bytes = std::fs::metadata(dir.join("checkpoints").join(&base))?.len();
    let loras = ensure_loras(dir, Arch::SdxlClip, size, n)?;
    Ok(Setup { base, lora_bytes: lora_bytes(dir, &loras)?, loras, base_bytes, clip: true })
}

fn lora_bytes(dir: &Path, loras: &[String]) -> Result<u64> {
    loras.iter().map(|l| Ok(std::fs::metadata(dir.join("loras").join(l))?.len())).sum()
}

/// Writes `n` rank-32 LoRAs of `arch` (fp16) unless they are there;
/// returns their names under `loras/`.
pub(super) fn ensure_loras(dir: &Path, arch: Arch, size: LayoutSize, n: usize) -> Result<Vec<String>> {
    let sz = if size == LayoutSize::Full { "full" } else { "tiny" };
    let l = layout(arch, size);
    let mut loras = Vec::new();
    // Names the Python pack reads for every key too, so that `--reference` merges the same: kohya's
    // for SDXL and its text encoders, ComfyUI's (`diffusion_model.<name>`) for the transformers
    // (the pack misreads kohya names of Z-Image and Qwen-Image keys and some of Flux's). Flux
    // LoRAs on every linear layer, its fused `qkv` and `linear1` weights among them, as Flux
    // trainers write them; the others on the attention projections.
    let (naming, tag) = match arch {
        Arch::Sdxl | Arch::SdxlClip => (LoraNaming::Kohya, ""),
        Arch::Zimage | Arch::Qwen | Arch::Flux => (LoraNaming::DiffusionModel, "_dm"),
    };
    let (targets, file) = if arch == Arch::Flux { (LoraTargets::All, "all") } else { (LoraTargets::Attention, "attn") };
    for i in 0..n {
        let rel = format!("bench/{}_{sz}{tag}_{file}_r32_{i}.safetensors", arch.tag());
        let path = dir.join("loras").join(&rel);
        if !path.exists() {
            eprintln!("writing {}", path.display());
            let spec = LoraFixture {
                arch,
                naming,
                kind: FixtureKind::Lora,
                rank: 32,
                dtype: FileDtype::F16,
                seed: 1 + 1_000_003 * i as u64,
                targets,
            };
            write_lora(&path, &l, &spec)?;
        }
        loras.push(rel);
    }
    Ok(loras)
}

/// Prompt builder: node ids in insertion order; `clip` builds a CLIP recipe (the CLIP nodes).
struct P {
    nodes: Map<String, Json>,
    clip: bool,
}

impl P {
    fn new(s: &Setup) -> Self {
        let mut m = Map::new();
        let base = if s.clip {
            json!({"class_type": "WIDENCLIPBaseInput", "inputs": {"ckpt_name": s.base}})
        } else {
            json!({"class_type": "WIDENBaseInput", "inputs": {"model_name": s.base}})
        };
        m.insert("base".into(), base);
        P { nodes: m, clip: s.clip }
    }
    /// `WIDEN{class}`, or its CLIP twin.
    fn class(&self, class: &str) -> String {
        format!("WIDEN{}{class}", if self.clip { "CLIP" } else { "" })
    }
    fn add(&mut self, id: &str, class: &str, inputs: Json) -> Json {
        self.nodes.insert(id.into(), json!({"class_type": class, "inputs": inputs}));
        json!([id, 0])
    }
    fn lora(&mut self, id: &str, name: &str, strength: f64, prev: Option<Json>) -> Json {
        let mut inputs = json!({"lora_name": name, "strength": strength});
        if let Some(p) = prev {
            inputs["prev"] = p;
        }
        let class = self.class("LoRA");
        self.add(id, &class, inputs)
    }
    fn compose(&mut self, id: &str, branches: &[Json]) -> Json {
        let mut prev: Option<Json> = None;
        for (i, b) in branches.iter().enumerate() {
            let mut inputs = json!({"branch": b});
            if let Some(p) = prev {
                inputs["compose"] = p;
            }
            let class = self.class("Compose");
            prev = Some(self.add(&format!("{id}_{i}"), &class, inputs));
        }
        prev.expect("a compose has branches")
    }
    fn merge(&mut self, id: &str, base: Json, target: Json, t: f64) -> Json {
        let class = self.class("Merge");
        self.add(id, &class, json!({"base": base, "target": target, "t_factor": t}))
    }
    fn finish(mut self, model: Json) -> Json {
        if self.clip {
            let exit = self.add("exit", "WIDENCLIPExit", json!({"widen_clip": model}));
            self.add("sink", "BenchKeepClip", json!({"clip": exit}));
        } else {
            let exit = self.add("exit", "WIDENExit", json!({"widen": model}));
            self.add("sink", "BenchKeep", json!({"model": exit}));
        }
        Json::Object(self.nodes)
    }
}

fn w1(s: &Setup) -> Json {
    let mut p = P::new(s);
    let l = p.lora("l0", &s.loras[0], 1.0, None);
    let m = p.merge("m", json!(["base", 0]), l, 1.0);
    p.finish(m)
}

fn w2(s: &Setup, s3: f64, t_last: f64) -> Json {
    let mut p = P::new(s);
    let l0 = p.lora("l0", &s.loras[0], 0.8, None);
    let l01 = p.lora("l1", &s.loras[1], 0.5, Some(l0));
    let l2 = p.lora("l2", &s.loras[2], 1.0, None);
    let c = p.compose("c", &[l01, l2]);
    let m1 = p.merge("m1", json!(["base", 0]), c, 1.0);
    let l3 = p.lora("l3", &s.loras[3], s3, None);
    let m2 = p.merge("m2", m1, l3, t_last);
    p.finish(m2)
}

fn compose_all(s: &Setup) -> Json {
    let mut p = P::new(s);
    let branches: Vec<Json> = s.loras.iter().enumerate().map(|(i, l)| p.lora(&format!("l{i}"), l, 1.0, None)).collect();
    let c = p.compose("c", &branches);
    let m = p.merge("m", json!(["base", 0]), c, 1.0);
    p.finish(m)
}

/// The benchmark's output node: keeps the merged model it receives (its digest is taken after
/// the timings). `clip` takes the CLIP Exit's output.
struct Keep {
    kept: Kept,
    clip: bool,
}

/// The last merged model the benchmark's output node received.
type Kept = Arc<std::sync::Mutex<Option<Arc<NativeModel>>>>;

impl NodeClass for Keep {
    fn schema(&self) -> Arc<NodeSchema> {
        let (class, input) = if self.clip { ("BenchKeepClip", InputSpec::socket("clip", "CLIP")) } else { ("BenchKeep", InputSpec::socket("model", "MODEL")) };
        Arc::new(NodeSchema::new(class, class, "bench").input(input).output_node())
    }
    fn execute(&self, _: &ExecContext, args: &NodeArgs) -> Result<CallOutput, NodeError> {
        if let Some(Value::Handle(h)) = args.get(if self.clip { "clip" } else { "model" }) {
            let any: Arc<dyn std::any::Any + Send + Sync> = h.clone();
            *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = any.downcast::<NativeModel>().ok();
        }
        Ok(CallOutput::default())
    }
}

/// Digest of the last merged model the benchmark produced.
fn kept_digest(kept: &Kept) -> Result<String> {
    let kept = kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let model = kept.context("no merged model was produced")?;
    Ok(model.overrides_digest()?)
}

/// Resident-set peak of this process since the last [`reset_peak`], bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn reset_peak() {
    // "5" resets the peak resident set size (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Runner {
    reg: Registry,
    /// The merge engine the runner's Exits use (its caches persist across the runner's runs).
    engine: Arc<MergeEngine>,
    /// What the output node received last.
    kept: Kept,
    /// Digests of the cold runs' results, in order.
    digests: Vec<String>,
    exec: Executor,
    n: usize,
    /// Counts cold runs: each gets its own Exit `model_name` (unused without saving), so the
    /// executor re-runs the Exit instead of answering from its own output cache.
    cold_runs: usize,
    /// The row the next runs count for (`None`: they set up the next one).
    row: Option<String>,
    /// Whether runs go into `log` (not the extra runs that measure peak device memory).
    logging: bool,
    /// The runs, in order, for the reference to replay.
    log: Vec<LoggedRun>,
}

impl Runner {
    fn new(models: &Path, settings: &MergeSettings, budget: Arc<MemoryBudget>) -> Result<Self> {
        let mut reg = Registry::new();
        let engine = MergeEngine::new(settings.clone(), budget)?;
        comfyrs_core::register(&mut reg);
        comfyrs_nodes::pack::register(&mut reg, ModelFolders::new(models), engine.clone());
        let kept = Kept::default();
        reg.register(Arc::new(Keep { kept: kept.clone(), clip: false }));
        reg.register(Arc::new(Keep { kept: kept.clone(), clip: true }));
        Ok(Runner {
            reg,
            engine,
            kept,
            digests: Vec::new(),
            exec: Executor::new(CacheMode::Lru, 1 << 30),
            n: 0,
            cold_runs: 0,
            row: None,
            logging: true,
            log: Vec::new(),
        })
    }

    /// Runs a prompt; returns wall seconds and the Exit's statistics.
    fn run(&mut self, prompt: &Json) -> Result<(f64, Json)> {
        self.run_logged(prompt, false)
    }

    fn run_logged(&mut self, prompt: &Json, cold: bool) -> Result<(f64, Json)> {
        if self.logging {
            self.log.push(LoggedRun { row: self.row.clone(), prompt: prompt.clone(), cold });
        }
        let (p, _) = Prompt::parse(&prompt.to_string()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let v = validate(p, &self.reg, None).map_err(|r| anyhow::anyhow!("prompt rejected: {}", r.to_json()))?;
        self.n += 1;
        let opts = RunOptions {
            prompt_id: format!("bench-{}", self.n),
            extra_pnginfo: None,
            output_dir: std::env::temp_dir(),
            events: &NoEvents,
            extra_data: None,
            registry: Some(&self.reg),
        };
        // The previous result goes, as it would when a server replaces it; holding it would add
        // one output to this run's peak memory.
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        let start = Instant::now();
        let report = self.exec.run(&v, &opts);
        let secs = start.elapsed().as_secs_f64();
        if !report.success() {
            bail!("run failed: {:?}", report.errors.iter().map(|e| e.to_json()).collect::<Vec<_>>());
        }
        let mut stats = report.outputs.get("exit").and_then(|o| o.get("widen")).and_then(|w| w.get(0)).cloned().unwrap_or(Json::Null);
        // Where the time outside the Exit's own work goes: the node call around it (arguments,
        // outputs) and the rest of the executor's run (scheduling, caching, other nodes).
        if let (Some(node), Json::Object(m)) = (report.nodes.iter().find(|n| n.id == "exit"), &mut stats) {
            m.insert("bench_node_seconds".into(), json!(node.seconds));
            m.insert("bench_run_seconds".into(), json!(secs));
        }
        Ok((secs, stats))
    }
}

/// What the runner's subtree cache holds, for the report.
fn cache_line(r: &Runner, what: &str) -> String {
    let c = r.engine.subtree_cache().stats();
    format!(
        "Subtree cache after {what}: {} in host memory, {} in device memory; engine budget: {}.",
        gib(c.bytes as u64),
        gib(c.device_bytes as u64),
        r.engine.budget().usage().summary()
    )
}

impl Runner {
    /// `prompt` with empty WIDEN caches and the Exit forced to run.
    fn run_cold(&mut self, prompt: &Json) -> Result<(f64, Json)> {
        // Empty tensor caches; the parsed LoRA files stay memoized, as for any later run.
        self.engine.clear_caches();
        self.cold_runs += 1;
        let mut p = prompt.clone();
        p["exit"]["inputs"]["model_name"] = json!(format!("bench-cold-{}", self.cold_runs));
        self.run_logged(&p, true)
    }
}

struct Row {
    what: String,
    secs: f64,
    exit_secs: f64,
    /// The most device memory in use while the row's runs ran (None on the CPU).
    peak_device: Option<u64>,
    detail: String,
}

/// Each row's peak device memory, measured apart from its timings: an extra, untimed run of the
/// row's prompt after libtorch's allocator gave back what it keeps cached (so the peak is the
/// row's own), with the device sampled while it runs. Giving the cache back inside the timed
/// runs would make each of them pay for fresh device allocations.
struct DeviceWatch(Option<(Arc<CudaRuntime>, usize)>);

impl DeviceWatch {
    fn new(settings: &MergeSettings) -> DeviceWatch {
        DeviceWatch(match settings.device {
            tch::Device::Cuda(i) => CudaRuntime::find().map(|rt| (Arc::new(rt), i)),
            _ => None,
        })
    }

    /// The device memory in use now. Right after a process's first run, with nothing given
    /// back since, that is the run's peak: the allocator keeps what it took.
    fn in_use_now(&self) -> Option<u64> {
        let (rt, i) = self.0.as_ref()?;
        device_memory(rt, *i).map(|m| m.total - m.free)
    }

    /// Runs `setup`, then `f` from an emptied allocator cache; the peak while `f` ran. Nothing
    /// runs on the CPU.
    fn peak_of(
        &self,
        r: &mut Runner,
        setup: impl FnOnce(&mut Runner) -> Result<()>,
        f: impl FnOnce(&mut Runner) -> Result<()>,
    ) -> Result<Option<u64>> {
        let Some((rt, i)) = &self.0 else { return Ok(None) };
        // Not the reference's to replay: they measure this side's memory only.
        r.logging = false;
        let measured = (|| {
            setup(r)?;
            release_cached(rt, *i);
            let watch = PeakWatch::start(rt.clone(), *i);
            f(r)?;
            Ok(Some(watch.stop()))
        })();
        r.logging = true;
        measured
    }
}

/// With `wanted`, runs the engine's device warm-up to its end and says how long it took; the
/// first run's label then says it came after one.
fn warm_up(r: &Runner, wanted: bool, what: &str) -> Result<&'static str> {
    if !wanted {
        return Ok("");
    }
    match r.engine.warm_up() {
        Some(h) => {
            let took = h.join().map_err(|_| anyhow::anyhow!("the device warm-up panicked"))?;
            eprintln!("{what}: device warm-up {}", fmt_secs(took.as_secs_f64()));
            Ok(", after the warm-up")
        }
        None => Ok(""),
    }
}

/// The first run on a new executor: opening the base, parsing the LoRAs, and on a GPU the
/// CUDA libraries' own start-up, reported on its own row.
fn first_run(r: &mut Runner, dw: &DeviceWatch, what: &str, prompt: &Json, rows: &mut Vec<Row>) -> Result<()> {
    r.row = Some(what.into());
    let (secs, st) = r.run_cold(prompt)?;
    r.row = None;
    let peak_device = dw.in_use_now();
    rows.push(Row { what: what.into(), secs, exit_secs: st["seconds"].as_f64().unwrap_or(f64::NAN), peak_device, detail: summary(&st) });
    Ok(())
}

/// Cold runs of `prompt` (see the module doc).
fn cold(r: &mut Runner, dw: &DeviceWatch, what: &str, prompt: &Json, repeat: usize, rows: &mut Vec<Row>) -> Result<Json> {
    let (mut walls, mut exits) = (Vec::new(), Vec::new());
    let mut last = Json::Null;
    r.row = Some(what.into());
    for _ in 0..repeat.max(1) {
        let (secs, stats) = r.run_cold(prompt)?;
        walls.push(secs);
        exits.push(stats["seconds"].as_f64().unwrap_or(f64::NAN));
        last = stats;
    }
    r.row = None;
    // For comparing paths across runs (e.g. COMFYRS_WIDEN_PINNED=0 moves data without staging).
    let digest = kept_digest(&r.kept)?;
    r.digests.push(format!("{}: {}", what.split(':').next().unwrap_or(what), &digest[..16]));
    let peak_device = dw.peak_of(r, |_| Ok(()), |r| r.run_cold(prompt).map(drop))?;
    rows.push(Row { what: what.into(), secs: median(walls), exit_secs: median(exits), peak_device, detail: summary(&last) });
    Ok(last)
}

fn summary(stats: &Json) -> String {
    let ms = |k: &str| format!("{:.0}", stats["phases"][k].as_f64().unwrap_or(f64::NAN) * 1e3);
    let secs = |k: &str| stats[k].as_f64().unwrap_or(f64::NAN);
    let (exit, node, run) = (secs("seconds"), secs("bench_node_seconds"), secs("bench_run_seconds"));
    // Chunks retried smaller after running out of device memory, when any were.
    let retries = match stats["oom_retries"].as_u64() {
        Some(n) if n > 0 => format!(" ({n} out of device memory, retried smaller)"),
        _ => String::new(),
    };
    // Results that went to page-locked host memory: the blocks they took.
    let blocks = match stats["result_blocks_bytes"].as_u64() {
        Some(b) => format!("; results in {} of page-locked blocks", gib(b)),
        None => String::new(),
    };
    format!(
        "{} keys, {} recomputed in {} chunks{retries}, {} subtree hits, {} rebuilt from their products, {} base keys from kept copies, {} statistics reused; \
         ms: analysis {}, load {}, compute {}, results {}, report {}; around the Exit: node call {:.1}, executor {:.1}{blocks}",
        stats["keys"],
        stats["recomputed"],
        stats["chunks"],
        stats["subtree_hits"],
        stats["subtrees_rebuilt"],
        stats["base_hits"],
        stats["stats_hits"],
        ms("analysis"),
        ms("load"),
        ms("compute"),
        ms("results"),
        ms("report"),
        (node - exit) * 1e3,
        (run - node) * 1e3
    )
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// W2's slider changes on one executor, as in a server: each repetition runs W2 cold, then moves
/// LoRA3's strength, then the last t; then checks the incremental result against a cold run.
fn slider_changes(r: &mut Runner, dw: &DeviceWatch, s: &Setup, repeat: usize, rep: &mut Report) -> Result<()> {
    const STRENGTH: &str = "W2, LoRA3 strength changed";
    const LAST_T: &str = "W2, last t changed";
    let (mut strength, mut last_t, mut stats_s, mut stats_t) = (Vec::new(), Vec::new(), Json::Null, Json::Null);
    for i in 0..repeat.max(1) {
        r.run_cold(&w2(s, 1.0, 0.5))?;
        let s3 = 0.9 - 0.1 * i as f64;
        r.row = Some(STRENGTH.into());
        let (secs, st) = r.run(&w2(s, s3, 0.5))?;
        strength.push((secs, st["seconds"].as_f64().unwrap_or(f64::NAN)));
        stats_s = st;
        r.row = Some(LAST_T.into());
        let (secs, st) = r.run(&w2(s, s3, 0.6 + 0.1 * i as f64))?;
        last_t.push((secs, st["seconds"].as_f64().unwrap_or(f64::NAN)));
        stats_t = st;
        r.row = None;
    }
    // The incremental result must be the cold result, bit for bit.
    let incremental = kept_digest(&r.kept)?;
    let last = repeat.max(1) - 1;
    r.run_cold(&w2(s, 0.9 - 0.1 * last as f64, 0.6 + 0.1 * last as f64))?;
    let cold_digest = kept_digest(&r.kept)?;
    if incremental != cold_digest {
        bail!("W2 after slider changes differs from a cold run of the same recipe ({incremental} vs {cold_digest})");
    }
    rep.checks.push(format!("W2 after the slider changes = a cold run of its recipe, bit for bit: digest {}", &cold_digest[..16]));
    // Each change's own peak, after the run it follows (whose cache entries stay).
    let peak_s = dw.peak_of(r, |r| r.run_cold(&w2(s, 1.0, 0.5)).map(drop), |r| r.run(&w2(s, 0.85, 0.5)).map(drop))?;
    let peak_t = dw.peak_of(r, |_| Ok(()), |r| r.run(&w2(s, 0.85, 0.55)).map(drop))?;
    for (what, v, st, peak_device) in [(STRENGTH, strength, stats_s, peak_s), (LAST_T, last_t, stats_t, peak_t)] {
        rep.rows.push(Row {
            what: what.into(),
            secs: median(v.iter().map(|x| x.0).collect()),
            exit_secs: median(v.iter().map(|x| x.1).collect()),
            peak_device,
            detail: summary(&st),
        });
    }
    Ok(())
}

/// One transformer's compose of every LoRA (Z-Image, Flux-dev, Qwen-Image): its models, a first
/// run on an engine of its own, then cold runs.
struct Dit {
    arch: Arch,
    dtype: FileDtype,
    loras: usize,
    /// Its rows' name.
    name: &'static str,
}

const DITS: [(&str, Dit); 3] = [
    ("zimage", Dit { arch: Arch::Zimage, dtype: FileDtype::BF16, loras: 7, name: "Z-Image" }),
    ("flux", Dit { arch: Arch::Flux, dtype: FileDtype::BF16, loras: 4, name: "Flux-dev" }),
    ("qwen", Dit { arch: Arch::Qwen, dtype: FileDtype::F8E4M3, loras: 4, name: "Qwen-Image (fp8 e4m3fn)" }),
];

/// A workload's peak host memory, against what it maps (its base and LoRA files) and makes (the
/// merged keys).
struct MemoryRow {
    what: &'static str,
    /// Peak resident set since the last [`reset_peak`].
    peak: Option<u64>,
    output: u64,
    base: u64,
    loras: u64,
}

impl MemoryRow {
    /// The peak since the last [`reset_peak`], for a workload of `s` whose last Exit reported
    /// `stats` (its merged bytes).
    fn measured(what: &'static str, s: &Setup, stats: &Json) -> MemoryRow {
        MemoryRow { what, peak: peak_rss(), output: stats["bytes"].as_u64().unwrap_or(0), base: s.base_bytes, loras: s.lora_bytes }
    }

    /// What the workload may hold: the files it maps, the merged keys, and 2 GiB besides.
    fn bound(&self) -> u64 {
        self.base + self.loras + self.output + (2 << 30)
    }
}

/// What the measurements gather, printed at the end.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    memory: Vec<MemoryRow>,
    checks: Vec<String>,
    digests: Vec<String>,
    /// Every run, in order, for the reference.
    log: Vec<LoggedRun>,
}

impl Report {
    /// What a workload's runner leaves for the report: its caches' state, its result digests and
    /// its runs.
    fn take_from(&mut self, r: &mut Runner, what: &str) {
        self.checks.push(cache_line(r, what));
        self.digests.append(&mut r.digests);
        self.log.append(&mut r.log);
    }
}

/// `budget`: a new memory budget as configured (`--host-memory`, `--device-cache-memory`), one
/// per workload's engine.
pub fn run(opts: &MergeBench, settings: MergeSettings, budget: &dyn Fn() -> Arc<MemoryBudget>) -> Result<()> {
    let dir = bench_dir(opts);
    let size = if opts.tiny { LayoutSize::Tiny } else { LayoutSize::Full };
    let mut rep = Report::default();
    let want = |w: &str| opts.workloads.iter().any(|x| x == w);
    let dw = DeviceWatch::new(&settings);
    // What the SDXL engine's runs left cached in libtorch's allocator goes back before another
    // engine starts, so that its first run starts, and is measured, as in a process of its own.
    let give_back = || {
        if let Some((rt, i)) = &dw.0 {
            release_cached(rt, *i);
        }
    };
    // What was measured is printed even when a later workload fails (e.g. out of memory under a
    // limit), then the error.
    let measure = |rep: &mut Report| -> Result<()> {
        if want("w1") || want("w2") || want("w3") {
            let s = ensure_models(&dir, Arch::Sdxl, size, FileDtype::F16, 4).context("writing the SDXL models")?;
            let _held = hold_base(opts, &dir, &s, settings.device)?;
            let mut r = Runner::new(&dir, &settings, budget())?;
            let warmed = warm_up(&r, opts.warm_up, "SDXL engine")?;
            first_run(&mut r, &dw, &format!("W3, first run of the process{warmed} (maps the base, parses 4 LoRAs)"), &compose_all(&s), &mut rep.rows)?;
            if want("w1") {
                reset_peak();
                let st = cold(&mut r, &dw, "W1: one LoRA, t 1.0", &w1(&s), opts.repeat, &mut rep.rows)?;
                rep.memory.push(MemoryRow::measured("W1", &s, &st));
            }
            if want("w2") {
                reset_peak();
                let st = cold(&mut r, &dw, "W2: compose + chained LoRA3 @t 0.5", &w2(&s, 1.0, 0.5), opts.repeat, &mut rep.rows)?;
                rep.memory.push(MemoryRow::measured("W2", &s, &st));
                slider_changes(&mut r, &dw, &s, opts.repeat, rep)?;
            }
            if want("w3") {
                reset_peak();
                let st = cold(&mut r, &dw, "W3: compose of 4 single-LoRA branches", &compose_all(&s), opts.repeat, &mut rep.rows)?;
                rep.memory.push(MemoryRow::measured("W3", &s, &st));
            }
            rep.take_from(&mut r, "the SDXL workloads");
        }
        for (tag, d) in &DITS {
            if !want(tag) {
                continue;
            }
            let s = ensure_models(&dir, d.arch, size, d.dtype, d.loras).with_context(|| format!("writing the {} models", d.name))?;
            give_back();
            let _held = hold_base(opts, &dir, &s, settings.device)?;
            let mut r = Runner::new(&dir, &settings, budget())?;
            let warmed = warm_up(&r, opts.warm_up, &format!("{} engine", d.name))?;
            let n = d.loras;
            first_run(&mut r, &dw, &format!("{}, first run of its engine{warmed} (maps the base, parses {n} LoRAs)", d.name), &compose_all(&s), &mut rep.rows)?;
            reset_peak();
            let st = cold(&mut r, &dw, &format!("{}: compose of {n} single-LoRA branches", d.name), &compose_all(&s), opts.repeat, &mut rep.rows)?;
            rep.memory.push(MemoryRow::measured(d.name, &s, &st));
            rep.take_from(&mut r, d.name);
        }
        if want("clip") {
            let s = ensure_clip_models(&dir, size, 2).context("writing the SDXL checkpoint and its CLIP LoRAs")?;
            give_back();
            let mut r = Runner::new(&dir, &settings, budget())?;
            let warmed = warm_up(&r, opts.warm_up, "SDXL CLIP engine")?;
            let prompt = compose_all(&s);
            first_run(&mut r, &dw, &format!("SDXL CLIP, first run of its engine{warmed} (maps the checkpoint, parses 2 LoRAs)"), &prompt, &mut rep.rows)?;
            reset_peak();
            let st = cold(&mut r, &dw, "SDXL CLIP-L/G: compose of 2 single-LoRA branches", &prompt, opts.repeat, &mut rep.rows)?;
            rep.memory.push(MemoryRow::measured("SDXL CLIP", &s, &st));
            // The same merge saved, one file per text encoder, from empty caches each time, into
            // files that are not there (a saved file whose recipe matches would be reused).
            let mut saved = prompt.clone();
            saved["exit"]["inputs"]["save_model"] = json!(true);
            saved["exit"]["inputs"]["save_workflow"] = json!(false);
            let mut v = Vec::new();
            let mut last = Json::Null;
            for i in 0..opts.repeat.max(1) {
                let mut p = saved.clone();
                let name = format!("bench_clip_saved_{i}");
                for enc in ["clip_l", "clip_g"] {
                    let _ = std::fs::remove_file(dir.join("text_encoders").join(format!("{name}_{enc}.safetensors")));
                }
                p["exit"]["inputs"]["model_name"] = json!(name);
                r.engine.clear_caches();
                let (secs, st) = r.run(&p)?;
                v.push((secs, st["seconds"].as_f64().unwrap_or(f64::NAN)));
                last = st;
            }
            // One path, or a list of them (one file per text encoder).
            let files: Vec<String> = match &last["saved"] {
                Json::String(p) => vec![p.clone()],
                Json::Array(v) => v.iter().filter_map(|p| p.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            };
            rep.rows.push(Row {
                what: "SDXL CLIP-L/G, the same merge saved (save_model)".into(),
                secs: median(v.iter().map(|x| x.0).collect()),
                exit_secs: median(v.iter().map(|x| x.1).collect()),
                peak_device: None,
                detail: format!("{}; saved {}", summary(&last), if files.is_empty() { "nothing".to_string() } else { files.join(", ") }),
            });
            rep.take_from(&mut r, "SDXL CLIP");
        }
        Ok(())
    };
    let measured = measure(&mut rep);
    // The reference replays what ran, when everything ran.
    let reference = match (&opts.reference.reference, &measured) {
        (Some(pack), Ok(())) => {
            // comfyrs's side first, on stderr: the reference can take minutes per prompt, and a
            // run stopped during it (a time limit) then still has these.
            for r in &rep.rows {
                eprintln!("comfyrs: {}: end to end {}, Exit {}", r.what, fmt_secs(r.secs), fmt_secs(r.exit_secs));
            }
            let python = opts.reference.python()?;
            let output = tempfile::tempdir()?;
            let setup = super::reference::ReferenceSetup { pack, python: &python, models_dir: &dir, output: output.path() };
            let (rows, runs) = super::merge_reference::reference_runs(&rep.log)?;
            let exit = |_: &str, j: &Json| format!("Exit {:.3} s, whole prompt {:.3} s", j["nodes"]["exit"].as_f64().unwrap_or(f64::NAN), j["total"].as_f64().unwrap_or(f64::NAN));
            let lines = super::reference::run(&setup, &runs, exit)?;
            Some(super::merge_reference::reference_rows(&rows, &lines))
        }
        _ => None,
    };
    let Report { rows, memory, checks, digests, .. } = rep;
    let mut stdout = std::io::stdout().lock();
    let limit = settings.device_memory.map_or_else(|| "no device memory limit".to_string(), |l| format!("device memory limited to {}", gib(l)));
    writeln!(
        stdout,
        "# comfyrs bench merge ({}, device {:?}, {limit}, median of {})\n",
        if opts.tiny { "tiny layouts" } else { "full-size layouts" },
        settings.device,
        opts.repeat
    )?;
    match &reference {
        None => {
            writeln!(stdout, "| workload | end to end | Exit alone | peak device memory | what ran |")?;
            writeln!(stdout, "|---|---:|---:|---:|---|")?;
        }
        Some(_) => {
            writeln!(
                stdout,
                "| workload | end to end | Exit alone | reference: whole prompt | reference: Exit | Exit, reference ÷ comfyrs | peak device memory | what ran |"
            )?;
            writeln!(stdout, "|---|---:|---:|---:|---:|---:|---:|---|")?;
        }
    }
    for r in &rows {
        let peak = r.peak_device.map_or_else(|| "-".to_string(), gib);
        let theirs = match reference.as_ref().map(|m| m.get(&r.what)) {
            None => String::new(),
            Some(None) => "- | - | - | ".to_string(),
            Some(Some((exit, total))) => format!("{} | {} | {:.1}× | ", fmt_secs(*total), fmt_secs(*exit), exit / r.exit_secs),
        };
        writeln!(stdout, "| {} | {} | {} | {theirs}{peak} | {} |", r.what, fmt_secs(r.secs), fmt_secs(r.exit_secs), r.detail)?;
    }
    if reference.is_some() {
        writeln!(
            stdout,
            "\nReference: the same prompts in the same order in plain ComfyUI with the Python WIDEN node pack, one \
             executor; its cold runs turn the pack's cache off (enable_cache false), the slider changes keep it on. \
             Its whole prompt includes loading the base the first time (\"-\": the pack has no such run)."
        )?;
    }
    if dw.0.is_some() {
        writeln!(
            stdout,
            "\nPeak device memory: the most in use on the device (the CUDA context, libtorch's allocator with what it \
             keeps cached, the caches' entries from earlier runs), sampled every 2 ms during an extra, untimed run of \
             the row after the allocator gave back its cached blocks; for the first run, what it left in use."
        )?;
    }
    if let Err(e) = &measured {
        writeln!(stdout, "\nThe benchmark stopped early (the rows above are what it measured): {}", e.to_string().lines().next().unwrap_or_default())?;
    }
    writeln!(stdout, "\n| workload | peak RSS | base file | LoRA files | merged output | bound: files + output + 2 GiB |")?;
    writeln!(stdout, "|---|---:|---:|---:|---:|---:|")?;
    for m in memory {
        let bound = m.bound();
        let verdict = match m.peak {
            Some(p) if p <= bound => "within",
            Some(_) => "EXCEEDED",
            None => "?",
        };
        writeln!(
            stdout,
            "| {} | {} | {} | {} | {} | {} ({verdict}) |",
            m.what,
            m.peak.map_or("?".into(), gib),
            gib(m.base),
            gib(m.loras),
            gib(m.output),
            gib(bound)
        )?;
    }
    for c in &checks {
        writeln!(stdout, "\n{c}")?;
    }
    writeln!(stdout, "\nResult digests (blake3 of every merged key): {}", digests.join(", "))?;
    measured
}
