//! WIDEN settings (docs/widen.md, "Configuration") and how `t_factor` selects the operation
//! (docs/decisions.md D5).

use std::fmt;
use std::str::FromStr;

use super::WidenError;

/// How a divergence map is turned into per-position importances in ~[0, 1] (docs/widen.md,
/// "Ranking").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ranking {
    /// Exact rank / K, ties get the mean of the ranks they span (D2).
    #[default]
    Percentile,
    ZScore,
    MinMax,
    /// The reference's batched "soft" rank is percentile; kept as a name so recipes that say
    /// `soft` keep working.
    Soft,
}

impl FromStr for Ranking {
    type Err = WidenError;
    fn from_str(name: &str) -> Result<Self, WidenError> {
        match name {
            "percentile" => Ok(Self::Percentile),
            "zscore" => Ok(Self::ZScore),
            "minmax" => Ok(Self::MinMax),
            "soft" | "softrank" => Ok(Self::Soft),
            other => Err(WidenError::Config(format!(
                "Unknown strategy: {other} (valid: 'percentile', 'zscore', 'minmax', 'soft')"
            ))),
        }
    }
}

/// How the N contributors' ranks at one position become weights (docs/widen.md, "Sparsity"; D1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sparsity {
    #[default]
    Softmax,
    Sparsemax,
    /// Exact alpha = 1.5 entmax (D1), not the reference's reversed bisection.
    Entmax,
}

impl FromStr for Sparsity {
    type Err = WidenError;
    fn from_str(name: &str) -> Result<Self, WidenError> {
        match name {
            "softmax" => Ok(Self::Softmax),
            "sparsemax" => Ok(Self::Sparsemax),
            "entmax" => Ok(Self::Entmax),
            other => Err(WidenError::Config(format!(
                "Unknown sparsity_method: '{other}'. Valid options: 'softmax', 'sparsemax', 'entmax'"
            ))),
        }
    }
}

/// Calibration of the sparsity scores with the importance masks (docs/widen.md, "Importance masks
/// and calibration").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Calibration {
    /// Important positions get the score `s_calibration`, then scores are renormalized.
    #[default]
    Overwrite,
    /// Important positions' scores are multiplied by `s_calibration`, then renormalized.
    Multiplicative,
    /// Any other mode name in the reference: scores pass unchanged and are not renormalized.
    Off,
}

impl Calibration {
    /// Unknown names mean [`Calibration::Off`], as in the reference (its nodes never expose the
    /// mode, so this only concerns library callers).
    pub fn from_name(name: &str) -> Self {
        match name {
            "overwrite" => Self::Overwrite,
            "multiplicative" => Self::Multiplicative,
            _ => Self::Off,
        }
    }
}

/// The WIDEN configuration. Defaults are those of the reference; the Exit nodes only ever change
/// `t_factor`.
#[derive(Clone, Debug, PartialEq)]
pub struct WidenConfig {
    pub t_factor: f64,
    pub s_calibration: f64,
    pub ranking: Ranking,
    pub sparsity: Sparsity,
    pub calibration: Calibration,
    /// Epsilon of the score renormalization (docs/widen.md, "Numerical constants"): 1e-12 for the
    /// fp32 configuration the Exit always uses.
    pub renorm_eps: f64,
}

impl Default for WidenConfig {
    fn default() -> Self {
        Self {
            t_factor: 1.0,
            s_calibration: 1.0,
            ranking: Ranking::Percentile,
            sparsity: Sparsity::Softmax,
            calibration: Calibration::Overwrite,
            renorm_eps: 1e-12,
        }
    }
}

/// What an operation does for a given `t_factor` (D5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TMode {
    /// `t > 0`: WIDEN as specified.
    Widen,
    /// `t == 0`: the contribution is dropped, the result is the backbone.
    BackboneOnly,
    /// `t < 0`: WIDEN off. A filter passes the contribution unfiltered; a merge adds all deltas.
    Off,
}

impl WidenConfig {
    /// The same configuration with another `t_factor` (per-op instances, docs/widen.md,
    /// "Configuration").
    pub fn with_t(&self, t_factor: f64) -> Self {
        Self { t_factor, ..self.clone() }
    }

    pub fn t_mode(&self) -> TMode {
        if self.t_factor > 0.0 {
            TMode::Widen
        } else if self.t_factor == 0.0 {
            TMode::BackboneOnly
        } else {
            TMode::Off
        }
    }

    /// Rejects values no computation could give a meaning to; called by every operation before
    /// any tensor work, so a bad setting is an error rather than a silent fallback.
    pub fn validate(&self) -> Result<(), WidenError> {
        if !self.t_factor.is_finite() {
            return Err(WidenError::Config(format!(
                "t_factor must be a finite number, got {}",
                self.t_factor
            )));
        }
        if !self.s_calibration.is_finite() {
            return Err(WidenError::Config(format!(
                "s_calibration must be a finite number, got {}",
                self.s_calibration
            )));
        }
        if !(self.renorm_eps.is_finite() && self.renorm_eps >= 0.0) {
            return Err(WidenError::Config(format!(
                "renorm_eps must be a finite non-negative number, got {}",
                self.renorm_eps
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Ranking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Percentile => "percentile",
            Self::ZScore => "zscore",
            Self::MinMax => "minmax",
            Self::Soft => "soft",
        })
    }
}

impl fmt::Display for Sparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Softmax => "softmax",
            Self::Sparsemax => "sparsemax",
            Self::Entmax => "entmax",
        })
    }
}
