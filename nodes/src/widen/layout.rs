//! How a batched key tensor `[B, *S]` is viewed by WIDEN (docs/widen.md, "Batches and shapes",
//! "Magnitude and direction").

use super::error::{Result, WidenError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// Biases, norm weights: `[B, n]`, one importance per element.
    OneD { batch: i64, n: i64 },
    /// Linear `[B, out, in]`, Conv1d `[B, out, in, k]`, Conv2d `[B, out, in, kh, kw]`: viewed as
    /// `[B, out, K]` with one importance per column (everything but the output dim).
    Columns { batch: i64, out: i64, k: i64, shape: Vec<i64> },
}

impl KeyLayout {
    pub fn of(shape: &[i64]) -> Result<Self> {
        match shape.len() {
            2 => Ok(Self::OneD { batch: shape[0], n: shape[1] }),
            3..=5 => Ok(Self::Columns {
                batch: shape[0],
                out: shape[1],
                k: shape[2..].iter().product(),
                shape: shape.to_vec(),
            }),
            n => Err(WidenError::Input(format!(
                "Unsupported batched weight ndim: {n} (shape {shape:?}); WIDEN handles [B, n] \
                 vectors and [B, out, …] weights of 2 to 4 dims per key"
            ))),
        }
    }

    pub fn batch(&self) -> i64 {
        match self {
            Self::OneD { batch, .. } | Self::Columns { batch, .. } => *batch,
        }
    }

    /// Number of ranked positions per key.
    pub fn positions(&self) -> i64 {
        match self {
            Self::OneD { n, .. } => *n,
            Self::Columns { k, .. } => *k,
        }
    }
}
