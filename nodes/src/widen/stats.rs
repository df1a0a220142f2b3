//! Cancellation-free column statistics (D21) on the dense and the low-rank path (D6).
//!
//! Per column, with backbone norm `mB`, `a = colsum(B ⊙ Δ)` and `c = colsum(Δ ⊙ Δ)`:
//! `mW = sqrt(mB² + 2a + c)`, `mW − mB = (2a + c)/(mW + mB)` and
//! `1 − cos = (c·mB − a·(mW − mB)) / ((mW + mB)·mW·mB)`. Nothing here subtracts two nearly equal
//! norms, which is what makes the reference's fp32 divergences 1e-4..1e-2 off for LoRA-sized deltas.
//!
//! The large tensors are reduced in fp32; the per-column combination (`[B, K]`, small) runs in
//! float64 so neither overflow nor the final formulas add error.

use tch::{Kind, Tensor};

use super::eps::DEGENERATE_NORM;
use super::error::Result;
use super::kernels::norm2;

/// The statistics WIDEN ranks for one contribution, per key and column.
#[derive(Debug)]
pub struct ColumnStats {
    /// Magnitude divergence `|mW − mB|`, `[B, K]` fp32.
    pub dm: Tensor,
    /// Direction divergence `1 − cos(W, B)`, `[B, K]` fp32. Zero-norm columns (either side) get 1.
    pub dd: Tensor,
    /// `‖Δ‖²` per key, `[B]` float64 (the key takes part in a merge iff it is non-zero, D3).
    pub delta_sq: Tensor,
}

impl ColumnStats {
    /// Whether the contribution changes each key at all, `[B]` bool.
    pub fn active(&self) -> Result<Tensor> {
        Ok(self.delta_sq.f_gt(0.0)?)
    }
}

/// Combines the per-column sums (all float64 `[B, K]`) into the statistics.
/// `w_zero` marks columns where the contribution's weight is exactly zero, known on the dense
/// path: there `mW` is 0 by the spec's rule, whatever rounding leaves in `mB² + 2a + c`.
pub(crate) fn finish(mb2: &Tensor, a: &Tensor, c: &Tensor, w_zero: Option<&Tensor>) -> Result<ColumnStats> {
    let mb = mb2.f_sqrt()?;
    let num = a.f_mul_scalar(2.0)?.f_add(c)?;
    let mut mw = mb2.f_add(&num)?.f_clamp_min(0.0)?.f_sqrt()?;
    if let Some(z) = w_zero {
        mw = mw.f_masked_fill(z, 0.0)?;
    }
    let s = mw.f_add(&mb)?;
    let s_pos = s.f_gt(0.0)?;
    let s_safe = s.f_where_scalarother(&s_pos, 1.0)?;
    // mW − mB, written so it never subtracts the two norms.
    let mut diff = num.f_div(&s_safe)?.f_where_scalarother(&s_pos, 0.0)?;
    if let Some(z) = w_zero {
        // Exactly zero contribution column: mW − mB = −mB.
        diff = mb.f_neg()?.f_where_self(z, &diff)?;
    }
    let dm = diff.f_abs()?;
    let degenerate = mb.f_le(DEGENERATE_NORM)?.f_logical_or(&mw.f_le(DEGENERATE_NORM)?)?;
    let den = s.f_mul(&mw)?.f_mul(&mb)?;
    let den_safe = den.f_masked_fill(&degenerate, 1.0)?;
    let dd = c
        .f_mul(&mb)?
        .f_sub(&a.f_mul(&diff)?)?
        .f_div(&den_safe)?
        .f_masked_fill(&degenerate, 1.0)?;
    Ok(ColumnStats {
        dm: dm.f_to_kind(Kind::Float)?,
        dd: dd.f_to_kind(Kind::Float)?,
        delta_sq: c.f_sum_dim_intlist(1, false, Kind::Double)?,
    })
}

/// `x / s` with `s` the per-column max-abs over the output dim, and `s` itself (`[B, 1, K]`).
/// Squares of the scaled values neither overflow nor underflow for any finite input.
fn column_scaled(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = x.f_abs()?.f_amax(1, true)?;
    let safe = s.f_where_scalarother(&s.f_gt(0.0)?, 1.0)?;
    Ok((x.f_div(&safe)?, s))
}

/// The backbone's column data for dense contributions: computed once per merge.
pub(crate) struct DenseBackbone {
    scaled: Tensor,
    scale64: Tensor,
    mb2: Tensor,
}

impl DenseBackbone {
    /// `b`: the backbone as `[B, out, K]` fp32.
    pub(crate) fn new(b: &Tensor) -> Result<Self> {
        let (scaled, scale) = column_scaled(b)?;
        let scale64 = scale.f_squeeze_dim(1)?.f_to_kind(Kind::Double)?;
        let norm_hat = norm2(&scaled, 1, false)?.f_to_kind(Kind::Double)?;
        let mb2 = norm_hat.f_mul(&scale64)?.f_square()?;
        Ok(Self { scaled, scale64, mb2 })
    }

    /// Statistics of one contribution given as its delta `[B, out, K]` fp32 and its weights
    /// (`backbone + delta`, only tested for exactly-zero columns).
    pub(crate) fn stats(&self, delta: &Tensor, weights: &Tensor) -> Result<ColumnStats> {
        let (dhat, ds) = column_scaled(delta)?;
        let ds64 = ds.f_squeeze_dim(1)?.f_to_kind(Kind::Double)?;
        let a_hat = self.scaled.f_mul(&dhat)?.f_sum_dim_intlist(1, false, Kind::Float)?;
        let c_hat = norm2(&dhat, 1, false)?.f_to_kind(Kind::Double)?;
        let a = a_hat.f_to_kind(Kind::Double)?.f_mul(&self.scale64)?.f_mul(&ds64)?;
        let c = c_hat.f_mul(&ds64)?.f_square()?;
        let w_zero = weights.f_abs()?.f_amax(1, false)?.f_eq(0.0)?;
        finish(&self.mb2, &a, &c, Some(&w_zero))
    }
}

/// A low-rank delta `Δ = up · down` per key: `up [B, out, r]`, `down [B, r, K]`, fp32.
pub(crate) struct Factors {
    pub up: Tensor,
    pub down: Tensor,
}

/// The backbone's column data for low-rank contributions.
pub(crate) struct LowRankBackbone {
    b: Tensor,
    mb2: Tensor,
}

impl LowRankBackbone {
    /// `b`: the backbone as `[B, out, K]` fp32. One pass for the column norms.
    ///
    /// The norm is taken in fp32 without rescaling, so this path assumes backbone columns whose
    /// squared norm is a normal fp32 number (entries within ~1e±18); real weights are far inside.
    pub(crate) fn new(b: &Tensor) -> Result<Self> {
        let mb = norm2(b, 1, false)?.f_to_kind(Kind::Double)?;
        Ok(Self { b: b.shallow_clone(), mb2: mb.f_square()? })
    }

    /// Statistics of every contribution, with one product `Uᵀ·B` for all of them (the backbone is
    /// read once). `up`'s columns are normalized first (their norms move into `down`), so
    /// `P = Ûᵀ·B` is bounded by the backbone's column norms and `G = ÛᵀÛ` has a unit diagonal.
    pub(crate) fn stats(&self, contributions: &[Factors]) -> Result<Vec<ColumnStats>> {
        let mut uhats = Vec::with_capacity(contributions.len());
        let mut dhats = Vec::with_capacity(contributions.len());
        for f in contributions {
            let sigma = norm2(&f.up, 1, true)?; // [B, 1, r]
            let pos = sigma.f_gt(0.0)?;
            let safe = sigma.f_where_scalarother(&pos, 1.0)?;
            uhats.push(f.up.f_div(&safe)?.f_where_scalarother(&pos, 0.0)?);
            dhats.push(f.down.f_mul(&sigma.f_transpose(1, 2)?)?);
        }
        let u_all = Tensor::f_cat(&uhats, 2)?;
        let p_all = u_all.f_transpose(1, 2)?.f_bmm(&self.b)?.f_to_kind(Kind::Double)?;
        let mut out = Vec::with_capacity(contributions.len());
        let mut offset = 0;
        for (uhat, dhat) in uhats.iter().zip(&dhats) {
            let r = uhat.size()[2];
            let p = p_all.f_narrow(1, offset, r)?;
            offset += r;
            let d64 = dhat.f_to_kind(Kind::Double)?;
            let u64 = uhat.f_to_kind(Kind::Double)?;
            let g = u64.f_transpose(1, 2)?.f_bmm(&u64)?;
            let a = d64.f_mul(&p)?.f_sum_dim_intlist(1, false, Kind::Double)?;
            // A quadratic form of a Gram matrix: non-negative up to rounding.
            let c = d64
                .f_mul(&g.f_bmm(&d64)?)?
                .f_sum_dim_intlist(1, false, Kind::Double)?
                .f_clamp_min(0.0)?;
            out.push(finish(&self.mb2, &a, &c, None)?);
        }
        Ok(out)
    }
}
