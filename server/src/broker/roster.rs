//! Who is working (docs/scale-out.md, "Observability"): every worker writes a heartbeat (its
//! device, the prompt it runs, how many it ran, the heavy results its caches hold) under
//! `<ns>:worker:<name>` every few seconds, expiring after three missed beats. The server reads
//! them for `/comfyrs/workers`, `/system_stats`, `/api/jobs` and the dispatcher's affinity;
//! `comfyrs workers` prints them.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{BrokerError, Namespace};

/// How often a worker beats; a heartbeat expires after three missed ones.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// One worker as its last heartbeat describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    pub host: String,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub pid: u32,
    /// Milliseconds since the epoch: when the worker started, and when it wrote this.
    pub started: i64,
    pub at: i64,
    /// The prompt it runs now.
    pub prompt: Option<String>,
    /// Prompts it finished since it started.
    pub done: u64,
    /// The affinity keys of the heavy results its caches hold (docs/scale-out.md, "Cache
    /// affinity"), hex.
    #[serde(default)]
    pub warm: Vec<String>,
    /// Its lease in milliseconds (`comfyrs worker --lease`); 0 from a worker that did not say.
    #[serde(default)]
    pub lease_ms: u64,
}

impl Heartbeat {
    /// How long a prompt it claimed stays its own without a renewal.
    pub fn lease(&self) -> std::time::Duration {
        match self.lease_ms {
            0 => super::DEFAULT_LEASE,
            ms => std::time::Duration::from_millis(ms),
        }
    }
}

/// The heartbeats of one namespace.
#[derive(Clone)]
pub struct Roster {
    url: String,
    ns: Namespace,
    cmd: ConnectionManager,
}

impl Roster {
    pub async fn connect(url: &str, ns: &Namespace) -> Result<Roster, BrokerError> {
        Ok(Roster { url: url.to_string(), ns: ns.clone(), cmd: super::conn::manager(url, false).await? })
    }

    fn err(&self, source: redis::RedisError) -> BrokerError {
        BrokerError::Redis { url: self.url.clone(), source }
    }

    /// Writes `hb`, to expire after three beats.
    pub async fn beat(&self, hb: &Heartbeat) -> Result<(), BrokerError> {
        let body = serde_json::to_string(hb).expect("a heartbeat serializes");
        let ttl = (HEARTBEAT * 3).as_millis() as u64;
        self.cmd.clone().pset_ex(self.ns.worker(&hb.name), body, ttl).await.map_err(|e| self.err(e))
    }

    /// A worker stopping says so at once (instead of expiring).
    pub async fn leave(&self, name: &str) -> Result<(), BrokerError> {
        self.cmd.clone().del(self.ns.worker(name)).await.map_err(|e| self.err(e))
    }

    /// Every live worker, by name.
    pub async fn list(&self) -> Result<Vec<Heartbeat>, BrokerError> {
        let pattern = format!("{}*", self.ns.worker(""));
        let mut keys: Vec<String> = Vec::new();
        {
            let mut con = self.cmd.clone();
            let mut it = con.scan_match::<_, String>(&pattern).await.map_err(|e| self.err(e))?;
            while let Some(k) = futures_util::StreamExt::next(&mut it).await {
                keys.push(k.map_err(|e| self.err(e))?);
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let bodies: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut self.cmd.clone()).await.map_err(|e| self.err(e))?;
        let mut workers: Vec<Heartbeat> = bodies.into_iter().flatten().filter_map(|b| serde_json::from_str(&b).ok()).collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }
}
