//! The outputs cache: node results keyed by signature, bounded by bytes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use lru::LruCache;
use serde_json::{Map, Value as Json};

use crate::memory::{GivesDevice, MemoryBudget, Place, Pool};
use crate::signature::Signature;
use crate::value::{SharedBytes, Value};

/// How results are kept across prompts (`--cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Nothing is kept: every node runs every time.
    None,
    /// Least recently used entries go first once the host memory budget is exceeded.
    Lru,
    /// As `Lru`, and also evicts while the machine's available memory is below the headroom.
    RamPressure,
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(CacheMode::None),
            "lru" => Ok(CacheMode::Lru),
            "ram-pressure" => Ok(CacheMode::RamPressure),
            other => Err(format!("unknown cache mode '{other}': use none, lru or ram-pressure")),
        }
    }
}

/// A node's cached result: its output lists and UI data.
#[derive(Debug)]
pub struct NodeResult {
    pub outputs: Vec<Vec<Value>>,
    pub ui: Option<Map<String, Json>>,
    /// Host memory the outputs hold of their own.
    pub bytes: usize,
    /// Device memory the outputs keep alive ([`Value::device_byte_size`]).
    pub device_bytes: usize,
    /// Memory the outputs may hold together with other results (a model's module, which every
    /// clone of it holds), each piece once ([`Value::shared_bytes`]).
    pub shared: Vec<SharedBytes>,
}

impl NodeResult {
    pub fn new(outputs: Vec<Vec<Value>>, ui: Option<Map<String, Json>>) -> Self {
        let bytes = outputs.iter().flatten().map(Value::byte_size).sum::<usize>()
            + ui.as_ref().map(|u| Json::Object(u.clone()).to_string().len()).unwrap_or(0)
            + 64;
        let device_bytes = outputs.iter().flatten().map(Value::device_byte_size).sum();
        let mut shared = Vec::new();
        outputs.iter().flatten().for_each(|v| v.shared_bytes(&mut shared));
        let mut ids = HashSet::with_capacity(shared.len());
        shared.retain(|s| ids.insert(s.id));
        NodeResult { outputs, ui, bytes, device_bytes, shared }
    }

    /// Host memory the result holds, own and shared.
    pub fn total_bytes(&self) -> usize {
        self.bytes + self.shared.iter().map(|s| s.bytes).sum::<usize>()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Node results kept across prompts. Its entries sit behind a lock of their own so that the
/// budget can ask it, from another thread, to let go of results that keep device memory (an old
/// merged model while ComfyUI loads the one it samples with; [`GivesDevice`]); the executor
/// that owns it is the only other user, so the lock is never contended for long.
pub struct OutputCache {
    mode: CacheMode,
    /// Minimum available system memory to keep in `RamPressure` mode.
    headroom: usize,
    last_memory_check: Option<Instant>,
    entries: Arc<Mutex<Entries>>,
}

struct Entries {
    /// Its share of the engine's memory budget: it evicts while the budget as a whole is over
    /// its host limit.
    pool: Pool,
    lru: LruCache<Signature, Arc<NodeResult>>,
    /// Memory held by several results, counted once: by its id, how many entries hold it and
    /// its bytes.
    held: HashMap<u64, (usize, usize)>,
    stats: CacheStats,
}

impl OutputCache {
    /// A cache with a budget of its own: `max_bytes` of host memory.
    pub fn new(mode: CacheMode, max_bytes: usize) -> Self {
        Self::with_pool(mode, MemoryBudget::new(max_bytes as u64, 0).pool("outputs"))
    }

    /// A cache counted in `pool` (the engine's budget, shared with its other caches), which the
    /// budget can ask for device memory ([`MemoryBudget::give_device`]).
    pub fn with_pool(mode: CacheMode, pool: Pool) -> Self {
        let total = system_memory().map(|m| m.total).unwrap_or(8 << 30);
        // ComfyUI's active headroom: 10% of RAM, clamped to 2..10 GB.
        let headroom = (total / 10).clamp(2 << 30, 10 << 30).min(total / 2);
        let budget = pool.budget().clone();
        let entries = Arc::new(Mutex::new(Entries { pool, lru: LruCache::unbounded(), held: HashMap::new(), stats: CacheStats::default() }));
        let giver: Arc<dyn GivesDevice> = entries.clone();
        budget.add_device_giver(Arc::downgrade(&giver));
        OutputCache { mode, headroom, last_memory_check: None, entries }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pool(&self) -> Pool {
        self.lock().pool.clone()
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// Looks up a result, counting the hit or miss and marking it recently used.
    pub fn get(&mut self, sig: &Signature) -> Option<Arc<NodeResult>> {
        let mut e = self.lock();
        let r = e.lru.get(sig).cloned();
        if r.is_some() {
            e.stats.hits += 1;
        } else {
            e.stats.misses += 1;
        }
        r
    }

    pub fn contains(&self, sig: &Signature) -> bool {
        self.lock().lru.contains(sig)
    }

    pub fn insert(&mut self, sig: Signature, result: Arc<NodeResult>) {
        if self.mode == CacheMode::None {
            return;
        }
        // What leaves the cache is dropped after the lock is let go: a result can be a Python
        // object, and nothing else should wait on the cache while it goes.
        let mut gone = Vec::new();
        let bytes = {
            let mut e = self.lock();
            if result.total_bytes() as u64 > e.pool.limit(Place::Host) {
                return; // would evict everything and still not fit
            }
            let bytes = e.charge(&result);
            if let Some(old) = e.lru.put(sig, result) {
                e.release(&old);
                gone.push(old);
            }
            while e.pool.excess(Place::Host) > 0 && !e.lru.is_empty() {
                gone.extend(e.evict_one());
            }
            // Device memory: older entries holding some go first; the most recent of them
            // stays, as the model a sampler is about to use (a merge's other caches give way to
            // it by their own rules).
            while e.pool.excess(Place::Device) > 0 {
                match e.evict_one_on_device() {
                    Some(old) => gone.push(old),
                    None => break,
                }
            }
            bytes
        };
        if self.mode == CacheMode::RamPressure && self.should_check_memory(bytes) {
            while system_memory().is_some_and(|m| m.available < self.headroom) {
                let Some(old) = self.lock().evict_one() else { break };
                drop(old);
            }
        }
        drop(gone);
    }

    fn should_check_memory(&mut self, bytes: usize) -> bool {
        // Reading /proc/meminfo costs microseconds; do it for big entries or every 50 ms.
        let now = Instant::now();
        let due = self.last_memory_check.is_none_or(|t| now.duration_since(t).as_millis() >= 50);
        if bytes >= 16 << 20 || due {
            self.last_memory_check = Some(now);
            true
        } else {
            false
        }
    }

    pub fn clear(&mut self) {
        let gone = {
            let mut e = self.lock();
            let device: usize = e.lru.iter().map(|(_, r)| r.device_bytes).sum();
            let gone: Vec<_> = std::iter::from_fn(|| e.lru.pop_lru().map(|(_, r)| r)).collect();
            e.held.clear();
            let host = e.stats.bytes as u64;
            e.pool.release(Place::Host, host);
            e.pool.release(Place::Device, device as u64);
            e.stats.bytes = 0;
            gone
        };
        drop(gone);
    }

    pub fn stats(&self) -> CacheStats {
        let e = self.lock();
        CacheStats { entries: e.lru.len(), ..e.stats }
    }
}

impl Entries {
    /// Evicts the least recently used entry and returns it.
    fn evict_one(&mut self) -> Option<Arc<NodeResult>> {
        let (_, old) = self.lru.pop_lru()?;
        self.forget(&old);
        Some(old)
    }

    /// Evicts the least recently used entry that holds device memory, other than the most
    /// recently used of them, and returns it.
    fn evict_one_on_device(&mut self) -> Option<Arc<NodeResult>> {
        // (`iter` runs from the most recently used.)
        let mut holding = self.lru.iter().filter(|(_, r)| r.device_bytes > 0).map(|(s, _)| *s);
        let (Some(_newest), Some(sig)) = (holding.next(), holding.next_back()) else {
            return None;
        };
        self.remove(&sig)
    }

    fn remove(&mut self, sig: &Signature) -> Option<Arc<NodeResult>> {
        let old = self.lru.pop(sig)?;
        self.forget(&old);
        Some(old)
    }

    /// Counts a result coming in: its own bytes, and each piece of shared memory that no other
    /// cached result holds yet. Returns the host bytes it added.
    fn charge(&mut self, r: &NodeResult) -> usize {
        let mut host = r.bytes;
        for s in &r.shared {
            let held = self.held.entry(s.id).or_insert((0, s.bytes));
            held.0 += 1;
            if held.0 == 1 {
                host += held.1;
            }
        }
        self.stats.bytes += host;
        self.pool.charge(Place::Host, host as u64);
        self.pool.charge(Place::Device, r.device_bytes as u64);
        host
    }

    /// Counts a result going: its own bytes, and the shared memory no other cached result holds.
    fn release(&mut self, r: &NodeResult) {
        let mut host = r.bytes;
        for s in &r.shared {
            if let Some(held) = self.held.get_mut(&s.id) {
                held.0 -= 1;
                if held.0 == 0 {
                    host += held.1;
                    self.held.remove(&s.id);
                }
            }
        }
        self.stats.bytes -= host;
        self.pool.release(Place::Host, host as u64);
        self.pool.release(Place::Device, r.device_bytes as u64);
    }

    fn forget(&mut self, old: &NodeResult) {
        self.release(old);
        self.stats.evictions += 1;
    }
}

/// Device memory on request (ComfyUI loading a model, a merge out of room): results that hold
/// device memory and that nothing but the cache keeps alive go, least recently used first. One
/// a prompt still uses would free nothing by going, so it stays; in the image loop that is the
/// merged model being sampled, and the ones that go are the merges of earlier slider positions
/// (docs/architecture.md, "Memory").
impl GivesDevice for Mutex<Entries> {
    fn give_device(&self, bytes: u64) -> u64 {
        let mut gone = Vec::new();
        let mut given = 0u64;
        {
            let mut e = self.lock().unwrap_or_else(|e| e.into_inner());
            // (`iter` runs from the most recently used.)
            let idle: Vec<Signature> =
                e.lru.iter().rev().filter(|(_, r)| r.device_bytes > 0 && Arc::strong_count(r) == 1).map(|(s, _)| *s).collect();
            for sig in idle {
                if given >= bytes {
                    break;
                }
                if let Some(old) = e.remove(&sig) {
                    given += old.device_bytes as u64;
                    gone.push(old);
                }
            }
        }
        drop(gone);
        given
    }
}

pub struct SystemMemory {
    pub total: usize,
    pub available: usize,
}

/// Total and available memory from /proc/meminfo (Linux); `None` elsewhere.
pub fn system_memory() -> Option<SystemMemory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(SystemMemory { total: field("MemTotal:")?, available: field("MemAvailable:")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(b: u8) -> Signature {
        Signature([b; 32])
    }
    fn result(len: usize) -> Arc<NodeResult> {
        Arc::new(NodeResult::new(vec![vec![Value::String("x".repeat(len))]], None))
    }

    #[test]
    fn evicts_least_recent_by_bytes() {
        let one = result(1000).bytes;
        let mut c = OutputCache::new(CacheMode::Lru, one * 2 + 10);
        c.insert(sig(1), result(1000));
        c.insert(sig(2), result(1000));
        assert!(c.get(&sig(1)).is_some()); // 1 is now most recent
        c.insert(sig(3), result(1000));
        assert!(c.contains(&sig(1)));
        assert!(!c.contains(&sig(2)));
        assert!(c.contains(&sig(3)));
        assert!(c.stats().bytes <= one * 2 + 10);
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn evicts_while_the_shared_budget_is_over_its_limit() {
        let one = result(1000).bytes as u64;
        let budget = MemoryBudget::new(3 * one, 0);
        let other = budget.pool("widen.subtrees");
        let mut c = OutputCache::with_pool(CacheMode::Lru, budget.pool("outputs"));
        c.insert(sig(1), result(1000));
        c.insert(sig(2), result(1000));
        // Another cache of the same engine takes the rest of the budget: this one makes room.
        other.charge(Place::Host, one);
        c.insert(sig(3), result(1000));
        assert!(!c.contains(&sig(1)) && c.contains(&sig(2)) && c.contains(&sig(3)));
        assert_eq!(budget.used(Place::Host), 3 * one);
        c.clear();
        assert_eq!(budget.used(Place::Host), one, "clearing gives the bytes back");
    }

    /// A value keeping `.0` bytes of device memory alive.
    struct OnDevice(usize);

    impl crate::value::Opaque for OnDevice {
        fn type_name(&self) -> &str {
            "MODEL"
        }
        fn byte_size(&self) -> usize {
            100
        }
        fn device_byte_size(&self) -> usize {
            self.0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn on_device(bytes: usize) -> Arc<NodeResult> {
        Arc::new(NodeResult::new(vec![vec![Value::Handle(Arc::new(OnDevice(bytes)))]], None))
    }

    #[test]
    fn entries_holding_device_memory_give_way_to_the_newest_within_the_device_limit() {
        let budget = MemoryBudget::new(1 << 30, 2000);
        let mut c = OutputCache::with_pool(CacheMode::Lru, budget.pool("outputs"));
        c.insert(sig(9), result(10)); // host only: device pressure never evicts it
        c.insert(sig(1), on_device(1000));
        c.insert(sig(2), on_device(1000));
        assert_eq!(budget.used(Place::Device), 2000);
        c.insert(sig(3), on_device(1000));
        assert!(!c.contains(&sig(1)) && c.contains(&sig(2)) && c.contains(&sig(3)) && c.contains(&sig(9)));
        // One entry over the limit on its own is kept (the sampler's model); the rest go.
        c.insert(sig(4), on_device(5000));
        assert!(!c.contains(&sig(2)) && !c.contains(&sig(3)) && c.contains(&sig(4)) && c.contains(&sig(9)));
        assert_eq!(budget.used(Place::Device), 5000);
        // Later results without device memory (the sampler's, the decoder's) leave it there.
        c.insert(sig(10), result(10));
        c.insert(sig(11), result(10));
        assert!(c.contains(&sig(4)));
        c.clear();
        assert_eq!(budget.used(Place::Device), 0, "clearing gives the device bytes back");
    }

    #[test]
    fn the_budget_asks_for_device_memory_that_only_the_cache_keeps_alive() {
        let budget = MemoryBudget::new(1 << 30, 1 << 20);
        let mut c = OutputCache::with_pool(CacheMode::Lru, budget.pool("outputs"));
        c.insert(sig(9), result(10));
        c.insert(sig(1), on_device(1000));
        c.insert(sig(2), on_device(1000));
        c.insert(sig(3), on_device(1000));
        // The prompt running now holds the newest merge (the model it samples with).
        let in_use = c.get(&sig(3)).unwrap();
        // Asked for 1500 bytes: the two older merges go, least recently used first...
        assert_eq!(budget.give_device(1500), 2000);
        assert!(!c.contains(&sig(1)) && !c.contains(&sig(2)) && c.contains(&sig(3)) && c.contains(&sig(9)));
        assert_eq!(budget.used(Place::Device), 1000);
        // ...and the one in use stays whatever is asked: dropping it would free nothing.
        assert_eq!(budget.give_device(u64::MAX), 0);
        assert!(c.contains(&sig(3)));
        drop(in_use);
        c.insert(sig(4), on_device(1000));
        // Only as much as asked for (whole entries): the older one goes, the newer stays.
        assert_eq!(budget.give_device(1), 1000);
        assert!(!c.contains(&sig(3)) && c.contains(&sig(4)));
        assert_eq!((c.stats().entries, c.stats().evictions), (2, 3));
        // A cache that is gone is asked nothing.
        drop(c);
        assert_eq!(budget.give_device(u64::MAX), 0);
    }

    /// A value holding `.1` bytes of its own and the shared pieces `.0` (a model's clone).
    struct Holding(Vec<SharedBytes>, usize);

    impl crate::value::Opaque for Holding {
        fn type_name(&self) -> &str {
            "MODEL"
        }
        fn byte_size(&self) -> usize {
            self.1
        }
        fn shared_bytes(&self) -> &[SharedBytes] {
            &self.0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn holding(shared: &[(u64, usize)], own: usize) -> Arc<NodeResult> {
        let shared = shared.iter().map(|&(id, bytes)| SharedBytes { id, bytes }).collect();
        // The same piece twice in one result (a MODEL and its CLIP holding one module) counts once.
        let v = Value::Handle(Arc::new(Holding(shared, own)));
        Arc::new(NodeResult::new(vec![vec![v.clone()], vec![Value::List(vec![v])]], None))
    }

    /// Evicts one entry by its signature.
    fn evict(c: &mut OutputCache, s: &Signature) {
        c.lock().remove(s).expect("cached");
    }

    #[test]
    fn memory_several_results_hold_is_counted_once_while_any_holds_it() {
        const MODULE: usize = 1_000_000;
        let budget = MemoryBudget::new(10 * MODULE as u64, 0);
        let mut c = OutputCache::with_pool(CacheMode::Lru, budget.pool("outputs"));
        let base = holding(&[(7, MODULE)], 0);
        assert_eq!((base.shared.len(), base.total_bytes()), (1, base.bytes + MODULE));
        c.insert(sig(1), base.clone());
        let after_base = budget.used(Place::Host);
        // Three clones of the model, each with a LoRA's tensors of its own: the module once.
        for (i, lora) in [(2u8, 11u64), (3, 12), (4, 13)] {
            c.insert(sig(i), holding(&[(7, MODULE), (lora, 1000)], 100));
        }
        let one_clone = (holding(&[], 100).bytes + 1000) as u64;
        assert_eq!(budget.used(Place::Host), after_base + 3 * one_clone);
        assert_eq!(c.stats().bytes as u64, budget.used(Place::Host));
        // Evicting the loader's result frees nothing of the module while a clone holds it...
        evict(&mut c, &sig(1));
        assert_eq!(budget.used(Place::Host), after_base + 3 * one_clone - base.bytes as u64);
        // ...and the last clone going gives it back.
        for i in [2u8, 3, 4] {
            evict(&mut c, &sig(i));
        }
        assert_eq!((budget.used(Place::Host), c.stats().bytes), (0, 0));
        // The same result again under its signature keeps its pieces held (charged, then the
        // replaced one released).
        c.insert(sig(5), holding(&[(7, MODULE)], 0));
        let once = budget.used(Place::Host);
        c.insert(sig(5), holding(&[(7, MODULE)], 0));
        assert_eq!(budget.used(Place::Host), once);
        c.clear();
        assert_eq!(budget.used(Place::Host), 0);
    }

    #[test]
    fn shared_memory_counts_when_the_cache_makes_room() {
        const MODULE: usize = 1_000_000;
        // Room for one module and a little more: a second model's result pushes out the first
        // model and all its clones, since only then is its module given back.
        let budget = MemoryBudget::new(MODULE as u64 * 3 / 2, 0);
        let mut c = OutputCache::with_pool(CacheMode::Lru, budget.pool("outputs"));
        c.insert(sig(1), holding(&[(7, MODULE)], 0));
        c.insert(sig(2), holding(&[(7, MODULE)], 100));
        assert!(c.contains(&sig(1)) && c.contains(&sig(2)), "a clone fits beside its model");
        c.insert(sig(3), holding(&[(8, MODULE)], 0));
        assert!(!c.contains(&sig(1)) && !c.contains(&sig(2)) && c.contains(&sig(3)));
        assert!(budget.used(Place::Host) <= MODULE as u64 * 3 / 2);
        // A result larger than the limit on its own is not kept, shared memory included.
        c.insert(sig(4), holding(&[(9, 2 * MODULE)], 0));
        assert!(!c.contains(&sig(4)) && c.contains(&sig(3)));
    }

    #[test]
    fn none_mode_keeps_nothing() {
        let mut c = OutputCache::new(CacheMode::None, usize::MAX);
        c.insert(sig(1), result(10));
        assert!(c.get(&sig(1)).is_none());
    }

    #[test]
    fn oversized_entries_are_not_cached() {
        let mut c = OutputCache::new(CacheMode::Lru, 100);
        c.insert(sig(1), result(1000));
        assert_eq!(c.stats().entries, 0);
    }
}
