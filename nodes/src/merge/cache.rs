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
//!
//! The subtree cache is also scan resistant: an Exit run marks what it uses
//! ([`ByteLru::begin_run`]), and a result the run computes may evict only entries no part of the
//! run has used. When a run's results are more than the cache holds, plain LRU evicted each chunk
//! just before the next run asked for it (a slider change under a small device limit found none);
//! now the first chunks stay, whole, and the next run finds those.

use std::collections::HashMap;
use std::sync::Mutex;

use comfyrs_runtime::memory::{Place, Pool};

use lru::LruCache;
use tch::Tensor;

use crate::widen::{ColumnStats, Factored};

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

impl Cached for Factored {
    fn bytes(&self) -> usize {
        Factored::bytes(self) + 128
    }
    fn on_device(&self) -> bool {
        Factored::on_device(self)
    }
    fn handle(&self) -> Self {
        self.shallow_clone()
    }
}

/// A cache that can give device memory back: what [`super::engine::MergeEngine::yield_device`]
/// walks, in its order.
pub(crate) trait GivesDevice {
    fn free_device_bytes(&self, bytes: u64) -> u64;
    /// (Which pool: the order's test names them.)
    #[cfg(test)]
    fn pool_name(&self) -> &str;
}

impl<V: Cached> GivesDevice for ByteLru<V> {
    fn free_device_bytes(&self, bytes: u64) -> u64 {
        ByteLru::free_device_bytes(self, bytes)
    }
    #[cfg(test)]
    fn pool_name(&self) -> &str {
        self.pool.name()
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
/// Subtree results of low-rank merges as the products that formed them ([`Factored`]), keyed
/// as the subtree cache is: a tenth of a result's size, rebuilt from the merge's base when the
/// full result is no longer cached.
pub type SubtreeFactorCache = ByteLru<Factored>;
/// Column statistics of merges, per key (`[N, 1, K]` each), keyed by the merge's content hash
/// without its t_factor ([`super::exit::Analysis::stats_hash`]).
pub type StatsCache = ByteLru<ColumnStats>;

struct Inner<V> {
    map: LruCache<[u8; 32], Slot<V>>,
    /// The keys of each group of several values stored together (views of one tensor).
    groups: HashMap<u64, Vec<[u8; 32]>>,
    next_group: u64,
    /// The current run, once [`ByteLru::begin_run`] was called (else plain LRU).
    run: Option<u64>,
    bytes: usize,
    limit: usize,
    device_bytes: usize,
    device_limit: usize,
    hits: u64,
    misses: u64,
    /// The share of the budget's limit at a place that this cache keeps while other pools grow
    /// ([`ByteLru::reserving`]; 0: none).
    reserve: f64,
}

/// A cached value, the last run that used it (0: none that protects it, as for values inserted
/// at the cold end), and the group it was stored with (0: alone).
struct Slot<V> {
    v: V,
    run: u64,
    group: u64,
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
        let past_reserve = |held: usize, at: Place| held > 0 && held as f64 > self.reserve * pool.limit(at) as f64;
        self.bytes > self.limit
            || self.device_bytes > self.device_limit
            || (past_reserve(self.bytes, Place::Host) && pool.excess(Place::Host) > 0)
            || (past_reserve(self.device_bytes, Place::Device) && pool.excess(Place::Device) > 0)
    }

    /// Removes `key` and, if it was stored in a group, the rest of the group: the group's tensor
    /// is freed only when its last view goes, so an entry alone would give back nothing while
    /// the cache counted its bytes as given back.
    fn remove(&mut self, key: &[u8; 32], pool: &Pool) {
        let Some(slot) = self.map.pop(key) else { return };
        self.account(&slot.v, false, pool);
        if let Some(members) = self.groups.remove(&slot.group) {
            for k in members.iter().filter(|k| *k != key) {
                // (A member stored again since belongs to another group now.)
                if self.map.peek(k).is_some_and(|s| s.group == slot.group) {
                    let other = self.map.pop(k).expect("peeked");
                    self.account(&other.v, false, pool);
                }
            }
        }
    }

    fn evict(&mut self, pool: &Pool) {
        while self.over(pool) {
            match self.map.peek_lru().map(|(k, _)| *k) {
                Some(key) => self.remove(&key, pool),
                None => break,
            }
        }
    }

    /// Whether the current run used `key`'s entry or any entry of its group.
    fn used_by(&self, key: &[u8; 32], slot: &Slot<V>, current: u64) -> bool {
        slot.run >= current
            || self.groups.get(&slot.group).is_some_and(|members| {
                members.iter().any(|k| k != key && self.map.peek(k).is_some_and(|s| s.group == slot.group && s.run >= current))
            })
    }

    /// Evicts, least recently used first, entries the current run has not used (whole groups:
    /// none of whose entries it used), until the cache is within its limits; whether it is.
    fn evict_unused(&mut self, pool: &Pool) -> bool {
        let current = self.run.unwrap_or(u64::MAX);
        while self.over(pool) {
            let Some(key) = self.map.iter().rev().find(|(k, slot)| !self.used_by(k, slot, current)).map(|(k, _)| *k) else {
                return false;
            };
            self.remove(&key, pool);
        }
        true
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
                groups: HashMap::new(),
                next_group: 1,
                run: None,
                bytes: 0,
                limit: cap(limit),
                device_bytes: 0,
                device_limit: cap(device_limit),
                hits: 0,
                misses: 0,
                reserve: 0.0,
            }),
            pool,
        }
    }

    /// The same cache, keeping up to `share` of the budget's limit at each place whatever else
    /// grows: within that share, a budget over its limit is for the other pools to fix (they
    /// evict their own entries as they grow). For small entries that spare large ones their
    /// recomputation ([`SubtreeFactorCache`]): without it they would be the ones to go whenever
    /// the large ones had filled the budget.
    pub fn reserving(self, share: f64) -> Self {
        self.lock().reserve = share.clamp(0.0, 1.0);
        self
    }

    /// A cache with a budget of its own: `limit` bytes of host and of device memory.
    pub fn bounded(limit: u64) -> Self {
        Self::new(comfyrs_runtime::memory::MemoryBudget::new(limit, limit).pool("cache"), limit, limit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run: from now on, what the run computes may evict only entries it has not used
    /// itself ([`ByteLru::insert_all`]). Entries of earlier runs are fair game again.
    pub fn begin_run(&self) {
        let mut g = self.lock();
        g.run = Some(g.run.map_or(1, |r| r + 1));
    }

    /// A shared handle on the cached value (never modified in place by anyone).
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let mut g = self.lock();
        let run = g.run.unwrap_or(0);
        let r = g.map.get_mut(key).map(|slot| {
            slot.run = slot.run.max(run);
            slot.v.handle()
        });
        if r.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        r
    }

    /// Stores `value`, which nobody may modify in place afterwards.
    pub fn insert(&self, key: [u8; 32], value: V) {
        self.insert_all(vec![(key, value)]);
    }

    /// Stores every value as one group (the rows of one tensor: a chunk's results), evicted
    /// together, since the tensor only goes when its last row does; or, within a run
    /// ([`ByteLru::begin_run`]) where that would evict what the run itself used, none: a chunk
    /// is kept whole or not at all.
    pub fn insert_all(&self, values: Vec<([u8; 32], V)>) {
        self.store(values, false);
    }

    /// [`ByteLru::insert`] at the cold end: under pressure the value goes before anything else.
    /// For results less likely to be asked for again than what the cache already holds.
    pub fn insert_cold(&self, key: [u8; 32], value: V) {
        self.store(vec![(key, value)], true);
    }

    /// [`ByteLru::insert_all`] at the cold end (one group, never protected by a run).
    pub fn insert_all_cold(&self, values: Vec<([u8; 32], V)>) {
        self.store(values, true);
    }

    fn store(&self, values: Vec<([u8; 32], V)>, cold: bool) {
        let Some(first) = values.first() else { return };
        let size: usize = values.iter().map(|(_, v)| v.bytes()).sum();
        let at = place(&first.1);
        let mut g = self.lock();
        let limit = if at == Place::Device { g.device_limit } else { g.limit };
        if size > limit || size as u64 > self.pool.limit(at) {
            return;
        }
        let run = if cold { 0 } else { g.run.unwrap_or(0) };
        let keys: Vec<[u8; 32]> = values.iter().map(|(k, _)| *k).collect();
        let group = if keys.len() > 1 {
            let id = g.next_group;
            g.next_group += 1;
            g.groups.insert(id, keys.clone());
            id
        } else {
            0
        };
        for (key, v) in values {
            // A value stored again replaces the old one with its group (rare: a key recomputed
            // while cached).
            g.remove(&key, &self.pool);
            g.account(&v, true, &self.pool);
            g.map.put(key, Slot { v, run, group });
            if cold {
                g.map.demote(&key);
            }
        }
        // Within a run, new results make room only from what the run has not used; if that is
        // not enough they are not kept (and the cache is as it was, but for what they evicted).
        if !cold && g.run.is_some() && !g.evict_unused(&self.pool) {
            g.remove(&keys[0], &self.pool);
        }
        // The budget holds whatever else grew (the executor's outputs share it).
        g.evict(&self.pool);
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        g.groups.clear();
        self.pool.release(Place::Host, g.bytes as u64);
        self.pool.release(Place::Device, g.device_bytes as u64);
        g.bytes = 0;
        g.device_bytes = 0;
    }

    /// Drops entries held in device memory, least recently used first and whole groups, until
    /// `bytes` are given back or none is left (host entries stay); returns the bytes given back.
    pub fn free_device_bytes(&self, bytes: u64) -> u64 {
        let mut g = self.lock();
        let before = g.device_bytes;
        while ((before - g.device_bytes) as u64) < bytes {
            let Some(key) = g.map.iter().rev().find(|(_, slot)| slot.v.on_device()).map(|(k, _)| *k) else { break };
            g.remove(&key, &self.pool);
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
    fn a_run_does_not_evict_what_it_used_and_keeps_chunks_whole() {
        let one = entry(0.0).bytes();
        let cache = SubtreeCache::bounded(3 * one as u64);
        cache.insert([9; 32], entry(9.0));
        cache.begin_run();
        assert!(cache.get(&[9; 32]).is_some(), "used by this run");
        cache.insert_all(vec![([1; 32], entry(1.0)), ([2; 32], entry(2.0))]);
        // A chunk of two has no room: it would have to evict what the run used. None of it stays.
        cache.insert_all(vec![([3; 32], entry(3.0)), ([4; 32], entry(4.0))]);
        for k in [9, 1, 2] {
            assert!(cache.get(&[k; 32]).is_some(), "{k}");
        }
        assert!(cache.get(&[3; 32]).is_none() && cache.get(&[4; 32]).is_none());
        // The next run may evict what this one kept, least recently used first.
        cache.begin_run();
        cache.insert_all(vec![([5; 32], entry(5.0))]);
        assert!(cache.get(&[9; 32]).is_none(), "the least recently used entry of the last run went");
        assert_eq!(cache.stats().bytes, 3 * one);
        // Values at the cold end are never protected.
        cache.insert_cold([6; 32], entry(6.0));
        cache.insert_all(vec![([7; 32], entry(7.0))]);
        assert!(cache.get(&[6; 32]).is_none() && cache.get(&[7; 32]).is_some());
    }

    /// The rows of one chunk are views of one tensor, freed when the last goes: evicting one
    /// evicts them all, so the bytes the cache counts are the bytes it holds.
    #[test]
    fn a_chunk_stored_together_goes_together() {
        let one = entry(0.0).bytes();
        let cache = SubtreeCache::bounded(5 * one as u64);
        let chunk = Tensor::arange(64, (tch::Kind::Float, tch::Device::Cpu)).view([4, 16]);
        cache.insert_all((0..4u8).map(|i| ([i; 32], chunk.select(0, i as i64))).collect());
        cache.insert([10; 32], entry(10.0));
        assert_eq!(cache.stats().entries, 5);
        // Room for one more evicts the least recently used row, and with it its chunk.
        assert!(cache.get(&[3; 32]).is_some());
        cache.insert([11; 32], entry(11.0));
        let left: Vec<u8> = [0u8, 1, 2, 3, 10, 11].into_iter().filter(|&k| cache.get(&[k; 32]).is_some()).collect();
        assert_eq!(left, [10, 11], "the chunk went whole, its recently used row too");
        assert_eq!(cache.stats().bytes, 2 * one);
        // Dropping the device entries, or clearing, takes groups the same way.
        cache.clear();
        assert_eq!((cache.stats().entries, cache.stats().bytes), (0, 0));
    }

    /// Within a run, a group is protected when the run used any of its rows.
    #[test]
    fn a_run_keeps_a_chunk_it_used_part_of() {
        let one = entry(0.0).bytes();
        let cache = SubtreeCache::bounded(4 * one as u64);
        let chunk = Tensor::arange(48, (tch::Kind::Float, tch::Device::Cpu)).view([3, 16]);
        cache.insert_all((0..3u8).map(|i| ([i; 32], chunk.select(0, i as i64))).collect());
        cache.begin_run();
        assert!(cache.get(&[2; 32]).is_some(), "one row used by this run");
        // Two new rows need the room of the chunk: it is not evicted, so they are not kept.
        cache.insert_all(vec![([7; 32], entry(7.0)), ([8; 32], entry(8.0))]);
        assert!(cache.get(&[7; 32]).is_none() && cache.get(&[8; 32]).is_none());
        assert!((0..3u8).all(|k| cache.get(&[k; 32]).is_some()), "the chunk stays whole");
        assert_eq!(cache.stats().bytes, 3 * one);
        // The next run has not used it: the chunk makes room.
        cache.begin_run();
        cache.insert_all(vec![([7; 32], entry(7.0)), ([8; 32], entry(8.0))]);
        assert!(cache.get(&[7; 32]).is_some() && cache.get(&[8; 32]).is_some());
        assert!((0..3u8).all(|k| cache.get(&[k; 32]).is_none()));
        assert_eq!(cache.stats().bytes, 2 * one);
    }

    /// A value that says it lives in device memory (no GPU here), for the device bookkeeping.
    struct OnDevice(usize);

    impl Cached for OnDevice {
        fn bytes(&self) -> usize {
            self.0
        }
        fn on_device(&self) -> bool {
            true
        }
        fn handle(&self) -> Self {
            OnDevice(self.0)
        }
    }

    /// Giving device memory to someone else (ComfyUI loading a model) takes the least recently
    /// used entries first, whole groups, and only as much as was asked for.
    #[test]
    fn gives_back_device_memory_least_recently_used_first() {
        let budget = comfyrs_runtime::memory::MemoryBudget::new(1 << 30, 1 << 30);
        let cache = ByteLru::new(budget.pool("widen.subtrees"), u64::MAX, u64::MAX);
        cache.insert([1; 32], OnDevice(100));
        cache.insert_all(vec![([2; 32], OnDevice(100)), ([3; 32], OnDevice(100))]);
        cache.insert([4; 32], OnDevice(100));
        assert!(cache.get(&[1; 32]).is_some(), "now the most recently used");
        assert_eq!(cache.free_device_bytes(0), 0);
        // 150 bytes: the oldest is the group of two, which goes whole.
        assert_eq!(cache.free_device_bytes(150), 200);
        assert!(cache.get(&[2; 32]).is_none() && cache.get(&[3; 32]).is_none());
        assert!(cache.get(&[4; 32]).is_some() && cache.get(&[1; 32]).is_some());
        assert_eq!(budget.used(Place::Device), 200);
        // More than it holds: everything, and no more.
        assert_eq!(cache.free_device_bytes(1000), 200);
        assert_eq!((cache.stats().entries, cache.stats().device_bytes, budget.used(Place::Device)), (0, 0, 0));
    }

    /// A reserving cache keeps its share of the budget while another pool has filled it: the
    /// pool that grows next makes the room; beyond the share it gives back its own entries.
    #[test]
    fn a_reserving_cache_keeps_its_share_while_the_large_entries_make_room() {
        let budget = comfyrs_runtime::memory::MemoryBudget::new(1000, 1000);
        let large = ByteLru::new(budget.pool("widen.subtrees"), u64::MAX, u64::MAX);
        let small = ByteLru::new(budget.pool("widen.subtree_factors"), u64::MAX, u64::MAX).reserving(0.25);
        for i in 0..5u8 {
            large.insert([i; 32], OnDevice(200));
        }
        assert_eq!(budget.used(Place::Device), 1000);
        // Within its quarter the small entries stay, the budget over its limit for now...
        small.insert([10; 32], OnDevice(100));
        small.insert([11; 32], OnDevice(100));
        assert_eq!(small.stats().entries, 2);
        assert_eq!(budget.used(Place::Device), 1200);
        // ...until the large pool grows again and gives back its own oldest entries.
        large.insert([5; 32], OnDevice(200));
        assert_eq!(budget.used(Place::Device), 1000);
        assert_eq!((large.stats().entries, small.stats().entries), (4, 2));
        // Past its quarter, the reserving cache gives back its own, oldest first.
        small.insert([12; 32], OnDevice(100));
        assert_eq!(small.stats().entries, 2);
        assert!(small.get(&[10; 32]).is_none() && small.get(&[12; 32]).is_some());
        // An ordinary cache in its place would have given back everything the budget was over by.
        let plain = ByteLru::new(budget.pool("plain"), u64::MAX, u64::MAX);
        plain.insert([20; 32], OnDevice(100));
        assert_eq!(plain.stats().entries, 0);
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
