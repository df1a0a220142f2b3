//! placeholder
use std::sync::Arc;
pub fn nodes() -> Vec<Arc<dyn comfyrs_runtime::NodeClass>> { Vec::new() }
