//! `[memory]`: the one host limit and the one device limit that every cache lives within.

use serde::Deserialize;

use super::values;

/// Bytes; None is `auto` (the engine sizes it from the machine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Host memory for every cache together: runtime outputs and the WIDEN caches.
    #[serde(deserialize_with = "values::limit")]
    pub host: Option<u64>,
    /// Device memory for every device-resident cache together.
    #[serde(deserialize_with = "values::limit")]
    pub device: Option<u64>,
}
