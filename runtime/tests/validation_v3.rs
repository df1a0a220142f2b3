//! Validation of V3 dynamic inputs slot by slot: a dynamic combo's chosen option and an
//! autogrow group's members are checked like declared inputs (ranges, required, link types).
//! The schemas are ComfyUI 0.33's `/object_info` records in `data/object_info`.

mod common;

use std::sync::Arc;

use common::*;
use comfyrs_runtime::schema::NodeSchema;
use comfyrs_runtime::{Args, CallOutput, ExecContext, NodeClass, NodeError, Registry};
use serde_json::{json, Value as Json};

/// A class known by its record only (validation never calls it).
struct RecordOnly(Arc<NodeSchema>);

impl NodeClass for RecordOnly {
    fn schema(&self) -> Arc<NodeSchema> {
        self.0.clone()
    }
    fn execute(&self, _ctx: &ExecContext, _args: &Args) -> Result<CallOutput, NodeError> {
        Err(NodeError::msg("not run in these tests"))
    }
}

fn reg_with(names: &[&str]) -> Registry {
    let mut reg = registry(&Probe::new());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/object_info");
    for name in names {
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let schema = NodeSchema::from_object_info(&doc[*name]).unwrap();
        assert!(reg.register(Arc::new(RecordOnly(Arc::new(schema)))));
    }
    reg
}

fn resize(resize_type: &str, extra: Json) -> Json {
    let mut inputs = json!({"input": ["img", 0], "resize_type": resize_type, "scale_method": "area"});
    for (k, v) in extra.as_object().unwrap() {
        inputs[k] = v.clone();
    }
    json!({
        "img": {"class_type": "ImageSrc", "inputs": {}},
        "r": {"class_type": "ResizeImageMaskNode", "inputs": inputs},
        "p": {"class_type": "Preview", "inputs": {"value": ["r", 0]}},
    })
}

#[test]
fn a_dynamic_combo_checks_the_inputs_of_its_chosen_option() {
    let reg = reg_with(&["ResizeImageMaskNode"]);
    let ok = resize("scale dimensions", json!({"resize_type.width": 64, "resize_type.height": 32, "resize_type.crop": "center"}));
    check(&reg, &ok).unwrap();

    let too_wide = resize("scale dimensions", json!({"resize_type.width": 99999, "resize_type.height": 32, "resize_type.crop": "center"}));
    let e = node_error(&rejection(&reg, &too_wide), "r").clone();
    assert_eq!((e["type"].as_str(), e["extra_info"]["input_name"].as_str()), (Some("value_bigger_than_max"), Some("resize_type.width")), "{e}");

    let bad_choice = resize("scale dimensions", json!({"resize_type.width": 64, "resize_type.height": 32, "resize_type.crop": "sideways"}));
    assert_eq!(node_error(&rejection(&reg, &bad_choice), "r")["type"], "value_not_in_list");

    // Another option, other inputs: its own input is required, the first option's are not.
    let missing = resize("scale by multiplier", json!({"resize_type.width": 64}));
    let e = node_error(&rejection(&reg, &missing), "r").clone();
    assert_eq!((e["type"].as_str(), e["details"].as_str()), (Some("required_input_missing"), Some("resize_type.multiplier")), "{e}");
    check(&reg, &resize("scale by multiplier", json!({"resize_type.multiplier": 2.0}))).unwrap();
}

fn shader(extra: Json) -> Json {
    let mut inputs = json!({"fragment_shader": "void main() {}", "size_mode": "from_input"});
    for (k, v) in extra.as_object().unwrap() {
        inputs[k] = v.clone();
    }
    json!({
        "img": {"class_type": "ImageSrc", "inputs": {}},
        "n": {"class_type": "Int", "inputs": {"value": 3}},
        "f": {"class_type": "Float", "inputs": {"value": 0.5}},
        "s": {"class_type": "GLSLShader", "inputs": inputs},
        "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
    })
}

#[test]
fn autogrow_members_are_checked_one_by_one() {
    let reg = reg_with(&["GLSLShader"]);
    check(&reg, &shader(json!({"images.image0": ["img", 0], "images.image1": ["img", 0], "floats.u_float0": ["f", 0]}))).unwrap();

    // The group's first member is required (min 1).
    let e = node_error(&rejection(&reg, &shader(json!({}))), "s").clone();
    assert_eq!((e["type"].as_str(), e["details"].as_str()), (Some("required_input_missing"), Some("images.image0")), "{e}");

    // Each member's link has the template's type.
    let rej = rejection(&reg, &shader(json!({"images.image0": ["img", 0], "images.image1": ["n", 0]})));
    let e = node_error(&rej, "s");
    assert_eq!(e["type"], "return_type_mismatch", "{rej}");
    assert_eq!(e["extra_info"]["input_name"], "images.image1");
    let rej = rejection(&reg, &shader(json!({"images.image0": ["img", 0], "floats.u_float0": ["n", 0]})));
    assert_eq!(node_error(&rej, "s")["extra_info"]["input_name"], "floats.u_float0", "{rej}");
}
