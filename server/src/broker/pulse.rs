//! A worker's heartbeat (docs/scale-out.md, "Observability"): what it runs, how many it
//! finished, and the affinity keys of the heavy results its caches hold ("Cache affinity"),
//! written every [`HEARTBEAT`] and at once after each prompt ran.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;
use tokio::sync::watch;

use super::{BrokerSettings, Heartbeat, Roster, HEARTBEAT};
use crate::time::now_ms;

/// Keys announced at most (the most recent).
const WARM_KEYS: usize = 256;

pub(crate) struct Pulse {
    name: String,
    device: String,
    host: String,
    started: i64,
    /// Its lease, announced so the server's sweep of offers waits as long as this worker's own
    /// renewals allow (docs/scale-out.md, "Cache affinity").
    lease_ms: u64,
    broker: BrokerSettings,
    roster: tokio::sync::Mutex<Option<Roster>>,
    running: Mutex<Option<String>>,
    done: AtomicU64,
    /// Bounded like the caches behind it; which results the caches evicted is not tracked, so
    /// an old key may send a prompt here that loads its model again (slower, never wrong).
    warm: Mutex<LruCache<String, ()>>,
    /// The last write failed (said once in the log until one succeeds).
    failing: AtomicBool,
}

impl Pulse {
    pub fn new(name: &str, device: &str, lease: std::time::Duration, broker: &BrokerSettings) -> Pulse {
        Pulse {
            lease_ms: lease.as_millis() as u64,
            name: name.to_string(),
            device: device.to_string(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
            started: now_ms(),
            broker: broker.clone(),
            roster: tokio::sync::Mutex::new(None),
            running: Mutex::new(None),
            done: AtomicU64::new(0),
            warm: Mutex::new(LruCache::new(NonZeroUsize::new(WARM_KEYS).expect("not zero"))),
            failing: AtomicBool::new(false),
        }
    }

    /// The prompt this worker runs now.
    pub fn running(&self) -> Option<String> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A prompt starts (`Some`) or ends (`None`).
    pub fn set_running(&self, prompt: Option<String>) {
        if prompt.is_none() {
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = prompt;
    }

    /// A prompt ran: its heavy results' keys are announced now.
    pub async fn finished(&self, affinity: &[String]) {
        if affinity.is_empty() {
            return;
        }
        {
            let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            for k in affinity {
                w.put(k.clone(), ());
            }
        }
        self.beat().await;
    }

    /// Writes the heartbeat once.
    pub async fn beat(&self) {
        let mut roster = self.roster.lock().await;
        if roster.is_none() {
            *roster = Roster::connect(&self.broker.url, &self.broker.namespace).await.ok();
        }
        let Some(r) = roster.as_ref() else { return };
        let hb = Heartbeat {
            name: self.name.clone(),
            host: self.host.clone(),
            device: self.device.clone(),
            pid: std::process::id(),
            started: self.started,
            at: now_ms(),
            prompt: self.running(),
            done: self.done.load(Ordering::Relaxed),
            warm: self.warm.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, _)| k.clone()).collect(),
            lease_ms: self.lease_ms,
        };
        match r.beat(&hb).await {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("worker {}: cannot write its heartbeat ({e}); retrying", self.name);
                }
            }
        }
    }

    /// Beats every [`HEARTBEAT`] until `stop`, then removes the heartbeat (a stopped worker
    /// leaves the list at once instead of expiring).
    pub async fn run(self: std::sync::Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            self.beat().await;
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.changed() => break,
            }
        }
        if let Some(r) = self.roster.lock().await.as_ref() {
            let _ = r.leave(&self.name).await;
        }
    }
}
