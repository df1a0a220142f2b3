//! `comfyrs bench loop`: what a merger waits for after moving a slider, the next image. One
//! workflow — ComfyUI's checkpoint loader → WIDEN Entry → a compose of two LoRAs merged at t 1,
//! a third LoRA merged at `t` → Exit → KSampler → VAEDecode → SaveImage — run on one executor
//! that keeps its caches, as a server keeps them between prompts: the first image, new seeds
//! (the merge cached: the sampler's own cost), `t` changes and LoRA-strength changes. For each,
//! the seconds from the start of the run to the sampler's first step and to the saved image.
//!
//! With `--reference PACK_DIR` the same prompts then run in plain ComfyUI (`COMFYUI_PATH`) with
//! the Python WIDEN node pack, in a Python process of their own (`reference.py`), and the
//! two sides' images of the same recipe are compared pixel by pixel (docs/widen.md, "The loop on
//! a GPU", says where they may differ).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use comfyrs_nodes::arch::layout::LayoutSize;
use comfyrs_nodes::arch::Arch;
use comfyrs_runtime::events::{Event, EventSink};
use comfyrs_runtime::executor::RunOptions;
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use serde_json::{json, Value as Json};

use super::median;
use crate::config::Config;
use crate::engine::{Engine, PythonSetup};
use super::reference::{ReferenceRun, ReferenceSetup};

#[derive(Args)]
pub struct LoopBench {
    /// Where the generated models are kept between runs (written on first use: ~7 GB for the
    /// SDXL checkpoint and its LoRAs; each run also saves its last merge there, ~5 GB, replacing
    /// the last run's) [default: $COMFYRS_CACHE/bench-models, else ~/.cache/comfyrs/bench-models].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Sampler steps.
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 1024)]
    size: u32,
    /// Changes of each kind (new seed, t, LoRA strength); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// A tiny SD1.5 checkpoint at 64×64 and 2 steps instead of full-size SDXL (a quick check of
    /// the benchmark itself on a CPU).
    #[arg(long)]
    tiny: bool,
    #[command(flatten)]
    reference: super::reference::ReferenceArgs,
    /// The configuration (`--device-memory 12GiB` runs the loop as on a 12 GiB card; the
    /// reference, in a process of its own, is not limited).
    #[command(flatten)]
    pub config: crate::config::ConfigArgs,
}

/// Where each side saves the last recipe's merge (in the checkpoints folder) for the comparison.
const SAVED_OURS: &str = "bench_loop_merge_comfyrs.safetensors";
const SAVED_THEIRS: &str = "bench_loop_merge_reference.safetensors";

/// The strengths of the two composed LoRAs (the sliders move the third).
const BRANCH_STRENGTHS: [f64; 2] = [0.8, 0.5];

/// The files the prompts name, relative to their model folders.
struct Models {
    checkpoint: String,
    loras: [String; 3],
}

fn ensure_models(dir: &Path, tiny: bool) -> Result<Models> {
    if tiny {
        let ckpt = comfyrs_testkit::sd15::ensure_tiny_sd15(dir).map_err(|e| anyhow!(e))?;
        let lora = comfyrs_testkit::sd15::ensure_tiny_sd15_lora(dir).map_err(|e| anyhow!(e))?;
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let l = name(&lora);
        return Ok(Models { checkpoint: name(&ckpt), loras: [l.clone(), l.clone(), l] });
    }
    let checkpoint = super::merge::ensure_sdxl_checkpoint(dir, LayoutSize::Full)?;
    let l = super::merge::ensure_loras(dir, Arch::Sdxl, LayoutSize::Full, 3)?;
    Ok(Models { checkpoint, loras: [l[0].clone(), l[1].clone(), l[2].clone()] })
}

/// One point of the slider space.
#[derive(Clone, Copy, Debug)]
struct Recipe {
    seed: u64,
    t: f64,
    strength: f64,
}

impl Recipe {
    fn prompt(&self, m: &Models, steps: u32, size: u32) -> Json {
        json!({
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": m.checkpoint}},
            "entry": {"class_type": "WIDENEntry", "inputs": {"model": ["ckpt", 0]}},
            "l0": {"class_type": "WIDENLoRA", "inputs": {"lora_name": m.loras[0], "strength": BRANCH_STRENGTHS[0]}},
            "l1": {"class_type": "WIDENLoRA", "inputs": {"lora_name": m.loras[1], "strength": BRANCH_STRENGTHS[1]}},
            "compose": {"class_type": "WIDENCompose", "inputs": {"branch": ["l0", 0]}},
            "compose2": {"class_type": "WIDENCompose", "inputs": {"branch": ["l1", 0], "compose": ["compose", 0]}},
            "m1": {"class_type": "WIDENMerge", "inputs": {"base": ["entry", 0], "target": ["compose2", 0], "t_factor": 1.0}},
            "l2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": m.loras[2], "strength": self.strength}},
            "m2": {"class_type": "WIDENMerge", "inputs": {"base": ["m1", 0], "target": ["l2", 0], "t_factor": self.t}},
            "exit": {"class_type": "WIDENExit", "inputs": {"widen": ["m2", 0]}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["ckpt", 1]}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
            "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "sampler": {"class_type": "KSampler", "inputs": {
                "seed": self.seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0, "model": ["exit", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                "latent_image": ["latent", 0]}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench_loop", "images": ["decode", 0]}},
        })
    }
}

/// The runs of the benchmark, in order, each with the row it counts in.
fn schedule(repeat: usize) -> Vec<(&'static str, Recipe)> {
    let first = Recipe { seed: 42, t: 1.0, strength: 1.0 };
    let mut v = vec![("first image of the process", first)];
    for i in 0..repeat {
        v.push(("new seed (merge cached)", Recipe { seed: 43 + i as u64, ..first }));
    }
    let mut r = Recipe { seed: 42, ..first };
    for i in 0..repeat {
        r.t = 0.9 - 0.1 * i as f64;
        v.push(("t_factor changed", r));
    }
    for i in 0..repeat {
        r.strength = 0.9 - 0.1 * i as f64;
        v.push(("LoRA strength changed", r));
    }
    v
}

/// One run as a client sees it.
#[derive(Clone, Debug, Default)]
struct Timing {
    first_step: Option<f64>,
    image: Option<f64>,
    /// Seconds of each node that ran.
    nodes: BTreeMap<String, f64>,
    image_path: Option<PathBuf>,
    /// The Exit's own phases, ms (comfyrs's side: from its statistics).
    exit_phases: Option<String>,
    /// What the Exit computed: keys, subtree results it found, chunks and out-of-memory retries
    /// (a device-limited loop shows there whether the caches or the chunks cost it, without -v).
    exit_work: Option<String>,
}

/// Records when the sampler's first step and the saved image arrive.
struct Watch {
    start: Instant,
    output: PathBuf,
    seen: Mutex<Timing>,
}

impl EventSink for Watch {
    fn emit(&self, event: &Event) {
        let now = self.start.elapsed().as_secs_f64();
        let mut t = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Progress { node, value, .. } if node == "sampler" && *value >= 1 && t.first_step.is_none() => {
                t.first_step = Some(now);
            }
            Event::Executed { node, ui, seconds, .. } => {
                t.nodes.insert(node.clone(), *seconds);
                if node == "exit" {
                    let stats = ui.as_ref().and_then(|u| u.get("widen")).and_then(|w| w.get(0));
                    t.exit_phases = stats.map(|w| phases_ms(&w["phases"]));
                    t.exit_work = stats.map(work);
                }
                if node == "save" {
                    t.image = Some(now);
                    let file = ui.as_ref().and_then(|u| u.get("images")).and_then(|i| i.get(0));
                    if let Some(f) = file {
                        let name = f.get("filename").and_then(Json::as_str).unwrap_or_default();
                        let sub = f.get("subfolder").and_then(Json::as_str).unwrap_or_default();
                        t.image_path = Some(self.output.join(sub).join(name));
                    }
                }
            }
            _ => {}
        }
    }
}

fn run_native(config: &Config, models_dir: &Path, output: &Path, runs: &[(&str, Json)]) -> Result<Vec<Timing>> {
    let mut config = config.clone();
    config.models_dir = models_dir.to_path_buf();
    let mut engine = Engine::without_python(&config)?;
    engine.warm_up_device();
    let t = Instant::now();
    engine.start_python_in(&PythonSetup { output: Some(output.to_path_buf()), ..PythonSetup::default() })?;
    eprintln!("comfyrs: the embedded ComfyUI started in {:.1} s", t.elapsed().as_secs_f64());
    let mut exec = engine.executor(config.cache.mode);
    let mut out = Vec::new();
    for (n, (what, prompt)) in runs.iter().enumerate() {
        let text = prompt.to_string();
        let (p, _) = Prompt::parse(&text).map_err(|e| anyhow!("{e:?}"))?;
        let v = validate(p, &engine.registry, None).map_err(|r| anyhow!("prompt rejected: {}", r.to_json()))?;
        let watch = Watch { start: Instant::now(), output: output.to_path_buf(), seen: Mutex::new(Timing::default()) };
        let run_opts = RunOptions {
            prompt_id: format!("loop-{n}"),
            extra_pnginfo: None,
            output_dir: output.to_path_buf(),
            events: &watch,
            extra_data: None,
            registry: Some(&engine.registry),
        };
        let report = exec.run(&v, &run_opts);
        if !report.success() {
            bail!("{what}: the run failed: {:?}", report.errors.iter().map(|e| e.to_json()).collect::<Vec<_>>());
        }
        let t = watch.seen.into_inner().unwrap_or_else(|e| e.into_inner());
        eprintln!("comfyrs: {what}: {}", line(&t));
        // What the caches and the outputs hold after each run: under a device limit, the room
        // they leave ComfyUI's sampler is part of what the timings show.
        eprintln!("comfyrs:   {}", engine.budget.usage().summary());
        out.push(t);
    }
    Ok(out)
}

fn run_reference(setup: &ReferenceSetup, runs: &[(&str, Json)]) -> Result<Vec<Timing>> {
    let runs: Vec<ReferenceRun> =
        runs.iter().map(|(what, p)| ReferenceRun { label: what.to_string(), prompt: p.clone(), outputs: vec!["save".into()] }).collect();
    let lines = super::reference::run(setup, &runs, |_, j| line(&timing(j)))?;
    Ok(lines.iter().map(timing).collect())
}

/// A reference run's line as a [`Timing`].
fn timing(j: &Json) -> Timing {
    let nodes = j["nodes"].as_object().map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect()).unwrap_or_default();
    Timing { first_step: j["first_step"].as_f64(), image: j["image"].as_f64(), nodes, image_path: j["image_path"].as_str().map(PathBuf::from), exit_phases: None, exit_work: None }
}

/// The Exit's phases (seconds in its statistics) as `analysis 1.0, …` in ms.
fn phases_ms(p: &Json) -> String {
    let Some(m) = p.as_object() else { return String::new() };
    m.iter().filter_map(|(k, v)| Some(format!("{k} {:.1}", v.as_f64()? * 1e3))).collect::<Vec<_>>().join(", ")
}

/// `582 keys, 266 subtree hits, 316 rebuilt from their products, 316 base keys from kept copies, 14
/// chunks, 0 out-of-memory retries` from the Exit's statistics (`1 chunk` for one).
fn work(stats: &Json) -> String {
    let n = |k: &str, one: &str, many: &str| match stats[k].as_u64() {
        Some(1) => format!("1 {one}"),
        Some(v) => format!("{v} {many}"),
        None => format!("? {many}"),
    };
    [
        n("keys", "key", "keys"),
        n("subtree_hits", "subtree hit", "subtree hits"),
        n("subtrees_rebuilt", "rebuilt from its product", "rebuilt from their products"),
        n("base_hits", "base key from kept copies", "base keys from kept copies"),
        n("chunks", "chunk", "chunks"),
        n("oom_retries", "out-of-memory retry", "out-of-memory retries"),
    ]
    .join(", ")
}

fn line(t: &Timing) -> String {
    let s = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3} s"));
    let exit = t.nodes.get("exit").map_or("cached".to_string(), |v| format!("{v:.3} s"));
    let nodes: Vec<String> = t.nodes.iter().map(|(n, v)| format!("{n} {v:.3}")).collect();
    let phases = t.exit_phases.as_ref().map_or(String::new(), |p| format!("; Exit phases, ms: {p}"));
    let work = t.exit_work.as_ref().map_or(String::new(), |w| format!("; Exit work: {w}"));
    format!("first step {}, image {}, Exit {exit} (nodes: {}){phases}{work}", s(t.first_step), s(t.image), nodes.join(", "))
}

/// blake3 of a PNG's decoded pixels (the files' metadata differ between the two sides).
fn pixels_digest(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or_else(|| anyhow!("{}: image too large", path.display()))?];
    let info = reader.next_frame(&mut buf)?;
    Ok(blake3::hash(&buf[..info.buffer_size()]).to_hex()[..16].to_string())
}

/// Median of a row's values, "-" when none.
fn med(v: Vec<f64>) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        format!("{:.3} s", median(v))
    }
}

pub fn run(opts: &LoopBench, config: &Config) -> Result<()> {
    let dir = opts.dir.clone().unwrap_or_else(|| comfyrs_runtime::paths::cache_root().join("bench-models"));
    // (steps, size)
    let shape = if opts.tiny { (2, 64) } else { (opts.steps, opts.size) };
    let models = ensure_models(&dir, opts.tiny)?;
    let runs = schedule(opts.repeat.max(1));
    let scratch = tempfile::tempdir()?;
    let native_out = scratch.path().join("comfyrs");
    let ref_out = scratch.path().join("reference");
    std::fs::create_dir_all(&native_out)?;
    std::fs::create_dir_all(&ref_out)?;
    let timed: Vec<(&str, Json)> = runs.iter().map(|(w, r)| (*w, r.prompt(&models, shape.0, shape.1))).collect();
    // With a reference, each side then saves the last recipe's merge, to compare the weights.
    let (ours, theirs) = (dir.join("checkpoints").join(SAVED_OURS), dir.join("checkpoints").join(SAVED_THEIRS));
    let with_saved = |name: &str| -> Vec<(&str, Json)> {
        let mut v = timed.clone();
        if let Some((_, last)) = timed.last() {
            let mut p = last.clone();
            p["exit"]["inputs"]["save_model"] = json!(true);
            p["exit"]["inputs"]["model_name"] = json!(name);
            v.push(("the last recipe, its merge saved", p));
        }
        v
    };
    // (No file of an earlier run is read for this one's.)
    let _ = std::fs::remove_file(&ours);
    if opts.reference.reference.is_some() {
        let _ = std::fs::remove_file(&theirs);
    }
    // Saved on every run, so that two runs whose images differ say whether their merges did.
    let mut native = run_native(config, &dir, &native_out, &with_saved(SAVED_OURS))?;
    native.truncate(timed.len());
    let reference = match &opts.reference.reference {
        Some(pack) => {
            let python = opts.reference.python()?;
            let setup = ReferenceSetup { pack, python: &python, models_dir: &dir, output: &ref_out };
            let mut r = run_reference(&setup, &with_saved(SAVED_THEIRS))?;
            r.truncate(timed.len());
            Some(r)
        }
        None => None,
    };

    let mut out = std::io::stdout().lock();
    writeln!(out, "{} at {}×{}, {} steps; medians of {} changes each.", if opts.tiny { "Tiny SD1.5" } else { "SDXL (full size, fp16)" }, shape.1, shape.1, shape.0, opts.repeat.max(1))?;
    writeln!(out)?;
    if reference.is_some() {
        writeln!(out, "| run | comfyrs: first step | comfyrs: image | comfyrs: Exit | reference: first step | reference: image | reference: Exit |")?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    } else {
        writeln!(out, "| run | first step | image | Exit |")?;
        writeln!(out, "|---|---:|---:|---:|")?;
    }
    let mut rows: Vec<&str> = Vec::new();
    for (what, _) in &runs {
        if !rows.contains(what) {
            rows.push(what);
        }
    }
    let col = |side: &[Timing], what: &str, f: &dyn Fn(&Timing) -> Option<f64>| -> String {
        med(runs.iter().zip(side).filter(|((w, _), _)| *w == what).filter_map(|(_, t)| f(t)).collect())
    };
    for what in rows {
        let mut cells = Vec::new();
        for s in [Some(native.as_slice()), reference.as_deref()].into_iter().flatten() {
            cells.push(col(s, what, &|t| t.first_step));
            cells.push(col(s, what, &|t| t.image));
            cells.push(col(s, what, &|t| t.nodes.get("exit").copied()));
        }
        writeln!(out, "| {what} | {} |", cells.join(" | "))?;
    }
    writeln!(out)?;
    // The same recipe on both sides: the last run's image.
    let last = native.last().and_then(|t| t.image_path.clone()).ok_or_else(|| anyhow!("comfyrs saved no image"))?;
    let mine = pixels_digest(&last)?;
    match reference.as_ref().and_then(|r| r.last()).and_then(|t| t.image_path.clone()) {
        Some(theirs) => {
            let image = pixels_digest(&theirs)?;
            let same = if mine == image { "identical" } else { "different" };
            writeln!(out, "Last image, same recipe on both sides: comfyrs {mine}, reference {image} ({same} pixels).")?;
            let saved_theirs = dir.join("checkpoints").join(SAVED_THEIRS);
            let diff = super::loop_weights::compare(&ours, &saved_theirs).context("comparing the two sides' saved merges")?;
            writeln!(out, "Their merged weights: {diff}.")?;
            let base = dir.join("checkpoints").join(&models.checkpoint);
            let by_column = super::loop_weights::columns(&ours, &saved_theirs, &base).context("comparing the two sides' merges column by column")?;
            writeln!(out, "The same, {by_column}.")?;
            if let Some((_, r)) = runs.last() {
                let recipe = super::loop_weights::LoopRecipe {
                    base,
                    loras: [
                        (dir.join("loras").join(&models.loras[0]), BRANCH_STRENGTHS[0]),
                        (dir.join("loras").join(&models.loras[1]), BRANCH_STRENGTHS[1]),
                        (dir.join("loras").join(&models.loras[2]), r.strength),
                    ],
                    t: r.t,
                };
                eprintln!("comparing both merges with the same recipe evaluated in float64…");
                let exact = super::loop_weights::against_float64(&ours, &saved_theirs, &recipe).context("evaluating the last recipe in float64")?;
                writeln!(out, "Both, {exact}.")?;
            }
        }
        None => {
            let weights = super::loop_weights::merged_digest(&ours).context("reading the last recipe's saved merge")?;
            writeln!(out, "Last image: pixels {mine}; its merge: weights {weights} (blake3 of the merged keys, as saved).")?;
        }
    }
    Ok(())
}
