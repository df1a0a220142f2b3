//! A float64 evaluation of WIDEN, written independently of the tensor code, for tests and
//! accuracy reports.
//!
//! It follows the definitions literally, one key at a time, on plain `f64` slices: column norms
//! and cosines from their definitions (not D21's algebra), ranks by counting, sparsemax and
//! entmax by bisection on the threshold (not by sorting). The semantics are comfyrs's
//! (docs/decisions.md D1–D5): mid-rank ties, exact entmax, non-contributors excluded per key,
//! per-key epsilons, t_factor cases; percentile ranks are exact rationals, so threshold comparisons
//! are made exactly.

use tch::{Kind, Tensor};

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::lora::{LoadOptions, LoraFile, LoraSet, NameIndex};
use comfyrs_nodes::models::FormatError;
use comfyrs_nodes::widen::config::{Calibration, Ranking, Sparsity, TMode, WidenConfig};
use comfyrs_nodes::widen::eps::DEGENERATE_NORM;

/// One key's layout: a vector of `n`, or `out` rows of `k` columns (row-major `[out, k]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Vector(usize),
    Columns { out: usize, k: usize },
}

impl Shape {
    /// The per-key layout of a batched shape `[B, *S]`.
    pub fn of_batched(size: &[i64]) -> Self {
        if size.len() == 2 {
            Self::Vector(size[1] as usize)
        } else {
            Self::Columns { out: size[1] as usize, k: size[2..].iter().product::<i64>() as usize }
        }
    }

    fn numel(self) -> usize {
        match self {
            Self::Vector(n) => n,
            Self::Columns { out, k } => out * k,
        }
    }
}

/// `(|mW − mB|, 1 − cos)` per column, from the definitions: norms as square roots of sums of
/// squares, and `1 − cos` as half the squared distance of the unit columns (exactly 0 for equal
/// columns, no cancellation for nearly equal ones).
pub fn column_stats(b: &[f64], w: &[f64], out: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut dm = vec![0.0; k];
    let mut dd = vec![0.0; k];
    for col in 0..k {
        let column = |x: &[f64]| (0..out).map(|row| x[row * k + col]).collect::<Vec<f64>>();
        let (bc, wc) = (column(b), column(w));
        let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let (mb, mw) = (norm(&bc), norm(&wc));
        dm[col] = (mw - mb).abs();
        dd[col] = if mb <= DEGENERATE_NORM || mw <= DEGENERATE_NORM {
            1.0
        } else {
            bc.iter().zip(&wc).map(|(x, y)| (x / mb - y / mw).powi(2)).sum::<f64>() / 2.0
        };
    }
    (dm, dd)
}

/// Mid-rank percentile numerators `n = 2·#less + #equal + 1` (rank = n / 2K).
pub fn percentile_numerators(x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            let less = x.iter().filter(|&&u| u < v).count();
            let equal = x.iter().filter(|&&u| u == v).count();
            (2 * less + equal + 1) as f64
        })
        .collect()
}

fn adaptive_eps(x: &[f64]) -> f64 {
    let mean_abs = x.iter().map(|v| v.abs()).sum::<f64>() / x.len() as f64;
    (1e-8 * mean_abs).max(1e-12)
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn var_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return f64::NAN;
    }
    let m = mean(x);
    x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64
}

pub fn rank(x: &[f64], strategy: Ranking) -> Vec<f64> {
    let k = x.len() as f64;
    match strategy {
        Ranking::Percentile | Ranking::Soft => {
            percentile_numerators(x).into_iter().map(|n| n / (2.0 * k)).collect()
        }
        Ranking::ZScore => {
            if x.len() < 2 {
                return vec![0.5; x.len()];
            }
            let (mu, sd, eps) = (mean(x), var_unbiased(x).sqrt(), adaptive_eps(x));
            x.iter().map(|v| 1.0 / (1.0 + (-(v - mu) / (sd + eps)).exp())).collect()
        }
        Ranking::MinMax => {
            let lo = x.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let eps = adaptive_eps(x);
            x.iter().map(|v| (v - lo) / (hi - lo + eps)).collect()
        }
    }
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Solves `Σ f(x_i − τ) = 1` for τ by bisection (f non-increasing in τ) and returns `f(x_i − τ)`.
fn threshold_map(x: &[f64], f: impl Fn(f64) -> f64, lo_offset: f64) -> Vec<f64> {
    let top = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (mut lo, mut hi) = (top - lo_offset, top);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let total: f64 = x.iter().map(|&v| f(v - mid)).sum();
        if total > 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let tau = 0.5 * (lo + hi);
    x.iter().map(|&v| f(v - tau)).collect()
}

/// Sparsemax by bisection: `p_i = max(x_i − τ, 0)`, Σp = 1.
pub fn sparsemax(x: &[f64]) -> Vec<f64> {
    threshold_map(x, |z| z.max(0.0), 1.0)
}

/// Entmax 1.5 by bisection: `p_i = max(x_i/2 − τ, 0)²`, Σp = 1.
pub fn entmax15(x: &[f64]) -> Vec<f64> {
    let half: Vec<f64> = x.iter().map(|v| v / 2.0).collect();
    threshold_map(&half, |z| z.max(0.0).powi(2), 1.0)
}

fn sparsity(method: Sparsity, x: &[f64]) -> Vec<f64> {
    match method {
        Sparsity::Softmax => softmax(x),
        Sparsity::Sparsemax => sparsemax(x),
        Sparsity::Entmax => entmax15(x),
    }
}

/// The filter's scale for each position given the importances and, for percentile ranks, their
/// integer numerators with the numerator of their mean and the common denominator.
fn soft_mask(t: f64, imp: &[f64], exact: Option<(&[f64], f64, f64)>, eps: f64, flat: bool) -> Vec<f64> {
    if flat {
        return vec![1.0; imp.len()];
    }
    let (thr, full): (f64, Vec<bool>) = match exact {
        Some((numer, mean_numer, denom)) => {
            let thr = (t * mean_numer / denom).max(eps);
            (thr, numer.iter().zip(imp).map(|(&n, &v)| n >= t * mean_numer && v >= eps).collect())
        }
        None => {
            let thr = (t * mean(imp)).max(eps);
            (thr, imp.iter().map(|&v| v >= thr).collect())
        }
    };
    imp.iter()
        .zip(full)
        .map(|(&v, f)| {
            let m = if f { 1.0 } else { (v / thr).min(1.0) };
            if m.is_nan() || m == f64::INFINITY {
                1.0
            } else if m == f64::NEG_INFINITY {
                0.0
            } else {
                m
            }
        })
        .collect()
}

/// The filter's per-position scales for one key (positions: elements or columns).
fn filter_scales(cfg: &WidenConfig, shape: Shape, b: &[f64], w: &[f64]) -> Vec<f64> {
    let delta: Vec<f64> = w.iter().zip(b).map(|(x, y)| x - y).collect();
    let t = cfg.t_factor;
    match shape {
        Shape::Vector(n) => {
            let mag: Vec<f64> = delta.iter().map(|v| v.abs()).collect();
            let eps = adaptive_eps(&delta);
            let flat = var_unbiased(&mag) < eps;
            let imp = rank(&mag, cfg.ranking);
            let numer = percentile_numerators(&mag);
            let exact = is_percentile(cfg).then(|| (numer.as_slice(), (n + 1) as f64, (2 * n) as f64));
            soft_mask(t, &imp, exact, eps, flat)
        }
        Shape::Columns { out, k } => {
            let (dm, dd) = column_stats(b, w, out, k);
            let rms = (delta.iter().map(|v| v * v).sum::<f64>() / delta.len() as f64).sqrt();
            let eps = (1e-8 * rms).max(1e-12);
            let both: Vec<f64> = dm.iter().zip(&dd).map(|(x, y)| x + y).collect();
            let flat = var_unbiased(&both) < eps;
            let (rm, rd) = (rank(&dm, cfg.ranking), rank(&dd, cfg.ranking));
            let imp: Vec<f64> = rm.iter().zip(&rd).map(|(x, y)| (x + y) / 2.0).collect();
            let numer: Vec<f64> = percentile_numerators(&dm)
                .iter()
                .zip(percentile_numerators(&dd))
                .map(|(x, y)| x + y)
                .collect();
            let exact = is_percentile(cfg).then(|| (numer.as_slice(), (2 * (k + 1)) as f64, (4 * k) as f64));
            soft_mask(t, &imp, exact, eps, flat)
        }
    }
}

fn is_percentile(cfg: &WidenConfig) -> bool {
    matches!(cfg.ranking, Ranking::Percentile | Ranking::Soft)
}

fn apply_scales(shape: Shape, b: &[f64], deltas: &[Vec<f64>], scales: &[Vec<f64>]) -> Vec<f64> {
    let mut acc = vec![0.0; b.len()];
    for (delta, s) in deltas.iter().zip(scales) {
        for (i, a) in acc.iter_mut().enumerate() {
            let pos = match shape {
                Shape::Vector(_) => i,
                Shape::Columns { k, .. } => i % k,
            };
            *a += s[pos] * delta[i];
        }
    }
    acc.iter().zip(b).map(|(a, x)| x + a).collect()
}

/// `filter_delta` of one key.
pub fn filter_key(cfg: &WidenConfig, shape: Shape, b: &[f64], w: &[f64]) -> Vec<f64> {
    match cfg.t_mode() {
        TMode::BackboneOnly => return b.to_vec(),
        TMode::Off => return w.to_vec(),
        TMode::Widen => {}
    }
    let delta: Vec<f64> = w.iter().zip(b).map(|(x, y)| x - y).collect();
    if delta.iter().all(|&v| v == 0.0) {
        return b.to_vec();
    }
    let s = filter_scales(cfg, shape, b, w);
    apply_scales(shape, b, &[delta], &[s])
}

/// `merge_weights` of one key.
pub fn merge_key(cfg: &WidenConfig, shape: Shape, b: &[f64], ws: &[Vec<f64>]) -> Vec<f64> {
    let deltas: Vec<Vec<f64>> = ws.iter().map(|w| w.iter().zip(b).map(|(x, y)| x - y).collect()).collect();
    match cfg.t_mode() {
        TMode::BackboneOnly => return b.to_vec(),
        TMode::Off => return apply_scales(shape, b, &deltas, &vec![vec![1.0; shape.numel()]; ws.len()]),
        TMode::Widen => {}
    }
    let active: Vec<usize> = (0..ws.len()).filter(|&n| deltas[n].iter().any(|&v| v != 0.0)).collect();
    match active.len() {
        0 => return b.to_vec(),
        1 => return filter_key(cfg, shape, b, &ws[active[0]]),
        _ => {}
    }
    let ws: Vec<&Vec<f64>> = active.iter().map(|&n| &ws[n]).collect();
    let deltas: Vec<Vec<f64>> = active.iter().map(|&n| deltas[n].clone()).collect();
    let t = cfg.t_factor;
    let scales: Vec<Vec<f64>> = match shape {
        Shape::Vector(n) => {
            let ranks: Vec<Vec<f64>> =
                deltas.iter().map(|d| rank(&d.iter().map(|v| v.abs()).collect::<Vec<_>>(), cfg.ranking)).collect();
            across(ranks.len(), n, |pos| {
                sparsity(cfg.sparsity, &ranks.iter().map(|r| r[pos]).collect::<Vec<_>>())
            })
        }
        Shape::Columns { out, k } => {
            let mut rm = Vec::new();
            let mut rd = Vec::new();
            let mut mask_m = Vec::new();
            let mut mask_d = Vec::new();
            for w in &ws {
                let (dm, dd) = column_stats(b, w, out, k);
                for (x, ranks, masks) in [(&dm, &mut rm, &mut mask_m), (&dd, &mut rd, &mut mask_d)] {
                    let r = rank(x, cfg.ranking);
                    let mask: Vec<bool> = if is_percentile(cfg) {
                        percentile_numerators(x).iter().map(|&n| n > t * (k + 1) as f64).collect()
                    } else {
                        let m = t * mean(&r);
                        r.iter().map(|&v| v > m).collect()
                    };
                    ranks.push(r);
                    masks.push(mask);
                }
            }
            let calibrated = |ranks: &[Vec<f64>], masks: &[Vec<bool>]| {
                across(ranks.len(), k, |pos| {
                    let p = sparsity(cfg.sparsity, &ranks.iter().map(|r| r[pos]).collect::<Vec<_>>());
                    let m: Vec<bool> = masks.iter().map(|mk| mk[pos]).collect();
                    calibrate(cfg, &p, &m)
                })
            };
            let pm = calibrated(&rm, &mask_m);
            let pd = calibrated(&rd, &mask_d);
            pm.iter().zip(&pd).map(|(x, y)| x.iter().zip(y).map(|(a, b)| (a + b) / 2.0).collect()).collect()
        }
    };
    apply_scales(shape, b, &deltas, &scales)
}

/// Evaluates `per_position(pos) -> [N]` at every position, returning `[N][positions]`.
fn across(n: usize, positions: usize, per_position: impl Fn(usize) -> Vec<f64>) -> Vec<Vec<f64>> {
    let columns: Vec<Vec<f64>> = (0..positions).map(per_position).collect();
    (0..n).map(|i| columns.iter().map(|col| col[i]).collect()).collect()
}

fn calibrate(cfg: &WidenConfig, p: &[f64], mask: &[bool]) -> Vec<f64> {
    let s = cfg.s_calibration;
    let c: Vec<f64> = match cfg.calibration {
        Calibration::Overwrite => p.iter().zip(mask).map(|(&v, &m)| if m { s } else { v }).collect(),
        Calibration::Multiplicative => p.iter().zip(mask).map(|(&v, &m)| if m { v * s } else { v }).collect(),
        Calibration::Off => return p.to_vec(),
    };
    let total: f64 = c.iter().sum();
    c.iter().map(|v| v / (total + cfg.renorm_eps)).collect()
}

/// A tensor's values as f64, on the CPU, flattened.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    let flat = t.to_device(tch::Device::Cpu).to_kind(Kind::Double).flatten(0, -1);
    Vec::<f64>::try_from(&flat).expect("a CPU double tensor converts to Vec<f64>")
}

/// `filter_delta` of every key of a batch `[B, *S]`; returns f64 `[B, *S]` on the CPU.
pub fn filter_batch(cfg: &WidenConfig, backbone: &Tensor, applied: &Tensor) -> Tensor {
    let size = backbone.size();
    let shape = Shape::of_batched(&size);
    let (b, w) = (to_f64(backbone), to_f64(applied));
    let m = shape.numel();
    let out: Vec<f64> =
        (0..size[0] as usize).flat_map(|i| filter_key(cfg, shape, &b[i * m..(i + 1) * m], &w[i * m..(i + 1) * m])).collect();
    Tensor::from_slice(&out).reshape(size.as_slice())
}

/// `merge_weights` of every key of a batch; returns f64 `[B, *S]` on the CPU.
pub fn merge_batch(cfg: &WidenConfig, backbone: &Tensor, weights: &[Tensor]) -> Tensor {
    let size = backbone.size();
    let shape = Shape::of_batched(&size);
    let b = to_f64(backbone);
    let ws: Vec<Vec<f64>> = weights.iter().map(to_f64).collect();
    let m = shape.numel();
    let out: Vec<f64> = (0..size[0] as usize)
        .flat_map(|i| {
            let key_ws: Vec<Vec<f64>> = ws.iter().map(|w| w[i * m..(i + 1) * m].to_vec()).collect();
            merge_key(cfg, shape, &b[i * m..(i + 1) * m], &key_ws)
        })
        .collect();
    Tensor::from_slice(&out).reshape(size.as_slice())
}

/// The LoRA file at `path` at `strength`, its targets checked against a base's `index`: a set
/// for [`chain_key`].
pub fn lora_set(path: &std::path::Path, arch: Arch, index: &NameIndex, strength: f64) -> Result<LoraSet, FormatError> {
    let f = LoraFile::load_with(path, arch, &LoadOptions { index: Some(index), require_match: true })?;
    let mut set = LoraSet::new();
    set.add(&f, strength);
    Ok(set)
}

/// One key of the chain the pack's tests and `bench loop` merge, in float64: the LoRA sets
/// `branches` composed and merged onto `base` (the key's base weight, any dtype) at t 1, then
/// `last` merged onto that at `t`. Each LoRA's delta is materialized in float64. The result, on
/// the CPU.
pub fn chain_key(cfg: &WidenConfig, key: &str, base: &Tensor, branches: &[&LoraSet], last: &LoraSet, t: f64) -> Result<Tensor, FormatError> {
    let base = base.to_kind(Kind::Double).unsqueeze(0);
    let applied = |set: &LoraSet, on: &Tensor| -> Result<Tensor, FormatError> { Ok(on + set.dense_delta(key, &on.squeeze_dim(0), Kind::Double)?.unsqueeze(0)) };
    let weights = branches.iter().map(|set| applied(set, &base)).collect::<Result<Vec<_>, _>>()?;
    let m1 = merge_batch(cfg, &base, &weights);
    Ok(filter_batch(&cfg.with_t(t), &m1, &applied(last, &m1)?).squeeze_dim(0))
}
