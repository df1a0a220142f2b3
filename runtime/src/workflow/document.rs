//! Telling the two workflow formats apart (docs/comfyui.md, "API prompts" and "UI workflows").

use std::sync::Arc;

use serde_json::Value as Json;

use super::{ui_to_prompt_with, ConvertError, ConvertOptions, Converted};
use crate::prompt::{json_kind, parse_json, PromptError};
use crate::schema::NodeSchema;

/// A workflow document of either format.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    /// An API prompt: node id → `{class_type, inputs, _meta}`.
    Api(Json),
    /// A UI workflow as the frontend saves it (has a `nodes` array).
    Ui(Json),
}

/// Why a document is neither format.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FormatError {
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json { line: usize, column: usize, message: String },
    #[error("{0}")]
    NotAWorkflow(String),
}

impl From<PromptError> for FormatError {
    fn from(e: PromptError) -> Self {
        match e {
            PromptError::Json { line, column, message } => FormatError::Json { line, column, message },
            PromptError::Shape(m) => FormatError::NotAWorkflow(m),
        }
    }
}

const HOW_TO_FIX: &str = "save the workflow from the ComfyUI frontend (Workflow → Save, or Workflow → Export (API) for the API format)";

impl Document {
    /// Parses JSON text and detects its format; syntax errors carry line and column.
    pub fn parse(text: &str) -> Result<Document, FormatError> {
        Document::detect(parse_json(text)?)
    }

    /// Detects the format of a parsed document. Accepted shapes:
    /// - a UI workflow (an object with a `nodes` array);
    /// - a UI workflow wrapped as `{"workflow": {...}}`;
    /// - an API prompt (an object of node id → `{class_type, inputs}`);
    /// - the `/prompt` request envelope `{"prompt": {...}, "extra_data": ...}` (the prompt wins
    ///   over a workflow in `extra_data`); the `prompt` / `workflow` values may also be JSON
    ///   text, as in PNG metadata chunks.
    pub fn detect(json: Json) -> Result<Document, FormatError> {
        let Json::Object(obj) = &json else {
            return Err(FormatError::NotAWorkflow(format!(
                "the file holds {}, not a workflow: expected a JSON object (an API prompt or a UI workflow); {HOW_TO_FIX}",
                json_kind(&json)
            )));
        };
        if matches!(obj.get("nodes"), Some(Json::Array(_))) {
            return Ok(Document::Ui(json));
        }
        if let Some(p) = obj.get("prompt") {
            let p = unwrap_text(p, "prompt")?;
            if p.is_object() && (p.as_object().is_some_and(|m| m.is_empty()) || looks_like_api(&p)) {
                return Ok(Document::Api(p));
            }
            return Err(FormatError::NotAWorkflow(format!(
                "\"prompt\" holds {} that is not an API prompt (node id → {{class_type, inputs}}); {HOW_TO_FIX}",
                json_kind(&p)
            )));
        }
        if let Some(w) = obj.get("workflow") {
            let w = unwrap_text(w, "workflow")?;
            if matches!(w.get("nodes"), Some(Json::Array(_))) {
                return Ok(Document::Ui(w));
            }
            return Err(FormatError::NotAWorkflow(format!(
                "\"workflow\" holds {} without a \"nodes\" array, so it is not a UI workflow; {HOW_TO_FIX}",
                json_kind(&w)
            )));
        }
        if looks_like_api(&json) {
            return Ok(Document::Api(json));
        }
        if obj.is_empty() {
            return Err(FormatError::NotAWorkflow(format!("the file is an empty object: it has no nodes; {HOW_TO_FIX}")));
        }
        let keys: Vec<&str> = obj.keys().take(5).map(String::as_str).collect();
        Err(FormatError::NotAWorkflow(format!(
            "the file is neither an API prompt (node id → {{\"class_type\", \"inputs\"}}) nor a UI workflow (an object with a \"nodes\" array); its top-level keys are {keys:?}; {HOW_TO_FIX}"
        )))
    }

    /// The API prompt of this document: as is for the API format, converted for the UI format.
    pub fn into_prompt(
        self,
        schemas: &dyn Fn(&str) -> Option<Arc<NodeSchema>>,
        options: &ConvertOptions,
    ) -> Result<Converted, ConvertError> {
        match self {
            Document::Api(prompt) => Ok(Converted { prompt, warnings: Vec::new(), controls: Vec::new() }),
            Document::Ui(workflow) => ui_to_prompt_with(&workflow, schemas, options),
        }
    }

    pub fn is_ui(&self) -> bool {
        matches!(self, Document::Ui(_))
    }
}

/// A value that may be a JSON document stored as text (PNG chunks hold text).
fn unwrap_text(v: &Json, key: &str) -> Result<Json, FormatError> {
    match v {
        Json::String(s) => parse_json(s).map_err(|e| FormatError::NotAWorkflow(format!("\"{key}\" holds text that is not valid JSON ({e}); {HOW_TO_FIX}"))),
        other => Ok(other.clone()),
    }
}

/// An object some of whose values are node records with `class_type` or `inputs`.
fn looks_like_api(json: &Json) -> bool {
    json.as_object().is_some_and(|m| {
        !m.is_empty() && m.values().any(|v| v.get("class_type").is_some() || v.get("inputs").is_some_and(Json::is_object))
    })
}
