//! The single-contributor filter's per-position scales (docs/widen.md, "The filter";
//! docs/decisions.md D21 statistics).
//!
//! A position whose importance reaches the threshold `max(t · mean(importance), eps)` keeps its
//! delta fully; below it the delta is scaled by `importance / threshold`. Keys whose statistics
//! have (almost) no spread are "flat" and pass unfiltered.

use tch::{Kind, Tensor};

use super::config::WidenConfig;
use super::eps::{adaptive_eps, delta_eps_from_sq_norm};
use super::error::Result;
use super::ranking::{rank, Ranked};
use super::stats::ColumnStats;

/// Importance of each position, `[B, K]`, with what is needed to compare it to the threshold.
struct Importance {
    value: Tensor,
    /// Percentile ranks: integer numerators `S` with `value = S / denom`, and the integer
    /// `M` with `mean(value) = M / denom` (the mean of any percentile map is `(K + 1)/(2K)`,
    /// ties included), so the threshold test is one on integers.
    exact: Option<(Tensor, f64, f64)>,
}

/// Scales of a 2-D+ key's columns, `[B, K]` fp32, from one contribution's statistics (`dm`, `dd`
/// `[B, K]`, `delta_sq` `[B]`). `out` is the output dim (for the delta's element count).
pub(crate) fn column_mask(cfg: &WidenConfig, stats: &ColumnStats, out: i64) -> Result<Tensor> {
    let k = stats.dm.size()[1];
    let eps = delta_eps_from_sq_norm(&stats.delta_sq, out * k)?;
    let flat = spread_below(&stats.dm.f_add(&stats.dd)?, &eps)?;
    let rm = rank(&stats.dm, cfg.ranking)?;
    let rd = rank(&stats.dd, cfg.ranking)?;
    let importance = match (&rm.numer, &rd.numer) {
        (Some(nm), Some(nd)) => {
            let sum = nm.f_add(nd)?;
            let denom = (4 * k) as f64;
            Importance {
                value: sum.f_div_scalar(denom)?,
                exact: Some((sum, denom, (2 * (k + 1)) as f64)),
            }
        }
        _ => Importance { value: rm.rank.f_add(&rd.rank)?.f_mul_scalar(0.5)?, exact: None },
    };
    soft_mask(cfg.t_factor, &importance, &eps, &flat)
}

/// Scales of a 1-D key's elements, `[B, n]` fp32, from its delta `[B, n]` fp32.
pub(crate) fn vector_mask(cfg: &WidenConfig, delta: &Tensor) -> Result<Tensor> {
    let eps = adaptive_eps(delta)?;
    let magnitude = delta.f_abs()?;
    let flat = spread_below(&magnitude, &eps)?;
    let ranked = rank(&magnitude, cfg.ranking)?;
    soft_mask(cfg.t_factor, &importance_of(ranked), &eps, &flat)
}

/// Keys whose values (`[B, K]`) have an unbiased variance below `eps` (`[B]`). One position has
/// no variance (NaN in the reference, which is never below eps): not flat.
fn spread_below(x: &Tensor, eps: &Tensor) -> Result<Tensor> {
    if x.size()[1] < 2 {
        return Ok(eps.f_zeros_like()?.f_to_kind(Kind::Bool)?);
    }
    Ok(x.f_var_dim(1, true, false)?.f_lt_tensor(eps)?)
}

fn importance_of(r: Ranked) -> Importance {
    let k = r.k;
    match r.numer {
        Some(n) => Importance {
            value: r.rank,
            exact: Some((n, (2 * k) as f64, (k + 1) as f64)),
        },
        None => Importance { value: r.rank, exact: None },
    }
}

/// `1` where importance ≥ threshold, else `importance / threshold`; NaN → 1, +inf → 1,
/// −inf → 0; flat keys → 1. `eps`, `flat`: `[B]`.
fn soft_mask(t: f64, imp: &Importance, eps: &Tensor, flat: &Tensor) -> Result<Tensor> {
    let eps = eps.f_unsqueeze(1)?;
    let (threshold, full) = match &imp.exact {
        Some((numer, denom, mean_numer)) => {
            let threshold = eps.f_clamp_min(t * mean_numer / denom)?;
            // value ≥ t·mean  ⇔  numer ≥ t·M  ⇔  numer ≥ ceil(t·M): numer is an integer.
            let at_mean = numer.f_ge((t * mean_numer).ceil())?;
            (threshold, at_mean.f_logical_and(&imp.value.f_ge_tensor(&eps)?)?)
        }
        None => {
            let mean = imp.value.f_mean_dim(1, true, Kind::Float)?;
            let threshold = mean.f_mul_scalar(t)?.f_maximum(&eps)?;
            let full = imp.value.f_ge_tensor(&threshold)?;
            (threshold, full)
        }
    };
    let partial = imp.value.f_div(&threshold)?.f_clamp_max(1.0)?;
    let mask = partial.f_masked_fill(&full, 1.0)?.f_nan_to_num(1.0, 1.0, 0.0)?;
    Ok(mask.f_masked_fill(&flat.f_unsqueeze(1)?, 1.0)?)
}
