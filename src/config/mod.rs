//! The one configuration, read once at start: defaults < a comfyrs.toml < environment < flags,
//! merged by figment into typed settings and validated before any command runs. Nothing else in
//! the binary reads settings from the environment.

mod args;
mod broker;
mod cache;
mod device;
mod error;
mod keys;
mod layers;
mod memory;
mod python;
mod report;
mod server;
mod values;
mod widen;

use std::path::PathBuf;

use serde::Deserialize;

pub use args::ConfigArgs;
pub use broker::BrokerConfig;
pub use cache::CacheSettings;
pub use device::DeviceChoice;
pub use error::ConfigError;
pub use memory::MemorySettings;
pub use python::PythonMode;
pub use server::{default_state_dir, ServerSettings};
pub use widen::WidenSettings;

/// Every setting, typed and validated, with where each value came from.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Models root with ComfyUI's layout (`loras/`, `checkpoints/`, ...).
    pub models_dir: PathBuf,
    /// An extra_model_paths.yaml adding model folders.
    pub extra_model_paths: Option<PathBuf>,
    /// The ComfyUI checkout for Python nodes (None: the one scripts/setup.sh installs).
    pub comfyui: Option<PathBuf>,
    /// Custom node folders loaded after the ComfyUI tree's own.
    pub custom_nodes: Vec<PathBuf>,
    #[serde(deserialize_with = "values::word")]
    pub python: PythonMode,
    #[serde(deserialize_with = "values::word")]
    pub device: DeviceChoice,
    pub memory: MemorySettings,
    pub cache: CacheSettings,
    pub widen: WidenSettings,
    pub server: ServerSettings,
    pub broker: BrokerConfig,
    /// Setting key → the layer its value came from; absent keys are defaults.
    #[serde(skip)]
    sources: Vec<(&'static str, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            models_dir: PathBuf::from("models"),
            extra_model_paths: None,
            comfyui: None,
            custom_nodes: Vec::new(),
            python: PythonMode::default(),
            device: DeviceChoice::default(),
            memory: MemorySettings::default(),
            cache: CacheSettings::default(),
            widen: WidenSettings::default(),
            server: ServerSettings::default(),
            broker: BrokerConfig::default(),
            sources: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates the configuration: the comfyrs.toml the flags, the environment or the
    /// working directory name, the environment, then the flags.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let file = layers::config_file(args)?;
        let fig = layers::figment(file.as_deref(), args)?;
        let mut config: Config = fig.extract().map_err(refused)?;
        config.sources = keys::KEYS
            .iter()
            .filter_map(|k| fig.find_metadata(k.key).map(|m| (k.key, m.name.to_string())))
            .collect();
        config.device.check_present().map_err(|message| ConfigError::Invalid {
            key: "device".into(),
            from: config.source("device").to_string(),
            message,
        })?;
        for (key, value) in [("memory.device", config.memory.device), ("memory.device_cache", config.memory.device_cache)] {
            if value == Some(0) {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    from: config.source(key).to_string(),
                    message: "0 bytes of device memory leaves nothing to compute with; write a size such as 24GiB, or auto".into(),
                });
            }
        }
        Ok(config)
    }

    /// Where a setting's value came from: `default`, `comfyrs.toml (PATH)`, `env VAR`, `flag --x`.
    pub fn source(&self, key: &str) -> &str {
        self.sources.iter().find(|(k, _)| *k == key).map_or("default", |(_, s)| s.as_str())
    }
}

/// The first of figment's errors as the user's setting, source and what it accepts.
fn refused(errors: figment::Error) -> ConfigError {
    let e = errors.into_iter().next().expect("a figment error holds at least one error");
    let from = e.metadata.as_ref().map_or_else(|| "default".to_string(), |m| m.name.to_string());
    let mut key = e.path.join(".");
    let message = match &e.kind {
        figment::error::Kind::UnknownField(field, known) => {
            // figment's path ends at the unknown field when it knows the field's parent.
            if e.path.last() != Some(field) {
                key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
            }
            format!("comfyrs has no such setting; known here: {}", known.join(", "))
        }
        kind => kind.to_string(),
    };
    if key.is_empty() {
        // Not one value but the whole layer: a comfyrs.toml that is not TOML.
        return ConfigError::Unreadable(format!("{from}: {message}"));
    }
    ConfigError::Invalid { key, from, message }
}
