//! One prompt as it travels to a worker.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

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
