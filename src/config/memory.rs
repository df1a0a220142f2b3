//! `[memory]`: the one host limit that every cache lives within, the device memory the whole
//! process may use, and the caches' share of it (`docs/architecture.md`, "Memory";
//! `docs/decisions.md` D35).

use serde::Deserialize;

use super::values;

/// Bytes; None is `auto` (the engine sizes it from the machine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Host memory for every cache together: runtime outputs and the WIDEN caches.
    #[serde(deserialize_with = "values::limit")]
    pub host: Option<u64>,
    /// Device memory the whole process may use, a simulated smaller card: libtorch's allocator
    /// refuses more (for a ComfyUI model in the same process too), and the caches and merge
    /// chunks are planned inside it. `auto`: the device's own memory.
    #[serde(deserialize_with = "values::limit")]
    pub device: Option<u64>,
    /// Device memory for every device-resident cache together, inside `device` (what `device`
    /// meant before D35). `auto`: 40% of what is free under `device` at the first merge.
    #[serde(deserialize_with = "values::limit")]
    pub device_cache: Option<u64>,
}
