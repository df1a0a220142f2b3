//! Cancellation-free column statistics (docs/decisions.md D21) on the dense and the low-rank
//! path (D6).
//!
//! Per column, with backbone norm `mB`, `a = colsum(B ⊙ Δ)` and `c = colsum(Δ ⊙ Δ)`:
//! `mW = sqrt(mB² + 2a + c)`, `mW − mB = (2a + c)/(mW + mB)` and
//! `1 − cos = (c·mB − a·(mW − mB)) / ((mW + mB)·mW·mB)`. Nothing here subtracts two nearly equal
//! norms, which is what makes the reference's fp32 divergences 1e-4..1e-2 off for LoRA-sized deltas.
//!
//! All contributors of a merge are handled at once, stacked along a leading dim `N`, so the
//! number of kernels does not grow with N. The per-column combination (`[N, B, K]`, small) runs
//! in float64.

use tch::{Kind, Tensor};

use super::eps::DEGENERATE_NORM;
use super::error::Result;
use super::kernels::norm2;

/// The statistics WIDEN ranks, for N contributions, per key and column.
#[derive(Debug)]
pub struct ColumnStats {
    /// Magnitude divergence `|mW − mB|`, `[N, B, K]` fp32.
    pub dm: Tensor,
    /// Direction divergence `1 − cos(W, B)`, `[N, B, K]` fp32. Zero-norm columns (either side)
    /// get 1.
    pub dd: Tensor,
    /// `‖Δ‖²` per contribution and key, `[N, B]` float64: a contribution takes part in a key's
    /// merge iff it is non-zero (D3).
    pub delta_sq: Tensor,
}

impl ColumnStats {
    /// Whether each contribution changes each key at all, `[N, B]` bool.
    pub fn active(&self) -> Result<Tensor> {
        Ok(self.delta_sq.f_gt(0.0)?)
    }

    /// Another handle on the same tensors (statistics are never modified in place).
    pub fn shallow_clone(&self) -> Self {
        Self { dm: self.dm.shallow_clone(), dd: self.dd.shallow_clone(), delta_sq: self.delta_sq.shallow_clone() }
    }

    /// The statistics of keys `start..start + len` of the batch (views).
    pub fn keys(&self, start: i64, len: i64) -> Result<Self> {
        Ok(Self {
            dm: self.dm.f_narrow(1, start, len)?,
            dd: self.dd.f_narrow(1, start, len)?,
            delta_sq: self.delta_sq.f_narrow(1, start, len)?,
        })
    }

    /// The statistics of several batches as one, keys in the given order.
    pub fn cat_keys(parts: &[ColumnStats]) -> Result<Self> {
        let field = |f: fn(&ColumnStats) -> &Tensor| -> Result<Tensor> {
            let ts: Vec<&Tensor> = parts.iter().map(f).collect();
            Ok(Tensor::f_cat(&ts, 1)?)
        };
        Ok(Self { dm: field(|s| &s.dm)?, dd: field(|s| &s.dd)?, delta_sq: field(|s| &s.delta_sq)? })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        [&self.dm, &self.dd, &self.delta_sq].iter().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    /// Refuses statistics of another merge: `n` contributions, `batch` keys, `k` columns.
    pub(crate) fn check_fits(&self, n: i64, batch: i64, k: i64) -> Result<()> {
        let want = [n, batch, k];
        if self.dm.size() != want || self.dd.size() != want || self.delta_sq.size() != want[..2] {
            return Err(super::error::WidenError::Input(format!(
                "known statistics have shape {:?} but this merge needs [{n}, {batch}, {k}]",
                self.dm.size()
            )));
        }
        Ok(())
    }
}

/// Per-column sums of N contributions against one backbone, float64 `[N, B, K]`.
pub(crate) struct ColumnSums {
    pub a: Tensor,
    pub c: Tensor,
    /// Columns where the contribution's weight is exactly zero (known on the dense path only).
    pub w_zero: Option<Tensor>,
}

/// Turns the sums into statistics. `mb2`: `[B, K]` float64. `single_row`: the key has one output
/// row, so a column's direction is its sign and `1 − cos` is exactly 0 or 2, decided by the sign of
/// `B·W = mB² + a` (the general formula would leave rounding noise where the answer is an exact tie).
pub(crate) fn finish(mb2: &Tensor, sums: &ColumnSums, single_row: bool) -> Result<ColumnStats> {
    let (a, c) = (&sums.a, &sums.c);
    let mb2 = mb2.f_unsqueeze(0)?;
    let mb = mb2.f_sqrt()?;
    let num = a.f_mul_scalar(2.0)?.f_add(c)?;
    let mut mw = mb2.f_add(&num)?.f_clamp_min(0.0)?.f_sqrt()?;
    if let Some(z) = &sums.w_zero {
        // The spec's rule for a zero column, whatever rounding leaves in mB² + 2a + c.
        mw = mw.f_masked_fill(z, 0.0)?;
    }
    let s = mw.f_add(&mb)?;
    let s_pos = s.f_gt(0.0)?;
    let s_safe = s.f_where_scalarother(&s_pos, 1.0)?;
    // mW − mB, written so it never subtracts the two norms.
    let mut diff = num.f_div(&s_safe)?.f_where_scalarother(&s_pos, 0.0)?;
    if let Some(z) = &sums.w_zero {
        diff = mb.f_neg()?.f_expand_as(&diff)?.f_where_self(z, &diff)?;
    }
    let dm = diff.f_abs()?;
    let degenerate = mb.f_le(DEGENERATE_NORM)?.f_logical_or(&mw.f_le(DEGENERATE_NORM)?)?;
    let dd = if single_row {
        let opposite = mb2.f_add(a)?.f_lt(0.0)?;
        dm.f_zeros_like()?.f_masked_fill(&opposite, 2.0)?.f_masked_fill(&degenerate, 1.0)?
    } else {
        let den = s.f_mul(&mw)?.f_mul(&mb)?;
        let den_safe = den.f_masked_fill(&degenerate, 1.0)?;
        c.f_mul(&mb)?.f_sub(&a.f_mul(&diff)?)?.f_div(&den_safe)?.f_masked_fill(&degenerate, 1.0)?
    };
    Ok(ColumnStats {
        dm: dm.f_to_kind(Kind::Float)?,
        dd: dd.f_to_kind(Kind::Float)?,
        delta_sq: c.f_sum_dim_intlist(-1, false, Kind::Double)?,
    })
}

/// `mB²` per key and column, `[B, K]` float64, for a backbone `[B, out, K]` (one fused norm pass,
/// in the backbone's own precision).
///
/// In fp32 (the fast statistics) this is ~1e-7 relative and assumes backbone columns whose squared
/// norm is a normal fp32 number (entries within ~1e±18, far beyond real weights).
pub(crate) fn backbone_sq_norms(b: &Tensor) -> Result<Tensor> {
    Ok(norm2(b, 1, false)?.f_to_kind(Kind::Double)?.f_square()?)
}

/// Sums for contributions given as full weights (each `[B, out, K]`).
///
/// Accumulated in float64, one contribution at a time: products of fp32 values are exact there,
/// so `a` and `c` carry no rounding beyond the sums (and `c·mB² − a²`, the part of Δ orthogonal
/// to the backbone that `1 − cos` measures, stays accurate even for nearly parallel columns); the
/// float64 range also makes rescaling against overflow or underflow unnecessary.
/// `b64`: the backbone `[B, out, K]` in float64.
pub(crate) fn dense_sums(b64: &Tensor, weights: &[&Tensor]) -> Result<ColumnSums> {
    let (mut a, mut c, mut z) = (Vec::new(), Vec::new(), Vec::new());
    for w in weights {
        let w64 = w.f_to_kind(Kind::Double)?;
        z.push(w64.f_abs()?.f_amax(1, false)?.f_eq(0.0)?);
        let delta = w64.f_sub(b64)?;
        a.push(b64.f_mul(&delta)?.f_sum_dim_intlist(1, false, Kind::Double)?);
        c.push(delta.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?);
    }
    Ok(ColumnSums {
        a: Tensor::f_stack(&a, 0)?,
        c: Tensor::f_stack(&c, 0)?,
        w_zero: Some(Tensor::f_stack(&z, 0)?),
    })
}

/// N low-rank deltas `Δₙ = upₙ · downₙ` for a batch, padded to a common rank and stacked:
/// `up [B, N, out, r]`, `down [B, N, r, K]`, fp32. Padding adds zero columns to `up` and zero rows
/// to `down`, which change no product.
pub(crate) struct StackedFactors {
    pub up: Tensor,
    pub down: Tensor,
}

impl StackedFactors {
    /// `parts`: `(up [B, out, rₙ], down [B, rₙ, K])`.
    pub(crate) fn new(parts: &[(&Tensor, &Tensor)]) -> Result<Self> {
        let r = parts.iter().map(|(u, _)| u.size()[2]).max().unwrap_or(0);
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for (u, d) in parts {
            let pad = r - u.size()[2];
            if pad == 0 {
                ups.push(u.shallow_clone());
                downs.push(d.shallow_clone());
            } else {
                let (us, ds) = (u.size(), d.size());
                ups.push(Tensor::f_cat(&[*u, &Tensor::f_zeros([us[0], us[1], pad], (u.kind(), u.device()))?], 2)?);
                downs.push(Tensor::f_cat(&[*d, &Tensor::f_zeros([ds[0], pad, ds[2]], (d.kind(), d.device()))?], 1)?);
            }
        }
        Ok(Self { up: Tensor::f_stack(&ups, 1)?, down: Tensor::f_stack(&downs, 1)? })
    }

    /// All contributors side by side: `up [B, out, N·r]`, and `down [B, N·r, K]` after scaling
    /// each contributor's rows by its per-column factors `scales [N, B, K]` (if given).
    pub(crate) fn concatenated(&self, scales: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let s = self.up.size(); // [B, N, out, r]
        let up = self.up.f_permute([0, 2, 1, 3])?.f_reshape([s[0], s[2], s[1] * s[3]])?;
        let down = match scales {
            Some(sc) => self.down.f_mul(&sc.f_transpose(0, 1)?.f_unsqueeze(2)?)?,
            None => self.down.shallow_clone(),
        };
        let k = down.size()[3];
        Ok((up, down.f_reshape([s[0], s[1] * s[3], k])?))
    }

    /// Column sums from the factors alone, with one product `P = Uᵀ·B` for all contributors
    /// (the backbone is read once) and `G = UᵀU` per contributor: `a = colsum(D ⊙ P)`,
    /// `c = colsum(D ⊙ G·D)`. The factors are used as given (no rescaling), so the statistics are
    /// those of exactly `U·D`.
    ///
    /// `b` is the backbone `[B, out, K]` in the precision the statistics are computed in. In
    /// float64 (the default) they are within ~1e-8 of exact. In fp32 (the fast option) `P` and the
    /// sums carry ~1e-7..1e-6: enough to swap adjacent ranks of nearly equal columns, and where
    /// such a swap crosses an importance threshold one column's scale jumps (≈1e-2 on that key).
    pub(crate) fn sums(&self, b: &Tensor) -> Result<ColumnSums> {
        let kind = b.kind();
        let s = self.up.size(); // [B, N, out, r]
        let (batch, n, out, r) = (s[0], s[1], s[2], s[3]);
        let k = self.down.size()[3];
        let up = self.up.f_to_kind(kind)?;
        let down = self.down.f_to_kind(kind)?;
        let u_all = up.f_permute([0, 2, 1, 3])?.f_reshape([batch, out, n * r])?;
        let p = u_all.f_transpose(1, 2)?.f_bmm(b)?.f_reshape([batch, n, r, k])?;
        let a = down.f_mul(&p)?.f_sum_dim_intlist(2, false, kind)?.f_to_kind(Kind::Double)?;
        let u_flat = up.f_reshape([batch * n, out, r])?;
        let g = u_flat.f_transpose(1, 2)?.f_bmm(&u_flat)?; // [B·N, r, r]
        let d_flat = down.f_reshape([batch * n, r, k])?;
        // A quadratic form of a Gram matrix: non-negative up to rounding.
        let c = d_flat
            .f_mul(&g.f_bmm(&d_flat)?)?
            .f_sum_dim_intlist(1, false, kind)?
            .f_to_kind(Kind::Double)?
            .f_clamp_min(0.0)?
            .f_reshape([batch, n, k])?;
        Ok(ColumnSums { a: a.f_transpose(0, 1)?, c: c.f_transpose(0, 1)?, w_zero: None })
    }
}
