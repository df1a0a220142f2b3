//! End-to-end tests of the core nodes: API prompts parsed, validated and run by the runtime's
//! executor with only the core nodes registered, checking what PreviewAny shows; the
//! `/object_info` records against the shapes ComfyUI builds; and every example workflow.

use std::path::PathBuf;

use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::NoEvents;
use comfyrs_runtime::executor::{Executor, RunOptions, RunReport};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use comfyrs_runtime::Registry;
use serde_json::{json, Value as Json};

fn registry() -> Registry {
    let mut reg = Registry::new();
    comfyrs_core::register(&mut reg);
    reg
}

fn run_with(reg: &Registry, exec: &mut Executor, text: &str) -> RunReport {
    let (prompt, _) = Prompt::parse(text).expect("prompt parses");
    let v = match validate(prompt, reg, None) {
        Ok(v) => v,
        Err(r) => panic!("prompt rejected: {}", r.to_json()),
    };
    let out = std::env::temp_dir().join("comfyrs-core-tests");
    exec.run(&v, &RunOptions { prompt_id: "test".into(), extra_pnginfo: None, output_dir: out, events: &NoEvents, extra_data: None, registry: None })
}

fn run(text: &str) -> RunReport {
    let reg = registry();
    let mut exec = Executor::new(CacheMode::Lru, 1 << 30);
    run_with(&reg, &mut exec, text)
}

/// The texts a PreviewAny node showed.
fn shown(report: &RunReport, node: &str) -> Vec<String> {
    assert!(report.success(), "run failed: {:?}", report.errors.iter().map(|e| e.to_json()).collect::<Vec<_>>());
    let ui = report.outputs.get(node).unwrap_or_else(|| panic!("node {node} has no UI output: {:?}", report.outputs));
    ui["text"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn shown1(report: &RunReport, node: &str) -> String {
    let t = shown(report, node);
    assert_eq!(t.len(), 1, "{t:?}");
    t[0].clone()
}

#[test]
fn primitive_string_concatenate_preview() {
    let r = run(r#"{
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "Hello"}},
        "2": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "world\n"}},
        "3": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": ["2", 0], "delimiter": ", "}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}
    }"#);
    assert_eq!(shown1(&r, "4"), "Hello, world\n");
}

#[test]
fn preview_any_renders_like_python() {
    let r = run(r#"{
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 42}},
        "2": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.00001}},
        "3": {"class_type": "PrimitiveBoolean", "inputs": {"value": true}},
        "4": {"class_type": "PrimitiveFloat", "inputs": {"value": 3}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "15": {"class_type": "PreviewAny", "inputs": {"source": {"a": [1, 2.5], "b": null}}}
    }"#);
    assert_eq!(shown1(&r, "11"), "42");
    assert_eq!(shown1(&r, "12"), "1e-05");
    assert_eq!(shown1(&r, "13"), "True");
    assert_eq!(shown1(&r, "14"), "3.0");
    assert_eq!(shown1(&r, "15"), "{\n    \"a\": [\n        1,\n        2.5\n    ],\n    \"b\": null\n}");
}

#[test]
fn text_nodes_end_to_end() {
    let r = run(r#"{
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "a1 b22 c333"}},
        "2": {"class_type": "RegexExtract", "inputs": {"string": ["1", 0], "regex_pattern": "([a-z])(\\d+)", "mode": "All Matches",
              "case_insensitive": true, "multiline": false, "dotall": false, "group_index": 1}},
        "3": {"class_type": "RegexReplace", "inputs": {"string": ["1", 0], "regex_pattern": "(\\d)(\\d*)", "replace": "<\\2\\1>"}},
        "4": {"class_type": "StringSubstring", "inputs": {"string": ["1", 0], "start": -4, "end": -1}},
        "5": {"class_type": "JsonExtractString", "inputs": {"json_string": "Sure! ```json\n{\"seed\": 7, \"tags\": [\"a\"]}\n```", "key": "tags"}},
        "6": {"class_type": "StringFormat", "inputs": {"f_string": "{a:>6}|{b:08.3f}|{c:,}", "values.a": ["4", 0], "values.b": ["7", 0], "values.c": ["8", 0]}},
        "7": {"class_type": "PrimitiveFloat", "inputs": {"value": 1.23456}},
        "8": {"class_type": "PrimitiveInt", "inputs": {"value": 1234567}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "15": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
        "16": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}}
    }"#);
    assert_eq!(shown1(&r, "11"), "a\nb\nc");
    assert_eq!(shown1(&r, "12"), "a<1> b<22> c<333>");
    assert_eq!(shown1(&r, "14"), "c33");
    assert_eq!(shown1(&r, "15"), "['a']");
    assert_eq!(shown1(&r, "16"), "   c33|0001.235|1,234,567");
}

#[test]
fn a_node_error_is_reported_with_python_exception_type() {
    let r = run(r#"{
        "1": {"class_type": "StringFormat", "inputs": {"f_string": "{missing}"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
    }"#);
    assert!(!r.success());
    assert_eq!(r.errors[0].node_id, "1");
    assert_eq!(r.errors[0].exception_type, "KeyError");
    assert_eq!(r.errors[0].exception_message, "'missing'");
}

#[test]
fn second_run_is_served_from_cache() {
    let reg = registry();
    let mut exec = Executor::new(CacheMode::Lru, 1 << 30);
    let p = r#"{
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "a"}},
        "2": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": "b", "delimiter": "-"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    }"#;
    let first = run_with(&reg, &mut exec, p);
    assert_eq!(shown1(&first, "3"), "a-b");
    assert_eq!(first.executed().len(), 3);
    let second = run_with(&reg, &mut exec, p);
    assert!(second.executed().is_empty(), "{:?}", second.executed());
    assert_eq!(shown1(&second, "3"), "a-b");
}

#[test]
fn validation_uses_the_declared_bounds() {
    let reg = registry();
    let (prompt, _) = Prompt::parse(
        r#"{"1": {"class_type": "PrimitiveInt", "inputs": {"value": 9223372036854775808}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}"#,
    )
    .unwrap();
    let err = validate(prompt, &reg, None).err().expect("out of range");
    assert_eq!(err.node_errors["1"].errors[0].kind, "value_bigger_than_max");
}

// ---------------------------------------------------------------------------------------------
// /object_info shapes, as ComfyUI builds them from the V3 schemas (`get_v1_info`) and, for
// PreviewAny, from the V1 class attributes.

/// The runtime writes an input without options as `[TYPE]`, ComfyUI as `[TYPE, {}]`: compare
/// them as equal.
fn normalize(mut rec: Json) -> Json {
    if let Some(input) = rec.get_mut("input").and_then(Json::as_object_mut) {
        for section in input.values_mut() {
            if let Some(entries) = section.as_object_mut() {
                for spec in entries.values_mut() {
                    if let Some(a) = spec.as_array_mut() {
                        if a.len() == 1 {
                            a.push(json!({}));
                        }
                    }
                }
            }
        }
    }
    rec
}

fn check_record(reg: &Registry, name: &str, expected: Json) {
    let info = reg.object_info();
    let rec = normalize(info[name].clone());
    for (k, want) in expected.as_object().unwrap() {
        assert_eq!(&rec[k], want, "{name}: field {k}");
    }
}

#[test]
fn object_info_matches_comfyui() {
    let reg = registry();
    check_record(
        &reg,
        "PrimitiveString",
        json!({
            "input": {"required": {"value": ["STRING", {"multiline": false}]}},
            "input_order": {"required": ["value"]},
            "output": ["STRING"], "output_is_list": [false], "output_name": ["STRING"],
            "name": "PrimitiveString", "display_name": "Text", "category": "utilities/primitive",
            "python_module": "comfy_extras.nodes_primitive", "output_node": false,
            "search_aliases": ["text", "string", "text box", "prompt"]
        }),
    );
    check_record(
        &reg,
        "PrimitiveInt",
        json!({
            "input": {"required": {"value": ["INT", {"min": -9223372036854775807i64, "max": 9223372036854775807i64, "control_after_generate": "fixed"}]}},
            "output": ["INT"], "output_name": ["INT"], "display_name": "Int"
        }),
    );
    check_record(
        &reg,
        "PrimitiveFloat",
        json!({
            "input": {"required": {"value": ["FLOAT", {"min": -9223372036854775807i64, "max": 9223372036854775807i64, "step": 0.1}]}},
            "output": ["FLOAT"]
        }),
    );
    check_record(&reg, "PrimitiveBoolean", json!({"input": {"required": {"value": ["BOOLEAN", {}]}}, "output": ["BOOLEAN"]}));
    check_record(
        &reg,
        "StringConcatenate",
        json!({
            "input": {"required": {
                "string_a": ["STRING", {"multiline": true}],
                "string_b": ["STRING", {"multiline": true}],
                "delimiter": ["STRING", {"default": "", "multiline": false}]
            }},
            "input_order": {"required": ["string_a", "string_b", "delimiter"]},
            "output": ["STRING"], "output_name": ["STRING"],
            "display_name": "Concatenate Text", "category": "text", "python_module": "comfy_extras.nodes_string"
        }),
    );
    check_record(
        &reg,
        "RegexReplace",
        json!({
            "input": {
                "required": {
                    "string": ["STRING", {"multiline": true}],
                    "regex_pattern": ["STRING", {"multiline": true}],
                    "replace": ["STRING", {"multiline": true}]
                },
                "optional": {
                    "case_insensitive": ["BOOLEAN", {"advanced": true, "default": true}],
                    "multiline": ["BOOLEAN", {"advanced": true, "default": false}],
                    "dotall": ["BOOLEAN", {"advanced": true, "default": false,
                        "tooltip": "When enabled, the dot (.) character will match any character including newline characters. When disabled, dots won't match newlines."}],
                    "count": ["INT", {"advanced": true, "default": 0, "min": 0, "max": 100,
                        "tooltip": "Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set to 1 to replace only the first match, 2 for the first two matches, etc."}]
                }
            },
            "input_order": {"required": ["string", "regex_pattern", "replace"], "optional": ["case_insensitive", "multiline", "dotall", "count"]},
            "output": ["STRING"], "output_name": ["STRING"],
            "display_name": "Replace Text (Regex)", "description": "Find and replace text using regex patterns.",
            "search_aliases": ["regex replace", "regex", "pattern replace", "substitution"]
        }),
    );
    check_record(
        &reg,
        "CaseConverter",
        json!({
            "input": {"required": {
                "string": ["STRING", {"multiline": true}],
                "mode": ["COMBO", {"multiselect": false, "options": ["UPPERCASE", "lowercase", "Capitalize", "Title Case"]}]
            }},
            "output": ["STRING"]
        }),
    );
    check_record(
        &reg,
        "RegexExtract",
        json!({
            "input_order": {"required": ["string", "regex_pattern", "mode", "case_insensitive", "multiline", "dotall", "group_index"]},
            "output_name": ["STRING"]
        }),
    );
    check_record(&reg, "StringLength", json!({"output": ["INT"], "output_name": ["length"], "display_name": "Text Length"}));
    check_record(&reg, "StringContains", json!({"output": ["BOOLEAN"], "output_name": ["contains"]}));
    check_record(
        &reg,
        "StringSubstring",
        json!({"input": {"required": {"string": ["STRING", {"multiline": true}], "start": ["INT", {}], "end": ["INT", {}]}}}),
    );
    check_record(
        &reg,
        "ConvertDictionaryToString",
        json!({"input": {"required": {"dictionary": ["DICT", {}],
            "indent": ["INT", {"default": 2, "min": 0, "max": 8, "tooltip": "Spaces per indent level. 0 produces compact single-line string."}]}}}),
    );
    check_record(
        &reg,
        "ComfyMathExpression",
        json!({
            "input": {
                "required": {"expression": ["STRING", {"default": "a", "multiline": true}]},
                "optional": {"values": ["COMFY_AUTOGROW_V3", {"template": {
                    "input": {"required": {"value": ["FLOAT,INT,BOOLEAN", {}]}},
                    "names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z"],
                    "min": 0
                }}]}
            },
            "output": ["FLOAT", "INT", "BOOLEAN"], "output_name": ["FLOAT", "INT", "BOOL"],
            "category": "utilities", "display_name": "Math Expression", "python_module": "comfy_extras.nodes_math",
            "search_aliases": ["math", "expression", "formula", "calculate", "calculator", "eval"]
        }),
    );
    check_record(
        &reg,
        "ComfySwitchNode",
        json!({
            "input": {
                "required": {"switch": ["BOOLEAN", {}]},
                "optional": {
                    "on_false": ["COMFY_MATCHTYPE_V3", {"lazy": true, "template": {"template_id": "switch", "allowed_types": "*"}}],
                    "on_true": ["COMFY_MATCHTYPE_V3", {"lazy": true, "template": {"template_id": "switch", "allowed_types": "*"}}]
                }
            },
            "input_order": {"required": ["switch"], "optional": ["on_false", "on_true"]},
            "output": ["COMFY_MATCHTYPE_V3"], "output_name": ["output"],
            "display_name": "If/Else Switch", "category": "utilities/logic", "python_module": "comfy_extras.nodes_logic",
            "experimental": true, "search_aliases": ["if", "then", "switch", "conditional", "branch"]
        }),
    );
    check_record(
        &reg,
        "ComfyAndNode",
        json!({
            "input": {"required": {}, "optional": {"values": ["COMFY_AUTOGROW_V3", {"template": {
                "input": {"required": {"value": ["*", {}]}}, "prefix": "value", "min": 1, "max": 10
            }}]}},
            "output": ["BOOLEAN"], "output_name": ["BOOLEAN"], "display_name": "And",
            "description": "Logical AND operation. Returns true if all of the values are truthy. Uses Python's rules for truthiness."
        }),
    );
    check_record(
        &reg,
        "CustomCombo",
        json!({
            "input": {"required": {"choice": ["COMBO", {"multiselect": false, "options": []}]}},
            "output": ["STRING", "INT"], "output_name": ["STRING", "INDEX"], "category": "utilities", "experimental": true
        }),
    );
    check_record(
        &reg,
        "ComfyPassOrNoneNode",
        json!({
            "output": ["COMFY_MATCHTYPE_V3", "BOOLEAN"], "output_name": ["output", "is_none"],
            "input_order": {"required": [], "optional": ["anything", "default"]}
        }),
    );
    check_record(
        &reg,
        "PreviewAny",
        json!({
            "input": {"required": {"source": ["*", {}]}},
            "output": ["STRING"], "output_name": ["STRING"], "output_is_list": [false],
            "output_node": true, "category": "utilities", "display_name": "Preview as Text",
            "description": "Preview any input value as text.",
            "python_module": "comfy_extras.nodes_preview_any",
            "search_aliases": ["show output", "inspect", "debug", "print value", "show text"]
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Example workflows.

fn workflows_dir() -> PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("..").join("workflows")
}

/// An API prompt: an object of node records, each with a `class_type`.
fn is_api_prompt(j: &Json) -> bool {
    j.as_object().is_some_and(|o| !o.is_empty() && o.values().all(|n| n.get("class_type").is_some_and(Json::is_string)))
}

fn run_workflow(name: &str) -> RunReport {
    let text = std::fs::read_to_string(workflows_dir().join(name)).unwrap();
    run(&text)
}

#[test]
fn strings_workflow_shows_python_results() {
    let r = run_workflow("strings.json");
    assert_eq!(shown1(&r, "9"), "'Hello, Comfyrs Runs ComfyUI Workflows' has 37 characters");
    assert_eq!(shown1(&r, "11"), "H\nC\nR\nC\nW");
    assert_eq!(shown1(&r, "13"), "True");
}

#[test]
fn math_workflow_computes_like_python() {
    let r = run_workflow("math.json");
    assert_eq!(shown1(&r, "8"), "1536x1152 (aspect 1.333)");
    assert_eq!(shown1(&r, "10"), "1330.2150202128978");
    assert_eq!(shown1(&r, "11"), "1330");
}

#[test]
fn math_expression_end_to_end() {
    let r = run(r#"{
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": -7}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 2}},
        "3": {"class_type": "PrimitiveBoolean", "inputs": {"value": true}},
        "4": {"class_type": "ComfyMathExpression", "inputs": {"expression": "a // b", "values.a": ["1", 0], "values.b": ["2", 0]}},
        "5": {"class_type": "ComfyMathExpression", "inputs": {"expression": "a % 3 + c", "values.a": ["1", 0], "values.c": ["3", 0]}},
        "6": {"class_type": "ComfyMathExpression", "inputs": {"expression": "b ** 0.5", "values.b": ["2", 0]}},
        "7": {"class_type": "ComfyMathExpression", "inputs": {"expression": "max(values) - min(values)", "values.a": ["1", 0], "values.b": ["2", 0], "values.c": ["3", 0]}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["7", 2]}}
    }"#);
    assert_eq!(shown1(&r, "11"), "-4");
    assert_eq!(shown1(&r, "12"), "3.0");
    assert_eq!(shown1(&r, "13"), "1.4142135623730951");
    assert_eq!(shown1(&r, "14"), "True");
}

#[test]
fn logic_workflow() {
    let r = run_workflow("logic.json");
    assert_eq!(shown1(&r, "7"), "7 is odd");
    assert_eq!(shown1(&r, "11"), "True");
    assert_eq!(shown1(&r, "14"), "False");
    assert_eq!(shown1(&r, "16"), "even");
}

/// The branch the switch does not select is never run: here it would fail.
#[test]
fn switch_evaluates_only_the_selected_branch() {
    let p = |switch: bool| {
        format!(
            r#"{{
            "1": {{"class_type": "StringFormat", "inputs": {{"f_string": "{{missing}}"}}}},
            "2": {{"class_type": "PrimitiveString", "inputs": {{"value": "fine"}}}},
            "3": {{"class_type": "ComfySwitchNode", "inputs": {{"switch": {switch}, "on_true": ["1", 0], "on_false": ["2", 0]}}}},
            "4": {{"class_type": "PreviewAny", "inputs": {{"source": ["3", 0]}}}}
        }}"#
        )
    };
    let r = run(&p(false));
    assert_eq!(shown1(&r, "4"), "fine");
    assert!(!r.executed().contains(&"1"), "{:?}", r.executed());
    let r = run(&p(true));
    assert!(!r.success());
    assert_eq!(r.errors[0].node_id, "1");
}

#[test]
fn switch_with_an_unconnected_branch_outputs_none() {
    let r = run(r#"{
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "x"}},
        "2": {"class_type": "ComfySwitchNode", "inputs": {"switch": false, "on_true": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    }"#);
    assert_eq!(shown1(&r, "3"), "None");
}

#[test]
fn and_requires_its_first_value() {
    // The autogrow group's first member is required: validation says so, as ComfyUI's does.
    let (prompt, _) = Prompt::parse(
        r#"{
        "1": {"class_type": "PrimitiveBoolean", "inputs": {"value": true}},
        "2": {"class_type": "ComfyAndNode", "inputs": {"values.value1": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    }"#,
    )
    .unwrap();
    let rej = validate(prompt, &registry(), None).err().expect("rejected").to_json();
    let e = &rej["node_errors"]["2"]["errors"][0];
    assert_eq!((e["type"].as_str(), e["details"].as_str()), (Some("required_input_missing"), Some("values.value0")), "{rej}");
}

#[test]
fn prompt_cleanup_workflow() {
    let r = run_workflow("prompt_cleanup.json");
    assert_eq!(shown1(&r, "9"), "photo, masterpiece, best quality, a cat sitting on a windowsill, golden hour");
    assert_eq!(shown1(&r, "11"), "photo\nmasterpiece\nbest quality\na cat sitting on a windowsill\ngolden hour");
    assert_eq!(shown1(&r, "13"), "True");
}

#[test]
fn json_tools_workflow() {
    let r = run_workflow("json_tools.json");
    assert_eq!(shown1(&r, "6"), "a lighthouse at dusk (30 steps)");
    assert_eq!(shown1(&r, "7"), "['coast', 'dusk']");
    assert_eq!(shown1(&r, "9"), "{\n  \"sampler\": \"euler\",\n  \"steps\": 30,\n  \"cfg\": 7.5,\n  \"ok\": true,\n  \"note\": null\n}");
    assert_eq!(shown1(&r, "11"), "[1, \"two\", 3.0]");
}

#[test]
fn every_core_workflow_runs() {
    let reg = registry();
    let mut ran = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(workflows_dir())
        .expect("workflows/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        let Ok(j) = serde_json::from_str::<Json>(&text) else { continue };
        if !is_api_prompt(&j) {
            continue;
        }
        let classes: Vec<&str> = j.as_object().unwrap().values().map(|n| n["class_type"].as_str().unwrap()).collect();
        if !classes.iter().all(|c| reg.get(c).is_some()) {
            continue;
        }
        let mut exec = Executor::new(CacheMode::Lru, 1 << 30);
        let report = run_with(&reg, &mut exec, &text);
        assert!(report.success(), "{}: {:?}", path.display(), report.errors.iter().map(|e| e.to_json()).collect::<Vec<_>>());
        assert!(!report.outputs.is_empty(), "{}: no UI output", path.display());
        ran.push(path.file_name().unwrap().to_string_lossy().to_string());
    }
    for expected in ["strings.json", "math.json", "logic.json", "prompt_cleanup.json", "json_tools.json"] {
        assert!(ran.iter().any(|r| r == expected), "{expected} did not run; ran {ran:?}");
    }
}

/// Constants of a V3 autogrow input (`values.a`) reach the node, as in ComfyUI.
#[test]
fn autogrow_constants_reach_the_node() {
    let r = run(r#"{
        "1": {"class_type": "ComfyMathExpression", "inputs": {"expression": "a * b + 1", "values.a": 6, "values.b": 7}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}
    }"#);
    assert_eq!(shown1(&r, "2"), "43");
}
