//! `[server]`: how `comfyrs serve` listens and where it keeps its state.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::values;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Loopback unless told otherwise (the API runs workflows and reads files).
    #[serde(deserialize_with = "address")]
    pub listen: IpAddr,
    pub port: u16,
    /// Queue and history database, and the default home of output/, input/, temp/, user/.
    pub state_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub input_dir: Option<PathBuf>,
    pub temp_dir: Option<PathBuf>,
    /// The web frontend's files; default: the comfyui-frontend-package scripts/setup.sh installs.
    pub front_end_root: Option<PathBuf>,
    /// Required of every request when set.
    pub auth_token: Option<String>,
    #[serde(deserialize_with = "values::size")]
    pub max_upload: u64,
    pub max_history: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: IpAddr::from([127, 0, 0, 1]),
            port: 8188,
            state_dir: None,
            output_dir: None,
            input_dir: None,
            temp_dir: None,
            front_end_root: None,
            auth_token: None,
            max_upload: 100 * 1024 * 1024,
            max_history: 10_000,
        }
    }
}

fn address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "'{text}' is not an IP address; use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one interface's address"
        ))
    })
}

/// `$XDG_DATA_HOME/comfyrs`, else `~/.local/share/comfyrs`, else `./comfyrs-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = super::layers::env_var("XDG_DATA_HOME") {
        return PathBuf::from(d).join("comfyrs");
    }
    match super::layers::env_var("HOME") {
        Some(h) => PathBuf::from(h).join(".local").join("share").join("comfyrs"),
        None => PathBuf::from("comfyrs-state"),
    }
}
