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
    ui_to_prompt_with(wf, &look, &ConvertOptions { dynamic_prompt_seed: Some(7), ..Default::default() }).expect("converts")
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
// (the frontend does so when the combo's value is set, also while a saved node is restored),
// so they take the saved values after the combo's own, and graphToPrompt sends them under
// `combo.key` (docs/comfyui.md, "Widget values").
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
            // A value that names no option (renamed since) adds no sub-widgets.
            resize_node(5, json!(null), json!([]), json!(["scale by factor", "bilinear"])),
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
    assert_eq!(inputs(&c, "5"), &json!({ "resize_type": "scale by factor", "scale_method": "bilinear" }));
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings); // node 2 and node 4 lack values
}

/// A subgraph (definition "inner") with one INT input `width` that feeds an EmptyImage's
/// `width` widget (node 2, saved width 640) and a PreviewAny's `source` socket (node 3), and a
/// PreviewAny (node 4) fed by the EmptyImage inside the subgraph. The root holds instance 10
/// and, when `outer` is set, a PrimitiveInt (node 1) linked into the instance's `width`.
fn preview_subgraph(outer: bool, instance_values: Json) -> Json {
    let def = json!({
        "id": "inner", "version": 1, "state": {}, "revision": 0, "config": {}, "name": "inner",
        "inputNode": { "id": -10, "bounding": [0, 0, 120, 60] },
        "outputNode": { "id": -20, "bounding": [900, 0, 120, 60] },
        "inputs": [{ "id": "p-width", "name": "width", "type": "INT", "linkIds": [1, 2], "pos": [100, 20] }],
        "outputs": [],
        "widgets": [],
        "nodes": [
            node(
                2,
                "EmptyImage",
                json!([{ "localized_name": "width", "name": "width", "type": "INT", "widget": { "name": "width" }, "link": 1 }]),
                json!([{ "localized_name": "IMAGE", "name": "IMAGE", "type": "IMAGE", "links": [3] }]),
                json!([640, 480, 1, 0]),
            ),
            node(3, "PreviewAny", json!([{ "localized_name": "source", "name": "source", "type": "*", "link": 2 }]), json!([]), json!([])),
            node(4, "PreviewAny", json!([{ "localized_name": "source", "name": "source", "type": "*", "link": 3 }]), json!([]), json!([])),
        ],
        "groups": [],
        "links": [
            { "id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT" },
            { "id": 2, "origin_id": -10, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "INT" },
            { "id": 3, "origin_id": 2, "origin_slot": 0, "target_id": 4, "target_slot": 0, "type": "IMAGE" }
        ],
        "extra": {}
    });
    let mut nodes = vec![node(
        10,
        "inner",
        json!([{ "name": "width", "type": "INT", "widget": { "name": "width" }, "link": if outer { json!(1) } else { json!(null) } }]),
        json!([]),
        instance_values,
    )];
    let mut links = json!([]);
    if outer {
        nodes.push(node(
            1,
            "PrimitiveInt",
            json!([]),
            json!([{ "name": "INT", "type": "INT", "links": [1] }]),
            json!([2048, "fixed"]),
        ));
        links = json!([[1, 1, 0, 10, 0, "INT"]]);
    }
    let mut wf = workflow(nodes, links);
    wf["definitions"] = json!({ "subgraphs": [def] });
    wf
}

// Output nodes inside subgraphs get their links like any other node: from a node beside them,
// from outside through the instance, and from an unconnected input promoted to a widget on the
// instance. The last reads the promoted widget's value (frontend ExecutableNodeDTO.resolveInput
// returns the host widget's value for an unconnected subgraph input), which is the instance's
// saved value or, when it saved none, the value of the inner widget the input was promoted
// from (SubgraphNode._setWidget registers the host widget with the interior widget's value).
#[test]
fn output_nodes_inside_subgraphs_get_their_sources() {
    let image = |w: Json| json!({ "width": w, "height": 480, "batch_size": 1, "color": 0 });

    // From outside, through the instance's linked input.
    let c = convert(&preview_subgraph(true, json!([])));
    assert_eq!(inputs(&c, "10:2"), &image(json!(["1", 0])));
    assert_eq!(inputs(&c, "10:3"), &json!({ "source": ["1", 0] }));
    assert_eq!(inputs(&c, "10:4"), &json!({ "source": ["10:2", 0] }));
    assert_eq!(inputs(&c, "1"), &json!({ "value": 2048 }));

    // Unconnected, with a value saved on the instance.
    let c = convert(&preview_subgraph(false, json!([1024])));
    assert_eq!(inputs(&c, "10:2"), &image(json!(1024)));
    assert_eq!(inputs(&c, "10:3"), &json!({ "source": 1024 }));
    assert_eq!(inputs(&c, "10:4"), &json!({ "source": ["10:2", 0] }));

    // Unconnected, nothing saved on the instance: the inner widget's own value.
    let c = convert(&preview_subgraph(false, json!([])));
    assert_eq!(inputs(&c, "10:2"), &image(json!(640)));
    assert_eq!(inputs(&c, "10:3"), &json!({ "source": 640 }));
    assert_eq!(inputs(&c, "10:4"), &json!({ "source": ["10:2", 0] }));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn autogrow_links_convert_by_member_name() {
    let float = |id: i64, v: f64, link: i64| {
        node(id, "PrimitiveFloat", json!([]), json!([{ "name": "FLOAT", "type": "FLOAT", "links": [link] }]), json!([v]))
    };
    let wf = workflow(
        vec![
            load_image(1, json!([1, 2, 3, 4])),
            node(
                2,
                "BatchImagesNode",
                json!([
                    { "label": "image0", "localized_name": "images.image0", "name": "images.image0", "type": "IMAGE", "link": 1 },
                    { "label": "image1", "localized_name": "images.image1", "name": "images.image1", "type": "IMAGE", "link": 2 },
                    { "label": "image2", "localized_name": "images.image2", "name": "images.image2", "type": "IMAGE", "link": 3 },
                    { "label": "image3", "localized_name": "images.image3", "name": "images.image3", "shape": 7, "type": "IMAGE", "link": null }
                ]),
                json!([{ "name": "IMAGE", "type": "IMAGE", "links": [] }]),
                json!([]),
            ),
            float(3, 0.5, 5),
            float(4, 1.5, 6),
            node(5, "PrimitiveInt", json!([]), json!([{ "name": "INT", "type": "INT", "links": [7] }]), json!([3, "fixed"])),
            node(
                6,
                "GLSLShader",
                json!([
                    { "label": "image0", "name": "images.image0", "type": "IMAGE", "link": 4 },
                    { "label": "image1", "name": "images.image1", "shape": 7, "type": "IMAGE", "link": null },
                    { "label": "u_float0", "name": "floats.u_float0", "shape": 7, "type": "FLOAT", "link": 5 },
                    { "label": "u_float1", "name": "floats.u_float1", "shape": 7, "type": "FLOAT", "link": 6 },
                    { "label": "u_float2", "name": "floats.u_float2", "shape": 7, "type": "FLOAT", "link": null },
                    { "label": "u_int0", "name": "ints.u_int0", "shape": 7, "type": "INT", "link": 7 },
                    { "label": "u_int1", "name": "ints.u_int1", "shape": 7, "type": "INT", "link": null },
                    { "name": "fragment_shader", "type": "STRING", "widget": { "name": "fragment_shader" }, "link": null },
                    { "name": "size_mode", "type": "COMFY_DYNAMICCOMBO_V3", "widget": { "name": "size_mode" }, "link": null }
                ]),
                json!([{ "name": "IMAGE0", "type": "IMAGE", "links": [] }]),
                json!(["void main() {}", "custom", 300, 200]),
            ),
        ],
        json!([
            [1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 2, 1, "IMAGE"], [3, 1, 0, 2, 2, "IMAGE"], [4, 1, 0, 6, 0, "IMAGE"],
            [5, 3, 0, 6, 2, "FLOAT"], [6, 4, 0, 6, 3, "FLOAT"], [7, 5, 0, 6, 5, "INT"]
        ]),
    );
    let c = convert(&wf);
    assert_eq!(inputs(&c, "2"), &json!({ "images.image0": ["1", 0], "images.image1": ["1", 0], "images.image2": ["1", 0] }));
    assert_eq!(
        inputs(&c, "6"),
        &json!({
            "fragment_shader": "void main() {}", "size_mode": "custom", "size_mode.width": 300, "size_mode.height": 200,
            "images.image0": ["1", 0], "floats.u_float0": ["3", 0], "floats.u_float1": ["4", 0], "ints.u_int0": ["5", 0]
        })
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn autogrow_widget_members_come_first() {
    let prefix = json!({
        "name": "AutogrowPrefixTestNode", "display_name": "AutogrowPrefixTest", "category": "utilities/logic",
        "input": { "required": {
            "label": ["STRING", { "default": "" }],
            "autogrow": ["COMFY_AUTOGROW_V3", { "template": { "input": { "required": { "float": ["FLOAT", {}] } }, "prefix": "float", "min": 1, "max": 10 } }]
        } },
        "input_order": { "required": ["label", "autogrow"] },
        "output": ["STRING"], "output_is_list": [false], "output_name": ["STRING"]
    });
    let names = json!({
        "name": "AutogrowNamesTestNode", "display_name": "AutogrowNamesTest", "category": "utilities/logic",
        "input": { "required": {
            "autogrow": ["COMFY_AUTOGROW_V3", { "template": { "input": { "required": { "float": ["FLOAT", {}] } }, "names": ["a", "b", "c"], "min": 0 } }]
        } },
        "input_order": { "required": ["autogrow"] },
        "output": ["STRING"], "output_is_list": [false], "output_name": ["STRING"]
    });
    let member = |name: &str, link: Json| json!({ "name": name, "type": "FLOAT", "widget": { "name": name }, "link": link });
    let wf = workflow(
        vec![
            node(1, "PrimitiveFloat", json!([]), json!([{ "name": "FLOAT", "type": "FLOAT", "links": [1] }]), json!([9.5])),
            node(
                2,
                "AutogrowPrefixTestNode",
                json!([member("autogrow.float0", json!(null)), member("autogrow.float1", json!(null)), member("autogrow.float2", json!(1))]),
                json!([{ "name": "STRING", "type": "STRING", "links": [] }]),
                json!([0.25, 0.75, "sum"]),
            ),
            node(3, "AutogrowNamesTestNode", json!([]), json!([{ "name": "STRING", "type": "STRING", "links": [] }]), json!([4.0])),
        ],
        json!([[1, 1, 0, 2, 2, "FLOAT"]]),
    );
    let c = convert_with(&wf, &[prefix, names]);
    assert_eq!(inputs(&c, "2"), &json!({ "autogrow.float0": 0.25, "autogrow.float1": 0.75, "label": "sum", "autogrow.float2": ["1", 0] }));
    assert_eq!(inputs(&c, "3"), &json!({ "autogrow.a": 4.0 }));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
