//! The outputs cache: node results keyed by signature, bounded by bytes.

use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;
use serde_json::{Map, Value as Json};

use crate::memory::{MemoryBudget, Place, Pool};
use crate::signature::Signature;
use crate::value::Value;

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
    pub bytes: usize,
    /// Device memory the outputs keep alive ([`Value::device_byte_size`]).
    pub device_bytes: usize,
}

impl NodeResult {
    pub fn new(outputs: Vec<Vec<Value>>, ui: Option<Map<String, Json>>) -> Self {
        let bytes = outputs.iter().flatten().map(Value::byte_size).sum::<usize>()
            + ui.as_ref().map(|u| Json::Object(u.clone()).to_string().len()).unwrap_or(0)
            + 64;
        let device_bytes = outputs.iter().flatten().map(Value::device_byte_size).sum();
        NodeResult { outputs, ui, bytes, device_bytes }
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

pub struct OutputCache {
    mode: CacheMode,
    /// Its share of the engine's memory budget: it evicts while the budget as a whole is over
    /// its host limit.
    pool: Pool,
    /// Minimum available system memory to keep in `RamPressure` mode.
    headroom: usize,
    entries: LruCache<Signature, Arc<NodeResult>>,
    stats: CacheStats,
    last_memory_check: Option<Instant>,
}

impl OutputCache {
    /// A cache with a budget of its own: `max_bytes` of host memory.
    pub fn new(mode: CacheMode, max_bytes: usize) -> Self {
        Self::with_pool(mode, MemoryBudget::new(max_bytes as u64, 0).pool("outputs"))
    }

    /// A cache counted in `pool` (the engine's budget, shared with its other caches).
    pub fn with_pool(mode: CacheMode, pool: Pool) -> Self {
        let total = system_memory().map(|m| m.total).unwrap_or(8 << 30);
        // ComfyUI's active headroom: 10% of RAM, clamped to 2..10 GB.
        let headroom = (total / 10).clamp(2 << 30, 10 << 30).min(total / 2);
        OutputCache { mode, pool, headroom, entries: LruCache::unbounded(), stats: CacheStats::default(), last_memory_check: None }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// Looks up a result, counting the hit or miss and marking it recently used.
    pub fn get(&mut self, sig: &Signature) -> Option<Arc<NodeResult>> {
        let r = self.entries.get(sig).cloned();
        if r.is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        r
    }

    pub fn contains(&self, sig: &Signature) -> bool {
        self.entries.contains(sig)
    }

    pub fn insert(&mut self, sig: Signature, result: Arc<NodeResult>) {
        if self.mode == CacheMode::None {
            return;
        }
        let bytes = result.bytes;
        if bytes as u64 > self.pool.limit(Place::Host) {
            return; // would evict everything and still not fit
        }
        let device_bytes = result.device_bytes as u64;
        if let Some(old) = self.entries.put(sig, result) {
            self.stats.bytes -= old.bytes;
            self.pool.release(Place::Host, old.bytes as u64);
            self.pool.release(Place::Device, old.device_bytes as u64);
        }
        self.stats.bytes += bytes;
        self.pool.charge(Place::Host, bytes as u64);
        self.pool.charge(Place::Device, device_bytes);
        while self.pool.excess(Place::Host) > 0 && !self.entries.is_empty() {
            self.evict_one();
        }
        // Device memory: older entries holding some go first; the most recent of them stays, as
        // the model a sampler is about to use (a merge's other caches give way to it by their own
        // rules).
        while self.pool.excess(Place::Device) > 0 && self.evict_one_on_device() {}
        if self.mode == CacheMode::RamPressure && self.should_check_memory(bytes) {
            while !self.entries.is_empty() && system_memory().is_some_and(|m| m.available < self.headroom) {
                self.evict_one();
            }
        }
        self.stats.entries = self.entries.len();
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

    fn evict_one(&mut self) {
        if let Some((_, old)) = self.entries.pop_lru() {
            self.forget(&old);
        }
        self.stats.entries = self.entries.len();
    }

    /// Evicts the least recently used entry that holds device memory, other than the most
    /// recently used of them; whether there was one.
    fn evict_one_on_device(&mut self) -> bool {
        // (`iter` runs from the most recently used.)
        let mut holding = self.entries.iter().filter(|(_, r)| r.device_bytes > 0).map(|(s, _)| *s);
        let (Some(_newest), Some(sig)) = (holding.next(), holding.next_back()) else {
            return false;
        };
        if let Some(old) = self.entries.pop(&sig) {
            self.forget(&old);
        }
        self.stats.entries = self.entries.len();
        true
    }

    fn forget(&mut self, old: &NodeResult) {
        self.stats.bytes -= old.bytes;
        self.pool.release(Place::Host, old.bytes as u64);
        self.pool.release(Place::Device, old.device_bytes as u64);
        self.stats.evictions += 1;
    }

    pub fn clear(&mut self) {
        let device: usize = self.entries.iter().map(|(_, r)| r.device_bytes).sum();
        self.entries.clear();
        self.pool.release(Place::Host, self.stats.bytes as u64);
        self.pool.release(Place::Device, device as u64);
        self.stats.bytes = 0;
        self.stats.entries = 0;
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.entries.len(), ..self.stats }
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
