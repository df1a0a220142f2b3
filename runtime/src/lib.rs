//! comfyrs-runtime: ComfyUI's formats, validation, signatures, cache and scheduler.
//!
//! This crate knows nothing of tensors, WIDEN or Python: heavy values are opaque handles
//! ([`value::Opaque`]) and node behaviour comes through the [`node::NodeClass`] contract.

// Validation errors carry ComfyUI's whole error payload (type, message, details, extra info, per
// node errors) and travel once per rejected prompt: boxing them would only add allocations.
#![allow(clippy::result_large_err)]

pub mod blocker;
pub mod cache;
pub mod coerce;
pub mod dynamic;
pub mod events;
pub mod executor;
pub mod expansion;
pub mod interrupt;
pub mod memory;
pub mod node;
pub mod paths;
mod plan;
pub mod prompt;
pub mod random;
pub mod registry;
pub mod schema;
pub mod signature;
pub mod validate;
pub mod value;
pub mod workflow;

pub use node::{Args, CallOutput, ExecContext, Fingerprint, NodeClass, NodeError, Placement};
pub use registry::Registry;
pub use schema::{InputSpec, NodeSchema, OutputSpec};
pub use value::{Opaque, Value};
