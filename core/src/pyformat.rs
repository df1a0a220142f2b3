//! Python's `str.format(**kwargs)` and the format-spec mini-language (`format(value, spec)`)
//! for the values that flow through workflows: str, int, float, bool, None, lists and dicts.

use comfyrs_runtime::Value;
use serde_json::Value as Json;

use super::pyvalue::{float_repr, py_repr, py_str};

/// A Python exception: (type, message).
pub type PyErr = (&'static str, String);

fn value_error(m: impl Into<String>) -> PyErr {
    ("ValueError", m.into())
}

/// `template.format(**kwargs)`.
pub fn format(template: &str, kwargs: &[(String, Value)]) -> Result<String, PyErr> {
    format_depth(template, kwargs, 2)
}

fn format_depth(template: &str, kwargs: &[(String, Value)], depth: u32) -> Result<String, PyErr> {
    let chars: Vec<char> = template.chars().collect();
    let mut out = String::with_capacity(template.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '}' {
            if chars.get(i + 1) == Some(&'}') {
                out.push('}');
                i += 2;
                continue;
            }
            return Err(value_error("Single '}' encountered in format string"));
        }
        if c != '{' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            out.push('{');
            i += 2;
            continue;
        }
        // A replacement field: find its end, counting nested braces.
        let mut j = i + 1;
        let mut level = 1;
        while j < chars.len() {
            match chars[j] {
                '{' => level += 1,
                '}' => {
                    level -= 1;
                    if level == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        if j >= chars.len() {
            return Err(value_error(if i + 1 >= chars.len() { "Single '{' encountered in format string" } else { "expected '}' before end of string" }));
        }
        if depth == 0 {
            return Err(value_error("Max string recursion exceeded"));
        }
        let field: String = chars[i + 1..j].iter().collect();
        out.push_str(&replacement(&field, kwargs, depth)?);
        i = j + 1;
    }
    Ok(out)
}

/// One `{field!conv:spec}`.
fn replacement(field: &str, kwargs: &[(String, Value)], depth: u32) -> Result<String, PyErr> {
    // The field name ends at the first '!' or ':' outside brackets.
    let mut name_end = field.len();
    let mut in_bracket = false;
    for (k, c) in field.char_indices() {
        match c {
            '[' => in_bracket = true,
            ']' => in_bracket = false,
            '!' | ':' if !in_bracket => {
                name_end = k;
                break;
            }
            _ => {}
        }
    }
    let name = &field[..name_end];
    let rest = &field[name_end..];
    let (conversion, spec) = if let Some(r) = rest.strip_prefix('!') {
        let mut cs = r.chars();
        let conv = cs.next().ok_or_else(|| value_error("end of string while looking for conversion specifier"))?;
        let after = cs.as_str();
        let spec = match after.strip_prefix(':') {
            Some(s) => s,
            None if after.is_empty() => "",
            None => return Err(value_error("expected ':' after conversion specifier")),
        };
        (Some(conv), spec)
    } else if let Some(s) = rest.strip_prefix(':') {
        (None, s)
    } else {
        (None, "")
    };
    let value = lookup(name, kwargs)?;
    // Nested fields in the spec are formatted first.
    let spec = if spec.contains('{') { format_depth(spec, kwargs, depth - 1)? } else { spec.to_string() };
    let value = match conversion {
        None => value,
        Some('s') => Value::String(py_str(&value)),
        Some('r') => Value::String(py_repr(&value)),
        Some('a') => Value::String(ascii(&py_repr(&value))),
        Some(c) => return Err(value_error(format!("Unknown conversion specifier {c}"))),
    };
    format_value(&value, &spec)
}

/// Resolves `name[index].attr...` against the keyword arguments.
fn lookup(name: &str, kwargs: &[(String, Value)]) -> Result<Value, PyErr> {
    let first_end = name.find(['.', '[']).unwrap_or(name.len());
    let arg = &name[..first_end];
    if arg.is_empty() || arg.chars().all(|c| c.is_ascii_digit()) {
        let index = if arg.is_empty() { "0" } else { arg };
        return Err(("IndexError", format!("Replacement index {index} out of range for positional args tuple")));
    }
    let mut value = kwargs
        .iter()
        .find(|(k, _)| k == arg)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ("KeyError", format!("'{arg}'")))?;
    let mut rest = &name[first_end..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let attr = &r[..end];
            if attr.is_empty() {
                return Err(value_error("Empty attribute in format string"));
            }
            return Err(("AttributeError", format!("'{}' object has no attribute '{attr}'", type_name(&value))));
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| value_error("Missing ']' in format string"))?;
            let key = &r[..end];
            if key.is_empty() {
                return Err(value_error("Empty attribute in format string"));
            }
            value = index(&value, key)?;
            rest = &r[end + 1..];
            if !rest.is_empty() && !rest.starts_with(['.', '[']) {
                return Err(value_error("Only '.' or '[' may follow ']' in format field specifier"));
            }
        } else {
            return Err(value_error("Only '.' or '[' may follow ']' in format field specifier"));
        }
    }
    Ok(value)
}

/// `value[key]` with the format-string rule: all-digit keys are ints, others strings.
fn index(value: &Value, key: &str) -> Result<Value, PyErr> {
    let int_key: Option<i128> = if key.chars().all(|c| c.is_ascii_digit()) { key.parse().ok() } else { None };
    let list_index = |len: usize| -> Result<usize, PyErr> {
        match int_key {
            Some(i) if (i as usize) < len => Ok(i as usize),
            Some(_) => Err(("IndexError", "list index out of range".into())),
            None => Err(("TypeError", "list indices must be integers or slices, not str".into())),
        }
    };
    match value {
        Value::List(items) => Ok(items[list_index(items.len())?].clone()),
        Value::Json(Json::Array(items)) => Ok(Value::from_json(&items[list_index(items.len())?])),
        Value::Json(Json::Object(map)) => {
            if int_key.is_some() {
                return Err(("KeyError", key.to_string()));
            }
            map.get(key).map(json_value).ok_or_else(|| ("KeyError", format!("'{key}'")))
        }
        Value::String(s) => match int_key {
            Some(i) => s.chars().nth(i as usize).map(|c| Value::String(c.to_string())).ok_or_else(|| ("IndexError", "string index out of range".into())),
            None => Err(("TypeError", "string indices must be integers, not 'str'".into())),
        },
        other => Err(("TypeError", format!("'{}' object is not subscriptable", type_name(other)))),
    }
}

/// A JSON member as the Python value `json.loads` gives (containers stay JSON).
fn json_value(j: &Json) -> Value {
    match j {
        Json::Array(_) | Json::Object(_) => Value::Json(j.clone()),
        other => Value::from_json(other),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Bool(_) => "bool",
        Value::String(_) => "str",
        Value::None => "NoneType",
        Value::List(_) => "list",
        Value::Json(j) => match j {
            Json::Null => "NoneType",
            Json::Bool(_) => "bool",
            Json::Number(n) if n.is_f64() => "float",
            Json::Number(_) => "int",
            Json::String(_) => "str",
            Json::Array(_) => "list",
            Json::Object(_) => "dict",
        },
        Value::Handle(_) => "object",
    }
}

fn ascii(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let cp = c as u32;
        if cp < 0x80 {
            out.push(c);
        } else if cp < 0x100 {
            out.push_str(&format!("\\x{cp:02x}"));
        } else if cp < 0x10000 {
            out.push_str(&format!("\\u{cp:04x}"));
        } else {
            out.push_str(&format!("\\U{cp:08x}"));
        }
    }
    out
}

/// A parsed format spec: `[[fill]align][sign][z][#][0][width][grouping][.precision][type]`.
#[derive(Debug, Default)]
struct Spec {
    fill: Option<char>,
    align: Option<char>,
    sign: Option<char>,
    z: bool,
    alternate: bool,
    zero: bool,
    width: usize,
    grouping: Option<char>,
    precision: Option<usize>,
    ty: Option<char>,
}

fn parse_spec(spec: &str) -> Result<Spec, PyErr> {
    let chars: Vec<char> = spec.chars().collect();
    let mut s = Spec::default();
    let mut i = 0;
    let is_align = |c: char| matches!(c, '<' | '>' | '=' | '^');
    if chars.len() >= 2 && is_align(chars[1]) {
        s.fill = Some(chars[0]);
        s.align = Some(chars[1]);
        i = 2;
    } else if !chars.is_empty() && is_align(chars[0]) {
        s.align = Some(chars[0]);
        i = 1;
    }
    if let Some(&c) = chars.get(i) {
        if matches!(c, '+' | '-' | ' ') {
            s.sign = Some(c);
            i += 1;
        }
    }
    if chars.get(i) == Some(&'z') {
        s.z = true;
        i += 1;
    }
    if chars.get(i) == Some(&'#') {
        s.alternate = true;
        i += 1;
    }
    if chars.get(i) == Some(&'0') {
        s.zero = true;
        i += 1;
    }
    let start = i;
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        s.width = chars[start..i].iter().collect::<String>().parse().map_err(|_| value_error("Too many decimal digits in format string"))?;
    }
    if let Some(&c) = chars.get(i) {
        if c == ',' || c == '_' {
            s.grouping = Some(c);
            i += 1;
        }
    }
    if chars.get(i) == Some(&'.') {
        i += 1;
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(value_error("Format specifier missing precision"));
        }
        s.precision = Some(chars[start..i].iter().collect::<String>().parse().map_err(|_| value_error("Too many decimal digits in format string"))?);
    }
    if i < chars.len() {
        s.ty = Some(chars[i]);
        i += 1;
    }
    if i < chars.len() {
        return Err(value_error("Invalid format specifier"));
    }
    Ok(s)
}

/// The `0` flag: zero fill, with sign-aware ('=') alignment for numbers unless one is given.
fn apply_zero(s: &mut Spec, default_align: char) {
    if s.zero && s.fill.is_none() {
        s.fill = Some('0');
        if s.align.is_none() {
            s.align = Some(default_align);
        }
    }
}

/// `format(value, spec)`.
pub fn format_value(v: &Value, spec: &str) -> Result<String, PyErr> {
    match v {
        Value::Json(j) => match j {
            Json::String(s) => format_str(s, spec),
            Json::Bool(b) => format_value(&Value::Bool(*b), spec),
            Json::Number(_) | Json::Null => format_value(&Value::from_json(j), spec),
            _ => format_object(v, spec),
        },
        Value::String(s) => format_str(s, spec),
        Value::Int(i) => format_int(*i, spec),
        Value::Bool(b) => {
            if spec.is_empty() {
                Ok(py_str(v))
            } else {
                format_int(*b as i128, spec)
            }
        }
        Value::Float(f) => format_float(*f, spec),
        _ => format_object(v, spec),
    }
}

fn format_object(v: &Value, spec: &str) -> Result<String, PyErr> {
    if spec.is_empty() {
        Ok(py_str(v))
    } else {
        Err(("TypeError", format!("unsupported format string passed to {}.__format__", type_name(v))))
    }
}

fn pad(body: &str, sign_prefix: &str, s: &Spec, default_align: char) -> String {
    let len = body.chars().count() + sign_prefix.chars().count();
    let fill = s.fill.unwrap_or(' ');
    if len >= s.width {
        return format!("{sign_prefix}{body}");
    }
    let n = s.width - len;
    let f = |k: usize| std::iter::repeat_n(fill, k).collect::<String>();
    match s.align.unwrap_or(default_align) {
        '<' => format!("{sign_prefix}{body}{}", f(n)),
        '^' => format!("{}{sign_prefix}{body}{}", f(n / 2), f(n - n / 2)),
        '=' => format!("{sign_prefix}{}{body}", f(n)),
        _ => format!("{}{sign_prefix}{body}", f(n)),
    }
}

fn format_str(text: &str, spec: &str) -> Result<String, PyErr> {
    let s = parse_spec(spec)?;
    if let Some(t) = s.ty {
        if t != 's' {
            return Err(value_error(format!("Unknown format code '{t}' for object of type 'str'")));
        }
    }
    if s.sign.is_some() {
        return Err(value_error("Sign not allowed in string format specifier"));
    }
    if s.alternate {
        return Err(value_error("Alternate form (#) not allowed in string format specifier"));
    }
    if s.align == Some('=') {
        return Err(value_error("'=' alignment not allowed in string format specifier"));
    }
    if let Some(g) = s.grouping {
        return Err(value_error(format!("Cannot specify '{g}' with 's'.")));
    }
    let body: String = match s.precision {
        Some(p) => text.chars().take(p).collect(),
        None => text.to_string(),
    };
    let mut s = s;
    apply_zero(&mut s, '<');
    Ok(pad(&body, "", &s, '<'))
}

fn group_digits(digits: &str, sep: char, every: usize) -> String {
    let chars: Vec<char> = digits.chars().collect();
    let mut out = String::new();
    for (k, c) in chars.iter().enumerate() {
        if k > 0 && (chars.len() - k).is_multiple_of(every) {
            out.push(sep);
        }
        out.push(*c);
    }
    out
}

fn sign_of(neg: bool, s: &Spec) -> &'static str {
    if neg {
        "-"
    } else {
        match s.sign {
            Some('+') => "+",
            Some(' ') => " ",
            _ => "",
        }
    }
}

fn format_int(i: i128, spec: &str) -> Result<String, PyErr> {
    let mut s = parse_spec(spec)?;
    let ty = s.ty.unwrap_or('d');
    if matches!(ty, 'e' | 'E' | 'f' | 'F' | 'g' | 'G' | '%') {
        return format_float(i as f64, spec);
    }
    if s.precision.is_some() {
        return Err(value_error("Precision not allowed in integer format specifier"));
    }
    apply_zero(&mut s, '=');
    if s.z {
        return Err(value_error("Negative zero coercion (z) not allowed in integer format specifier"));
    }
    let neg = i < 0;
    let mag = i.unsigned_abs();
    let (digits, prefix, every) = match ty {
        'd' | 'n' => (mag.to_string(), "", 3),
        'b' => (format!("{mag:b}"), "0b", 4),
        'o' => (format!("{mag:o}"), "0o", 4),
        'x' => (format!("{mag:x}"), "0x", 4),
        'X' => (format!("{mag:X}"), "0X", 4),
        'c' => {
            if s.sign.is_some() {
                return Err(value_error("Sign not allowed with integer format specifier 'c'"));
            }
            let c = u32::try_from(i).ok().and_then(char::from_u32).ok_or_else(|| ("OverflowError", "%c arg not in range(0x110000)".to_string()))?;
            return Ok(pad(&c.to_string(), "", &s, '<'));
        }
        t => return Err(value_error(format!("Unknown format code '{t}' for object of type 'int'"))),
    };
    if let Some(g) = s.grouping {
        if g == ',' && !matches!(ty, 'd') {
            return Err(value_error(format!("Cannot specify ',' with '{ty}'.")));
        }
    }
    let prefix = if s.alternate { prefix } else { "" };
    let sign = format!("{}{prefix}", sign_of(neg, &s));
    let body = match s.grouping {
        Some(g) => {
            if s.align == Some('=') && s.fill == Some('0') && s.width > 0 {
                zero_pad_grouped(&digits, g, every, s.width.saturating_sub(sign.len()))
            } else {
                group_digits(&digits, g, every)
            }
        }
        None => digits,
    };
    Ok(pad(&body, &sign, &s, '>'))
}

/// Zero padding that continues the digit grouping (`format(1234, '08,')` → `'0,001,234'`).
fn zero_pad_grouped(digits: &str, sep: char, every: usize, width: usize) -> String {
    let mut d = digits.to_string();
    loop {
        let g = group_digits(&d, sep, every);
        if g.chars().count() >= width {
            return g;
        }
        d.insert(0, '0');
    }
}

/// Python's `'%.{p}e'` body for a finite non-negative float.
fn exp_body(x: f64, p: usize, upper: bool) -> String {
    let s = format!("{:.*e}", p, x);
    let (m, e) = s.split_once('e').unwrap();
    let e: i32 = e.parse().unwrap();
    format!("{m}{}{}{:02}", if upper { 'E' } else { 'e' }, if e < 0 { '-' } else { '+' }, e.abs())
}

fn format_float(f: f64, spec: &str) -> Result<String, PyErr> {
    let mut s = parse_spec(spec)?;
    apply_zero(&mut s, '=');
    if let Some(t) = s.ty {
        if !matches!(t, 'e' | 'E' | 'f' | 'F' | 'g' | 'G' | 'n' | '%') {
            return Err(value_error(format!("Unknown format code '{t}' for object of type 'float'")));
        }
    }
    let upper = matches!(s.ty, Some('E' | 'F' | 'G'));
    let mut neg = f.is_sign_negative() && !f.is_nan();
    let x = f.abs();
    let body = if x.is_nan() || x.is_infinite() {
        let t = if x.is_nan() { "nan" } else { "inf" };
        let t = if upper { t.to_uppercase() } else { t.to_string() };
        if s.ty == Some('%') {
            format!("{t}%")
        } else {
            t
        }
    } else {
        match s.ty {
            None => match s.precision {
                None => {
                    // repr, with '#' forcing a decimal point.
                    let r = float_repr(x);
                    if s.alternate && !r.contains('.') {
                        match r.find('e') {
                            Some(k) => format!("{}.{}", &r[..k], &r[k..]),
                            None => format!("{r}."),
                        }
                    } else {
                        r
                    }
                }
                Some(p) => general(x, p.max(1), s.alternate, false, true),
            },
            Some('e' | 'E') => {
                let b = exp_body(x, s.precision.unwrap_or(6), upper);
                if s.alternate && s.precision == Some(0) {
                    b.replacen(if upper { 'E' } else { 'e' }, if upper { ".E" } else { ".e" }, 1)
                } else {
                    b
                }
            }
            Some('f' | 'F') => {
                let b = format!("{:.*}", s.precision.unwrap_or(6), x);
                if s.alternate && s.precision == Some(0) {
                    format!("{b}.")
                } else {
                    b
                }
            }
            Some('g' | 'G' | 'n') => general(x, s.precision.unwrap_or(6).max(1), s.alternate, upper, false),
            Some('%') => format!("{:.*}%", s.precision.unwrap_or(6), x * 100.0),
            _ => unreachable!(),
        }
    };
    if s.z && neg && body.trim_end_matches('%').chars().all(|c| matches!(c, '0' | '.' | 'e' | 'E' | '+' | '-')) {
        neg = false;
    }
    let body = match s.grouping {
        Some(g) => {
            let (int_part, rest) = match body.find(|c: char| !c.is_ascii_digit()) {
                Some(k) => body.split_at(k),
                None => (body.as_str(), ""),
            };
            if int_part.is_empty() {
                body.clone()
            } else if s.align == Some('=') && s.fill == Some('0') && s.width > 0 {
                let sign_len = sign_of(neg, &s).len();
                let want = s.width.saturating_sub(sign_len + rest.chars().count());
                format!("{}{rest}", zero_pad_grouped(int_part, g, 3, want))
            } else {
                format!("{}{rest}", group_digits(int_part, g, 3))
            }
        }
        None => body,
    };
    let sign = sign_of(neg, &s);
    Ok(pad(&body, sign, &s, '>'))
}

/// The `'g'` presentation; with `add_dot_0` the no-type presentation with a precision (which
/// switches to exponent notation one digit earlier and keeps a `.0` on integral results).
fn general(x: f64, p: usize, alternate: bool, upper: bool, add_dot_0: bool) -> String {
    let e_form = format!("{:.*e}", p - 1, x);
    let exp: i32 = e_form.split_once('e').unwrap().1.parse().unwrap();
    let decpt = exp + 1;
    let limit = if add_dot_0 { p as i32 - 1 } else { p as i32 };
    let use_exp = decpt <= -4 || decpt > limit;
    let body = if use_exp { exp_body(x, p - 1, upper) } else { format!("{:.*}", (p as i32 - decpt).max(0) as usize, x) };
    let (mant, exp_part) = match body.find(['e', 'E']) {
        Some(k) => (body[..k].to_string(), body[k..].to_string()),
        None => (body.clone(), String::new()),
    };
    let mant = if alternate {
        if mant.contains('.') {
            mant
        } else {
            format!("{mant}.")
        }
    } else if mant.contains('.') {
        mant.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        mant
    };
    let mant = if add_dot_0 && !use_exp && !mant.contains('.') { format!("{mant}.0") } else { mant };
    format!("{mant}{exp_part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn f(spec: &str, v: Value) -> String {
        format_value(&v, spec).unwrap_or_else(|e| panic!("{spec}: {e:?}"))
    }

    #[test]
    fn fields_and_escapes() {
        let k = kw(&[("a", Value::Int(5)), ("b", Value::String("x".into())), ("c", Value::Float(0.5))]);
        assert_eq!(format("{a} and {b}!", &k).unwrap(), "5 and x!");
        assert_eq!(format("{{literal}} {c}", &k).unwrap(), "{literal} 0.5");
        assert_eq!(format("{b!r} {a:>4} {c:.3f}", &k).unwrap(), "'x'    5 0.500");
        assert_eq!(format("{a:{a}d}", &k).unwrap(), "    5");
        assert_eq!(format("{z}", &k).unwrap_err().0, "KeyError");
        assert_eq!(format("{}", &k).unwrap_err().0, "IndexError");
        assert_eq!(format("{a", &k).unwrap_err().0, "ValueError");
        assert_eq!(format("a}", &k).unwrap_err().0, "ValueError");
        let l = kw(&[("a", Value::List(vec![Value::Int(1), Value::String("q".into())]))]);
        assert_eq!(format("{a[1]} {a}", &l).unwrap(), "q [1, 'q']");
        let d = kw(&[("a", Value::Json(serde_json::json!({"k": [1, 2]})))]);
        assert_eq!(format("{a[k][0]} {a}", &d).unwrap(), "1 {'k': [1, 2]}");
        assert_eq!(format("{a!s:>3}", &kw(&[("a", Value::None)])).unwrap(), "None");
        assert_eq!(format("{a:>5}", &kw(&[("a", Value::None)])).unwrap_err().0, "TypeError");
    }

    #[test]
    fn ints() {
        assert_eq!(f("", Value::Int(-42)), "-42");
        assert_eq!(f("+d", Value::Int(42)), "+42");
        assert_eq!(f("08,", Value::Int(1234)), "0,001,234");
        assert_eq!(f(",", Value::Int(1234567)), "1,234,567");
        assert_eq!(f("_b", Value::Int(255)), "1111_1111");
        assert_eq!(f("#x", Value::Int(255)), "0xff");
        assert_eq!(f("#06x", Value::Int(255)), "0x00ff");
        assert_eq!(f("^7", Value::Int(42)), "  42   ");
        assert_eq!(f("*<5", Value::Int(7)), "7****");
        assert_eq!(f("c", Value::Int(65)), "A");
        assert_eq!(f(".2f", Value::Int(3)), "3.00");
        assert_eq!(f("d", Value::Bool(true)), "1");
        assert_eq!(f("", Value::Bool(true)), "True");
        assert!(format_value(&Value::Int(1), ".2").is_err());
    }

    #[test]
    fn floats() {
        assert_eq!(f("", Value::Float(1.0)), "1.0");
        assert_eq!(f(".2f", Value::Float(1.23456)), "1.23");
        assert_eq!(f(".3e", Value::Float(12345.678)), "1.235e+04");
        assert_eq!(f("g", Value::Float(1234567.0)), "1.23457e+06");
        assert_eq!(f("g", Value::Float(0.0001)), "0.0001");
        assert_eq!(f("g", Value::Float(0.00001)), "1e-05");
        assert_eq!(f("g", Value::Float(100.0)), "100");
        assert_eq!(f(".4", Value::Float(1234.0)), "1.234e+03");
        assert_eq!(f(".4", Value::Float(12.0)), "12.0");
        assert_eq!(f(".2", Value::Float(0.5)), "0.5");
        assert_eq!(f("#g", Value::Float(100.0)), "100.000");
        assert_eq!(f(".1%", Value::Float(0.256)), "25.6%");
        assert_eq!(f(",.2f", Value::Float(1234567.891)), "1,234,567.89");
        assert_eq!(f("010.2f", Value::Float(-1.23456)), "-000001.23");
        assert_eq!(f("+.1f", Value::Float(2.0)), "+2.0");
        assert_eq!(f("F", Value::Float(f64::INFINITY)), "INF");
        assert_eq!(f("z.1f", Value::Float(-0.01)), "0.0");
        assert_eq!(f(".1f", Value::Float(-0.01)), "-0.0");
        assert_eq!(f("e", Value::Float(0.0)), "0.000000e+00");
        assert_eq!(f("g", Value::Float(0.0)), "0");
        // Exact ties round half to even, like Python's correctly rounded formatting.
        assert_eq!(f(".2f", Value::Float(0.125)), "0.12");
        assert_eq!(f(".0f", Value::Float(2.5)), "2");
        assert_eq!(f(".0f", Value::Float(1.5)), "2");
        assert_eq!(f(".2f", Value::Float(2.675)), "2.67");
        assert_eq!(f(".0e", Value::Float(2.5)), "2e+00");
        assert_eq!(f(".1", Value::Float(0.25)), "0.2");
    }

    #[test]
    fn strings() {
        assert_eq!(f(">6", Value::String("ab".into())), "    ab");
        assert_eq!(f("^6", Value::String("ab".into())), "  ab  ");
        assert_eq!(f(".1", Value::String("ab".into())), "a");
        assert_eq!(f("05", Value::String("ab".into())), "ab000");
        assert!(format_value(&Value::String("a".into()), "+").is_err());
        assert!(format_value(&Value::String("a".into()), "d").is_err());
    }

    /// `format(value, spec)` for a grid of values and specs, recorded from CPython 3.11
    /// (testdata/python_format.json): the text, or the exception type.
    #[test]
    // Thousands of recorded cases take many minutes under miri (scripts/miri.sh); the unit tests
    // above exercise the same code there.
    #[cfg_attr(miri, ignore)]
    fn matches_cpython_recordings() {
        let cases: Vec<serde_json::Value> = serde_json::from_str(include_str!("testdata/python_format.json")).unwrap();
        let mut failures = Vec::new();
        for c in &cases {
            let v = &c["v"];
            let value = if let Some(f) = v.get("float") {
                Value::Float(f.as_str().unwrap().parse().unwrap())
            } else if let Some(b) = v.get("bool") {
                Value::Bool(b.as_bool().unwrap())
            } else if let Some(i) = v.get("int") {
                Value::Int(i.as_i64().unwrap() as i128)
            } else if let Some(s) = v.get("str") {
                Value::String(s.as_str().unwrap().into())
            } else {
                Value::None
            };
            let spec = c["spec"].as_str().unwrap();
            let got = format_value(&value, spec);
            match (c.get("ok"), got) {
                (Some(want), Ok(g)) if want.as_str() == Some(g.as_str()) => {}
                (None, Err((ty, _))) if c["err"].as_str() == Some(ty) => {}
                (want, got) => failures.push(format!("format({value:?}, {spec:?}): got {got:?}, want {:?}", want.or(c.get("err")))),
            }
        }
        assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }
}
