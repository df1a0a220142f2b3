//! Calibration of sparsity scores with importance masks, and renormalization (docs/widen.md,
//! "Importance masks and calibration").

use tch::Tensor;

use super::config::{Calibration, WidenConfig};
use super::error::Result;

/// `scores`, `mask`: `[N, …]`. Overwrite/multiplicative renormalize across dim 0 with the
/// configured epsilon; [`Calibration::Off`] returns the scores as they are.
pub fn calibrate(scores: &Tensor, mask: &Tensor, cfg: &WidenConfig) -> Result<Tensor> {
    let s = cfg.s_calibration;
    let calibrated = match cfg.calibration {
        Calibration::Overwrite => scores.f_masked_fill(mask, s)?,
        Calibration::Multiplicative => scores.f_mul_scalar(s)?.f_where_self(mask, scores)?,
        Calibration::Off => return Ok(scores.shallow_clone()),
    };
    let total = calibrated.f_sum_dim_intlist(0, true, calibrated.kind())?;
    Ok(calibrated.f_div(&total.f_add_scalar(cfg.renorm_eps)?)?)
}
