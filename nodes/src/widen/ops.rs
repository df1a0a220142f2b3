//! The WIDEN operations on batches of keys: `filter` (one contributor) and `merge` (N), on dense
//! weights or low-rank factors, with the t_factor cases of docs/decisions.md D5 and the fallbacks
//! of docs/widen.md, "Fallbacks".

use tch::{Device, Kind, Tensor};

use super::config::{TMode, WidenConfig};
use super::error::{Result, WidenError};
use super::factored::Factored;
use super::kernels::{add_product, add_product_split_bf16, fresh_copy};
use super::layout::KeyLayout;
use super::merge;
use super::stats::{backbone_sq_norms, dense_sums, finish, ColumnStats, ColumnSums, StackedFactors};
use super::summary;

/// One contributor to a filter or merge, for a batch of `B` keys of one shape `[B, *S]`.
#[derive(Debug)]
pub enum Contribution {
    /// The contributor's full weights `[B, *S]` (a checkpoint, a merged model used as a branch,
    /// LoRA-applied weights): the dense path.
    Weights(Tensor),
    /// `backbone + up · down` (D6), for 2-D+ keys: `up [B, out, r]`, `down [B, r, K]` where `K`
    /// is the product of the key's dims after `out` (conv down factors may also be given as
    /// `[B, r, in, kh, kw]`). Strengths are folded into the factors, several LoRAs of a set are
    /// concatenated along `r`, and keys of a batch with smaller rank are padded with zeros.
    LowRank { up: Tensor, down: Tensor },
}

impl Contribution {
    pub fn low_rank(up: Tensor, down: Tensor) -> Self {
        Self::LowRank { up, down }
    }

    /// Concatenates low-rank deltas that apply to the same keys (the LoRAs of one set) along the
    /// rank dim: their sum is one low-rank delta.
    pub fn concat_low_rank(parts: &[(Tensor, Tensor)]) -> Result<Self> {
        if parts.is_empty() {
            return Err(WidenError::Input("concat_low_rank needs at least one (up, down) pair".into()));
        }
        let ups: Vec<&Tensor> = parts.iter().map(|(u, _)| u).collect();
        let downs: Vec<Tensor> = parts
            .iter()
            .map(|(_, d)| {
                let s = d.size();
                d.f_reshape([s[0], s[1], -1])
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self::LowRank { up: Tensor::f_cat(&ups, 2)?, down: Tensor::f_cat(&downs, 1)? })
    }
}

/// How the low-rank path forms `B + U·D` (the one product that scales with N·rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Product {
    /// fp32 matrix product: the reference.
    #[default]
    Fp32,
    /// On CUDA, three bf16 tensor-core products with fp32 accumulation (a hi/lo split of both
    /// factors): ~1e-5 relative to fp32, several times faster for large N·rank. fp32 elsewhere.
    SplitBf16,
}

/// The precision of the low-rank path's statistics (the dense path always uses float64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Statistics {
    /// Column norms and `Uᵀ·B` in float64 (one float64 copy of the batch's backbone): within ~1e-8
    /// of exact, so ranks only differ from a float64 evaluation where statistics truly tie.
    #[default]
    Float64,
    /// fp32 (no copy; about half the memory traffic): ~1e-7..1e-6 relative. WIDEN's importance
    /// masks are step functions of ranks, so now and then two nearly equal columns swap across a
    /// threshold and a key's merged delta moves by ~1e-2 (measured on 1 key in 16 at 1280 columns
    /// and 8 LoRAs).
    Fp32,
}

/// A merge's result with what it computed along the way.
pub struct Merged {
    /// `[B, *S]` on the compute device in the backbone's dtype.
    pub result: Tensor,
    /// The column statistics used (see [`Widen::merge_with_stats`]).
    pub stats: Option<ColumnStats>,
    /// Per key and contributor, the figures of [`super::summary`] (`[B, N, FIGURES]` fp32, on the
    /// compute device); `None` where the merge fell back (docs/widen.md, "Fallbacks") or ran
    /// with WIDEN off (`t < 0`).
    pub summary: Option<Tensor>,
    /// Where every contribution was low-rank: the product that formed the result from the
    /// backbone ([`Factored::rebuild`] gives the result again, bit for bit), if asked for
    /// ([`Widen::with_products`]). `None` with dense contributions, shortcuts (D5) and fallbacks.
    pub factored: Option<Factored>,
}

/// WIDEN with a configuration, computing on one device.
#[derive(Clone, Debug)]
pub struct Widen {
    config: WidenConfig,
    device: Device,
    product: Product,
    statistics: Statistics,
    /// Whether merges hand back the product that formed their result ([`Merged::factored`]).
    keep_products: bool,
}

/// A contribution on the compute device in fp32 and in the working layout (`[B, n]` or
/// `[B, out, K]`; low-rank: `up [B, out, r]`, `down [B, r, K]`).
enum Prepared {
    Dense { weights: Tensor, delta: Tensor },
    LowRank { up: Tensor, down: Tensor },
}

impl Widen {
    pub fn new(config: WidenConfig, device: Device) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, device, product: Product::Fp32, statistics: Statistics::Float64, keep_products: false })
    }

    /// Default configuration on CUDA when libtorch sees a GPU, else the CPU.
    pub fn default_on_best_device() -> Self {
        Self {
            config: WidenConfig::default(),
            device: Device::cuda_if_available(),
            product: Product::Fp32,
            statistics: Statistics::Float64,
            keep_products: false,
        }
    }

    /// The same, handing back the product that formed each low-rank merge's result
    /// ([`Merged::factored`]; off: none, and on the CPU no copy of the keys' products).
    pub fn with_products(mut self, keep: bool) -> Self {
        self.keep_products = keep;
        self
    }

    /// The same with another precision for the low-rank statistics.
    pub fn with_statistics(mut self, statistics: Statistics) -> Self {
        self.statistics = statistics;
        self
    }

    pub fn statistics(&self) -> Statistics {
        self.statistics
    }

    /// The same with another way of forming the low-rank product.
    pub fn with_product(mut self, product: Product) -> Self {
        self.product = product;
        self
    }

    pub fn product(&self) -> Product {
        self.product
    }

    pub fn config(&self) -> &WidenConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The same settings with another `t_factor` (per-op and per-block instances).
    pub fn with_t(&self, t_factor: f64) -> Result<Self> {
        Ok(Self::new(self.config.with_t(t_factor), self.device)?
            .with_product(self.product)
            .with_statistics(self.statistics)
            .with_products(self.keep_products))
    }

    /// `filter_delta` on the spec's terms: `lora_applied` and `backbone` both `[B, *S]`.
    pub fn filter_delta(&self, lora_applied: &Tensor, backbone: &Tensor, keys: &[&str]) -> Result<Tensor> {
        self.filter(backbone, &Contribution::Weights(lora_applied.shallow_clone()), keys)
    }

    /// `merge_weights` on the spec's terms: N weight tensors and the backbone, all `[B, *S]`.
    pub fn merge_weights(&self, weights: &[Tensor], backbone: &Tensor, keys: &[&str]) -> Result<Tensor> {
        let contributions: Vec<Contribution> =
            weights.iter().map(|w| Contribution::Weights(w.shallow_clone())).collect();
        self.merge(backbone, &contributions, keys)
    }

    /// Filters one contribution against the backbone. Returns `[B, *S]` on the compute device in
    /// the backbone's dtype. `keys` name the batch's keys for the fallback warning (may be empty).
    ///
    /// Errors: CUDA out-of-memory and invalid configurations are returned; any other failure is
    /// logged and replaced by the contribution's weights, unfiltered (docs/widen.md, "Fallbacks").
    pub fn filter(&self, backbone: &Tensor, contribution: &Contribution, keys: &[&str]) -> Result<Tensor> {
        self.config.validate()?;
        let _guard = tch::no_grad_guard();
        let contributions = std::slice::from_ref(contribution);
        self.guarded("filter_delta", keys, || self.run(backbone, contributions, true, false), || {
            self.mean_of_weights(backbone, contributions)
        })
    }

    /// [`Widen::filter`] that may write the result into the backbone's storage, saving a full read
    /// and write of the key on the low-rank path. For callers that hold their own fp32 copy of the
    /// backbone on the compute device and do not need it afterwards (pass a tensor nothing else
    /// uses; after an error its contents are unspecified).
    pub fn filter_reusing(&self, backbone: Tensor, contribution: &Contribution, keys: &[&str]) -> Result<Tensor> {
        self.config.validate()?;
        let _guard = tch::no_grad_guard();
        let contributions = std::slice::from_ref(contribution);
        self.guarded("filter_delta", keys, || self.run(&backbone, contributions, true, true), || {
            self.mean_of_weights(&backbone, contributions)
        })
    }

    /// [`Widen::merge`] that may write the result into the backbone's storage (see
    /// [`Widen::filter_reusing`]).
    pub fn merge_reusing(&self, backbone: Tensor, contributions: &[Contribution], keys: &[&str]) -> Result<Tensor> {
        if contributions.is_empty() {
            return Err(WidenError::EmptyWeights);
        }
        self.config.validate()?;
        let _guard = tch::no_grad_guard();
        self.guarded("merge_weights", keys, || self.run(&backbone, contributions, false, true), || {
            self.mean_of_weights(&backbone, contributions)
        })
    }

    /// [`Widen::merge`] (N ≥ 2) or [`Widen::filter`] (N = 1) that reuses column statistics and
    /// returns the ones it used. The statistics depend on the backbone and the contributions but
    /// not on `t_factor`, so a caller that keeps them redoes a merge with another t without
    /// reading the contributions' factors against the backbone again. `known` must come from an
    /// earlier call on the same backbone, contributions and keys (in the same order); the result
    /// is then bit-identical to a call without it. Statistics are `None` for 1-D keys and for
    /// t_factors that need none (D5). Like [`Widen::merge_reusing`], the result may be written
    /// into `backbone`'s storage.
    pub fn merge_with_stats(
        &self,
        backbone: Tensor,
        contributions: &[Contribution],
        known: Option<&ColumnStats>,
        keys: &[&str],
    ) -> Result<(Tensor, Option<ColumnStats>)> {
        let m = self.merge_with_report(backbone, contributions, known, keys)?;
        Ok((m.result, m.stats))
    }

    /// [`Widen::merge_with_stats`], with the per-key figures a merge report reads
    /// (docs/widen.md, "Report"): a few reductions of what the merge computes anyway.
    pub fn merge_with_report(
        &self,
        backbone: Tensor,
        contributions: &[Contribution],
        known: Option<&ColumnStats>,
        keys: &[&str],
    ) -> Result<Merged> {
        if contributions.is_empty() {
            return Err(WidenError::EmptyWeights);
        }
        self.config.validate()?;
        let _guard = tch::no_grad_guard();
        if let (Some(s), Ok(KeyLayout::Columns { batch, k, .. })) = (known, KeyLayout::of(&backbone.size())) {
            // A caller's mix-up, not a numerical failure: no fallback.
            s.check_fits(contributions.len() as i64, batch, k)?;
        }
        let is_filter = contributions.len() == 1;
        let op = if is_filter { "filter_delta" } else { "merge_weights" };
        let (mut used, mut figures, mut factored) = (None, None, None);
        let result = self.guarded(
            op,
            keys,
            || {
                let ran = self.run_with(&backbone, contributions, is_filter, true, known)?;
                used = ran.stats;
                figures = ran.summary;
                factored = ran.factored;
                Ok(ran.result)
            },
            || self.mean_of_weights(&backbone, contributions),
        )?;
        Ok(Merged { result, stats: used, summary: figures, factored })
    }

    /// Merges N contributions against the backbone. Returns `[B, *S]` on the compute device in the
    /// backbone's dtype.
    ///
    /// Errors: an empty list, CUDA out-of-memory and invalid configurations are returned; any other
    /// failure is logged and replaced by the element-wise mean of the contributors' weights
    /// (docs/widen.md, "Fallbacks").
    pub fn merge(&self, backbone: &Tensor, contributions: &[Contribution], keys: &[&str]) -> Result<Tensor> {
        if contributions.is_empty() {
            return Err(WidenError::EmptyWeights);
        }
        self.config.validate()?;
        let _guard = tch::no_grad_guard();
        self.guarded("merge_weights", keys, || self.run(backbone, contributions, false, false), || {
            self.mean_of_weights(backbone, contributions)
        })
    }

    /// Column statistics of each contribution against the backbone, for 2-D+ keys: what the merge
    /// ranks (`dm`, `dd` per key and column, fp32, on the compute device). For reports, tests and
    /// callers that cache per-branch statistics.
    pub fn column_stats(&self, backbone: &Tensor, contributions: &[Contribution]) -> Result<ColumnStats> {
        let _guard = tch::no_grad_guard();
        let shape = backbone.size();
        let layout = KeyLayout::of(&shape)?;
        let KeyLayout::Columns { batch, out, k, .. } = layout else {
            return Err(WidenError::Input(format!("column statistics need 2-D+ keys; got shape {shape:?}")));
        };
        let b = self.to_compute(backbone)?.f_reshape([batch, out, k])?;
        let prepared =
            contributions.iter().map(|c| self.prepare(c, &b, &layout, &shape)).collect::<Result<Vec<_>>>()?;
        column_stats(&b, &prepared, low_rank_stack(&prepared)?.as_ref(), self.statistics)
    }

    fn guarded(
        &self,
        op: &str,
        keys: &[&str],
        body: impl FnOnce() -> Result<Tensor>,
        fallback: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        match body() {
            Ok(t) => Ok(t),
            Err(e) if e.is_out_of_memory() => Err(e),
            Err(e) => {
                let what = if op == "filter_delta" {
                    "passing the contribution through unfiltered"
                } else {
                    "using the mean of the contributors' weights"
                };
                tracing::warn!(op, keys = %keys.join(", "), error = %e, "WIDEN {op} failed; {what}");
                fallback()
            }
        }
    }

    fn to_compute(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.f_to_device(self.device)?.f_to_kind(Kind::Float)?)
    }

    /// On the CPU, each key runs alone, on its own fresh copy: vectorized `exp` (softmax) and
    /// parallel reductions give last-bit differences depending on where an element sits in the
    /// batch, so this is what makes a key's result bit-identical at any batch size (D4). CUDA runs
    /// the whole batch; its statistics are per key as well.
    /// `reuse`: the caller gave up the backbone, its storage may hold the result.
    fn run(&self, backbone: &Tensor, contributions: &[Contribution], is_filter: bool, reuse: bool) -> Result<Tensor> {
        Ok(self.run_with(backbone, contributions, is_filter, reuse, None)?.result)
    }

    /// [`Widen::run`] with known statistics (`[N, B, K]`), returning the statistics it used.
    fn run_with(
        &self,
        backbone: &Tensor,
        contributions: &[Contribution],
        is_filter: bool,
        reuse: bool,
        known: Option<&ColumnStats>,
    ) -> Result<Merged> {
        let batch = backbone.size().first().copied().unwrap_or(0);
        if self.device != Device::Cpu || backbone.dim() < 2 || batch == 0 {
            // (Scalar keys: the batched code reports the unsupported rank and the caller falls back.)
            return self.run_batch(backbone, contributions, is_filter, reuse, known);
        }
        let mut results = Vec::with_capacity(batch as usize);
        let mut stats = Vec::with_capacity(batch as usize);
        let mut figures = Vec::with_capacity(batch as usize);
        let mut factors = Vec::with_capacity(batch as usize);
        for key in 0..batch {
            let one = |t: &Tensor| -> Result<Tensor> { fresh_copy(&t.f_narrow(0, key, 1)?) };
            let parts = contributions
                .iter()
                .map(|c| {
                    Ok(match c {
                        Contribution::Weights(w) => Contribution::Weights(one(w)?),
                        Contribution::LowRank { up, down } => Contribution::LowRank { up: one(up)?, down: one(down)? },
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let known_one = known.map(|s| s.keys(key, 1)).transpose()?;
            // The per-key copy is ours: the result may overwrite it.
            let ran = self.run_batch(&one(backbone)?, &parts, is_filter, true, known_one.as_ref())?;
            results.push(ran.result);
            stats.extend(ran.stats);
            figures.extend(ran.summary);
            factors.extend(ran.factored);
        }
        let stats = if stats.len() == batch as usize { Some(ColumnStats::cat_keys(&stats)?) } else { None };
        let summary = if figures.len() == batch as usize { Some(Tensor::f_cat(&figures, 0)?) } else { None };
        let factored = if factors.len() == batch as usize { Factored::cat(&factors)? } else { None };
        Ok(Merged { result: Tensor::f_cat(&results, 0)?, stats, summary, factored })
    }

    fn run_batch(
        &self,
        backbone: &Tensor,
        contributions: &[Contribution],
        is_filter: bool,
        reuse: bool,
        known: Option<&ColumnStats>,
    ) -> Result<Merged> {
        let layout = KeyLayout::of(&backbone.size())?;
        let shape = backbone.size();
        let out_kind = backbone.kind();
        match self.config.t_mode() {
            TMode::BackboneOnly => {
                let figures = summary::dropped(contributions.len() as i64, shape[0], self.device)?;
                return Ok(Merged {
                    result: backbone.f_to_device(self.device)?,
                    stats: None,
                    summary: Some(figures),
                    factored: None,
                });
            }
            TMode::Off if is_filter => {
                if let Contribution::Weights(w) = &contributions[0] {
                    check_shape(w, &shape)?;
                    let result = w.f_to_device(self.device)?.f_to_kind(out_kind)?;
                    return Ok(Merged { result, stats: None, summary: None, factored: None });
                }
            }
            _ => {}
        }
        let b = self.to_compute(backbone)?;
        // A dtype or device conversion made `b` a tensor of our own.
        let owned = reuse || b.data_ptr() != backbone.data_ptr();
        let b = match &layout {
            KeyLayout::OneD { .. } => b,
            KeyLayout::Columns { batch, out, k, .. } => b.f_reshape([*batch, *out, *k])?,
        };
        let prepared = contributions
            .iter()
            .map(|c| self.prepare(c, &b, &layout, &shape))
            .collect::<Result<Vec<_>>>()?;
        let stacked = low_rank_stack(&prepared)?;
        let (scales, stats, figures) = match self.config.t_mode() {
            TMode::Off => (None, None, None),
            _ => {
                let (s, st, f) = self.scales(&b, &prepared, stacked.as_ref(), &layout, known)?;
                (Some(s), st, Some(f))
            }
        };
        let split = self.product == Product::SplitBf16 && self.device.is_cuda();
        let (result, factored) = combine(&b, &prepared, stacked.as_ref(), scales.as_ref(), &layout, split, owned)?;
        // Only an fp32 backbone's result is the product itself (another dtype rounds it after).
        let factored = factored.filter(|_| self.keep_products && out_kind == Kind::Float);
        Ok(Merged { result: result.f_reshape(shape.as_slice())?.f_to_kind(out_kind)?, stats, summary: figures, factored })
    }

    fn prepare(&self, c: &Contribution, b: &Tensor, layout: &KeyLayout, shape: &[i64]) -> Result<Prepared> {
        match c {
            Contribution::Weights(w) => {
                check_shape(w, shape)?;
                let w = self.to_compute(w)?.f_reshape(b.size())?;
                let delta = w.f_sub(b)?;
                Ok(Prepared::Dense { weights: w, delta })
            }
            Contribution::LowRank { up, down } => {
                let KeyLayout::Columns { batch, out, k, .. } = *layout else {
                    return Err(WidenError::Input(format!(
                        "low-rank contributions need 2-D+ keys; this batch has shape {shape:?}"
                    )));
                };
                let (us, ds) = (up.size(), down.size());
                let r = us.get(2).copied().unwrap_or(-1);
                let down_ok = ds.len() >= 3
                    && ds[0] == batch
                    && ds[1] == r
                    && ds[2..].iter().product::<i64>() == k;
                if us.len() != 3 || us[0] != batch || us[1] != out || !down_ok {
                    return Err(WidenError::Input(format!(
                        "low-rank factors up {us:?} / down {ds:?} do not fit keys of shape \
                         {shape:?}: expected up [{batch}, {out}, r] and down [{batch}, r, {k}]"
                    )));
                }
                Ok(Prepared::LowRank {
                    up: self.to_compute(up)?,
                    down: self.to_compute(down)?.f_reshape([batch, r, k])?,
                })
            }
        }
    }

    /// `S [N, B, K]` (or `[N, B, n]` for 1-D keys), the column statistics they came from, and
    /// the report's figures ([`super::summary`]).
    fn scales(
        &self,
        b: &Tensor,
        prepared: &[Prepared],
        stacked: Option<&StackedFactors>,
        layout: &KeyLayout,
        known: Option<&ColumnStats>,
    ) -> Result<(Tensor, Option<ColumnStats>, Tensor)> {
        match layout {
            KeyLayout::OneD { .. } => {
                let deltas: Vec<&Tensor> = prepared
                    .iter()
                    .map(|p| match p {
                        Prepared::Dense { delta, .. } => Ok(delta),
                        Prepared::LowRank { .. } => Err(WidenError::Input("low-rank delta on a 1-D key".into())),
                    })
                    .collect::<Result<_>>()?;
                let deltas = Tensor::f_stack(&deltas, 0)?;
                let scales = merge::vector_scales(&self.config, &deltas)?;
                let figures = summary::vectors(&scales, &deltas)?;
                Ok((scales, None, figures))
            }
            KeyLayout::Columns { out, .. } => {
                // (`merge_with_stats`, the only way in for known statistics, checked their shape.)
                let stats = match known {
                    Some(s) => s.shallow_clone(),
                    None => column_stats(b, prepared, stacked, self.statistics)?,
                };
                let scales = merge::column_scales(&self.config, &stats, *out)?;
                let figures = summary::columns(&scales, &stats)?;
                Ok((scales, Some(stats), figures))
            }
        }
    }

    /// The fallback of both operations: the mean of the contributors' weights (for one
    /// contributor, its weights), in the backbone's dtype.
    fn mean_of_weights(&self, backbone: &Tensor, contributions: &[Contribution]) -> Result<Tensor> {
        let shape = backbone.size();
        let out_kind = backbone.kind();
        let mut weights = Vec::with_capacity(contributions.len());
        for c in contributions {
            weights.push(match c {
                Contribution::Weights(w) => self.to_compute(w)?,
                Contribution::LowRank { up, down } => {
                    let b = self.to_compute(backbone)?;
                    let bs = b.size();
                    let (up, down) = (self.to_compute(up)?, self.to_compute(down)?);
                    let ds = down.size();
                    let flat = b.f_reshape([bs[0], bs[1], -1])?;
                    add_product(&flat, &up, &down.f_reshape([ds[0], ds[1], -1])?, false)?
                        .f_reshape(shape.as_slice())?
                }
            });
        }
        Ok(Tensor::f_stack(&weights, 0)?.f_mean_dim(0, false, Kind::Float)?.f_to_kind(out_kind)?)
    }
}

fn check_shape(w: &Tensor, shape: &[i64]) -> Result<()> {
    if w.size() != shape {
        return Err(WidenError::Input(format!(
            "contribution has shape {:?} but the backbone has {shape:?}",
            w.size()
        )));
    }
    Ok(())
}

/// The low-rank contributions, padded to a common rank and stacked (None if there are none).
fn low_rank_stack(prepared: &[Prepared]) -> Result<Option<StackedFactors>> {
    let parts: Vec<(&Tensor, &Tensor)> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::LowRank { up, down } => Some((up, down)),
            Prepared::Dense { .. } => None,
        })
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(StackedFactors::new(&parts)?))
}

/// Column statistics of every contribution, in their order: dense ones from their weights, the
/// low-rank ones together from their factors with one shared `Uᵀ·B`.
fn column_stats(
    b: &Tensor,
    prepared: &[Prepared],
    stacked: Option<&StackedFactors>,
    statistics: Statistics,
) -> Result<ColumnStats> {
    let dense: Vec<&Tensor> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::Dense { weights, .. } => Some(weights),
            Prepared::LowRank { .. } => None,
        })
        .collect();
    // One float64 copy of the backbone serves the norms, the dense sums and `Uᵀ·B`.
    let b_stats = if dense.is_empty() && statistics == Statistics::Fp32 {
        b.shallow_clone()
    } else {
        b.f_to_kind(Kind::Double)?
    };
    let mb2 = backbone_sq_norms(&b_stats)?;
    let dense_sums = if dense.is_empty() { None } else { Some(dense_sums(&b_stats, &dense)?) };
    let low_sums = match stacked {
        Some(f) => Some(f.sums(&b_stats)?),
        None => None,
    };
    let sums = match (dense_sums, low_sums) {
        (Some(d), None) => d,
        (None, Some(l)) => l,
        (Some(d), Some(l)) => interleave(prepared, d, l)?,
        (None, None) => unreachable!("a merge has at least one contribution"),
    };
    finish(&mb2, &sums, b.size()[1] == 1)
}

/// Puts dense and low-rank sums back in the contributions' order.
fn interleave(prepared: &[Prepared], dense: ColumnSums, low: ColumnSums) -> Result<ColumnSums> {
    let (mut a, mut c, mut z) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i_dense, mut i_low) = (0, 0);
    let no_zero = low.a.f_select(0, 0)?.f_zeros_like()?.f_to_kind(Kind::Bool)?;
    let dense_zero = dense.w_zero.as_ref().expect("dense sums mark zero columns");
    for p in prepared {
        match p {
            Prepared::Dense { .. } => {
                a.push(dense.a.f_select(0, i_dense)?);
                c.push(dense.c.f_select(0, i_dense)?);
                z.push(dense_zero.f_select(0, i_dense)?);
                i_dense += 1;
            }
            Prepared::LowRank { .. } => {
                a.push(low.a.f_select(0, i_low)?);
                c.push(low.c.f_select(0, i_low)?);
                z.push(no_zero.shallow_clone());
                i_low += 1;
            }
        }
    }
    Ok(ColumnSums { a: Tensor::f_stack(&a, 0)?, c: Tensor::f_stack(&c, 0)?, w_zero: Some(Tensor::f_stack(&z, 0)?) })
}

/// `backbone + Σₙ Sₙ ⊙ Δₙ` (all scales 1 when `scales` is None: task arithmetic). Dense deltas are
/// accumulated first and the backbone added last; low-rank deltas enter through one
/// `B + [U₁ … U_N]·[D₁·diag(S₁); …]` product, so the backbone is read once and the result
/// written once. With the result, that product's operands where it is the whole result (no dense
/// contribution).
fn combine(
    b: &Tensor,
    prepared: &[Prepared],
    stacked: Option<&StackedFactors>,
    scales: Option<&Tensor>,
    layout: &KeyLayout,
    split_bf16: bool,
    b_owned: bool,
) -> Result<(Tensor, Option<Factored>)> {
    let columns = matches!(layout, KeyLayout::Columns { .. });
    let mut acc: Option<Tensor> = None;
    let mut low_rows = Vec::new();
    for (n, p) in prepared.iter().enumerate() {
        match p {
            Prepared::Dense { delta, .. } => {
                let term = match scales {
                    Some(s) => {
                        let s = s.f_select(0, n as i64)?;
                        delta.f_mul(&if columns { s.f_unsqueeze(1)? } else { s })?
                    }
                    None => delta.shallow_clone(),
                };
                acc = Some(match acc {
                    None => term,
                    Some(a) => a.f_add(&term)?,
                });
            }
            Prepared::LowRank { .. } => low_rows.push(n as i64),
        }
    }
    let whole = acc.is_none();
    let (base, base_owned) = match acc {
        Some(a) => (b.f_add(&a)?, true),
        None => (b.shallow_clone(), b_owned),
    };
    let Some(stacked) = stacked else { return Ok((base, None)) };
    let low_scales = match scales {
        Some(s) if low_rows.len() == prepared.len() => Some(s.shallow_clone()),
        Some(s) => Some(s.f_index_select(0, &Tensor::f_from_slice(&low_rows)?.f_to_device(s.device())?)?),
        None => None,
    };
    let (up, down) = stacked.concatenated(low_scales.as_ref())?;
    let result = if split_bf16 {
        add_product_split_bf16(&base, &up, &down, base_owned)?
    } else {
        add_product(&base, &up, &down, base_owned)?
    };
    Ok((result, whole.then_some(Factored { up, down, split_bf16 })))
}
