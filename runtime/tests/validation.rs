//! Validation against ComfyUI's error JSON (docs/comfyui.md, "Validation"): one test per error
//! type, with the exact `error{type,message,details,extra_info}` / `node_errors{id:{errors,
//! dependent_outputs,class_type}}` shapes, plus coercion, `__value__` and deep prompts.

mod common;

use common::*;
use comfyrs_runtime::prompt::{Input, Prompt, PromptError};
use comfyrs_runtime::validate::{types_compatible, validate};
use comfyrs_runtime::Value;
use serde_json::{json, Value as Json};

fn reg() -> comfyrs_runtime::Registry {
    registry(&Probe::new())
}

/// A Widgets node with every constant valid, `overrides` replacing some.
fn widgets(overrides: Json) -> Json {
    let mut inputs = json!({"i": 5, "f": 0.5, "mode": "a", "big": "opt00"});
    for (k, v) in overrides.as_object().unwrap() {
        inputs[k] = v.clone();
    }
    json!({"1": {"class_type": "Widgets", "inputs": inputs}})
}

fn widgets_input_config(name: &str) -> Json {
    reg().get("Widgets").unwrap().schema().find_input(name).unwrap().to_object_info()
}

/// The whole rejection for a Widgets prompt whose only error is `error` on node 1.
fn assert_widgets_error(overrides: Json, error: Json) {
    let rej = rejection(&reg(), &widgets(overrides));
    let details = format!("{}: {}", error["message"].as_str().unwrap(), error["details"].as_str().unwrap());
    assert_eq!(
        rej,
        json!({
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details,
                "extra_info": {},
            },
            "node_errors": {
                "1": {"errors": [error], "dependent_outputs": ["1"], "class_type": "Widgets"},
            },
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Documents that are not prompts

#[test]
fn invalid_json_reports_line_and_column() {
    let text = "{\n  \"1\": {\"class_type\": \"Int\"\n  \"inputs\": {}}\n}";
    match Prompt::parse(text) {
        Err(PromptError::Json { line, column, message }) => {
            assert_eq!((line, column), (3, 3), "{message}");
            assert!(message.contains("expected `,` or `}`"), "{message}");
            assert!(!message.contains("at line"), "position is not repeated in the message: {message}");
        }
        other => panic!("{other:?}"),
    }
    let err = Prompt::parse(text).unwrap_err().to_string();
    assert!(err.contains("line 3, column 3"), "{err}");
}

#[test]
fn truncated_and_empty_json_are_errors_with_positions() {
    for (text, line) in [("", 1), ("{", 1), ("{\n\"1\": {\"class_type\": ", 2), ("{\"1\": {}}}", 1)] {
        match Prompt::parse(text) {
            Err(PromptError::Json { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn non_object_documents_are_shape_errors() {
    for text in ["[]", "1", "\"x\"", "null", "{\"1\": 5}", "{\"1\": {\"class_type\": \"Int\", \"inputs\": [1]}}"] {
        assert!(matches!(Prompt::parse(text), Err(PromptError::Shape(_))), "{text}");
    }
    // `inputs` may be absent or null.
    assert!(Prompt::parse("{\"1\": {\"class_type\": \"Int\"}}").is_ok());
    assert!(Prompt::parse("{\"1\": {\"class_type\": \"Int\", \"inputs\": null}}").is_ok());
}

// ---------------------------------------------------------------------------------------------
// Prompt-level errors (node_errors is {})

#[test]
fn unknown_class_type_is_missing_node_type_with_suggestion() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
            "2": {"class_type": "Intt", "inputs": {"value": 1}, "_meta": {"title": "My Int"}},
        }),
    );
    assert_eq!(
        rej,
        json!({
            "error": {
                "type": "missing_node_type",
                "message": "Node 'My Int' not found. The custom node may not be installed. Did you mean 'Int'?",
                "details": "Node ID '#2'",
                "extra_info": {"node_id": "2", "class_type": "Intt", "node_title": "My Int"},
            },
            "node_errors": {},
        })
    );
}

#[test]
fn unknown_class_type_without_title_or_suggestion() {
    let rej = rejection(&reg(), &json!({"7": {"class_type": "Zzzzzzzzzzzz", "inputs": {}}}));
    assert_eq!(
        rej["error"],
        json!({
            "type": "missing_node_type",
            "message": "Node 'Zzzzzzzzzzzz' not found. The custom node may not be installed.",
            "details": "Node ID '#7'",
            "extra_info": {"node_id": "7", "class_type": "Zzzzzzzzzzzz", "node_title": "Zzzzzzzzzzzz"},
        })
    );
    // An unknown node rejects the prompt even when no output needs it.
    let rej = rejection(
        &reg(),
        &json!({"1": {"class_type": "Preview", "inputs": {"value": 1}}, "2": {"class_type": "Nope", "inputs": {}}}),
    );
    assert_eq!(rej["error"]["type"], "missing_node_type");
}

#[test]
fn missing_class_type_is_missing_node_type() {
    for rec in [json!({"inputs": {}}), json!({"class_type": 5, "inputs": {}}), json!({"class_type": null})] {
        let rej = rejection(&reg(), &json!({"1": {"class_type": "Preview", "inputs": {"value": 1}}, "3": rec}));
        assert_eq!(
            rej,
            json!({
                "error": {
                    "type": "missing_node_type",
                    "message": "Node 'ID #3' has no class_type. The workflow may be corrupted or a custom node is missing.",
                    "details": "Node ID '#3'",
                    "extra_info": {"node_id": "3", "class_type": null, "node_title": null},
                },
                "node_errors": {},
            })
        );
    }
    let rej = rejection(&reg(), &json!({"3": {"inputs": {}, "_meta": {"title": "Lost"}}}));
    assert_eq!(rej["error"]["message"], "Node 'Lost' has no class_type. The workflow may be corrupted or a custom node is missing.");
    assert_eq!(rej["error"]["extra_info"]["node_title"], "Lost");
}

#[test]
fn prompt_no_outputs() {
    for prompt in [json!({}), json!({"1": {"class_type": "Int", "inputs": {"value": 1}}})] {
        let rej = rejection(&reg(), &prompt);
        assert_eq!(rej["error"]["type"], "prompt_no_outputs");
        assert_eq!(rej["error"]["message"], "Prompt has no outputs");
        assert_eq!(rej["error"]["extra_info"], json!({}));
        assert_eq!(rej["node_errors"], json!({}));
    }
}

#[test]
fn partial_execution_targets_select_outputs() {
    let r = reg();
    let prompt = json!({
        "1": {"class_type": "Preview", "inputs": {"value": 1}},
        "2": {"class_type": "Preview", "inputs": {"value": 2}},
        "3": {"class_type": "Int", "inputs": {"value": 3}},
    });
    let p = || Prompt::from_json(&prompt).unwrap();
    let v = validate(p(), &r, Some(&["2".to_string()])).unwrap_or_else(|e| panic!("{}", e.to_json()));
    assert_eq!(v.outputs.iter().map(|&o| v.id(o)).collect::<Vec<_>>(), ["2"]);
    // Non-output ids are ignored; an empty or non-output selection has no outputs.
    for targets in [vec![], vec!["3".to_string()], vec!["99".to_string()]] {
        let rej = validate(p(), &r, Some(&targets)).err().expect("rejected");
        assert_eq!(rej.error.kind, "prompt_no_outputs");
    }
}

// ---------------------------------------------------------------------------------------------
// Input errors

#[test]
fn required_input_missing() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "Add", "inputs": {"a": 1}},
            "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        }),
    );
    assert_eq!(
        rej,
        json!({
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                // Only the output nodes' own errors are listed, and the output is fine itself.
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "1": {
                    "errors": [{
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "b",
                        "extra_info": {"input_name": "b"},
                    }],
                    "dependent_outputs": ["2"],
                    "class_type": "Add",
                },
            },
        })
    );
}

#[test]
fn every_missing_required_input_is_listed_and_optional_ones_are_fine() {
    let rej = rejection(&reg(), &json!({"1": {"class_type": "Widgets", "inputs": {}}}));
    let kinds: Vec<(&str, &str)> = rej["node_errors"]["1"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["details"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("required_input_missing", "i"),
            ("required_input_missing", "f"),
            ("required_input_missing", "mode"),
            ("required_input_missing", "big"),
        ]
    );
    // Concat's b and sep are optional.
    check(&reg(), &json!({"1": {"class_type": "Concat", "inputs": {"a": "x"}}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}}))
        .unwrap();
}

#[test]
fn link_to_missing_node() {
    let rej = rejection(&reg(), &json!({"1": {"class_type": "Preview", "inputs": {"value": ["9", 0]}}}));
    let ne = &rej["node_errors"]["1"];
    assert_eq!(ne["class_type"], "Preview");
    assert_eq!(ne["dependent_outputs"], json!(["1"]));
    let e = &ne["errors"][0];
    assert_eq!(e["type"], "bad_linked_input");
    assert_eq!(e["details"], "value");
    assert_eq!(e["extra_info"]["input_name"], "value");
    assert_eq!(e["extra_info"]["linked_node"], json!(["9", 0]));
    assert!(e["message"].as_str().unwrap().contains("'9'"), "{e}");
    assert_eq!(ne["errors"].as_array().unwrap().len(), 1);
}

#[test]
fn link_to_out_of_range_output_index() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "Multi", "inputs": {"value": 1}},
            "2": {"class_type": "Preview", "inputs": {"value": ["1", 3]}},
        }),
    );
    let e = node_error(&rej, "2");
    assert_eq!(e["type"], "bad_linked_input");
    assert_eq!(e["extra_info"]["linked_node"], json!(["1", 3]));
    assert_eq!(e["extra_info"]["input_name"], "value");
    assert!(e["message"].as_str().unwrap().contains("3 output(s)"), "{e}");
    assert!(rej["node_errors"].get("1").is_none(), "the source itself is fine");
    // Slot 2 of the same node is fine.
    check(
        &reg(),
        &json!({
            "1": {"class_type": "Multi", "inputs": {"value": 1}},
            "2": {"class_type": "Preview", "inputs": {"value": ["1", 2]}},
        }),
    )
    .unwrap();
}

#[test]
fn bad_linked_input_for_arrays_that_are_not_links() {
    for bad in [json!([1, 2, 3]), json!([]), json!(["1"]), json!(["1", "0"]), json!(["1", -1]), json!([null, 0])] {
        let rej = rejection(&reg(), &json!({"1": {"class_type": "Preview", "inputs": {"value": bad.clone()}}}));
        assert_eq!(
            rej["node_errors"]["1"]["errors"],
            json!([{
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": "value",
                "extra_info": {"input_name": "value", "input_config": ["*", {}], "received_value": bad},
            }]),
            "{bad}"
        );
    }
}

#[test]
fn numeric_ids_and_float_slots_are_links() {
    let v = check(
        &reg(),
        &json!({
            "1": {"class_type": "Int", "inputs": {"value": 1}},
            "2": {"class_type": "Preview", "inputs": {"value": [1, 0.0]}},
        }),
    )
    .unwrap();
    assert_eq!(v.links[1], vec![("value".to_string(), 0, 0)]);
}

#[test]
fn return_type_mismatch() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "ImageSrc", "inputs": {}},
            "2": {"class_type": "Sink", "inputs": {"model": ["1", 0]}},
        }),
    );
    assert_eq!(
        rej["node_errors"],
        json!({"2": {
            "errors": [{
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": "model, received_type(IMAGE) mismatch input_type(MODEL)",
                "extra_info": {"input_name": "model", "input_config": ["MODEL", {}], "received_type": "IMAGE", "linked_node": ["1", 0]},
            }],
            "dependent_outputs": ["2"],
            "class_type": "Sink",
        }})
    );
    assert_eq!(rej["error"]["details"], "Return type mismatch between linked nodes: model, received_type(IMAGE) mismatch input_type(MODEL)");
}

#[test]
fn compatible_link_types() {
    let ok = |src: &str, input: &str| {
        check(
            &reg(),
            &json!({
                "1": {"class_type": src, "inputs": {"value": 1}},
                "2": {"class_type": "Sink", "inputs": {input: ["1", 0]}},
            }),
        )
        .is_ok()
    };
    assert!(ok("ModelSrc", "model"));
    assert!(ok("AnySrc", "model"), "* output into a typed input");
    assert!(ok("ModelSrc", "any"), "typed output into a * input");
    assert!(ok("ImageSrc", "pic"), "IMAGE into IMAGE,LATENT");
    assert!(ok("UnionSrc", "pic"), "MASK,IMAGE into IMAGE,LATENT");
    assert!(!ok("UnionSrc", "model"), "MASK,IMAGE into MODEL");
    assert!(!ok("Int", "model"));
    assert!(!ok("Int", "pic"));

    assert!(types_compatible("IMAGE", "IMAGE"));
    assert!(types_compatible("COMFY_MATCHTYPE_V3", "IMAGE"));
    assert!(types_compatible("IMAGE , MASK", "MASK"));
    assert!(!types_compatible("IMAGE", "COMBO"));
    assert!(!types_compatible("IMAGES", "IMAGE"));
}

#[test]
fn invalid_input_type() {
    let err = "invalid literal for int() with base 10: 'abc'";
    assert_widgets_error(
        json!({"i": "abc"}),
        json!({
            "type": "invalid_input_type",
            "message": "Failed to convert an input value to a INT value",
            "details": format!("i, abc, {err}"),
            "extra_info": {"input_name": "i", "input_config": widgets_input_config("i"), "received_value": "abc", "exception_message": err},
        }),
    );
    let err = "could not convert string to float: 'x1'";
    assert_widgets_error(
        json!({"f": "x1"}),
        json!({
            "type": "invalid_input_type",
            "message": "Failed to convert an input value to a FLOAT value",
            "details": format!("f, x1, {err}"),
            "extra_info": {"input_name": "f", "input_config": widgets_input_config("f"), "received_value": "x1", "exception_message": err},
        }),
    );
    // Structured values do not convert to numbers either; nothing panics on them.
    for bad in [json!({"a": 1}), json!({"__value__": [1]}), json!(null), json!("1.5"), json!(1e300)] {
        let rej = rejection(&reg(), &widgets(json!({"i": bad.clone()})));
        let t = node_error(&rej, "1")["type"].as_str().unwrap().to_string();
        assert!(t == "invalid_input_type" || t == "value_bigger_than_max", "{bad}: {rej}");
    }
}

#[test]
fn value_smaller_than_min_int_and_float() {
    assert_widgets_error(
        json!({"i": -1}),
        json!({
            "type": "value_smaller_than_min",
            "message": "Value -1 smaller than min of 0",
            "details": "i",
            "extra_info": {"input_name": "i", "input_config": widgets_input_config("i"), "received_value": -1},
        }),
    );
    assert_widgets_error(
        json!({"f": -0.5}),
        json!({
            "type": "value_smaller_than_min",
            "message": "Value -0.5 smaller than min of 0.0",
            "details": "f",
            "extra_info": {"input_name": "f", "input_config": widgets_input_config("f"), "received_value": -0.5},
        }),
    );
}

#[test]
fn value_bigger_than_max_int_and_float() {
    assert_widgets_error(
        json!({"i": 11}),
        json!({
            "type": "value_bigger_than_max",
            "message": "Value 11 bigger than max of 10",
            "details": "i",
            "extra_info": {"input_name": "i", "input_config": widgets_input_config("i"), "received_value": 11},
        }),
    );
    // Coerced first: the string "12" is the int 12; 10.9 truncates to 10 (fine), 11.5 to 11.
    let rej = rejection(&reg(), &widgets(json!({"i": "12"})));
    assert_eq!(node_error(&rej, "1")["message"], "Value 12 bigger than max of 10");
    assert_eq!(node_error(&rej, "1")["extra_info"]["received_value"], 12);
    check(&reg(), &widgets(json!({"i": 10.9}))).unwrap();
    let rej = rejection(&reg(), &widgets(json!({"i": 11.5})));
    assert_eq!(node_error(&rej, "1")["message"], "Value 11 bigger than max of 10");
    // Ints beyond i64 (seeds reach u64::MAX) compare correctly too.
    let rej = rejection(&reg(), &widgets(json!({"i": 18446744073709551615u64})));
    assert_eq!(node_error(&rej, "1")["message"], "Value 18446744073709551615 bigger than max of 10");
}

#[test]
fn float_bigger_than_max() {
    assert_widgets_error(
        json!({"f": 1.5}),
        json!({
            "type": "value_bigger_than_max",
            "message": "Value 1.5 bigger than max of 1.0",
            "details": "f",
            "extra_info": {"input_name": "f", "input_config": widgets_input_config("f"), "received_value": 1.5},
        }),
    );
    // Bounds are inclusive, NaN passes both checks (as in Python), infinities do not.
    check(&reg(), &widgets(json!({"f": 1, "i": 10}))).unwrap();
    check(&reg(), &widgets(json!({"f": 0, "i": 0}))).unwrap();
    check(&reg(), &widgets(json!({"f": "nan"}))).unwrap();
    assert_eq!(node_error(&rejection(&reg(), &widgets(json!({"f": "inf"}))), "1")["type"], "value_bigger_than_max");
    assert_eq!(node_error(&rejection(&reg(), &widgets(json!({"f": "-inf"}))), "1")["type"], "value_smaller_than_min");
}

#[test]
fn value_not_in_list_short_list_is_shown() {
    assert_widgets_error(
        json!({"mode": "z"}),
        json!({
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": "mode: 'z' not in ['a', 'b', 'c']",
            "extra_info": {"input_name": "mode", "input_config": widgets_input_config("mode"), "received_value": "z"},
        }),
    );
    // ComfyUI quotes str(value) whatever its type.
    let rej = rejection(&reg(), &widgets(json!({"mode": 5})));
    assert_eq!(node_error(&rej, "1")["details"], "mode: '5' not in ['a', 'b', 'c']");
    assert_eq!(node_error(&rej, "1")["extra_info"]["received_value"], 5);
}

#[test]
fn value_not_in_list_long_list_is_summarised() {
    assert_widgets_error(
        json!({"big": "nope"}),
        json!({
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": "big: 'nope' not in (list of length 25)",
            "extra_info": {"input_name": "big", "input_config": null, "received_value": "nope"},
        }),
    );
}

#[test]
fn custom_validation_failed() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "Even", "inputs": {"n": 3}},
            "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        }),
    );
    assert_eq!(
        rej["node_errors"],
        json!({"1": {
            "errors": [{
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": "n - 3 is odd",
                "extra_info": {"input_name": "n"},
            }],
            "dependent_outputs": ["2"],
            "class_type": "Even",
        }})
    );
    // The validator sees coerced constants ("4" is 4) and not linked values.
    for n in [json!(4), json!("4"), json!(["3", 0])] {
        check(
            &reg(),
            &json!({
                "1": {"class_type": "Even", "inputs": {"n": n}},
                "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
                "3": {"class_type": "Int", "inputs": {"value": 7}},
            }),
        )
        .unwrap();
    }
}

#[test]
fn a_validation_that_raises_is_reported_on_the_linking_input() {
    // Even's check raises for negative numbers; it is not an output, so ComfyUI reports the
    // exception from the node validating its inputs, on the input linking to it.
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "Even", "inputs": {"n": -2}},
            "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        }),
    );
    assert!(rej["node_errors"].get("1").is_none(), "{rej}");
    let e = node_error(&rej, "2");
    assert_eq!(e["type"], "exception_during_inner_validation");
    assert_eq!(e["message"], "Exception when validating inner node");
    assert_eq!(e["details"], "cannot check -2");
    assert_eq!(e["extra_info"]["input_name"], "value");
    assert_eq!(e["extra_info"]["exception_type"], "ValueError");
    assert_eq!(e["extra_info"]["linked_node"], json!(["1", 0]));
    assert_eq!(rej["error"]["type"], "prompt_outputs_failed_validation");
}

#[test]
fn dependency_cycle() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "AnyPass", "inputs": {"value": ["2", 0]}},
            "2": {"class_type": "AnyPass", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
        }),
    );
    let ne = rej["node_errors"].as_object().unwrap();
    assert_eq!(ne.keys().collect::<Vec<_>>(), ["1", "2"], "{rej}");
    let paths = ["1 (AnyPass) -> 2 (AnyPass) -> 1 (AnyPass)", "2 (AnyPass) -> 1 (AnyPass) -> 2 (AnyPass)"];
    for id in ["1", "2"] {
        assert_eq!(ne[id]["class_type"], "AnyPass");
        assert_eq!(ne[id]["dependent_outputs"], json!(["3"]));
        let e = &ne[id]["errors"][0];
        assert_eq!(e["type"], "dependency_cycle");
        assert_eq!(e["message"], "Dependency cycle detected");
        assert!(paths.contains(&e["details"].as_str().unwrap()), "{e}");
        let mut nodes: Vec<&str> = e["extra_info"]["cycle_nodes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        nodes.sort();
        assert_eq!(nodes, ["1", "2"]);
    }
}

#[test]
fn self_loop_and_cycle_through_an_output_node() {
    let rej = rejection(&reg(), &json!({"1": {"class_type": "Echo", "inputs": {"value": ["1", 0]}}}));
    let e = node_error(&rej, "1");
    assert_eq!(e["type"], "dependency_cycle");
    assert_eq!(e["details"], "1 (Echo) -> 1 (Echo)");
    assert_eq!(e["extra_info"]["cycle_nodes"], json!(["1"]));
    assert_eq!(rej["error"]["details"], "Dependency cycle detected: 1 (Echo) -> 1 (Echo)");
}

#[test]
fn prompt_outputs_failed_validation_details_join_output_errors() {
    let rej = rejection(
        &reg(),
        &json!({
            "1": {"class_type": "Widgets", "inputs": {"i": 99, "f": 2.0, "mode": "a", "big": "opt00"}},
            "2": {"class_type": "Sink", "inputs": {"model": ["3", 0]}},
            "3": {"class_type": "Int", "inputs": {"value": 0}},
        }),
    );
    assert_eq!(rej["error"]["type"], "prompt_outputs_failed_validation");
    let details = rej["error"]["details"].as_str().unwrap();
    let mut lines: Vec<&str> = details.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "Return type mismatch between linked nodes: model, received_type(INT) mismatch input_type(MODEL)",
            "Value 2.0 bigger than max of 1.0: f",
            "Value 99 bigger than max of 10: i",
        ]
    );
}

#[test]
fn partial_acceptance_runs_only_valid_outputs() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Preview", "inputs": {"value": 1}},
        "2": {"class_type": "Widgets", "inputs": {"i": 99, "f": 0.5, "mode": "a", "big": "opt00"}},
    });
    let v = h.validate(&prompt);
    assert_eq!(v.outputs.iter().map(|&o| v.id(o)).collect::<Vec<_>>(), ["1"]);
    assert_eq!(
        comfyrs_runtime::validate::node_errors_json(&v.node_errors),
        json!({"2": {
            "errors": [{
                "type": "value_bigger_than_max",
                "message": "Value 99 bigger than max of 10",
                "details": "i",
                "extra_info": {"input_name": "i", "input_config": widgets_input_config("i"), "received_value": 99},
            }],
            "dependent_outputs": ["2"],
            "class_type": "Widgets",
        }})
    );
    let report = h.run(&prompt);
    assert!(report.success());
    assert_eq!(executed(&report), set(&["1"]));
    assert_eq!(h.probe.ran(), set(&["1"]));
}

#[test]
fn dependent_outputs_list_every_output_below_the_error() {
    let v = check(
        &reg(),
        &json!({
            "1": {"class_type": "Add", "inputs": {"a": 1}},
            "2": {"class_type": "AnyPass", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
            "4": {"class_type": "Echo", "inputs": {"value": ["1", 0]}},
            "5": {"class_type": "Preview", "inputs": {"value": ["4", 0]}},
            "6": {"class_type": "Preview", "inputs": {"value": 6}},
            "7": {"class_type": "Widgets", "inputs": {"i": 1, "f": 0.5, "mode": "a", "big": "x"}},
        }),
    )
    .unwrap();
    let ne = comfyrs_runtime::validate::node_errors_json(&v.node_errors);
    // Nodes invalid only because of upstream errors (2, 3, 4, 5) are not listed.
    assert_eq!(ne.as_object().unwrap().keys().collect::<Vec<_>>(), ["1", "7"]);
    let mut deps: Vec<&str> = ne["1"]["dependent_outputs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    deps.sort();
    assert_eq!(deps, ["3", "4", "5"]);
    assert_eq!(ne["7"]["dependent_outputs"], json!(["7"]));
    assert_eq!(v.outputs.iter().map(|&o| v.id(o)).collect::<Vec<_>>(), ["6"]);
}

#[test]
fn unreachable_nodes_are_not_validated() {
    // ComfyUI validates only what the outputs need: a broken node nobody consumes is ignored.
    let v = check(
        &reg(),
        &json!({
            "1": {"class_type": "Preview", "inputs": {"value": 1}},
            "2": {"class_type": "Add", "inputs": {}},
            "3": {"class_type": "AnyPass", "inputs": {"value": ["3", 0]}},
        }),
    )
    .unwrap();
    assert!(v.node_errors.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Coercion and constants

fn constant<'a>(v: &'a comfyrs_runtime::validate::Validated, node: &str, input: &str) -> &'a Value {
    match &v.prompt.nodes[node].inputs[input] {
        Input::Const(c) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn coercion_is_written_back() {
    let v = check(&reg(), &widgets(json!({"i": "7", "f": 1, "flag": "false", "text": 5, "mode": "b"}))).unwrap();
    assert_eq!(constant(&v, "1", "i"), &Value::Int(7));
    assert_eq!(constant(&v, "1", "f"), &Value::Float(1.0));
    assert!(matches!(constant(&v, "1", "f"), Value::Float(_)));
    // Python truthiness: the string "false" is true.
    assert_eq!(constant(&v, "1", "flag"), &Value::Bool(true));
    assert_eq!(constant(&v, "1", "text"), &Value::String("5".into()));

    let v = check(&reg(), &widgets(json!({"i": 3.9, "f": "0.25", "flag": "", "text": 2.0}))).unwrap();
    assert_eq!(constant(&v, "1", "i"), &Value::Int(3));
    assert_eq!(constant(&v, "1", "f"), &Value::Float(0.25));
    assert_eq!(constant(&v, "1", "flag"), &Value::Bool(false));
    assert_eq!(constant(&v, "1", "text"), &Value::String("2.0".into()));

    let v = check(&reg(), &widgets(json!({"i": true, "flag": 0, "text": true}))).unwrap();
    assert_eq!(constant(&v, "1", "i"), &Value::Int(1));
    assert_eq!(constant(&v, "1", "flag"), &Value::Bool(false));
    assert_eq!(constant(&v, "1", "text"), &Value::String("True".into()));

    // What runs is the coerced prompt.
    let mut h = Harness::new();
    let report = h.run(&widgets(json!({"i": "7", "f": 1, "flag": "false"})));
    assert_eq!(texts(&report, "1"), ["i=7", "f=1.0", "mode=\"a\"", "big=\"opt00\"", "flag=true"]);
}

#[test]
fn undeclared_constants_are_dropped_and_sockets_keep_kinds() {
    let v = check(
        &reg(),
        &json!({"1": {"class_type": "Preview", "inputs": {"value": 1, "junk": "x", "more": [1, 2, 3]}}}),
    )
    .unwrap();
    assert!(v.node_errors.is_empty());
    assert_eq!(constant(&v, "1", "value"), &Value::Int(1));
    let v = check(&reg(), &json!({"1": {"class_type": "Preview", "inputs": {"value": 1.0}}})).unwrap();
    assert_eq!(constant(&v, "1", "value"), &Value::Float(1.0));
}

#[test]
fn value_wrapper_is_unwrapped() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "AnyPass", "inputs": {"value": {"__value__": [1, 2, 3]}}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Preview", "inputs": {"value": {"__type__": "CURVE", "__value__": [[0, 0], [1, 1]]}}},
    });
    let v = h.validate(&prompt);
    assert_eq!(constant(&v, "1", "value"), &Value::Json(json!([1, 2, 3])));
    assert_eq!(constant(&v, "3", "value"), &Value::Json(json!([[0, 0], [1, 1]])));
    let report = h.run(&prompt);
    assert_eq!(texts(&report, "2"), ["[1,2,3]"]);
    // The prompt as executed wraps arrays again so they stay distinguishable from links.
    assert_eq!(v.prompt.to_json()["1"]["inputs"]["value"], json!({"__value__": [1, 2, 3]}));
}

#[test]
fn regression_value_wrapper_around_a_scalar_is_coerced_like_the_scalar() {
    // ComfyUI unwraps `__value__` before coercing: {"__value__": 5} into INT is 5.
    let v = check(&reg(), &widgets(json!({"i": {"__value__": 5}, "mode": {"__value__": "b"}}))).unwrap();
    assert_eq!(constant(&v, "1", "i"), &Value::Int(5));
    assert_eq!(constant(&v, "1", "mode"), &Value::String("b".into()));
    let rej = rejection(&reg(), &widgets(json!({"i": {"__value__": 50}})));
    assert_eq!(node_error(&rej, "1")["type"], "value_bigger_than_max");
}

// ---------------------------------------------------------------------------------------------
// Size

#[test]
fn a_100_000_node_chain_validates_without_stack_overflow() {
    let prompt = chain(100_000);
    let v = check(&reg(), &prompt).unwrap();
    assert_eq!(v.outputs.len(), 1);
    assert!(v.node_errors.is_empty());
}

#[test]
fn a_cycle_of_64_nodes_is_shown_whole() {
    let mut prompt = chain(64);
    prompt["0"] = json!({"class_type": "AnyPass", "inputs": {"value": ["63", 0]}});
    let rej = rejection(&reg(), &prompt);
    assert_eq!(rej["node_errors"].as_object().unwrap().len(), 64);
    let e = node_error(&rej, "0");
    assert_eq!(e["type"], "dependency_cycle");
    assert_eq!(e["extra_info"]["cycle_nodes"].as_array().unwrap().len(), 64);
    let details = e["details"].as_str().unwrap();
    assert_eq!(details.matches(" -> ").count(), 64);
    assert!(details.starts_with("0 (AnyPass) -> 63 (AnyPass) -> 62 (AnyPass)"), "{details}");
    assert!(details.ends_with("1 (AnyPass) -> 0 (AnyPass)"), "{details}");
    assert_eq!(rej["node_errors"]["63"]["dependent_outputs"], json!(["64"]));
}

#[test]
fn regression_a_huge_cycle_is_reported_in_bounded_size() {
    // Every member of a cycle carries the path: a 20 000-node cycle made 20 000 copies of a
    // 20 000-node path (about 10 GB). Long cycles now show their first and last 32 nodes.
    let n = 20_000;
    let mut prompt = chain(n);
    prompt["0"] = json!({"class_type": "AnyPass", "inputs": {"value": [(n - 1).to_string(), 0]}});
    let rej = check(&reg(), &prompt).err().expect("rejected");
    assert_eq!(rej.node_errors.len(), n, "every member is listed");
    let e = &rej.node_errors["5"].errors[0];
    assert_eq!(e.kind, "dependency_cycle");
    assert_eq!(e.extra_info["cycle_nodes"].as_array().unwrap().len(), 64);
    assert!(e.details.contains(&format!(" -> ... ({} more) -> ", n - 64)), "{}", e.details);
    assert!(e.details.starts_with("0 (AnyPass) -> 19999 (AnyPass)"), "{}", &e.details[..60]);
    assert!(e.details.ends_with("1 (AnyPass) -> 0 (AnyPass)"));
}

#[test]
fn regression_many_invalid_nodes_validate_in_linear_time() {
    // A 50 000-node chain in which every node has its own error: dependent_outputs used to be
    // found by a walk down from every erroneous node (quadratic: over 10^9 steps here).
    let n = 50_000;
    let mut m = serde_json::Map::new();
    m.insert("0".into(), json!({"class_type": "Add", "inputs": {"a": 1}}));
    for i in 1..n {
        m.insert(i.to_string(), json!({"class_type": "Add", "inputs": {"a": [(i - 1).to_string(), 0]}}));
    }
    m.insert(n.to_string(), json!({"class_type": "Preview", "inputs": {"value": [(n - 1).to_string(), 0]}}));
    let t = std::time::Instant::now();
    let rej = check(&reg(), &Json::Object(m)).err().expect("rejected");
    assert!(t.elapsed().as_secs_f64() < 20.0, "took {:?}", t.elapsed());
    assert_eq!(rej.node_errors.len(), n);
    assert_eq!(rej.node_errors["0"].dependent_outputs, [n.to_string()]);
}

#[test]
fn regression_many_invalid_outputs_validate_in_linear_time() {
    // 50 000 output nodes, each with its own error: checking "is this an output" was a linear
    // scan of the outputs, and each walk allocated a fresh n-sized visited list.
    let n = 50_000;
    let mut m = serde_json::Map::new();
    for i in 0..n {
        m.insert(i.to_string(), json!({"class_type": "Preview", "inputs": {}}));
    }
    m.insert("ok".into(), json!({"class_type": "Preview", "inputs": {"value": 1}}));
    let t = std::time::Instant::now();
    let v = check(&reg(), &Json::Object(m)).unwrap();
    assert!(t.elapsed().as_secs_f64() < 20.0, "took {:?}", t.elapsed());
    assert_eq!(v.node_errors.len(), n);
    assert_eq!(v.node_errors["5"].dependent_outputs, ["5"]);
}
