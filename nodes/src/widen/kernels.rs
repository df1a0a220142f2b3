//! The two operations that touch full-size tensors with more than element-wise work, in forms
//! that report failures as errors.
//!
//! tch 0.24 drops the `Scalar` arguments of a call before it reads libtorch's error, and that drop
//! panics when an error is pending: any `f_*` function with a scalar argument turns an error
//! (above all CUDA out-of-memory, which must reach the caller's retry logic) into a panic. These
//! avoid scalar arguments, or own the scalar until the error has been read.

use std::ffi::{c_char, c_int, c_void, CStr};

use tch::{TchError, Tensor};

use super::error::Result;

extern "C" {
    // libtorch's C wrapper hands out its error message with `strdup`.
    fn free(p: *mut c_void);
}

/// libtorch's pending error message, if any (and clears it).
fn take_error() -> Option<String> {
    // SAFETY: the wrapper returns null or a malloc'ed NUL-terminated string we now own.
    unsafe {
        let p: *mut c_char = torch_sys::get_and_reset_last_err();
        if p.is_null() {
            return None;
        }
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        free(p as *mut c_void);
        Some(s)
    }
}

/// L2 norm over `dim` in one fused pass (libtorch's `norm(x, 2, dim, keepdim)`).
pub fn norm2(x: &Tensor, dim: i64, keepdim: bool) -> Result<Tensor> {
    let dims = [dim];
    let mut out = [std::ptr::null_mut(); 1];
    // SAFETY: `x` stays alive for the call; the scalar is freed after the error is read; `out[0]`
    // is a new tensor handle when no error was reported.
    unsafe {
        let p = torch_sys::ats_float(2.0);
        torch_sys::c_generated::atg_norm_scalaropt_dim(
            out.as_mut_ptr(),
            x.as_ptr() as *mut _,
            p,
            dims.as_ptr(),
            1,
            keepdim as c_int,
        );
        let err = take_error();
        torch_sys::ats_free(p);
        match err {
            Some(message) => Err(TchError::Torch(message).into()),
            None => Ok(Tensor::from_ptr(out[0])),
        }
    }
}

/// `base + up · down` for batched matrices. With `in_place` the result overwrites `base`: one
/// product whose epilogue reads `base` once and writes it once. Otherwise libtorch first copies
/// `base` into a new tensor (a second full read and write) and accumulates there.
pub fn add_product(base: &Tensor, up: &Tensor, down: &Tensor, in_place: bool) -> Result<Tensor> {
    let out = if in_place { base.shallow_clone() } else { base.f_empty_like()? };
    Ok(base.f_baddbmm_out(&out, up, down)?)
}

/// `base + up · down` with the product on bf16 tensor cores, split for fp32-level accuracy:
/// `x = hi + lo` with `hi = bf16(x)` and `lo = bf16(x − hi)`, and
/// `up·down ≈ up_hi·down_hi + up_hi·down_lo + up_lo·down_hi`, as one product over a three times
/// longer inner dimension with fp32 accumulation and output. The dropped `lo·lo` term and the
/// residue of the split are ~2⁻¹⁷ of each product, so the result is within ~1e-5 relative of fp32.
/// CUDA only (libtorch's bf16 → fp32 `baddbmm` runs there).
pub fn add_product_split_bf16(base: &Tensor, up: &Tensor, down: &Tensor, in_place: bool) -> Result<Tensor> {
    use tch::Kind;
    let split = |x: &Tensor| -> Result<(Tensor, Tensor)> {
        let hi = x.f_to_kind(Kind::BFloat16)?;
        let lo = x.f_sub(&hi.f_to_kind(Kind::Float)?)?.f_to_kind(Kind::BFloat16)?;
        Ok((hi, lo))
    };
    let (uh, ul) = split(up)?;
    let (dh, dl) = split(down)?;
    let u3 = Tensor::f_cat(&[&uh, &uh, &ul], 2)?;
    let d3 = Tensor::f_cat(&[&dh, &dl, &dh], 1)?;
    let out = if in_place { base.shallow_clone() } else { base.f_empty_like()? };
    Ok(base.f_baddbmm_dtype_out(&out, &u3, &d3, Kind::Float)?)
}

/// A copy in a new allocation (on the CPU: the same alignment whichever batch the values came from).
pub fn fresh_copy(t: &Tensor) -> Result<Tensor> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}
