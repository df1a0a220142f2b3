//! The node contract every implementation (native Rust, Python bridge) fulfils.

use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::{Map, Value as Json};

use crate::events::EventSink;
use crate::schema::NodeSchema;
use crate::value::Value;

/// One node class: its schema and its behaviour.
pub trait NodeClass: Send + Sync {
    /// The schema. Called for validation, planning and `/object_info`; implementations whose
    /// choices depend on the disk (model lists) may rebuild it on each call.
    fn schema(&self) -> Arc<NodeSchema>;

    /// Runs one call. `args` holds, per input name, the list of values this call sees: one
    /// element for ordinary nodes (the runtime maps them over ComfyUI's list semantics), whole
    /// lists for `INPUT_IS_LIST` nodes. Hidden inputs arrive in `ctx`, not in `args`.
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError>;

    /// ComfyUI's `IS_CHANGED` / `fingerprint_inputs`, called once per prompt with the node's id
    /// (its `UNIQUE_ID`) and its constant inputs only. `None`: the class has no fingerprint (the
    /// default).
    fn fingerprint(&self, _node_id: &str, _constants: &Args) -> Option<Fingerprint> {
        None
    }

    /// ComfyUI's `check_lazy_status`: given the inputs available so far (unevaluated lazy inputs
    /// are absent), the names of lazy inputs still needed.
    fn check_lazy_status(&self, _ctx: &ExecContext, _args: &Args) -> Result<Vec<String>, NodeError> {
        Ok(Vec::new())
    }

    /// ComfyUI's `VALIDATE_INPUTS`: extra checks on constants before anything runs, with the
    /// type each linked input receives (`input_types`). Each returned message becomes a
    /// `custom_validation_failed` error. An error means the check itself raised (ComfyUI's
    /// `exception_during_validation`).
    fn validate_inputs(&self, _constants: &Args, _received_types: &[(String, String)]) -> Result<Vec<(String, String)>, NodeError> {
        Ok(Vec::new())
    }

    /// Whether `validate_inputs` checks this input itself (ComfyUI: an input its
    /// `VALIDATE_INPUTS` names skips the built-in range and list checks, only its type is
    /// coerced; `input_types` named there also skips the link type checks).
    fn validates_input(&self, _name: &str) -> bool {
        false
    }

    /// Where calls run. Cheap nodes run inline on the scheduler thread (no hand-off cost);
    /// heavy ones on worker threads so independent branches overlap.
    fn placement(&self) -> Placement {
        Placement::Inline
    }
}

/// Where the scheduler runs a node's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Inline,
    Worker,
}

/// A change fingerprint. `Always` is ComfyUI's NaN: the node and everything below it re-run on
/// every prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Fingerprint {
    Value(Json),
    Always,
}

/// Per-input value lists of one call.
#[derive(Clone, Debug, Default)]
pub struct Args {
    pub values: IndexMap<String, Vec<Value>>,
}

impl Args {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).and_then(|l| l.first())
    }
    pub fn list(&self, name: &str) -> &[Value] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
    pub fn has(&self, name: &str) -> bool {
        matches!(self.get(name), Some(v) if !matches!(v, Value::None))
    }
    pub fn int(&self, name: &str) -> Result<i128, NodeError> {
        match self.get(name) {
            Some(Value::Int(i)) => Ok(*i),
            Some(Value::Bool(b)) => Ok(*b as i128),
            Some(Value::Float(f)) if f.fract() == 0.0 => Ok(*f as i128),
            other => Err(NodeError::input(name, "an INT", other)),
        }
    }
    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        match self.get(name) {
            Some(Value::Float(f)) => Ok(*f),
            Some(Value::Int(i)) => Ok(*i as f64),
            Some(Value::Bool(b)) => Ok(*b as i64 as f64),
            other => Err(NodeError::input(name, "a FLOAT", other)),
        }
    }
    pub fn boolean(&self, name: &str) -> Result<bool, NodeError> {
        match self.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Int(i)) => Ok(*i != 0),
            other => Err(NodeError::input(name, "a BOOLEAN", other)),
        }
    }
    pub fn string(&self, name: &str) -> Result<&str, NodeError> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(s),
            other => Err(NodeError::input(name, "a STRING", other)),
        }
    }
    pub fn insert(&mut self, name: &str, value: Value) {
        self.values.insert(name.to_string(), vec![value]);
    }
}

/// What one call returns: per output slot a list of values (one element for an ordinary slot,
/// any number for an `OUTPUT_IS_LIST` slot), and optional UI data (a dict of lists).
#[derive(Clone, Debug, Default)]
pub struct CallOutput {
    pub outputs: Vec<Vec<Value>>,
    pub ui: Option<Map<String, Json>>,
    /// The call expanded into a sub-graph (docs/comfyui.md, "Node expansion"): its nodes run,
    /// then the result named there becomes this node's output (`outputs` is not used).
    pub expansion: Option<crate::expansion::Expansion>,
}

impl CallOutput {
    /// One value per output slot.
    pub fn values(values: impl IntoIterator<Item = Value>) -> Self {
        CallOutput { outputs: values.into_iter().map(|v| vec![v]).collect(), ui: None, expansion: None }
    }
    pub fn with_ui(mut self, ui: Map<String, Json>) -> Self {
        self.ui = Some(ui);
        self
    }
}

/// What a node sees of the run it is part of.
pub struct ExecContext<'a> {
    pub prompt_id: &'a str,
    /// The node's id in the prompt (`UNIQUE_ID`).
    pub node_id: &'a str,
    /// Which call of the node this is, when ComfyUI's list semantics call it several times
    /// (0 otherwise); expansions name their nodes after it.
    pub call_index: usize,
    /// The prompt as queued (`PROMPT`).
    pub prompt: &'a Json,
    /// `extra_data.extra_pnginfo` (`EXTRA_PNGINFO`), usually `{"workflow": ...}`.
    pub extra_pnginfo: Option<&'a Json>,
    /// The request's `extra_data` entries hidden inputs read (the comfy.org credentials of
    /// `AUTH_TOKEN_COMFY_ORG` / `API_KEY_COMFY_ORG`, `COMFY_USAGE_SOURCE`), when it had any.
    pub extra_data: Option<&'a Json>,
    pub output_dir: &'a std::path::Path,
    pub events: &'a dyn EventSink,
    pub interrupt: &'a crate::interrupt::Interrupt,
}

impl ExecContext<'_> {
    /// Progress of a long call, forwarded to the terminal and WebSocket listeners.
    pub fn progress(&self, value: u64, max: u64) {
        self.events.emit(&crate::events::Event::Progress {
            prompt_id: self.prompt_id.to_string(),
            node: self.node_id.to_string(),
            value,
            max,
        });
    }
    /// Whether a preview would be seen (encoding one costs time).
    pub fn wants_previews(&self) -> bool {
        self.events.wants_previews()
    }
    /// A preview image of this node's work.
    pub fn preview(&self, format: crate::events::ImageFormat, image: std::sync::Arc<[u8]>) {
        self.events.emit(&crate::events::Event::Preview { prompt_id: self.prompt_id.to_string(), node: self.node_id.to_string(), format, image });
    }
    /// A line of progress text for this node.
    pub fn progress_text(&self, text: String) {
        self.events.emit(&crate::events::Event::ProgressText { prompt_id: self.prompt_id.to_string(), node: self.node_id.to_string(), text });
    }
    /// A message of the node's own to the client (`{"type": name, "data": data}`).
    pub fn custom_message(&self, name: String, data: Json) {
        self.events.emit(&crate::events::Event::Custom { prompt_id: self.prompt_id.to_string(), node: self.node_id.to_string(), name, data });
    }
    /// Fails with an interrupt if Ctrl-C or `/interrupt` arrived; long nodes call this between
    /// steps.
    pub fn check_interrupt(&self) -> Result<(), NodeError> {
        if self.interrupt.is_set() {
            Err(NodeError::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// A node failure, reported with ComfyUI's `execution_error` fields.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{message}")]
    Failed { message: String, exception_type: String, traceback: Vec<String> },
    #[error("interrupted")]
    Interrupted,
}

impl NodeError {
    pub fn msg(message: impl Into<String>) -> Self {
        NodeError::Failed { message: message.into(), exception_type: "RuntimeError".into(), traceback: Vec::new() }
    }
    pub fn value_error(message: impl Into<String>) -> Self {
        NodeError::Failed { message: message.into(), exception_type: "ValueError".into(), traceback: Vec::new() }
    }
    fn input(name: &str, wanted: &str, got: Option<&Value>) -> Self {
        let got = match got {
            None => "nothing".to_string(),
            Some(v) => format!("{} {:?}", v.kind(), v),
        };
        NodeError::Failed {
            message: format!("input '{name}' must be {wanted}, got {got}"),
            exception_type: "TypeError".into(),
            traceback: Vec::new(),
        }
    }
    pub fn exception_type(&self) -> &str {
        match self {
            NodeError::Failed { exception_type, .. } => exception_type,
            NodeError::Interrupted => "comfy.model_management.InterruptProcessingException",
        }
    }
}
