//! Why the configuration was refused. Each message names the setting, where its value came from
//! and what it accepts.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the configuration file {} {why} (named by {by})", path.display())]
    File { path: PathBuf, why: &'static str, by: String },

    #[error("{var}={value}: {var} accepts a whole number of MiB (e.g. 4096); for a size with a unit use {new_var} instead (e.g. {new_var}=4GiB)")]
    LegacyMib { var: &'static str, value: String, new_var: &'static str },

    #[error("setting `{key}` from {from}: {message}")]
    Invalid { key: String, from: String, message: String },

    #[error("{0}")]
    Unreadable(String),
}
