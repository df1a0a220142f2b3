//! WIDEN model merging on libtorch (docs/widen.md, "Part 1: the math", amended by
//! docs/decisions.md D1–D6, D21).
//!
//! Entry points: [`Widen::filter`] (one contributor) and [`Widen::merge`] (N contributors) on a
//! batch of keys of one shape `[B, *S]`, each contributor given as full weights or as low-rank
//! factors ([`Contribution`]). Every statistic is per key (D4), math runs in fp32 on the chosen
//! device, results come back in the backbone's dtype. The building blocks (ranking, sparsity,
//! statistics, kernels) are public for tests, for the benchmarks in `testkit/` and for callers
//! that cache them.

pub mod calibration;
pub mod config;
pub mod disentangle;
pub mod eps;
mod error;
mod factored;
pub mod filter;
pub mod kernels;
pub mod layout;
pub mod merge;
mod ops;
pub mod ranking;
pub mod sparsity;
pub mod stats;
pub mod summary;

pub use config::{Calibration, Ranking, Sparsity, TMode, WidenConfig};
pub use error::{Result, WidenError};
pub use factored::Factored;
pub use ops::{Contribution, Merged, Product, Statistics, Widen};
pub use ranking::Ranked;
pub use stats::ColumnStats;

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_links() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 6.0);
    }
}
