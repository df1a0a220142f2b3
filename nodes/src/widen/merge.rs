//! Per-contributor column scales of a merge (widen-algorithm.md §7.2, D3).
//!
//! Everything here produces `S [N, B, K]`: the factor each contributor's delta is multiplied by
//! at each position of each key. The caller combines `backbone + Σₙ Sₙ ⊙ Δₙ` (one matmul on the
//! low-rank path). Keys where exactly one contributor changes anything get that contributor's
//! filter scales instead (D3), keys where none does get zeros: both without leaving the batch.

use tch::{Kind, Tensor};

use super::calibration::calibrate;
use super::config::WidenConfig;
use super::error::Result;
use super::filter;
use super::ranking::rank;
use super::sparsity;
use super::stats::ColumnStats;

/// Scales for 2-D+ keys from each contributor's column statistics. `out`: the output dim.
pub(crate) fn column_scales(cfg: &WidenConfig, stats: &[ColumnStats], out: i64) -> Result<Tensor> {
    let active = stack_active(stats.iter().map(|s| s.active()))?; // [N, B]
    let single = single_filter(cfg, stats, &active, out)?;
    if stats.len() == 1 {
        return Ok(single);
    }
    let t = cfg.t_factor;
    let mut rm = Vec::with_capacity(stats.len());
    let mut rd = Vec::with_capacity(stats.len());
    let mut mask_m = Vec::with_capacity(stats.len());
    let mut mask_d = Vec::with_capacity(stats.len());
    for s in stats {
        let m = rank(&s.dm, cfg.ranking)?;
        let d = rank(&s.dd, cfg.ranking)?;
        mask_m.push(m.above_mean(t)?);
        mask_d.push(d.above_mean(t)?);
        rm.push(m.rank);
        rd.push(d.rank);
    }
    let act = active.f_unsqueeze(2)?; // [N, B, 1]
    let mask_m = Tensor::f_stack(&mask_m, 0)?.f_logical_and(&act)?;
    let mask_d = Tensor::f_stack(&mask_d, 0)?.f_logical_and(&act)?;
    let pm = sparsity::apply(cfg.sparsity, &Tensor::f_stack(&rm, 0)?, &act)?;
    let pd = sparsity::apply(cfg.sparsity, &Tensor::f_stack(&rd, 0)?, &act)?;
    let pm = calibrate(&pm, &mask_m, cfg)?;
    let pd = calibrate(&pd, &mask_d, cfg)?;
    let merged = pm.f_add(&pd)?.f_mul_scalar(0.5)?;
    route_by_count(&active, &merged, &single)
}

/// Scales for 1-D keys (magnitude ranks only, no masks or calibration) from the deltas `[B, n]`.
pub(crate) fn vector_scales(cfg: &WidenConfig, deltas: &[Tensor]) -> Result<Tensor> {
    let active = stack_active(deltas.iter().map(|d| Ok(d.f_ne(0.0)?.f_any_dim(1, false)?)))?;
    // Inactive deltas are exactly zero, so the sum is the single contributor's delta bit for bit
    // on keys with one contributor.
    let mut sum = deltas[0].shallow_clone();
    for d in &deltas[1..] {
        sum = sum.f_add(d)?;
    }
    let fmask = filter::vector_mask(cfg, &sum)?;
    let act = active.f_unsqueeze(2)?;
    let single = act.f_to_kind(Kind::Float)?.f_mul(&fmask.f_unsqueeze(0)?)?;
    if deltas.len() == 1 {
        return Ok(single);
    }
    let mut ranks = Vec::with_capacity(deltas.len());
    for d in deltas {
        ranks.push(rank(&d.f_abs()?, cfg.ranking)?.rank);
    }
    let merged = sparsity::apply(cfg.sparsity, &Tensor::f_stack(&ranks, 0)?, &act)?;
    route_by_count(&active, &merged, &single)
}

fn stack_active(items: impl Iterator<Item = Result<Tensor>>) -> Result<Tensor> {
    let v: Vec<Tensor> = items.collect::<Result<_>>()?;
    Ok(Tensor::f_stack(&v, 0)?)
}

/// The filter scales of each key's only active contributor, placed at that contributor's row:
/// `[N, B, K]`, zero for inactive contributors. Meaningful on keys with exactly one contributor.
fn single_filter(cfg: &WidenConfig, stats: &[ColumnStats], active: &Tensor, out: i64) -> Result<Tensor> {
    let pick = |f: &dyn Fn(&ColumnStats) -> &Tensor, n: usize, extra_dim: bool| -> Result<Tensor> {
        let a = active.f_select(0, n as i64)?;
        let a = if extra_dim { a.f_unsqueeze(1)? } else { a };
        Ok(f(&stats[n]).f_where_scalarother(&a, 0.0)?)
    };
    let mut dm = pick(&|s| &s.dm, 0, true)?;
    let mut dd = pick(&|s| &s.dd, 0, true)?;
    let mut dsq = pick(&|s| &s.delta_sq, 0, false)?;
    for n in 1..stats.len() {
        dm = dm.f_add(&pick(&|s| &s.dm, n, true)?)?;
        dd = dd.f_add(&pick(&|s| &s.dd, n, true)?)?;
        dsq = dsq.f_add(&pick(&|s| &s.delta_sq, n, false)?)?;
    }
    let chosen = ColumnStats { dm, dd, delta_sq: dsq };
    let fmask = filter::column_mask(cfg, &chosen, out)?;
    let act = active.f_unsqueeze(2)?.f_to_kind(Kind::Float)?;
    Ok(act.f_mul(&fmask.f_unsqueeze(0)?)?)
}

/// D3: keys with one active contributor take its filter scales, others the merge scales (which
/// are zero where nothing is active).
fn route_by_count(active: &Tensor, merged: &Tensor, single: &Tensor) -> Result<Tensor> {
    let count = active.f_sum_dim_intlist(0, false, Kind::Int64)?; // [B]
    let one = count.f_eq(1)?.f_unsqueeze(0)?.f_unsqueeze(2)?; // [1, B, 1]
    Ok(single.f_where_self(&one, merged)?)
}
