//! One prompt as it travels to a worker.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::store::QueueItem;

/// A prompt the server accepted (validated, stored in its SQLite queue), for a worker to run.
/// The server's SQLite record stays the source of truth: a job carries what running needs, and
/// its `prompt_id` makes every later step idempotent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub prompt_id: String,
    /// ComfyUI's queue number (for messages and history).
    pub number: f64,
    /// The validated prompt (constants coerced).
    pub prompt: Json,
    /// The request's `extra_data` without secrets.
    pub extra_data: Json,
    /// Output node ids to execute.
    pub outputs: Vec<String>,
    /// The comfy.org credentials some API nodes read (Redis is private to a deployment; the
    /// worker that runs the prompt needs them).
    #[serde(default)]
    pub sensitive: Json,
    /// Milliseconds since the epoch when the server accepted it.
    pub create_time: i64,
    /// The affinity keys of its heavy nodes (docs/scale-out.md, "Cache affinity"): the worker
    /// that runs it announces them afterwards.
    #[serde(default)]
    pub affinity: Vec<String>,
}

impl Job {
    /// What a worker needs of a prompt the server queued, with the affinity keys of its heavy
    /// nodes.
    pub(crate) fn of(item: &QueueItem, registry: &comfyrs_runtime::Registry) -> Job {
        Job {
            prompt_id: item.prompt_id.clone(),
            number: item.number,
            prompt: item.prompt.clone(),
            extra_data: item.extra_data.clone(),
            outputs: item.outputs.clone(),
            sensitive: item.sensitive.clone(),
            create_time: item.create_time,
            affinity: super::affinity::keys(&item.prompt, registry),
        }
    }

    /// The queue record a worker runs it as (`deliveries`: its attempts so far).
    pub(crate) fn queue_item(&self, deliveries: u64) -> QueueItem {
        QueueItem {
            prompt_id: self.prompt_id.clone(),
            number: self.number,
            number_json: if self.number.fract() == 0.0 { json!(self.number as i64) } else { json!(self.number) },
            priority: 0,
            prompt: self.prompt.clone(),
            extra_data: self.extra_data.clone(),
            outputs: self.outputs.clone(),
            sensitive: self.sensitive.clone(),
            create_time: self.create_time,
            attempts: deliveries as i64,
        }
    }
}
