//! comfyrs-testkit: what tests and benchmarks need and production code does not.
//!
//! - [`fixtures`]: deterministic random-weight base models and LoRAs in the layouts of real
//!   architectures (`comfyrs fixtures`, the format and pack tests, `comfyrs bench merge`).
//! - [`sd15`]: a random-weight tiny SD1.5 checkpoint and LoRA that ComfyUI's own model detection
//!   accepts, for workflows run through the Python bridge.
//! - [`oracle`]: a float64 evaluation of WIDEN that the tensor code is checked against.
//! - [`widen_bench`]: `comfyrs bench widen`, the WIDEN kernel benchmark.
//!
//! The library crates do not depend on it (only their tests do), so they need no clap.

pub mod fixtures;
pub mod oracle;
pub mod sd15;
pub mod widen_bench;
