//! Constant coercion by declared type, as ComfyUI's validator does it (docs/comfyui.md, "Constants
//! and coercion"): INT truncates floats and parses numeric strings, FLOAT parses, STRING
//! stringifies, BOOLEAN takes Python truthiness (so the string "false" is true, as in ComfyUI).

use crate::value::{format_float, Value};

pub fn to_int(v: &Value) -> Result<Value, String> {
    match v {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Bool(b) => Ok(Value::Int(*b as i128)),
        Value::Float(f) if f.is_finite() => Ok(Value::Int(f.trunc() as i128)),
        Value::Float(f) => Err(format!("cannot convert float {} to integer", format_float(*f))),
        Value::String(s) => s
            .trim()
            .replace('_', "")
            .parse::<i128>()
            .map(Value::Int)
            .map_err(|_| format!("invalid literal for int() with base 10: {}", py_str_repr(s))),
        other => Err(format!("int() argument must be a string or a number, not {}", other.kind())),
    }
}

pub fn to_float(v: &Value) -> Result<Value, String> {
    match v {
        Value::Float(f) => Ok(Value::Float(*f)),
        Value::Int(i) => Ok(Value::Float(*i as f64)),
        Value::Bool(b) => Ok(Value::Float(*b as i64 as f64)),
        Value::String(s) => {
            let t = s.trim().to_ascii_lowercase();
            let parsed = match t.as_str() {
                "inf" | "+inf" | "infinity" => Some(f64::INFINITY),
                "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
                "nan" => Some(f64::NAN),
                _ => t.parse::<f64>().ok(),
            };
            parsed.map(Value::Float).ok_or_else(|| format!("could not convert string to float: {}", py_str_repr(s)))
        }
        other => Err(format!("float() argument must be a string or a real number, not {}", other.kind())),
    }
}

pub fn to_string(v: &Value) -> Result<Value, String> {
    Ok(Value::String(match v {
        Value::String(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format_float(*f),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        Value::Json(j) => j.to_string(),
        Value::List(_) | Value::Handle(_) => return Err(format!("a {} is not a string", v.kind())),
    }))
}

pub fn to_bool(v: &Value) -> Result<Value, String> {
    Ok(Value::Bool(match v {
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::String(s) => !s.is_empty(),
        Value::None => false,
        Value::Json(j) => match j {
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        },
        Value::List(l) => !l.is_empty(),
        Value::Handle(_) => true,
    }))
}

/// Python's `repr()` of a string: single quotes unless the text holds one and no double quote;
/// non-printable characters escaped as `\xNN`, `\uNNNN` or `\UNNNNNNNN`.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let cp = c as u32;
                if cp < 0x100 {
                    out.push_str(&format!("\\x{cp:02x}"));
                } else if cp < 0x10000 {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one character (approximated: control characters, the
/// non-space separators and the common format characters are not printable).
pub fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c as u32, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF | 0xD800..=0xDFFF)
}

/// Python's `==` between a constant and a combo option: numbers compare by value.
pub fn combo_eq(v: &Value, option: &serde_json::Value) -> bool {
    let o = Value::from_json(option);
    match (v, &o) {
        (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => (*a as f64) == *b,
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_conversions() {
        assert_eq!(to_int(&Value::Float(2.9)).unwrap(), Value::Int(2));
        assert_eq!(to_int(&Value::Float(-2.9)).unwrap(), Value::Int(-2));
        assert_eq!(to_int(&Value::String(" 12 ".into())).unwrap(), Value::Int(12));
        assert!(to_int(&Value::String("1.5".into())).is_err());
        assert_eq!(to_float(&Value::Int(3)).unwrap(), Value::Float(3.0));
        assert_eq!(to_string(&Value::Float(3.0)).unwrap(), Value::String("3.0".into()));
        assert_eq!(to_bool(&Value::String("false".into())).unwrap(), Value::Bool(true));
        assert_eq!(to_bool(&Value::String(String::new())).unwrap(), Value::Bool(false));
        assert!(combo_eq(&Value::Int(1), &serde_json::json!(1.0)));
    }

    #[test]
    fn python_string_repr() {
        assert_eq!(py_str_repr("abc"), "'abc'");
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        assert_eq!(py_str_repr("'\""), "'\\'\"'");
        assert_eq!(py_str_repr("a\nb\\"), "'a\\nb\\\\'");
        assert_eq!(to_int(&Value::String("x".into())).unwrap_err(), "invalid literal for int() with base 10: 'x'");
    }
}
