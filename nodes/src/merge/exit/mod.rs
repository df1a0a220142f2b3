//! The Exit evaluator (`docs/widen.md`, "The Exit", with `docs/decisions.md` D3-D10, D17-D19).
//!
//! 1. Validation of the tree (paths `root.base`, `root.target.branches[1]`, ...), block-config
//!    architectures (D10), before any file is opened.
//! 2. Analysis: every LoRA set loaded (memory-mapped factors) against the base's names and
//!    shapes, every Model Input opened; keys to process = base keys ∩ keys any contribution
//!    touches.
//! 3. Per key, a content hash per merge subtree (file identities, strengths, the key's own
//!    effective t_factor and block multipliers, the device): the subtree cache (D19) answers the
//!    keys whose hash it has seen, at every level of the merge chain.
//! 4. The other keys are grouped by shape and by which contributions touch them in which form
//!    (low-rank factors or dense), and evaluated in chunks sized from a memory budget, halving a
//!    chunk on out-of-memory down to one key (D18, D35; `oom`).
//! 5. Semantics: a Merge's contribution(s) are its target's leaves (nested composes flattened,
//!    D7), each measured against the backbone (the merge's base, or the evaluated `backbone`
//!    recipe, D8); a Merge used as a target or branch is a model of its own (D9); block configs
//!    multiply LoRA/model strengths and t_factors per key (D10); t_factor cases of D5 and
//!    non-contributors (D3) are the math module's. Results are in each key's own dtype (D17).
//!
//! Step 1 is `validation`, 2 and 3 `analysis`, the grouping and order of 4 `grouping`, the
//! evaluation of a chunk `eval`; this module drives them and reports. What persists between runs
//! is the engine's ([`MergeEngine`]); a run's own state (its analysis, its copy stream, its
//! results in flight) lives and dies with the run.

mod analysis;
mod eval;
mod figures;
mod footprint;
mod grouping;
mod oom;
mod room_now;
mod validation;

pub use analysis::{analyze, Analysis, LoadedModel, LoadedSet};
pub use eval::steps_wait_for_device;
pub use validation::validate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use analysis::ptr;
use comfyrs_runtime::memory::Place;
use comfyrs_runtime::ExecContext;
use eval::{Eval, Lap};
use grouping::{group_keys, pipeline_order};
use indexmap::IndexMap;
use serde_json::{json, Value as Json};
use tch::{Device, Kind, Tensor};

use crate::cuda::{CopyStream, HostArena, PendingHost};
use crate::models::{MappedTensor, ModelFolders};
use crate::recipe::model::NativeModel;
use crate::recipe::{PackError, Recipe, RecipeDomain, RecipeKind};
use crate::widen::{Widen, WidenConfig};

use super::chunk_memory::ChunkBudget;
use super::engine::MergeEngine;
use super::save;

pub struct ExitOptions {
    pub domain: RecipeDomain,
    pub save_model: bool,
    pub model_name: String,
    pub save_workflow: bool,
    pub enable_cache: bool,
    /// The running prompt's `extra_pnginfo` (saved as `__ecaj_workflow__` with `save_workflow`).
    pub extra_pnginfo: Option<Json>,
}

/// Seconds per phase of an Exit run.
#[derive(Clone, Debug, Default)]
pub struct Phases {
    /// Over a foreign MODEL or CLIP: its runtime restoring the weights a loaded clone patched in
    /// place (ComfyUI unloading such clones) before the merge reads them.
    pub prepare: f64,
    /// Reading the recipe's files, planning the keys, looking up final results.
    pub analysis: f64,
    /// Beside ComfyUI on a GPU: asking what is free on the device, and ComfyUI unloading idle
    /// models where that is far short of the plan (docs/architecture.md, "Memory").
    pub room: f64,
    pub load: f64,
    pub compute: f64,
    pub results: f64,
    /// The report's figures: read from the device, kept in the cache and aggregated.
    pub report: f64,
    /// Over a foreign MODEL or CLIP: handing the merged weights to its runtime (a clone of the
    /// ComfyUI object with them installed). Part of the Exit node's time, after the merge.
    pub handover: f64,
}

/// What a run did, for logs and the Exit's UI output.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    /// Keys the recipe changes.
    pub keys: usize,
    /// Keys computed in this run.
    pub recomputed: usize,
    /// Keys whose final result came from the subtree cache.
    pub cache_hits: usize,
    /// Merge-subtree results reused from the cache at any level (inner merges included).
    pub subtree_hits: usize,
    /// Merge-subtree results rebuilt from the low-rank products that formed them, where the
    /// cache no longer held the full results.
    pub subtrees_rebuilt: usize,
    /// Keys of the recipe's base read from the copies the caches kept of it (on the device: no
    /// upload; page-locked in host memory: no copy into staging buffers), counted once per merge
    /// that read them.
    pub base_hits: usize,
    /// Keys × merge steps whose column statistics were reused (t_factor-only changes).
    pub stats_hits: usize,
    /// Bytes of the merged keys (each in its storage dtype).
    pub bytes: usize,
    /// Bytes of the page-locked blocks the results landed in (on a GPU, when they go to host
    /// memory; 0 otherwise): `bytes` plus what the packing left unused.
    pub result_blocks: u64,
    /// Where the time went, seconds: preparing a foreign base, reading the recipe's files and
    /// planning, asking ComfyUI for room, moving weights to the device, computing (with results
    /// already travelling to host memory), waiting for the last results to arrive, the report,
    /// the hand-over.
    pub phases: Phases,
    pub groups: usize,
    /// Chunks computed, and chunks that ran out of device memory and were retried smaller.
    pub chunks: usize,
    pub oom_retries: usize,
    pub seconds: f64,
    pub device: String,
    /// The files saved (or reused): a MODEL's checkpoint, a CLIP's text encoder files.
    pub saved: Vec<String>,
    pub reused_saved_file: bool,
    pub lora_reports: Vec<String>,
}

impl ExitStats {
    pub fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("keys".into(), json!(self.keys));
        m.insert("recomputed".into(), json!(self.recomputed));
        m.insert("cache_hits".into(), json!(self.cache_hits));
        m.insert("subtree_hits".into(), json!(self.subtree_hits));
        m.insert("subtrees_rebuilt".into(), json!(self.subtrees_rebuilt));
        m.insert("base_hits".into(), json!(self.base_hits));
        m.insert("stats_hits".into(), json!(self.stats_hits));
        m.insert("bytes".into(), json!(self.bytes));
        if self.result_blocks > 0 {
            m.insert("result_blocks_bytes".into(), json!(self.result_blocks));
        }
        let r = |x: f64| (x * 1e4).round() / 1e4;
        let p = &self.phases;
        m.insert(
            "phases".into(),
            json!({
                "prepare": r(p.prepare),
                "analysis": r(p.analysis),
                "room": r(p.room),
                "load": r(p.load),
                "compute": r(p.compute),
                "results": r(p.results),
                "report": r(p.report),
                "handover": r(p.handover)
            }),
        );
        m.insert("groups".into(), json!(self.groups));
        m.insert("chunks".into(), json!(self.chunks));
        m.insert("oom_retries".into(), json!(self.oom_retries));
        m.insert("seconds".into(), json!((self.seconds * 1e4).round() / 1e4));
        m.insert("device".into(), json!(self.device));
        if !self.saved.is_empty() {
            // One path as a string (a MODEL's), several as a list.
            let saved = if self.saved.len() == 1 { json!(self.saved[0]) } else { json!(self.saved) };
            m.insert("saved".into(), saved);
            m.insert("reused_saved_file".into(), json!(self.reused_saved_file));
        }
        if !self.lora_reports.is_empty() {
            m.insert("loras".into(), json!(self.lora_reports));
        }
        Json::Object(m)
    }
}

pub struct ExitResult {
    pub model: Arc<NativeModel>,
    pub stats: ExitStats,
}

/// Progress and interrupt hooks (the runtime's `ExecContext`, or nothing for library use).
pub trait Reporter {
    fn progress(&self, done: u64, total: u64);
    fn interrupted(&self) -> bool;
}

impl Reporter for ExecContext<'_> {
    fn progress(&self, done: u64, total: u64) {
        ExecContext::progress(self, done, total)
    }
    fn interrupted(&self) -> bool {
        self.check_interrupt().is_err()
    }
}

/// No progress, never interrupted.
pub struct Silent;

impl Reporter for Silent {
    fn progress(&self, _: u64, _: u64) {}
    fn interrupted(&self) -> bool {
        false
    }
}

/// Evaluates `root` on `engine` (its device, caches and memory settings), reading model files
/// from `folders`.
pub fn run_exit(engine: &MergeEngine, folders: &ModelFolders, rep: &dyn Reporter, root: &Recipe, opts: &ExitOptions) -> Result<ExitResult, PackError> {
    let start = Instant::now();
    let base_node = validate(root, opts.domain)?;
    let RecipeKind::Base { model: base_model, .. } = &base_node.kind else { unreachable!() };
    let device = engine.device();
    let mut stats = ExitStats { device: format!("{device:?}"), ..Default::default() };
    if let (Some(origin), Some(p)) = (base_model.foreign_origin(), engine.foreign_models()) {
        let (node, what) = match opts.domain {
            RecipeDomain::Diffusion => ("WIDEN Exit", "MODEL"),
            RecipeDomain::Clip => ("WIDEN CLIP Exit", "CLIP"),
        };
        let t = Instant::now();
        p.prepare(origin).map_err(|e| PackError::runtime(format!("{node}: preparing the base {what} failed: {e}")))?;
        stats.phases.prepare = t.elapsed().as_secs_f64();
    }
    if root.is_base() {
        rep.progress(1, 1);
        stats.seconds = start.elapsed().as_secs_f64();
        return Ok(ExitResult { model: base_model.clone(), stats });
    }
    // Saved-model short-circuit.
    let save_target = if opts.save_model {
        let files = save::save_files(folders, opts.domain, &opts.model_name, base_model)?;
        let (json, hash) = save::serialize(folders, root);
        if let Some(model) = save::check_saved(&files, &hash, base_model)? {
            if let Some(r) = save::saved_report(&files[0].path)? {
                model.set_report(Arc::new(r));
            }
            rep.progress(1, 1);
            stats.keys = model.overrides().len();
            stats.bytes = model.merged_bytes();
            stats.saved = files.iter().map(|f| f.path.display().to_string()).collect();
            stats.reused_saved_file = true;
            stats.seconds = start.elapsed().as_secs_f64();
            tracing::info!(path = %stats.saved.join(", "), "WIDEN Exit: reusing the saved model (recipe hash matches)");
            return Ok(ExitResult { model, stats });
        }
        Some((files, json, hash))
    } else {
        None
    };
    // `enable_cache: false` bypasses the subtree cache (no lookup, no store). Unlike the
    // reference's single-entry cache it does not evict: other recipes' entries stay valid.
    let analysis_start = Instant::now();
    let mut lap = Lap::start(device);
    let a = analyze(engine, folders, root, &base_node)?;
    lap.mark("analysis: files and sets");
    stats.lora_reports = a.lora_reports();
    for r in &stats.lora_reports {
        tracing::info!("WIDEN LoRA: {r}");
    }
    stats.keys = a.keys.len();
    let widen = Widen::new(WidenConfig::default(), device)?.with_products(opts.enable_cache && engine.keeps_subtree_products());
    let mut ev = Eval {
        a: &a,
        engine,
        widen,
        device,
        use_cache: opts.enable_cache,
        root: ptr(root),
        subtree_hits: 0,
        subtrees_rebuilt: 0,
        base_hits: 0,
        stats_hits: 0,
        load_seconds: 0.0,
        figures: Vec::new(),
    };
    // This run's results, each readable once its copy to the host has landed. Whatever way this
    // function returns (an error, an interrupt, a panic), dropping them waits for their copies,
    // so no page-locked block is freed with a copy still writing into it.
    // Over a ComfyUI MODEL on a GPU the results stay there: ComfyUI takes device tensors as they
    // are (docs/widen.md, "The loop on a GPU"). A CLIP, which ComfyUI keeps in host memory
    // between encodes and patches by weight, gets them there.
    let on_device = device.is_cuda()
        && opts.domain == RecipeDomain::Diffusion
        && base_model.foreign_origin().is_some()
        && engine.settings().results_on_device;
    let stream = super::transfer::copy_stream(engine);
    let host = match (&stream, engine.pinned()) {
        (Some(_), Some(pinned)) => {
            let mut arena = HostArena::new(|bytes| pinned.empty(bytes, Kind::Uint8));
            // Every key lands there, cached or computed, each in its base's dtype (D17): the
            // blocks are sized to that. (Results kept on the device use the arena only if they
            // have to move to host memory part way; its blocks then double as they go.)
            if !on_device {
                arena.expect(a.keys.iter().map(|k| a.base.storage_bytes(k) as i64));
            }
            HostLanding::Packed(arena)
        }
        _ => HostLanding::PerChunk,
    };
    let mut out = Results { engine, chunks: Vec::new(), released: 0, host, stream, on_device };
    // What this run uses of the subtree cache stays while the run adds to it (cache.rs).
    engine.subtrees.begin_run();
    engine.subtree_factors.begin_run();
    engine.bases.begin_run();
    let mut todo = Vec::new();
    for k in &a.keys {
        let hit = if opts.enable_cache { engine.subtrees.get(&a.key_hash(root, k, device)) } else { None };
        match hit {
            Some(t) => out.install(&a, std::slice::from_ref(k), &t.f_unsqueeze(0)?)?,
            None => todo.push(k.clone()),
        }
    }
    lap.mark("analysis: final-result lookups");
    stats.cache_hits = out.keys();
    stats.recomputed = todo.len();
    let groups = pipeline_order(group_keys(engine, &a, root, &todo), device);
    lap.mark("analysis: grouping");
    stats.groups = groups.len();
    let total = groups.len().max(1) as u64;
    if groups.is_empty() {
        rep.progress(1, 1);
    }
    // Beside ComfyUI's models the device holds less than the plan of the first merge counted on
    // (room_now.rs): the run's results still to come and the caches' growth are spoken for. A
    // run sized from the device as it is starts from the plan and leaves nothing to the next
    // (which measures for itself); one without that view starts where earlier merges ended.
    // Nothing to compute (every key a cache hit), nothing to ask.
    let storage = |k: &str| a.base.storage_bytes(k);
    // The bytes of the results this run computes, each key in its storage dtype: on the device
    // or in host memory, wherever the results land.
    let new_bytes: u64 = groups.iter().flat_map(|(_, keys)| keys).map(|k| storage(k)).sum();
    let learned = engine.chunk_budget();
    let t_room = Instant::now();
    let measured = match engine.foreign_models() {
        Some(f) if !groups.is_empty() => {
            let results = if out.on_device { new_bytes } else { 0 };
            let growth = engine.device_limit().saturating_sub(engine.budget().used(Place::Device));
            let origin = base_model.foreign_origin();
            let plan = ChunkBudget { bytes: learned.planned, ..learned };
            room_now::chunk_budget(plan, results + growth, &mut || f.device_free(device), &mut |bytes| f.unload_idle(origin, bytes))
        }
        _ => None,
    };
    stats.phases.room = t_room.elapsed().as_secs_f64();
    let chunk_budget = measured.unwrap_or(learned);
    let budget = chunk_budget.bytes as usize;
    // Bytes of working memory per key of a group (footprint.rs).
    let per_key = |shape: &[i64], keys: &[String]| -> u64 {
        let numel: i64 = shape.iter().product::<i64>().max(1);
        4 * numel as u64 * footprint::copies_per_key(&a, root, keys)
    };
    let batch_of = |shape: &[i64], keys: &[String]| -> usize { (budget / per_key(shape, keys).max(1) as usize).clamp(1, 4096) };
    if !groups.is_empty() {
        let estimate = super::preflight::Estimate {
            // (Results kept on the device take no host memory.)
            merged_bytes: if out.on_device { 0 } else { new_bytes },
            worst_chunk: groups
                .iter()
                .map(|(shape, keys)| storage(&keys[0]) * batch_of(shape, keys).min(keys.len()) as u64)
                .max()
                .unwrap_or(0),
            save_model: save_target.is_some(),
        };
        estimate.check(engine.host_ram_for_merges())?;
    }
    stats.phases.analysis = analysis_start.elapsed().as_secs_f64() - stats.phases.room;
    // Chunks that run out of memory shrink (oom.rs); the rest of the run keeps what they learned.
    let mut shrink = oom::Shrink::new(engine.limit_words());
    let out_cell = std::cell::RefCell::new(out);
    for (gi, (shape, keys)) in groups.iter().enumerate() {
        let t0 = Instant::now();
        let hooks = oom::Hooks {
            eval: &mut |chunk: &[String]| ev.model(root, chunk),
            // Results travel to host memory while the next chunk computes.
            install: &mut |chunk: &[String], done: Tensor| out_cell.borrow_mut().install(&a, chunk, &done),
            // ComfyUI's models, loaded for sampling after the plan was measured, may hold what
            // it counted on (docs/architecture.md, "Memory"): ComfyUI's free_memory asks the
            // caches first, then offloads what it is not using; the model this merge reads stays.
            // Without ComfyUI nothing is asked: the caches' entries are what the run reads next,
            // and halving the chunk costs less than recomputing them (measured).
            room: &mut |bytes| match (device.is_cuda(), engine.foreign_models()) {
                (true, Some(f)) => f.make_room(base_model.foreign_origin(), bytes),
                _ => 0,
            },
            // Results kept on the device give way too: they go through host memory instead.
            free: &mut || engine.free_device_caches() + out_cell.borrow_mut().spill_to_host(),
            interrupted: &|| rep.interrupted(),
        };
        let (batch, need) = (batch_of(shape, keys), per_key(shape, keys));
        tracing::debug!(
            "chunks: {} keys of shape {shape:?}, {} of working memory each, {} at a time ({} for a chunk)",
            keys.len(),
            crate::merge::device_plan::human(need),
            shrink.size(batch).min(keys.len()),
            crate::merge::device_plan::human(budget as u64)
        );
        oom::run_group(keys, batch, need, &mut shrink, hooks)?;
        stats.phases.compute += t0.elapsed().as_secs_f64();
        rep.progress(gi as u64 + 1, total);
    }
    let out = out_cell.into_inner();
    // The next merge starts where this one ended (docs/architecture.md, "Memory").
    if measured.is_none() {
        engine.learn_chunk_budget(chunk_budget, (budget / shrink.divisor()) as u64, shrink.retries);
    }
    stats.chunks = shrink.chunks;
    stats.oom_retries = shrink.retries;
    stats.result_blocks = out.host.blocks();
    let t_wait = Instant::now();
    let (merged, scales) = out.landed()?;
    stats.phases.results = t_wait.elapsed().as_secs_f64();
    stats.subtree_hits = ev.subtree_hits;
    stats.subtrees_rebuilt = ev.subtrees_rebuilt;
    stats.base_hits = ev.base_hits;
    stats.phases.load = ev.load_seconds;
    stats.phases.compute -= ev.load_seconds;
    stats.stats_hits = ev.stats_hits;
    let merged: IndexMap<String, MappedTensor> = merged.into_iter().map(|(k, t)| (k, MappedTensor::owned(t))).collect();
    let model = base_model.with_overrides(merged, scales, &run_hash(&a, root, device));
    let t_report = Instant::now();
    let report = Arc::new(figures::report(engine, &a, root, device, std::mem::take(&mut ev.figures), opts.enable_cache)?);
    stats.phases.report = t_report.elapsed().as_secs_f64();
    model.set_report(report.clone());
    stats.bytes = model.merged_bytes();
    if let Some((files, json, hash)) = save_target {
        let wf = if opts.save_workflow { opts.extra_pnginfo.as_ref() } else { None };
        for f in &files {
            save::save_file(f, &model, &json, &hash, wf, Some(&report))?;
        }
        stats.saved = files.iter().map(|f| f.path.display().to_string()).collect();
    }
    stats.seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        keys = stats.keys,
        recomputed = stats.recomputed,
        cache_hits = stats.cache_hits,
        subtree_hits = stats.subtree_hits,
        subtrees_rebuilt = stats.subtrees_rebuilt,
        base_hits = stats.base_hits,
        groups = stats.groups,
        seconds = stats.seconds,
        "WIDEN Exit"
    );
    Ok(ExitResult { model, stats })
}

/// A run's results on their way to host memory (or kept on the device): per chunk, its keys and
/// their pending copy.
struct Results<'e> {
    engine: &'e MergeEngine,
    /// Results stay on the compute device (for a foreign MODEL there).
    on_device: bool,
    /// Declared before the stream: fields drop in order, so an early return waits for each
    /// pending copy before the stream it runs on goes away. With the values, the new scales of
    /// scaled fp8 keys (`[B]` fp32).
    chunks: Vec<(Vec<String>, Landing, Option<PendingHost>)>,
    /// How many of `chunks` (from the first) no longer hold device memory for their copy.
    released: usize,
    /// Where results bound for host memory land.
    host: HostLanding<'e>,
    stream: Option<CopyStream>,
}

/// The new per-tensor scale of each merged scaled-fp8 key (docs/widen.md, "Model formats").
type Fp8Scales = IndexMap<String, f32>;

impl Results<'_> {
    /// Puts a chunk's results (`[B, *S]` fp32, any device) on their way to host memory, each key
    /// in its own storage dtype (D17; fp8 as docs/widen.md, "Model formats", says). Keys of one
    /// dtype share one transfer.
    fn install(&mut self, a: &Analysis, keys: &[String], done: &Tensor) -> Result<(), PackError> {
        self.release_landed();
        let kinds: Vec<(Kind, bool)> = keys.iter().map(|k| (a.base.kind(k).unwrap_or(Kind::Float), a.base.is_scaled(k))).collect();
        // The base's scales of scaled fp8 keys (kept where the merged values fit under them).
        let scales: Vec<f32> = if kinds.iter().any(|k| k.1) {
            keys.iter().map(|k| Ok(a.base.scale(k)?.unwrap_or(1.0))).collect::<Result<_, PackError>>()?
        } else {
            Vec::new()
        };
        if kinds.iter().all(|k| *k == kinds[0]) {
            let s = kinds[0].1.then_some(scales.as_slice());
            self.push(keys.to_vec(), done, kinds[0].0, s)?;
        } else {
            for (i, (k, (kind, scaled))) in keys.iter().zip(kinds).enumerate() {
                let s = scaled.then(|| &scales[i..i + 1]);
                self.push(vec![k.clone()], &done.f_narrow(0, i as i64, 1)?, kind, s)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, keys: Vec<String>, done: &Tensor, kind: Kind, base_scales: Option<&[f32]>) -> Result<(), PackError> {
        let (values, scales) = super::transfer::fp8_prepare(done, kind, base_scales)?;
        if let (Some(stream), HostLanding::Packed(arena), false, true) = (&self.stream, &mut self.host, self.on_device, values.device().is_cuda()) {
            // Packed into the run's blocks, split where a block is full.
            match super::transfer::to_host_packed(stream, arena, &values, kind) {
                Ok(pieces) => {
                    for (rows, pending) in pieces {
                        let piece_scales = match &scales {
                            Some(s) => Some(self.host_copy(&s.f_narrow(0, rows.start, rows.end - rows.start)?, Kind::Float)?),
                            None => None,
                        };
                        self.chunks.push((keys[rows.start as usize..rows.end as usize].to_vec(), Landing::Host(pending), piece_scales));
                    }
                    return Ok(());
                }
                Err(e) => {
                    // Page-locked memory is pinned for good and may run out before the rest of
                    // the host's memory: the rest of the run copies through pageable memory
                    // (slower) instead of failing.
                    let e = PackError::from(e);
                    if !e.is_out_of_memory() {
                        return Err(e);
                    }
                    tracing::info!("host memory: no more page-locked memory for this merge's results ({}); the rest go through pageable memory", e.to_string().lines().next().unwrap_or_default());
                    self.host = HostLanding::Pageable { blocks: arena.allocated() };
                }
            }
        }
        let landing = if self.on_device && values.device().is_cuda() {
            let kept = values.f_to_kind(kind)?.f_contiguous()?;
            // A cache hit comes as the cache's own tensor: the result must not share it.
            let kept = if kept.data_ptr() == done.data_ptr() { super::transfer::owned_copy(&kept)? } else { kept };
            Landing::Device(kept)
        } else {
            Landing::Host(self.host_copy(&values, kind)?)
        };
        let scales = scales.map(|s| self.host_copy(&s, Kind::Float)).transpose()?;
        self.chunks.push((keys, landing, scales));
        Ok(())
    }

    /// Gives back the device memory of the copies to the host that have landed, so that the
    /// next chunk has it (docs/architecture.md, "Memory"). Copies on the run's stream land in the
    /// order they were queued: the first one still in flight ends the walk.
    fn release_landed(&mut self) {
        while let Some((_, landing, scales)) = self.chunks.get_mut(self.released) {
            let landed = match landing {
                Landing::Host(p) => p.release_if_landed(),
                // (Kept on the device for ComfyUI by design.)
                Landing::Device(_) => true,
            };
            if !(landed && scales.as_mut().is_none_or(|s| s.release_if_landed())) {
                return;
            }
            self.released += 1;
        }
    }

    /// `t` in host memory as `kind`, one allocation of its own: page-locked where libtorch gives
    /// it, pageable once page-locked memory ran out in this run.
    fn host_copy(&self, t: &Tensor, kind: Kind) -> Result<PendingHost, PackError> {
        match self.host {
            HostLanding::Pageable { .. } if t.device().is_cuda() => Ok(PendingHost::ready(t.f_to_kind(kind)?.f_to_device(Device::Cpu)?)),
            _ => Ok(super::transfer::to_host(self.engine, self.stream.as_ref(), t, kind)?),
        }
    }

    /// Moves the results kept on the device so far to host memory, and sends the rest of the
    /// run's there: when the device runs short (a small card holding the sampler's model and
    /// the previous merge's results), ComfyUI takes host tensors as well. The device bytes given
    /// back.
    fn spill_to_host(&mut self) -> u64 {
        if !self.on_device {
            return 0;
        }
        self.on_device = false;
        let mut freed = 0;
        for (_, landing, _) in &mut self.chunks {
            let Landing::Device(t) = landing else { continue };
            match t.f_to_device(Device::Cpu) {
                Ok(host) => {
                    freed += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
                    *landing = Landing::Host(PendingHost::ready(host));
                }
                // (Kept where it is: the merge goes on, and says what runs out.)
                Err(e) => tracing::debug!("device memory: a chunk's results stay on the device ({e})"),
            }
        }
        tracing::info!("device memory: short under the limit; this merge's results go to ComfyUI through host memory");
        freed
    }

    /// Keys installed so far.
    fn keys(&self) -> usize {
        self.chunks.iter().map(|(k, _, _)| k.len()).sum()
    }

    /// Every result, once its copy has landed (or on the device), and the scales of scaled fp8
    /// keys.
    fn landed(mut self) -> Result<(BTreeMap<String, Tensor>, Fp8Scales), PackError> {
        let mut merged = BTreeMap::new();
        let mut scales = IndexMap::new();
        for (keys, pending, pending_scales) in std::mem::take(&mut self.chunks) {
            let host = match pending {
                Landing::Host(p) => p.wait(),
                Landing::Device(t) => t,
            };
            let s = match pending_scales {
                Some(p) => Some(Vec::<f32>::try_from(&p.wait())?),
                None => None,
            };
            for (i, k) in keys.into_iter().enumerate() {
                if let Some(s) = &s {
                    scales.insert(k.clone(), s[i]);
                }
                merged.insert(k, host.f_select(0, i as i64)?);
            }
        }
        Ok((merged, scales))
    }
}

/// Where a run's results bound for host memory land.
enum HostLanding<'e> {
    /// Page-locked blocks packed key by key, copied on the run's copy stream (on a GPU with one).
    Packed(HostArena<'e>),
    /// One allocation per chunk ([`super::transfer::to_host`]).
    PerChunk,
    /// Pageable memory, after page-locked memory ran out; `blocks`: what was packed before.
    Pageable { blocks: u64 },
}

impl HostLanding<'_> {
    /// Bytes of the page-locked blocks the results were packed into.
    fn blocks(&self) -> u64 {
        match self {
            HostLanding::Packed(arena) => arena.allocated(),
            HostLanding::PerChunk => 0,
            HostLanding::Pageable { blocks } => *blocks,
        }
    }
}

/// Where a chunk's results go.
enum Landing {
    Host(PendingHost),
    Device(Tensor),
}

fn run_hash(a: &Analysis, root: &Recipe, device: Device) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&a.static_hash[&ptr(root)]);
    for k in &a.keys {
        h.update(&a.key_hash(root, k, device));
    }
    *h.finalize().as_bytes()
}

/// For tests: a recipe evaluated without the runtime.
pub fn evaluate(engine: &MergeEngine, folders: &ModelFolders, root: &Recipe, domain: RecipeDomain, enable_cache: bool) -> Result<ExitResult, PackError> {
    run_exit(
        engine,
        folders,
        &Silent,
        root,
        &ExitOptions { domain, save_model: false, model_name: String::new(), save_workflow: false, enable_cache, extra_pnginfo: None },
    )
}
