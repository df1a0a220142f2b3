//! Ranking strategies: a divergence map `[B, K]` → importances in ~[0, 1] per key (docs/widen.md,
//! "Ranking"; docs/decisions.md D2).

use tch::{Kind, Tensor};

use super::config::Ranking;
use super::eps::adaptive_eps;
use super::error::Result;

/// A ranked map. For percentile ranks, `numer` holds the exact integers `n` with
/// `rank = n / (2K)`, so thresholds against the (exact) mean rank can be decided without rounding.
#[derive(Debug)]
pub struct Ranked {
    /// `[B, K]` fp32.
    pub rank: Tensor,
    /// Percentile only: `[B, K]` fp32 holding integers `2·#less + #equal + 1`.
    pub numer: Option<Tensor>,
    /// Number of positions per key.
    pub k: i64,
}

pub fn rank(x: &Tensor, strategy: Ranking) -> Result<Ranked> {
    let k = x.size()[1];
    match strategy {
        Ranking::Percentile | Ranking::Soft => percentile(x),
        Ranking::ZScore => Ok(Ranked { rank: zscore(x)?, numer: None, k }),
        Ranking::MinMax => Ok(Ranked { rank: minmax(x)?, numer: None, k }),
    }
}

/// Mid-rank percentile (D2): an element's rank is the mean of the 1-based sorted positions its
/// value spans, divided by K. With `l = #less` and `r = #less-or-equal` that mean is
/// `(l + r + 1) / 2`, so `rank = (l + r + 1) / (2K)`: two binary searches in the sorted row,
/// independent of element order and of the sort's stability.
pub fn percentile(x: &Tensor) -> Result<Ranked> {
    let k = x.size()[1];
    // libtorch copies a strided input to search it anyway, and says so on stderr once per process
    // (seen in a CPU `bench merge` of slider changes under a small host limit).
    let x = &x.f_contiguous()?;
    let (sorted, _) = x.f_sort(1, false)?;
    let less = x.f_searchsorted(&sorted, false, false, "left", None::<Tensor>)?;
    let less_eq = x.f_searchsorted(&sorted, false, true, "right", None::<Tensor>)?;
    let numer = less.f_add(&less_eq)?.f_add_scalar(1)?.f_to_kind(Kind::Float)?;
    let rank = numer.f_div_scalar((2 * k) as f64)?;
    Ok(Ranked { rank, numer: Some(numer), k })
}

/// `sigmoid((x − mean) / (std + eps))` per key, with the unbiased std.
///
/// A single-position key has no spread: it gets 0.5 (where the reference's NaN std would make the
/// filter keep it and the merge emit NaN).
pub fn zscore(x: &Tensor) -> Result<Tensor> {
    let k = x.size()[1];
    if k < 2 {
        return Ok(x.f_full_like(0.5)?);
    }
    let eps = adaptive_eps(x)?.f_unsqueeze(1)?;
    let mu = x.f_mean_dim(1, true, Kind::Float)?;
    let sd = x.f_std_dim(1, true, true)?;
    Ok(x.f_sub(&mu)?.f_div(&sd.f_add(&eps)?)?.f_sigmoid()?)
}

/// `(x − min) / (max − min + eps)` per key.
pub fn minmax(x: &Tensor) -> Result<Tensor> {
    let eps = adaptive_eps(x)?.f_unsqueeze(1)?;
    let lo = x.f_amin(1, true)?;
    let hi = x.f_amax(1, true)?;
    Ok(x.f_sub(&lo)?.f_div(&hi.f_sub(&lo)?.f_add(&eps)?)?)
}

impl Ranked {
    /// `rank > t · mean(rank)` per key (the merge's importance mask, docs/widen.md, "Importance
    /// masks and calibration", strict).
    ///
    /// Percentile ranks have the exact mean `(K + 1)/(2K)`, so the test is `n > t·(K + 1)` on
    /// integers: the decision at a rank equal to the threshold is exact, not a rounding accident.
    pub fn above_mean(&self, t: f64) -> Result<Tensor> {
        match &self.numer {
            Some(n) => Ok(n.f_gt((t * (self.k + 1) as f64).floor())?),
            None => {
                let mean = self.rank.f_mean_dim(1, true, Kind::Float)?;
                Ok(self.rank.f_gt_tensor(&mean.f_mul_scalar(t)?)?)
            }
        }
    }
}
