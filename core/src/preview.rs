//! `comfy_extras/nodes_preview_any.py`: the output node that shows any value as text.

use std::sync::Arc;

use comfyrs_runtime::{Args, CallOutput, NodeClass, NodeError, Value};
use serde_json::{json, Map, Value as Json};

use super::pyvalue::{float_repr, json_dumps, py_str, to_json_tree};
use super::{any_input, out, FnNode};

pub fn nodes() -> Vec<Arc<dyn NodeClass>> {
    let mut s = comfyrs_runtime::NodeSchema::new("PreviewAny", "Preview as Text", "utilities")
        .module("comfy_extras.nodes_preview_any")
        .description("Preview any input value as text.")
        .input(any_input("source"))
        .output(out("STRING"))
        .output_node();
    s.search_aliases = ["show output", "inspect", "debug", "print value", "show text"].iter().map(|a| a.to_string()).collect();
    vec![FnNode::new(s, preview)]
}

/// The text PreviewAny shows: strings as they are, numbers and booleans through `str()`,
/// `None` as `None`, anything else through `json.dumps(indent=4)` and, where that fails
/// (opaque objects), `str()`.
pub fn preview_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::None => py_str(v),
        Value::Json(Json::String(s)) => s.clone(),
        Value::Json(Json::Null) => "None".into(),
        Value::Json(Json::Bool(b)) => if *b { "True" } else { "False" }.into(),
        Value::Json(Json::Number(n)) => match n.as_i64().map(|i| i.to_string()).or_else(|| n.as_u64().map(|u| u.to_string())) {
            Some(i) => i,
            None => float_repr(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => match to_json_tree(other) {
            Some(tree) => json_dumps(&tree, true, Some(4)),
            None => py_str(other),
        },
    }
}

fn preview(args: &Args) -> Result<CallOutput, NodeError> {
    let text = preview_text(&args.get("source").cloned().unwrap_or(Value::None));
    let mut ui = Map::new();
    ui.insert("text".into(), json!([text]));
    Ok(CallOutput::values([Value::String(text)]).with_ui(ui))
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use super::*;

    fn text(v: Value) -> String {
        let r = run(&find("PreviewAny"), &[("source", v)]).unwrap();
        let ui = r.ui.unwrap();
        let shown = ui["text"][0].as_str().unwrap().to_string();
        assert_eq!(r.outputs[0][0], Value::String(shown.clone()));
        shown
    }

    #[test]
    fn scalars_use_python_str() {
        assert_eq!(text(s("hello")), "hello");
        assert_eq!(text(Value::Int(42)), "42");
        assert_eq!(text(Value::Float(1.0)), "1.0");
        assert_eq!(text(Value::Float(1e-7)), "1e-07");
        assert_eq!(text(Value::Bool(false)), "False");
        assert_eq!(text(Value::None), "None");
    }

    #[test]
    fn containers_use_json_dumps_indent_4() {
        let j: Json = serde_json::from_str(r#"{"a": [1, 2.5], "b": "é"}"#).unwrap();
        assert_eq!(text(Value::Json(j)), "{\n    \"a\": [\n        1,\n        2.5\n    ],\n    \"b\": \"\\u00e9\"\n}");
        assert_eq!(text(Value::List(vec![])), "[]");
        assert_eq!(text(Value::List(vec![Value::Int(1), s("x")])), "[\n    1,\n    \"x\"\n]");
    }
}
