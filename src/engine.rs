//! The node registry this binary runs with: native nodes first (they win), then, when a
//! workflow needs them, ComfyUI's own nodes through the embedded Python. The engine also owns
//! the one memory budget and the WIDEN merge engine, both made from the configuration.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use comfyrs_nodes::merge::{default_host_limit, MergeEngine, MergeSettings};
use comfyrs_nodes::models::ModelFolders;
use comfyrs_runtime::memory::{MemoryBudget, UNRESOLVED};
use comfyrs_runtime::Registry;

use crate::config::{Config, PythonMode};

/// How the embedded ComfyUI is set up: where its nodes read and write files (None: ComfyUI's
/// own defaults), and whether samplers make step previews.
#[derive(Clone, Debug, Default)]
// Read only by the bridge; a native-only build sets and ignores them.
#[cfg_attr(not(feature = "python"), allow(dead_code))]
pub struct PythonSetup {
    pub output: Option<std::path::PathBuf>,
    pub input: Option<std::path::PathBuf>,
    pub temp: Option<std::path::PathBuf>,
    pub previews: bool,
}

pub struct Engine {
    pub registry: Registry,
    /// The WIDEN pack's merge engine: its caches, counted in `budget`.
    pub merge: Arc<MergeEngine>,
    /// The one memory budget of this engine's caches (the executor's outputs and every WIDEN cache).
    pub budget: Arc<MemoryBudget>,
    config: Config,
    python_started: bool,
}

impl Engine {
    pub fn new(config: &Config) -> Result<Engine> {
        let mut engine = Engine::without_python(config)?;
        if config.python == PythonMode::Always {
            engine.start_python(None)?;
        }
        Ok(engine)
    }

    /// The native nodes only, whatever `python` says; the caller starts Python when it wants it.
    pub fn without_python(config: &Config) -> Result<Engine> {
        let budget = MemoryBudget::new(config.memory.host.unwrap_or_else(default_host_limit), config.memory.device.unwrap_or(UNRESOLVED));
        let merge = MergeEngine::new(merge_settings(config), budget.clone())?;
        let registry = native_registry(config, merge.clone())?;
        Ok(Engine { registry, merge, budget, config: config.clone(), python_started: false })
    }

    /// Whether a missing node type could still come from Python.
    pub fn can_start_python(&self) -> bool {
        cfg!(feature = "python") && !self.python_started && self.config.python != PythonMode::Never
    }

    /// Starts the embedded ComfyUI once and registers its nodes (native ones keep winning).
    pub fn start_python(&mut self, output_dir: Option<&Path>) -> Result<()> {
        self.start_python_in(&PythonSetup { output: output_dir.map(Path::to_path_buf), ..PythonSetup::default() })
    }

    /// As [`Engine::start_python`], with ComfyUI's input, output and temp folders.
    pub fn start_python_in(&mut self, dirs: &PythonSetup) -> Result<()> {
        if self.python_started {
            return Ok(());
        }
        self.python_started = true;
        start_bridge(&self.config, dirs, &mut self.registry, &self.merge)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// An executor whose output cache counts in this engine's memory budget.
    pub fn executor(&self, mode: comfyrs_runtime::cache::CacheMode) -> comfyrs_runtime::executor::Executor {
        comfyrs_runtime::executor::Executor::with_pool(mode, self.budget.pool("outputs"))
    }
}

/// The merge engine's settings: the configured device and `[widen]` settings.
pub fn merge_settings(config: &Config) -> MergeSettings {
    let w = &config.widen;
    MergeSettings {
        device: config.device.resolve(),
        chunk_budget: w.chunk_budget,
        host_ram: w.host_ram,
        subtree_cache: w.cache,
        device_subtree_cache: w.device_cache,
        stats_cache: w.stats_cache,
        factor_cache: w.factor_cache,
        pinned: w.pinned,
        events: w.events,
        copy_stream: w.copy_stream,
    }
}

/// Native nodes only: ComfyUI's model-free utility nodes and the WIDEN pack (its Exits on `merge`).
pub fn native_registry(config: &Config, merge: Arc<MergeEngine>) -> Result<Registry> {
    let mut reg = Registry::new();
    comfyrs_core::register(&mut reg);
    let mut folders = ModelFolders::new(&config.models_dir);
    if let Some(yaml) = &config.extra_model_paths {
        folders
            .load_extra_model_paths(yaml)
            .with_context(|| format!("cannot read the extra model paths file {}", yaml.display()))?;
    }
    comfyrs_nodes::pack::register(&mut reg, folders, merge);
    Ok(reg)
}

#[cfg(feature = "python")]
fn start_bridge(config: &Config, dirs: &PythonSetup, reg: &mut Registry, merge: &MergeEngine) -> Result<()> {
    use comfyrs_bridge::{Bridge, BridgeOptions};
    let t = std::time::Instant::now();
    tracing::info!("starting the embedded ComfyUI for non-native nodes");
    let opts = BridgeOptions {
        comfyui_path: config.comfyui.clone(),
        custom_nodes: config.custom_nodes.clone(),
        output_dir: dirs.output.clone(),
        input_dir: dirs.input.clone(),
        temp_dir: dirs.temp.clone(),
        previews: dirs.previews,
        models_dir: config.models_dir.is_dir().then(|| config.models_dir.clone()),
        ..BridgeOptions::default()
    };
    let bridge = Bridge::start(&opts).context("cannot start the embedded Python ComfyUI")?;
    // The MODEL handoff: WIDENEntry / WIDENExit on ComfyUI MODELs.
    merge.set_foreign_models(Arc::new(comfyrs_nodes::pack::ForeignFns {
        state_dict: comfyrs_bridge::model::state_dict,
        prepare: comfyrs_bridge::model::prepare,
        with_weights: comfyrs_bridge::model::with_weights,
    }));
    bridge.add_model_extractor(comfyrs_nodes::pack::native_model_weights);
    for f in bridge.import_failures() {
        let last = f.error.lines().last().unwrap_or("");
        if f.custom {
            eprintln!("warning: custom node pack {} failed to import and was skipped: {last}", f.path);
        } else {
            tracing::debug!("ComfyUI module {} was skipped: {last}", f.path);
        }
    }
    let n = bridge.register(reg);
    tracing::info!("embedded ComfyUI ready: {n} Python node types in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(not(feature = "python"))]
fn start_bridge(_config: &Config, _dirs: &PythonSetup, _reg: &mut Registry, _merge: &MergeEngine) -> Result<()> {
    anyhow::bail!("this comfyrs was built without Python (cargo feature `python`), so only native nodes can run")
}

/// What `/system_stats` reports of the embedded ComfyUI.
#[derive(Clone, Debug, Default)]
pub struct PythonVersions {
    pub python: String,
    pub torch: String,
    pub comfyui: String,
}

#[cfg(feature = "python")]
pub fn python_versions() -> Option<PythonVersions> {
    let bridge = comfyrs_bridge::Bridge::running()?;
    let report = bridge.report();
    // ComfyUI keeps its version in comfyui_version.py (`__version__ = "0.33.0"`); older copies
    // have none.
    let comfyui = std::fs::read_to_string(report.comfyui_path.join("comfyui_version.py"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.trim().strip_prefix("__version__").map(|r| r.trim_start_matches([' ', '=']).trim_matches(['"', '\'']).to_string())))
        .unwrap_or_default();
    Some(PythonVersions { python: report.python_version.clone(), torch: report.torch_version.clone(), comfyui })
}

#[cfg(not(feature = "python"))]
pub fn python_versions() -> Option<PythonVersions> {
    None
}

/// The node replacements ComfyUI's nodes registered, when the embedded ComfyUI runs.
#[cfg(feature = "python")]
pub fn python_node_replacements() -> Option<serde_json::Value> {
    let bridge = comfyrs_bridge::Bridge::running()?;
    bridge.node_replacements().map_err(|e| tracing::warn!("cannot read the node replacements: {e}")).ok()
}

#[cfg(not(feature = "python"))]
pub fn python_node_replacements() -> Option<serde_json::Value> {
    None
}

/// ComfyUI's own model unloading (`POST /free`), when the embedded ComfyUI runs.
#[cfg(feature = "python")]
pub fn unload_python_models() {
    let Some(bridge) = comfyrs_bridge::Bridge::running() else { return };
    let done = bridge.with_python(|py| -> Result<(), String> {
        use comfyrs_bridge::pyo3::types::PyAnyMethods;
        let mm = py.import("comfy.model_management").map_err(|e| e.to_string())?;
        mm.call_method0("unload_all_models").map_err(|e| e.to_string())?;
        mm.call_method0("soft_empty_cache").map_err(|e| e.to_string())?;
        Ok(())
    });
    match done {
        Ok(Ok(())) => tracing::info!("unloaded ComfyUI's models"),
        Ok(Err(e)) => tracing::warn!("ComfyUI could not unload its models: {e}"),
        Err(e) => tracing::warn!("ComfyUI could not unload its models: {e}"),
    }
}

#[cfg(not(feature = "python"))]
pub fn unload_python_models() {}
