//! Run events: what the terminal progress display and WebSocket listeners see.

use serde_json::{Map, Value as Json};

#[derive(Clone, Debug)]
pub enum Event {
    /// A prompt began; `nodes` counts the nodes that will execute (cache misses).
    Start { prompt_id: String, nodes: usize },
    /// Nodes served from the cache: once right after `Start` (possibly empty) with what was
    /// cached when the prompt began, then one event per node found cached while running.
    Cached { prompt_id: String, nodes: Vec<String> },
    Executing { prompt_id: String, node: String, class_type: String },
    /// `node` expanded into a sub-graph (docs/comfyui.md, "Node expansion"): the ids it added,
    /// each with the id the UI shows it as (its display node), and how many of them will
    /// execute (those the prompt needs that are not cached).
    Expanded { prompt_id: String, node: String, added: Vec<(String, String)>, nodes: usize },
    Progress { prompt_id: String, node: String, value: u64, max: u64 },
    /// A node finished; `ui` is its UI output, if any.
    Executed { prompt_id: String, node: String, class_type: String, ui: Option<Map<String, Json>>, seconds: f64 },
    Error { prompt_id: String, node: String, class_type: String, message: String },
    Interrupted { prompt_id: String, node: Option<String> },
    /// A preview image of a running node (a sampler's step), encoded.
    Preview { prompt_id: String, node: String, format: ImageFormat, image: std::sync::Arc<[u8]> },
    /// A line of progress text for a node (ComfyUI's `send_progress_text`).
    ProgressText { prompt_id: String, node: String, text: String },
    /// A message a node sends to the client under its own name (ComfyUI's `send_sync`).
    Custom { prompt_id: String, node: String, name: String, data: Json },
    Done { prompt_id: String, success: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

/// A listener. Implementations must be cheap: they are called on the scheduler thread.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);

    /// Whether anyone looks at previews; when not, nodes skip encoding them.
    fn wants_previews(&self) -> bool {
        false
    }
}

/// Discards everything.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: &Event) {}
}

/// Fans one event out to several sinks.
pub struct Fanout(pub Vec<Box<dyn EventSink>>);

impl EventSink for Fanout {
    fn emit(&self, event: &Event) {
        for s in &self.0 {
            s.emit(event);
        }
    }
    fn wants_previews(&self) -> bool {
        self.0.iter().any(|s| s.wants_previews())
    }
}
