//! The WIDEN node pack, natively: the 18 nodes of the reference pack (same class names, inputs,
//! defaults and ranges: `recipe-and-nodes.md` §3), `WIDENBaseInput` / `WIDENCLIPBaseInput` for
//! headless merges on a model file, the Exit evaluator (`exit`), the content-addressed subtree
//! cache (`cache`, D19) and saving (`save`).
//!
//! Wiring: `comfyrs_nodes::pack::register(&mut registry, folders)` with the
//! [`ModelFolders`] of `--models-dir` / `extra_model_paths.yaml`.

pub mod block;
pub mod cache;
mod cuda_events;
mod cuda_runtime;
pub mod exit;
mod factors;
pub mod foreign;
mod knobs;
mod memo;
pub mod model;
pub mod nodes;
pub mod preflight;
mod readback;
pub mod recipe;
pub mod save;
mod transfer;

use std::sync::{Arc, RwLock};

use comfyrs_runtime::{NodeError, Registry};

use crate::models::{FormatError, ModelFolders};

pub use cache::{ByteLru, Cached, StatsCache, SubtreeCache, CACHE, STATS};
pub use factors::FACTORS;
pub use foreign::{foreign_models, set_foreign_models, ForeignFns, ForeignModels, ForeignState};
pub use model::{native_model_weights, NativeModel};
pub use recipe::{BlockConfig, Recipe, RecipeDomain, RecipeHandle, RecipeKind, RecipeNode};

/// What the pack's nodes share: the model folders (re-read on every schema call, so new files
/// show up in the combos).
#[derive(Clone)]
pub struct PackContext {
    pub folders: Arc<RwLock<ModelFolders>>,
}

impl PackContext {
    pub fn new(folders: ModelFolders) -> Self {
        PackContext { folders: Arc::new(RwLock::new(folders)) }
    }
    pub fn folders(&self) -> std::sync::RwLockReadGuard<'_, ModelFolders> {
        self.folders.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Files of a folder kind (empty when the kind is unknown or missing).
    pub fn list(&self, kind: &str) -> Vec<String> {
        self.folders().list(kind).unwrap_or_default()
    }
}

/// Registers every node of the pack.
pub fn register(reg: &mut Registry, folders: ModelFolders) {
    let ctx = PackContext::new(folders);
    for node in nodes::all(&ctx) {
        reg.register(node);
    }
}

/// An error of the pack with the Python exception type the reference raises.
#[derive(Debug, Clone)]
pub struct PackError {
    pub message: String,
    pub exception_type: &'static str,
}

impl PackError {
    pub fn value(m: impl Into<String>) -> Self {
        PackError { message: m.into(), exception_type: "ValueError" }
    }
    pub fn type_error(m: impl Into<String>) -> Self {
        PackError { message: m.into(), exception_type: "TypeError" }
    }
    pub fn runtime(m: impl Into<String>) -> Self {
        PackError { message: m.into(), exception_type: "RuntimeError" }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        PackError { message: m.into(), exception_type: "FileNotFoundError" }
    }
    pub fn format(e: FormatError) -> Self {
        let t = match &e {
            FormatError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => "FileNotFoundError",
            FormatError::ModelNotFound { .. } => "FileNotFoundError",
            FormatError::MissingKeys { .. } => "KeyMismatchError",
            FormatError::UnsupportedFormat { .. } => "UnsupportedFormatError",
            _ => "ValueError",
        };
        PackError { message: e.to_string(), exception_type: t }
    }
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<PackError> for NodeError {
    fn from(e: PackError) -> Self {
        NodeError::Failed { message: e.message, exception_type: e.exception_type.into(), traceback: Vec::new() }
    }
}

impl From<tch::TchError> for PackError {
    fn from(e: tch::TchError) -> Self {
        PackError::runtime(e.to_string())
    }
}

impl From<crate::widen::WidenError> for PackError {
    fn from(e: crate::widen::WidenError) -> Self {
        PackError::runtime(e.to_string())
    }
}
