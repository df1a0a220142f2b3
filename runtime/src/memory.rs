//! One memory budget for every cache of an engine: one limit for host memory and one for device
//! memory, shared by named pools (the executor's node outputs, the WIDEN pack's subtree,
//! statistics and factor caches, its staging buffers). Each pool reports what it holds; a pool
//! that can give memory back evicts its own least recently used entries while the budget as a
//! whole is over its limit, so the pool that is growing is the one that makes room
//! (`docs/architecture.md`, "Memory").
//!
//! The budget only counts: it never allocates, and a pool that cannot shrink (page-locked
//! staging buffers in use) may push the total over the limit for a while. What each pool holds
//! is shown by `comfyrs run --json` and `-v`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

/// Where a pool's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Host,
    Device,
}

/// The limits and what every pool holds against them.
pub struct MemoryBudget {
    host_limit: AtomicU64,
    device_limit: AtomicU64,
    host_used: AtomicU64,
    device_used: AtomicU64,
    pools: Mutex<Vec<Arc<PoolCounters>>>,
    /// Who can give device memory back when something outside the budget needs it (ComfyUI
    /// loading a model): [`MemoryBudget::give_device`].
    givers: Mutex<Vec<Weak<dyn GivesDevice>>>,
}

/// A holder of device memory that can let some go on request, from any thread: the outputs
/// cache, whose older results can keep a merged model each on the device.
pub trait GivesDevice: Send + Sync {
    /// Lets go of up to about `bytes` of device memory; returns the bytes let go.
    fn give_device(&self, bytes: u64) -> u64;
}

struct PoolCounters {
    name: String,
    host: AtomicU64,
    device: AtomicU64,
}

impl PoolCounters {
    fn slot(&self, place: Place) -> &AtomicU64 {
        match place {
            Place::Host => &self.host,
            Place::Device => &self.device,
        }
    }
}

/// A named share of a [`MemoryBudget`]: what one cache holds. Cheap to clone; clones count into
/// the same pool.
#[derive(Clone)]
pub struct Pool {
    budget: Arc<MemoryBudget>,
    counters: Arc<PoolCounters>,
}

/// One pool's bytes, for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolUsage {
    pub name: String,
    pub host: u64,
    pub device: u64,
}

/// The budget as a whole, for reports (`--json`, `-v`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// Limits not set yet are `None` (`null` in JSON): the device's is set by the first engine
    /// that uses the device.
    pub host_limit: Option<u64>,
    pub device_limit: Option<u64>,
    pub host_used: u64,
    pub device_used: u64,
    pub pools: Vec<PoolUsage>,
}

/// A limit not known yet: the engine that uses the device works it out from the device's memory
/// the first time it needs it ([`MemoryBudget::resolve_limit`]).
pub const UNRESOLVED: u64 = u64::MAX;

impl MemoryBudget {
    /// A budget of `host_limit` bytes of host memory and `device_limit` bytes of device memory
    /// (either may be [`UNRESOLVED`]).
    pub fn new(host_limit: u64, device_limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            host_limit: AtomicU64::new(host_limit),
            device_limit: AtomicU64::new(device_limit),
            host_used: AtomicU64::new(0),
            device_used: AtomicU64::new(0),
            pools: Mutex::new(Vec::new()),
            givers: Mutex::new(Vec::new()),
        })
    }

    /// Adds a holder that [`MemoryBudget::give_device`] asks, for as long as it lives.
    pub fn add_device_giver(&self, giver: Weak<dyn GivesDevice>) {
        let mut givers = self.givers.lock().unwrap_or_else(|e| e.into_inner());
        givers.retain(|g| g.strong_count() > 0);
        givers.push(giver);
    }

    /// Asks the holders added with [`MemoryBudget::add_device_giver`], in the order they were
    /// added, to let go of `bytes` of device memory between them; returns what they let go.
    pub fn give_device(&self, bytes: u64) -> u64 {
        // Called without the lock held: a holder may take locks of its own.
        let givers: Vec<_> = self.givers.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
        let mut given = 0;
        for g in givers {
            if given >= bytes {
                break;
            }
            given += g.give_device(bytes - given);
        }
        given
    }

    /// The pool called `name`, created on first use (pools of one name share their counters, so
    /// an engine rebuilt on the same budget keeps reporting under the same names).
    pub fn pool(self: &Arc<Self>, name: &str) -> Pool {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let counters = match pools.iter().find(|p| p.name == name) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(PoolCounters { name: name.to_string(), host: AtomicU64::new(0), device: AtomicU64::new(0) });
                pools.push(p.clone());
                p
            }
        };
        Pool { budget: self.clone(), counters }
    }

    pub fn limit(&self, place: Place) -> u64 {
        match place {
            Place::Host => self.host_limit.load(Ordering::Relaxed),
            Place::Device => self.device_limit.load(Ordering::Relaxed),
        }
    }

    /// Sets the limit at `place` to `make()` if it is still [`UNRESOLVED`]; returns the limit.
    pub fn resolve_limit(&self, place: Place, make: impl FnOnce() -> u64) -> u64 {
        let slot = match place {
            Place::Host => &self.host_limit,
            Place::Device => &self.device_limit,
        };
        let current = slot.load(Ordering::Relaxed);
        if current != UNRESOLVED {
            return current;
        }
        let value = make();
        match slot.compare_exchange(UNRESOLVED, value, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => value,
            Err(other) => other,
        }
    }

    pub fn used(&self, place: Place) -> u64 {
        self.total(place).load(Ordering::Relaxed)
    }

    fn total(&self, place: Place) -> &AtomicU64 {
        match place {
            Place::Host => &self.host_used,
            Place::Device => &self.device_used,
        }
    }

    /// Bytes by which the budget is over its limit at `place` (0 when within it).
    pub fn excess(&self, place: Place) -> u64 {
        self.used(place).saturating_sub(self.limit(place))
    }

    pub fn usage(&self) -> MemoryUsage {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        MemoryUsage {
            host_limit: Some(self.limit(Place::Host)).filter(|&l| l != UNRESOLVED),
            device_limit: Some(self.limit(Place::Device)).filter(|&l| l != UNRESOLVED),
            host_used: self.used(Place::Host),
            device_used: self.used(Place::Device),
            pools: pools
                .iter()
                .map(|p| PoolUsage { name: p.name.clone(), host: p.host.load(Ordering::Relaxed), device: p.device.load(Ordering::Relaxed) })
                .collect(),
        }
    }
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.counters.name
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Counts `bytes` more held by this pool at `place`.
    pub fn charge(&self, place: Place, bytes: u64) {
        self.counters.slot(place).fetch_add(bytes, Ordering::Relaxed);
        self.budget.total(place).fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` given back. Never more than was charged: the counters saturate at zero.
    pub fn release(&self, place: Place, bytes: u64) {
        let sub = |a: &AtomicU64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(bytes)));
        };
        sub(self.counters.slot(place));
        sub(self.budget.total(place));
    }

    /// What this pool holds at `place`.
    pub fn used(&self, place: Place) -> u64 {
        self.counters.slot(place).load(Ordering::Relaxed)
    }

    /// Bytes by which the whole budget is over its limit at `place`: what this pool should give
    /// back, if it can, after growing.
    pub fn excess(&self, place: Place) -> u64 {
        self.budget.excess(place)
    }

    /// The whole budget's limit at `place`.
    pub fn limit(&self, place: Place) -> u64 {
        self.budget.limit(place)
    }
}

impl MemoryUsage {
    /// One line for logs: `host 1.2 GiB of 8.0 GiB (outputs 1.0 GiB, widen.subtrees 0.2 GiB)`.
    pub fn summary(&self) -> String {
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let side = |place: Place| {
            let (used, limit) = match place {
                Place::Host => (self.host_used, self.host_limit),
                Place::Device => (self.device_used, self.device_limit),
            };
            let parts: Vec<String> = self
                .pools
                .iter()
                .filter_map(|p| {
                    let b = if place == Place::Host { p.host } else { p.device };
                    (b > 0).then(|| format!("{} {}", p.name, gib(b)))
                })
                .collect();
            let limit = limit.map_or_else(|| "of a limit not yet set".to_string(), |l| format!("of {}", gib(l)));
            format!("{} {limit} ({})", gib(used), if parts.is_empty() { "empty".into() } else { parts.join(", ") })
        };
        format!("memory: host {}; device {}", side(Place::Host), side(Place::Device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_not_set_yet_reads_null_in_json() {
        let budget = MemoryBudget::new(1 << 30, UNRESOLVED);
        let json = serde_json::to_value(budget.usage()).unwrap();
        assert_eq!((json["host_limit"].as_u64(), json["device_limit"].is_null()), (Some(1 << 30), true), "{json}");
        budget.resolve_limit(Place::Device, || 4 << 30);
        assert_eq!(serde_json::to_value(budget.usage()).unwrap()["device_limit"].as_u64(), Some(4 << 30));
    }

    #[test]
    fn pools_count_into_one_budget_per_place() {
        let budget = MemoryBudget::new(100, 50);
        let outputs = budget.pool("outputs");
        let subtrees = budget.pool("widen.subtrees");
        outputs.charge(Place::Host, 60);
        subtrees.charge(Place::Host, 30);
        subtrees.charge(Place::Device, 70);
        assert_eq!(budget.used(Place::Host), 90);
        assert_eq!(subtrees.excess(Place::Host), 0);
        assert_eq!(outputs.excess(Place::Device), 20, "the device total is over, whoever asks");
        subtrees.charge(Place::Host, 20);
        assert_eq!(outputs.excess(Place::Host), 10);
        subtrees.release(Place::Host, 50);
        assert_eq!(subtrees.used(Place::Host), 0, "releases saturate at zero");
        assert_eq!(budget.used(Place::Host), 60);
        // Same name, same counters.
        budget.pool("outputs").charge(Place::Host, 1);
        assert_eq!(outputs.used(Place::Host), 61);
        let usage = budget.usage();
        assert_eq!(usage.pools.len(), 2);
        assert_eq!(usage.pools[0], PoolUsage { name: "outputs".into(), host: 61, device: 0 });
        assert!(usage.summary().contains("widen.subtrees"), "{}", usage.summary());
    }

    #[test]
    fn an_unresolved_limit_is_set_once() {
        let budget = MemoryBudget::new(10, UNRESOLVED);
        assert_eq!(budget.resolve_limit(Place::Device, || 7), 7);
        assert_eq!(budget.resolve_limit(Place::Device, || 9), 7, "already resolved");
        assert_eq!(budget.resolve_limit(Place::Host, || 9), 10, "given at creation");
    }
}
