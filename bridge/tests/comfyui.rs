//! The bridge against a real ComfyUI (the copy scripts/setup.sh installs, or COMFYUI_PATH), on
//! CPU, with a generated tiny SD1.5 checkpoint. One interpreter per test binary: every test
//! shares the bridge started by `bridge()`.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{json, Value as Json};

use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::Event;
use comfyrs_runtime::executor::{Executor, RunOptions, RunReport};
use comfyrs_runtime::node::{Args, NodeClass};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::{validate, Rejection};
use comfyrs_runtime::Value;

mod support;

use support::{Collect, Env};

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    support::env(&ENV, "bridge-tests", |_, _, _| {})
}

#[allow(clippy::result_large_err)]
fn run_prompt(exec: &mut Executor, prompt: Json, events: &Collect) -> Result<RunReport, Rejection> {
    let e = env();
    let prompt = Prompt::from_json(&prompt).expect("prompt shape");
    let v = validate(prompt, &e.registry, None)?;
    Ok(exec.run(
        &v,
        &RunOptions {
            prompt_id: "test".into(),
            extra_pnginfo: Some(json!({"workflow": {"note": "comfyrs"}})),
            output_dir: e.output.clone(),
            events,
            extra_data: Some(json!({"auth_token_comfy_org": "token-of-test", "api_key_comfy_org": "key-of-test"})),
            registry: Some(&e.registry),
        },
    ))
}

fn new_exec() -> Executor {
    Executor::new(CacheMode::Lru, 8 << 30)
}

fn txt2img(ckpt: &str, seed: u64) -> Json {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fox", "images": ["8", 0]}},
        "10": {"class_type": "TestLatentDigest", "inputs": {"samples": ["3", 0]}}
    })
}

#[test]
fn boots_loads_nodes_and_reports_broken_packs() {
    let _lock = support::shared();
    let e = env();
    let r = e.bridge.report();
    assert!(r.node_count > 100, "only {} nodes", r.node_count);
    assert!(r.cpu);
    for n in ["KSampler", "CheckpointLoaderSimple", "SaveImage", "TestLatentDigest", "TestLazy"] {
        assert!(e.registry.get(n).is_some(), "{n} missing");
    }
    let broken: Vec<_> = e.bridge.import_failures().iter().filter(|f| f.custom).collect();
    assert_eq!(broken.len(), 1, "{:?}", e.bridge.import_failures());
    assert!(broken[0].path.contains("comfyrs_broken_pack"));
    assert!(broken[0].error.contains("broken on purpose"), "{}", broken[0].error);
    // A prompt using a class nobody registered names the pack that failed; one using a class
    // whose schema failed says why, instead of "not found".
    let mut exec = new_exec();
    let events = Collect::new();
    let rej = run_prompt(&mut exec, json!({"1": {"class_type": "FromTheBrokenPack", "inputs": {}}}), &events).expect_err("rejected");
    assert_eq!(rej.error.kind, "missing_node_type");
    assert!(rej.error.message.contains("comfyrs_broken_pack") && rej.error.message.contains("broken on purpose"), "{}", rej.error.message);
    let rej = run_prompt(&mut exec, json!({"1": {"class_type": "TestBadSchema", "inputs": {}}}), &events).expect_err("rejected");
    assert_eq!(rej.error.kind, "missing_node_type");
    assert!(rej.error.message.contains("could not be loaded") && rej.error.message.contains("schema fails on purpose"), "{}", rej.error.message);
    // ComfyUI's own node replacements register with the server stand-in (current ComfyUI has
    // them; the March 2024 copy has none).
    let replacements = e.bridge.node_replacements().unwrap();
    if r.comfyui_path.join("comfy_extras/nodes_replacements.py").is_file() {
        assert!(!e.bridge.import_failures().iter().any(|f| f.path.contains("nodes_replacements")), "{:?}", e.bridge.import_failures());
        assert_eq!(replacements["ImageBatch"][0]["new_node_id"], "BatchImagesNode", "{replacements}");
    } else {
        assert_eq!(replacements, json!({}));
    }
    // Schemas: combos from disk, V1 display names, python_module.
    let s = e.registry.get("CheckpointLoaderSimple").unwrap().schema();
    let ckpt = s.find_input("ckpt_name").unwrap();
    let rec = ckpt.to_object_info();
    assert!(rec[0].as_array().unwrap().iter().any(|v| v == &json!(e.ckpt)), "{rec}");
    let d = e.registry.get("TestLatentDigest").unwrap().schema();
    assert_eq!(d.display_name, "Latent digest (comfyrs test)");
    assert_eq!(d.python_module, "custom_nodes.comfyrs_test_pack");
    assert!(d.output_node);
    eprintln!(
        "boot: interpreter {:?}, torch {:?}, ComfyUI {:?}, nodes {:?}, schemas {:?}, total {:?}",
        r.python_init, r.import_torch, r.import_comfyui, r.load_nodes, r.schemas, r.total
    );
}

#[test]
fn fixture_is_complete_and_detected_as_sd15() {
    let _lock = support::shared();
    let e = env();
    let ckpt = e.models.join("checkpoints").join(&e.ckpt);
    let path = ckpt.to_string_lossy().into_owned();
    let out = e
        .bridge
        .with_python(move |py| -> Result<String, String> {
            let code = std::ffi::CString::new(
                r#"
def check(path):
    import comfy.sd, comfy.utils, json, torch
    sd = comfy.utils.load_torch_file(path)
    keys = set(sd.keys())
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    expected = set("model.diffusion_model." + k for k in model.model.diffusion_model.state_dict().keys())
    expected |= set("first_stage_model." + k for k in vae.first_stage_model.state_dict().keys())
    expected |= set("cond_stage_model.transformer.text_model." + k[len("clip_l.transformer.text_model."):]
                    for k in clip.cond_stage_model.state_dict().keys() if k.startswith("clip_l.transformer.text_model."))
    missing = sorted(expected - keys)
    return json.dumps({"model": type(model.model.model_config).__name__, "missing": missing,
                       "vae": type(vae.first_stage_model).__name__})
"#,
            )
            .unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"fixture_check.py", c"fixture_check").map_err(|e| e.to_string())?;
            use pyo3::types::PyAnyMethods;
            m.getattr("check").and_then(|f| f.call1((path,))).and_then(|r| r.extract::<String>()).map_err(|e| e.to_string())
        })
        .unwrap()
        .unwrap();
    let v: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"], "SD15", "{v}");
    assert_eq!(v["vae"], "TAESD", "{v}");
    assert_eq!(v["missing"], json!([]), "{v}");
}

fn digest_of(report: &RunReport, node: &str) -> String {
    report.outputs[node]["digest"][0].as_str().unwrap().to_string()
}

#[test]
fn txt2img_writes_a_png_and_matches_python_bit_for_bit() {
    let _lock = support::shared();
    let e = env();
    let events = Collect::new();
    let mut exec = new_exec();
    let report = run_prompt(&mut exec, txt2img(&e.ckpt, 42), &events).unwrap_or_else(|r| panic!("{}", r.render()));
    assert!(report.success(), "{:?}", report.errors);
    let images = report.outputs["9"]["images"].as_array().unwrap();
    let file = e.output.join(images[0]["subfolder"].as_str().unwrap()).join(images[0]["filename"].as_str().unwrap());
    let bytes = std::fs::read(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    assert_eq!(&bytes[1..4], b"PNG");
    // Progress from the sampler arrived as comfyrs events, attributed to the KSampler.
    let progress: Vec<_> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|ev| match ev {
            Event::Progress { node, value, max, .. } => Some((node.clone(), *value, *max)),
            _ => None,
        })
        .collect();
    assert!(progress.iter().any(|(n, v, m)| n == "3" && v == m && *m == 2), "{progress:?}");

    // The same node functions called directly in a separate Python process.
    let venv = std::env::var_os("COMFYRS_VENV").map(PathBuf::from).or_else(|| option_env!("COMFYRS_VENV").map(PathBuf::from)).unwrap();
    let script = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("tests/support/reference_txt2img.py");
    let out = std::process::Command::new(venv.join("bin/python"))
        .arg(&script)
        .arg(&e.bridge.report().comfyui_path)
        .arg(&e.models)
        .arg(&e.ckpt)
        .arg("42")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: Json = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(reference["model"], "SD15");
    assert_eq!(report.outputs["10"]["shape"][0], reference["shape"]);
    assert_eq!(digest_of(&report, "10"), reference["digest"].as_str().unwrap(), "comfyrs's latent differs from ComfyUI's own");

    // A second run with only the seed changed re-runs the sampler and below, not the loader.
    let report2 = run_prompt(&mut exec, txt2img(&e.ckpt, 43), &events).unwrap();
    assert!(report2.success(), "{:?}", report2.errors);
    let mut executed = report2.executed();
    executed.sort();
    assert_eq!(executed, vec!["10", "3", "8", "9"]);
    assert_ne!(digest_of(&report2, "10"), digest_of(&report, "10"));
}

#[test]
fn errors_name_the_node_and_the_next_prompt_runs() {
    let _lock = support::shared();
    let _ = env();
    let events = Collect::new();
    let mut exec = new_exec();

    // A node raising mid-run.
    let raising = json!({
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "TestRaise", "inputs": {"samples": ["1", 0], "message": "kaboom from python"}},
        "3": {"class_type": "TestLatentDigest", "inputs": {"samples": ["2", 0]}}
    });
    let r = run_prompt(&mut exec, raising, &events).unwrap();
    assert!(!r.success());
    assert_eq!(r.errors.len(), 1);
    let err = &r.errors[0];
    assert_eq!((err.node_id.as_str(), err.node_type.as_str()), ("2", "TestRaise"));
    assert_eq!(err.exception_type, "ValueError");
    assert_eq!(err.exception_message, "kaboom from python");
    assert!(err.traceback.iter().any(|l| l.contains("comfyrs_test_pack")), "{:?}", err.traceback);
    assert!(err.current_inputs["samples"][0].as_str().unwrap().contains("LATENT"), "{:?}", err.current_inputs);

    // sys.exit() inside a node is an error too, not the end of the process.
    let r = run_prompt(&mut exec, json!({"1": {"class_type": "TestExit", "inputs": {}}}), &events).unwrap();
    assert_eq!(r.errors[0].exception_type, "SystemExit");

    // An unknown node type.
    let unknown = json!({"1": {"class_type": "KSamplerr", "inputs": {}}});
    let rej = run_prompt(&mut exec, unknown, &events).expect_err("rejected");
    assert_eq!(rej.error.kind, "missing_node_type");
    let text = rej.render();
    assert!(text.contains("KSamplerr") && text.contains("'KSampler'"), "{text}");

    // A missing model file.
    let missing = txt2img("no-such-model.safetensors", 1);
    let rej = run_prompt(&mut exec, missing, &events).expect_err("rejected");
    let ne = &rej.node_errors["4"];
    assert_eq!(ne.class_type, "CheckpointLoaderSimple");
    assert_eq!(ne.errors[0].kind, "value_not_in_list");
    assert!(rej.render().contains("no-such-model.safetensors"), "{}", rej.render());

    // VALIDATE_INPUTS failing.
    let rej = run_prompt(&mut exec, json!({"1": {"class_type": "TestValidate", "inputs": {"value": -3}}}), &events).expect_err("rejected");
    assert_eq!(rej.node_errors["1"].errors[0].kind, "custom_validation_failed");
    assert!(rej.node_errors["1"].errors[0].details.contains("must be non-negative"));
    // A VALIDATE_INPUTS that raises, on an output node: ComfyUI's exception_during_validation.
    let rej = run_prompt(&mut exec, json!({"1": {"class_type": "TestValidate", "inputs": {"value": 13}}}), &events).expect_err("rejected");
    let e = &rej.node_errors["1"].errors[0];
    assert_eq!((e.kind.as_str(), e.message.as_str(), e.details.as_str()), ("exception_during_validation", "Exception when validating node", "13 cannot be checked"));
    assert_eq!(e.extra_info["exception_type"], "ValueError");
    // An input VALIDATE_INPUTS takes skips the built-in range and list checks (ComfyUI's
    // rule): 500 is over the declared max of 100 but the node's own check accepts it.
    let r = run_prompt(&mut exec, json!({"1": {"class_type": "TestValidate", "inputs": {"value": 500}}}), &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
    // So LoadImage's own check reports a missing file, with its message, not a list error
    // (and it is never called with None).
    let rej = run_prompt(&mut exec, json!({"1": {"class_type": "LoadImage", "inputs": {"image": "no-such-image.png"}}, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}), &events)
        .expect_err("rejected");
    let e = &rej.node_errors["1"].errors[0];
    assert_eq!(e.kind, "custom_validation_failed", "{}", rej.render());
    assert!(e.details.contains("Invalid image file") && e.details.contains("no-such-image.png"), "{}", rej.render());

    // A Python node returning an ExecutionBlocker: the output node using it does not run and
    // shows nothing; the prompt still succeeds.
    let blocked = json!({
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "TestBlocker", "inputs": {"samples": ["1", 0], "block": true, "message": ""}},
        "3": {"class_type": "TestLatentDigest", "inputs": {"samples": ["2", 0]}},
        "4": {"class_type": "TestLatentDigest", "inputs": {"samples": ["1", 0]}}
    });
    let r = run_prompt(&mut exec, blocked, &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
    assert!(!r.outputs.contains_key("3") && r.outputs.contains_key("4"), "{:?}", r.outputs);

    // An async VALIDATE_INPUTS is awaited: its message when it fails, nothing when it passes.
    let rej = run_prompt(&mut exec, json!({"1": {"class_type": "TestAsyncValidate", "inputs": {"value": -3}}}), &events).expect_err("rejected");
    assert_eq!(rej.node_errors["1"].errors[0].kind, "custom_validation_failed");
    assert!(rej.node_errors["1"].errors[0].details.contains("must be non-negative, asynchronously"), "{}", rej.render());

    // And the process is fine: a good prompt runs.
    let good = json!({
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "TestLatentDigest", "inputs": {"samples": ["1", 0]}},
        "4": {"class_type": "TestValidate", "inputs": {"value": 5}},
        "5": {"class_type": "TestAsyncValidate", "inputs": {"value": 5}}
    });
    let r = run_prompt(&mut exec, good, &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(r.outputs["3"]["shape"][0], json!([1, 4, 8, 8]));
}

#[test]
fn values_keep_their_types_both_ways() {
    let _lock = support::shared();
    let e = env();
    let events = Collect::new();
    let mut exec = new_exec();
    let p = json!({"1": {"class_type": "TestTypes", "inputs": {"i": 3, "f": 2.0, "s": "hi", "b": true}}});
    let r = run_prompt(&mut exec, p, &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(r.outputs["1"]["text"][0], "int,float,str,bool");
    assert_eq!(r.values["1"], vec![json!(["int,float,str,bool"]), json!([4]), json!([4.0]), json!([false])]);

    // Direct: a huge int (a seed) survives, returned values are native.
    let class = e.bridge.class("TestTypes").unwrap();
    let mut args = Args::default();
    args.insert("i", Value::Int(u64::MAX as i128 - 1));
    args.insert("f", Value::Float(0.25));
    args.insert("s", Value::String("x".into()));
    args.insert("b", Value::Bool(false));
    let prompt = json!({});
    let interrupt = comfyrs_runtime::interrupt::Interrupt::default();
    let ctx = comfyrs_runtime::node::ExecContext {
        prompt_id: "p",
        node_id: "7",
        call_index: 0,
        prompt: &prompt,
        extra_pnginfo: None,
        extra_data: None,
        output_dir: &e.output,
        events: &events,
        interrupt: &interrupt,
    };
    let out = class.execute(&ctx, &args).unwrap();
    assert_eq!(out.outputs[1], vec![Value::Int(u64::MAX as i128)]);
    assert_eq!(out.outputs[2], vec![Value::Float(0.5)]);
    assert_eq!(out.outputs[3], vec![Value::Bool(true)]);
}

#[test]
fn protocol_hidden_fingerprint_lazy_lists() {
    let _lock = support::shared();
    let events = Collect::new();
    let mut exec = new_exec();
    let p = json!({
        "h": {"class_type": "TestHidden", "inputs": {}},
        "c": {"class_type": "TestChanged", "inputs": {"always": true}},
        "k": {"class_type": "TestChanged", "inputs": {"always": false}},
        "a": {"class_type": "TestConst", "inputs": {"value": 11}},
        "b": {"class_type": "TestRaise", "inputs": {"samples": ["x", 0], "message": "b must not run"}},
        "x": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "l": {"class_type": "TestLazy", "inputs": {"use_a": true, "a": ["a", 0], "b": ["b", 0]}},
        "lo": {"class_type": "TestListOut", "inputs": {"n": 4}},
        "li": {"class_type": "TestListIn", "inputs": {"values": ["lo", 0]}}
    });
    let r1 = run_prompt(&mut exec, p.clone(), &events).unwrap();
    assert!(r1.success(), "{:?}", r1.errors);
    // Hidden inputs.
    assert_eq!(r1.outputs["h"]["unique_id"][0], "h");
    assert_eq!(r1.outputs["h"]["prompt_nodes"], json!(["a", "b", "c", "h", "k", "l", "li", "lo", "x"]));
    assert_eq!(r1.outputs["h"]["extra"][0], json!({"workflow": {"note": "comfyrs"}}));
    assert_eq!(r1.outputs["h"]["dyn_nodes"], r1.outputs["h"]["prompt_nodes"], "DYNPROMPT holds the prompt");
    assert_eq!(r1.outputs["h"]["auth"][0], "token-of-test");
    assert_eq!(r1.outputs["h"]["key"][0], "key-of-test");
    // IS_CHANGED gets the node's id.
    let by_id = env().bridge.class("TestChangedById").unwrap();
    let mut args = Args::default();
    args.insert("value", Value::Int(1));
    assert_eq!(by_id.fingerprint("n7", &args), Some(comfyrs_runtime::node::Fingerprint::Value(json!(["seen by n7"]))));
    // Lazy: only `a` was evaluated; the raising `b` never ran.
    assert_eq!(r1.outputs["l"]["value"][0], 11);
    assert_eq!(r1.outputs["l"]["b_none"][0], true);
    // Lists: OUTPUT_IS_LIST into INPUT_IS_LIST.
    assert_eq!(r1.outputs["li"]["sum"][0], 6);
    assert_eq!(r1.outputs["li"]["len"][0], 4);
    // IS_CHANGED: NaN re-runs, a constant fingerprint is cached.
    let r2 = run_prompt(&mut exec, p, &events).unwrap();
    assert!(r2.success(), "{:?}", r2.errors);
    let executed = r2.executed();
    assert!(executed.contains(&"c"), "{executed:?}");
    assert!(!executed.contains(&"k"), "{executed:?}");
}

#[test]
fn async_nodes_are_in_flight_together() {
    let _lock = support::shared();
    let events = Collect::new();
    let mut exec = new_exec();
    let (a, b) = (format!("a{}", std::process::id()), format!("b{}", std::process::id()));
    let p = json!({
        "1": {"class_type": "TestRendezvous", "inputs": {"name": a, "partner": b}},
        "2": {"class_type": "TestRendezvous", "inputs": {"name": b, "partner": a}},
    });
    let r = run_prompt(&mut exec, p, &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
    // Each waits for the other's signal: both meet only if both calls were running at once.
    // ComfyUI before its async executor (the embedded 2024 copy) runs them one after the other.
    if env().bridge.report().v3 {
        assert_eq!(r.outputs["1"]["met"][0], true, "{:?}", r.outputs);
        assert_eq!(r.outputs["2"]["met"][0], true, "{:?}", r.outputs);
    } else {
        assert_eq!(r.outputs.len(), 2, "{:?}", r.outputs);
    }
}

#[test]
fn failures_in_python_are_reported_not_swallowed() {
    let _lock = support::shared();
    let e = env();
    // A class whose schema cannot be read is skipped, with the class and the reason.
    let bad = e.bridge.report().schema_errors.iter().find(|s| s.class == "TestBadSchema").expect("TestBadSchema is reported");
    assert!(matches!(&bad.reason, comfyrs_bridge::RecordError::Raised(m) if m.contains("schema fails on purpose")), "{bad}");
    assert!(e.registry.get("TestBadSchema").is_none());
    // A failing IS_CHANGED: the node counts as changed (as in ComfyUI), and a warning names the
    // class and the exception.
    let class = e.bridge.class("TestChangedRaises").unwrap();
    let mut args = Args::default();
    args.insert("value", Value::Int(3));
    let (fp, warnings) = support::warnings_of(|| class.fingerprint("r", &args));
    assert_eq!(fp, Some(comfyrs_runtime::node::Fingerprint::Always));
    assert!(warnings.contains("TestChangedRaises") && warnings.contains("IS_CHANGED fails on purpose"), "{warnings}");
    // ... and it runs again on the next prompt.
    let events = Collect::new();
    let mut exec = new_exec();
    let p = json!({"r": {"class_type": "TestChangedRaises", "inputs": {"value": 3}}});
    for _ in 0..2 {
        let r = run_prompt(&mut exec, p.clone(), &events).unwrap();
        assert!(r.success(), "{:?}", r.errors);
        assert!(r.executed().contains(&"r"), "{:?}", r.executed());
    }
}

#[test]
fn progress_and_interrupt() {
    let _lock = support::exclusive();
    let events = Collect::new();
    let mut exec = new_exec();
    let r = run_prompt(&mut exec, json!({"p": {"class_type": "TestProgress", "inputs": {"steps": 3, "seconds": 0.0}}}), &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
    let got: Vec<(u64, u64)> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|ev| match ev {
            Event::Progress { node, value, max, .. } if node == "p" => Some((*value, *max)),
            _ => None,
        })
        .collect();
    // Every step in order; current ComfyUI throttles the steps between the first and the last
    // (its ProgressBar), the March 2024 one sends them all.
    assert_eq!(got.first(), Some(&(1, 3)), "{got:?}");
    assert_eq!(got.last(), Some(&(3, 3)), "{got:?}");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0) && got.iter().all(|&(_, max)| max == 3), "{got:?}");

    // Interrupt while a Python node runs: the node stops at its next progress step.
    let interrupt = exec.interrupt.clone();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        interrupt.set();
    });
    let t = std::time::Instant::now();
    let slow = json!({"p": {"class_type": "TestProgress", "inputs": {"steps": 200, "seconds": 0.05}}});
    let r = run_prompt(&mut exec, slow, &events).unwrap();
    setter.join().unwrap();
    assert!(r.interrupted, "{r:?}");
    assert!(t.elapsed().as_secs_f64() < 5.0, "interrupt took {:?}", t.elapsed());
    // The next prompt is fine.
    let r = run_prompt(&mut exec, json!({"p": {"class_type": "TestProgress", "inputs": {"steps": 2, "seconds": 0.0}}}), &events).unwrap();
    assert!(r.success(), "{:?}", r.errors);
}

#[test]
fn tensors_cross_without_copies() {
    let _lock = support::shared();
    use comfyrs_bridge::pyo3::prelude::*;
    let e = env();
    let events = Collect::new();
    let class = e.bridge.class("EmptyLatentImage").unwrap();
    let mut args = Args::default();
    args.insert("width", Value::Int(64));
    args.insert("height", Value::Int(32));
    args.insert("batch_size", Value::Int(2));
    let prompt = json!({});
    let interrupt = comfyrs_runtime::interrupt::Interrupt::default();
    let ctx = comfyrs_runtime::node::ExecContext {
        prompt_id: "p",
        node_id: "1",
        call_index: 0,
        prompt: &prompt,
        extra_pnginfo: None,
        extra_data: None,
        output_dir: &e.output,
        events: &events,
        interrupt: &interrupt,
    };
    let out = class.execute(&ctx, &args).unwrap();
    let latent = out.outputs[0][0].as_handle::<comfyrs_bridge::PyHandle>().expect("a Python handle");
    assert_eq!(latent.python_type(), "dict");
    assert_eq!(comfyrs_runtime::Opaque::type_name(latent), "LATENT");
    // The tensor's storage is counted, as a piece another value may hold too.
    let held: Vec<usize> = comfyrs_runtime::Opaque::shared_bytes(latent).iter().map(|s| s.bytes).collect();
    assert_eq!((comfyrs_runtime::Opaque::byte_size(latent), held), (0, vec![2 * 4 * 4 * 8 * 4]));
    // Python tensor -> tch: same storage.
    let (py_ptr, t) = Python::attach(|py| {
        let samples = latent.object().bind(py).get_item("samples").unwrap();
        let ptr: usize = samples.call_method0("data_ptr").unwrap().extract().unwrap();
        (ptr, comfyrs_bridge::py_to_tensor(&samples).unwrap().expect("a tensor"))
    });
    assert_eq!(t.size(), vec![2, 4, 4, 8]);
    assert_eq!(t.data_ptr() as usize, py_ptr);
    // tch -> Python: same storage, and a write on one side is seen on the other.
    let mine = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
    Python::attach(|py| {
        let obj = comfyrs_bridge::tensor_to_py(py, &mine).unwrap();
        let ptr: usize = obj.call_method0("data_ptr").unwrap().extract().unwrap();
        assert_eq!(ptr, mine.data_ptr() as usize);
        obj.call_method1("fill_", (2.5,)).unwrap();
    });
    assert_eq!(mine.double_value(&[1]), 2.5);
}

#[test]
fn bench_overhead() {
    let _lock = support::shared();
    let b = comfyrs_bridge::bench::run(&env().bridge, 2000).unwrap();
    eprintln!("{}", b.render());
    // The benchmark's wiring, not its timing (timings are `comfyrs bench bridge`'s, in
    // BENCHMARKS.md): every part of the overhead was measured.
    assert!(b.overhead > std::time::Duration::ZERO, "{}", b.render());
    assert!(b.render().contains("bridged call (median of 2000)"), "{}", b.render());
    assert!(b.render().contains("sizing a MODEL of 814 modules"), "{}", b.render());
    assert!([b.size_first, b.size_again, b.size_clone, b.size_plain].iter().all(|d| !d.is_zero()), "{}", b.render());
}

/// Under `memory.device` the embedded ComfyUI is shown a card of the limit's size
/// (docs/architecture.md, "Memory"): what `torch.cuda.mem_get_info` then reports, from the
/// device's own figures, the allocator's reserved memory and its cap. (The wrapper itself is
/// installed only on a GPU.)
#[test]
fn comfyui_is_shown_a_card_of_the_device_limits_size() {
    const GIB: i64 = 1 << 30;
    let (shown, fractions) = env()
        .bridge
        .with_python(|py| {
            use pyo3::types::PyAnyMethods;
            let host = py.import("comfyrs_host").unwrap();
            let capped = host.getattr("capped_mem_info").unwrap();
            // (free, total, reserved, limit, fraction of the total the allocator may reserve)
            let cases: [(i64, i64, i64, i64, Option<f64>); 5] = [
                (20 * GIB, 24 * GIB, 3 * GIB, 12 * GIB, Some(0.5)),
                (20 * GIB, 24 * GIB, 3 * GIB, 12 * GIB, None),
                (20 * GIB, 24 * GIB, 13 * GIB, 12 * GIB, Some(0.5)),
                (2 * GIB, 24 * GIB, 3 * GIB, 12 * GIB, Some(0.5)),
                (20 * GIB, 24 * GIB, 3 * GIB, 30 * GIB, None),
            ];
            let shown: Vec<(i64, i64)> = cases.iter().map(|c| capped.call1(*c).unwrap().extract().unwrap()).collect();
            let fraction = host.getattr("allocator_fraction").unwrap();
            let environ = |pairs: &[(&str, &str)]| {
                let d = pyo3::types::PyDict::new(py);
                for (k, v) in pairs {
                    pyo3::types::PyDictMethods::set_item(&d, k, v).unwrap();
                }
                fraction.call1((d,)).unwrap().extract::<Option<f64>>().unwrap()
            };
            let fractions = [
                environ(&[("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True,per_process_memory_fraction:0.081560")]),
                environ(&[("PYTORCH_ALLOC_CONF", "per_process_memory_fraction:0.5")]),
                // Where both say, the CUDA one wins, as in libtorch.
                environ(&[("PYTORCH_ALLOC_CONF", "per_process_memory_fraction:0.5"), ("PYTORCH_CUDA_ALLOC_CONF", "per_process_memory_fraction:0.25")]),
                environ(&[("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")]),
            ];
            (shown, fractions)
        })
        .unwrap();
    assert_eq!(
        shown,
        [
            (9 * GIB, 12 * GIB),  // the cap (half of 24 GiB) less what is reserved
            (9 * GIB, 12 * GIB),  // no cap in the settings: the limit is the cap
            (0, 12 * GIB),        // reserved past the cap
            (2 * GIB, 12 * GIB),  // never more than the device has free
            (20 * GIB, 24 * GIB), // a limit past the device's size changes nothing
        ]
    );
    assert_eq!(fractions, [Some(0.08156), Some(0.5), Some(0.25), None]);
}

/// Before ComfyUI offloads a model to make room on the device (a model load, a VAE decode), its
/// free_memory asks the handler comfyrs registered for what is missing, then runs as before
/// with the same arguments; with enough free memory, or off the GPU, nothing is asked.
#[test]
fn comfyui_asks_comfyrs_for_device_memory_before_it_offloads_a_model() {
    use std::sync::{Arc, Mutex};
    let bridge = &env().bridge;
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    bridge
        .on_device_pressure(move |bytes| {
            seen.lock().unwrap().push(bytes);
            bytes / 2
        })
        .expect("handler installed");
    let checked: Result<(), String> = bridge
        .with_python(|py| {
            use pyo3::types::PyAnyMethods;
            let code = std::ffi::CString::new(
                r#"
def check():
    import sys, types, torch
    import comfy.model_management as real
    host = sys.modules["comfyrs_host"]
    assert getattr(real.free_memory, "_comfyrs_yields", False), "ComfyUI's own free_memory is wrapped"
    calls = []
    def free_memory(required, device, *args, **kwargs):
        calls.append((required, str(device), args, kwargs))
        return ["unloaded"]
    mm = types.SimpleNamespace(free_memory=free_memory, get_free_memory=lambda dev=None, torch_free_too=False: 3 << 30)
    host._yield_device_first(mm)
    host._yield_device_first(mm)  # once only
    gpu = torch.device("cuda", 0)
    assert mm.free_memory(5 << 30, gpu, keep_loaded=["m"]) == ["unloaded"]
    mm.free_memory(2 << 30, gpu)
    mm.free_memory(5 << 30, torch.device("cpu"))
    assert calls == [(5 << 30, "cuda:0", (), {"keep_loaded": ["m"]}), (2 << 30, "cuda:0", (), {}), (5 << 30, "cpu", (), {})], calls
    # Handing a merged weight over when the device stays full: room asked for, the copy tried
    # again, then the weight kept in host memory in the model's dtype instead of failing.
    class Full:
        tries = 0
        def to(self, device=None, dtype=None, non_blocking=False):
            Full.tries += 1
            if device is not None:
                raise torch.OutOfMemoryError("comfyrs test: the device is full")
            return ("host", dtype)
    like = torch.zeros(2, dtype=torch.float16)
    room = {}
    assert host._moved(Full(), like, [torch.zeros(4)], None, room) == ("host", torch.float16)
    assert Full.tries == 3 and room == {"asked": True}, (Full.tries, room)
    # Room is asked for once per hand-over: the next weight tries the device once and stays.
    assert host._moved(Full(), like, [torch.zeros(2)], None, room) == ("host", torch.float16)
    assert Full.tries == 5, Full.tries
    # Merged weights go where the model's weights are, or to the GPU ComfyUI loads it to when it
    # has not loaded it yet; a model that loads to the CPU keeps them there.
    gpu_model = types.SimpleNamespace(load_device=gpu)
    on = lambda device: types.SimpleNamespace(device=torch.device(device))
    assert host._placement(gpu_model, on("cpu")) == gpu
    assert host._placement(gpu_model, on("cuda:0")) == torch.device("cuda:0")
    assert host._placement(types.SimpleNamespace(load_device=torch.device("cpu")), on("cpu")) == torch.device("cpu")
    assert host._placement(types.SimpleNamespace(), on("cpu")) == torch.device("cpu")
    # A model with weights left in host memory is no longer wholly loaded for ComfyUI, so its
    # next load places every module again instead of skipping the load.
    unet = types.SimpleNamespace(model_lowvram=False, model_loaded_weight_memory=5 << 30)
    host._not_loaded(types.SimpleNamespace(model=unet), 2 << 30)
    assert (unet.model_lowvram, unet.model_loaded_weight_memory) == (True, 3 << 30)
    host._not_loaded(types.SimpleNamespace(model=unet), 9 << 30)
    assert unet.model_loaded_weight_memory == 0
    # A merge asking for room keeps loaded what it reads: the origin's patcher and its clones
    # (one module), not other models, and nothing for an origin that is not a MODEL.
    def patcher(module):
        return types.SimpleNamespace(model=module, model_state_dict=lambda: {})
    unet, other_unet = types.SimpleNamespace(diffusion_model=1), types.SimpleNamespace(diffusion_model=2)
    origin = patcher(unet)
    loaded = [types.SimpleNamespace(model=p) for p in (patcher(other_unet), patcher(unet), origin)]
    loaded.append(types.SimpleNamespace(model=None))  # a model ComfyUI let go of
    mm = types.SimpleNamespace(current_loaded_models=loaded)
    assert [id(m) for m in host.in_use(mm, origin)] == [id(loaded[1]), id(loaded[2])]
    assert host.in_use(mm, None) == [] and host.in_use(mm, 42) == []
    # make_room asks ComfyUI's free_memory for that much more, keeping those loaded.
    free = [10 << 30]
    asked = []
    def free_memory(required, device, keep_loaded=()):
        asked.append((required, [id(m) for m in keep_loaded]))
        free[0] = required
    mm.free_memory = free_memory
    mm.get_free_memory = lambda device=None: free[0]
    assert host._make_room(mm, gpu, 1 << 30, origin) == 1 << 30
    assert asked == [(11 << 30, [id(loaded[1]), id(loaded[2])])], asked
    # A merge sizing its chunks asks ComfyUI's models alone: its own free_memory, not the
    # wrapper that has the caches give first; a merge out of memory goes through the wrapper.
    through_wrapper = []
    def wrapper(required, device, keep_loaded=()):
        through_wrapper.append(required)
        free_memory(required, device, keep_loaded)
    wrapper.__wrapped__ = free_memory
    mm.free_memory = wrapper
    asked.clear()
    assert host._make_room(mm, gpu, 1 << 30, origin, caches=False) == 1 << 30
    assert through_wrapper == [] and asked == [(12 << 30, [id(loaded[1]), id(loaded[2])])], (through_wrapper, asked)
    assert host._make_room(mm, gpu, 1 << 30, origin) == 1 << 30
    assert through_wrapper == [13 << 30], through_wrapper
    # Without a GPU ComfyUI has no device memory to tell of.
    assert not torch.cuda.is_available() and host.device_free(0) is None
    # Fragments of blocks that live tensors share count half for a merge's chunks.
    assert host._usable(5 << 30, {"inactive_split_bytes.all.current": 2 << 30}) == 4 << 30
    assert host._usable(5 << 30, {}) == 5 << 30 and host._usable(1 << 30, {"inactive_split_bytes.all.current": 4 << 30}) == 0
"#,
            )
            .unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"device_yield_check.py", c"device_yield_check").map_err(|e| e.to_string())?;
            m.getattr("check").and_then(|f| f.call0()).map(drop).map_err(|e| e.to_string())
        })
        .unwrap();
    checked.unwrap();
    assert_eq!(*asked.lock().unwrap(), vec![2u64 << 30], "asked once, for the 2 GiB missing");
    // The other way (a merge out of device memory asking ComfyUI to offload): nothing to free
    // without a GPU, and no error.
    assert_eq!(comfyrs_bridge::model::make_room(None, 1 << 30), 0);
    assert_eq!(comfyrs_bridge::model::unload_idle(None, 1 << 30), 0);
    assert_eq!(comfyrs_bridge::model::device_free(tch::Device::Cpu), None);
    assert_eq!(comfyrs_bridge::model::device_free(tch::Device::Cuda(0)), None, "no GPU here");
}
