//! Numerical constants and epsilons (docs/widen.md, "Numerical constants"), per key
//! (docs/decisions.md D4).

use tch::{Kind, Tensor};

use super::error::Result;

/// Base epsilon by the dtype of the tensor it guards (docs/widen.md, "Numerical constants"). WIDEN
/// computes in fp32, so the operations use `base_eps(Kind::Float)`.
pub fn base_eps(kind: Kind) -> f64 {
    match kind {
        Kind::Float => 1e-12,
        _ => 1e-6,
    }
}

/// Columns whose norm is at or below this get a zero direction (docs/widen.md, "Numerical
/// constants"): 64 × the smallest normal fp32.
pub const DEGENERATE_NORM: f64 = 64.0 * f32::MIN_POSITIVE as f64;

/// Relative factor of the adaptive epsilon (docs/widen.md, "Numerical constants").
pub const ADAPTIVE_FACTOR: f64 = 1e-8;

/// `max(base_eps, 1e-8 · mean|x|)` for every sample of `x: [B, …]`, shape `[B]`, fp32.
///
/// The reference takes the mean over the whole batch; D4 makes it per key so a key's result does
/// not depend on its batch neighbours.
pub fn adaptive_eps(x: &Tensor) -> Result<Tensor> {
    let base = base_eps(x.kind());
    let mean_abs = per_sample_mean_abs(x)?;
    Ok(mean_abs.f_mul_scalar(ADAPTIVE_FACTOR)?.f_clamp_min(base)?)
}

/// mean(|x|) per sample in fp32, shape `[B]`.
pub(crate) fn per_sample_mean_abs(x: &Tensor) -> Result<Tensor> {
    let b = x.size()[0];
    let flat = x.f_reshape([b, -1])?;
    Ok(flat.f_abs()?.f_mean_dim(1, false, Kind::Float)?)
}

/// The filter's epsilon for a 2-D+ key, from the delta's squared Frobenius norm (`[B]`, f64) and
/// its element count: `max(1e-12, 1e-8 · rms(Δ))`.
///
/// The spec's `1e-8 · mean|Δ|` needs every element of Δ, which the low-rank path never forms;
/// the RMS comes from the column statistics on both paths, so dense and low-rank evaluation use
/// the same epsilon. It only guards the "flat" test and the threshold floor, at the 1e-8 level.
pub(crate) fn delta_eps_from_sq_norm(delta_sq: &Tensor, numel: i64) -> Result<Tensor> {
    let rms = delta_sq.f_div_scalar(numel as f64)?.f_sqrt()?;
    Ok(rms
        .f_mul_scalar(ADAPTIVE_FACTOR)?
        .f_clamp_min(base_eps(Kind::Float))?
        .f_to_kind(Kind::Float)?)
}
