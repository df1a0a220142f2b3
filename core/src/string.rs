//! `comfy_extras/nodes_string.py`: the text nodes.

use std::sync::Arc;

use comfyrs_runtime::{Args, CallOutput, InputSpec, NodeClass, NodeError, Value};
use serde_json::{json, Value as Json};

use super::pyformat;
use super::pyregex::{Flags, PyRegex};
use super::pyvalue::{self, json_dumps, json_str, to_json_tree};
use super::{autogrow_input, autogrow_values, opt_bool, opt_int, out, out_named, py_error, v3_bool, v3_combo, v3_int, v3_schema, v3_string, FnNode, Grow};

const MODULE: &str = "comfy_extras.nodes_string";
const CATEGORY: &str = "text";

const LETTERS: [&str; 26] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z"];
const FORMAT_GROW: Grow<'static> = Grow::Names(&LETTERS);

fn multiline(name: &str) -> InputSpec {
    v3_string(name, None, true)
}

/// `io.Boolean.Input(name, default=..., advanced=True)`.
fn advanced_bool(name: &str, default: bool) -> InputSpec {
    v3_bool(name, Some(default)).with("advanced", json!(true))
}

fn indent_input() -> InputSpec {
    v3_int("indent", Some(2), Some(0), Some(8)).tooltip("Spaces per indent level. 0 produces compact single-line string.")
}

pub fn nodes() -> Vec<Arc<dyn NodeClass>> {
    let schema = |name: &str, display: &str, aliases: &[&str]| v3_schema(name, display, CATEGORY, MODULE, aliases);
    vec![
        FnNode::new(
            schema("StringFormat", "Format Text", &["string", "format"])
                .description("Same as Python's string format method. Supports all of Python's format options and features.")
                .input(autogrow_input("values", "value", json!(["*", {}]), &FORMAT_GROW, 0))
                .input(v3_string("f_string", Some("{a}"), true))
                .output(out("STRING")),
            string_format,
        ),
        FnNode::new(
            schema(
                "StringConcatenate",
                "Concatenate Text",
                &["concatenate", "text concat", "join text", "merge text", "combine strings", "string concat", "append text", "combine text"],
            )
            .input(multiline("string_a"))
            .input(multiline("string_b"))
            .input(v3_string("delimiter", Some(""), false))
            .output(out("STRING")),
            concatenate,
        ),
        FnNode::new(
            schema("StringSubstring", "Substring", &["substring", "extract text", "text portion"])
                .input(multiline("string"))
                .input(v3_int("start", None, None, None))
                .input(v3_int("end", None, None, None))
                .output(out("STRING")),
            substring,
        ),
        FnNode::new(
            schema("StringLength", "Text Length", &["character count", "text size", "string length"])
                .input(multiline("string"))
                .output(out_named("INT", "length")),
            length,
        ),
        FnNode::new(
            schema("CaseConverter", "Convert Text Case", &["case converter", "text case", "uppercase", "lowercase", "capitalize"])
                .input(multiline("string"))
                .input(v3_combo("mode", &["UPPERCASE", "lowercase", "Capitalize", "Title Case"]))
                .output(out("STRING")),
            case_convert,
        ),
        FnNode::new(
            schema("StringTrim", "Trim Text", &["trim", "clean whitespace", "remove whitespace", "remove spaces", "strip"])
                .input(multiline("string"))
                .input(v3_combo("mode", &["Both", "Left", "Right"]))
                .output(out("STRING")),
            trim,
        ),
        FnNode::new(
            schema("StringReplace", "Replace Text", &["replace", "find and replace", "substitute", "swap text"])
                .input(multiline("string"))
                .input(multiline("find"))
                .input(multiline("replace"))
                .output(out("STRING")),
            replace,
        ),
        FnNode::new(
            schema("StringContains", "Contains Text", &["contains", "text includes", "string includes"])
                .input(multiline("string"))
                .input(multiline("substring"))
                .input(advanced_bool("case_sensitive", true))
                .output(out_named("BOOLEAN", "contains")),
            contains,
        ),
        FnNode::new(
            schema("StringCompare", "Compare Text", &["compare", "text match", "string equals", "starts with", "ends with"])
                .input(multiline("string_a"))
                .input(multiline("string_b"))
                .input(v3_combo("mode", &["Starts With", "Ends With", "Equal"]))
                .input(advanced_bool("case_sensitive", true))
                .output(out("BOOLEAN")),
            compare,
        ),
        FnNode::new(
            schema("RegexMatch", "Match Text", &["regex match", "regex", "pattern match", "text contains", "string match"])
                .input(multiline("string"))
                .input(multiline("regex_pattern"))
                .input(advanced_bool("case_insensitive", true))
                .input(advanced_bool("multiline", false))
                .input(advanced_bool("dotall", false))
                .output(out_named("BOOLEAN", "matches")),
            regex_match,
        ),
        FnNode::new(
            schema("RegexExtract", "Extract Text", &["regex extract", "regex", "pattern extract", "text parser", "parse text"])
                .input(multiline("string"))
                .input(multiline("regex_pattern"))
                .input(v3_combo("mode", &["First Match", "All Matches", "First Group", "All Groups"]))
                .input(advanced_bool("case_insensitive", true))
                .input(advanced_bool("multiline", false))
                .input(advanced_bool("dotall", false))
                .input(v3_int("group_index", Some(1), Some(0), Some(100)).with("advanced", json!(true)))
                .output(out("STRING")),
            regex_extract,
        ),
        FnNode::new(
            schema("RegexReplace", "Replace Text (Regex)", &["regex replace", "regex", "pattern replace", "substitution"])
                .description("Find and replace text using regex patterns.")
                .input(multiline("string"))
                .input(multiline("regex_pattern"))
                .input(multiline("replace"))
                .input(advanced_bool("case_insensitive", true).optional())
                .input(advanced_bool("multiline", false).optional())
                .input(
                    advanced_bool("dotall", false)
                        .optional()
                        .tooltip("When enabled, the dot (.) character will match any character including newline characters. When disabled, dots won't match newlines."),
                )
                .input(
                    v3_int("count", Some(0), Some(0), Some(100))
                        .optional()
                        .with("advanced", json!(true))
                        .tooltip("Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set to 1 to replace only the first match, 2 for the first two matches, etc."),
                )
                .output(out("STRING")),
            regex_replace,
        ),
        FnNode::new(
            schema("JsonExtractString", "Extract Text from JSON", &["json", "extract json", "parse json", "json value", "read json"])
                .description("Extract a key's value from the first valid JSON object in the text, including Markdown code blocks.")
                .input(multiline("json_string"))
                .input(v3_string("key", None, false))
                .output(out("STRING")),
            json_extract,
        ),
        FnNode::new(
            schema("ConvertDictionaryToString", "Convert Dictionary to String", &["json", "dict to json", "stringify", "serialize", "dict to string"])
                .input(InputSpec::socket("dictionary", "DICT"))
                .input(indent_input())
                .output(out("STRING")),
            dict_to_string,
        ),
        FnNode::new(
            schema(
                "ConvertArrayToString",
                "Convert Array to String",
                &["json", "list to json", "stringify", "serialize", "list to string", "array to json"],
            )
            .input(InputSpec::socket("array", "ARRAY"))
            .input(indent_input())
            .output(out("STRING")),
            array_to_string,
        ),
    ]
}

fn text(v: String) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([Value::String(v)]))
}

fn one(v: Value) -> Result<CallOutput, NodeError> {
    Ok(CallOutput::values([v]))
}

/// `f_string.format(**values)`.
fn string_format(args: &Args) -> Result<CallOutput, NodeError> {
    let values = autogrow_values(args, "values", &FORMAT_GROW, 0)?;
    let template = args.string("f_string")?;
    match pyformat::format(template, &values) {
        Ok(s) => text(s),
        Err((ty, msg)) => Err(py_error(ty, msg)),
    }
}

/// `delimiter.join((string_a, string_b))`.
fn concatenate(args: &Args) -> Result<CallOutput, NodeError> {
    let (a, b, d) = (args.string("string_a")?, args.string("string_b")?, args.string("delimiter")?);
    let mut s = String::with_capacity(a.len() + b.len() + d.len());
    s.push_str(a);
    s.push_str(d);
    s.push_str(b);
    text(s)
}

/// `string[start:end]`.
fn substring(args: &Args) -> Result<CallOutput, NodeError> {
    text(pyvalue::slice_str(args.string("string")?, Some(args.int("start")?), Some(args.int("end")?)))
}

/// `len(string)`: code points.
fn length(args: &Args) -> Result<CallOutput, NodeError> {
    one(Value::Int(args.string("string")?.chars().count() as i128))
}

fn case_convert(args: &Args) -> Result<CallOutput, NodeError> {
    let s = args.string("string")?;
    text(match args.string("mode")? {
        "UPPERCASE" => pyvalue::upper(s),
        "lowercase" => pyvalue::lower(s),
        "Capitalize" => pyvalue::capitalize(s),
        "Title Case" => pyvalue::title(s),
        _ => s.to_string(),
    })
}

fn trim(args: &Args) -> Result<CallOutput, NodeError> {
    let s = args.string("string")?;
    text(match args.string("mode")? {
        "Both" => pyvalue::strip(s, true, true),
        "Left" => pyvalue::strip(s, true, false),
        "Right" => pyvalue::strip(s, false, true),
        _ => s,
    }
    .to_string())
}

/// `string.replace(find, replace)` (an empty `find` inserts between every character).
fn replace(args: &Args) -> Result<CallOutput, NodeError> {
    text(args.string("string")?.replace(args.string("find")?, args.string("replace")?))
}

fn contains(args: &Args) -> Result<CallOutput, NodeError> {
    let (s, sub) = (args.string("string")?, args.string("substring")?);
    let found = if args.boolean("case_sensitive")? { s.contains(sub) } else { pyvalue::lower(s).contains(&pyvalue::lower(sub)) };
    one(Value::Bool(found))
}

fn compare(args: &Args) -> Result<CallOutput, NodeError> {
    let (mut a, mut b) = (args.string("string_a")?.to_string(), args.string("string_b")?.to_string());
    if !args.boolean("case_sensitive")? {
        a = pyvalue::lower(&a);
        b = pyvalue::lower(&b);
    }
    match args.string("mode")? {
        "Equal" => one(Value::Bool(a == b)),
        "Starts With" => one(Value::Bool(a.starts_with(&b))),
        "Ends With" => one(Value::Bool(a.ends_with(&b))),
        // ComfyUI returns nothing for an unknown mode; validation keeps it from happening.
        other => Err(NodeError::value_error(format!("unknown mode '{other}'"))),
    }
}

fn flags(args: &Args) -> Result<Flags, NodeError> {
    Ok(Flags {
        ignorecase: opt_bool(args, "case_insensitive", true)?,
        multiline: opt_bool(args, "multiline", false)?,
        dotall: opt_bool(args, "dotall", false)?,
    })
}

/// A failure while matching (not a bad pattern, which the nodes handle as Python does).
fn match_error(e: super::pyregex::PyReError) -> NodeError {
    py_error("RuntimeError", format!("regular expression failed while matching: {e}"))
}

/// `re.search(...) is not None`; a pattern that does not compile gives false.
fn regex_match(args: &Args) -> Result<CallOutput, NodeError> {
    let s = args.string("string")?;
    let found = match PyRegex::compile(args.string("regex_pattern")?, flags(args)?) {
        Ok(re) => re.search(s).map_err(match_error)?.is_some(),
        Err(_) => false,
    };
    one(Value::Bool(found))
}

fn regex_extract(args: &Args) -> Result<CallOutput, NodeError> {
    let s = args.string("string")?;
    let mode = args.string("mode")?;
    let group_index = args.int("group_index")?;
    let Ok(re) = PyRegex::compile(args.string("regex_pattern")?, flags(args)?) else {
        return text(String::new());
    };
    let groups = re.groups() as i128;
    let result = match mode {
        "First Match" => re.search(s).map_err(match_error)?.map(|m| m.group(s, 0).unwrap_or("").to_string()).unwrap_or_default(),
        "All Matches" => {
            // `re.findall`: whole matches without groups, else the first group ("" when unmatched).
            let matches = re.finditer(s, 0).map_err(match_error)?;
            let g = if groups == 0 { 0 } else { 1 };
            matches.iter().map(|m| m.group(s, g).unwrap_or("")).collect::<Vec<_>>().join("\n")
        }
        "First Group" => match re.search(s).map_err(match_error)? {
            Some(m) if groups >= group_index => m.group(s, group_index as usize).unwrap_or("").to_string(),
            _ => String::new(),
        },
        "All Groups" => {
            let mut out = Vec::new();
            if groups > 0 && groups >= group_index {
                for m in re.finditer(s, 0).map_err(match_error)? {
                    if let Some(g) = m.group(s, group_index as usize) {
                        out.push(g);
                    }
                }
            }
            out.join("\n")
        }
        _ => String::new(),
    };
    text(result)
}

/// `re.sub(pattern, replace, string, count=count, flags=...)`; a bad pattern or template is an
/// error here, as in ComfyUI.
fn regex_replace(args: &Args) -> Result<CallOutput, NodeError> {
    let count = opt_int(args, "count", 0)?;
    if count < 0 {
        return text(args.string("string")?.to_string());
    }
    let re = PyRegex::compile(args.string("regex_pattern")?, flags(args)?).map_err(|e| py_error("re.error", e.0))?;
    let out = re.sub(args.string("replace")?, args.string("string")?, count as usize).map_err(|e| py_error("re.error", e.0))?;
    text(out)
}

/// The value of `key` in the first JSON object of the text that decodes (Markdown fences and
/// prose around it are skipped), through Python's `str()`; "" when absent or null.
fn json_extract(args: &Args) -> Result<CallOutput, NodeError> {
    let s = args.string("json_string")?;
    let key = args.string("key")?;
    for (pos, _) in s.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&s[pos..]).into_iter::<Json>();
        let Some(Ok(Json::Object(map))) = stream.next() else { continue };
        return text(match map.get(key) {
            None | Some(Json::Null) => String::new(),
            Some(v) => json_str(v),
        });
    }
    text(String::new())
}

/// `json.dumps(value, ensure_ascii=False, indent=indent or None)`.
fn dump(v: &Value, indent: i128) -> Result<CallOutput, NodeError> {
    let tree = to_json_tree(v).ok_or_else(|| py_error("TypeError", format!("Object of type {} is not JSON serializable", v.kind())))?;
    text(json_dumps(&tree, false, if indent > 0 { Some(indent as usize) } else { None }))
}

fn dict_to_string(args: &Args) -> Result<CallOutput, NodeError> {
    dump(&super::arg(args, "dictionary"), opt_int(args, "indent", 2)?)
}

fn array_to_string(args: &Args) -> Result<CallOutput, NodeError> {
    dump(&super::arg(args, "array"), opt_int(args, "indent", 2)?)
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use super::*;

    fn t(node: &str, args: &[(&str, Value)]) -> Value {
        out1(&run(&find(node), args), 0)
    }

    fn b(v: bool) -> Value {
        Value::Bool(v)
    }

    #[test]
    fn concatenate_substring_length() {
        assert_eq!(t("StringConcatenate", &[("string_a", s("a")), ("string_b", s("b")), ("delimiter", s(" + "))]), s("a + b"));
        let sub = |st: i128, en: i128| t("StringSubstring", &[("string", s("héllo wörld")), ("start", Value::Int(st)), ("end", Value::Int(en))]);
        assert_eq!(sub(0, 5), s("héllo"));
        assert_eq!(sub(-5, -1), s("wörl"));
        assert_eq!(sub(6, 100), s("wörld"));
        assert_eq!(sub(5, 2), s(""));
        assert_eq!(t("StringLength", &[("string", s("héllo😀"))]), Value::Int(6));
    }

    #[test]
    fn case_and_trim() {
        let case = |m: &str| t("CaseConverter", &[("string", s("hello wORLD, it's 3d")), ("mode", s(m))]);
        assert_eq!(case("UPPERCASE"), s("HELLO WORLD, IT'S 3D"));
        assert_eq!(case("lowercase"), s("hello world, it's 3d"));
        assert_eq!(case("Capitalize"), s("Hello world, it's 3d"));
        assert_eq!(case("Title Case"), s("Hello World, It'S 3D"));
        let trim = |m: &str| t("StringTrim", &[("string", s(" \t x \n")), ("mode", s(m))]);
        assert_eq!(trim("Both"), s("x"));
        assert_eq!(trim("Left"), s("x \n"));
        assert_eq!(trim("Right"), s(" \t x"));
    }

    #[test]
    fn replace_contains_compare() {
        assert_eq!(t("StringReplace", &[("string", s("a-b-c")), ("find", s("-")), ("replace", s("+"))]), s("a+b+c"));
        assert_eq!(t("StringReplace", &[("string", s("ab")), ("find", s("")), ("replace", s("."))]), s(".a.b."));
        let has = |st: &str, sub: &str, cs: bool| t("StringContains", &[("string", s(st)), ("substring", s(sub)), ("case_sensitive", b(cs))]);
        assert_eq!(has("Hello", "ELL", true), b(false));
        assert_eq!(has("Hello", "ELL", false), b(true));
        assert_eq!(has("Hello", "", true), b(true));
        let cmp = |a: &str, bb: &str, m: &str, cs: bool| t("StringCompare", &[("string_a", s(a)), ("string_b", s(bb)), ("mode", s(m)), ("case_sensitive", b(cs))]);
        assert_eq!(cmp("Hello", "he", "Starts With", true), b(false));
        assert_eq!(cmp("Hello", "he", "Starts With", false), b(true));
        assert_eq!(cmp("Hello", "LO", "Ends With", false), b(true));
        assert_eq!(cmp("a", "a", "Equal", true), b(true));
    }

    fn rx(node: &str, string: &str, pattern: &str, extra: &[(&str, Value)]) -> Value {
        let mut a = vec![("string", s(string)), ("regex_pattern", s(pattern)), ("case_insensitive", b(true)), ("multiline", b(false)), ("dotall", b(false))];
        a.extend_from_slice(extra);
        t(node, &a)
    }

    #[test]
    fn regex_match_and_extract() {
        assert_eq!(rx("RegexMatch", "Hello World", "world", &[]), b(true));
        assert_eq!(rx("RegexMatch", "Hello", "(", &[]), b(false));
        let ex = |mode: &str, p: &str, g: i128| rx("RegexExtract", "a1 b22 c333", p, &[("mode", s(mode)), ("group_index", Value::Int(g))]);
        assert_eq!(ex("First Match", r"\d+", 1), s("1"));
        assert_eq!(ex("All Matches", r"\d+", 1), s("1\n22\n333"));
        assert_eq!(ex("All Matches", r"([a-z])(\d+)", 1), s("a\nb\nc"));
        assert_eq!(ex("All Matches", r"[a-z](\d+)", 1), s("1\n22\n333"));
        assert_eq!(ex("First Group", r"([a-z])(\d+)", 2), s("1"));
        assert_eq!(ex("First Group", r"([a-z])(\d+)", 3), s(""));
        assert_eq!(ex("First Group", r"([a-z])(\d+)", 0), s("a1"));
        assert_eq!(ex("All Groups", r"([a-z])(\d+)", 2), s("1\n22\n333"));
        assert_eq!(ex("All Groups", r"[a-z]\d+", 0), s(""));
        assert_eq!(ex("First Match", r"[", 1), s(""));
    }

    #[test]
    fn regex_replace_follows_re_sub() {
        let rr = |string: &str, p: &str, r: &str, extra: &[(&str, Value)]| {
            let mut a = vec![("string", s(string)), ("regex_pattern", s(p)), ("replace", s(r))];
            a.extend_from_slice(extra);
            run(&find("RegexReplace"), &a)
        };
        assert_eq!(out1(&rr("Hello hello", "hello", "bye", &[]), 0), s("bye bye"));
        assert_eq!(out1(&rr("Hello hello", "hello", "bye", &[("case_insensitive", b(false))]), 0), s("Hello bye"));
        assert_eq!(out1(&rr("a1b2c3", r"(\d)", r"<\1>", &[("count", Value::Int(2))]), 0), s("a<1>b<2>c3"));
        assert_eq!(out1(&rr("line1\nline2", "^line", "L", &[("multiline", b(true))]), 0), s("L1\nL2"));
        assert_eq!(out1(&rr("a\nb", "a.b", "X", &[("dotall", b(true))]), 0), s("X"));
        let bad = rr("x", "(", "y", &[]).unwrap_err();
        assert_eq!(bad.exception_type(), "re.error");
    }

    #[test]
    fn format_text() {
        let r = run(
            &find("StringFormat"),
            &[("f_string", s("{a} has {b:.1f}% {c!r}")), ("values.a", s("disk")), ("values.b", Value::Float(42.26)), ("values.c", Value::None)],
        );
        assert_eq!(out1(&r, 0), s("disk has 42.3% None"));
        let missing = run(&find("StringFormat"), &[("f_string", s("{a} {b}")), ("values.a", Value::Int(1))]).unwrap_err();
        assert_eq!(missing.exception_type(), "KeyError");
    }

    #[test]
    fn json_nodes() {
        let ex = |j: &str, k: &str| t("JsonExtractString", &[("json_string", s(j)), ("key", s(k))]);
        assert_eq!(ex(r#"{"name": "x", "n": 1.0, "l": [1, "a"], "z": null}"#, "name"), s("x"));
        assert_eq!(ex(r#"{"n": 1.0}"#, "n"), s("1.0"));
        assert_eq!(ex(r#"{"l": [1, "a", true]}"#, "l"), s("[1, 'a', True]"));
        assert_eq!(ex(r#"{"z": null}"#, "z"), s(""));
        assert_eq!(ex("Here you go:\n```json\n{\"answer\": 42}\n```", "answer"), s("42"));
        assert_eq!(ex("{not json} {\"k\": {\"x\": 1}} trailing", "k"), s("{'x': 1}"));
        assert_eq!(ex("no json", "k"), s(""));
        let d = Value::Json(serde_json::json!({"a": "é", "b": [1, 2]}));
        assert_eq!(t("ConvertDictionaryToString", &[("dictionary", d.clone()), ("indent", Value::Int(0))]), s(r#"{"a": "é", "b": [1, 2]}"#));
        assert_eq!(t("ConvertDictionaryToString", &[("dictionary", d), ("indent", Value::Int(2))]), s("{\n  \"a\": \"é\",\n  \"b\": [\n    1,\n    2\n  ]\n}"));
        let arr = Value::List(vec![Value::Int(1), Value::Float(2.0), Value::None]);
        assert_eq!(t("ConvertArrayToString", &[("array", arr), ("indent", Value::Int(0))]), s("[1, 2.0, null]"));
    }
}
