//! Events back from the workers: every message a local run would send its client, appended by
//! the worker running the prompt to one stream that the server reads in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use serde_json::Value as Json;

use super::{BrokerError, Namespace};

/// The stream keeps about this many recent events (a live feed: history records every
/// prompt's messages when it finishes).
const KEEP: usize = 100_000;

/// One message for a prompt's client.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerEvent {
    pub prompt_id: String,
    /// Which delivery of the prompt sent it (messages of a delivery that lost its lease are
    /// dropped by the server).
    pub delivery: u64,
    /// Per delivery, from 0 without gaps.
    pub seq: u64,
    /// ComfyUI's message type (`executing`, `progress`, `executed`, ...), or `preview` for a
    /// binary preview image.
    pub kind: String,
    pub data: Json,
    /// A binary message's payload (preview images), which travels as it is.
    pub bytes: Option<Vec<u8>>,
    /// Sent to every socket when the prompt has no client (ComfyUI does so for
    /// `progress_state` and interruptions); otherwise dropped then.
    pub to_all_without_client: bool,
}

/// A worker's sender of one prompt delivery's events.
pub struct EventLog {
    url: String,
    stream: String,
    conn: ConnectionManager,
    prompt_id: String,
    delivery: u64,
    seq: AtomicU64,
}

impl EventLog {
    /// Events of `prompt_id`'s delivery number `delivery`, over `conn` (a command connection;
    /// one per worker serves every prompt it runs).
    pub fn new(url: &str, conn: ConnectionManager, ns: &Namespace, prompt_id: &str, delivery: u64) -> EventLog {
        EventLog { url: url.to_string(), stream: ns.events(), conn, prompt_id: prompt_id.to_string(), delivery, seq: AtomicU64::new(0) }
    }

    /// A command connection for [`EventLog::new`].
    pub async fn connection(url: &str) -> Result<ConnectionManager, BrokerError> {
        super::conn::manager(url, false).await
    }

    /// Appends one event (sequence numbers follow the calls); see [`WorkerEvent`] for the fields.
    pub async fn send(&self, kind: &str, data: &Json, bytes: Option<&[u8]>, to_all_without_client: bool) -> Result<(), BrokerError> {
        self.send_all(&[Outgoing { kind: kind.to_string(), data: data.clone(), bytes: bytes.map(<[u8]>::to_vec), to_all_without_client }]).await
    }

    /// Appends `events` in their order in one round trip (a run's messages come in bursts:
    /// a node's `executing`, `progress_state`, `executed`, ...).
    pub async fn send_all(&self, events: &[Outgoing]) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        for e in events {
            let seq = self.seq.fetch_add(1, Ordering::SeqCst);
            let cmd = pipe.cmd("XADD").arg(&self.stream).arg("MAXLEN").arg("~").arg(KEEP).arg("*");
            cmd.arg("prompt_id").arg(&self.prompt_id).arg("delivery").arg(self.delivery).arg("seq").arg(seq);
            cmd.arg("kind").arg(&e.kind).arg("data").arg(e.data.to_string()).arg("all").arg(if e.to_all_without_client { "1" } else { "0" });
            if let Some(b) = &e.bytes {
                cmd.arg("bytes").arg(b.as_slice());
            }
            cmd.ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(|source| BrokerError::Redis { url: self.url.clone(), source })
    }
}

/// An event a worker is about to append (the prompt, delivery and sequence number are the
/// [`EventLog`]'s).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub kind: String,
    pub data: Json,
    pub bytes: Option<Vec<u8>>,
    pub to_all_without_client: bool,
}

/// The server's reader of the event stream, from where it last stopped.
pub struct EventReader {
    url: String,
    stream: String,
    conn: ConnectionManager,
    last: String,
}

impl EventReader {
    /// A reader of the events appended from now on.
    pub async fn new(url: &str, ns: &Namespace) -> Result<EventReader, BrokerError> {
        Self::resume(url, ns, "$").await
    }

    /// A reader of the events after entry `last` (what [`last_id`](Self::last_id) returned).
    pub async fn resume(url: &str, ns: &Namespace, last: &str) -> Result<EventReader, BrokerError> {
        let conn = super::conn::manager(url, true).await?;
        let mut r = EventReader { url: url.to_string(), stream: ns.events(), conn, last: last.to_string() };
        if r.last == "$" {
            // "$" means "after the newest entry when the read starts": pin it now, so that events
            // appended before the first read are not skipped.
            let newest: redis::streams::StreamRangeReply =
                r.conn.xrevrange_count(&r.stream, "+", "-", 1).await.map_err(|source| BrokerError::Redis { url: url.to_string(), source })?;
            r.last = newest.ids.first().map(|e| e.id.clone()).unwrap_or_else(|| "0-0".into());
        }
        Ok(r)
    }

    /// The id of the last entry read.
    pub fn last_id(&self) -> &str {
        &self.last
    }

    /// The next events in stream order, waiting up to `wait` when there are none yet.
    pub async fn next(&mut self, wait: Duration) -> Result<Vec<WorkerEvent>, BrokerError> {
        let opts = StreamReadOptions::default().count(512).block(wait.as_millis().max(1) as usize);
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[&self.stream], &[&self.last], &opts)
            .await
            .map_err(|source| BrokerError::Redis { url: self.url.clone(), source })?;
        let mut out = Vec::new();
        for id in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            self.last = id.id.clone();
            let text = |f: &str| match id.map.get(f) {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            let bad = |why: &str| BrokerError::Entry { stream: self.stream.clone(), entry: id.id.clone(), why: why.to_string() };
            let event = WorkerEvent {
                prompt_id: text("prompt_id").ok_or_else(|| bad("it has no prompt_id"))?,
                delivery: text("delivery").and_then(|s| s.parse().ok()).ok_or_else(|| bad("its delivery is not a number"))?,
                seq: text("seq").and_then(|s| s.parse().ok()).ok_or_else(|| bad("its seq is not a number"))?,
                kind: text("kind").ok_or_else(|| bad("it has no kind"))?,
                data: text("data").and_then(|s| serde_json::from_str(&s).ok()).ok_or_else(|| bad("its data is not JSON"))?,
                bytes: match id.map.get("bytes") {
                    Some(Value::BulkString(b)) => Some(b.clone()),
                    _ => None,
                },
                to_all_without_client: text("all").as_deref() == Some("1"),
            };
            out.push(event);
        }
        Ok(out)
    }
}
