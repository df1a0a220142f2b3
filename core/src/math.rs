//! `comfy_extras/nodes_math.py`: `ComfyMathExpression`, a Python expression over a growing set
//! of numeric inputs (`values.a` ... `values.z`), evaluated with simpleeval's semantics.

use std::sync::Arc;

use comfyrs_runtime::{Args, CallOutput, NodeClass, NodeError, Value};
use serde_json::{json, Value as Json};

use super::pyexpr::{self, Py};
use super::{autogrow_input, autogrow_values, out_named, py_error, v3_schema, v3_string, FnNode, Grow};

const LETTERS: [&str; 26] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z"];
const GROW: Grow<'static> = Grow::Names(&LETTERS);

pub fn nodes() -> Vec<Arc<dyn NodeClass>> {
    vec![FnNode::new(
        v3_schema(
            "ComfyMathExpression",
            "Math Expression",
            "utilities",
            "comfy_extras.nodes_math",
            &["math", "expression", "formula", "calculate", "calculator", "eval"],
        )
        .input(v3_string("expression", Some("a"), true))
        .input(autogrow_input("values", "value", json!(["FLOAT,INT,BOOLEAN", {}]), &GROW, 0))
        .output(out_named("FLOAT", "FLOAT"))
        .output(out_named("INT", "INT"))
        .output(out_named("BOOLEAN", "BOOL")),
        math_expression,
    )]
}

/// A workflow value as the Python object the expression sees.
pub fn to_py(v: &Value) -> Py {
    match v {
        Value::Int(i) => Py::Int(*i),
        Value::Float(f) => Py::Float(*f),
        Value::Bool(b) => Py::Bool(*b),
        Value::String(s) => Py::Str(s.clone()),
        Value::None => Py::None,
        Value::List(items) => Py::List(items.iter().map(to_py).collect()),
        Value::Json(j) => json_to_py(j),
        Value::Handle(h) => Py::Other(h.type_name().to_string(), h.describe()),
    }
}

fn json_to_py(j: &Json) -> Py {
    match j {
        Json::Null => Py::None,
        Json::Bool(b) => Py::Bool(*b),
        Json::Number(n) => match n.as_i64().map(|i| i as i128).or_else(|| n.as_u64().map(|u| u as i128)) {
            Some(i) => Py::Int(i),
            None => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Py::Str(s.clone()),
        Json::Array(a) => Py::List(a.iter().map(json_to_py).collect()),
        Json::Object(_) => Py::Other("dict".into(), super::pyvalue::json_repr(j)),
    }
}

fn math_expression(args: &Args) -> Result<CallOutput, NodeError> {
    let expression = args.string("expression")?;
    if expression.trim().is_empty() {
        return Err(NodeError::value_error("Expression cannot be empty."));
    }
    let values = autogrow_values(args, "values", &GROW, 0)?;
    let mut names: Vec<(String, Py)> = values.iter().map(|(k, v)| (k.clone(), to_py(v))).collect();
    names.push(("values".into(), Py::List(values.iter().map(|(_, v)| to_py(v)).collect())));
    let result = pyexpr::eval(expression, &names).map_err(|e| py_error(e.ty, e.msg))?;
    let (float, int) = match &result {
        Py::Int(i) => (*i as f64, *i),
        Py::Bool(b) => (*b as i64 as f64, *b as i128),
        Py::Float(f) => {
            if !f.is_finite() {
                return Err(NodeError::value_error(format!("Math Expression '{expression}' produced a non-finite result: {}", result.str())));
            }
            if f.abs() >= 1.7014118346046923e38 {
                return Err(py_error("OverflowError", format!("Math Expression '{expression}' produced {}, whose integer part exceeds comfyrs's 128-bit INT", result.str())));
            }
            (*f, f.trunc() as i128)
        }
        other => {
            return Err(NodeError::value_error(format!(
                "Math Expression '{expression}' must evaluate to a numeric result, got {}: {}",
                other.type_name(),
                other.repr()
            )))
        }
    };
    Ok(CallOutput::values([Value::Float(float), Value::Int(int), Value::Bool(result.truthy())]))
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use super::*;

    fn calc(expr: &str, vals: &[(&str, Value)]) -> Result<(Value, Value, Value), NodeError> {
        let mut a = vec![("expression", s(expr))];
        let keys: Vec<String> = vals.iter().map(|(k, _)| format!("values.{k}")).collect();
        for (k, (_, v)) in keys.iter().zip(vals) {
            a.push((k.as_str(), v.clone()));
        }
        let r = run(&find("ComfyMathExpression"), &a)?;
        Ok((r.outputs[0][0].clone(), r.outputs[1][0].clone(), r.outputs[2][0].clone()))
    }

    #[test]
    fn outputs_float_int_and_bool() {
        let (f, i, b) = calc("a * b", &[("a", Value::Int(3)), ("b", Value::Float(2.5))]).unwrap();
        assert_eq!((f, i, b), (Value::Float(7.5), Value::Int(7), Value::Bool(true)));
        let (f, i, b) = calc("a - a", &[("a", Value::Int(3))]).unwrap();
        assert_eq!((f, i, b), (Value::Float(0.0), Value::Int(0), Value::Bool(false)));
        let (f, i, _) = calc("-7 / 2", &[]).unwrap();
        assert_eq!((f, i), (Value::Float(-3.5), Value::Int(-3)));
        let (f, i, b) = calc("a > 1", &[("a", Value::Int(3))]).unwrap();
        assert_eq!((f, i, b), (Value::Float(1.0), Value::Int(1), Value::Bool(true)));
        let (f, ..) = calc("sum(values) / 3", &[("a", Value::Int(1)), ("b", Value::Float(2.0)), ("c", Value::Bool(true))]).unwrap();
        assert_eq!(f, Value::Float(4.0 / 3.0));
    }

    #[test]
    fn values_follow_template_order() {
        // Inputs arrive in prompt order; `values` lists them in the template's (a, b, ...) order.
        let r = run(&find("ComfyMathExpression"), &[("values.b", Value::Int(10)), ("values.a", Value::Int(1)), ("expression", s("values[0] - values[1]"))]);
        assert_eq!(out1(&r, 1), Value::Int(-9));
    }

    #[test]
    fn errors_name_the_expression() {
        let e = calc("", &[]).unwrap_err();
        assert_eq!(e.to_string(), "Expression cannot be empty.");
        let e = calc("'x'", &[]).unwrap_err();
        assert_eq!(e.to_string(), "Math Expression ''x'' must evaluate to a numeric result, got str: 'x'");
        let e = calc("a / 0.0", &[("a", Value::Int(1))]).unwrap_err();
        assert_eq!((e.exception_type(), e.to_string().as_str()), ("ZeroDivisionError", "float division by zero"));
        let e = calc("1e308 * 10", &[]).unwrap_err();
        assert_eq!(e.to_string(), "Math Expression '1e308 * 10' produced a non-finite result: inf");
        let e = calc("z", &[("a", Value::Int(1))]).unwrap_err();
        assert_eq!(e.exception_type(), "simpleeval.NameNotDefined");
    }
}
