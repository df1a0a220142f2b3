//! UI workflow → API prompt conversion of V3 dynamic inputs (dynamic combos, autogrow groups),
//! widgets the frontend never saves, and output nodes inside subgraphs.
//!
//! The schemas are the `/object_info` records of ComfyUI 0.33 (`data/object_info/*.json`, API
//! output trimmed of tooltips and search aliases); the workflows are written inline the way the
//! frontend saves them (version 0.4 links at the root, version 1 links in subgraphs).

use std::collections::HashMap;
use std::sync::Arc;

use comfyrs_runtime::schema::NodeSchema;
use comfyrs_runtime::workflow::{ui_to_prompt_with, ConvertOptions, Converted};
use serde_json::{json, Value as Json};

fn fixtures() -> HashMap<String, Arc<NodeSchema>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/object_info");
    let mut map = HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("object_info fixtures") {
        let path = entry.unwrap().path();
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (name, rec) in doc.as_object().unwrap() {
            let schema = NodeSchema::from_object_info(rec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            map.insert(name.clone(), Arc::new(schema));
        }
    }
    map
}

fn convert_with(wf: &Json, extra: &[Json]) -> Converted {
    let mut map = fixtures();
    for rec in extra {
        let s = NodeSchema::from_object_info(rec).unwrap();
        map.insert(s.name.clone(), Arc::new(s));
    }
    let look = move |n: &str| map.get(n).cloned();
    ui_to_prompt_with(wf, &look, &ConvertOptions { dynamic_prompt_seed: Some(7) }).expect("converts")
}

fn convert(wf: &Json) -> Converted {
    convert_with(wf, &[])
}

fn node(id: i64, ty: &str, inputs: Json, outputs: Json, widgets: Json) -> Json {
    json!({ "id": id, "type": ty, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": id, "mode": 0,
            "inputs": inputs, "outputs": outputs, "properties": { "Node name for S&R": ty }, "widgets_values": widgets })
}

fn workflow(nodes: Vec<Json>, links: Json) -> Json {
    json!({ "last_node_id": 100, "last_link_id": 100, "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4 })
}

fn load_image(id: i64, links: Json) -> Json {
    node(
        id,
        "LoadImage",
        json!([]),
        json!([{ "name": "IMAGE", "type": "IMAGE", "links": links }, { "name": "MASK", "type": "MASK", "links": [] }]),
        json!(["example.png", "image"]),
    )
}

fn inputs<'a>(c: &'a Converted, id: &str) -> &'a Json {
    &c.prompt[id]["inputs"]
}

// ImageCompare's `compare_view` widget sets `widget.serialize = false` (frontend
// useImageCompareWidget), so it has no slot in widgets_values, yet its `options.serialize` is
// true and graphToPrompt sends its value: `["", ""]` on a freshly loaded node, wrapped as an
// array value.
#[test]
fn image_compare_view_is_sent_without_a_widgets_values_slot() {
    let wf = workflow(
        vec![
            load_image(1, json!([1, 2])),
            node(
                2,
                "ImageCompare",
                json!([{ "name": "image_a", "type": "IMAGE", "shape": 7, "link": 1 }, { "name": "image_b", "type": "IMAGE", "shape": 7, "link": 2 }]),
                json!([]),
                json!([]),
            ),
        ],
        json!([[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 2, 1, "IMAGE"]]),
    );
    let c = convert(&wf);
    assert_eq!(
        inputs(&c, "2"),
        &json!({ "compare_view": { "__value__": ["", ""] }, "image_a": ["1", 0], "image_b": ["1", 0] })
    );
    assert_eq!(c.prompt["2"]["class_type"], "ImageCompare");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

// An unsaved widget before saved ones must not take the first saved value.
#[test]
fn unsaved_widget_does_not_shift_the_following_values() {
    let rec = json!({
        "name": "CompareAndScale", "display_name": "Compare and scale", "category": "test",
        "input": { "required": {
            "compare_view": ["IMAGECOMPARE", { "socketless": true }],
            "width": ["INT", { "default": 512, "min": 0, "max": 4096 }],
            "mode": [["fit", "fill"], {}]
        } },
        "input_order": { "required": ["compare_view", "width", "mode"] },
        "output": [], "output_is_list": [], "output_name": [], "output_node": true
    });
    let wf = workflow(vec![node(3, "CompareAndScale", json!([]), json!([]), json!([1024, "fill"]))], json!([]));
    let c = convert_with(&wf, &[rec]);
    assert_eq!(inputs(&c, "3"), &json!({ "compare_view": { "__value__": ["", ""] }, "width": 1024, "mode": "fill" }));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

fn resize_node(id: i64, input_link: Json, extra_inputs: Json, widgets: Json) -> Json {
    let mut ins = vec![
        json!({ "localized_name": "input", "name": "input", "type": "IMAGE,MASK", "link": input_link }),
        json!({ "localized_name": "resize_type", "name": "resize_type", "type": "COMFY_DYNAMICCOMBO_V3", "widget": { "name": "resize_type" }, "link": null }),
    ];
    ins.extend(extra_inputs.as_array().unwrap().iter().cloned());
    ins.push(json!({ "localized_name": "scale_method", "name": "scale_method", "type": "COMBO", "widget": { "name": "scale_method" }, "link": null }));
    node(id, "ResizeImageMaskNode", Json::Array(ins), json!([{ "localized_name": "resized", "name": "resized", "type": "IMAGE", "links": [] }]), widgets)
}

// A dynamic combo's chosen option splices its sub-widgets in right after the combo's widget
// (frontend core/graph/widgets/dynamicWidgets.ts, updateWidgets), so they take the saved
// values after the combo's own, and graphToPrompt sends them under `combo.key`. The widget
// values below are those of ResizeImageMaskNode 674 in ComfyUI's blueprint
// "Image to Pose Map (SDPose-OOD).json" (first node) and of hand-set options (the others).
#[test]
fn dynamic_combo_sub_widgets_take_the_values_after_the_combo() {
    let widget = |name: &str, ty: &str| json!({ "localized_name": name, "name": name, "type": ty, "widget": { "name": name }, "link": null });
    let wf = workflow(
        vec![
            load_image(1, json!([1, 2, 3, 4])),
            resize_node(2, json!(1), json!([widget("resize_type.longer_size", "INT")]), json!(["scale longer dimension", 1024, "area"])),
            resize_node(
                3,
                json!(2),
                json!([widget("resize_type.width", "INT"), widget("resize_type.height", "INT"), widget("resize_type.crop", "COMBO")]),
                json!(["scale dimensions", 768, 0, "disabled", "bicubic"]),
            ),
            // A socket sub-input (`match`) is linked; only `crop` has a widget.
            resize_node(
                4,
                json!(3),
                json!([
                    { "localized_name": "resize_type.match", "name": "resize_type.match", "type": "IMAGE,MASK", "link": 4 },
                    widget("resize_type.crop", "COMBO")
                ]),
                json!(["match size", "disabled", "lanczos"]),
            ),
        ],
        json!([[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 3, 0, "IMAGE"], [3, 1, 0, 4, 0, "IMAGE"], [4, 1, 0, 4, 2, "IMAGE"]]),
    );
    let c = convert(&wf);
    assert_eq!(
        inputs(&c, "2"),
        &json!({ "resize_type": "scale longer dimension", "resize_type.longer_size": 1024, "scale_method": "area", "input": ["1", 0] })
    );
    assert_eq!(
        inputs(&c, "3"),
        &json!({
            "resize_type": "scale dimensions", "resize_type.width": 768, "resize_type.height": 0, "resize_type.crop": "disabled",
            "scale_method": "bicubic", "input": ["1", 0]
        })
    );
    assert_eq!(
        inputs(&c, "4"),
        &json!({ "resize_type": "match size", "resize_type.crop": "disabled", "scale_method": "lanczos", "input": ["1", 0], "resize_type.match": ["1", 0] })
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

// An option without sub-inputs adds nothing; a missing sub-value takes the option's default;
// the named form of widgets_values picks the option by the combo's name.
#[test]
fn dynamic_combo_defaults_and_named_values() {
    let shader = "void main() {}";
    let glsl = |id: i64, widgets: Json| {
        node(
            id,
            "GLSLShader",
            json!([
                { "name": "images.image0", "type": "IMAGE", "link": null },
                { "name": "fragment_shader", "type": "STRING", "widget": { "name": "fragment_shader" }, "link": null },
                { "name": "size_mode", "type": "COMFY_DYNAMICCOMBO_V3", "widget": { "name": "size_mode" }, "link": null }
            ]),
            json!([{ "name": "IMAGE0", "type": "IMAGE", "links": [] }]),
            widgets,
        )
    };
    let wf = workflow(
        vec![
            glsl(1, json!([shader, "from_input"])),
            glsl(2, json!([shader, "custom", 640])),
            glsl(3, json!({ "fragment_shader": shader, "size_mode": "custom", "size_mode.height": 200, "size_mode.width": 300 })),
            resize_node(4, json!(null), json!([]), json!([])),
        ],
        json!([]),
    );
    let c = convert(&wf);
    assert_eq!(inputs(&c, "1"), &json!({ "fragment_shader": shader, "size_mode": "from_input" }));
    assert_eq!(inputs(&c, "2"), &json!({ "fragment_shader": shader, "size_mode": "custom", "size_mode.width": 640, "size_mode.height": 512 }));
    assert_eq!(inputs(&c, "3"), &json!({ "fragment_shader": shader, "size_mode": "custom", "size_mode.width": 300, "size_mode.height": 200 }));
    // A node saved without values shows the first option with its defaults.
    assert_eq!(
        inputs(&c, "4"),
        &json!({ "resize_type": "scale dimensions", "resize_type.width": 512, "resize_type.height": 512, "resize_type.crop": "center", "scale_method": "area" })
    );
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings); // node 2 and node 4 lack values
}
