//! The node registry this binary runs with: native nodes first (they win), then, when a
//! workflow needs them, ComfyUI's own nodes through the embedded Python.

use std::path::Path;

use anyhow::{Context, Result};
use comfyrs_nodes::models::ModelFolders;
use comfyrs_runtime::Registry;

use crate::EngineArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PythonMode {
    Auto,
    Always,
    Never,
}

pub struct Engine {
    pub registry: Registry,
    args: EngineArgs,
    python_started: bool,
}

impl Engine {
    pub fn new(args: &EngineArgs) -> Result<Engine> {
        let mut engine = Engine { registry: native_registry(args)?, args: args.clone(), python_started: false };
        if args.python == PythonMode::Always {
            engine.start_python(None)?;
        }
        Ok(engine)
    }

    /// Whether a missing node type could still come from Python.
    pub fn can_start_python(&self) -> bool {
        cfg!(feature = "python") && !self.python_started && self.args.python != PythonMode::Never
    }

    /// Starts the embedded ComfyUI once and registers its nodes (native ones keep winning).
    pub fn start_python(&mut self, output_dir: Option<&Path>) -> Result<()> {
        if self.python_started {
            return Ok(());
        }
        self.python_started = true;
        start_bridge(&self.args, output_dir, &mut self.registry)
    }
}

/// Native nodes only: ComfyUI's model-free utility nodes and the WIDEN pack.
pub fn native_registry(args: &EngineArgs) -> Result<Registry> {
    let mut reg = Registry::new();
    comfyrs_core::register(&mut reg);
    let mut folders = ModelFolders::new(&args.models_dir);
    if let Some(yaml) = &args.extra_model_paths {
        folders
            .load_extra_model_paths(yaml)
            .with_context(|| format!("cannot read the extra model paths file {}", yaml.display()))?;
    }
    comfyrs_nodes::pack::register(&mut reg, folders);
    Ok(reg)
}

#[cfg(feature = "python")]
fn start_bridge(args: &EngineArgs, output_dir: Option<&Path>, reg: &mut Registry) -> Result<()> {
    use comfyrs_bridge::{Bridge, BridgeOptions};
    let t = std::time::Instant::now();
    tracing::info!("starting the embedded ComfyUI for non-native nodes");
    let opts = BridgeOptions {
        comfyui_path: args.comfyui.clone(),
        custom_nodes: args.custom_nodes.clone(),
        output_dir: output_dir.map(Path::to_path_buf),
        models_dir: args.models_dir.is_dir().then(|| args.models_dir.clone()),
        ..BridgeOptions::default()
    };
    let bridge = Bridge::start(&opts).context("cannot start the embedded Python ComfyUI")?;
    // The MODEL handoff: WIDENEntry / WIDENExit on ComfyUI MODELs.
    comfyrs_nodes::pack::set_foreign_models(std::sync::Arc::new(comfyrs_nodes::pack::ForeignFns {
        state_dict: comfyrs_bridge::model::state_dict,
        prepare: comfyrs_bridge::model::prepare,
        with_weights: comfyrs_bridge::model::with_weights,
    }));
    comfyrs_bridge::register_model_extractor(comfyrs_nodes::pack::native_model_weights);
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
fn start_bridge(_args: &EngineArgs, _output_dir: Option<&Path>, _reg: &mut Registry) -> Result<()> {
    anyhow::bail!("this comfyrs was built without Python (cargo feature `python`), so only native nodes can run")
}
