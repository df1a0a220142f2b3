//! The runtime's value model: what flows along links and sits in constants.
//!
//! Ints and floats stay distinct (`1` and `1.0` are different constants, hash differently and
//! convert to different Python types). Heavy values (tensors, Python objects, WIDEN recipes) are
//! opaque [`Handle`]s that the runtime never looks inside; they only report their byte size so
//! the cache can bound its memory.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde_json::Value as Json;

/// A value produced by a node or given as a constant.
#[derive(Clone)]
pub enum Value {
    /// ComfyUI ints are unbounded Python ints; seeds reach `u64::MAX`, so i128 holds every
    /// value a workflow can carry.
    Int(i128),
    Float(f64),
    Bool(bool),
    String(String),
    /// Structured constants (JSON objects and `{"__value__": [...]}` arrays) kept as JSON.
    Json(Json),
    /// A list produced as one value (not ComfyUI list semantics, which the runtime handles).
    List(Vec<Value>),
    /// Nothing: an optional or unevaluated lazy input, or a node returning None.
    None,
    /// An opaque heavy value owned by a node implementation.
    Handle(Arc<dyn Opaque>),
}

/// Memory a value holds together with other values: a model's weights, which every clone of
/// the model (a LoRA applied, a sampling option set) holds too. The outputs cache counts it once
/// while any result it keeps holds it (docs/architecture.md, "Memory").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedBytes {
    /// Names the memory among everything alive in the process; the value's maker chooses it (a
    /// Python module's or tensor storage's identity), and it stays unique while a value holds it.
    pub id: u64,
    pub bytes: usize,
}

/// A heavy value the runtime carries without understanding it.
pub trait Opaque: Any + Send + Sync {
    /// The ComfyUI type this value belongs to, e.g. `MODEL` or `WIDEN`; used in messages.
    fn type_name(&self) -> &str;
    /// Bytes this value keeps alive of its own (tensor storage included), for the byte-bounded
    /// cache; what it shares with other values is in [`Opaque::shared_bytes`].
    fn byte_size(&self) -> usize;
    /// Memory this value holds together with other values (none unless said).
    fn shared_bytes(&self) -> &[SharedBytes] {
        &[]
    }
    /// Bytes of device memory this value keeps alive that nothing else holds (a merge's results
    /// handed to a foreign model on the GPU), for the cache's device share of the budget.
    fn device_byte_size(&self) -> usize {
        0
    }
    /// A short human description for error reports (`current_inputs`).
    fn describe(&self) -> String {
        format!("<{} ({} bytes)>", self.type_name(), self.byte_size())
    }
    fn as_any(&self) -> &dyn Any;
}

impl Value {
    /// The ComfyUI type name of this value's kind, for messages.
    pub fn kind(&self) -> &str {
        match self {
            Value::Int(_) => "INT",
            Value::Float(_) => "FLOAT",
            Value::Bool(_) => "BOOLEAN",
            Value::String(_) => "STRING",
            Value::Json(_) => "JSON",
            Value::List(_) => "LIST",
            Value::None => "NONE",
            Value::Handle(h) => h.type_name(),
        }
    }

    /// Bytes this value keeps alive, counted by the cache.
    pub fn byte_size(&self) -> usize {
        let own = std::mem::size_of::<Value>();
        own + match self {
            Value::String(s) => s.len(),
            Value::Json(j) => json_size(j),
            Value::List(items) => items.iter().map(Value::byte_size).sum(),
            Value::Handle(h) => h.byte_size(),
            _ => 0,
        }
    }

    /// Appends the memory this value holds together with other values
    /// ([`Opaque::shared_bytes`]) to `into`; a piece it holds twice appears twice (the cache's
    /// `NodeResult` keeps each once).
    pub fn shared_bytes(&self, into: &mut Vec<SharedBytes>) {
        match self {
            Value::List(items) => items.iter().for_each(|v| v.shared_bytes(into)),
            Value::Handle(h) => into.extend_from_slice(h.shared_bytes()),
            _ => {}
        }
    }

    /// Device memory this value keeps alive ([`Opaque::device_byte_size`]).
    pub fn device_byte_size(&self) -> usize {
        match self {
            Value::List(items) => items.iter().map(Value::device_byte_size).sum(),
            Value::Handle(h) => h.device_byte_size(),
            _ => 0,
        }
    }

    /// Converts a JSON constant into a value: integers stay ints, numbers with a fraction or
    /// exponent become floats, `{"__value__": x}` unwraps to `x` kept as JSON.
    pub fn from_json(j: &Json) -> Value {
        match j {
            Json::Null => Value::None,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i as i128)
                } else if let Some(u) = n.as_u64() {
                    Value::Int(u as i128)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Json::String(s) => Value::String(s.clone()),
            Json::Object(map) if map.contains_key("__value__") => Value::Json(map["__value__"].clone()),
            other => Value::Json(other.clone()),
        }
    }

    /// A JSON rendering for outputs, `--json` results and error reports. Handles become their
    /// description string; non-finite floats become strings, since JSON has no NaN.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    Json::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Json::from(v)
                } else {
                    Json::String(i.to_string())
                }
            }
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or_else(|| Json::String(format_float(*f))),
            Value::Bool(b) => Json::Bool(*b),
            Value::String(s) => Json::String(s.clone()),
            Value::Json(j) => j.clone(),
            Value::List(items) => Json::Array(items.iter().map(Value::to_json).collect()),
            Value::None => Json::Null,
            Value::Handle(h) => Json::String(h.describe()),
        }
    }

    pub fn as_handle<T: Opaque>(&self) -> Option<&T> {
        match self {
            Value::Handle(h) => h.as_any().downcast_ref::<T>(),
            _ => None,
        }
    }
}

/// Python's `repr(float)` (also `str(float)`), as ComfyUI users see numbers: the shortest
/// round-tripping digits, positional when the decimal exponent is in [-4, 16), scientific
/// (`1e-05`, `1e+16`) otherwise.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let (neg, digits, exp) = shortest_digits(f);
    let sign = if neg { "-" } else { "" };
    // `decpt`: position of the decimal point relative to the digit string.
    let decpt = exp + 1;
    if (-3..=16).contains(&decpt) {
        let body = if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(decpt as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        };
        format!("{sign}{body}")
    } else {
        let mantissa = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits.clone() };
        format!("{sign}{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// The shortest round-tripping decimal digits of a finite float: (negative, digits, exponent
/// of the first digit).
pub fn shortest_digits(f: f64) -> (bool, String, i32) {
    let shortest = format!("{:e}", f.abs());
    let n = shortest.split_once('e').map(|(m, _)| m.chars().filter(|c| c.is_ascii_digit()).count()).unwrap_or(1);
    // Among the n-digit strings that round-trip, Python takes the correctly rounded one (ties to
    // even); the shortest-digit search can pick the other neighbour of an exact tie.
    let s = format!("{:.*e}", n.saturating_sub(1), f.abs());
    let (m, e) = s.split_once('e').expect("`{:e}` has an exponent");
    let digits: String = m.chars().filter(|c| *c != '.').collect();
    let exp: i32 = e.parse().expect("exponent is an integer");
    let neg = f.is_sign_negative();
    if digits.chars().all(|c| c == '0') {
        return (neg, "0".into(), 0);
    }
    (neg, digits, exp)
}

fn json_size(j: &Json) -> usize {
    match j {
        Json::String(s) => s.len() + 24,
        Json::Array(a) => a.iter().map(json_size).sum::<usize>() + 24,
        Json::Object(o) => o.iter().map(|(k, v)| k.len() + json_size(v)).sum::<usize>() + 48,
        _ => 16,
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "Int({i})"),
            Value::Float(x) => write!(f, "Float({x})"),
            Value::Bool(b) => write!(f, "Bool({b})"),
            Value::String(s) => write!(f, "String({s:?})"),
            Value::Json(j) => write!(f, "Json({j})"),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::None => write!(f, "None"),
            Value::Handle(h) => write!(f, "{}", h.describe()),
        }
    }
}

impl PartialEq for Value {
    /// Structural equality; handles are equal only when they are the same object.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits() || a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Json(a), Value::Json(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::None, Value::None) => true,
            (Value::Handle(a), Value::Handle(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v as i128)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_and_floats_stay_distinct() {
        assert!(matches!(Value::from_json(&serde_json::json!(1)), Value::Int(1)));
        assert!(matches!(Value::from_json(&serde_json::json!(1.0)), Value::Float(_)));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }

    #[test]
    fn seeds_up_to_u64_max_survive() {
        let v = Value::from_json(&serde_json::json!(18446744073709551615u64));
        assert_eq!(v, Value::Int(u64::MAX as i128));
        assert_eq!(v.to_json(), serde_json::json!(18446744073709551615u64));
    }

    #[test]
    fn python_float_format() {
        assert_eq!(format_float(1.0), "1.0");
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(-2.5), "-2.5");
        assert_eq!(format_float(1e20), "1e+20");
        assert_eq!(format_float(1e16), "1e+16");
        assert_eq!(format_float(0.00001), "1e-05");
        assert_eq!(format_float(0.0001), "0.0001");
        assert_eq!(format_float(123456789.125), "123456789.125");
        assert_eq!(format_float(f64::NAN), "nan");
    }
}
