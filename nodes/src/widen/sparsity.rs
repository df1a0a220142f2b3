//! Sparsity maps: the N contributors' ranks at each position → weights on the simplex
//! (docs/widen.md, "Sparsity"; docs/decisions.md D1), along dim 0 of `[N, …]`.
//!
//! Every method takes an `active` mask broadcastable to the input (D3): inactive contributors get
//! weight exactly 0 and do not take part in the normalization; a position with no active
//! contributor gets all zeros.

use tch::{Kind, Tensor};

use super::config::Sparsity;
use super::error::Result;

pub fn apply(method: Sparsity, x: &Tensor, active: &Tensor) -> Result<Tensor> {
    match method {
        Sparsity::Softmax => softmax(x, active),
        Sparsity::Sparsemax => sparsemax(x, active),
        Sparsity::Entmax => entmax15(x, active),
    }
}

/// All-active mask for callers without non-contributors.
pub fn all_active(x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_ones(x.size(), (Kind::Bool, x.device()))?)
}

pub fn softmax(x: &Tensor, active: &Tensor) -> Result<Tensor> {
    let inactive = active.f_logical_not()?;
    let any = active.f_any_dim(0, true)?;
    let y = x.f_masked_fill(&inactive, f64::NEG_INFINITY)?.f_softmax(0, Kind::Float)?;
    // Where nothing is active the softmax of all −inf is NaN; those positions get zeros.
    Ok(y.f_masked_fill(&inactive, 0.0)?.f_masked_fill(&any.f_logical_not()?, 0.0)?)
}

/// The active entries of `x` shifted by their maximum, sorted descending along dim 0 with the
/// inactive ones last (as −inf), and the mask of active sorted entries.
struct Sorted {
    shifted: Tensor,
    sorted: Tensor,
    sorted_active: Tensor,
    inactive: Tensor,
}

fn sort_active(x: &Tensor, active: &Tensor) -> Result<Sorted> {
    let inactive = active.f_logical_not()?;
    let masked = x.f_masked_fill(&inactive, f64::NEG_INFINITY)?;
    let max = masked.f_amax(0, true)?;
    let max = max.f_where_scalarother(&max.f_isfinite()?, 0.0)?;
    let shifted = x.f_sub(&max)?;
    let (sorted, _) = shifted.f_masked_fill(&inactive, f64::NEG_INFINITY)?.f_sort(0, true)?;
    let sorted_active = sorted.f_isfinite()?;
    Ok(Sorted { shifted, sorted: sorted.f_masked_fill(&sorted_active.f_logical_not()?, 0.0)?, sorted_active, inactive })
}

/// `1, 2, …, N` shaped to broadcast along dim 0 of `like`.
fn counts_like(like: &Tensor) -> Result<Tensor> {
    let n = like.size()[0];
    let mut shape = vec![1i64; like.dim()];
    shape[0] = n;
    Ok(Tensor::f_arange_start(1, n + 1, (Kind::Float, like.device()))?.f_reshape(shape)?)
}

/// Euclidean projection onto the simplex (Martins & Astudillo 2016).
pub fn sparsemax(x: &Tensor, active: &Tensor) -> Result<Tensor> {
    let s = sort_active(x, active)?;
    let k = counts_like(&s.sorted)?;
    let csum = s.sorted.f_cumsum(0, Kind::Float)?;
    // Position k (1-based) is in the support iff 1 + k·z_k > Σ_{j≤k} z_j.
    let support = s
        .sorted
        .f_sub(&csum.f_sub_scalar(1.0)?.f_div(&k)?)?
        .f_gt(0.0)?
        .f_logical_and(&s.sorted_active)?;
    let kz = support.f_sum_dim_intlist(0, true, Kind::Int64)?.f_clamp_min(1)?;
    let c_at = csum.f_gather(0, &kz.f_sub_scalar(1)?, false)?;
    let tau = c_at.f_sub_scalar(1.0)?.f_div(&kz.f_to_kind(Kind::Float)?)?;
    Ok(s.shifted.f_sub(&tau)?.f_clamp_min(0.0)?.f_masked_fill(&s.inactive, 0.0)?)
}

/// Exact alpha = 1.5 entmax (D1; Peters, Niculae & Martins 2019): `p_i = max(x_i/2 − τ, 0)²` with
/// τ such that Σp = 1. For a support of the k largest `y = x/2`, Σ(y_i − τ)² = 1 is a quadratic
/// in τ whose smaller root is `mean_k − sqrt((1 − k·(mean_sq_k − mean_k²)) / k)`; the support is
/// the set of k for which that root stays at or below the k-th largest y.
pub fn entmax15(x: &Tensor, active: &Tensor) -> Result<Tensor> {
    let y = x.f_mul_scalar(0.5)?;
    let s = sort_active(&y, active)?;
    let k = counts_like(&s.sorted)?;
    let mean = s.sorted.f_cumsum(0, Kind::Float)?.f_div(&k)?;
    let mean_sq = s.sorted.f_square()?.f_cumsum(0, Kind::Float)?.f_div(&k)?;
    let spread = mean_sq.f_sub(&mean.f_square()?)?;
    let disc = spread.f_mul(&k)?.f_neg()?.f_add_scalar(1.0)?.f_div(&k)?;
    let tau = mean.f_sub(&disc.f_clamp_min(0.0)?.f_sqrt()?)?;
    let support = tau.f_le_tensor(&s.sorted)?.f_logical_and(&s.sorted_active)?;
    let kz = support.f_sum_dim_intlist(0, true, Kind::Int64)?.f_clamp_min(1)?;
    let tau_star = tau.f_gather(0, &kz.f_sub_scalar(1)?, false)?;
    Ok(s
        .shifted
        .f_sub(&tau_star)?
        .f_clamp_min(0.0)?
        .f_square()?
        .f_masked_fill(&s.inactive, 0.0)?)
}
