//! `comfy_extras/nodes_string.py`: the text nodes.

use std::sync::Arc;

use comfyrs_runtime::{Args, CallOutput, NodeClass, NodeError, Value};

use super::pyvalue;
use super::{out, v3_schema, v3_string, FnNode};

const MODULE: &str = "comfy_extras.nodes_string";
const CATEGORY: &str = "text";

pub fn nodes() -> Vec<Arc<dyn NodeClass>> {
    vec![FnNode::new(
        v3_schema(
            "StringConcatenate",
            "Concatenate Text",
            CATEGORY,
            MODULE,
            &["concatenate", "text concat", "join text", "merge text", "combine strings", "string concat", "append text", "combine text"],
        )
        .input(v3_string("string_a", None, true))
        .input(v3_string("string_b", None, true))
        .input(v3_string("delimiter", Some(""), false))
        .output(out("STRING")),
        concatenate,
    )]
}

fn text(v: String) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::String(v)]))
}

/// `delimiter.join((string_a, string_b))`.
fn concatenate(args: &Args) -> Result<CallOutput, NodeError> {
    let (a, b, d) = (args.string("string_a")?, args.string("string_b")?, args.string("delimiter")?);
    let _ = pyvalue::is_space;
    text(format!("{a}{d}{b}"))
}
