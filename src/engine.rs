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
        let budget = MemoryBudget::new(config.memory.host.unwrap_or_else(default_host_limit), config.memory.device.unwrap_or(UNRESOLVED));
        let merge = MergeEngine::new(merge_settings(config), budget.clone())?;
        let registry = native_registry(config, merge.clone())?;
        let mut engine = Engine { registry, merge, budget, config: config.clone(), python_started: false };
        if config.python == PythonMode::Always {
            engine.start_python(None)?;
        }
        Ok(engine)
    }

    /// Whether a missing node type could still come from Python.
    pub fn can_start_python(&self) -> bool {
        cfg!(feature = "python") && !self.python_started && self.config.python != PythonMode::Never
    }

    /// Starts the embedded ComfyUI once and registers its nodes (native ones keep winning).
    pub fn start_python(&mut self, output_dir: Option<&Path>) -> Result<()> {
        if self.python_started {
            return Ok(());
        }
        self.python_started = true;
        start_bridge(&self.config, output_dir, &mut self.registry, &self.merge)
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
fn start_bridge(config: &Config, output_dir: Option<&Path>, reg: &mut Registry, merge: &MergeEngine) -> Result<()> {
    use comfyrs_bridge::{Bridge, BridgeOptions};
    let t = std::time::Instant::now();
    tracing::info!("starting the embedded ComfyUI for non-native nodes");
    let opts = BridgeOptions {
        comfyui_path: config.comfyui.clone(),
        custom_nodes: config.custom_nodes.clone(),
        output_dir: output_dir.map(Path::to_path_buf),
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
fn start_bridge(_config: &Config, _output_dir: Option<&Path>, _reg: &mut Registry, _merge: &MergeEngine) -> Result<()> {
    anyhow::bail!("this comfyrs was built without Python (cargo feature `python`), so only native nodes can run")
}
