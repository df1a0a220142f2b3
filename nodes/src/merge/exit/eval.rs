//! Steps 4-5 of the Exit: one chunk of keys evaluated through the recipe, merge by merge, with
//! the subtree cache answering whatever it has seen.

use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::merge::engine::MergeEngine;
use crate::models::MappedTensor;
use crate::recipe::{BlockConfig, PackError, Recipe, RecipeKind};
use crate::widen::{ColumnStats, Contribution, Factored, Widen};

use super::analysis::{ptr, Analysis, LoadedSet};

pub(super) struct Eval<'a> {
    pub(super) a: &'a Analysis,
    pub(super) engine: &'a MergeEngine,
    pub(super) widen: Widen,
    pub(super) device: Device,
    pub(super) use_cache: bool,
    /// The recipe's root (pointer identity): its results are the Exit's output.
    pub(super) root: usize,
    pub(super) subtree_hits: usize,
    /// Merge-subtree results rebuilt from the products that formed them (their full results
    /// were no longer cached).
    pub(super) subtrees_rebuilt: usize,
    /// Keys of a base read from the copies the caches kept instead of the base itself.
    pub(super) base_hits: usize,
    /// Keys × merge steps whose column statistics came from the cache.
    pub(super) stats_hits: usize,
    /// Time spent moving base and model weights to the device.
    pub(super) load_seconds: f64,
    /// The root merge's per-key figures computed in this run (docs/widen.md, "Report"), on the
    /// device until the run reads them once: keys, `[B, N, FIGURES]`.
    pub(super) figures: Vec<(Vec<String>, Tensor)>,
}

/// Debug-level timing of an evaluation's steps (`-v`): waits for the GPU at each mark so the
/// time lands on the step that spent it. Costs nothing unless debug logging is on.
pub(super) struct Lap {
    pub(super) on: bool,
    pub(super) device: Device,
    pub(super) last: Instant,
}

/// Whether merges on a GPU wait for the device at each step, to log its time (debug logging on).
pub fn steps_wait_for_device() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

impl Lap {
    pub(super) fn start(device: Device) -> Self {
        Lap { on: steps_wait_for_device(), device, last: Instant::now() }
    }

    pub(super) fn mark(&mut self, step: &str) {
        if !self.on {
            return;
        }
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = Instant::now();
        tracing::debug!(step, ms = format!("{:.2}", (now - self.last).as_secs_f64() * 1e3), "WIDEN Exit step");
        self.last = now;
    }
}

impl Eval<'_> {
    pub(super) fn stack(&mut self, tensors: &[MappedTensor]) -> Result<Tensor, PackError> {
        let start = Instant::now();
        let t = crate::merge::transfer::stack_to_device(self.engine, tensors)?;
        self.load_seconds += start.elapsed().as_secs_f64();
        Ok(t)
    }

    /// A model (Base or Merge) on the chunk's keys: `[B, *S]` fp32 on the device.
    pub(super) fn model(&mut self, node: &Recipe, keys: &[String]) -> Result<Tensor, PackError> {
        Ok(self.model_owned(node, keys)?.0)
    }

    /// [`Eval::model`], and whether the tensor is a fresh one that nothing else holds (a merge
    /// may then write its result into it).
    pub(super) fn model_owned(&mut self, node: &Recipe, keys: &[String]) -> Result<(Tensor, bool), PackError> {
        match &node.kind {
            RecipeKind::Base { model, .. } => {
                let start = Instant::now();
                let t = self.base_rows(node, model, keys)?;
                self.load_seconds += start.elapsed().as_secs_f64();
                Ok((scale_rows(t, model.scales(keys)?.as_deref())?, true))
            }
            RecipeKind::Merge { .. } => self.merge_cached(node, keys),
            _ => Err(PackError::runtime(format!("{} is not a model", node.type_name()))),
        }
    }

    /// A base's weights on the chunk's keys, `[B, *S]` fp32 on the device and the caller's own:
    /// from the copies the caches kept where the engine keeps them, the rest uploaded, and kept
    /// as uploaded (rows in their stored dtype, one group per upload).
    fn base_rows(&mut self, node: &Recipe, model: &crate::recipe::model::NativeModel, keys: &[String]) -> Result<Tensor, PackError> {
        let foreign = model.foreign_origin().is_some();
        if self.use_cache && self.engine.keeps_base_copies(foreign) {
            return self.device_copies(node, model, keys);
        }
        if self.use_cache && self.engine.keeps_page_locked_bases(foreign) {
            return self.page_locked_copies(node, model, keys);
        }
        let tensors = keys.iter().map(|k| model.tensor(k)).collect::<Result<Vec<_>, _>>()?;
        Ok(crate::merge::transfer::stack_to_device(self.engine, &tensors)?)
    }

    /// [`Eval::base_rows`] from the copies kept in device memory.
    fn device_copies(&mut self, node: &Recipe, model: &crate::recipe::model::NativeModel, keys: &[String]) -> Result<Tensor, PackError> {
        let tensors = |keys: &mut dyn Iterator<Item = &String>| keys.map(|k| model.tensor(k)).collect::<Result<Vec<_>, _>>();
        let hashes: Vec<[u8; 32]> = keys.iter().map(|k| base_copy_hash(b"base copy", &self.a.key_hash(node, k, self.device), self.device)).collect();
        let copies = &self.engine.bases;
        let cached: Vec<Option<Tensor>> = hashes.iter().map(|h| copies.get(h)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| cached[i].is_none()).collect();
        self.base_hits += keys.len() - missing.len();
        let uploaded = if missing.is_empty() {
            None
        } else {
            let host = tensors(&mut missing.iter().map(|&i| &keys[i]))?;
            if host.windows(2).any(|w| w[0].kind() != w[1].kind()) {
                // (Keys of one shape in different dtypes, rare: read as fp32, none kept.)
                return Ok(crate::merge::transfer::stack_to_device(self.engine, &tensors(&mut keys.iter())?)?);
            }
            let views: Vec<&Tensor> = host.iter().map(|t| &**t).collect();
            let t = crate::merge::transfer::upload(self.engine, &views)?;
            let rows = missing.iter().enumerate().map(|(j, &i)| Ok((hashes[i], t.f_select(0, j as i64)?))).collect::<Result<Vec<_>, tch::TchError>>()?;
            copies.insert_all(rows);
            Some(t)
        };
        let stored = match uploaded {
            Some(t) if missing.len() == keys.len() => t,
            _ => {
                let mut j = 0;
                let rows = cached
                    .into_iter()
                    .map(|c| match c {
                        Some(t) => Ok(t),
                        None => {
                            j += 1;
                            uploaded.as_ref().expect("uploaded").f_select(0, j as i64 - 1)
                        }
                    })
                    .collect::<Result<Vec<_>, tch::TchError>>()?;
                match consecutive_rows(&rows) {
                    Some(batch) => batch,
                    None => Tensor::f_stack(&rows, 0)?,
                }
            }
        };
        Ok(own_fp32(&stored)?)
    }

    /// [`Eval::base_rows`] from page-locked copies in host memory, which upload at the link's
    /// full speed without first being copied out of the base's own (pageable) memory. A key gets
    /// its copy the second time a merge reads it: page-locking SDXL's 1.15 GiB cost a slider
    /// change 0.19-0.38 s once (BENCHMARKS.md), which a merge that runs once would pay for
    /// nothing; until then it goes through the staging buffers as without copies.
    fn page_locked_copies(&mut self, node: &Recipe, model: &crate::recipe::model::NativeModel, keys: &[String]) -> Result<Tensor, PackError> {
        let tensors = |keys: &mut dyn Iterator<Item = &String>| keys.map(|k| model.tensor(k)).collect::<Result<Vec<_>, _>>();
        let hashes: Vec<[u8; 32]> =
            keys.iter().map(|k| base_copy_hash(b"page-locked base copy", &self.a.key_hash(node, k, self.device), self.device)).collect();
        let copies = &self.engine.bases;
        let mut rows: Vec<Option<Tensor>> = hashes.iter().map(|h| copies.get(h)).collect();
        let hits = rows.iter().flatten().count();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| rows[i].is_none()).collect();
        let host = tensors(&mut missing.iter().map(|&i| &keys[i]))?;
        let mut kinds = rows.iter().flatten().map(|r| r.kind()).chain(host.iter().map(|t| t.kind()));
        let kind = kinds.next();
        if kinds.any(|k| Some(k) != kind) {
            // (Keys of one shape in different dtypes, rare: read as fp32, none kept.)
            return Ok(crate::merge::transfer::stack_to_device(self.engine, &tensors(&mut keys.iter())?)?);
        }
        // Keys read before get their copies now; the rest are read for the first time.
        let (make, once): (Vec<_>, Vec<_>) =
            missing.iter().zip(&host).map(|(&i, t)| (i, &**t)).partition(|&(i, _)| self.engine.read_before(&hashes[i]));
        if !make.is_empty() {
            let views: Vec<&Tensor> = make.iter().map(|&(_, t)| t).collect();
            let made = crate::merge::transfer::page_locked_copies(self.engine, &views)?;
            copies.insert_all(make.iter().zip(&made).map(|(&(i, _), t)| (hashes[i], t.shallow_clone())).collect());
            for (&(i, _), t) in make.iter().zip(made) {
                rows[i] = Some(t);
            }
        }
        self.base_hits += hits;
        tracing::debug!(keys = keys.len(), kept = hits, made = make.len(), read_once = once.len(), "page-locked base copies");
        // The keys read for the first time, through the staging buffers.
        let staged = if once.is_empty() {
            None
        } else {
            let views: Vec<&Tensor> = once.iter().map(|&(_, t)| t).collect();
            Some(crate::merge::transfer::upload(self.engine, &views)?)
        };
        if staged.is_none() {
            if let Some(out) = self.upload_on_stream(&rows)? {
                return Ok(out);
            }
        }
        // In key order: runs of copies that lie back to back in one block go up as one
        // non-blocking copy each, runs of first reads are rows of the staged upload; one device
        // copy joins them.
        let mut parts = Vec::new();
        let (mut i, mut staged_row) = (0, 0);
        while i < keys.len() {
            let end = (i + 1..keys.len()).find(|&e| !same_run(&rows[e - 1], &rows[e])).unwrap_or(keys.len());
            match &rows[i] {
                Some(_) => {
                    let copies: Vec<Tensor> = rows[i..end].iter().map(|r| r.as_ref().expect("a run of copies").shallow_clone()).collect();
                    for run in back_to_back(&copies)? {
                        parts.push(run.f_to_device_(self.device, run.kind(), true, false)?);
                    }
                }
                None => {
                    let n = (end - i) as i64;
                    parts.push(staged.as_ref().expect("staged first reads").f_narrow(0, staged_row, n)?);
                    staged_row += n;
                }
            }
            i = end;
        }
        let stored = if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::f_cat(&parts, 0)? };
        // On a GPU every part is a fresh upload, so the merge may write into its fp32 form; on
        // the CPU a run "moved" to the CPU is the copies themselves.
        Ok(if self.device == Device::Cpu { own_fp32(&stored)? } else { stored.f_to_kind(Kind::Float)? })
    }

    /// Page-locked copies (`rows`, every one present) as `[B, *S]` fp32 on the device, through the
    /// engine's upload stream (crate::cuda::UploadStream): beside the kernels queued before
    /// them instead of after them. None where there is no such stream or it could not take them
    /// (the caller then uploads on the default stream).
    fn upload_on_stream(&self, rows: &[Option<Tensor>]) -> Result<Option<Tensor>, PackError> {
        let Some(mut guard) = self.engine.upload_stream() else { return Ok(None) };
        let stream = guard.as_mut().expect("an upload stream");
        let rows: Vec<Tensor> = rows.iter().map(|r| r.as_ref().expect("every copy present").shallow_clone()).collect();
        let runs = back_to_back(&rows)?;
        let mut shape = vec![rows.len() as i64];
        shape.extend(rows[0].size());
        let out = Tensor::f_empty(shape.as_slice(), (Kind::Float, self.device))?;
        match stream.upload(&runs, &out) {
            Ok(()) => Ok(Some(out)),
            Err(crate::cuda::UploadError::Unsuited) => Ok(None),
            Err(crate::cuda::UploadError::Failed(why)) => {
                tracing::debug!("upload stream: {why}; this upload goes on the default stream");
                Ok(None)
            }
        }
    }

    /// A merge's results on the chunk's keys, from the subtree cache where it has them: full
    /// results as they are, results kept as products rebuilt from the merge's base, the rest
    /// computed (and cached both ways). With whether the tensor is a fresh one that nothing else
    /// holds (full results are shared with the cache).
    pub(super) fn merge_cached(&mut self, node: &Recipe, keys: &[String]) -> Result<(Tensor, bool), PackError> {
        if !self.use_cache {
            return Ok((self.merge(node, keys)?.0, true));
        }
        let hashes: Vec<[u8; 32]> = keys.iter().map(|k| self.a.key_hash(node, k, self.device)).collect();
        let cache = &self.engine.subtrees;
        let cached: Vec<Option<Tensor>> = hashes.iter().map(|h| cache.get(h)).collect();
        // (An engine that keeps no products has none to look up.)
        let factored: Vec<(usize, Factored)> = if self.engine.keeps_subtree_products() {
            (0..keys.len())
                .filter(|&i| cached[i].is_none())
                .filter_map(|i| self.engine.subtree_factors.get(&hashes[i]).map(|f| (i, f)))
                .collect()
        } else {
            Vec::new()
        };
        let rebuilt = if factored.is_empty() { Vec::new() } else { self.rebuild(node, keys, factored)? };
        let mut found: Vec<bool> = cached.iter().map(Option::is_some).collect();
        rebuilt.iter().for_each(|(i, _)| found[*i] = true);
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| !found[i]).collect();
        self.subtree_hits += keys.len() - missing.len() - rebuilt.len();
        self.subtrees_rebuilt += rebuilt.len();
        let computed = if missing.is_empty() {
            None
        } else {
            let sub: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
            let (t, factors) = self.merge(node, &sub)?;
            let root = ptr(node) == self.root;
            // The products first: a tenth of the results' size, kept within their share of the
            // budget while the full results below make room for each other. (The root keeps
            // none: see `merge`.)
            if let Some(f) = factors {
                let rows = missing.iter().enumerate().map(|(j, &i)| Ok((hashes[i], f.key(j as i64)?))).collect::<Result<Vec<_>, PackError>>()?;
                self.engine.subtree_factors.insert_all(rows);
            }
            // Kept where it was computed (device memory on a GPU) as views of the chunk: no kernel
            // per key (a copy each cost ~6 ms per 582 keys on an H100). Nothing writes into merge
            // results, and a chunk's memory returns once its last key is evicted (keys of a
            // chunk are used, and so evicted, together).
            // The root's results go in at the cold end: a slider change asks for the branches
            // below it again, not for the output it replaces, so under pressure the output goes
            // first. (At one priority, a cache too small for both evicted each branch chunk just
            // before the next run needed it: a CPU slider change found none of them.)
            // Below the root a chunk goes in whole or not at all (cache.rs: a run does not evict
            // what it used itself).
            // Either way the rows are one group: evicted together, as their memory is freed.
            let mut rows = Vec::with_capacity(missing.len());
            for (j, &i) in missing.iter().enumerate() {
                rows.push((hashes[i], t.f_select(0, j as i64)?));
            }
            if root {
                cache.insert_all_cold(rows);
            } else {
                cache.insert_all(rows);
            }
            Some(t)
        };
        if missing.len() == keys.len() {
            return Ok((computed.expect("computed"), false));
        }
        if rebuilt.len() == keys.len() {
            // Rows of one rebuilt batch, in order: that batch, which nothing else holds.
            let rows: Vec<Tensor> = rebuilt.iter().map(|(_, t)| t.shallow_clone()).collect();
            if let Some(batch) = consecutive_rows(&rows) {
                return Ok((batch, true));
            }
        }
        if computed.is_none() && rebuilt.is_empty() {
            let rows: Vec<Tensor> = cached.iter().map(|c| c.as_ref().expect("all cached").shallow_clone()).collect();
            if let Some(batch) = consecutive_rows(&rows) {
                return Ok((batch.f_to_device(self.device)?, false));
            }
        }
        let mut rebuilt = rebuilt.into_iter().peekable();
        let mut rows = Vec::with_capacity(keys.len());
        let mut j = 0;
        for (i, c) in cached.into_iter().enumerate() {
            rows.push(match c {
                Some(t) => t.f_to_device(self.device)?,
                None if rebuilt.peek().is_some_and(|(k, _)| *k == i) => rebuilt.next().expect("peeked").1,
                None => {
                    j += 1;
                    computed.as_ref().expect("computed").f_select(0, j as i64 - 1)?
                }
            });
        }
        Ok((Tensor::f_stack(&rows, 0)?, true))
    }

    /// Results of `node` (a merge over its base, no explicit backbone) on some of the chunk's keys
    /// from their kept products (`factored`: index into `keys`, in order): the merge's base is
    /// evaluated again, then the one product that formed each result, keys of one rank together.
    /// Returns each key's result row, in the order given.
    fn rebuild(&mut self, node: &Recipe, keys: &[String], factored: Vec<(usize, Factored)>) -> Result<Vec<(usize, Tensor)>, PackError> {
        let RecipeKind::Merge { base, backbone: None, .. } = &node.kind else {
            // (Products are only kept for merges over their own base.)
            return Ok(Vec::new());
        };
        let mut ranks: Vec<i64> = factored.iter().map(|(_, f)| f.rank()).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut rows: Vec<(usize, Tensor)> = Vec::with_capacity(factored.len());
        for r in ranks {
            let group: Vec<&(usize, Factored)> = factored.iter().filter(|(_, f)| f.rank() == r).collect();
            let sub: Vec<String> = group.iter().map(|(i, _)| keys[*i].clone()).collect();
            let parts: Vec<Factored> = group.iter().map(|(_, f)| f.shallow_clone()).collect();
            let Some(product) = Factored::cat(&parts)? else { continue };
            let (b, fresh) = self.model_owned(base, &sub)?;
            let b = if fresh { b } else { crate::merge::transfer::owned_copy(&b)? };
            let result = product.rebuild(b)?;
            for (j, (i, _)) in group.iter().enumerate() {
                rows.push((*i, result.f_select(0, j as i64)?));
            }
        }
        rows.sort_by_key(|(i, _)| *i);
        Ok(rows)
    }

    /// One merge step on the chunk's keys, and the product that formed its results where every
    /// contribution was low-rank.
    pub(super) fn merge(&mut self, node: &Recipe, keys: &[String]) -> Result<(Tensor, Option<Factored>), PackError> {
        let RecipeKind::Merge { base, target, backbone, t_factor, block_config } = &node.kind else { unreachable!() };
        let mut lap = Lap::start(self.device);
        let (cur, cur_fresh) = self.model_owned(base, keys)?;
        lap.mark("merge base");
        let bb = match backbone {
            None => None,
            Some(b) if b.is_base() || b.is_merge() => Some(self.model_owned(b, keys)?),
            Some(b) => Some((self.dense_weights(b, &cur, keys)?, true)),
        };
        let mut leaves = Vec::new();
        self.a.leaves(target, &mut leaves);
        let mut contributions = Vec::with_capacity(leaves.len());
        for leaf in &leaves {
            contributions.push(self.contribution(leaf, &cur, bb.is_none(), keys)?);
        }
        lap.mark("contributions");
        let (backbone_t, fresh) = match &bb {
            Some((t, fresh)) => (t, *fresh),
            None => (&cur, cur_fresh),
        };
        let stats_keys: Vec<[u8; 32]> = keys.iter().map(|k| self.a.stats_hash(node, k, self.device)).collect();
        lap.mark("hashes");
        // The root's products are not kept: a slider change replaces the root's results, so
        // they would be read again only by a change undone, and under a tight budget (12 GiB
        // beside ComfyUI's SDXL) they pushed out the branches' full results, which every change
        // reads (BENCHMARKS.md has the measurement).
        let keep_products = ptr(node) != self.root;
        // Per-key t (docs/decisions.md D10): t_factor × block × layer multipliers.
        let ts: Vec<f64> = keys.iter().map(|k| t_factor * self.a.mult(block_config, k)).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut distinct: Vec<f64> = Vec::new();
        for t in &ts {
            if !distinct.iter().any(|d| d.to_bits() == t.to_bits()) {
                distinct.push(*t);
            }
        }
        if distinct.len() == 1 {
            let backbone_t = if fresh { backbone_t.shallow_clone() } else { crate::merge::transfer::owned_copy(backbone_t)? };
            let (r, figures, factored) = self.widen_op(distinct[0], backbone_t, &contributions, &key_refs, &stats_keys, keep_products)?;
            lap.mark("widen");
            self.keep_figures(node, &key_refs, figures);
            return Ok((r, factored));
        }
        let mut result = backbone_t.f_zeros_like()?;
        let mut products: Vec<(Tensor, Option<Factored>)> = Vec::new();
        for t in distinct {
            let idx: Vec<i64> = (0..keys.len() as i64).filter(|&i| ts[i as usize].to_bits() == t.to_bits()).collect();
            let index = Tensor::f_from_slice(&idx)?.f_to_device(self.device)?;
            let sel = |x: &Tensor| x.f_index_select(0, &index);
            let sub_c: Vec<Contribution> = contributions
                .iter()
                .map(|c| {
                    Ok(match c {
                        Contribution::Weights(w) => Contribution::Weights(sel(w)?),
                        Contribution::LowRank { up, down } => Contribution::LowRank { up: sel(up)?, down: sel(down)? },
                    })
                })
                .collect::<Result<_, tch::TchError>>()?;
            let sub_keys: Vec<&str> = idx.iter().map(|&i| key_refs[i as usize]).collect();
            let sub_stats: Vec<[u8; 32]> = idx.iter().map(|&i| stats_keys[i as usize]).collect();
            let (r, figures, factored) = self.widen_op(t, sel(backbone_t)?, &sub_c, &sub_keys, &sub_stats, keep_products)?;
            result = result.f_index_copy(0, &index, &r)?;
            self.keep_figures(node, &sub_keys, figures);
            products.push((index, factored));
        }
        Ok((result, scatter_products(keys.len() as i64, products)?))
    }

    /// Keeps the root merge's figures for the run's report (inner merges are contributors of
    /// the root, reported as such).
    fn keep_figures(&mut self, node: &Recipe, keys: &[&str], figures: Option<Tensor>) {
        if let (true, Some(f)) = (ptr(node) == self.root, figures) {
            self.figures.push((keys.iter().map(|k| k.to_string()).collect(), f));
        }
    }

    /// Filter (one contribution) or merge at `t`, writing into `backbone` (the caller's own
    /// tensor), reusing cached column statistics when every key has them (`stats_keys`). With
    /// the result, the report's per-key figures (`None` where the merge computed none), and the
    /// product that formed it where the engine keeps them and `products` asks for it.
    pub(super) fn widen_op(
        &mut self,
        t: f64,
        backbone: Tensor,
        cs: &[Contribution],
        keys: &[&str],
        stats_keys: &[[u8; 32]],
        products: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Factored>), PackError> {
        let w = self.widen.with_t(t)?;
        let w = if products { w } else { w.with_products(false) };
        let mut lap = Lap::start(self.device);
        // The chunk's statistics are stored whole as well as per key: a chunk asked again (a t
        // slider) takes one lookup instead of one per key and a concatenation.
        let chunk = {
            let mut h = blake3::Hasher::new();
            h.update(b"chunk statistics");
            stats_keys.iter().for_each(|k| {
                h.update(k);
            });
            *h.finalize().as_bytes()
        };
        let stats_cache = &self.engine.stats;
        let known = if self.use_cache {
            match stats_cache.get(&chunk) {
                Some(whole) => Some(whole),
                None => {
                    let found: Option<Vec<ColumnStats>> = stats_keys.iter().map(|h| stats_cache.get(h)).collect();
                    found.map(|parts| ColumnStats::cat_keys(&parts)).transpose()?
                }
            }
        } else {
            None
        };
        if known.is_some() {
            self.stats_hits += keys.len();
        }
        lap.mark("statistics lookup");
        let merged = w.merge_with_report(backbone, cs, known.as_ref(), keys)?;
        let (r, used, factored) = (merged.result, merged.stats, merged.factored);
        lap.mark("filter/merge");
        if let (Some(used), None, true) = (used, &known, self.use_cache) {
            for (i, h) in stats_keys.iter().enumerate() {
                // Views: no kernel per key (a copy each was ~30 ms for 582 keys on an H100); the
                // batch's statistics (kilobytes per key) live until its last key is evicted.
                stats_cache.insert(*h, used.keys(i as i64, 1)?);
            }
            stats_cache.insert(chunk, used);
        }
        Ok((r.f_to_kind(Kind::Float)?, merged.summary, factored))
    }

    /// A leaf's contribution: low-rank factors where the set allows it and the backbone is the
    /// merge's base, else the contributor's full weights.
    pub(super) fn contribution(&mut self, leaf: &Recipe, cur: &Tensor, may_low_rank: bool, keys: &[String]) -> Result<Contribution, PackError> {
        if let (RecipeKind::Lora { block_config, .. }, true) = (&leaf.kind, may_low_rank) {
            let set = self.a.sets[&ptr(leaf)].clone();
            let shape = cur.size()[1..].to_vec();
            if keys.iter().all(|k| self.a.low_rank_ok(&set, k)) {
                return self.low_rank(&set, block_config, keys, &shape);
            }
        }
        Ok(Contribution::Weights(self.dense_weights(leaf, cur, keys)?))
    }

    pub(super) fn low_rank(
        &self,
        set: &LoadedSet,
        bc: &Option<Arc<BlockConfig>>,
        keys: &[String],
        shape: &[i64],
    ) -> Result<Contribution, PackError> {
        let specs: Vec<&[crate::lora::DeltaSpec]> = keys.iter().map(|k| set.set.deltas.specs(k)).collect();
        let mults: Vec<f64> = keys.iter().map(|k| self.a.mult(bc, k)).collect();
        let prints: Vec<crate::merge::factors::FilePrint> = set.files.iter().map(|(_, _, id)| (id.path.as_path(), id.fingerprint())).collect();
        if let Some(c) = crate::merge::factors::uniform_low_rank(self.engine, &specs, &mults, shape, &prints)? {
            return Ok(c);
        }
        let out = shape[0];
        let k: i64 = shape[1..].iter().product();
        let mut per_key = Vec::with_capacity(keys.len());
        let mut max_r = 1;
        for key in keys {
            let s_key = self.a.mult(bc, key);
            let mut ups = Vec::new();
            let mut downs = Vec::new();
            for spec in set.set.deltas.specs(key) {
                let (up, down) = spec.low_rank().expect("checked low-rank");
                let r = down.size()[0];
                let scale = spec.effective_scale() * s_key;
                let up = up.f_to_device(self.device)?.f_to_kind(Kind::Float)?.f_reshape([-1, r])?.f_mul_scalar(scale)?;
                let up = match spec.rows {
                    None => up,
                    Some(rows) => {
                        let full = Tensor::f_zeros([out, r], (Kind::Float, self.device))?;
                        full.f_narrow(0, rows.start, rows.len)?.f_copy_(&up)?;
                        full
                    }
                };
                ups.push(up);
                downs.push(down.f_to_device(self.device)?.f_to_kind(Kind::Float)?.f_reshape([r, k])?);
            }
            let (u, d) = if ups.is_empty() {
                (Tensor::f_zeros([out, 1], (Kind::Float, self.device))?, Tensor::f_zeros([1, k], (Kind::Float, self.device))?)
            } else {
                (Tensor::f_cat(&ups, 1)?, Tensor::f_cat(&downs, 0)?)
            };
            max_r = max_r.max(u.size()[1]);
            per_key.push((u, d));
        }
        let mut us = Vec::with_capacity(keys.len());
        let mut ds = Vec::with_capacity(keys.len());
        for (u, d) in per_key {
            let r = u.size()[1];
            if r < max_r {
                us.push(Tensor::f_cat(&[u, Tensor::f_zeros([out, max_r - r], (Kind::Float, self.device))?], 1)?);
                ds.push(Tensor::f_cat(&[d, Tensor::f_zeros([max_r - r, k], (Kind::Float, self.device))?], 0)?);
            } else {
                us.push(u);
                ds.push(d);
            }
        }
        Ok(Contribution::low_rank(Tensor::f_stack(&us, 0)?, Tensor::f_stack(&ds, 0)?))
    }

    /// A contributor's full weights on the chunk (`cur` = the merge's base).
    pub(super) fn dense_weights(&mut self, leaf: &Recipe, cur: &Tensor, keys: &[String]) -> Result<Tensor, PackError> {
        match &leaf.kind {
            RecipeKind::Lora { block_config, .. } => {
                let set = self.a.sets[&ptr(leaf)].clone();
                let mut rows = Vec::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    let base_row = cur.f_select(0, i as i64)?;
                    let kind = self.a.base.kind(key).unwrap_or(Kind::Float);
                    let mut acc = base_row.f_zeros_like()?;
                    for spec in set.set.deltas.specs(key) {
                        spec.add_into(&mut acc, &base_row, kind)?;
                    }
                    let s = self.a.mult(block_config, key);
                    rows.push(if s == 1.0 { acc } else { acc.f_mul_scalar(s)? });
                }
                Ok(cur.f_add(&Tensor::f_stack(&rows, 0)?)?)
            }
            RecipeKind::Model { strength, block_config, .. } => {
                let m = self.a.models[&ptr(leaf)].clone();
                let t = m.file.get_weights(keys)?;
                let w = self.stack(&t)?;
                let w = if m.file.is_scaled() {
                    let s = keys.iter().map(|k| Ok(m.file.scale(k)?.unwrap_or(1.0))).collect::<Result<Vec<f32>, PackError>>()?;
                    scale_rows(w, Some(&s))?
                } else {
                    w
                };
                let scales: Vec<f32> = keys.iter().map(|k| (strength * self.a.mult(block_config, k)) as f32).collect();
                if scales.iter().all(|&s| s == 1.0) {
                    return Ok(w);
                }
                let mut sshape = vec![keys.len() as i64];
                sshape.extend(std::iter::repeat_n(1, w.dim() - 1));
                let s = Tensor::f_from_slice(&scales)?.f_to_device(self.device)?.f_reshape(&sshape)?;
                Ok(cur.f_add(&w.f_sub(cur)?.f_mul(&s)?)?)
            }
            RecipeKind::Merge { .. } | RecipeKind::Base { .. } => self.model(leaf, keys),
            RecipeKind::Compose { .. } => Err(PackError::runtime("a Compose is not a model")),
        }
    }
}

/// The products of a merge that ran in groups of keys (one per distinct t): one `[B, …]` product
/// with each group's rows at their keys' places (`index`), or None where a group kept none or
/// the groups' ranks differ.
fn scatter_products(batch: i64, products: Vec<(Tensor, Option<Factored>)>) -> Result<Option<Factored>, PackError> {
    let Some((_, Some(first))) = products.first() else { return Ok(None) };
    let (us, ds) = (first.up.size(), first.down.size());
    let (up_shape, down_shape) = ([&[batch], &us[1..]].concat(), [&[batch], &ds[1..]].concat());
    let (mut up, mut down) = (
        Tensor::f_zeros(up_shape.as_slice(), (Kind::Float, first.up.device()))?,
        Tensor::f_zeros(down_shape.as_slice(), (Kind::Float, first.down.device()))?,
    );
    for (index, f) in &products {
        let Some(f) = f.as_ref().filter(|f| first.fits(f)) else {
            return Ok(None);
        };
        up = up.f_index_copy(0, index, &f.up)?;
        down = down.f_index_copy(0, index, &f.down)?;
    }
    Ok(Some(Factored { up, down, split_bf16: first.split_bf16 }))
}

/// Scaled fp8 weights' true values (docs/widen.md, "Model formats"): each key's row of `t`
/// (`[B, *S]` fp32, as stacked from the stored fp8 values) times its scale.
fn scale_rows(t: Tensor, scales: Option<&[f32]>) -> Result<Tensor, PackError> {
    let Some(scales) = scales else { return Ok(t) };
    let mut shape = vec![scales.len() as i64];
    shape.extend(std::iter::repeat_n(1, t.dim() - 1));
    let s = Tensor::f_from_slice(scales)?.f_to_device(t.device())?.f_reshape(&shape)?;
    Ok(t.f_mul(&s)?)
}

/// `t` as fp32 in memory of its own. The caller writes into what it gets (a rebuild on a GPU
/// adds its product in place), so never the kept copies themselves: for an fp32 base a
/// conversion would return their storage.
fn own_fp32(t: &Tensor) -> Result<Tensor, tch::TchError> {
    if t.kind() == Kind::Float {
        crate::merge::transfer::owned_copy(t)
    } else {
        t.f_to_kind(Kind::Float)
    }
}

/// Whether `next` continues `prev`'s run in [`Eval::page_locked_copies`]: both first reads, or
/// both copies with `next` right after `prev` in memory.
fn same_run(prev: &Option<Tensor>, next: &Option<Tensor>) -> bool {
    match (prev, next) {
        (None, None) => true,
        (Some(p), Some(n)) => adjacent(p, n),
        _ => false,
    }
}

/// `rows` (same shape and dtype) as `[n, *S]` runs in order: one view per stretch of rows that
/// lie back to back in one tensor's memory, each other row on its own. What goes up in one
/// transfer.
fn back_to_back(rows: &[Tensor]) -> Result<Vec<Tensor>, tch::TchError> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let end = (i + 1..rows.len()).find(|&e| !adjacent(&rows[e - 1], &rows[e])).unwrap_or(rows.len());
        match consecutive_rows(&rows[i..end]) {
            Some(run) => runs.push(run),
            None => {
                for r in &rows[i..end] {
                    runs.push(r.f_unsqueeze(0)?);
                }
            }
        }
        i = end;
    }
    Ok(runs)
}

/// Whether `next` starts where `prev` ends in memory.
fn adjacent(prev: &Tensor, next: &Tensor) -> bool {
    let bytes = prev.numel() * prev.kind().elt_size_in_bytes();
    next.data_ptr() as usize == prev.data_ptr() as usize + bytes
}

/// The key under which a base key's copy is kept: what kind of copy (`label`), the base's
/// content hash for the key (`Analysis::key_hash`, which does not name the device) and the device.
fn base_copy_hash(label: &[u8], key_hash: &[u8; 32], device: Device) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(label);
    h.update(key_hash);
    h.update(&super::analysis::device_tag(device));
    *h.finalize().as_bytes()
}

/// `rows` as one `[B, *S]` view when they lie back to back in one tensor's memory, as the keys
/// of a chunk do in the subtree cache when the same chunk asks for them again: the stack it
/// saves is a copy of the whole chunk and a call per key.
pub(super) fn consecutive_rows(rows: &[Tensor]) -> Option<Tensor> {
    let first = rows.first()?;
    let size = first.size();
    let numel = first.numel();
    let row_bytes = numel * first.kind().elt_size_in_bytes();
    let base = first.data_ptr() as usize;
    let lined_up = first.is_contiguous()
        && rows.iter().enumerate().all(|(i, r)| {
            r.data_ptr() as usize == base + i * row_bytes && r.kind() == first.kind() && r.device() == first.device() && r.size() == size
        });
    if !lined_up {
        return None;
    }
    let mut shape = vec![rows.len() as i64];
    shape.extend_from_slice(&size);
    let mut strides = vec![numel as i64];
    strides.extend_from_slice(&first.stride());
    // `as_strided` checks the extent against the first row's storage, so rows that merely sit
    // next to it in memory (another allocation) fail here instead of being read through it.
    first.f_as_strided(shape.as_slice(), strides.as_slice(), None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_rows_are_one_view_and_anything_else_is_refused() {
        let chunk = Tensor::arange(2 * 3 * 4, (Kind::Float, Device::Cpu)).reshape([2 * 3, 4]).reshape([3, 2, 4]);
        let rows: Vec<Tensor> = (0..3).map(|i| chunk.select(0, i)).collect();
        let view = consecutive_rows(&rows).expect("rows of one chunk, in order");
        assert_eq!(view.size(), [3, 2, 4]);
        assert_eq!(view.data_ptr(), chunk.data_ptr(), "a view, not a copy");
        assert!(view.equal(&chunk));
        // Out of order, a subset with a gap, or rows of different tensors: not one view.
        let swapped = [rows[1].shallow_clone(), rows[0].shallow_clone()];
        assert!(consecutive_rows(&swapped).is_none());
        let gap = [rows[0].shallow_clone(), rows[2].shallow_clone()];
        assert!(consecutive_rows(&gap).is_none());
        let other = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        assert!(consecutive_rows(&[rows[0].shallow_clone(), other]).is_none());
        // A tail of the chunk is a view too.
        let tail = consecutive_rows(&rows[1..]).expect("rows 1 and 2");
        assert!(tail.equal(&chunk.narrow(0, 1, 2)));
    }

    /// What a base's kept copies give the merge is its own memory, whatever their dtype: fp32
    /// copies are copied (a conversion would hand out their storage), others converted.
    #[test]
    fn kept_base_copies_are_never_handed_out_as_they_are() {
        let kept = Tensor::from_slice(&[1.0f32, -2.0, 3.5]).reshape([1, 3]);
        let mut given = own_fp32(&kept).unwrap();
        assert_ne!(given.data_ptr(), kept.data_ptr());
        let _ = given.f_add_scalar_(1.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(kept.view(-1)).unwrap(), [1.0, -2.0, 3.5], "the copy is as it was");
        let half = kept.to_kind(Kind::Half);
        let given = own_fp32(&half).unwrap();
        assert_eq!((given.kind(), Vec::<f32>::try_from(given.view(-1)).unwrap()), (Kind::Float, vec![1.0, -2.0, 3.5]));
    }
}
