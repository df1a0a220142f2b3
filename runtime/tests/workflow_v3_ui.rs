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
