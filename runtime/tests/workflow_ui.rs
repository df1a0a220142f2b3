//! UI workflow → API prompt conversion (docs/comfyui.md, "UI workflows" to "From UI workflow to
//! prompt"), on workflows written as the ComfyUI frontend saves them
//! (`runtime/tests/data/ui/*.json`), each compared with the prompt the frontend would queue
//! (`*.expected.json`), plus targeted cases built inline.
//!
//! The schemas below mirror the input names, order and options of ComfyUI core nodes
//! (`nodes.py`, `comfy_extras/nodes_primitive.py`); combo lists are cut to a few entries.

use std::collections::HashMap;
use std::sync::Arc;

use comfyrs_runtime::node::{Args, CallOutput, ExecContext, NodeClass, NodeError};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::schema::{InputKind, InputSpec, NodeSchema, Num, OutputSpec, Section};
use comfyrs_runtime::validate::validate;
use comfyrs_runtime::workflow::{
    dynprompt, registry_schemas, ui_to_prompt, ui_to_prompt_with, ConvertError, ConvertOptions, Converted, Document,
};
use comfyrs_runtime::Registry;
use serde_json::{json, Map, Value as Json};

const MAX_RESOLUTION: i64 = 16384;
const SAMPLERS: &[&str] = &["euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"];
const SCHEDULERS: &[&str] = &["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"];

fn seed_input(name: &str) -> InputSpec {
    // INT {default 0, min 0, max 0xffffffffffffffff, control_after_generate: True}
    InputSpec {
        name: name.into(),
        section: Section::Required,
        kind: InputKind::Int { default: Some(Num::Int(0)), min: Some(Num::Int(0)), max: Some(Num::Int(u64::MAX as i128)), step: None },
        lazy: false,
        raw_link: false,
        extra: Map::new(),
    }
    .with("control_after_generate", json!(true))
}

fn test_schemas() -> Vec<NodeSchema> {
    vec![
        NodeSchema::new("CheckpointLoaderSimple", "Load Checkpoint", "loaders")
            .input(InputSpec::combo("ckpt_name", &["sd15.safetensors", "sdxl.safetensors", "v1-5-pruned-emaonly.ckpt"]))
            .output(OutputSpec::new("MODEL"))
            .output(OutputSpec::new("CLIP"))
            .output(OutputSpec::new("VAE")),
        NodeSchema::new("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning")
            .input(InputSpec::multiline("text", "").with("dynamicPrompts", json!(true)))
            .input(InputSpec::socket("clip", "CLIP"))
            .output(OutputSpec::new("CONDITIONING")),
        NodeSchema::new("EmptyLatentImage", "Empty Latent Image", "latent")
            .input(InputSpec::int("width", 512, 16, MAX_RESOLUTION))
            .input(InputSpec::int("height", 512, 16, MAX_RESOLUTION))
            .input(InputSpec::int("batch_size", 1, 1, 4096))
            .output(OutputSpec::new("LATENT")),
        NodeSchema::new("KSampler", "KSampler", "sampling")
            .input(InputSpec::socket("model", "MODEL"))
            .input(seed_input("seed"))
            .input(InputSpec::int("steps", 20, 1, 10000))
            .input(InputSpec::float("cfg", 8.0, 0.0, 100.0, 0.1).with("round", json!(0.01)))
            .input(InputSpec::combo("sampler_name", SAMPLERS))
            .input(InputSpec::combo("scheduler", SCHEDULERS))
            .input(InputSpec::socket("positive", "CONDITIONING"))
            .input(InputSpec::socket("negative", "CONDITIONING"))
            .input(InputSpec::socket("latent_image", "LATENT"))
            .input(InputSpec::float("denoise", 1.0, 0.0, 1.0, 0.01))
            .output(OutputSpec::new("LATENT")),
        NodeSchema::new("KSamplerAdvanced", "KSampler (Advanced)", "sampling")
            .input(InputSpec::socket("model", "MODEL"))
            .input(InputSpec::combo("add_noise", &["enable", "disable"]))
            .input(seed_input("noise_seed"))
            .input(InputSpec::int("steps", 20, 1, 10000))
            .input(InputSpec::float("cfg", 8.0, 0.0, 100.0, 0.1).with("round", json!(0.01)))
            .input(InputSpec::combo("sampler_name", SAMPLERS))
            .input(InputSpec::combo("scheduler", SCHEDULERS))
            .input(InputSpec::socket("positive", "CONDITIONING"))
            .input(InputSpec::socket("negative", "CONDITIONING"))
            .input(InputSpec::socket("latent_image", "LATENT"))
            .input(InputSpec::int("start_at_step", 0, 0, 10000))
            .input(InputSpec::int("end_at_step", 10000, 0, 10000))
            .input(InputSpec::combo("return_with_leftover_noise", &["disable", "enable"]))
            .output(OutputSpec::new("LATENT")),
        NodeSchema::new("LoraLoader", "Load LoRA", "loaders")
            .input(InputSpec::socket("model", "MODEL"))
            .input(InputSpec::socket("clip", "CLIP"))
            .input(InputSpec::combo("lora_name", &["pixel_style.safetensors", "watercolor_v2.safetensors"]))
            .input(InputSpec::float("strength_model", 1.0, -100.0, 100.0, 0.01))
            .input(InputSpec::float("strength_clip", 1.0, -100.0, 100.0, 0.01))
            .output(OutputSpec::new("MODEL"))
            .output(OutputSpec::new("CLIP")),
        NodeSchema::new("VAEDecode", "VAE Decode", "latent")
            .input(InputSpec::socket("samples", "LATENT"))
            .input(InputSpec::socket("vae", "VAE"))
            .output(OutputSpec::new("IMAGE")),
        NodeSchema::new("VAEEncode", "VAE Encode", "latent")
            .input(InputSpec::socket("pixels", "IMAGE"))
            .input(InputSpec::socket("vae", "VAE"))
            .output(OutputSpec::new("LATENT")),
        NodeSchema::new("ImageScale", "Upscale Image", "image/upscaling")
            .input(InputSpec::socket("image", "IMAGE"))
            .input(InputSpec::combo("upscale_method", &["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]))
            .input(InputSpec::int("width", 512, 0, MAX_RESOLUTION))
            .input(InputSpec::int("height", 512, 0, MAX_RESOLUTION))
            .input(InputSpec::combo("crop", &["disabled", "center"]))
            .output(OutputSpec::new("IMAGE")),
        NodeSchema::new("SaveImage", "Save Image", "image")
            .input(InputSpec::socket("images", "IMAGE"))
            .input(InputSpec::string("filename_prefix", "ComfyUI"))
            .input(InputSpec::hidden("prompt", "PROMPT"))
            .input(InputSpec::hidden("extra_pnginfo", "EXTRA_PNGINFO"))
            .output_node(),
        NodeSchema::new("PreviewAny", "Preview Any", "utils")
            .input(InputSpec::socket("source", "*"))
            .output_node(),
        NodeSchema::new("LoadImage", "Load Image", "image")
            .input(InputSpec::combo("image", &["example.png", "photos/cat.png"]).with("image_upload", json!(true)))
            .output(OutputSpec::new("IMAGE"))
            .output(OutputSpec::new("MASK")),
        NodeSchema::new("PrimitiveInt", "Int", "utils/primitive")
            .module("comfy_extras.nodes_primitive")
            .input(InputSpec::int("value", 0, -i64::MAX, i64::MAX).with("control_after_generate", json!(true)))
            .output(OutputSpec::new("INT")),
        NodeSchema::new("PrimitiveFloat", "Float", "utils/primitive")
            .module("comfy_extras.nodes_primitive")
            .input(InputSpec::float("value", 0.0, -(i64::MAX as f64), i64::MAX as f64, 0.1))
            .output(OutputSpec::new("FLOAT")),
        NodeSchema::new("PrimitiveString", "String", "utils/primitive")
            .module("comfy_extras.nodes_primitive")
            .input(InputSpec::string("value", ""))
            .output(OutputSpec::new("STRING")),
        NodeSchema::new("PrimitiveStringMultiline", "String (Multiline)", "utils/primitive")
            .module("comfy_extras.nodes_primitive")
            .input(InputSpec::multiline("value", ""))
            .output(OutputSpec::new("STRING")),
        // Custom-node-style classes (a text pack): a dynamic-prompt source and a joiner whose
        // inputs are `forceInput` strings, the case of the pre-1.16 widgets_values fixup.
        NodeSchema::new("Text Multiline", "Text Multiline", "text")
            .module("custom_nodes.text_pack")
            .input(InputSpec::multiline("text", "").with("dynamicPrompts", json!(true)))
            .output(OutputSpec::new("STRING")),
        NodeSchema::new("Text Concatenate", "Text Concatenate", "text")
            .module("custom_nodes.text_pack")
            .input(InputSpec::string("text_a", "").with("forceInput", json!(true)))
            .input(InputSpec::string("text_b", "").with("forceInput", json!(true)))
            .input(InputSpec::string("delimiter", ", "))
            .input(InputSpec::combo("clean_whitespace", &["true", "false"]))
            .output(OutputSpec::new("STRING")),
    ]
}

/// A class that only has a schema: enough for conversion and validation.
struct SchemaOnly(Arc<NodeSchema>);

impl NodeClass for SchemaOnly {
    fn schema(&self) -> Arc<NodeSchema> {
        self.0.clone()
    }
    fn execute(&self, _ctx: &ExecContext, _args: &Args) -> Result<CallOutput, NodeError> {
        Err(NodeError::msg("schema-only test class"))
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    for s in test_schemas() {
        r.register(Arc::new(SchemaOnly(Arc::new(s))));
    }
    r
}

fn schema_map() -> HashMap<String, Arc<NodeSchema>> {
    test_schemas().into_iter().map(|s| (s.name.clone(), Arc::new(s))).collect()
}

fn lookup(name: &str) -> Option<Arc<NodeSchema>> {
    thread_local! {
        static MAP: HashMap<String, Arc<NodeSchema>> = schema_map();
    }
    MAP.with(|m| m.get(name).cloned())
}

fn seeded(seed: u64) -> ConvertOptions {
    ConvertOptions { dynamic_prompt_seed: Some(seed), ..Default::default() }
}

fn ui_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("tests/data/ui")
}

fn read_json(name: &str) -> Json {
    let path = ui_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Converts `tests/data/ui/<name>.json` (through format detection, as the CLI does), checks
/// it against `<name>.expected.json`, and checks that the runtime parses and validates it.
fn convert_and_compare(name: &str) -> Converted {
    let text = std::fs::read_to_string(ui_dir().join(format!("{name}.json"))).unwrap();
    let doc = Document::parse(&text).unwrap();
    assert!(doc.is_ui(), "{name} should be detected as a UI workflow");
    let converted = doc.into_prompt(&lookup, &seeded(42)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected = read_json(&format!("{name}.expected.json"));
    if converted.prompt != expected {
        panic!(
            "{name}: converted prompt differs from the expected one\n--- got ---\n{}\n--- expected ---\n{}",
            serde_json::to_string_pretty(&converted.prompt).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap()
        );
    }
    let prompt = Prompt::from_json(&converted.prompt).expect("the converted prompt parses");
    if let Err(rejection) = validate(prompt, &registry(), None) {
        panic!("{name}: converted prompt does not validate: {}", rejection.render());
    }
    converted
}

fn ids(prompt: &Json) -> Vec<&str> {
    prompt.as_object().unwrap().keys().map(String::as_str).collect()
}

/// Index of `id` in the prompt's key order (the converter emits in topological order).
fn pos(prompt: &Json, id: &str) -> usize {
    ids(prompt).iter().position(|k| *k == id).unwrap_or_else(|| panic!("{id} not in prompt"))
}

// ---------------------------------------------------------------------------------------
// The workflow files
// ---------------------------------------------------------------------------------------

#[test]
fn txt2img_default_workflow() {
    let c = convert_and_compare("txt2img_ui");
    let p = &c.prompt;
    // control_after_generate occupies widgets_values[1] but is not sent.
    assert!(p["3"]["inputs"].get("control_after_generate").is_none());
    assert_eq!(p["3"]["inputs"]["steps"], json!(20));
    // Dynamic prompt: comments gone, `{red|white}` resolved to one option (which one depends
    // on the seed; the expected file holds the choice for seed 42).
    let text = p["6"]["inputs"]["text"].as_str().unwrap();
    assert!(["red", "white"].iter().any(|c| text == format!("a {c} fox in snow, golden hour, highly detailed \nphoto")), "{text:?}");
    let other = ui_to_prompt_with(&read_json("txt2img_ui.json"), &lookup, &seeded(43)).unwrap();
    assert!(other.prompt["6"]["inputs"]["text"].as_str().unwrap().ends_with("fox in snow, golden hour, highly detailed \nphoto"));
    assert_eq!(c.controls.iter().find(|w| w.node == "3").map(|w| (w.input.as_str(), w.mode.as_str())), Some(("seed", "randomize")));
    // The MarkdownNote and the group produce nothing.
    assert!(p.get("10").is_none());
    assert_eq!(p.as_object().unwrap().len(), 7);
    // Topological order: every link points to an earlier node.
    assert!(pos(p, "4") < pos(p, "6") && pos(p, "6") < pos(p, "3") && pos(p, "3") < pos(p, "8") && pos(p, "8") < pos(p, "9"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn bypassed_lora_passes_model_and_clip_through() {
    // docs/comfyui.md, "Worked example".
    let c = convert_and_compare("bypass_lora_ui");
    let p = &c.prompt;
    assert!(p.get("10").is_none(), "the bypassed LoraLoader is not emitted");
    assert!(p.get("13").is_none(), "the bypassed ImageScale is not emitted");
    assert!(p.get("12").is_none(), "the PrimitiveNode is not emitted");
    assert_eq!(p["3"]["inputs"]["model"], json!(["4", 0]));
    assert_eq!(p["6"]["inputs"]["clip"], json!(["4", 1]), "LoRA output 1 (CLIP) maps to its input 1");
    assert_eq!(p["3"]["inputs"]["steps"], json!(30), "the primitive's value replaces the stale widget value 20");
    assert_eq!(p["9"]["inputs"]["images"], json!(["8", 0]));
}

#[test]
fn muted_nodes_are_dropped_with_their_links() {
    let c = convert_and_compare("mute_ui");
    let p = &c.prompt;
    for muted in ["11", "12", "13", "14"] {
        assert!(p.get(muted).is_none(), "muted node {muted} must not be emitted");
    }
    // The muted node of an unknown type is skipped with a warning, not an error.
    assert!(c.warnings.iter().any(|w| w.contains("node 13") && w.contains("UltimateSDUpscale") && w.contains("muted")), "{:?}", c.warnings);
    assert_eq!(c.controls.iter().find(|w| w.node == "3").map(|w| w.mode.as_str()), Some("fixed"));
}

#[test]
fn reroute_chains_and_primitive_nodes() {
    let c = convert_and_compare("reroute_primitive_ui");
    let p = &c.prompt;
    for virtual_node in ["20", "21", "22", "23", "24", "30", "31", "32", "40"] {
        assert!(p.get(virtual_node).is_none(), "frontend-only node {virtual_node} must not be emitted");
    }
    assert_eq!(p["3"]["inputs"]["model"], json!(["4", 0]), "three reroutes resolve to the checkpoint");
    assert_eq!(p["8"]["inputs"]["vae"], json!(["4", 2]));
    // A primitive whose first link goes to a reroute gets no widget in the frontend (it is
    // made from the first target's widget input), so its value never reaches the seed, which
    // keeps KSampler's own value.
    assert_eq!(p["3"]["inputs"]["seed"], json!(1), "no primitive value through a reroute");
    assert_eq!(p["3"]["inputs"]["sampler_name"], json!("dpmpp_2m"));
    assert_eq!(p["7"]["inputs"]["text"], json!("blurry, low quality, watermark"));
    // The primitive's control mode replaces KSampler's own for the input it feeds directly.
    let modes: Vec<(&str, &str)> = c.controls.iter().filter(|w| w.node == "3").map(|w| (w.input.as_str(), w.mode.as_str())).collect();
    assert_eq!(modes, vec![("seed", "randomize"), ("sampler_name", "fixed")]);
}

#[test]
fn converted_widgets_object_form_and_upload_widget() {
    let c = convert_and_compare("converted_widget_ui");
    let p = &c.prompt;
    assert_eq!(p["3"]["inputs"]["seed"], json!(["16", 0]), "a linked widget socket takes the link");
    assert_eq!(p["10"]["inputs"]["strength_model"], json!(["15", 0]));
    assert_eq!(p["10"]["inputs"]["strength_clip"], json!(1), "the unlinked widget keeps its value");
    assert_eq!(p["11"]["inputs"], json!({ "image": "photos/cat.png" }), "the upload button is not sent");
    assert_eq!(p["7"]["inputs"]["text"], json!("lowres, bad anatomy"), "object-form widgets_values");
    // The text arrives by link from a backend node: no dynamic-prompt processing happens.
    assert_eq!(p["17"]["inputs"]["value"], json!("a cat astronaut, {watercolor|ink} style"));
    assert_eq!(c.controls.iter().find(|w| w.node == "16").map(|w| w.mode.as_str()), Some("fixed"));
    assert!(!c.controls.iter().any(|w| w.node == "3"), "KSampler's seed is linked, its control widget is moot: {:?}", c.controls);
}

#[test]
fn legacy_file_fixups() {
    let c = convert_and_compare("legacy_ui");
    let p = &c.prompt;
    // forceInput placeholders ("", "") of the pre-1.16 layout were dropped.
    assert_eq!(p["12"]["inputs"]["delimiter"], json!(", "));
    assert_eq!(p["12"]["inputs"]["clean_whitespace"], json!("true"));
    assert!(c.warnings.iter().any(|w| w.contains("node 12") && w.contains("pre-1.16")), "{:?}", c.warnings);
    // sample_ prefix removed, control `true` read as randomize.
    assert_eq!(p["3"]["inputs"]["sampler_name"], json!("euler_ancestral"));
    assert_eq!(c.controls.iter().find(|w| w.node == "3").map(|w| w.mode.as_str()), Some("randomize"));
    // Dynamic prompts on a custom node's flagged widget: comment removed, choice made.
    assert_eq!(p["11"]["inputs"]["text"], json!("dramatic lighting "));
    let t = p["10"]["inputs"]["text"].as_str().unwrap();
    assert!(t == "a castle on a hill at sunset" || t == "a castle on a hill at sunrise", "{t}");
}

#[test]
fn version_1_links_and_nested_subgraphs() {
    let c = convert_and_compare("v1_links_subgraph_ui");
    let p = &c.prompt;
    // The definitions' node ids collide with the root's (1, 2) and with each other, and the
    // file has no last_node_id: as the frontend does on load, the Sampler block's nodes 1-4
    // become 3-6 (each new id taken in turn, so 3 and 4 move on too) and the Decode block's
    // 1-2 become 7-8; the proxyWidgets entry for node 3 follows it to 5.
    // Instances and the muted instance's inner nodes are not emitted.
    for absent in ["10", "11", "12", "12:3", "12:5", "22", "10:6", "10:6:8", "11:6:8", "10:1", "10:3:1"] {
        assert!(p.get(absent).is_none(), "{absent} must not be emitted");
    }
    // Per-instance widget values: current form (10) and legacy proxyWidgets (11).
    assert_eq!(p["10:5"]["inputs"]["seed"], json!(1001));
    assert_eq!(p["11:5"]["inputs"]["seed"], json!(2002));
    assert_eq!(p["10:5"]["inputs"]["steps"], json!(20));
    assert_eq!(p["11:5"]["inputs"]["steps"], json!(12), "a bare promoted widget overrides the inner value for that instance only");
    // Nested instance inside an instance, through a bypassed inner node.
    assert_eq!(p["20"]["inputs"]["images"], json!(["10:6:7", 0]));
    assert_eq!(p["10:6:7"]["inputs"]["vae"], json!(["1", 2]));
    assert!(pos(p, "10:5") < pos(p, "10:6:7") && pos(p, "10:6:7") < pos(p, "20"));
}

#[test]
fn every_ui_workflow_file_has_an_expected_prompt_and_converts() {
    let mut n = 0;
    for entry in std::fs::read_dir(ui_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(stem) = name.strip_suffix(".json").filter(|s| !s.ends_with(".expected")) {
            convert_and_compare(stem);
            n += 1;
        }
    }
    assert!(n >= 6, "expected at least six UI workflows, found {n}");
}

// ---------------------------------------------------------------------------------------
// Inline cases
// ---------------------------------------------------------------------------------------

/// A node object in frontend shape.
fn node(id: i64, ty: &str, mode: i64, inputs: Json, outputs: Json, widgets: Json) -> Json {
    json!({ "id": id, "type": ty, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0, "mode": mode,
            "inputs": inputs, "outputs": outputs, "properties": {}, "widgets_values": widgets })
}

fn workflow(nodes: Vec<Json>, links: Json) -> Json {
    json!({ "last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4 })
}

fn convert(wf: &Json) -> Result<Converted, ConvertError> {
    ui_to_prompt_with(wf, &lookup, &seeded(1))
}

fn ckpt(id: i64, model_links: Json, clip_links: Json, vae_links: Json) -> Json {
    node(
        id,
        "CheckpointLoaderSimple",
        0,
        json!([]),
        json!([{ "name": "MODEL", "type": "MODEL", "links": model_links },
               { "name": "CLIP", "type": "CLIP", "links": clip_links },
               { "name": "VAE", "type": "VAE", "links": vae_links }]),
        json!(["sd15.safetensors"]),
    )
}

fn reroute(id: i64, input_link: Json, out_links: Json) -> Json {
    node(id, "Reroute", 0, json!([{ "name": "", "type": "*", "link": input_link }]), json!([{ "name": "", "type": "*", "links": out_links }]), json!(null))
}

#[test]
fn unknown_type_error_names_the_node() {
    let wf = workflow(
        vec![
            ckpt(1, json!([1]), json!([]), json!([])),
            json!({ "id": 7, "type": "FancySampler", "title": "My sampler", "mode": 0,
                    "inputs": [{ "name": "model", "type": "MODEL", "link": 1 }], "outputs": [], "widgets_values": [3] }),
        ],
        json!([[1, 1, 0, 7, 0, "MODEL"]]),
    );
    let err = convert(&wf).unwrap_err();
    let ConvertError::UnknownNodeTypes(nodes) = &err else { panic!("{err:?}") };
    assert_eq!(nodes.len(), 1);
    assert_eq!((nodes[0].id.as_str(), nodes[0].title.as_deref(), nodes[0].node_type.as_str()), ("7", Some("My sampler"), "FancySampler"));
    let msg = err.to_string();
    assert!(msg.contains("node 7") && msg.contains("My sampler") && msg.contains("FancySampler"), "{msg}");
    assert!(msg.contains("install"), "the message says what to do: {msg}");
}

#[test]
fn unknown_bypassed_node_is_skipped_and_passed_through() {
    let wf = workflow(
        vec![
            ckpt(1, json!([1]), json!([]), json!([])),
            json!({ "id": 2, "type": "SomeCustomModelPatch", "mode": 4,
                    "inputs": [{ "name": "model", "type": "MODEL", "link": 1 }],
                    "outputs": [{ "name": "MODEL", "type": "MODEL", "links": [2] }], "widgets_values": [0.5] }),
            node(3, "LoraLoader", 0, json!([{ "name": "model", "type": "MODEL", "link": 2 }, { "name": "clip", "type": "CLIP", "link": null }]),
                 json!([{ "name": "MODEL", "type": "MODEL", "links": [] }, { "name": "CLIP", "type": "CLIP", "links": [] }]),
                 json!(["pixel_style.safetensors", 0.7, 0.7])),
        ],
        json!([[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"]]),
    );
    let c = convert(&wf).unwrap();
    assert!(c.prompt.get("2").is_none());
    assert_eq!(c.prompt["3"]["inputs"]["model"], json!(["1", 0]));
    assert!(c.warnings.iter().any(|w| w.contains("node 2") && w.contains("bypassed")), "{:?}", c.warnings);
}

#[test]
fn links_from_muted_nodes_leave_widgets_their_value() {
    // A muted backend primitive feeding KSampler's steps socket: the frontend resolves a muted
    // source to nothing, so `steps` keeps the widget's own value.
    let wf = workflow(
        vec![
            ckpt(1, json!([1]), json!([]), json!([])),
            node(2, "PrimitiveInt", 2, json!([]), json!([{ "name": "INT", "type": "INT", "links": [2] }]), json!([33, "fixed"])),
            node(3, "KSampler", 0,
                 json!([{ "name": "model", "type": "MODEL", "link": 1 },
                        { "name": "steps", "type": "INT", "widget": { "name": "steps" }, "link": 2 }]),
                 json!([{ "name": "LATENT", "type": "LATENT", "links": [] }]),
                 json!([5, "fixed", 20, 8, "euler", "normal", 1])),
        ],
        json!([[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "INT"]]),
    );
    let c = convert(&wf).unwrap();
    let inputs = c.prompt["3"]["inputs"].as_object().unwrap();
    assert_eq!(inputs["steps"], json!(20), "{inputs:?}");
    assert_eq!(inputs["seed"], json!(5));
    assert!(c.prompt.get("2").is_none());
}

#[test]
fn bypass_type_matching_rule() {
    // A bypassed node whose same-index input has the wrong type: the first input of exactly
    // the wanted type is used. Inputs: [clip CLIP, model MODEL]; output 0 is MODEL.
    let wf = workflow(
        vec![
            ckpt(1, json!([1]), json!([2]), json!([])),
            json!({ "id": 2, "type": "LoraLoader", "mode": 4,
                    "inputs": [{ "name": "clip", "type": "CLIP", "link": 2 }, { "name": "model", "type": "MODEL", "link": 1 }],
                    "outputs": [{ "name": "MODEL", "type": "MODEL", "links": [3] }, { "name": "CLIP", "type": "CLIP", "links": [4] }],
                    "widgets_values": ["pixel_style.safetensors", 1, 1] }),
            node(3, "KSampler", 0, json!([{ "name": "model", "type": "MODEL", "link": 3 }]),
                 json!([{ "name": "LATENT", "type": "LATENT", "links": [] }]), json!([1, "fixed", 20, 8, "euler", "normal", 1])),
            node(4, "CLIPTextEncode", 0, json!([{ "name": "clip", "type": "CLIP", "link": 4 }]),
                 json!([{ "name": "CONDITIONING", "type": "CONDITIONING", "links": [] }]), json!(["x"])),
            // A bypassed VAEDecode has no IMAGE input: its consumer gets nothing.
            json!({ "id": 5, "type": "VAEDecode", "mode": 4,
                    "inputs": [{ "name": "samples", "type": "LATENT", "link": null }, { "name": "vae", "type": "VAE", "link": 5 }],
                    "outputs": [{ "name": "IMAGE", "type": "IMAGE", "links": [6] }] }),
            node(6, "SaveImage", 0, json!([{ "name": "images", "type": "IMAGE", "link": 6 }]), json!([]), json!(["out"])),
        ],
        json!([[1, 1, 0, 2, 1, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 2, 0, 3, 0, "MODEL"], [4, 2, 1, 4, 0, "CLIP"],
               [5, 1, 2, 5, 1, "VAE"], [6, 5, 0, 6, 0, "IMAGE"]]),
    );
    let mut wf = wf;
    wf["nodes"][0]["outputs"][2]["links"] = json!([5]);
    let c = convert(&wf).unwrap();
    assert_eq!(c.prompt["3"]["inputs"]["model"], json!(["1", 0]));
    assert_eq!(c.prompt["4"]["inputs"]["clip"], json!(["1", 1]));
    assert_eq!(c.prompt["6"]["inputs"], json!({ "filename_prefix": "out" }));

    // Exact type beats an earlier list-typed match: output 1 (MODEL) of a bypassed node with
    // inputs [MODEL,CLIP ← ckpt CLIP, CLIP ← ckpt CLIP, MODEL ← ckpt MODEL] takes input 2.
    let wf = workflow(
        vec![
            ckpt(1, json!([3]), json!([1, 2]), json!([])),
            json!({ "id": 2, "type": "MultiPatch", "mode": 4,
                    "inputs": [{ "name": "any", "type": "MODEL,CLIP", "link": 1 }, { "name": "clip", "type": "CLIP", "link": 2 },
                               { "name": "model", "type": "MODEL", "link": 3 }],
                    "outputs": [{ "name": "CLIP", "type": "CLIP", "links": [] }, { "name": "MODEL", "type": "MODEL", "links": [4] }] }),
            node(3, "KSampler", 0, json!([{ "name": "model", "type": "MODEL", "link": 4 }]), json!([]), json!([1, "fixed", 20, 8, "euler", "normal", 1])),
        ],
        json!([[1, 1, 1, 2, 0, "CLIP"], [2, 1, 1, 2, 1, "CLIP"], [3, 1, 0, 2, 2, "MODEL"], [4, 2, 1, 3, 0, "MODEL"]]),
    );
    assert_eq!(convert(&wf).unwrap().prompt["3"]["inputs"]["model"], json!(["1", 0]));
}

#[test]
fn bypass_through_reroute_and_wildcard_consumer() {
    // A reroute after a bypassed LoraLoader carries `*`, but the final consumer's type
    // (CLIP) is what the rule sees, so output 1 maps to input 1.
    let wf = workflow(
        vec![
            ckpt(1, json!([1]), json!([2]), json!([])),
            json!({ "id": 2, "type": "LoraLoader", "mode": 4,
                    "inputs": [{ "name": "model", "type": "MODEL", "link": 1 }, { "name": "clip", "type": "CLIP", "link": 2 }],
                    "outputs": [{ "name": "MODEL", "type": "MODEL", "links": [] }, { "name": "CLIP", "type": "CLIP", "links": [3, 5] }],
                    "widgets_values": ["pixel_style.safetensors", 1, 1] }),
            reroute(3, json!(3), json!([4])),
            node(4, "CLIPTextEncode", 0, json!([{ "name": "clip", "type": "CLIP", "link": 4 }]),
                 json!([{ "name": "CONDITIONING", "type": "CONDITIONING", "links": [] }]), json!(["x"])),
            // A consumer of type `*` takes the input with the output's index.
            node(5, "PreviewAny", 0, json!([{ "name": "source", "type": "*", "link": 5 }]), json!([]), json!([])),
        ],
        json!([[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 2, 1, 3, 0, "*"], [4, 3, 0, 4, 0, "CLIP"], [5, 2, 1, 5, 0, "*"]]),
    );
    let c = convert(&wf).unwrap();
    assert_eq!(c.prompt["4"]["inputs"]["clip"], json!(["1", 1]));
    assert_eq!(c.prompt["5"]["inputs"]["source"], json!(["1", 1]));
}

#[test]
fn long_reroute_chain_does_not_recurse() {
    const N: i64 = 20_000;
    let mut nodes = vec![ckpt(1, json!([]), json!([]), json!([]))];
    let mut links = Vec::new();
    // Link k goes from node (k) to node (k+1); nodes 2..=N+1 are reroutes.
    links.push(json!([1, 1, 2, 2, 0, "VAE"]));
    for k in 2..=N + 1 {
        nodes.push(reroute(k, json!(k - 1), json!([k])));
        links.push(json!([k, k, 0, k + 1, 0, "*"]));
    }
    let last = N + 2;
    nodes.push(node(last, "VAEDecode", 0, json!([{ "name": "vae", "type": "VAE", "link": N + 1 }]), json!([]), json!([])));
    let wf = workflow(nodes, Json::Array(links));
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || convert(&wf).map(|c| c.prompt))
        .unwrap();
    let prompt = handle.join().expect("no stack overflow").unwrap();
    assert_eq!(prompt[last.to_string()]["inputs"]["vae"], json!(["1", 2]));
    assert_eq!(prompt.as_object().unwrap().len(), 2);
}

#[test]
fn reroute_cycle_is_an_error() {
    let wf = workflow(
        vec![
            reroute(1, json!(2), json!([1])),
            reroute(2, json!(1), json!([2, 3])),
            node(3, "VAEDecode", 0, json!([{ "name": "vae", "type": "VAE", "link": 3 }]), json!([]), json!([])),
        ],
        json!([[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "VAE"]]),
    );
    let err = convert(&wf).unwrap_err();
    assert!(matches!(err, ConvertError::Cycle { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"vae\"") && msg.contains("node 3") && msg.contains("reconnect"), "{msg}");
}

#[test]
fn bypass_cycle_is_an_error() {
    // Two bypassed LoraLoaders feeding each other's model input.
    let lora = |id: i64, in_link: i64, out_links: Json| {
        json!({ "id": id, "type": "LoraLoader", "mode": 4,
                "inputs": [{ "name": "model", "type": "MODEL", "link": in_link }, { "name": "clip", "type": "CLIP", "link": null }],
                "outputs": [{ "name": "MODEL", "type": "MODEL", "links": out_links }, { "name": "CLIP", "type": "CLIP", "links": [] }],
                "widgets_values": ["pixel_style.safetensors", 1, 1] })
    };
    let wf = workflow(
        vec![
            lora(1, 2, json!([1, 3])),
            lora(2, 1, json!([2])),
            node(3, "KSampler", 0, json!([{ "name": "model", "type": "MODEL", "link": 3 }]), json!([]), json!([1, "fixed", 20, 8, "euler", "normal", 1])),
        ],
        json!([[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 1, 0, "MODEL"], [3, 1, 0, 3, 0, "MODEL"]]),
    );
    assert!(matches!(convert(&wf).unwrap_err(), ConvertError::Cycle { .. }));
}

#[test]
fn legacy_group_node_is_refused_with_instructions() {
    let mut wf = workflow(
        vec![json!({ "id": 9, "type": "workflow>Sampler stack", "title": "Samplers", "mode": 0, "inputs": [], "outputs": [], "widgets_values": [] })],
        json!([]),
    );
    wf["extra"]["groupNodes"] = json!({ "Sampler stack": { "nodes": [], "links": [], "external": [] } });
    let err = convert(&wf).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConvertError::GroupNode { .. }));
    assert!(msg.contains("node 9") && msg.contains("Samplers") && msg.contains("Sampler stack"), "{msg}");
    assert!(msg.contains("subgraph") && msg.contains("Export (API)"), "{msg}");
}

#[test]
fn array_widget_values_are_wrapped() {
    let mut schemas = schema_map();
    schemas.insert(
        "CurveNode".into(),
        Arc::new(NodeSchema::new("CurveNode", "Curve", "test").input(InputSpec::socket("points", "CURVE")).output(OutputSpec::new("CURVE"))),
    );
    schemas.insert(
        "PickNode".into(),
        Arc::new(NodeSchema::new("PickNode", "Pick", "test").input(InputSpec::combo("pick", &["a", "b"])).output(OutputSpec::new("STRING"))),
    );
    let wf = workflow(
        vec![
            node(1, "CurveNode", 0, json!([]), json!([]), json!([{ "points": [[0, 0], [1, 1]], "interpolation": "linear" }])),
            node(2, "PickNode", 0, json!([]), json!([]), json!([["a", "b"]])),
        ],
        json!([]),
    );
    let c = ui_to_prompt_with(&wf, &|n| schemas.get(n).cloned(), &seeded(0)).unwrap();
    // A curve widget's value goes typed, as the frontend sends it (ComfyUI unwraps __value__).
    assert_eq!(c.prompt["1"]["inputs"]["points"], json!({ "__type__": "CURVE", "__value__": { "points": [[0, 0], [1, 1]], "interpolation": "linear" } }));
    // Any other array value is wrapped so that it is not read as a link.
    assert_eq!(c.prompt["2"]["inputs"]["pick"], json!({ "__value__": ["a", "b"] }));
}

#[test]
fn missing_widget_values_take_defaults_and_are_reported() {
    let wf = workflow(vec![node(5, "EmptyLatentImage", 0, json!([]), json!([]), json!([640]))], json!([]));
    let c = convert(&wf).unwrap();
    assert_eq!(c.prompt["5"]["inputs"], json!({ "width": 640, "height": 512, "batch_size": 1 }));
    assert!(c.warnings.iter().any(|w| w.contains("node 5") && w.contains("1 entries")), "{:?}", c.warnings);
}

#[test]
fn subgraph_input_fed_by_primitive_and_passthrough_output() {
    // An instance whose `text` input is fed by a PrimitiveNode in the root graph and whose
    // definition routes an input straight to an output.
    let def = json!({
        "id": "aaaaaaaa-0000-4000-8000-000000000001", "version": 1, "name": "Prompt block",
        "inputs": [{ "name": "clip", "type": "CLIP", "linkIds": [1] }, { "name": "text", "type": "STRING", "linkIds": [2] }],
        "outputs": [{ "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [3] }, { "name": "CLIP", "type": "CLIP", "linkIds": [4] }],
        "nodes": [
            { "id": 1, "type": "CLIPTextEncode", "mode": 0,
              "inputs": [{ "name": "clip", "type": "CLIP", "link": 1 }, { "name": "text", "type": "STRING", "widget": { "name": "text" }, "link": 2 }],
              "outputs": [{ "name": "CONDITIONING", "type": "CONDITIONING", "links": [3] }], "widgets_values": ["inner"] }
        ],
        "links": [
            { "id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "CLIP" },
            { "id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 1, "target_slot": 1, "type": "STRING" },
            { "id": 3, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING" },
            { "id": 4, "origin_id": -10, "origin_slot": 0, "target_id": -20, "target_slot": 1, "type": "CLIP" }
        ]
    });
    let mut wf = workflow(
        vec![
            ckpt(1, json!([]), json!([1]), json!([])),
            node(2, "PrimitiveNode", 0, json!([]), json!([{ "name": "STRING", "type": "STRING", "links": [2], "widget": { "name": "text" } }]), json!(["from primitive"])),
            json!({ "id": 5, "type": "aaaaaaaa-0000-4000-8000-000000000001", "mode": 0,
                    "inputs": [{ "name": "clip", "type": "CLIP", "link": 1 }, { "name": "text", "type": "STRING", "widget": { "name": "text" }, "link": 2 }],
                    "outputs": [{ "name": "CONDITIONING", "type": "CONDITIONING", "links": [] }, { "name": "CLIP", "type": "CLIP", "links": [3] }],
                    "widgets_values": ["stale"] }),
            node(6, "CLIPTextEncode", 0, json!([{ "name": "clip", "type": "CLIP", "link": 3 }]), json!([]), json!(["outer"])),
        ],
        json!([[1, 1, 1, 5, 0, "CLIP"], [2, 2, 0, 5, 1, "STRING"], [3, 5, 1, 6, 0, "CLIP"]]),
    );
    wf["definitions"] = json!({ "subgraphs": [def] });
    let c = convert(&wf).unwrap();
    // The definition's node 1 collides with the root's node 1: the frontend renumbers it to
    // the next id after last_node_id (99).
    assert!(c.prompt.get("5:1").is_none());
    assert_eq!(c.prompt["5:100"]["inputs"], json!({ "text": "from primitive", "clip": ["1", 1] }));
    assert_eq!(c.prompt["6"]["inputs"]["clip"], json!(["1", 1]), "input → output passthrough inside the definition");
}

#[test]
fn bypassed_subgraph_instance_passes_inputs_through() {
    let def = json!({
        "id": "cccccccc-0000-4000-8000-000000000003", "version": 1, "name": "Model patch",
        "inputs": [{ "name": "model", "type": "MODEL", "linkIds": [1] }],
        "outputs": [{ "name": "MODEL", "type": "MODEL", "linkIds": [2] }],
        "nodes": [
            { "id": 1, "type": "LoraLoader", "mode": 0,
              "inputs": [{ "name": "model", "type": "MODEL", "link": 1 }, { "name": "clip", "type": "CLIP", "link": null }],
              "outputs": [{ "name": "MODEL", "type": "MODEL", "links": [2] }, { "name": "CLIP", "type": "CLIP", "links": [] }],
              "widgets_values": ["pixel_style.safetensors", 1, 0] }
        ],
        "links": [
            { "id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "MODEL" },
            { "id": 2, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "MODEL" }
        ]
    });
    let instance = |mode: i64| {
        let mut wf = workflow(
            vec![
                ckpt(1, json!([1]), json!([]), json!([])),
                json!({ "id": 2, "type": "cccccccc-0000-4000-8000-000000000003", "mode": mode,
                        "inputs": [{ "name": "model", "type": "MODEL", "link": 1 }],
                        "outputs": [{ "name": "MODEL", "type": "MODEL", "links": [2] }], "widgets_values": [] }),
                node(3, "KSampler", 0, json!([{ "name": "model", "type": "MODEL", "link": 2 }]), json!([]), json!([1, "fixed", 20, 8, "euler", "normal", 1])),
            ],
            json!([[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"]]),
        );
        wf["definitions"] = json!({ "subgraphs": [def.clone()] });
        convert(&wf).unwrap().prompt
    };
    let active = instance(0);
    // The definition's node 1 collides with the root's node 1 and runs as 100 (after
    // last_node_id 99), as the frontend renumbers it on load.
    assert_eq!(active["3"]["inputs"]["model"], json!(["2:100", 0]));
    assert_eq!(active["2:100"]["inputs"]["model"], json!(["1", 0]));
    let bypassed = instance(4);
    assert!(bypassed.get("2:100").is_none(), "inner nodes of a bypassed instance are not emitted");
    assert_eq!(bypassed["3"]["inputs"]["model"], json!(["1", 0]));
    let muted = instance(2);
    assert!(muted.get("2:100").is_none());
    assert!(muted["3"]["inputs"].get("model").is_none());
}

#[test]
fn set_and_get_nodes_route_by_name() {
    // KJNodes' frontend-only SetNode/GetNode pair, and an unconnected unknown helper node.
    let wf = workflow(
        vec![
            ckpt(1, json!([1]), json!([]), json!([])),
            json!({ "id": 2, "type": "SetNode", "mode": 0, "title": "Set_model",
                    "inputs": [{ "name": "MODEL", "type": "MODEL", "link": 1 }],
                    "outputs": [{ "name": "*", "type": "*", "links": null }], "widgets_values": ["model"] }),
            json!({ "id": 3, "type": "GetNode", "mode": 0, "title": "Get_model", "inputs": [],
                    "outputs": [{ "name": "MODEL", "type": "MODEL", "links": [2] }], "widgets_values": ["model"] }),
            json!({ "id": 4, "type": "GetNode", "mode": 0, "inputs": [],
                    "outputs": [{ "name": "CLIP", "type": "CLIP", "links": [3] }], "widgets_values": ["clip"] }),
            node(5, "LoraLoader", 0,
                 json!([{ "name": "model", "type": "MODEL", "link": 2 }, { "name": "clip", "type": "CLIP", "link": 3 }]),
                 json!([]), json!(["pixel_style.safetensors", 1, 1])),
            json!({ "id": 6, "type": "Label (rgthree)", "mode": 0, "inputs": [], "outputs": [], "widgets_values": [] }),
        ],
        json!([[1, 1, 0, 2, 0, "MODEL"], [2, 3, 0, 5, 0, "MODEL"], [3, 4, 0, 5, 1, "CLIP"]]),
    );
    let c = convert(&wf).unwrap();
    assert_eq!(c.prompt["5"]["inputs"]["model"], json!(["1", 0]));
    assert!(c.prompt["5"]["inputs"].get("clip").is_none());
    assert!(c.warnings.iter().any(|w| w.contains("node 4") && w.contains("\"clip\"")), "{:?}", c.warnings);
    assert!(c.warnings.iter().any(|w| w.contains("node 6") && w.contains("no connections")), "{:?}", c.warnings);
    assert_eq!(ids(&c.prompt), vec!["1", "5"]);
}

#[test]
fn recursive_subgraph_is_an_error() {
    let id = "bbbbbbbb-0000-4000-8000-000000000002";
    let def = json!({ "id": id, "version": 1, "name": "Loop", "inputs": [], "outputs": [],
                      "nodes": [{ "id": 1, "type": id, "mode": 0, "inputs": [], "outputs": [] }], "links": [] });
    let mut wf = workflow(vec![json!({ "id": 3, "type": id, "mode": 0, "inputs": [], "outputs": [] })], json!([]));
    wf["definitions"] = json!({ "subgraphs": [def] });
    let err = convert(&wf).unwrap_err();
    assert!(matches!(err, ConvertError::RecursiveSubgraph { .. }), "{err:?}");
    assert!(err.to_string().contains("Loop"));
}

#[test]
fn dynamic_prompt_choice_is_seeded_and_covers_all_options() {
    let wf = workflow(
        vec![node(6, "CLIPTextEncode", 0, json!([]), json!([]), json!(["{a|b|c} // note"]))],
        json!([]),
    );
    let text = |seed: u64| ui_to_prompt_with(&wf, &lookup, &seeded(seed)).unwrap().prompt["6"]["inputs"]["text"].as_str().unwrap().to_string();
    assert_eq!(text(7), text(7), "same seed, same choice");
    let seen: std::collections::BTreeSet<String> = (0..64).map(text).collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a ", "b ", "c "]);
    // Unseeded conversion still yields one of the options.
    let free = ui_to_prompt(&wf, &lookup).unwrap().prompt["6"]["inputs"]["text"].as_str().unwrap().to_string();
    assert!(["a ", "b ", "c "].contains(&free.as_str()));
    // The processor itself: nested groups, escapes.
    assert_eq!(dynprompt::process(r"{x|\{y\}} z", &mut || 0.99), "{y} z", "escapes lose their backslash, as in the frontend");
}

#[test]
fn seed_named_input_without_option_gets_a_control_slot() {
    // A custom sampler whose seed input lacks the option still has the companion slot.
    let mut schemas = schema_map();
    schemas.insert(
        "CustomNoise".into(),
        Arc::new(
            NodeSchema::new("CustomNoise", "Custom Noise", "test")
                .input(InputSpec::int("noise_seed", 0, 0, i64::MAX))
                .input(InputSpec::float("strength", 1.0, 0.0, 1.0, 0.01).with("control_after_generate", json!("fixed")))
                .input(InputSpec::combo("mode", &["a", "b"]))
                .output(OutputSpec::new("NOISE")),
        ),
    );
    let wf = workflow(vec![node(1, "CustomNoise", 0, json!([]), json!([]), json!([77, "increment", 0.25, "decrement", "b"]))], json!([]));
    let c = ui_to_prompt_with(&wf, &|n| schemas.get(n).cloned(), &seeded(0)).unwrap();
    assert_eq!(c.prompt["1"]["inputs"], json!({ "noise_seed": 77, "strength": 0.25, "mode": "b" }));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn registry_backed_lookup() {
    let reg = registry();
    let wf = read_json("txt2img_ui.json");
    let c = ui_to_prompt_with(&wf, &registry_schemas(&reg), &seeded(42)).unwrap();
    assert_eq!(c.prompt, read_json("txt2img_ui.expected.json"));
}

// ---------------------------------------------------------------------------------------
// Format detection
// ---------------------------------------------------------------------------------------

#[test]
fn document_detection() {
    let ui = read_json("bypass_lora_ui.json");
    let api = read_json("bypass_lora_ui.expected.json");

    assert!(matches!(Document::detect(ui.clone()).unwrap(), Document::Ui(_)));
    assert_eq!(Document::detect(api.clone()).unwrap(), Document::Api(api.clone()));
    // /prompt envelope: the prompt wins over the workflow in extra_pnginfo.
    let envelope = json!({ "prompt": api, "client_id": "x", "extra_data": { "extra_pnginfo": { "workflow": ui } } });
    assert_eq!(Document::detect(envelope).unwrap(), Document::Api(api.clone()));
    // A wrapped UI workflow, and PNG-chunk style text values.
    assert_eq!(Document::detect(json!({ "workflow": ui })).unwrap(), Document::Ui(ui.clone()));
    assert_eq!(Document::detect(json!({ "workflow": ui.to_string() })).unwrap(), Document::Ui(ui.clone()));
    assert_eq!(Document::detect(json!({ "prompt": api.to_string() })).unwrap(), Document::Api(api.clone()));

    // Converting either format through the same entry point.
    let from_ui = Document::detect(ui).unwrap().into_prompt(&lookup, &seeded(0)).unwrap();
    let from_api = Document::detect(api.clone()).unwrap().into_prompt(&lookup, &seeded(0)).unwrap();
    assert_eq!(from_ui.prompt, api);
    assert_eq!(from_api.prompt, api);

    for bad in [json!([1, 2]), json!({}), json!({ "foo": 1, "bar": [2] }), json!("text")] {
        let err = Document::detect(bad.clone()).unwrap_err().to_string();
        assert!(err.contains("Export (API)") || err.contains("save"), "{bad}: {err}");
    }
    let err = Document::parse("{\n  \"nodes\": [,]\n}").unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
}


// ---------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------

/// Replaces (or deletes) one randomly chosen value somewhere in `doc`.
fn mutate(doc: &mut Json, rng: &mut dynprompt::ChoiceRng) {
    let stop = rng.next_u64().is_multiple_of(4);
    match doc {
        Json::Object(m) if !m.is_empty() && !stop => {
            let i = (rng.next_u64() % m.len() as u64) as usize;
            let key = m.keys().nth(i).unwrap().clone();
            if rng.next_u64().is_multiple_of(8) {
                m.shift_remove(&key);
            } else {
                mutate(m.get_mut(&key).unwrap(), rng);
            }
        }
        Json::Array(a) if !a.is_empty() && !stop => {
            let i = (rng.next_u64() % a.len() as u64) as usize;
            mutate(&mut a[i], rng);
        }
        _ => {
            *doc = match rng.next_u64() % 10 {
                0 => json!(null),
                1 => json!(-10),
                2 => json!(-20),
                3 => json!(1e300),
                4 => json!("*"),
                5 => json!([]),
                6 => json!({}),
                7 => json!([1, 2]),
                8 => json!(u64::MAX),
                _ => json!(rng.next_u64() % 40),
            };
        }
    }
}

#[test]
fn conversion_never_panics_on_mutated_workflows() {
    let mut rng = dynprompt::ChoiceRng::new(2024);
    let files = ["txt2img_ui", "bypass_lora_ui", "mute_ui", "reroute_primitive_ui", "converted_widget_ui", "legacy_ui", "v1_links_subgraph_ui"];
    let mut outcomes = [0usize; 2];
    for name in files {
        let original = read_json(&format!("{name}.json"));
        for _ in 0..300 {
            let mut doc = original.clone();
            for _ in 0..1 + rng.next_u64() % 3 {
                mutate(&mut doc, &mut rng);
            }
            let result = std::panic::catch_unwind(|| {
                let converted = Document::detect(doc.clone()).map(|d| d.into_prompt(&lookup, &seeded(1)));
                if let Ok(Ok(c)) = &converted {
                    // Whatever comes out is a prompt the runtime can parse.
                    Prompt::from_json(&c.prompt).expect("converted output parses as a prompt");
                }
                converted.is_ok_and(|r| r.is_ok())
            });
            match result {
                Ok(ok) => outcomes[ok as usize] += 1,
                Err(_) => panic!("conversion panicked on a mutation of {name}:\n{doc}"),
            }
        }
    }
    assert!(outcomes[1] > 0 && outcomes[0] > 0, "mutations should produce both successes and errors: {outcomes:?}");
}
