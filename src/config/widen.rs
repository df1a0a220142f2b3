//! `[widen]`: the WIDEN merge engine's working memory, cache caps and transfer switches.

use serde::Deserialize;

use super::values;

/// Sizes in bytes; None is `auto` (the engine sizes it from the machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WidenSettings {
    /// Working memory per merge chunk.
    #[serde(deserialize_with = "values::limit")]
    pub chunk_budget: Option<u64>,
    /// The most host RAM a merge may count on (for machines shared with other work).
    #[serde(deserialize_with = "values::limit")]
    pub host_ram: Option<u64>,
    /// Cap of each subtree cache (full results, and the products they are rebuilt from) in host
    /// memory, inside `memory.host`.
    #[serde(deserialize_with = "values::limit")]
    pub cache: Option<u64>,
    /// Cap of each subtree cache in device memory, inside `memory.device_cache`.
    #[serde(deserialize_with = "values::limit")]
    pub device_cache: Option<u64>,
    /// Subtree results of low-rank merges also kept as the products that formed them, rebuilt
    /// from when the full results were evicted (auto: on a GPU).
    #[serde(deserialize_with = "values::auto_switch")]
    pub subtree_products: Option<bool>,
    /// The base weights merges read kept in the caches as uploaded, in their own dtype (auto: on
    /// a GPU, for a base read from a file).
    #[serde(deserialize_with = "values::auto_switch")]
    pub base_copies: Option<bool>,
    /// Page-locked host memory for copies of the base weights merges read, where they are not
    /// kept on the device (auto: on a GPU, a quarter of `memory.host`; 0: none).
    #[serde(deserialize_with = "values::limit")]
    pub page_locked_bases: Option<u64>,
    /// Cap of the column statistics cache.
    #[serde(deserialize_with = "values::size")]
    pub stats_cache: u64,
    /// Cap of the device-resident LoRA factor cache.
    #[serde(deserialize_with = "values::size")]
    pub factor_cache: u64,
    /// Page-locked host buffers for transfers (off only for comparisons).
    #[serde(deserialize_with = "values::switch")]
    pub pinned: bool,
    /// CUDA events to overlap transfers with compute (off only for comparisons).
    #[serde(deserialize_with = "values::switch")]
    pub events: bool,
    /// Separate streams for copies: results to the host, page-locked base copies to the device
    /// (off only for comparisons).
    #[serde(deserialize_with = "values::switch")]
    pub copy_stream: bool,
    /// A merge over a ComfyUI MODEL hands its results to ComfyUI on the compute device
    /// (off: through host memory, as before; for comparisons).
    #[serde(deserialize_with = "values::switch")]
    pub results_on_device: bool,
}

impl Default for WidenSettings {
    fn default() -> Self {
        WidenSettings {
            chunk_budget: None,
            host_ram: None,
            cache: None,
            device_cache: None,
            subtree_products: None,
            base_copies: None,
            page_locked_bases: None,
            stats_cache: 1 << 30,
            factor_cache: 2 << 30,
            pinned: true,
            events: true,
            copy_stream: true,
            results_on_device: true,
        }
    }
}
