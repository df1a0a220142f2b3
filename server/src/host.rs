//! What the server needs from the engine that runs prompts; the binary implements it.

use std::path::PathBuf;
use std::sync::Arc;

use comfyrs_runtime::executor::Executor;
use comfyrs_runtime::Registry;
use serde_json::Value as Json;

/// One kind of model folder (`checkpoints`, `loras`, ...) for `/models` and `/experiment/models`.
#[derive(Clone, Debug)]
pub struct ModelFolder {
    pub name: String,
    pub paths: Vec<PathBuf>,
    /// With the dot, as ComfyUI lists them (".safetensors").
    pub extensions: Vec<String>,
}

/// Versions and devices for `/system_stats`.
#[derive(Clone, Debug, Default)]
pub struct SystemInfo {
    pub python_version: String,
    pub pytorch_version: String,
    pub comfyui_version: String,
    /// The web frontend version this build is tested with (`required_frontend_version`).
    pub frontend_version: String,
    /// ComfyUI's device records (`name`, `type`, `index`, `vram_total`, ...).
    pub devices: Vec<Json>,
}

pub trait Host: Send + Sync + 'static {
    /// The node classes prompts are validated against and `/object_info` lists.
    fn registry(&self) -> Arc<Registry>;
    /// A new executor with its own outputs cache (one per device; the server asks once).
    fn executor(&self) -> Executor;
    fn model_folders(&self) -> Vec<ModelFolder> {
        Vec::new()
    }
    fn system(&self) -> SystemInfo {
        SystemInfo::default()
    }
    /// `POST /free` with `unload_models`: drop loaded models and merge caches.
    fn unload_models(&self) {}
    /// The node replacements the node packs registered, as `/node_replacements` lists them
    /// (old class -> replacement records); read once when the server starts.
    fn node_replacements(&self) -> Json {
        Json::Object(Default::default())
    }
}
