//! The API prompt format (docs/comfyui.md, "API prompts"): node id → `{class_type, inputs, _meta}`.

use indexmap::IndexMap;
use serde_json::{Map, Value as Json};

use crate::value::Value;

/// A prompt as submitted, inputs classified into links and constants. Node ids are opaque
/// strings; the runtime refers to nodes by their index in `nodes` once loaded.
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    pub nodes: IndexMap<String, PromptNode>,
}

#[derive(Clone, Debug)]
pub struct PromptNode {
    /// `None` when the record has no (string) `class_type`: a validation error, not a parse error.
    pub class_type: Option<String>,
    pub inputs: IndexMap<String, Input>,
    pub title: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Link(Link),
    Const(Value),
    /// An array that is neither a link nor a wrapped constant: `bad_linked_input` if declared.
    Malformed(Json),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    pub node: String,
    pub slot: usize,
}

/// Why a document is not a prompt at all (before any per-node validation).
#[derive(Clone, Debug, thiserror::Error)]
pub enum PromptError {
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json { line: usize, column: usize, message: String },
    #[error("{0}")]
    Shape(String),
}

impl Prompt {
    /// Parses JSON text; syntax errors carry line and column.
    pub fn parse(text: &str) -> Result<(Prompt, Json), PromptError> {
        let json: Json = parse_json(text)?;
        let prompt = Prompt::from_json(&json)?;
        Ok((prompt, json))
    }

    pub fn from_json(json: &Json) -> Result<Prompt, PromptError> {
        let obj = json
            .as_object()
            .ok_or_else(|| PromptError::Shape(format!("a prompt is a JSON object of node id → node, not {}", json_kind(json))))?;
        let mut nodes = IndexMap::with_capacity(obj.len());
        for (id, rec) in obj {
            nodes.insert(id.clone(), PromptNode::from_json(id, rec)?);
        }
        Ok(Prompt { nodes })
    }

    /// The prompt as JSON again (constants after coercion, links as `["id", slot]`).
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        for (id, n) in &self.nodes {
            let mut inputs = Map::new();
            for (k, v) in &n.inputs {
                inputs.insert(k.clone(), v.to_json());
            }
            let mut rec = Map::new();
            rec.insert("inputs".into(), Json::Object(inputs));
            rec.insert("class_type".into(), n.class_type.clone().map(Json::String).unwrap_or(Json::Null));
            if let Some(t) = &n.title {
                rec.insert("_meta".into(), serde_json::json!({ "title": t }));
            }
            m.insert(id.clone(), Json::Object(rec));
        }
        Json::Object(m)
    }
}

impl PromptNode {
    fn from_json(id: &str, rec: &Json) -> Result<PromptNode, PromptError> {
        let obj = rec
            .as_object()
            .ok_or_else(|| PromptError::Shape(format!("node '{id}' is {}, expected an object with class_type and inputs", json_kind(rec))))?;
        let class_type = obj.get("class_type").and_then(Json::as_str).map(String::from);
        let title = obj.get("_meta").and_then(|m| m.get("title")).and_then(Json::as_str).map(String::from);
        let mut inputs = IndexMap::new();
        match obj.get("inputs") {
            None | Some(Json::Null) => {}
            Some(Json::Object(m)) => {
                for (k, v) in m {
                    inputs.insert(k.clone(), Input::from_json(v));
                }
            }
            Some(other) => {
                return Err(PromptError::Shape(format!("node '{id}': 'inputs' is {}, expected an object", json_kind(other))))
            }
        }
        Ok(PromptNode { class_type, inputs, title })
    }

    /// The display title: `_meta.title`, else the class name.
    pub fn display_title(&self) -> &str {
        self.title.as_deref().or(self.class_type.as_deref()).unwrap_or("?")
    }
}

impl Input {
    /// ComfyUI's rule: a 2-array `[id, slot]` is a link. Numeric ids are accepted as strings
    /// (ComfyUI would fail on them at run time, but the intent is unambiguous).
    pub fn from_json(v: &Json) -> Input {
        match v {
            Json::Array(a) if a.len() == 2 => {
                let node = match &a[0] {
                    Json::String(s) => Some(s.clone()),
                    Json::Number(n) if n.is_u64() => Some(n.to_string()),
                    _ => None,
                };
                let slot = match &a[1] {
                    Json::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64)),
                    _ => None,
                };
                match (node, slot) {
                    (Some(node), Some(slot)) => Input::Link(Link { node, slot: slot as usize }),
                    _ => Input::Malformed(v.clone()),
                }
            }
            Json::Array(_) => Input::Malformed(v.clone()),
            // ComfyUI unwraps `__value__` before coercing: a wrapped scalar is that scalar.
            Json::Object(m) if m.get("__value__").is_some_and(|x| !x.is_array() && !x.is_object()) => {
                Input::Const(Value::from_json(&m["__value__"]))
            }
            other => Input::Const(Value::from_json(other)),
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            Input::Link(l) => serde_json::json!([l.node, l.slot]),
            Input::Const(Value::Json(j)) if j.is_array() => serde_json::json!({ "__value__": j }),
            Input::Const(v) => v.to_json(),
            Input::Malformed(j) => j.clone(),
        }
    }
}

/// serde_json with its line/column kept for the error.
pub fn parse_json(text: &str) -> Result<Json, PromptError> {
    serde_json::from_str(text).map_err(|e| PromptError::Json { line: e.line(), column: e.column(), message: strip_position(&e.to_string()) })
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

pub fn json_kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn links_and_constants() {
        assert_eq!(Input::from_json(&json!(["4", 1])), Input::Link(Link { node: "4".into(), slot: 1 }));
        assert_eq!(Input::from_json(&json!([4, 1])), Input::Link(Link { node: "4".into(), slot: 1 }));
        assert_eq!(Input::from_json(&json!(["4", 1.0])), Input::Link(Link { node: "4".into(), slot: 1 }));
        assert!(matches!(Input::from_json(&json!([1, 2, 3])), Input::Malformed(_)));
        assert_eq!(Input::from_json(&json!({"__value__": [1, 2, 3]})), Input::Const(Value::Json(json!([1, 2, 3]))));
        assert_eq!(Input::from_json(&json!(7)), Input::Const(Value::Int(7)));
    }

    #[test]
    fn json_errors_have_positions() {
        let err = Prompt::parse("{\n  \"1\": {\"class_type\": \"X\",, }\n}").unwrap_err();
        match err {
            PromptError::Json { line, column, .. } => {
                assert_eq!(line, 2);
                assert!(column > 20);
            }
            other => panic!("{other:?}"),
        }
    }
}
