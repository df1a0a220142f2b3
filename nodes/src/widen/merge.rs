//! Per-contributor column scales of a merge (docs/widen.md, "The merge"; docs/decisions.md D3).
//!
//! Everything here produces `S [N, B, K]`: the factor each contributor's delta is multiplied by
//! at each position of each key. The caller combines `backbone + Σₙ Sₙ ⊙ Δₙ` (one matmul on the
//! low-rank path). Keys where exactly one contributor changes anything get that contributor's
//! filter scales instead (D3), keys where none does get zeros: both without leaving the batch.
//! The N contributors are processed stacked, as `N·B` rows.

use tch::{Kind, Tensor};

use super::calibration::calibrate;
use super::config::WidenConfig;
use super::error::Result;
use super::filter;
use super::ranking::{rank, Ranked};
use super::sparsity;
use super::stats::ColumnStats;

/// Ranks each `[K]` row of a `[N, B, K]` map.
fn rank_rows(x: &Tensor, cfg: &WidenConfig) -> Result<Ranked> {
    let s = x.size();
    rank(&x.f_reshape([s[0] * s[1], s[2]])?, cfg.ranking)
}

fn unflatten(x: &Tensor, like: &Tensor) -> Result<Tensor> {
    Ok(x.f_reshape(like.size())?)
}

/// Scales for 2-D+ keys from the contributors' column statistics. `out`: the output dim.
pub(crate) fn column_scales(cfg: &WidenConfig, stats: &ColumnStats, out: i64) -> Result<Tensor> {
    let active = stats.active()?; // [N, B]
    let act = active.f_unsqueeze(2)?; // [N, B, 1]
    let single = single_filter(cfg, stats, &act, out)?;
    if stats.dm.size()[0] == 1 {
        return Ok(single);
    }
    let t = cfg.t_factor;
    let rm = rank_rows(&stats.dm, cfg)?;
    let rd = rank_rows(&stats.dd, cfg)?;
    let mask_m = unflatten(&rm.above_mean(t)?, &stats.dm)?.f_logical_and(&act)?;
    let mask_d = unflatten(&rd.above_mean(t)?, &stats.dd)?.f_logical_and(&act)?;
    let pm = sparsity::apply(cfg.sparsity, &unflatten(&rm.rank, &stats.dm)?, &act)?;
    let pd = sparsity::apply(cfg.sparsity, &unflatten(&rd.rank, &stats.dd)?, &act)?;
    let pm = calibrate(&pm, &mask_m, cfg)?;
    let pd = calibrate(&pd, &mask_d, cfg)?;
    let merged = pm.f_add(&pd)?.f_mul_scalar(0.5)?;
    route_by_count(&active, &merged, &single)
}

/// Scales for 1-D keys (magnitude ranks only, no masks or calibration) from the stacked deltas
/// `[N, B, n]`.
pub(crate) fn vector_scales(cfg: &WidenConfig, deltas: &Tensor) -> Result<Tensor> {
    let active = deltas.f_ne(0.0)?.f_any_dim(2, false)?; // [N, B]
    let act = active.f_unsqueeze(2)?;
    // Inactive deltas are exactly zero, so on keys with one contributor this sum is its delta,
    // bit for bit.
    let sum = deltas.f_sum_dim_intlist(0, false, Kind::Float)?;
    let fmask = filter::vector_mask(cfg, &sum)?;
    let single = act.f_to_kind(Kind::Float)?.f_mul(&fmask.f_unsqueeze(0)?)?;
    if deltas.size()[0] == 1 {
        return Ok(single);
    }
    let ranks = unflatten(&rank_rows(&deltas.f_abs()?, cfg)?.rank, deltas)?;
    let merged = sparsity::apply(cfg.sparsity, &ranks, &act)?;
    route_by_count(&active, &merged, &single)
}

/// The filter scales of each key's only active contributor, placed at that contributor's row:
/// `[N, B, K]`, zero for inactive contributors. Meaningful on keys with exactly one contributor.
fn single_filter(cfg: &WidenConfig, stats: &ColumnStats, act: &Tensor, out: i64) -> Result<Tensor> {
    // Sums over N where all but (at most) one term are zero: exact.
    let pick = |x: &Tensor, a: &Tensor| -> Result<Tensor> {
        Ok(x.f_where_scalarother(a, 0.0)?.f_sum_dim_intlist(0, false, x.kind())?)
    };
    let chosen = ColumnStats {
        dm: pick(&stats.dm, act)?,
        dd: pick(&stats.dd, act)?,
        delta_sq: pick(&stats.delta_sq, &act.f_squeeze_dim(2)?)?,
    };
    let fmask = filter::column_mask(cfg, &chosen, out)?;
    Ok(act.f_to_kind(Kind::Float)?.f_mul(&fmask.f_unsqueeze(0)?)?)
}

/// D3: keys with one active contributor take its filter scales, others the merge scales (which
/// are zero where nothing is active).
fn route_by_count(active: &Tensor, merged: &Tensor, single: &Tensor) -> Result<Tensor> {
    let count = active.f_sum_dim_intlist(0, false, Kind::Int64)?; // [B]
    let one = count.f_eq(1)?.f_unsqueeze(0)?.f_unsqueeze(2)?; // [1, B, 1]
    Ok(single.f_where_self(&one, merged)?)
}
