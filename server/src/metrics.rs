//! `/metrics` (docs/server.md, "Metrics"): what the server's prompts did, per worker, in
//! Prometheus' text format. Counters are fed as outcomes are recorded (by the local executor
//! thread, or by the outcome route for a worker's report); the queue gauges are read from the
//! store at each scrape, so they cannot drift from the queue itself.

use std::sync::Mutex;

use comfyrs_runtime::executor::{NodeStatus, RunReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::{json, Value as Json};

use crate::store::{Outcome, Store, StoreError};

/// The `worker` label of prompts the server runs itself.
pub const LOCAL: &str = "local";

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PromptLabels {
    outcome: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class_type: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    class_type: String,
    status: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

type PromptSeconds = Family<WorkerLabels, Histogram, fn() -> Histogram>;

/// One node that ran (or came from the cache, or failed) in a prompt; nodes that never ran
/// (skipped after a failure, or not reached before an interrupt) are not samples.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSample {
    pub class_type: String,
    /// `executed`, `cached` or `failed`.
    pub status: &'static str,
    pub seconds: f64,
}

impl NodeSample {
    /// The nodes of a run report that did (or reused) work.
    pub fn from_report(report: &RunReport) -> Vec<NodeSample> {
        report
            .nodes
            .iter()
            .filter_map(|n| {
                let status = match n.status {
                    NodeStatus::Executed => "executed",
                    NodeStatus::Cached => "cached",
                    NodeStatus::Failed => "failed",
                    NodeStatus::Skipped { .. } | NodeStatus::NotRun => return None,
                };
                Some(NodeSample { class_type: n.class_type.clone(), status, seconds: n.seconds })
            })
            .collect()
    }

    /// As a worker's outcome report carries them: `[{"class_type", "status", "seconds"}]`.
    pub fn to_json(samples: &[NodeSample]) -> Json {
        json!(samples.iter().map(|s| json!({"class_type": s.class_type, "status": s.status, "seconds": s.seconds})).collect::<Vec<_>>())
    }

    /// A report's `nodes`; entries that are not samples are left out (a newer worker may say
    /// more than this server knows), and a missing field means none.
    pub fn from_json(nodes: Option<&Json>) -> Vec<NodeSample> {
        let Some(list) = nodes.and_then(Json::as_array) else { return Vec::new() };
        list.iter()
            .filter_map(|n| {
                let class_type = n.get("class_type")?.as_str()?.to_string();
                let status = match n.get("status")?.as_str()? {
                    "executed" => "executed",
                    "cached" => "cached",
                    "failed" => "failed",
                    _ => return None,
                };
                let seconds = n.get("seconds").and_then(Json::as_f64).filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(0.0);
                Some(NodeSample { class_type, status, seconds })
            })
            .collect()
    }
}

/// The server's metrics: an owned registry and the families fed into it.
pub struct Metrics {
    registry: Registry,
    pending: Gauge,
    running: Gauge,
    prompts: Family<PromptLabels, Counter>,
    prompt_seconds: PromptSeconds,
    node_seconds: Family<ClassLabels, Counter<f64>>,
    node_runs: Family<RunLabels, Counter>,
    /// With a broker: live workers by state, from their heartbeats at each scrape.
    workers: Family<StateLabels, Gauge>,
    /// One scrape at a time: the queue gauges are set, then encoded.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("comfyrs");
        let (pending, running) = (Gauge::default(), Gauge::default());
        let prompts = Family::<PromptLabels, Counter>::default();
        // 50 ms to about 14 minutes, doubling: a prompt of cached nodes up to a long sampling run.
        let prompt_seconds: PromptSeconds = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 15)));
        let node_seconds = Family::<ClassLabels, Counter<f64>>::default();
        let node_runs = Family::<RunLabels, Counter>::default();
        // (The encoder ends each HELP text with a period.)
        registry.register("queue_pending", "Prompts waiting in the queue (read from the store at each scrape)", pending.clone());
        registry.register(
            "queue_running",
            "Prompts running: on the local executor, or handed to the workers and not yet reported (read from the store at each scrape)",
            running.clone(),
        );
        registry.register("prompts", "Prompts whose outcome (completed, failed, cancelled) reached history, by the worker that ran them (local: this server)", prompts.clone());
        registry.register("prompt_seconds", "Run time of prompts whose outcome reached history, from their start to their end, by worker", prompt_seconds.clone());
        registry.register("node_seconds", "Seconds spent in nodes, by node class and worker (cache hits take about none)", node_seconds.clone());
        registry.register(
            "node_runs",
            "Nodes run, by class, status (executed, cached, failed) and worker; the cache hit rate is cached / (executed + cached)",
            node_runs.clone(),
        );
        let workers = Family::<StateLabels, Gauge>::default();
        registry.register("workers", "Live workers (their heartbeat is recent), busy or idle; only with a broker", workers.clone());
        Metrics { registry, pending, running, prompts, prompt_seconds, node_seconds, node_runs, workers, scrape: Mutex::new(()) }
    }

    /// The work a prompt's nodes did on `worker` (counted for every report: even a duplicate
    /// delivery's work was done).
    pub fn nodes(&self, worker: &str, samples: &[NodeSample]) {
        for s in samples {
            let class = ClassLabels { class_type: s.class_type.clone(), worker: worker.to_string() };
            self.node_seconds.get_or_create(&class).inc_by(s.seconds);
            let run = RunLabels { class_type: s.class_type.clone(), status: s.status.to_string(), worker: worker.to_string() };
            self.node_runs.get_or_create(&run).inc();
        }
    }

    /// A prompt's outcome reached history; `start_ms`..`end_ms` is its run.
    pub fn prompt(&self, worker: &str, outcome: Outcome, start_ms: i64, end_ms: i64) {
        self.prompts.get_or_create(&PromptLabels { outcome: outcome.as_str().to_string(), worker: worker.to_string() }).inc();
        let seconds = (end_ms - start_ms).max(0) as f64 / 1e3;
        self.prompt_seconds.get_or_create(&WorkerLabels { worker: worker.to_string() }).observe(seconds);
    }

    /// The exposition, with the queue gauges read from `store` now, and with a broker the
    /// workers' states from their heartbeats.
    pub fn render(&self, store: &Store, workers: Option<&[crate::broker::Heartbeat]>) -> Result<String, StoreError> {
        let (pending, running) = store.with_conn(|c| {
            let mut st = c.prepare_cached("SELECT running, count(*) FROM queue GROUP BY running")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?)))?;
            let (mut pending, mut running) = (0, 0);
            for row in rows {
                match row? {
                    (true, n) => running += n,
                    (false, n) => pending += n,
                }
            }
            Ok((pending, running))
        })?;
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.set(pending);
        self.running.set(running);
        if let Some(ws) = workers {
            let busy = ws.iter().filter(|w| w.prompt.is_some()).count() as i64;
            self.workers.get_or_create(&StateLabels { state: "busy".into() }).set(busy);
            self.workers.get_or_create(&StateLabels { state: "idle".into() }).set(ws.len() as i64 - busy);
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).expect("writing to a String does not fail");
        Ok(text)
    }
}
