//! The engine as `comfyrs serve` sees it: node registry, executors, model folders, devices.

use std::sync::{Arc, Mutex};

use comfyrs_nodes::models::ModelFolders;
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::executor::Executor;
use comfyrs_runtime::Registry;
use comfyrs_server::{Host, ModelFolder, SystemInfo};
use serde_json::json;

use crate::engine::{python_versions, Engine};

/// The web frontend version `comfyrs serve` is tested with (scripts/setup.sh installs it).
pub const FRONTEND_VERSION: &str = "1.58.1";

pub struct EngineHost {
    engine: Mutex<Engine>,
    registry: Arc<Registry>,
    folders: ModelFolders,
    mode: CacheMode,
}

impl EngineHost {
    pub fn new(engine: Engine) -> anyhow::Result<EngineHost> {
        let config = engine.config().clone();
        let mut folders = ModelFolders::new(&config.models_dir);
        if let Some(yaml) = &config.extra_model_paths {
            folders.load_extra_model_paths(yaml)?;
        }
        Ok(EngineHost { registry: Arc::new(engine.registry.clone()), folders, mode: config.cache.mode, engine: Mutex::new(engine) })
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Host for EngineHost {
    fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn executor(&self) -> Executor {
        self.engine().executor(self.mode)
    }

    fn model_folders(&self) -> Vec<ModelFolder> {
        self.folders
            .kinds()
            .filter_map(|k| {
                let kind = self.folders.kind(k).ok()?;
                Some(ModelFolder { name: k.to_string(), paths: kind.dirs.clone(), extensions: kind.extensions.clone().unwrap_or_default() })
            })
            .collect()
    }

    fn system(&self) -> SystemInfo {
        let engine = self.engine();
        let versions = python_versions().unwrap_or_default();
        let device = engine.merge.device();
        let devices = match device {
            tch::Device::Cuda(i) => {
                // Under `memory.device` the card a client sees is the simulated one
                // (`docs/decisions.md` D35).
                let (total, free) = engine.merge.device_plan().map(|p| (p.limit, p.room)).unwrap_or((0, 0));
                vec![json!({"name": format!("cuda:{i}"), "type": "cuda", "index": i, "vram_total": total, "vram_free": free, "torch_vram_total": 0, "torch_vram_free": 0})]
            }
            _ => vec![json!({"name": "cpu", "type": "cpu", "index": null, "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0})],
        };
        SystemInfo {
            python_version: versions.python,
            pytorch_version: versions.torch,
            comfyui_version: versions.comfyui,
            frontend_version: FRONTEND_VERSION.to_string(),
            devices,
        }
    }

    fn unload_models(&self) {
        self.engine().merge.clear();
        crate::engine::unload_python_models();
    }

    fn node_replacements(&self) -> serde_json::Value {
        crate::engine::python_node_replacements().or_else(|| self.engine().cached_replacements().cloned()).unwrap_or_else(|| json!({}))
    }
}
