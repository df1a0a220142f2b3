//! `[cache]`: how node results are kept between workflows.

use comfyrs_runtime::cache::CacheMode;
use serde::Deserialize;

use super::values;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(deserialize_with = "values::word")]
    pub mode: CacheMode,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings { mode: CacheMode::Lru }
    }
}

/// The word `mode` is written with.
pub fn mode_name(mode: CacheMode) -> &'static str {
    match mode {
        CacheMode::None => "none",
        CacheMode::Lru => "lru",
        CacheMode::RamPressure => "ram-pressure",
    }
}
