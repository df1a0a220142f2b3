//! The two operations that touch full-size tensors with more than element-wise work, in forms
//! that report failures as errors.
//!
//! tch 0.24 drops the `Scalar` arguments of a call before it reads libtorch's error, and that drop
//! panics when an error is pending: any `f_*` function with a scalar argument turns an error
//! (above all CUDA out-of-memory, which must reach the caller's retry logic) into a panic. These
//! use the scalar-free entry points.

use tch::Tensor;

use super::error::Result;

/// L2 norm over `dim` (one fused pass, no squared copy).
pub(crate) fn norm2(x: &Tensor, dim: i64, keepdim: bool) -> Result<Tensor> {
    Ok(x.f_frobenius_norm(dim, keepdim)?)
}

/// `base + up · down` for batched matrices, written into a fresh tensor: one product whose
/// epilogue reads `base` once and writes the result once.
pub(crate) fn add_product(base: &Tensor, up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let out = base.f_empty_like()?;
    Ok(base.f_baddbmm_out(&out, up, down)?)
}
