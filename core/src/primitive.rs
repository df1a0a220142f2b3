//! `comfy_extras/nodes_primitive.py`: nodes that hold one constant and output it.

use std::sync::Arc;

use comfyrs_runtime::schema::{InputKind, Num};
use comfyrs_runtime::{Args, CallOutput, InputSpec, NodeClass, NodeError, Value};
use serde_json::json;

use super::{out, v3_bool, v3_schema, v3_string, FnNode};

const MODULE: &str = "comfy_extras.nodes_primitive";
const CATEGORY: &str = "utilities/primitive";
/// Python's `sys.maxsize` on 64-bit platforms, the bound of `PrimitiveInt` and `PrimitiveFloat`.
const MAXSIZE: i128 = i64::MAX as i128;

pub fn nodes() -> Vec<Arc<dyn NodeClass>> {
    vec![
        FnNode::new(
            v3_schema("PrimitiveString", "Text", CATEGORY, MODULE, &["text", "string", "text box", "prompt"])
                .input(v3_string("value", None, false))
                .output(out("STRING")),
            pass_string,
        ),
        FnNode::new(
            v3_schema(
                "PrimitiveStringMultiline",
                "Text (Multiline)",
                CATEGORY,
                MODULE,
                &["text", "string", "text multiline", "string multiline", "text box", "prompt"],
            )
            .input(v3_string("value", None, true))
            .output(out("STRING")),
            pass_string,
        ),
        FnNode::new(v3_schema("PrimitiveInt", "Int", CATEGORY, MODULE, &[]).input(int_value()).output(out("INT")), pass_int),
        FnNode::new(v3_schema("PrimitiveFloat", "Float", CATEGORY, MODULE, &[]).input(float_value()).output(out("FLOAT")), pass_float),
        FnNode::new(v3_schema("PrimitiveBoolean", "Boolean", CATEGORY, MODULE, &[]).input(v3_bool("value", None)).output(out("BOOLEAN")), pass_bool),
    ]
}

/// `io.Int.Input("value", min=-sys.maxsize, max=sys.maxsize, control_after_generate=fixed)`.
fn int_value() -> InputSpec {
    let mut s = InputSpec::int("value", 0, 0, 0).with("control_after_generate", json!("fixed"));
    s.kind = InputKind::Int { default: None, min: Some(Num::Int(-MAXSIZE)), max: Some(Num::Int(MAXSIZE)), step: None };
    s
}

/// `io.Float.Input("value", min=-sys.maxsize, max=sys.maxsize, step=0.1)`: the bounds are
/// Python ints, so they stay JSON integers in `/object_info`.
fn float_value() -> InputSpec {
    let mut s = InputSpec::float("value", 0.0, 0.0, 0.0, 0.0);
    s.kind = InputKind::Float { default: None, min: Some(Num::Int(-MAXSIZE)), max: Some(Num::Int(MAXSIZE)), step: Some(Num::Float(0.1)) };
    s
}

fn pass_string(args: &Args) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::String(args.string("value")?.to_string())]))
}

fn pass_int(args: &Args) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::Int(args.int("value")?)]))
}

fn pass_float(args: &Args) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::Float(args.float("value")?)]))
}

fn pass_bool(args: &Args) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::Bool(args.boolean("value")?)]))
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use super::*;

    #[test]
    fn primitives_pass_their_value_through() {
        assert_eq!(out1(&run(&find("PrimitiveString"), &[("value", s("hi"))]), 0), s("hi"));
        assert_eq!(out1(&run(&find("PrimitiveStringMultiline"), &[("value", s("a\nb"))]), 0), s("a\nb"));
        assert_eq!(out1(&run(&find("PrimitiveInt"), &[("value", Value::Int(-7))]), 0), Value::Int(-7));
        assert_eq!(out1(&run(&find("PrimitiveFloat"), &[("value", Value::Float(0.5))]), 0), Value::Float(0.5));
        // An int constant given to a FLOAT input leaves as a float.
        assert_eq!(out1(&run(&find("PrimitiveFloat"), &[("value", Value::Int(2))]), 0), Value::Float(2.0));
        assert_eq!(out1(&run(&find("PrimitiveBoolean"), &[("value", Value::Bool(true))]), 0), Value::Bool(true));
    }

    #[test]
    fn primitive_int_keeps_ints() {
        let big = (i64::MAX as i128) - 1;
        assert_eq!(out1(&run(&find("PrimitiveInt"), &[("value", Value::Int(big))]), 0), Value::Int(big));
    }
}
