//! The content-addressed subtree cache (`docs/decisions.md` D19; `docs/architecture.md`,
//! "The WIDEN caches"), and the byte-bounded LRU that the engine's statistics and factor caches
//! use too.
//!
//! Keys are the per-key content hashes of merge subtrees ([`super::exit::Analysis::key_hash`]):
//! what the subtree reads (file identities, strengths), the key's effective t_factor and block
//! multipliers, the key name and the device. Values are that subtree's merged weights for that
//! key (fp32), so a change anywhere recomputes only the subtrees whose hash changed and what
//! sits above them, and a block slider recomputes only the keys of that block.
//!
//! Entries live where they were computed: on a GPU the cached weights stay in device memory, so
//! a slider change re-reads them at device bandwidth instead of over the host link. Every cache
//! counts its bytes in the engine's memory budget (one pool each) and gives memory back, least
//! recently used first, while the budget as a whole is over its limit or the cache over its own
//! cap.

use std::sync::Mutex;

use comfyrs_runtime::memory::{Place, Pool};

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

/// An LRU keyed by content hashes, bounded by bytes: by the memory budget its pool belongs to,
/// and by caps of its own in host and device memory.
pub struct ByteLru<V: Cached> {
    inner: Mutex<Inner<V>>,
    pool: Pool,
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

fn place<V: Cached>(v: &V) -> Place {
    if v.on_device() {
        Place::Device
    } else {
        Place::Host
    }
}

impl<V: Cached> Inner<V> {
    fn account(&mut self, v: &V, add: bool, pool: &Pool) {
        let size = v.bytes();
        let slot = if v.on_device() { &mut self.device_bytes } else { &mut self.bytes };
        if add {
            *slot += size;
            pool.charge(place(v), size as u64);
        } else {
            *slot -= size;
            pool.release(place(v), size as u64);
        }
    }

    fn over(&self, pool: &Pool) -> bool {
        self.bytes > self.limit
            || self.device_bytes > self.device_limit
            || (self.bytes > 0 && pool.excess(Place::Host) > 0)
            || (self.device_bytes > 0 && pool.excess(Place::Device) > 0)
    }

    fn evict(&mut self, pool: &Pool) {
        while self.over(pool) {
            match self.map.pop_lru() {
                Some((_, v)) => self.account(&v, false, pool),
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

impl<V: Cached> ByteLru<V> {
    /// A cache counted in `pool`, capped at `limit` bytes of host memory and `device_limit`
    /// bytes of device memory of its own.
    pub fn new(pool: Pool, limit: u64, device_limit: u64) -> Self {
        let cap = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        ByteLru {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
                limit: cap(limit),
                device_bytes: 0,
                device_limit: cap(device_limit),
                hits: 0,
                misses: 0,
            }),
            pool,
        }
    }

    /// A cache with a budget of its own: `limit` bytes of host and of device memory.
    pub fn bounded(limit: u64) -> Self {
        Self::new(comfyrs_runtime::memory::MemoryBudget::new(limit, limit).pool("cache"), limit, limit)
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
        if size > limit || size as u64 > self.pool.limit(place(&value)) {
            return;
        }
        g.account(&value, true, &self.pool);
        if let Some(old) = g.map.put(key, value) {
            g.account(&old, false, &self.pool);
        }
        if cold {
            g.map.demote(&key);
        }
        g.evict(&self.pool);
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        self.pool.release(Place::Host, g.bytes as u64);
        self.pool.release(Place::Device, g.device_bytes as u64);
        g.bytes = 0;
        g.device_bytes = 0;
    }

    /// Drops the entries held in device memory (host entries stay); returns their bytes.
    pub fn free_device(&self) -> u64 {
        let mut g = self.lock();
        let on_device: Vec<[u8; 32]> = g.map.iter().filter(|(_, v)| v.on_device()).map(|(k, _)| *k).collect();
        let before = g.device_bytes;
        for k in on_device {
            if let Some(v) = g.map.pop(&k) {
                g.account(&v, false, &self.pool);
            }
        }
        (before - g.device_bytes) as u64
    }

    /// Caps host memory at `limit` bytes and device memory at `device_limit`.
    pub fn set_limits(&self, limit: usize, device_limit: usize) {
        let mut g = self.lock();
        g.limit = limit;
        g.device_limit = device_limit;
        g.evict(&self.pool);
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
        let cache = SubtreeCache::bounded(2 * one as u64);
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

    #[test]
    fn gives_memory_back_while_the_shared_budget_is_over() {
        let one = entry(0.0).bytes() as u64;
        let budget = comfyrs_runtime::memory::MemoryBudget::new(3 * one, 0);
        let outputs = budget.pool("outputs");
        let cache = SubtreeCache::new(budget.pool("widen.subtrees"), u64::MAX, u64::MAX);
        cache.insert([1; 32], entry(1.0));
        cache.insert([2; 32], entry(2.0));
        outputs.charge(Place::Host, one);
        cache.insert([3; 32], entry(3.0));
        assert!(cache.get(&[1; 32]).is_none(), "the oldest entry made room for the executor's outputs");
        assert_eq!(budget.used(Place::Host), 3 * one);
        let usage = budget.usage();
        assert_eq!(usage.pools[1].host, 2 * one);
        cache.clear();
        assert_eq!(budget.used(Place::Host), one);
    }
}
