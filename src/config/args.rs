//! The configuration's command-line flags, shared by every command that uses the engine.

use std::path::PathBuf;

use clap::Args;

/// Flags win over the environment, which wins over a comfyrs.toml. Values stay text here and are
/// read with the same rules as the other layers, so an error names the flag.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Configuration (also comfyrs.toml and environment; `comfyrs config` shows the result)")]
pub struct ConfigArgs {
    /// A comfyrs.toml to read [env: COMFYRS_CONFIG; default: ./comfyrs.toml when present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Models root with loras/, checkpoints/, diffusion_models/ (ComfyUI's models folder works)
    /// [env: COMFYRS_MODELS_DIR; default: models].
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// An extra_model_paths.yaml adding more model folders (ComfyUI's format)
    /// [env: COMFYRS_EXTRA_MODEL_PATHS].
    #[arg(long, value_name = "FILE")]
    pub extra_model_paths: Option<PathBuf>,
    /// The ComfyUI checkout to use for Python nodes (default: the one scripts/setup.sh installs)
    /// [env: COMFYUI_PATH].
    #[arg(long, value_name = "DIR")]
    pub comfyui: Option<PathBuf>,
    /// A custom node folder to load (repeatable), after the ComfyUI tree's own custom_nodes/.
    #[arg(long = "custom-nodes", value_name = "DIR")]
    pub custom_nodes: Vec<PathBuf>,
    /// When to start the embedded Python ComfyUI for non-native nodes: auto (only when a
    /// workflow needs a node comfyrs does not run natively), always, never [env: COMFYRS_PYTHON].
    #[arg(long, value_name = "WHEN")]
    pub python: Option<String>,
    /// Where tensors are computed: auto (cuda:0 when CUDA is available, else cpu), cpu, cuda:N
    /// [env: COMFYRS_DEVICE].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Host memory for every cache together (node results and WIDEN caches), e.g. 16GiB, or auto
    /// [env: COMFYRS_HOST_MEMORY].
    #[arg(long, value_name = "SIZE", conflicts_with = "cache_bytes")]
    pub host_memory: Option<String>,
    /// The same as --host-memory (its name in earlier versions).
    #[arg(long, value_name = "SIZE")]
    pub cache_bytes: Option<String>,
    /// Device memory the whole process may use, e.g. 24GiB to run as on a 24 GiB card: libtorch's
    /// allocator refuses more, and caches and merge chunks fit inside it; auto is the device's
    /// own memory [env: COMFYRS_DEVICE_MEMORY].
    #[arg(long, value_name = "SIZE")]
    pub device_memory: Option<String>,
    /// Device memory for every device-resident cache together, inside --device-memory, e.g.
    /// 8GiB, or auto (40% of what is free under it) [env: COMFYRS_DEVICE_CACHE_MEMORY].
    #[arg(long, value_name = "SIZE")]
    pub device_cache_memory: Option<String>,
    /// How node results are kept between workflows of one call: none, lru, ram-pressure
    /// (lru that also gives memory back when the machine runs low) [env: COMFYRS_CACHE_MODE;
    /// default: lru].
    #[arg(long, value_name = "MODE")]
    pub cache: Option<String>,
    /// A command's own flags that are settings too (`comfyrs serve --port`), as
    /// (flag, setting key, value); they join the flag layer.
    #[arg(skip)]
    pub command_flags: Vec<(&'static str, &'static str, figment::value::Value)>,
}

impl ConfigArgs {
    /// The flags given, as (flag, setting key, value); a repeatable flag gives a list.
    pub fn given(&self) -> Vec<(&'static str, &'static str, figment::value::Value)> {
        use figment::value::Value;
        let path = |p: &PathBuf| Value::from(p.to_string_lossy().into_owned());
        let mut out = Vec::new();
        let mut text = |flag, key, v: &Option<String>| {
            if let Some(v) = v {
                out.push((flag, key, Value::from(v.clone())));
            }
        };
        text("--python", "python", &self.python);
        text("--device", "device", &self.device);
        text("--host-memory", "memory.host", &self.host_memory);
        text("--cache-bytes", "memory.host", &self.cache_bytes);
        text("--device-memory", "memory.device", &self.device_memory);
        text("--device-cache-memory", "memory.device_cache", &self.device_cache_memory);
        text("--cache", "cache.mode", &self.cache);
        for (flag, key, v) in [
            ("--models-dir", "models_dir", &self.models_dir),
            ("--extra-model-paths", "extra_model_paths", &self.extra_model_paths),
            ("--comfyui", "comfyui", &self.comfyui),
        ] {
            if let Some(p) = v {
                out.push((flag, key, path(p)));
            }
        }
        if !self.custom_nodes.is_empty() {
            out.push(("--custom-nodes", "custom_nodes", Value::from(self.custom_nodes.iter().map(path).collect::<Vec<_>>())));
        }
        out.extend(self.command_flags.iter().cloned());
        out
    }
}
