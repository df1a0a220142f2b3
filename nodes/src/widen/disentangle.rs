//! Magnitude/direction decomposition and direction divergence as the spec states them
//! (docs/widen.md, "Numerical constants", "Magnitude and direction", "Direction divergence").
//!
//! The filter and merge do not call these for 2-D+ keys: they use the cancellation-free column
//! statistics of docs/decisions.md D21 (`stats.rs`), which give the same quantities without
//! dividing each column by its norm. These functions stay as the literal definitions, pinned by the
//! spec's examples.

use tch::{Kind, Tensor};

use super::eps::DEGENERATE_NORM;
use super::error::{Result, WidenError};
use super::kernels::norm2;
use super::layout::KeyLayout;

/// L2 norm along `dim` (kept), computed on `x / amax|x|` so tiny columns do not underflow when
/// squared; columns whose max-abs is zero get exactly 0.
pub fn safe_norm(w: &Tensor, dim: i64) -> Result<Tensor> {
    let scale = w.f_abs()?.f_amax(dim, true)?;
    let nonzero = scale.f_gt(0.0)?;
    let wf = w.f_to_kind(Kind::Float)?;
    let sf = scale.f_to_kind(Kind::Float)?;
    let safe_sf = sf.f_where_scalarother(&nonzero, 1.0)?;
    let q = wf.f_div(&safe_sf)?;
    let n = norm2(&q, dim, true)?;
    let out = sf.f_mul(&n)?.f_where_scalarother(&nonzero, 0.0)?;
    Ok(out.f_to_kind(w.kind())?)
}

/// `(m, D)` of a batched weight `[B, …]` (docs/widen.md, "Magnitude and direction"): 1-D →
/// `(|W|, sign W)`; 2-D+ → column norms over the output dim `[B, 1, s2…]` and unit columns (zero
/// for degenerate columns).
pub fn disentangle(w: &Tensor) -> Result<(Tensor, Tensor)> {
    match KeyLayout::of(&w.size())? {
        KeyLayout::OneD { .. } => Ok((w.f_abs()?, w.f_sign()?)),
        KeyLayout::Columns { batch, out, k, ref shape } => {
            let wf = w.f_reshape([batch, out, k])?;
            let m = safe_norm(&wf, 1)?;
            let keep = m.f_gt(DEGENERATE_NORM)?;
            let safe_m = m.f_where_scalarother(&keep, 1.0)?;
            let d = wf.f_div(&safe_m)?.f_where_scalarother(&keep, 0.0)?;
            let mut m_shape = vec![batch, 1];
            m_shape.extend_from_slice(&shape[2..]);
            Ok((m.f_reshape(m_shape)?, d.f_reshape(shape.as_slice())?))
        }
    }
}

/// `1 − cos` between direction tensors per column (docs/widen.md, "Direction divergence"), with
/// libtorch's cosine similarity (eps 1e-8: a zero column has cosine 0 with anything, so zero vs
/// zero diverges by 1). 1-D inputs give zeros `[B, 1]`.
pub fn direction_divergence(d1: &Tensor, d2: &Tensor) -> Result<Tensor> {
    if d1.size() != d2.size() {
        return Err(WidenError::Input(format!(
            "direction tensors differ in shape: {:?} vs {:?}",
            d1.size(),
            d2.size()
        )));
    }
    match KeyLayout::of(&d1.size())? {
        KeyLayout::OneD { batch, .. } => {
            Ok(Tensor::f_zeros([batch, 1], (d1.kind(), d1.device()))?)
        }
        KeyLayout::Columns { batch, out, k, ref shape } => {
            let f1 = d1.f_reshape([batch, out, k])?;
            let f2 = d2.f_reshape([batch, out, k])?;
            let cos = Tensor::f_cosine_similarity(&f1, &f2, 1, 1e-8)?;
            let mut m_shape = vec![batch, 1];
            m_shape.extend_from_slice(&shape[2..]);
            Ok(cos.f_neg()?.f_add_scalar(1.0)?.f_reshape(m_shape)?)
        }
    }
}
