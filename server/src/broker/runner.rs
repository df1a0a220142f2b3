//! A worker (docs/scale-out.md, "Roles"): claims prompts from the stream, runs them with its
//! own executor, sends their messages back through the event stream, reports each outcome to
//! the server and only then acknowledges the entry. `comfyrs worker` is this loop around the
//! binary's engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comfyrs_runtime::executor::{Executor, RunOptions};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, watch};

use super::uploads::Uploads;
use super::pulse::Pulse;
use super::backoff::Backoff;
use super::{BrokerSettings, ControlMessage, ControlSubscriber, Delivery, EventLog, Lease, Outgoing, PromptQueue};
use crate::host::Host;
use crate::messages::{Message, Outbox, PromptEvents};
use crate::time::now_ms;
use crate::worker::{hidden_extra, record, Ran};

/// What a worker is told at start.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub broker: BrokerSettings,
    /// This worker's consumer name (unique per worker: `host:device` by default).
    pub name: String,
    /// The server's base URL (`http://HOST:PORT`), where outcomes are reported.
    pub server: String,
    /// The server's bearer token, when it requires one.
    pub auth_token: Option<String>,
    /// How long a claimed prompt stays this worker's without a renewal (renewed every third).
    pub lease: Duration,
    /// Where this worker's nodes write their files (uploaded to the server from there).
    pub output_dir: PathBuf,
    /// Where this worker's nodes write temporary files (previews; uploaded likewise).
    pub temp_dir: PathBuf,
    /// The device it computes on (`cpu`, `cuda:0`), as its heartbeat tells.
    pub device: String,
}

/// Runs prompts until `stop` turns true (the prompt running then is interrupted and left to
/// another worker). Unreachable Redis or server: retried with backoff, said in the log.
pub async fn run_worker(opts: WorkerOptions, host: Arc<dyn Host>, mut stop: watch::Receiver<bool>) {
    let url = opts.broker.url.clone();
    let queue = loop {
        let q = match PromptQueue::connect(&url, &opts.broker.namespace).await {
            Ok(q) => q.for_worker(&opts.name).await,
            Err(e) => Err(e),
        };
        match q {
            Ok(q) => break q,
            Err(e) => {
                tracing::warn!("worker {}: {e}; retrying in 2 s", opts.name);
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(2)) => {}, _ = stop.changed() => return }
            }
        }
    };
    let events = loop {
        match EventLog::connection(&url).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("worker {}: {e}; retrying in 2 s", opts.name);
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(2)) => {}, _ = stop.changed() => return }
            }
        }
    };
    let uploads = Arc::new(Uploads::new(&opts.server, opts.auth_token.clone(), opts.output_dir.clone(), opts.temp_dir.clone()));
    let mut executor = Some(host.executor());
    let interrupt = executor.as_ref().expect("set").interrupt.clone();
    let pulse = Arc::new(Pulse::new(&opts.name, &opts.device, opts.lease, &opts.broker));
    tokio::spawn(obey(opts.clone(), pulse.clone(), interrupt.clone(), stop.clone()));
    let beating = tokio::spawn(pulse.clone().run(stop.clone()));
    tracing::info!("worker {} waiting for prompts at {url}", opts.name);
    let station = Station { opts: opts.clone(), host: host.clone(), queue: queue.clone(), events, uploads, pulse: pulse.clone() };
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let d = tokio::select! {
            d = queue.claim(&opts.name, opts.lease, Duration::from_secs(1)) => d,
            _ = stop.changed() => break,
        };
        let d = match d {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!("worker {}: {e}; retrying in {wait:?}", opts.name);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        pulse.set_running(Some(d.job.prompt_id.clone()));
        let exec = executor.take().expect("one prompt at a time");
        let exec = run_delivery(&station, exec, d, stop.clone()).await;
        executor = Some(exec);
        pulse.set_running(None);
    }
    // Its heartbeat goes at once rather than expiring.
    let _ = beating.await;
}

/// Interrupts the prompt running here when the server asks, subscribing again after a lost
/// connection.
async fn obey(opts: WorkerOptions, pulse: Arc<Pulse>, interrupt: comfyrs_runtime::interrupt::Interrupt, mut stop: watch::Receiver<bool>) {
    loop {
        let mut sub = match ControlSubscriber::subscribe(&opts.broker.url, &opts.broker.namespace).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("worker {}: cannot hear interrupts ({e}); retrying in 2 s", opts.name);
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(2)) => continue, _ = stop.changed() => return }
            }
        };
        loop {
            let msg = tokio::select! { m = sub.next() => m, _ = stop.changed() => return };
            let Some(msg) = msg else { break };
            let running = pulse.running();
            let hit = match (&msg, &running) {
                (ControlMessage::Interrupt { prompt_id }, Some(r)) => prompt_id == r,
                (ControlMessage::InterruptAll, Some(_)) => true,
                _ => false,
            };
            if hit {
                tracing::info!("worker {}: interrupting prompt {} as the server asked", opts.name, running.unwrap_or_default());
                interrupt.set();
            }
        }
    }
}

/// The messages of one delivery, in order, into the event stream (a task drains them).
struct StreamOutbox {
    tx: mpsc::UnboundedSender<(Message, bool)>,
}

impl Outbox for StreamOutbox {
    fn send(&self, _client: Option<&str>, or_all: bool, msg: Message) {
        let _ = self.tx.send((msg, or_all));
    }
    // Whether the client watches is the server's to know; previews are small.
    fn wants_previews(&self, _client: Option<&str>) -> bool {
        true
    }
    fn client_flag(&self, _client: &str, _name: &str) -> bool {
        false
    }
}

/// What every delivery a worker runs uses.
struct Station {
    opts: WorkerOptions,
    host: Arc<dyn Host>,
    queue: PromptQueue,
    /// The connection the event stream is written on.
    events: redis::aio::ConnectionManager,
    uploads: Arc<Uploads>,
    pulse: Arc<Pulse>,
}

async fn run_delivery(station: &Station, mut executor: Executor, d: Delivery, mut stop: watch::Receiver<bool>) -> Executor {
    let Station { opts, host, queue, events: conn, uploads, pulse } = station;
    let (host, conn) = (host.clone(), conn.clone());
    let id = d.job.prompt_id.clone();
    tracing::info!("worker {}: running prompt {id} (delivery {})", opts.name, d.deliveries);
    let item = d.job.queue_item(d.deliveries);
    // Messages: formatted as the server would, sent in order by one task.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Message, bool)>();
    let log = EventLog::new(&opts.broker.url, conn, &opts.broker.namespace, &id, d.deliveries);
    let (pid, delivery, up) = (id.clone(), d.deliveries, uploads.clone());
    let sender = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // What queued up meanwhile goes with it, in order, in one round trip.
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some((msg, or_all)) = next {
                batch.push(match msg {
                    Message::Event { kind, mut data } => {
                        // The files a node wrote are on the server before its client hears of them.
                        if kind == "executed" {
                            let (up, pid) = (up.clone(), pid.clone());
                            data = tokio::task::spawn_blocking(move || {
                                if let Some(ui) = data.get_mut("output") {
                                    up.rewrite_ui(&pid, delivery, ui);
                                }
                                data
                            })
                            .await
                            .expect("rewriting does not panic");
                        }
                        Outgoing { kind, data, bytes: None, to_all_without_client: or_all }
                    }
                    Message::Binary(b) => Outgoing { kind: "binary".into(), data: Json::Null, bytes: Some(b), to_all_without_client: or_all },
                });
                next = if batch.len() < 256 { rx.try_recv().ok() } else { None };
            }
            if let Err(e) = log.send_all(&batch).await {
                tracing::warn!("{} message(s) of prompt {pid} did not reach the server: {e}", batch.len());
            }
        }
    });
    let events = Arc::new(PromptEvents::with_outbox(Arc::new(StreamOutbox { tx }), id.clone(), item.client_id().map(str::to_string)));

    // The lease is renewed while the prompt runs; a lost lease (this worker was presumed dead)
    // interrupts it: the new owner runs it.
    let (done_tx, mut done_rx) = watch::channel(false);
    let renew = {
        let (queue, name, d, lease, interrupt) = (queue.clone(), opts.name.clone(), d.clone(), opts.lease, executor.interrupt.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(lease / 3) => {}
                    _ = done_rx.changed() => return true,
                    _ = stop.changed() => { interrupt.set(); return false }
                }
                match queue.renew(&name, &d).await {
                    Ok(Lease::Kept) => {}
                    // Its interrupt may have come before the run started (which clears it).
                    Ok(Lease::Cancelled) => interrupt.set(),
                    Ok(Lease::Lost) => {
                        tracing::warn!("worker {name}: lost the lease of its prompt (another worker took it over); interrupting it");
                        interrupt.set();
                        return false;
                    }
                    Err(e) => tracing::warn!("worker {name}: cannot renew the lease ({e}); retrying"),
                }
            }
        })
    };

    // Cancelled between its claim and now: the interrupt may have come before this worker knew
    // the prompt was its own.
    let cancelled = queue.cancelled(&id).await.unwrap_or_else(|e| {
        tracing::warn!("worker {}: cannot check whether prompt {id} was cancelled ({e}); running it", opts.name);
        false
    });
    let start_time = now_ms();
    let registry = host.registry();
    let output_dir = opts.output_dir.clone();
    let (ev, it) = (events.clone(), item.clone());
    let (executor, ran) = tokio::task::spawn_blocking(move || {
        let validated = Prompt::from_json(&it.prompt)
            .map_err(|e| e.to_string())
            .and_then(|p| validate(p, &registry, Some(&it.outputs)).map_err(|r| r.render()));
        let ran = match validated {
            _ if cancelled => Ran::Cancelled,
            Err(e) => Ran::Invalid(e),
            Ok(v) => {
                let opts = RunOptions {
                    prompt_id: it.prompt_id.clone(),
                    extra_pnginfo: it.extra_data.get("extra_pnginfo").cloned(),
                    output_dir,
                    events: ev.as_ref(),
                    extra_data: hidden_extra(&it),
                    registry: Some(&registry),
                };
                Ran::Report(Box::new(executor.run(&v, &opts)))
            }
        };
        (executor, ran)
    })
    .await
    .expect("the run does not panic");
    let _ = done_tx.send(true);
    let kept_lease = renew.await.unwrap_or(false);
    if !kept_lease {
        // Another worker runs it now, or this one is stopping: no report, no acknowledgement.
        drop(events);
        let _ = sender.await;
        return executor;
    }
    // Its heavy results are in this worker's caches now: said before the outcome, so the
    // client's next prompt (a slider change) finds this worker warm.
    pulse.finished(&d.job.affinity).await;
    // The server's metrics count the nodes' work per worker (docs/server.md, "Metrics").
    let nodes = match &ran {
        Ran::Report(r) => crate::metrics::NodeSample::to_json(&crate::metrics::NodeSample::from_report(r)),
        _ => json!([]),
    };
    let (entry, outcome, terminal) = record(&item, &events, ran);
    let (up, pid, delivery) = (uploads.clone(), id.clone(), d.deliveries);
    let entry = tokio::task::spawn_blocking(move || {
        let mut entry = entry;
        up.rewrite_outputs(&pid, delivery, &mut entry["outputs"]);
        entry
    })
    .await
    .expect("rewriting does not panic");
    let report = json!({
        "prompt_id": id, "outcome": outcome.as_str(), "entry": entry, "number": item.number,
        "create_time": item.create_time, "start_time": start_time, "end_time": now_ms(),
        "delivery": d.deliveries, "worker": opts.name, "nodes": nodes,
    });
    match report_outcome(opts, uploads.agent(), &report).await {
        Ok(recorded) => {
            tracing::info!("worker {}: prompt {id} {}{}", opts.name, outcome.as_str(), if recorded { "" } else { " (an earlier delivery's outcome was recorded)" });
            terminal.send(&events);
            events.to_client("executing", json!({"node": null, "prompt_id": id}));
            drop(events);
            let _ = sender.await;
            match queue.ack(&opts.name, &d).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("worker {}: prompt {id} was taken over before its acknowledgement", opts.name),
                Err(e) => tracing::warn!("worker {}: cannot acknowledge prompt {id} ({e}); its lease will lapse and the server ignores a second outcome", opts.name),
            }
        }
        Err(e) => {
            // Not acknowledged: its lease lapses and another worker runs it again.
            tracing::error!("worker {}: cannot report prompt {id} to {}: {e}", opts.name, opts.server);
            drop(events);
            let _ = sender.await;
        }
    }
    executor
}

/// POSTs the outcome; whether the server recorded it (false: an earlier delivery's was).
async fn report_outcome(opts: &WorkerOptions, agent: ureq::Agent, report: &Json) -> Result<bool, String> {
    let url = format!("{}/internal/comfyrs/outcome", opts.server.trim_end_matches('/'));
    let body = report.to_string();
    let token = opts.auth_token.clone();
    tokio::task::spawn_blocking(move || {
        let mut req = agent.post(&url).header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send(body).map_err(|e| format!("{url}: {e}"))?;
        let j: Json = serde_json::from_str(&resp.body_mut().read_to_string().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        j.get("recorded").and_then(Json::as_bool).ok_or_else(|| format!("{url} answered {j}"))
    })
    .await
    .map_err(|e| e.to_string())?
}
