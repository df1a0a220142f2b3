//! `comfy_extras/nodes_logic.py`: the nodes ComfyUI registers from it — the lazy if/else
//! switch, Not/And/Or over Python truthiness, Pass-or-None and the frontend-driven Custom Combo.

use std::sync::Arc;

use comfyrs_runtime::{Args, CallOutput, InputSpec, NodeClass, NodeError, Value};
use serde_json::json;

use super::pyvalue::truthy;
use super::{any_input, autogrow_input, autogrow_values, matchtype_input, out, out_named, v3_bool, v3_schema, FnNode, Grow};

const MODULE: &str = "comfy_extras.nodes_logic";
const CATEGORY: &str = "utilities/logic";
/// `Autogrow.TemplatePrefix(prefix="value", min=1)` (default max 10): `values.value0` ...
const LOGIC_GROW: Grow<'static> = Grow::Prefix("value", 10);

pub fn nodes() -> Vec<Arc<dyn NodeClass>> {
    let mut switch = v3_schema("ComfySwitchNode", "If/Else Switch", CATEGORY, MODULE, &["if", "then", "switch", "conditional", "branch"])
        .input(v3_bool("switch", None))
        .input(matchtype_input("on_false", "switch").optional().lazy())
        .input(matchtype_input("on_true", "switch").optional().lazy())
        .output(out_named("COMFY_MATCHTYPE_V3", "output"));
    switch.experimental = true;

    let mut combo = v3_schema("CustomCombo", "Custom Combo", "utilities", MODULE, &[])
        // `io.Combo.Input("choice", options=[])`. The options are defined in the frontend and
        // the node skips option validation, so the input takes any value.
        .input(InputSpec::socket("choice", "COMBO").with("multiselect", json!(false)).with("options", json!([])))
        .output(out_named("STRING", "STRING"))
        .output(out_named("INT", "INDEX"));
    combo.experimental = true;

    let logic_values = || autogrow_input("values", "value", json!(["*", {}]), &LOGIC_GROW, 1);
    let pass_tooltip = "Passes the input through, or a default value when input is None/not provided, or outputs None when both inputs are None/not provided.";

    vec![
        FnNode::with_lazy(switch, switch_run, switch_lazy),
        FnNode::new(combo, custom_combo),
        FnNode::new(
            v3_schema("ComfyNotNode", "Not", CATEGORY, MODULE, &["invert", "toggle", "negate", "flip boolean"])
                .description("Logical NOT operation. Returns true if the value is falsy. Uses Python's rules for truthiness.")
                .input(any_input("value"))
                .output(out("BOOLEAN")),
            not,
        ),
        FnNode::new(
            v3_schema("ComfyAndNode", "And", CATEGORY, MODULE, &["all", "every"])
                .description("Logical AND operation. Returns true if all of the values are truthy. Uses Python's rules for truthiness.")
                .input(logic_values())
                .output(out("BOOLEAN")),
            and,
        ),
        FnNode::new(
            v3_schema("ComfyOrNode", "Or", CATEGORY, MODULE, &["any", "some"])
                .description("Logical OR operation. Returns true if any of the values are truthy. Uses Python's rules for truthiness.")
                .input(logic_values())
                .output(out("BOOLEAN")),
            or,
        ),
        FnNode::new(
            v3_schema("ComfyPassOrNoneNode", "Pass or None", CATEGORY, MODULE, &["fallback", "null", "nothing", "empty", "blank"])
                .description(pass_tooltip)
                .input(matchtype_input("anything", "value").optional().tooltip(pass_tooltip))
                .input(matchtype_input("default", "value").optional().tooltip("Fallback value to use when the input is None/not provided."))
                .output(out_named("COMFY_MATCHTYPE_V3", "output"))
                .output(out_named("BOOLEAN", "is_none")),
            pass_or_none,
        ),
    ]
}

/// Only the branch the switch selects is evaluated. A branch that is not connected is not
/// asked for (the runtime ignores requests for unlinked inputs anyway).
fn switch_lazy(args: &Args) -> Vec<String> {
    let on = args.get("switch").map(truthy).unwrap_or(false);
    let wanted = if on { "on_true" } else { "on_false" };
    if args.values.contains_key(wanted) {
        Vec::new()
    } else {
        vec![wanted.to_string()]
    }
}

/// The selected branch, or None when it is not connected.
fn switch_run(args: &Args) -> Result<CallOutput, NodeError> {
    let on = args.boolean("switch")?;
    let selected = args.get(if on { "on_true" } else { "on_false" }).cloned().unwrap_or(Value::None);
    Ok(CallOutput::values([selected]))
}

/// `(choice, index)`: `index` is a frontend-defined input (0 when absent).
fn custom_combo(args: &Args) -> Result<CallOutput, NodeError> {
    let choice = match args.get("choice") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(other) => Value::String(super::pyvalue::py_str(other)),
        None => Value::None,
    };
    let index = if args.has("index") { args.int("index")? } else { 0 };
    Ok(CallOutput { outputs: vec![vec![choice], vec![Value::Int(index)]], ui: None, expansion: None })
}

fn not(args: &Args) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::Bool(!truthy(&super::arg(args, "value")))]))
}

fn and(args: &Args) -> Result<CallOutput, NodeError> {
    let values = autogrow_values(args, "values", &LOGIC_GROW, 1)?;
    Ok(CallOutput::values([Value::Bool(values.iter().all(|(_, v)| truthy(v)))]))
}

fn or(args: &Args) -> Result<CallOutput, NodeError> {
    let values = autogrow_values(args, "values", &LOGIC_GROW, 1)?;
    Ok(CallOutput::values([Value::Bool(values.iter().any(|(_, v)| truthy(v)))]))
}

/// `anything` unless it is None or absent, else `default`; and whether the result is None.
fn pass_or_none(args: &Args) -> Result<CallOutput, NodeError> {
    let anything = super::arg(args, "anything");
    if !matches!(anything, Value::None) {
        return Ok(CallOutput::values([anything, Value::Bool(false)]));
    }
    let default = super::arg(args, "default");
    let is_none = matches!(default, Value::None);
    Ok(CallOutput::values([default, Value::Bool(is_none)]))
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use super::*;

    fn args(pairs: &[(&str, Value)]) -> Args {
        let mut a = Args::default();
        for (k, v) in pairs {
            a.insert(k, v.clone());
        }
        a
    }

    #[test]
    fn switch_asks_only_for_the_selected_branch() {
        assert_eq!(switch_lazy(&args(&[("switch", Value::Bool(true))])), vec!["on_true"]);
        assert_eq!(switch_lazy(&args(&[("switch", Value::Bool(false))])), vec!["on_false"]);
        assert!(switch_lazy(&args(&[("switch", Value::Bool(true)), ("on_true", s("x"))])).is_empty());
        let r = run(&find("ComfySwitchNode"), &[("switch", Value::Bool(true)), ("on_true", s("yes"))]);
        assert_eq!(out1(&r, 0), s("yes"));
        let r = run(&find("ComfySwitchNode"), &[("switch", Value::Bool(false)), ("on_true", s("yes"))]);
        assert_eq!(out1(&r, 0), Value::None);
    }

    #[test]
    fn truthiness_is_pythons() {
        let not_ = |v: Value| out1(&run(&find("ComfyNotNode"), &[("value", v)]), 0);
        assert_eq!(not_(s("")), Value::Bool(true));
        assert_eq!(not_(s("False")), Value::Bool(false));
        assert_eq!(not_(Value::Float(0.0)), Value::Bool(true));
        assert_eq!(not_(Value::List(vec![])), Value::Bool(true));
        assert_eq!(not_(Value::Json(serde_json::json!({"a": 1}))), Value::Bool(false));
        assert_eq!(not_(Value::None), Value::Bool(true));
        let and_ = |vals: &[(&str, Value)]| run(&find("ComfyAndNode"), vals);
        assert_eq!(out1(&and_(&[("values.value0", Value::Int(1)), ("values.value1", s("x"))]), 0), Value::Bool(true));
        assert_eq!(out1(&and_(&[("values.value0", Value::Int(1)), ("values.value3", Value::Int(0))]), 0), Value::Bool(false));
        assert!(and_(&[("values.value1", Value::Int(1))]).is_err(), "value0 is required");
        let or_ = |vals: &[(&str, Value)]| out1(&run(&find("ComfyOrNode"), vals), 0);
        assert_eq!(or_(&[("values.value0", Value::Int(0)), ("values.value1", s(""))]), Value::Bool(false));
        assert_eq!(or_(&[("values.value0", Value::Int(0)), ("values.value1", Value::Float(0.1))]), Value::Bool(true));
    }

    #[test]
    fn pass_or_none() {
        let p = |pairs: &[(&str, Value)]| {
            let r = run(&find("ComfyPassOrNoneNode"), pairs).unwrap();
            (r.outputs[0][0].clone(), r.outputs[1][0].clone())
        };
        assert_eq!(p(&[("anything", Value::Int(0)), ("default", Value::Int(5))]), (Value::Int(0), Value::Bool(false)));
        assert_eq!(p(&[("default", Value::Int(5))]), (Value::Int(5), Value::Bool(false)));
        assert_eq!(p(&[("anything", Value::None)]), (Value::None, Value::Bool(true)));
        assert_eq!(p(&[]), (Value::None, Value::Bool(true)));
    }

    #[test]
    fn custom_combo_passes_the_choice() {
        let r = run(&find("CustomCombo"), &[("choice", s("beta"))]).unwrap();
        assert_eq!((r.outputs[0][0].clone(), r.outputs[1][0].clone()), (s("beta"), Value::Int(0)));
        let r = run(&find("CustomCombo"), &[("choice", s("beta")), ("index", Value::Int(2))]).unwrap();
        assert_eq!(r.outputs[1][0], Value::Int(2));
    }
}
