//! Interrupts and cancellations, from the server to whichever worker runs the prompt: Redis
//! publish/subscribe (a worker that is not connected at that moment is not running the prompt
//! either; one that reconnects subscribes again).

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{BrokerError, Namespace};

/// What the server asks of the workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Stop running this prompt (`/interrupt` naming it, or `/api/jobs/{id}/cancel`).
    Interrupt { prompt_id: String },
    /// Stop whatever runs (`/interrupt` without a prompt id).
    InterruptAll,
}

/// The server's side: publishes control messages.
#[derive(Clone)]
pub struct ControlChannel {
    url: String,
    channel: String,
    conn: redis::aio::ConnectionManager,
}

impl ControlChannel {
    pub async fn connect(url: &str, ns: &Namespace) -> Result<ControlChannel, BrokerError> {
        let conn = super::conn::manager(url, false).await?;
        Ok(ControlChannel { url: url.to_string(), channel: ns.control(), conn })
    }

    /// Publishes `msg`; returns how many workers were listening.
    pub async fn send(&self, msg: &ControlMessage) -> Result<u64, BrokerError> {
        let body = serde_json::to_string(msg).expect("a control message serializes");
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(body)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| BrokerError::Redis { url: self.url.clone(), source })
    }
}

/// A worker's side: the control messages published while it is subscribed.
pub struct ControlSubscriber {
    stream: redis::aio::PubSubStream,
}

impl ControlSubscriber {
    /// Subscribes; messages published after this returns are received.
    pub async fn subscribe(url: &str, ns: &Namespace) -> Result<ControlSubscriber, BrokerError> {
        let err = |source| BrokerError::Redis { url: url.to_string(), source };
        let mut pubsub = super::conn::client(url)?.get_async_pubsub().await.map_err(err)?;
        pubsub.subscribe(ns.control()).await.map_err(err)?;
        Ok(ControlSubscriber { stream: pubsub.into_on_message() })
    }

    /// The next message; `None` when the connection closed (subscribe again). Messages that do
    /// not parse (another version's) are skipped with a warning.
    pub async fn next(&mut self) -> Option<ControlMessage> {
        while let Some(msg) = self.stream.next().await {
            let body: Vec<u8> = msg.get_payload_bytes().to_vec();
            match serde_json::from_slice(&body) {
                Ok(m) => return Some(m),
                Err(e) => tracing::warn!("ignoring a control message that does not parse ({e}): {}", String::from_utf8_lossy(&body)),
            }
        }
        None
    }
}
