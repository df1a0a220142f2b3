//! The content-addressed subtree cache (D19, DESIGN.md "Content-addressed recipe cache").
//!
//! One process-wide LRU, bounded by bytes, shared by every Exit node. Keys are the per-key
//! content hashes of merge subtrees ([`super::exit::Analysis::key_hash`]): what the subtree
//! reads (file identities, strengths), the key's effective t_factor and block multipliers, the
//! key name and the device. Values are that subtree's merged weights for that key (fp32, CPU),
//! so a change anywhere recomputes only the subtrees whose hash changed and what sits above
//! them, and a block slider recomputes only the keys of that block.
//!
//! Entries live where they were computed: on a GPU the cached weights stay in device memory
//! (bounded separately from host memory), so a slider change re-reads them at device bandwidth
//! instead of over the host link. [`STATS`] keeps each merge's column statistics per key: they
//! do not depend on the merge's t_factor, so a t-only change skips them (D19).

use std::sync::{LazyLock, Mutex};

use lru::LruCache;
use tch::Tensor;

use crate::widen::ColumnStats;

/// What a [`ByteLru`] can hold: a value with a size, a place (host or device memory) and cheap
/// shared handles. Cached values are never modified in place.
pub trait Cached: Send {
    /// Bytes the entry keeps alive, bookkeeping included.
    fn bytes(&self) -> usize;
    fn on_device(&self) -> bool;
    /// Another handle on the same storage.
    fn handle(&self) -> Self;
}

impl Cached for Tensor {
    fn bytes(&self) -> usize {
        self.numel() * self.kind().elt_size_in_bytes() + 64
    }
    fn on_device(&self) -> bool {
        self.device() != tch::Device::Cpu
    }
    fn handle(&self) -> Self {
        self.shallow_clone()
    }
}

impl Cached for ColumnStats {
    fn bytes(&self) -> usize {
        ColumnStats::bytes(self) + 192
    }
    fn on_device(&self) -> bool {
        self.dm.device() != tch::Device::Cpu
    }
    fn handle(&self) -> Self {
        self.shallow_clone()
    }
}

/// A process-wide LRU keyed by content hashes and bounded by bytes, host and device memory
/// each against its own bound.
pub struct ByteLru<V: Cached> {
    inner: Mutex<Inner<V>>,
}

/// Subtree results (and device-resident LoRA factors): tensors.
pub type SubtreeCache = ByteLru<Tensor>;
/// Column statistics of merges, per key (`[N, 1, K]` each), keyed by the merge's content hash
/// without its t_factor ([`super::exit::Analysis::stats_hash`]).
pub type StatsCache = ByteLru<ColumnStats>;

struct Inner<V> {
    map: LruCache<[u8; 32], V>,
    bytes: usize,
    limit: usize,
    device_bytes: usize,
    device_limit: usize,
    hits: u64,
    misses: u64,
}

impl<V: Cached> Inner<V> {
    fn account(&mut self, v: &V, add: bool) {
        let size = v.bytes();
        let slot = if v.on_device() { &mut self.device_bytes } else { &mut self.bytes };
        if add {
            *slot += size;
        } else {
            *slot -= size;
        }
    }

    fn evict(&mut self) {
        while self.bytes > self.limit || self.device_bytes > self.device_limit {
            match self.map.pop_lru() {
                Some((_, v)) => self.account(&v, false),
                None => break,
            }
        }
    }
}

/// Cache statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub limit: usize,
    pub device_bytes: usize,
    pub device_limit: usize,
    pub hits: u64,
    pub misses: u64,
}

/// Default bound: `COMFYRS_WIDEN_CACHE_MB`, else a quarter of the available memory (at most
/// 16 GiB).
fn default_limit() -> usize {
    if let Some(bytes) = super::knobs::mebibytes("COMFYRS_WIDEN_CACHE_MB") {
        return bytes;
    }
    (super::exit::mem_available().unwrap_or(8 << 30) / 4).min(16 << 30)
}

/// Default bound in device memory: `COMFYRS_WIDEN_DEVICE_CACHE_MB`, else a quarter of the free
/// device memory (the Exit's working budget leaves it aside).
pub fn default_device_limit() -> usize {
    if let Some(bytes) = super::knobs::mebibytes("COMFYRS_WIDEN_DEVICE_CACHE_MB") {
        return bytes;
    }
    super::exit::gpu_free_bytes().unwrap_or(0) / 4
}

/// The process-wide subtree cache.
pub static CACHE: LazyLock<SubtreeCache> =
    LazyLock::new(|| SubtreeCache::with_limits(default_limit(), default_device_limit()));

/// The process-wide statistics cache: `COMFYRS_WIDEN_STATS_CACHE_MB` wherever the statistics
/// live, default 1 GiB (statistics are a few kilobytes per key and merge).
pub static STATS: LazyLock<StatsCache> = LazyLock::new(|| {
    let bytes = super::knobs::mebibytes("COMFYRS_WIDEN_STATS_CACHE_MB").unwrap_or(1 << 30);
    StatsCache::with_limits(bytes, bytes)
});

impl<V: Cached> ByteLru<V> {
    /// A cache bounded by `limit` bytes of host memory (and as much device memory).
    pub fn new(limit: usize) -> Self {
        Self::with_limits(limit, limit)
    }

    pub fn with_limits(limit: usize, device_limit: usize) -> Self {
        ByteLru {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
                limit,
                device_bytes: 0,
                device_limit,
                hits: 0,
                misses: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A shared handle on the cached value (never modified in place by anyone).
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let mut g = self.lock();
        let r = g.map.get(key).map(V::handle);
        if r.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        r
    }

    /// Stores `value`, which nobody may modify in place afterwards.
    pub fn insert(&self, key: [u8; 32], value: V) {
        self.store(key, value, false);
    }

    /// [`ByteLru::insert`] at the cold end: under pressure the value goes before anything else.
    /// For results less likely to be asked for again than what the cache already holds.
    pub fn insert_cold(&self, key: [u8; 32], value: V) {
        self.store(key, value, true);
    }

    fn store(&self, key: [u8; 32], value: V, cold: bool) {
        let size = value.bytes();
        let mut g = self.lock();
        let limit = if value.on_device() { g.device_limit } else { g.limit };
        if size > limit {
            return;
        }
        g.account(&value, true);
        if let Some(old) = g.map.put(key, value) {
            g.account(&old, false);
        }
        if cold {
            g.map.demote(&key);
        }
        g.evict();
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        g.bytes = 0;
        g.device_bytes = 0;
    }

    /// Bounds host memory at `limit` bytes and device memory at `device_limit`.
    pub fn set_limits(&self, limit: usize, device_limit: usize) {
        let mut g = self.lock();
        g.limit = limit;
        g.device_limit = device_limit;
        g.evict();
    }

    pub fn stats(&self) -> CacheStats {
        let g = self.lock();
        CacheStats {
            entries: g.map.len(),
            bytes: g.bytes,
            limit: g.limit,
            device_bytes: g.device_bytes,
            device_limit: g.device_limit,
            hits: g.hits,
            misses: g.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: f32) -> Tensor {
        Tensor::from_slice(&[v; 16])
    }

    #[test]
    fn cold_entries_are_evicted_before_warm_ones() {
        let one = entry(0.0).bytes();
        let cache = SubtreeCache::new(2 * one);
        cache.insert([1; 32], entry(1.0));
        cache.insert_cold([2; 32], entry(2.0));
        cache.insert([3; 32], entry(3.0));
        assert!(cache.get(&[2; 32]).is_none(), "the cold entry goes first");
        assert!(cache.get(&[1; 32]).is_some() && cache.get(&[3; 32]).is_some());
        // A plain insert evicts the least recently used instead.
        cache.insert([4; 32], entry(4.0));
        assert!(cache.get(&[1; 32]).is_none());
        assert_eq!(cache.stats().bytes, 2 * one);
    }
}
