//! The node registry this binary runs with: native nodes first (they win), then, when a
//! workflow needs them, ComfyUI's own nodes through the embedded Python. The engine also owns
//! the one memory budget and the WIDEN merge engine, both made from the configuration.

use std::path::Path;
use std::sync::{Arc, Mutex};

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
    /// Set when the Python classes came from the record cache: starts the embedded ComfyUI
    /// when one of them first needs it.
    launcher: Option<Arc<Launcher>>,
    /// The folders the embedded ComfyUI starts with (the launcher reads them when it starts).
    setup: Arc<Mutex<PythonSetup>>,
    /// The node replacements the record cache holds (until Python runs).
    cached_replacements: Option<serde_json::Value>,
    /// The device's start-up, when [`Engine::warm_up_device`] started it.
    warming: Option<std::thread::JoinHandle<std::time::Duration>>,
}

#[cfg(feature = "python")]
pub type Launcher = comfyrs_bridge::Launcher;
/// Without Python there is nothing to launch.
#[cfg(not(feature = "python"))]
pub enum Launcher {}

/// Whether the record cache is used: on unless `COMFYRS_NO_RECORD_CACHE` is set (to anything
/// but empty or `0`).
pub fn record_cache_enabled() -> bool {
    std::env::var("COMFYRS_NO_RECORD_CACHE").map_or(true, |v| v.is_empty() || v == "0")
}

impl Engine {
    /// Starts the merge device's one-time start-up on a thread of its own (docs/widen.md,
    /// "Device start-up"), for commands that are about to merge: it overlaps reading the
    /// workflow, the model files and starting Python. Nothing on the CPU.
    pub fn warm_up_device(&mut self) {
        if self.warming.is_none() {
            self.warming = self.merge.warm_up();
        }
    }

    pub fn new(config: &Config) -> Result<Engine> {
        let mut engine = Engine::without_python(config)?;
        match config.python {
            PythonMode::Always => engine.start_python(None)?,
            PythonMode::Auto | PythonMode::Never => {}
        }
        Ok(engine)
    }

    /// The native nodes only, whatever `python` says; the caller starts Python when it wants it.
    pub fn without_python(config: &Config) -> Result<Engine> {
        let budget = memory_budget(config);
        let merge = MergeEngine::new(merge_settings(config), budget.clone())?;
        let registry = native_registry(config, merge.clone())?;
        Ok(Engine {
            registry,
            merge,
            budget,
            config: config.clone(),
            python_started: false,
            launcher: None,
            setup: Arc::new(Mutex::new(PythonSetup::default())),
            cached_replacements: None,
            warming: None,
        })
    }

    /// Whether a missing node type could still come from Python. Not when the classes came from
    /// a fresh record cache: it lists every class that ComfyUI would provide.
    pub fn can_start_python(&self) -> bool {
        cfg!(feature = "python") && !self.python_started && self.launcher.is_none() && self.config.python != PythonMode::Never
    }

    /// Provides ComfyUI's classes for a workflow that names types no native node has: from a
    /// fresh record cache when there is one (Python starts later, when a node needs it), else
    /// by starting Python now. Call only when [`Engine::can_start_python`].
    pub fn load_python_nodes(&mut self, output_dir: Option<&Path>) -> Result<()> {
        let dirs = PythonSetup { output: output_dir.map(Path::to_path_buf), ..PythonSetup::default() };
        if self.use_record_cache(&dirs) {
            return Ok(());
        }
        self.start_python_in(&dirs)
    }

    /// Whether Python classes are registered from the record cache and Python has not started.
    pub fn python_pending(&self) -> bool {
        #[cfg(feature = "python")]
        return self.launcher.as_ref().is_some_and(|l| l.started().is_none());
        #[cfg(not(feature = "python"))]
        false
    }

    /// The launcher of the cached classes, for starting Python in the background.
    pub fn launcher(&self) -> Option<Arc<Launcher>> {
        self.launcher.clone()
    }

    /// The node replacements of the record cache (None when the classes did not come from it).
    pub fn cached_replacements(&self) -> Option<&serde_json::Value> {
        self.cached_replacements.as_ref()
    }

    /// Where output nodes write, for a Python start that has not happened yet.
    pub fn set_python_output(&mut self, output: Option<&Path>) {
        if let Some(o) = output {
            self.setup.lock().unwrap_or_else(|p| p.into_inner()).output = Some(o.to_path_buf());
        }
    }

    /// Registers the Python classes from a fresh record cache, each starting the embedded
    /// ComfyUI (with `dirs`) when it first needs Python. False, and nothing registered, when
    /// there is no fresh cache (or it is switched off).
    pub fn use_record_cache(&mut self, dirs: &PythonSetup) -> bool {
        if !cfg!(feature = "python") || !record_cache_enabled() || self.python_started || self.launcher.is_some() {
            return false;
        }
        *self.setup.lock().unwrap_or_else(|p| p.into_inner()) = dirs.clone();
        self.register_cached()
    }

    #[cfg(feature = "python")]
    fn register_cached(&mut self) -> bool {
        let t = std::time::Instant::now();
        let setup = self.setup.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cache = match record_cache(&self.config, &setup) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("no record cache: {e}");
                return false;
            }
        };
        let Some(cached) = cache.load() else { return false };
        report_failures(&cached.failures);
        let (config, setup, merge) = (self.config.clone(), self.setup.clone(), self.merge.clone());
        let launcher = comfyrs_bridge::Launcher::new(move || {
            let dirs = setup.lock().unwrap_or_else(|p| p.into_inner()).clone();
            boot_bridge(&config, &dirs, &merge).map_err(|e| format!("{e:#}"))
        });
        let n = comfyrs_bridge::register_cached(&cached, &launcher, &mut self.registry);
        tracing::info!(
            "{n} Python node types from the record cache {} in {:.0} ms; the embedded ComfyUI starts when a node needs it",
            cache.path().display(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        self.launcher = Some(launcher);
        self.cached_replacements = Some(cached.replacements);
        true
    }

    #[cfg(not(feature = "python"))]
    fn register_cached(&mut self) -> bool {
        false
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
        *self.setup.lock().unwrap_or_else(|p| p.into_inner()) = dirs.clone();
        start_bridge(&self.config, dirs, self.launcher.as_deref(), &mut self.registry, &self.merge)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// An executor whose output cache counts in this engine's memory budget.
    pub fn executor(&self, mode: comfyrs_runtime::cache::CacheMode) -> comfyrs_runtime::executor::Executor {
        comfyrs_runtime::executor::Executor::with_pool(mode, self.budget.pool("outputs"))
    }
}

/// A new memory budget with the configured host limit and device cache share.
pub fn memory_budget(config: &Config) -> Arc<MemoryBudget> {
    MemoryBudget::new(config.memory.host.unwrap_or_else(default_host_limit), config.memory.device_cache.unwrap_or(UNRESOLVED))
}

/// The merge engine's settings: the configured device and `[widen]` settings.
pub fn merge_settings(config: &Config) -> MergeSettings {
    let w = &config.widen;
    MergeSettings {
        device: config.device.resolve(),
        device_memory: config.memory.device,
        chunk_budget: w.chunk_budget,
        host_ram: w.host_ram,
        subtree_cache: w.cache,
        device_subtree_cache: w.device_cache,
        subtree_products: w.subtree_products,
        base_copies: w.base_copies,
        page_locked_bases: w.page_locked_bases,
        stats_cache: w.stats_cache,
        factor_cache: w.factor_cache,
        pinned: w.pinned,
        events: w.events,
        copy_stream: w.copy_stream,
        results_on_device: w.results_on_device,
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
    if comfyrs_core::test_nodes::wanted() {
        comfyrs_core::test_nodes::register(&mut reg);
    }
    Ok(reg)
}

/// The options the bridge starts with, from the configuration and the folders.
#[cfg(feature = "python")]
fn bridge_options(config: &Config, dirs: &PythonSetup) -> comfyrs_bridge::BridgeOptions {
    comfyrs_bridge::BridgeOptions {
        comfyui_path: config.comfyui.clone(),
        custom_nodes: config.custom_nodes.clone(),
        output_dir: dirs.output.clone(),
        input_dir: dirs.input.clone(),
        temp_dir: dirs.temp.clone(),
        previews: dirs.previews,
        models_dir: config.models_dir.is_dir().then(|| config.models_dir.clone()),
        device_memory: config.memory.device,
        ..comfyrs_bridge::BridgeOptions::default()
    }
}

/// The record cache of the ComfyUI these settings start.
#[cfg(feature = "python")]
fn record_cache(config: &Config, dirs: &PythonSetup) -> Result<comfyrs_bridge::RecordCache, comfyrs_bridge::BridgeError> {
    let dir = comfyrs_runtime::paths::cache_root().join("records");
    comfyrs_bridge::RecordCache::for_options(&bridge_options(config, dirs), env!("CARGO_PKG_VERSION"), &dir)
}

/// Custom node packs that failed to import are the user's to fix: said on stderr.
#[cfg(feature = "python")]
fn report_failures(failures: &[comfyrs_bridge::ImportFailure]) {
    for f in failures {
        let last = f.error.lines().last().unwrap_or("");
        if f.custom {
            eprintln!("warning: custom node pack {} failed to import and was skipped: {last}", f.path);
        } else {
            tracing::debug!("ComfyUI module {} was skipped: {last}", f.path);
        }
    }
}

/// Starts the embedded ComfyUI, hands it the native MODEL handoff and writes the record cache.
#[cfg(feature = "python")]
fn boot_bridge(config: &Config, dirs: &PythonSetup, merge: &Arc<MergeEngine>) -> Result<comfyrs_bridge::Bridge> {
    use comfyrs_bridge::Bridge;
    let t = std::time::Instant::now();
    tracing::info!("starting the embedded ComfyUI for non-native nodes");
    let bridge = Bridge::start(&bridge_options(config, dirs)).context("cannot start the embedded Python ComfyUI")?;
    // The MODEL handoff: WIDENEntry / WIDENExit on ComfyUI MODELs.
    merge.set_foreign_models(Arc::new(comfyrs_nodes::pack::ForeignFns {
        state_dict: comfyrs_bridge::model::state_dict,
        prepare: comfyrs_bridge::model::prepare,
        with_weights: comfyrs_bridge::model::with_weights,
        make_room: comfyrs_bridge::model::make_room,
        unload_idle: comfyrs_bridge::model::unload_idle,
        device_free: comfyrs_bridge::model::device_free,
    }));
    bridge.add_model_extractor(comfyrs_nodes::pack::native_model_weights);
    // ComfyUI makes room on the device from comfyrs's memory before it offloads a model
    // (docs/architecture.md, "Memory"): first the merged models of earlier slider positions
    // that only the outputs cache keeps (the budget asks it), then the WIDEN caches. Weak: the
    // interpreter outlives an engine.
    let weak = Arc::downgrade(merge);
    bridge
        .on_device_pressure(move |bytes| {
            let Some(m) = weak.upgrade() else { return 0 };
            let outputs = m.budget().give_device(bytes);
            let caches = m.yield_device(bytes.saturating_sub(outputs));
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            tracing::debug!(
                "device memory: ComfyUI needed {:.2} GiB more for a model load, a decode or a merge; earlier results gave back {:.2} GiB and the WIDEN caches {:.2} GiB",
                gib(bytes),
                gib(outputs),
                gib(caches)
            );
            outputs + caches
        })
        .context("cannot install the device memory handler in the embedded ComfyUI")?;
    // The WIDEN Report's picture, for Python's image nodes (SaveImage, PreviewImage).
    bridge.add_tensor_extractor(comfyrs_nodes::pack::native_image_tensor);
    tracing::info!("embedded ComfyUI ready: {} Python node types in {:.1} s", bridge.classes().len(), t.elapsed().as_secs_f64());
    if record_cache_enabled() {
        match record_cache(config, dirs).map(|c| (c.store(&bridge), c)) {
            Ok((Ok(()), c)) => tracing::debug!("wrote the record cache {}", c.path().display()),
            Ok((Err(e), c)) => tracing::warn!("cannot write the record cache {}: {e}", c.path().display()),
            Err(e) => tracing::debug!("no record cache: {e}"),
        }
    }
    Ok(bridge)
}

/// Starts the embedded ComfyUI (through `launcher` when the classes came from the record cache)
/// and registers its classes (native ones and cached ones keep their places).
#[cfg(feature = "python")]
fn start_bridge(config: &Config, dirs: &PythonSetup, launcher: Option<&Launcher>, reg: &mut Registry, merge: &Arc<MergeEngine>) -> Result<()> {
    let bridge = match launcher {
        Some(l) => l.get().map_err(|e| anyhow::anyhow!("{e}"))?.clone(),
        None => {
            let b = boot_bridge(config, dirs, merge)?;
            report_failures(b.import_failures());
            b
        }
    };
    bridge.register(reg);
    Ok(())
}

#[cfg(not(feature = "python"))]
fn start_bridge(_config: &Config, _dirs: &PythonSetup, _launcher: Option<&Launcher>, _reg: &mut Registry, _merge: &Arc<MergeEngine>) -> Result<()> {
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

impl Drop for Engine {
    fn drop(&mut self) {
        // Not left running into the process's exit, where libtorch's teardown would race it
        // (it ends within about a second of its start).
        if let Some(h) = self.warming.take() {
            let _ = h.join();
        }
    }
}
