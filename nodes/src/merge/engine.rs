//! The merge engine: everything a WIDEN Exit remembers between runs, owned by one object per
//! executor and device (`docs/architecture.md`, "Where state lives").
//!
//! It holds the subtree, statistics and factor caches (counted in the engine's memory budget),
//! the memos of parsed LoRA files, LoRA sets, touched keys and groupings, the page-locked staging
//! buffers, the CUDA runtime shim, and the foreign-model provider. Two engines in one process
//! share nothing; two Exits running at once on one engine share its caches (they are keyed by
//! content, so sharing is what makes a second Exit cheap) and take turns on its staging buffers.

use std::sync::{Arc, Mutex, OnceLock, RwLock};

use comfyrs_runtime::memory::{MemoryBudget, Place, UNRESOLVED};
use tch::Device;

use crate::arch::Arch;
use crate::cuda::{device_memory, release_cached, CudaRuntime, DeviceMemory, PinnedAllocator, UploadStream};
use crate::lora::LoraFile;
use crate::recipe::foreign::ForeignModels;

use super::cache::{CacheStats, GivesDevice, StatsCache, SubtreeCache, SubtreeFactorCache};
use super::chunk_memory::{ChunkBudget, ChunkMemory};
use super::device_plan::{cpu_chunk_memory, human, DevicePlan, CHUNK_FLOOR};
use super::exit::LoadedSet;
use super::memo::Memo;
use super::settings::MergeSettings;
use super::transfer::Staging;

/// Why an engine cannot be made with these settings.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("device cuda:{index} does not exist: this machine has {count} CUDA device(s){}", if *.count == 0 { String::new() } else { format!(" (cuda:0 to cuda:{})", .count - 1) })]
    NoSuchDevice { index: usize, count: usize },
    #[error("device {0:?} is not supported for merging: use cpu or cuda:N")]
    Unsupported(Device),
}

/// Groupings of keys for batched evaluation: (shape, keys) per group.
pub(crate) type Groups = Vec<(Vec<i64>, Vec<String>)>;

/// Values derived from content that a slider change asks for again.
pub(crate) struct Memos {
    pub(crate) lora_files: Memo<(String, Arch, [u8; 32]), Arc<LoraFile>>,
    pub(crate) sets: Memo<[u8; 32], Arc<LoadedSet>>,
    pub(crate) touched_keys: Memo<[u8; 32], Arc<Vec<String>>>,
    pub(crate) groups: Memo<[u8; 32], Arc<Groups>>,
}

pub struct MergeEngine {
    settings: MergeSettings,
    budget: Arc<MemoryBudget>,
    /// The CUDA runtime libtorch loaded (None on the CPU, or with `events` off).
    cuda: Option<Arc<CudaRuntime>>,
    pinned: Option<PinnedAllocator>,
    /// The device's memory when the engine first needed it (see [`MergeEngine::device_memory`]).
    device_memory: OnceLock<Option<DeviceMemory>>,
    pub(crate) subtrees: SubtreeCache,
    /// Subtree results of low-rank merges as the products that formed them: what answers when
    /// the full result was evicted.
    pub(crate) subtree_factors: SubtreeFactorCache,
    /// The base weights merges read, as uploaded (rows in their own dtype), keyed by the base's
    /// content and the key ([`MergeEngine::keeps_base_copies`]).
    pub(crate) bases: SubtreeCache,
    pub(crate) stats: StatsCache,
    pub(crate) factors: SubtreeCache,
    pub(crate) memos: Memos,
    /// Page-locked upload buffers, allocated on first use and kept (allocating page-locked
    /// memory costs ~0.5 s per GiB). One upload at a time holds them.
    pub(crate) staging: Mutex<Option<Staging>>,
    pub(crate) staging_pool: comfyrs_runtime::memory::Pool,
    /// The stream page-locked base copies go up on, made on first use (`copy_stream` on).
    uploads: Mutex<Option<UploadStream>>,
    /// Whether making it failed: not tried again at every upload (a failed device allocation
    /// has libtorch's allocator give back its cached blocks first).
    no_upload_stream: std::sync::atomic::AtomicBool,
    foreign: RwLock<Option<Arc<dyn ForeignModels>>>,
    /// The chunk size earlier merges found to fit, where it is less than the plan's.
    chunks: ChunkMemory,
    /// Bytes of page-locked host memory for copies of base weights ([`MergeSettings::page_locked_bases`]
    /// as it applies; 0: none).
    page_locked_bases: u64,
    /// The page-locked copy keys of the base keys merges read without a copy
    /// ([`MergeEngine::read_before`]).
    base_reads: Mutex<lru::LruCache<[u8; 32], ()>>,
}

/// How many base keys [`MergeEngine::read_before`] remembers (a few models' worth).
const BASE_READS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(1 << 16).expect("not zero");

/// What the engine's caches hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub subtrees: CacheStats,
    pub subtree_factors: CacheStats,
    pub bases: CacheStats,
    pub stats: CacheStats,
    pub factors: CacheStats,
}

impl MergeEngine {
    /// An engine on `settings.device`, counting its caches in `budget` (shared with the
    /// executor's output cache). A device limit left [`UNRESOLVED`] is set from the device's
    /// memory the first time a merge needs it.
    pub fn new(settings: MergeSettings, budget: Arc<MemoryBudget>) -> Result<Arc<MergeEngine>, EngineError> {
        let index = match settings.device {
            Device::Cpu => None,
            Device::Cuda(i) => {
                let count = tch::Cuda::device_count().max(0) as usize;
                if i >= count {
                    return Err(EngineError::NoSuchDevice { index: i, count });
                }
                Some(i)
            }
            other => return Err(EngineError::Unsupported(other)),
        };
        let cuda = match (index, settings.events) {
            (Some(_), true) => CudaRuntime::find().map(Arc::new),
            _ => None,
        };
        let pinned = index.map(|i| PinnedAllocator::new(i, cuda.clone()));
        let (subtree_cap, device_subtree_cap) =
            (settings.subtree_cache.unwrap_or(u64::MAX), settings.device_subtree_cache.unwrap_or(u64::MAX));
        let subtrees = SubtreeCache::new(budget.pool("widen.subtrees"), subtree_cap, device_subtree_cap);
        // A quarter of the budget is theirs against the full results' growth: at a tenth of their
        // size they are what a slider change under a small limit still finds (docs/architecture.md,
        // "The WIDEN caches").
        let subtree_factors =
            SubtreeFactorCache::new(budget.pool("widen.subtree_factors"), subtree_cap, device_subtree_cap).reserving(0.25);
        // Half the budget is theirs against the full results' growth: a key's base in its own
        // dtype (fp16: half the bytes of a full fp32 result) is what a rebuild from products and
        // every merge over that base read, and a result costs the link only what its base does
        // (docs/architecture.md, "The WIDEN caches").
        // On a GPU the copies in host memory are the page-locked ones, within their own cap.
        // (On the CPU only where asked for, for tests: the base is in host memory already.)
        let host_limit = match budget.limit(Place::Host) {
            UNRESOLVED => default_host_limit(),
            host => host,
        };
        let page_locked_bases = page_locked_bases(settings.page_locked_bases, index.is_some(), host_limit);
        let host_base_cap = if index.is_some() { subtree_cap.min(page_locked_bases) } else { subtree_cap };
        let bases = SubtreeCache::new(budget.pool("widen.bases"), host_base_cap, device_subtree_cap).reserving(0.5);
        let stats = StatsCache::new(budget.pool("widen.statistics"), settings.stats_cache, settings.stats_cache);
        let factors = SubtreeCache::new(budget.pool("widen.factors"), 0, settings.factor_cache);
        let staging_pool = budget.pool("widen.staging");
        Ok(Arc::new(MergeEngine {
            settings,
            budget,
            cuda,
            pinned,
            device_memory: OnceLock::new(),
            subtrees,
            subtree_factors,
            bases,
            stats,
            factors,
            memos: Memos { lora_files: Memo::new(256), sets: Memo::new(64), touched_keys: Memo::new(64), groups: Memo::new(64) },
            staging: Mutex::new(None),
            staging_pool,
            uploads: Mutex::new(None),
            no_upload_stream: std::sync::atomic::AtomicBool::new(false),
            foreign: RwLock::new(None),
            chunks: ChunkMemory::default(),
            page_locked_bases,
            base_reads: Mutex::new(lru::LruCache::new(BASE_READS)),
        }))
    }

    /// An engine with a budget of its own, sized from the machine (for library use and tests).
    pub fn standalone(settings: MergeSettings) -> Result<Arc<MergeEngine>, EngineError> {
        Self::new(settings, MemoryBudget::new(default_host_limit(), UNRESOLVED))
    }

    pub fn device(&self) -> Device {
        self.settings.device
    }

    pub fn settings(&self) -> &MergeSettings {
        &self.settings
    }

    /// Whether merges keep their subtree results as products too ([`MergeSettings::subtree_products`]).
    pub(crate) fn keeps_subtree_products(&self) -> bool {
        self.settings.subtree_products.unwrap_or(self.settings.device.is_cuda())
    }

    /// Whether merges keep the base weights they read as uploaded ([`MergeSettings::base_copies`]),
    /// for a base that is a file's (`foreign`: false) or a foreign runtime's model.
    pub(crate) fn keeps_base_copies(&self, foreign: bool) -> bool {
        base_copies(self.settings.base_copies, self.settings.device.is_cuda(), foreign)
    }

    /// Whether merges keep page-locked host copies of the base weights they read, for a base that
    /// is a file's (`foreign`: false) or a foreign runtime's model: on a GPU, where its copies
    /// are not kept on the device ([`MergeSettings::page_locked_bases`]). (On the CPU, where the
    /// setting asks for them, they are ordinary host memory: for tests.)
    pub(crate) fn keeps_page_locked_bases(&self, foreign: bool) -> bool {
        self.page_locked_bases > 0 && (self.pinned().is_some() || !self.settings.device.is_cuda()) && !self.keeps_base_copies(foreign)
    }

    /// Whether a merge read the base key whose page-locked copy would be kept under `hash`
    /// before; remembers that one has now.
    pub(crate) fn read_before(&self, hash: &[u8; 32]) -> bool {
        self.base_reads.lock().unwrap_or_else(|e| e.into_inner()).put(*hash, ()).is_some()
    }

    /// The stream page-locked base copies go up on ([`UploadStream`]), held for one upload; made
    /// on first use (the guard then always holds one). None on the CPU, without the CUDA
    /// runtime, page-locked memory or copy streams, and where the stream or its slots could not
    /// be made (once: it is not tried again).
    pub(crate) fn upload_stream(&self) -> Option<std::sync::MutexGuard<'_, Option<UploadStream>>> {
        let (Device::Cuda(index), Some(rt), Some(_)) = (self.settings.device, &self.cuda, self.pinned()) else { return None };
        if !self.settings.copy_stream || self.no_upload_stream.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut guard = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            match UploadStream::new(rt, index) {
                Ok(stream) => {
                    self.staging_pool.charge(Place::Device, UploadStream::device_bytes());
                    *guard = Some(stream);
                }
                Err(e) => {
                    tracing::debug!("no upload stream ({e}): page-locked base copies go up on the default stream");
                    self.no_upload_stream.store(true, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
            }
        }
        Some(guard)
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// The CUDA runtime shim, where there is one.
    pub(crate) fn cuda(&self) -> Option<&Arc<CudaRuntime>> {
        self.cuda.as_ref()
    }

    pub(crate) fn pinned(&self) -> Option<&PinnedAllocator> {
        self.pinned.as_ref().filter(|_| self.settings.pinned)
    }

    /// The device's memory as measured the first time the engine needed it, from the CUDA
    /// runtime on the engine's device. Measured once: libtorch's caching allocator keeps the
    /// memory of earlier chunks, which a later measurement would count as taken. A model loaded
    /// afterwards (for sampling) is not in it: under a limit, chunks that then do not fit shrink
    /// (exit/oom.rs).
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        *self.device_memory.get_or_init(|| match (self.settings.device, &self.cuda) {
            (Device::Cuda(i), Some(rt)) => {
                // Under a limit, blocks libtorch keeps cached but unused (an earlier engine's
                // chunks) would count as in use and shrink this engine's room for good.
                if self.settings.device_memory.is_some() {
                    release_cached(rt, i);
                }
                device_memory(rt, i)
            }
            _ => None,
        })
    }

    /// The device memory under the configured limit, as measured the first time the engine
    /// needed it (None on the CPU, or without the CUDA runtime shim).
    pub fn device_plan(&self) -> Option<DevicePlan> {
        self.device_memory().map(|m| DevicePlan::new(self.settings.device_memory, m))
    }

    /// The budget's device limit, set from the device's memory if it was left to the engine:
    /// 40% of what was free under the device memory limit, for the subtree, statistics and
    /// factor caches together.
    pub fn device_limit(&self) -> u64 {
        if !self.settings.device.is_cuda() {
            return 0;
        }
        self.budget.resolve_limit(Place::Device, || {
            let share = match self.device_plan() {
                Some(p) => p.cache_share(),
                // No measurement (no CUDA runtime shim): 4 GiB, or 40% of a configured limit.
                None => self.settings.device_memory.map_or(4 << 30, |l| (l as f64 * 0.4) as u64),
            };
            if let Some(limit) = self.settings.device_memory {
                tracing::info!(
                    "device memory: limited to {} (memory.device); {} of it free at the first merge; the caches may keep {} there",
                    human(limit),
                    self.device_plan().map_or_else(|| "an unknown part".to_string(), |p| human(p.room)),
                    human(share)
                );
            }
            share
        })
    }

    /// Working memory for one chunk of keys: the plan's, or less where earlier merges had to
    /// shrink their chunks ([`ChunkMemory`]). Asked once per run before any cache insert, so it
    /// also resolves the budget's device limit (whether or not a chunk budget is configured).
    pub(crate) fn chunk_budget(&self) -> ChunkBudget {
        self.chunks.budget(self.planned_chunk_budget() as u64)
    }

    /// What a merge that started with `start` learned: it ended with `ended` bytes per chunk
    /// after `retries` chunks ran out of memory.
    pub(crate) fn learn_chunk_budget(&self, start: ChunkBudget, ended: u64, retries: usize) {
        self.chunks.record(start, ended, retries);
    }

    fn planned_chunk_budget(&self) -> usize {
        let device_limit = self.device_limit();
        if let Some(b) = self.settings.chunk_budget {
            return b as usize;
        }
        let limit = self.settings.device_memory;
        let bytes = match self.settings.device {
            Device::Cpu => cpu_chunk_memory(mem_available().unwrap_or(4 << 30) as u64, limit),
            _ => match self.device_plan() {
                Some(p) => p.chunk_memory(device_limit),
                None => {
                    let room = limit.map_or(4 << 30, |l| (l as f64 * 0.8) as u64);
                    room.saturating_sub(device_limit).max(CHUNK_FLOOR)
                }
            },
        };
        bytes as usize
    }

    /// The device memory limit as a message names it: `the 12.0 GiB device memory limit`, or
    /// `the device's memory` without one.
    pub(crate) fn limit_words(&self) -> String {
        match self.settings.device_memory {
            Some(l) => format!("the {} device memory limit", human(l)),
            None => "the device's memory".to_string(),
        }
    }

    /// Drops every cache entry held in device memory (subtree results, statistics, LoRA
    /// factors): what the Exit gives up before it declares a key too large for the device.
    /// Returns the bytes the caches no longer hold.
    pub(crate) fn free_device_caches(&self) -> u64 {
        self.yield_device(u64::MAX)
    }

    /// Gives device memory to someone else in the process, ComfyUI loading a model or decoding
    /// (docs/architecture.md, "Memory"): the LoRA factors first (uploaded again from their
    /// parsed files), then full subtree results (rebuilt from their products, or recomputed, at
    /// the next change), then the copies of base weights (uploaded again, ~35 ms a GiB), then
    /// column statistics, then the products, each least recently used first, until `bytes` are
    /// given back or the caches hold nothing on the device. Returns the bytes given back. The
    /// statistics go after the full results: a hundredth of their size, they spare a
    /// recomputation its float64 pass, and taken first they gave a request for gigabytes next to
    /// nothing. (The factors after the full results kept those of every earlier strength and
    /// pushed the branches' results out: measured slower, BENCHMARKS.md.)
    pub fn yield_device(&self, bytes: u64) -> u64 {
        self.giving_order().iter().fold(0, |freed, pool| freed + pool.free_device_bytes(bytes.saturating_sub(freed)))
    }

    /// The caches in the order they give device memory back ([`MergeEngine::yield_device`]).
    fn giving_order(&self) -> [&dyn GivesDevice; 5] {
        [&self.factors, &self.subtrees, &self.bases, &self.stats, &self.subtree_factors]
    }

    /// The host RAM a merge may count on: what the machine reports as available, capped by the
    /// `widen.host_ram` setting.
    pub(crate) fn host_ram_for_merges(&self) -> Option<usize> {
        let cap = self.settings.host_ram.map(|b| b as usize);
        match (mem_available(), cap) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// Installs the provider of foreign (Python) MODELs (the binary, once the bridge has started).
    pub fn set_foreign_models(&self, p: Arc<dyn ForeignModels>) {
        *self.foreign.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    pub fn foreign_models(&self) -> Option<Arc<dyn ForeignModels>> {
        self.foreign.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Empties every cache and memo (ComfyUI's `/free` with `free_memory`).
    pub fn clear(&self) {
        self.clear_caches();
        self.memos.lora_files.clear();
        self.memos.sets.clear();
        self.memos.touched_keys.clear();
        self.memos.groups.clear();
    }

    /// Empties the tensor caches (subtrees, statistics, factors) and keeps the memos of parsed
    /// files: what a merge must recompute, not what it must re-read.
    pub fn clear_caches(&self) {
        self.subtrees.clear();
        self.subtree_factors.clear();
        self.bases.clear();
        self.stats.clear();
        self.factors.clear();
    }

    pub fn cache_stats(&self) -> EngineStats {
        EngineStats {
            subtrees: self.subtrees.stats(),
            subtree_factors: self.subtree_factors.stats(),
            bases: self.bases.stats(),
            stats: self.stats.stats(),
            factors: self.factors.stats(),
        }
    }

    /// The subtree cache (tests and benchmarks inspect it).
    pub fn subtree_cache(&self) -> &SubtreeCache {
        &self.subtrees
    }

    /// The subtree results kept as low-rank products (tests and benchmarks inspect it).
    pub fn subtree_factor_cache(&self) -> &SubtreeFactorCache {
        &self.subtree_factors
    }

    /// The copies of base weights (tests and benchmarks inspect it).
    pub fn base_cache(&self) -> &SubtreeCache {
        &self.bases
    }

    pub fn stats_cache(&self) -> &StatsCache {
        &self.stats
    }

    pub fn factor_cache(&self) -> &SubtreeCache {
        &self.factors
    }
}

/// [`MergeSettings::base_copies`] as it applies: the setting where given, else on a GPU for a
/// base read from a file.
fn base_copies(setting: Option<bool>, gpu: bool, foreign: bool) -> bool {
    setting.unwrap_or(gpu && !foreign)
}

/// [`MergeSettings::page_locked_bases`] as it applies: the setting where given, else on a GPU a
/// quarter of the budget's host limit.
fn page_locked_bases(setting: Option<u64>, gpu: bool, host_limit: u64) -> u64 {
    setting.unwrap_or(if gpu { host_limit / 4 } else { 0 })
}

/// The host limit when the configuration leaves it to the machine: 60% of the available memory
/// (at least 1 GiB), for the executor's outputs and every WIDEN cache together.
pub fn default_host_limit() -> u64 {
    let available = mem_available().unwrap_or(8 << 30) as u64;
    ((available as f64 * 0.6) as u64).max(1 << 30)
}

/// `MemAvailable` of /proc/meminfo.
pub fn mem_available() -> Option<usize> {
    comfyrs_runtime::cache::system_memory().map(|m| m.available)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order the caches give device memory back in (docs/architecture.md, "Memory"): the
    /// copies of a base after the full results (a copy is re-read at ~35 ms a GiB, a result
    /// rebuilt from it), the statistics and the products last.
    #[test]
    fn the_caches_give_device_memory_back_in_their_order() {
        let engine = MergeEngine::standalone(MergeSettings::on(Device::Cpu)).unwrap();
        let order: Vec<&str> = engine.giving_order().iter().map(|p| p.pool_name()).collect();
        assert_eq!(order, ["widen.factors", "widen.subtrees", "widen.bases", "widen.statistics", "widen.subtree_factors"]);
    }

    /// Copies of a base are kept by default on a GPU for a file's base, not for a foreign
    /// runtime's model nor on the CPU; the setting decides when it is given.
    #[test]
    fn base_copies_by_default_only_on_a_gpu_for_a_file() {
        assert!(base_copies(None, true, false));
        assert!(!base_copies(None, true, true));
        assert!(!base_copies(None, false, false));
        assert!(base_copies(Some(true), false, true));
        assert!(!base_copies(Some(false), true, false));
    }

    /// Page-locked copies of a base: by default on a GPU, within a quarter of the host limit;
    /// the setting decides when it is given (0: none).
    #[test]
    fn page_locked_base_copies_by_default_on_a_gpu_within_a_quarter_of_the_host_limit() {
        assert_eq!(page_locked_bases(None, true, 64 << 30), 16 << 30);
        assert_eq!(page_locked_bases(None, false, 64 << 30), 0);
        assert_eq!(page_locked_bases(Some(0), true, 64 << 30), 0);
        assert_eq!(page_locked_bases(Some(1 << 30), false, 64 << 30), 1 << 30);
    }

    #[test]
    fn a_merge_that_had_to_shrink_its_chunks_plans_the_next_one_at_that_size() {
        let engine = MergeEngine::standalone(MergeSettings { chunk_budget: Some(1 << 20), ..MergeSettings::on(Device::Cpu) }).unwrap();
        let start = engine.chunk_budget();
        assert_eq!(start.bytes, 1 << 20);
        engine.learn_chunk_budget(start, 1 << 18, 2);
        assert_eq!(engine.chunk_budget(), ChunkBudget { planned: 1 << 20, bytes: 1 << 18 });
        // Another engine learned nothing.
        let other = MergeEngine::standalone(MergeSettings { chunk_budget: Some(1 << 20), ..MergeSettings::on(Device::Cpu) }).unwrap();
        assert_eq!(other.chunk_budget().bytes, 1 << 20);
    }
}
