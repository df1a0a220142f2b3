//! Per-key figures of a merge for its report (docs/widen.md, "Report"): for each key and
//! contributor, the mean of its scales (how much of its delta the merge kept), and the means of
//! the divergences the merge ranked. A few reductions of tensors the merge already holds, left
//! on the device: the caller reads them once per run, not per chunk.

use tch::{Kind, Tensor};

use super::error::Result;
use super::stats::ColumnStats;

/// Figures per key and contributor: `[B, N, FIGURES]` fp32.
pub const FIGURES: i64 = 3;
/// Index of the mean |scale| (0 where the contributor does not change the key).
pub const SCALE: usize = 0;
/// Index of the mean magnitude divergence (NaN where the key has no column statistics).
pub const MAGNITUDE: usize = 1;
/// Index of the mean direction divergence (NaN where the key has no column statistics).
pub const DIRECTION: usize = 2;

/// 2-D+ keys: scales `[N, B, K]` and the column statistics they came from.
pub(crate) fn columns(scales: &Tensor, stats: &ColumnStats) -> Result<Tensor> {
    let act = stats.active()?.f_unsqueeze(2)?;
    let s = kept(scales, &act)?;
    let dm = stats.dm.f_mean_dim(2, false, Kind::Float)?;
    let dd = stats.dd.f_mean_dim(2, false, Kind::Float)?;
    stack(&[s, dm, dd])
}

/// 1-D keys: scales and stacked deltas, both `[N, B, n]` (no column statistics).
pub(crate) fn vectors(scales: &Tensor, deltas: &Tensor) -> Result<Tensor> {
    let act = deltas.f_ne(0.0)?.f_any_dim(2, true)?;
    let s = kept(scales, &act)?;
    let nan = s.f_full_like(f64::NAN)?;
    stack(&[s, nan.shallow_clone(), nan])
}

/// `t == 0` (docs/decisions.md D5): every contributor dropped, the key left at the backbone.
pub(crate) fn dropped(n: i64, batch: i64, device: tch::Device) -> Result<Tensor> {
    let s = Tensor::f_zeros([n, batch], (Kind::Float, device))?;
    let nan = s.f_full_like(f64::NAN)?;
    stack(&[s, nan.shallow_clone(), nan])
}

/// Mean |scale| per contributor and key, inactive contributors 0: `[N, B]`.
fn kept(scales: &Tensor, act: &Tensor) -> Result<Tensor> {
    Ok(scales.f_abs()?.f_to_kind(Kind::Float)?.f_where_scalarother(act, 0.0)?.f_mean_dim(2, false, Kind::Float)?)
}

/// `[N, B]` figures to `[B, N, FIGURES]`.
fn stack(figures: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::f_stack(figures, 2)?.f_permute([1, 0, 2])?.f_contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn figures_are_per_key_and_contributor_means_with_inactive_contributors_at_zero() {
        // N = 2 contributors, B = 2 keys, K = 2 columns; contributor 1 does not touch key 1.
        let scales = Tensor::from_slice(&[0.5f32, 1.0, 0.25, 0.75, 0.5, 0.5, 0.9, 0.9]).reshape([2, 2, 2]);
        let stats = ColumnStats {
            dm: Tensor::from_slice(&[1.0f32, 3.0, 2.0, 2.0, 4.0, 6.0, 0.0, 0.0]).reshape([2, 2, 2]),
            dd: Tensor::from_slice(&[0.1f32, 0.3, 0.2, 0.4, 0.5, 0.7, 1.0, 1.0]).reshape([2, 2, 2]),
            delta_sq: Tensor::from_slice(&[1.0f64, 2.0, 3.0, 0.0]).reshape([2, 2]),
        };
        let f = columns(&scales, &stats).unwrap();
        assert_eq!(f.size(), [2, 2, FIGURES]);
        let v = Vec::<f32>::try_from(&f.flatten(0, -1)).unwrap();
        let at = |b: usize, n: usize, i: usize| v[(b * 2 + n) * FIGURES as usize + i];
        assert_eq!(at(0, 0, SCALE), 0.75);
        assert_eq!(at(0, 1, SCALE), 0.5);
        assert_eq!(at(1, 1, SCALE), 0.0, "inactive: nothing kept, whatever the scales say");
        assert_eq!(at(0, 0, MAGNITUDE), 2.0);
        assert!((at(1, 0, DIRECTION) - 0.3).abs() < 1e-6);
        let d = dropped(3, 2, Device::Cpu).unwrap();
        assert_eq!(d.size(), [2, 3, FIGURES]);
        let v = Vec::<f32>::try_from(&d.flatten(0, -1)).unwrap();
        assert!(v.chunks(3).all(|c| c[0] == 0.0 && c[1].is_nan() && c[2].is_nan()));
    }
}
