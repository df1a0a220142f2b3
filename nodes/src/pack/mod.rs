//! The WIDEN node pack's surface: the 18 nodes of the reference pack (same class names, inputs,
//! defaults and ranges: `docs/widen.md`, "The nodes"), `WIDENBaseInput` / `WIDENCLIPBaseInput` for
//! headless merges on a model file, and `WIDENReport` (docs/widen.md, "Report"). The recipes they build are `crate::recipe`; the Exit's
//! evaluation and its caches are the merge engine (`crate::merge`), one per executor and device,
//! which the nodes reach through their [`PackContext`].
//!
//! Wiring: `comfyrs_nodes::pack::register(&mut registry, folders, engine)` with the
//! [`ModelFolders`] of `--models-dir` / `extra_model_paths.yaml` and the executor's engine.

pub mod nodes;
mod report;

use std::sync::{Arc, RwLock};

use comfyrs_runtime::Registry;

use crate::models::ModelFolders;

pub use crate::merge::{exit, save, MergeEngine, MergeSettings};
pub use crate::recipe::foreign::{ForeignFns, ForeignModels, ForeignState};
pub use crate::recipe::model::{native_model_weights, NativeModel};
pub use report::{native_image_tensor, NativeImage};
pub use crate::recipe::{block, model, BlockConfig, PackError, Recipe, RecipeDomain, RecipeHandle, RecipeKind, RecipeNode};
pub use crate::recipe as recipe;

/// What the pack's nodes share: the model folders (re-read on every schema call, so new files
/// show up in the combos) and the merge engine their Exits run on.
#[derive(Clone)]
pub struct PackContext {
    pub folders: Arc<RwLock<ModelFolders>>,
    pub engine: Arc<MergeEngine>,
}

impl PackContext {
    pub fn new(folders: ModelFolders, engine: Arc<MergeEngine>) -> Self {
        PackContext { folders: Arc::new(RwLock::new(folders)), engine }
    }
    pub fn folders(&self) -> std::sync::RwLockReadGuard<'_, ModelFolders> {
        self.folders.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Files of a folder kind (empty when the kind is unknown or missing).
    pub fn list(&self, kind: &str) -> Vec<String> {
        self.folders().list(kind).unwrap_or_default()
    }
}

/// Registers every node of the pack, their Exits running on `engine`.
pub fn register(reg: &mut Registry, folders: ModelFolders, engine: Arc<MergeEngine>) {
    let ctx = PackContext::new(folders, engine);
    for node in nodes::all(&ctx) {
        reg.register(node);
    }
}
