//! The layers of the configuration, lowest first: a comfyrs.toml, the environment (variables of
//! earlier versions below the current ones), the flags. Each layer is one figment provider named
//! after where its values came from, so figment's metadata says the source of every value.
//! Settings no layer gives keep the defaults of the typed structs.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Error, Figment, Metadata, Profile, Provider};

use super::args::ConfigArgs;
use super::error::ConfigError;
use super::keys::{CONFIG_ENV, KEYS, LEGACY_MIB};

/// One layer's values, named after their source (`env COMFYRS_DEVICE`, `flag --device`).
struct Layer {
    name: String,
    dict: Dict,
}

impl Layer {
    fn one(name: String, key: &str, value: Value) -> Layer {
        let dict = figment::util::nest(key, value).into_dict().expect("a non-empty key nests into a dict");
        Layer { name, dict }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The comfyrs.toml layer under the name `comfyrs config` shows.
struct File {
    name: String,
    toml: figment::providers::Data<Toml>,
}

impl Provider for File {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        self.toml.data()
    }
}

/// The one place comfyrs reads its settings from the environment. An empty variable counts as
/// unset, as it did when clap read them.
pub fn env_var(var: &str) -> Option<String> {
    Env::raw().only(&[var]).iter().map(|(_, v)| v).find(|v| !v.trim().is_empty())
}

/// The comfyrs.toml to read: `--config`, else `COMFYRS_CONFIG`, else `./comfyrs.toml` if there.
/// A file named explicitly must exist.
pub fn config_file(args: &ConfigArgs) -> Result<Option<PathBuf>, ConfigError> {
    let (path, by) = match (&args.config, env_var(CONFIG_ENV)) {
        (Some(p), _) => (p.clone(), "flag --config".to_string()),
        (None, Some(p)) => (PathBuf::from(p), format!("env {CONFIG_ENV}")),
        (None, None) => {
            let local = Path::new("comfyrs.toml");
            return Ok(local.is_file().then(|| absolute(local)));
        }
    };
    if !path.is_file() {
        let why = if path.exists() { "is not a file" } else { "does not exist" };
        return Err(ConfigError::File { path, why, by });
    }
    Ok(Some(absolute(&path)))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Every layer merged in order; extraction applies the defaults.
pub fn figment(file: Option<&Path>, args: &ConfigArgs) -> Result<Figment, ConfigError> {
    let mut fig = Figment::new();
    if let Some(path) = file {
        fig = fig.merge(File { name: format!("comfyrs.toml ({})", path.display()), toml: Toml::file_exact(path) });
    }
    for old in LEGACY_MIB {
        if let Some(text) = env_var(old.var) {
            let mib: u64 = text.trim().parse().map_err(|_| ConfigError::LegacyMib { var: old.var, value: text.clone(), new_var: old.new_var })?;
            let bytes = mib.checked_mul(1 << 20).ok_or_else(|| ConfigError::LegacyMib { var: old.var, value: text.clone(), new_var: old.new_var })?;
            fig = fig.merge(Layer::one(format!("env {}", old.var), old.key, Value::from(bytes)));
        }
    }
    for k in KEYS {
        if let Some(var) = k.env {
            if let Some(text) = env_var(var) {
                fig = fig.merge(Layer::one(format!("env {var}"), k.key, Value::from(text)));
            }
        }
    }
    for (flag, key, value) in args.given() {
        fig = fig.merge(Layer::one(format!("flag {flag}"), key, value));
    }
    Ok(fig)
}
