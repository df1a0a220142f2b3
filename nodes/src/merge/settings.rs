//! What a merge engine is configured with: the compute device and the WIDEN settings of the one
//! configuration (`comfyrs config` shows them; `docs/architecture.md`, "Configuration").

use tch::Device;

/// The merge engine's settings. Sizes in bytes; `None` means "work it out from the machine".
#[derive(Clone, Debug, PartialEq)]
pub struct MergeSettings {
    /// Where merges compute.
    pub device: Device,
    /// The device memory the whole process may use, a simulated smaller card (`None`: the
    /// device's own). The caches' share and the chunks' working memory come out of it
    /// (`docs/architecture.md`, "Memory").
    pub device_memory: Option<u64>,
    /// Working memory for one chunk of keys (`None`: 80% of the device memory free under the
    /// limit less the caches' device share on a GPU, a quarter of the available RAM on the CPU,
    /// at most 80% of `device_memory` there).
    pub chunk_budget: Option<u64>,
    /// The most host RAM a merge may count on for its results (`None`: what the machine reports
    /// as available); for machines shared with other work.
    pub host_ram: Option<u64>,
    /// A cap of each subtree cache (full results, and the products they are rebuilt from) in host
    /// memory, inside the engine's budget (`None`: the budget).
    pub subtree_cache: Option<u64>,
    /// A cap of each subtree cache in device memory, inside the engine's budget.
    pub device_subtree_cache: Option<u64>,
    /// Whether subtree results of low-rank merges are also kept as the products that formed
    /// them, to be rebuilt from when the full results were evicted (docs/architecture.md, "The
    /// WIDEN caches"). `None`: on a GPU, where a full result takes scarce device memory and a
    /// rebuild is one product against recomputing statistics, ranks and that product; on the
    /// CPU, whose merge is that same product where the statistics were cached, a rebuild saved
    /// nothing and keeping them slowed cold merges (BENCHMARKS.md).
    pub subtree_products: Option<bool>,
    /// Whether the base weights merges read stay in the caches as they were uploaded, in their
    /// own dtype (docs/architecture.md, "The WIDEN caches"). `None`: on a GPU for a base read
    /// from a file, where each merge over it would otherwise bring it over the host link again;
    /// not for a foreign runtime's model (ComfyUI's), whose models need that device memory
    /// (under 12 GiB beside ComfyUI's SDXL the copies made ComfyUI unload its VAE before every
    /// slider change, measured slower); on the CPU the base is in host memory already.
    pub base_copies: Option<bool>,
    /// Bytes of page-locked host memory for copies of the base weights merges read, kept where
    /// the copies are not kept on the device (a ComfyUI MODEL's, by default), so that a rebuild
    /// or another merge over that base uploads them straight from there: from the base's own
    /// pageable memory each upload first copied them into staging buffers, most of its time
    /// (docs/architecture.md, "The WIDEN caches"). `None`: a quarter of the budget's host limit,
    /// on a GPU; 0: none.
    pub page_locked_bases: Option<u64>,
    /// A cap of the statistics cache, in each kind of memory.
    pub stats_cache: u64,
    /// A cap of the LoRA factors kept in device memory.
    pub factor_cache: u64,
    /// Transfers through page-locked memory (off only for comparisons: 6-10× slower on an H100).
    pub pinned: bool,
    /// CUDA events and the CUDA runtime shim (off: tch's device-wide waits only).
    pub events: bool,
    /// Copies on streams of their own: results to the host, page-locked base copies to the device
    /// (off: on the default stream, behind the kernels queued before them).
    pub copy_stream: bool,
    /// A merge whose base is a foreign MODEL (ComfyUI's) keeps its results on the compute
    /// device for that runtime, which takes them there without a copy (off: through host memory;
    /// docs/widen.md, "The loop on a GPU").
    pub results_on_device: bool,
}

impl Default for MergeSettings {
    fn default() -> Self {
        MergeSettings {
            device: Device::cuda_if_available(),
            device_memory: None,
            chunk_budget: None,
            host_ram: None,
            subtree_cache: None,
            device_subtree_cache: None,
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

impl MergeSettings {
    /// The defaults on `device`.
    pub fn on(device: Device) -> MergeSettings {
        MergeSettings { device, ..MergeSettings::default() }
    }
}
