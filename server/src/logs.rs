//! The recent log for the frontend's terminal panel (`/internal/logs`): a bounded ring of
//! formatted events, filled by a `tracing_subscriber::Layer` the binary installs, and the
//! sockets that asked to have new entries pushed to them (`logs` messages).

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Value as Json};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use crate::hub::{Frame, Hub};

/// ComfyUI keeps the last 300 writes.
pub const DEFAULT_CAPACITY: usize = 300;

/// Entries pushed to subscribed sockets in one `logs` message at most.
const BATCH: usize = 256;

/// One log line: when (RFC 3339) and the text, newline included.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub t: String,
    pub m: String,
}

/// The last `capacity` log entries. The binary creates one, installs [`LogRing::layer`] in its
/// subscriber, and hands it to the server in [`crate::ServeOptions::logs`].
pub struct LogRing {
    entries: Mutex<VecDeque<Entry>>,
    capacity: usize,
    new: broadcast::Sender<Entry>,
}

impl std::fmt::Debug for LogRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRing").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl LogRing {
    pub fn new(capacity: usize) -> Arc<LogRing> {
        let capacity = capacity.max(1);
        Arc::new(LogRing { entries: Mutex::new(VecDeque::with_capacity(capacity)), capacity, new: broadcast::channel(capacity).0 })
    }

    /// The layer that records every event it sees into this ring.
    pub fn layer(self: &Arc<Self>) -> LogLayer {
        LogLayer { ring: self.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, text: String) {
        let mut t = String::new();
        if SystemTime.format_time(&mut Writer::new(&mut t)).is_err() {
            t.clear();
        }
        let entry = Entry { t, m: text };
        {
            let mut e = self.lock();
            if e.len() == self.capacity {
                e.pop_front();
            }
            e.push_back(entry.clone());
        }
        // No receiver (no server running) is fine.
        let _ = self.new.send(entry);
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().iter().cloned().collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.new.subscribe()
    }
}

/// Records events into a [`LogRing`] as `LEVEL target: message key=value...` lines.
pub struct LogLayer {
    ring: Arc<LogRing>,
}

struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        let meta = event.metadata();
        self.ring.push(format!("{} {}: {}\n", meta.level(), meta.target(), line.0));
    }
}

/// The terminal size the panel lays the log out for: the server's `COLUMNS`/`LINES` when set
/// (it usually runs without a terminal), else 80x24 as ComfyUI falls back to.
pub fn size() -> Json {
    let dim = |k: &str, d: u32| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(d);
    json!({"cols": dim("COLUMNS", 80), "rows": dim("LINES", 24)})
}

/// The sockets that get `logs` messages.
#[derive(Default)]
pub struct Subscribers(Mutex<HashSet<String>>);

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes or unsubscribes a client; sockets that went away are forgotten here, so the
    /// set stays as small as the set of connected clients.
    pub fn set(&self, hub: &Hub, client_id: &str, enabled: bool) {
        let mut s = self.lock();
        s.retain(|c| hub.connected(c));
        if enabled {
            s.insert(client_id.to_string());
        } else {
            s.remove(client_id);
        }
    }
}

/// Pushes new entries to subscribed sockets until `closing` flips.
pub async fn forward(ring: Arc<LogRing>, hub: Arc<Hub>, subscribers: Arc<Subscribers>, mut closing: tokio::sync::watch::Receiver<bool>) {
    let mut rx = ring.subscribe();
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = closing.changed() => return,
        };
        let mut batch = match first {
            Ok(e) => vec![e],
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let clients: Vec<String> = subscribers.lock().iter().cloned().collect();
        if clients.is_empty() {
            continue;
        }
        let frame = Frame::event("logs", json!({"entries": batch, "size": size()}));
        for c in clients {
            hub.send(Some(&c), frame.clone());
        }
    }
}
