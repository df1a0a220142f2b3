//! The WebSocket sessions and how a message reaches them. Senders never wait: each socket has
//! a bounded outbox drained by its own task; a client too slow to keep up with it is
//! disconnected (it reconnects with the same id and reads history), so memory stays bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

/// One WebSocket message.
#[derive(Clone, Debug)]
pub enum Frame {
    Text(Arc<str>),
    Binary(Arc<[u8]>),
}

impl Frame {
    /// `{"type": kind, "data": data}`.
    pub fn event(kind: &str, data: Json) -> Frame {
        Frame::Text(json!({"type": kind, "data": data}).to_string().into())
    }
}

/// Outbox size per socket. A 1,000-node prompt sends ~3,000 messages in a few milliseconds; the
/// socket task drains them as fast as the network takes them.
const OUTBOX: usize = 1 << 16;

struct Session {
    tx: mpsc::Sender<Frame>,
    generation: u64,
    /// The flags the client announced in its `feature_flags` message.
    flags: Json,
}

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, Session>>,
    generations: AtomicU64,
}

/// A connected socket's end of the hub.
pub struct Subscription {
    pub generation: u64,
    pub rx: mpsc::Receiver<Frame>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a socket under `client_id`, replacing an older socket with the same id.
    pub fn connect(&self, client_id: String) -> Subscription {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(client_id, Session { tx, generation, flags: Json::Null });
        Subscription { generation, rx }
    }

    /// Forgets a socket, unless a newer one took its id.
    pub fn disconnect(&self, client_id: &str, generation: u64) {
        let mut s = self.lock();
        if s.get(client_id).is_some_and(|x| x.generation == generation) {
            s.remove(client_id);
        }
    }

    pub fn connected(&self, client_id: &str) -> bool {
        self.lock().contains_key(client_id)
    }

    pub fn set_flags(&self, client_id: &str, flags: Json) {
        if let Some(s) = self.lock().get_mut(client_id) {
            s.flags = flags;
        }
    }

    /// Whether the client announced a feature flag as true.
    pub fn flag(&self, client_id: &str, name: &str) -> bool {
        self.lock().get(client_id).and_then(|s| s.flags.get(name)).and_then(Json::as_bool).unwrap_or(false)
    }

    pub fn any_connected(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Sends to one client (dropped when it is not connected, as ComfyUI does) or, with `None`,
    /// to every socket.
    pub fn send(&self, to: Option<&str>, frame: Frame) {
        let mut s = self.lock();
        match to {
            Some(id) => {
                if s.get(id).is_some_and(|sess| !deliver(id, sess, frame)) {
                    s.remove(id);
                }
            }
            None => s.retain(|id, sess| deliver(id, sess, frame.clone())),
        }
    }
}

/// Puts `frame` in the socket's outbox; whether the session stays (a closed socket goes quietly,
/// one whose outbox is full is disconnected, and says so).
fn deliver(id: &str, sess: &Session, frame: Frame) -> bool {
    match sess.tx.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!("client {id} does not keep up with its messages: disconnected");
            false
        }
    }
}
