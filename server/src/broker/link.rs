//! The server's side of the broker (docs/scale-out.md, "Dispatch"): a dispatcher thread that
//! moves queued prompts from SQLite into the stream, a task that passes the workers' events to
//! the clients, and the recording of the outcomes workers report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::backoff::Backoff;
use super::{BrokerError, ControlChannel, ControlMessage, EventReader, Heartbeat, Job, Namespace, PromptQueue, Roster, WorkerEvent, Withdrawal};
use crate::hub::Frame;
use crate::server::Shared;
use crate::store::{Finished, Store};

/// Where the broker is and how far ahead of the workers the dispatcher publishes.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    pub namespace: Namespace,
    /// Prompts waiting in the stream, unclaimed, beyond which the dispatcher leaves the rest in
    /// SQLite (where a prompt queued at the front can still overtake them).
    pub ahead: u64,
    /// How long a prompt offered to the worker with its models waits for it before any
    /// worker may take it (docs/scale-out.md, "Cache affinity").
    pub affinity_wait: Duration,
}

impl BrokerSettings {
    pub fn new(url: &str) -> BrokerSettings {
        BrokerSettings { url: url.to_string(), namespace: Namespace::default(), ahead: 4, affinity_wait: Duration::from_secs(2) }
    }
}

/// The connections and the little state the server keeps for dispatched prompts.
pub struct Link {
    pub settings: BrokerSettings,
    rt: tokio::runtime::Handle,
    queue: PromptQueue,
    /// Interrupts for the workers, sent in the order they were asked for by one task.
    control: tokio::sync::mpsc::UnboundedSender<ControlMessage>,
    /// Per dispatched prompt: its client, and the newest delivery that sent events.
    prompts: Mutex<HashMap<String, Dispatched>>,
    roster: Roster,
    /// The workers' last heartbeats, read every second by [`watch_workers`].
    workers: Mutex<Vec<Heartbeat>>,
}

#[derive(Clone, Default)]
struct Dispatched {
    client: Option<String>,
    delivery: u64,
    /// When its outcome was recorded.
    finished: Option<Instant>,
}

impl Link {
    /// Connects (the stream, its group and the control channel); must run inside a tokio runtime.
    pub async fn connect(settings: BrokerSettings) -> Result<Arc<Link>, BrokerError> {
        let queue = PromptQueue::connect(&settings.url, &settings.namespace).await?;
        let control = ControlChannel::connect(&settings.url, &settings.namespace).await?;
        let roster = Roster::connect(&settings.url, &settings.namespace).await?;
        let workers = Mutex::new(roster.list().await?);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ControlMessage>();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = control.send(&msg).await {
                    tracing::error!("cannot pass the interrupt to the workers: {e}");
                }
            }
        });
        Ok(Arc::new(Link { settings, rt: tokio::runtime::Handle::current(), queue, control: tx, prompts: Mutex::new(HashMap::new()), roster, workers }))
    }

    /// The live workers, as of their last heartbeats (at most a second old).
    pub fn workers(&self) -> Vec<Heartbeat> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The worker running `prompt_id`, by its heartbeat.
    pub fn worker_of(&self, prompt_id: &str) -> Option<String> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|w| w.prompt.as_deref() == Some(prompt_id)).map(|w| w.name.clone())
    }

    fn prompts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Dispatched>> {
        self.prompts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a server start: prompts the store marks running are either in the stream (a worker
    /// runs or will claim them: remembered for their events) or were lost with a Redis that
    /// kept no data (queued again, published anew).
    pub async fn reconcile(&self, store: &Store) -> Result<(), BrokerError> {
        let in_stream = self.queue.prompt_ids().await?;
        let running = match store.queue() {
            Ok((running, _)) => running,
            Err(e) => {
                tracing::error!("cannot read the queue: {e}");
                return Ok(());
            }
        };
        for item in running {
            if in_stream.contains(&item.prompt_id) {
                self.prompts().insert(item.prompt_id.clone(), Dispatched { client: item.client_id().map(str::to_string), ..Dispatched::default() });
                tracing::info!("prompt {} is with the workers", item.prompt_id);
            } else {
                tracing::warn!("prompt {} was handed to the workers but is not in the stream any more: queued again", item.prompt_id);
                if let Err(e) = store.requeue(&item.prompt_id) {
                    tracing::error!("cannot put prompt {} back in the queue: {e}", item.prompt_id);
                }
            }
        }
        Ok(())
    }

    /// Asks the worker running `prompt_id` (every worker, without one) to interrupt it.
    pub fn interrupt(&self, prompt_id: Option<&str>) {
        let msg = match prompt_id {
            Some(id) => ControlMessage::Interrupt { prompt_id: id.to_string() },
            None => ControlMessage::InterruptAll,
        };
        let _ = self.control.send(msg);
    }

    /// Whether the dispatcher handed `prompt_id` to the workers and no outcome is recorded.
    pub fn dispatched(&self, prompt_id: &str) -> bool {
        self.prompts().get(prompt_id).is_some_and(|d| d.finished.is_none())
    }
}

/// Stops a prompt handed to the workers; false when it is not with them (not dispatched, or
/// its outcome is recorded). One that no worker claimed yet is taken back from the stream and
/// leaves the queue without a history entry, as a cancelled pending prompt does; the worker
/// running one is told through the control channel and, in case it claimed the prompt but has
/// not started it, through a mark it checks before it starts and whenever it renews the lease.
pub async fn cancel(shared: &Shared, link: &Link, prompt_id: &str) -> Result<bool, BrokerError> {
    if !link.dispatched(prompt_id) {
        return Ok(false);
    }
    match link.queue.withdraw(prompt_id).await? {
        Withdrawal::Removed => {
            match shared.store.remove_dispatched(prompt_id) {
                Ok(Some(item)) => {
                    tracing::info!("prompt {prompt_id} cancelled before a worker took it");
                    link.prompts().remove(prompt_id);
                    shared.broadcast_status();
                    shared.dequeued(&item);
                }
                Ok(None) => {}
                Err(e) => tracing::error!("cannot remove cancelled prompt {prompt_id} from the queue: {e}"),
            }
        }
        Withdrawal::Running | Withdrawal::Absent => link.interrupt(Some(prompt_id)),
    }
    Ok(true)
}

/// The dispatcher thread: like the local executor thread, woken by new prompts, but it
/// publishes them instead of running them.
pub fn spawn_dispatcher(shared: Arc<Shared>, link: Arc<Link>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("comfyrs-dispatcher".into()).spawn(move || dispatch(&shared, &link))
}

fn dispatch(shared: &Shared, link: &Link) {
    let mut backoff = Backoff::new();
    while shared.control.wait_for_work() {
        loop {
            if shared.control.stopping() || shared.control.paused() {
                break;
            }
            // Keep only a few unclaimed prompts in the stream; poll while it is full (workers
            // claiming do not wake this thread).
            match link.rt.block_on(link.queue.waiting()) {
                Ok(n) if n >= link.settings.ahead => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!("the broker is unreachable ({e}); retrying in {wait:?}");
                    std::thread::sleep(wait);
                    continue;
                }
            }
            let item = match shared.store.take_next() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("cannot read the queue: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
            };
            link.prompts().insert(item.prompt_id.clone(), Dispatched { client: item.client_id().map(str::to_string), ..Dispatched::default() });
            match link.rt.block_on(hand_out(link, &Job::of(&item, &shared.registry))) {
                Ok((entry, offered)) => {
                    backoff.reset();
                    match offered {
                        Some(w) => tracing::info!("prompt {} offered to worker {w}, whose caches hold its models (entry {entry})", item.prompt_id),
                        None => tracing::info!("prompt {} handed to the workers (entry {entry})", item.prompt_id),
                    }
                    shared.broadcast_status();
                }
                Err(e) => {
                    // Back in the queue, first in line again; published when Redis answers.
                    link.prompts().remove(&item.prompt_id);
                    if let Err(e) = shared.store.requeue(&item.prompt_id) {
                        tracing::error!("cannot put prompt {} back in the queue: {e}", item.prompt_id);
                    }
                    let wait = backoff.next();
                    tracing::warn!("cannot hand prompt {} to the broker ({e}); retrying in {wait:?}", item.prompt_id);
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// Hands `job` to the workers: offered first to the worker whose caches hold most of its
/// heavy results (docs/scale-out.md, "Cache affinity"), else to whichever claims it.
async fn hand_out(link: &Link, job: &Job) -> Result<(String, Option<String>), BrokerError> {
    // Fresh heartbeats: a worker announces its warm results as a prompt ends, and the next
    // prompt (a slider change) may come a moment later.
    // A zero affinity wait turns offers off: every prompt goes to the shared stream.
    let workers = match job.affinity.is_empty() || link.settings.affinity_wait.is_zero() {
        true => Vec::new(),
        false => match link.roster.list().await {
            Ok(fresh) => {
                // The sweep judges offers by this list: a worker offered a prompt must be in it,
                // or the sweep, seeing it missing, would take the prompt from under it.
                *link.workers.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                fresh
            }
            Err(_) => link.workers(),
        },
    };
    match super::affinity::choose(&job.affinity, &workers) {
        Some(w) => Ok((link.queue.offer(job, w).await?, Some(w.to_string()))),
        None => Ok((link.queue.publish(job).await?, None)),
    }
}

/// Moves offers their worker did not claim within the affinity wait (or whose worker is gone)
/// to the shared stream, four times a second, until the server closes.
pub async fn sweep_offers(shared: Arc<Shared>, link: Arc<Link>) {
    let mut closing = shared.closing.subscribe();
    let mut failing = false;
    loop {
        tokio::select! { _ = tokio::time::sleep(Duration::from_millis(250)) => {}, _ = closing.changed() => return }
        let alive: Vec<(String, Duration)> = link.workers().iter().map(|w| (w.name.clone(), w.lease())).collect();
        match link.queue.sweep_offers(link.settings.affinity_wait, &alive).await {
            Ok(0) => failing = false,
            Ok(n) => {
                failing = false;
                tracing::info!("{n} prompt(s) offered to a busy or gone worker went to the shared queue");
            }
            Err(e) if !failing => {
                tracing::warn!("cannot move unclaimed offers ({e}); retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Reads the workers' heartbeats every second until the server closes.
pub async fn watch_workers(shared: Arc<Shared>, link: Arc<Link>) {
    let mut closing = shared.closing.subscribe();
    let mut failing = false;
    loop {
        match link.roster.list().await {
            Ok(w) => {
                *link.workers.lock().unwrap_or_else(|p| p.into_inner()) = w;
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!("cannot read the workers' heartbeats ({e}); retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = closing.changed() => return }
    }
}

/// Passes the workers' events to the clients until the server closes. Events of a delivery
/// older than one already heard from (its worker lost the lease) are dropped.
pub async fn forward_events(shared: Arc<Shared>, link: Arc<Link>) {
    let mut closing = shared.closing.subscribe();
    let mut reader = None;
    let mut backoff = Backoff::new();
    loop {
        if *closing.borrow() {
            return;
        }
        if reader.is_none() {
            match EventReader::new(&link.settings.url, &link.settings.namespace).await {
                Ok(r) => reader = Some(r),
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!("cannot read the workers' events ({e}); retrying in {wait:?}");
                    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = closing.changed() => return }
                    continue;
                }
            }
        }
        let r = reader.as_mut().expect("set above");
        let batch = tokio::select! {
            b = r.next(Duration::from_millis(500)) => b,
            _ = closing.changed() => return,
        };
        match batch {
            Ok(events) => {
                backoff.reset();
                for e in events {
                    deliver(&shared, &link, e);
                }
            }
            Err(e) if e.is_transient() => {
                let wait = backoff.next();
                tracing::warn!("lost the workers' events stream ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => tracing::error!("skipping an event: {e}"),
        }
    }
}

fn deliver(shared: &Shared, link: &Link, e: WorkerEvent) {
    let client = {
        let mut prompts = link.prompts();
        let known = prompts.get(&e.prompt_id).cloned();
        let d = match known {
            Some(d) => d,
            // Dispatched before a server restart: its client is in the queue record.
            None => match shared.store.queued(&e.prompt_id) {
                Ok(Some(item)) => Dispatched { client: item.client_id().map(str::to_string), ..Dispatched::default() },
                // Finished (its terminal messages come after the outcome) or unknown.
                _ => Dispatched { client: e.data.get("client_id").and_then(Json::as_str).map(str::to_string), ..Dispatched::default() },
            },
        };
        if e.delivery < d.delivery {
            return;
        }
        prompts.insert(e.prompt_id.clone(), Dispatched { client: d.client.clone(), delivery: e.delivery, finished: d.finished });
        d.client
    };
    let frame = match e.bytes {
        Some(b) => Frame::Binary(b.into()),
        None => Frame::event(&e.kind, e.data),
    };
    match client {
        Some(c) => shared.hub.send(Some(&c), frame),
        None if e.to_all_without_client => shared.hub.send(None, frame),
        None => {}
    }
}

/// A worker's report of how a prompt ended: recorded once (the first delivery to report wins).
/// Returns whether this report was recorded. Files uploaded by the deliveries that lost are
/// deleted (docs/scale-out.md, "Outputs").
pub fn record(shared: &Shared, link: &Link, f: &Finished, delivery: i64) -> Result<bool, crate::store::StoreError> {
    let recorded = shared.store.record_once(f)?;
    match shared.store.settle_uploads(&f.prompt_id, delivery, recorded) {
        Ok(losers) => crate::routes::discard_uploads(&shared.options, &losers),
        Err(e) => tracing::error!("cannot settle the files uploaded for prompt {}: {e}", f.prompt_id),
    }
    if recorded {
        tracing::info!("prompt {} {} on a worker", f.prompt_id, f.outcome.as_str());
        shared.broadcast_status();
        shared.finished(f);
        // Its terminal messages still come through the event stream after this, so the prompt
        // is remembered a while longer; prompts finished long ago are forgotten.
        let now = Instant::now();
        let mut prompts = link.prompts();
        if let Some(d) = prompts.get_mut(&f.prompt_id) {
            d.finished = Some(now);
        }
        prompts.retain(|_, d| d.finished.is_none_or(|t| now.duration_since(t) < FORGET_AFTER));
    }
    Ok(recorded)
}

/// How long a finished prompt's client is remembered for its last events.
const FORGET_AFTER: Duration = Duration::from_secs(60);
