//! The MODEL handoff against a real ComfyUI on CPU: the WIDEN pack (native) merging a LoRA into
//! a ComfyUI MODEL from CheckpointLoaderSimple, the merged MODEL sampled by ComfyUI's KSampler.
//! One interpreter per test binary: the tests share the bridge started by `env()`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value as Json};

use comfyrs_nodes::models::ModelFolders;
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::executor::{Executor, RunOptions, RunReport};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use comfyrs_runtime::Value;

mod support;

use support::{Collect, Env};

const LORA: &str = comfyrs_testkit::sd15::TINY_SD15_LORA;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    support::env(&ENV, "bridge-handoff-tests", |registry, models, bridge| {
        comfyrs_testkit::sd15::ensure_tiny_sd15_lora(models).expect("tiny SD1.5 LoRA");
        comfyrs_core::register(registry);
        let engine = comfyrs_nodes::pack::MergeEngine::standalone(comfyrs_nodes::pack::MergeSettings::default()).expect("merge engine");
        comfyrs_nodes::pack::register(registry, ModelFolders::new(models), engine.clone());
        // What src/engine.rs does once the bridge has started.
        bridge.add_model_extractor(comfyrs_nodes::pack::native_model_weights);
        engine.set_foreign_models(Arc::new(comfyrs_nodes::pack::ForeignFns {
            state_dict: comfyrs_bridge::model::state_dict,
            prepare: comfyrs_bridge::model::prepare,
            with_weights: comfyrs_bridge::model::with_weights,
            make_room: comfyrs_bridge::model::make_room,
            unload_idle: comfyrs_bridge::model::unload_idle,
            device_free: comfyrs_bridge::model::device_free,
        }));
    })
}

/// The Python object a bridge value stands for (a ComfyUI MODEL's patcher).
fn py_object<'py>(py: pyo3::Python<'py>, v: &Value) -> pyo3::Bound<'py, pyo3::PyAny> {
    let Value::Handle(h) = v else { panic!("not a Python handle: {v:?}") };
    h.as_any().downcast_ref::<comfyrs_bridge::PyHandle>().expect("a Python handle").object().bind(py).clone()
}

fn run_prompt(exec: &mut Executor, prompt: Json) -> RunReport {
    let e = env();
    let events = Collect::new();
    let prompt = Prompt::from_json(&prompt).expect("prompt shape");
    let v = validate(prompt, &e.registry, None).unwrap_or_else(|r| panic!("{}", r.render()));
    exec.run(
        &v,
        &RunOptions { prompt_id: "handoff".into(), extra_pnginfo: None, output_dir: e.output.clone(), events: &events, extra_data: None, registry: Some(&e.registry) },
    )
}

fn widen_txt2img(ckpt: &str, t_factor: f64, seed: u64) -> Json {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "20": {"class_type": "WIDENEntry", "inputs": {"model": ["4", 0]}},
        "21": {"class_type": "WIDENLoRA", "inputs": {"lora_name": LORA, "strength": 1.0}},
        "22": {"class_type": "WIDENMerge", "inputs": {"base": ["20", 0], "target": ["21", 0], "t_factor": t_factor}},
        "23": {"class_type": "WIDENExit", "inputs": {"widen": ["22", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["23", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "widen", "images": ["8", 0]}},
        "10": {"class_type": "TestLatentDigest", "inputs": {"samples": ["3", 0]}}
    })
}

/// Files a test writes into the shared scratch folder: removed when it is made and dropped.
struct RemovedOnDrop(Vec<PathBuf>);

impl RemovedOnDrop {
    fn new(files: Vec<PathBuf>) -> RemovedOnDrop {
        let r = RemovedOnDrop(files);
        r.remove();
        r
    }

    fn remove(&self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        self.remove();
    }
}

fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort();
    v.into_iter().map(String::from).collect()
}

fn ids(v: &[&str]) -> Vec<String> {
    sorted(v.to_vec())
}

fn png(report: &RunReport) -> PathBuf {
    let e = env();
    let images = report.outputs["9"]["images"].as_array().unwrap_or_else(|| panic!("{:?}", report.outputs));
    let file = e.output.join(images[0]["subfolder"].as_str().unwrap()).join(images[0]["filename"].as_str().unwrap());
    let bytes = std::fs::read(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    assert_eq!(&bytes[1..4], b"PNG");
    file
}

fn digest(report: &RunReport) -> String {
    report.outputs["10"]["digest"][0].as_str().unwrap().to_string()
}

/// A ComfyUI MODEL (a ModelPatcher) loaded from `path` by ComfyUI's checkpoint loader, its
/// diffusion parameters cast to the torch dtype `cast` when given.
fn comfyui_model(path: &Path, cast: Option<&'static str>) -> Value {
    let bridge = &env().bridge;
    let path = path.to_string_lossy().into_owned();
    bridge
        .with_python(move |py| -> Result<Value, String> {
            use pyo3::types::PyAnyMethods;
            let code = std::ffi::CString::new(
                "def load(path, dtype):\n    import torch, comfy.sd\n    m = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]\n    if dtype is not None:\n        for prm in m.model.diffusion_model.parameters():\n            prm.data = prm.data.to(getattr(torch, dtype))\n    return m\n",
            )
            .unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"handoff_load.py", c"handoff_load").map_err(|e| e.to_string())?;
            let obj = m.getattr("load").and_then(|f| f.call1((path, cast))).map_err(|e| e.to_string())?;
            bridge.object_value(py, &obj, "MODEL").map_err(|e| e.to_string())
        })
        .unwrap()
        .unwrap()
}

#[test]
fn widen_on_a_comfyui_model_samples_and_reexecutes_only_what_changed() {
    let _lock = support::shared();
    let e = env();
    let mut exec = Executor::new(CacheMode::Lru, 8 << 30);
    let t = std::time::Instant::now();
    let r1 = run_prompt(&mut exec, widen_txt2img(&e.ckpt, 1.0, 42));
    assert!(r1.success(), "{:?}", r1.errors);
    eprintln!("first run {:?}: {:?}", t.elapsed(), r1.outputs.get("23"));
    let widen = &r1.outputs["23"]["widen"][0];
    assert!(widen["keys"].as_u64().unwrap_or(0) >= comfyrs_testkit::sd15::TINY_SD15_LORA_MODULES.len() as u64, "{widen}");
    // Installing the merged weights in a clone of ComfyUI's MODEL is timed as a phase of its own,
    // and counts in the Exit's time.
    let handover = widen["phases"]["handover"].as_f64().unwrap_or(0.0);
    assert!(handover > 0.0 && handover <= widen["seconds"].as_f64().unwrap_or(0.0), "{widen}");
    png(&r1);

    // Only t_factor changed: Merge, Exit and what is below them.
    let r2 = run_prompt(&mut exec, widen_txt2img(&e.ckpt, 0.5, 42));
    assert!(r2.success(), "{:?}", r2.errors);
    assert_eq!(sorted(r2.executed()), ids(&["22", "23", "3", "8", "9", "10"]));
    png(&r2);

    // Only the seed changed: KSampler and below.
    let r3 = run_prompt(&mut exec, widen_txt2img(&e.ckpt, 0.5, 7));
    assert!(r3.success(), "{:?}", r3.errors);
    assert_eq!(sorted(r3.executed()), ids(&["3", "8", "9", "10"]));
    png(&r3);
    eprintln!("three runs in {:?}", t.elapsed());

    // The merge reaches the sampler: another t_factor, another latent; the unmerged model,
    // another latent again.
    assert_ne!(digest(&r1), digest(&r2), "t_factor changed the merged model");
    let mut plain = widen_txt2img(&e.ckpt, 0.5, 7);
    let p = plain.as_object_mut().unwrap();
    for id in ["20", "21", "22", "23"] {
        p.remove(id);
    }
    p["3"]["inputs"]["model"] = json!(["4", 0]);
    let r4 = run_prompt(&mut exec, plain);
    assert!(r4.success(), "{:?}", r4.errors);
    assert_eq!(sorted(r4.executed()), ids(&["3", "8", "9", "10"]));
    assert_ne!(digest(&r3), digest(&r4), "the merged model samples differently from the base");
}

/// Saving a merge whose base is a ComfyUI MODEL writes every weight of that model (the merged
/// ones and the untouched ones, read from the model itself), not only what the merge changed.
#[test]
fn saving_a_merge_of_a_comfyui_model_writes_every_weight() {
    let _lock = support::shared();
    let e = env();
    let mut exec = Executor::new(CacheMode::Lru, 8 << 30);
    let name = format!("from_comfyui_{}.safetensors", std::process::id());
    let mut p = widen_txt2img(&e.ckpt, 1.0, 42);
    p["23"]["inputs"]["save_model"] = json!(true);
    p["23"]["inputs"]["model_name"] = json!(name);
    let r = run_prompt(&mut exec, p.clone());
    assert!(r.success(), "{:?}", r.errors);
    let saved = e.models.join("checkpoints").join(&name);
    assert_eq!(r.outputs["23"]["widen"][0]["reused_saved_file"], json!(false), "{:?}", r.outputs["23"]);
    // The same recipe from a freshly loaded MODEL (a fresh executor, so the Exit runs again):
    // the saved file is reused (the base's identity comes from its weights, not the object),
    // and the MODEL it hands back samples as the merge did.
    let again = run_prompt(&mut Executor::new(CacheMode::Lru, 8 << 30), p.clone());
    assert!(again.success(), "{:?}", again.errors);
    assert_eq!(again.outputs["23"]["widen"][0]["reused_saved_file"], json!(true), "{:?}", again.outputs["23"]);
    assert_eq!(digest(&again), digest(&r), "the reused merge samples as the computed one");
    // Another LoRA strength: another recipe, computed and saved over the file.
    p["21"]["inputs"]["strength"] = json!(0.5);
    let other = run_prompt(&mut Executor::new(CacheMode::Lru, 8 << 30), p);
    assert!(other.success(), "{:?}", other.errors);
    assert_eq!(other.outputs["23"]["widen"][0]["reused_saved_file"], json!(false), "{:?}", other.outputs["23"]);
    assert_ne!(digest(&other), digest(&r));
    let bytes = std::fs::read(&saved).unwrap_or_else(|err| panic!("{}: {err}", saved.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let saved_keys: Vec<&String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").collect();
    // The model's own weights, as the Entry reads them.
    let bridge = &e.bridge;
    let path = e.models.join("checkpoints").join(&e.ckpt).to_string_lossy().into_owned();
    let model = comfyui_model(Path::new(&path), None);
    let (_, weights, _, _) = comfyrs_bridge::model::state_dict(&model).expect("a ModelPatcher").unwrap();
    // ComfyUI's own checkpoint loader reads the saved file.
    let file = saved.to_string_lossy().into_owned();
    let loaded: bool = bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let code = std::ffi::CString::new("def load(path):\n    import comfy.sd\n    return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0] is not None\n").unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"handoff_reload.py", c"handoff_reload").unwrap();
            m.getattr("load").unwrap().call1((file,)).unwrap().extract::<bool>().unwrap()
        })
        .unwrap();
    assert!(loaded, "ComfyUI loads the saved merge");
    std::fs::remove_file(&saved).ok();
    assert_eq!(saved_keys.len(), weights.len(), "every weight of the model is saved: {} of {}", saved_keys.len(), weights.len());
    let untouched = "diffusion_model.time_embed.0.weight";
    assert!(weights.contains_key(untouched));
    assert!(saved_keys.iter().any(|k| k.ends_with(untouched)), "{untouched} (not merged) is saved: {:?}", &saved_keys[..5]);
}

/// The handoff itself: Entry's tensors are the module's parameters (same storage), the Exit's
/// MODEL is a clone whose parameter replacements are the merged tensors (same storage), and
/// sampling with it sees the merged weights while the base model's own weights stay untouched.
#[test]
fn handoff_shares_storage_both_ways() {
    let _lock = support::shared();
    let e = env();
    let path = e.models.join("checkpoints").join(&e.ckpt).to_string_lossy().into_owned();
    let model = comfyui_model(Path::new(&path), None);
    let (kind, weights, id1, name) = comfyrs_bridge::model::state_dict(&model).expect("a ModelPatcher").unwrap();
    assert_eq!(kind, "MODEL");
    assert!(name.starts_with("ModelPatcher"), "{name}");
    let key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let w = weights.get(key).unwrap_or_else(|| panic!("{key} missing: {:?}", weights.keys().take(5).collect::<Vec<_>>()));
    assert!(weights.keys().all(|k| k.starts_with("diffusion_model.")));
    assert_eq!(comfyrs_nodes::arch::detect_base_arch(weights.keys().map(|k| k.as_str())), Some(comfyrs_nodes::arch::Arch::Sdxl));
    let (_, _, id2, _) = comfyrs_bridge::model::state_dict(&model).unwrap().unwrap();
    assert_eq!(id1, id2, "same model, same identity");

    let ptrs = |v: &Value, k: &str| -> HashMap<&'static str, i64> {
        let k = k.to_string();
        let v = v.clone();
        e.bridge
            .with_python(move |py| {
                use pyo3::types::PyAnyMethods;
                let obj = py_object(py, &v);
                let param = obj.getattr("model").unwrap().call_method0("state_dict").unwrap().get_item(&k).unwrap();
                let mut m = HashMap::new();
                m.insert("param", param.call_method0("data_ptr").unwrap().extract::<i64>().unwrap());
                if let Ok(p) = obj.getattr("object_patches").and_then(|p| p.get_item(&k)) {
                    // A parameter replacing the module's own.
                    m.insert("patch", p.call_method0("data_ptr").unwrap().extract::<i64>().unwrap());
                } else if let Ok(p) = obj.getattr("patches").and_then(|p| p.get_item(&k)) {
                    // [(strength_patch, ("set", (t,)) or (t,), strength_model)]
                    let v = p.get_item(-1).unwrap().get_item(1).unwrap();
                    let t = if v.len().unwrap() == 2 { v.get_item(1).unwrap().get_item(0).unwrap() } else { v.get_item(0).unwrap() };
                    m.insert("patch", t.call_method0("data_ptr").unwrap().extract::<i64>().unwrap());
                }
                m
            })
            .unwrap()
    };
    assert_eq!(ptrs(&model, key)["param"], w.data_ptr() as i64, "Entry's tensor is the parameter itself");

    let merged_t = (w * 2.0f64).contiguous();
    let mut merged = indexmap::IndexMap::new();
    merged.insert(key.to_string(), merged_t.shallow_clone());
    let out = comfyrs_bridge::model::with_weights(&model, &merged).unwrap();
    let p = ptrs(&out, key);
    assert_eq!(p["patch"], merged_t.data_ptr() as i64, "the patch is the merged tensor itself");
    assert_eq!(p["param"], w.data_ptr() as i64, "the clone shares the base module");
    // The clone counts what it holds of its own, the merged tensor, not the module it shares with
    // the MODEL it came from (counted there already), and nothing on a device here.
    let (Value::Handle(origin), Value::Handle(clone)) = (&model, &out) else { panic!("handles") };
    let own = merged_t.numel() * merged_t.kind().elt_size_in_bytes();
    assert_eq!((clone.byte_size(), clone.device_byte_size()), (own, 0));
    // The module is a piece the origin and the clone both hold: the cache counts it once.
    let module: usize = origin.shared_bytes().iter().map(|s| s.bytes).sum();
    assert!(module > 10 * own, "the origin holds its whole module: {module}");
    assert_eq!(clone.shared_bytes(), origin.shared_bytes());
    let cached = |v: &Value| comfyrs_runtime::cache::NodeResult::new(vec![vec![v.clone()]], None);
    let mut cache = comfyrs_runtime::cache::OutputCache::new(comfyrs_runtime::cache::CacheMode::Lru, usize::MAX);
    cache.insert(comfyrs_runtime::signature::Signature([1; 32]), std::sync::Arc::new(cached(&model)));
    let with_origin = cache.stats().bytes;
    cache.insert(comfyrs_runtime::signature::Signature([2; 32]), std::sync::Arc::new(cached(&out)));
    assert_eq!(cache.stats().bytes - with_origin, cached(&out).bytes, "the clone adds only its own bytes");

    // ComfyUI applies the patch: the patched weight equals the merged tensor.
    let k2 = key.to_string();
    let out2 = out.clone();
    let diff: f64 = e
        .bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let obj = py_object(py, &out2);
            let code = std::ffi::CString::new(
                "def check(m, k):\n    import torch\n    base = m.model.state_dict()[k].clone()\n    m.patch_model()\n    got = m.model.state_dict()[k].clone()\n    m.unpatch_model()\n    after = m.model.state_dict()[k]\n    assert torch.equal(after, base), 'unpatch restored the base'\n    return float((got - 2 * base).abs().max())\n",
            )
            .unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"handoff_check.py", c"handoff_check").unwrap();
            m.getattr("check").unwrap().call1((obj, k2)).unwrap().extract::<f64>().unwrap()
        })
        .unwrap();
    assert!(diff < 1e-6, "patched weight differs from the merged tensor by {diff}");
}

/// A ComfyUI MODEL of the fixture checkpoint and an Exit's clone of it with one key merged (the
/// key's weight doubled).
fn merged_clone() -> (Value, Value) {
    let e = env();
    let path = e.models.join("checkpoints").join(&e.ckpt).to_string_lossy().into_owned();
    let model = comfyui_model(Path::new(&path), None);
    let (_, weights, _, _) = comfyrs_bridge::model::state_dict(&model).unwrap().unwrap();
    let key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let mut merged = indexmap::IndexMap::new();
    merged.insert(key.to_string(), (weights[key].shallow_clone() * 2.0f64).contiguous());
    let out = comfyrs_bridge::model::with_weights(&model, &merged).unwrap();
    (model, out)
}

/// A merged clone that Rust lets go of (the outputs cache giving an old merge back because
/// ComfyUI needs the device) is gone as soon as the last handle drops, its merged weights with
/// it: no reference cycle waits for Python's collector while ComfyUI is short of memory.
#[test]
fn a_merged_clone_that_rust_lets_go_of_is_freed_at_once() {
    let _lock = support::shared();
    let e = env();
    let (model, out) = merged_clone();
    let code = std::ffi::CString::new(
        "import gc, weakref\nREFS = []\ndef watch(m):\n    gc.disable()\n    REFS[:] = [weakref.ref(m)]\ndef alive():\n    gc.enable()\n    return [r() is not None for r in REFS]\n",
    )
    .unwrap();
    let probe = e
        .bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let m = pyo3::types::PyModule::from_code(py, &code, c"clone_watch.py", c"clone_watch").unwrap();
            let obj = py_object(py, &out);
            m.getattr("watch").unwrap().call1((obj,)).unwrap();
            // The last handle drops here, with the collector off.
            drop(out);
            m.unbind()
        })
        .unwrap();
    let alive: Vec<bool> = e
        .bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            probe.bind(py).getattr("alive").unwrap().call0().unwrap().extract().unwrap()
        })
        .unwrap();
    assert_eq!(alive, vec![false], "the merged clone outlived its last handle (a reference cycle keeps it for the collector)");
    // The model it was cloned from lives on.
    assert!(comfyrs_bridge::model::state_dict(&model).unwrap().is_ok());
}

/// Merged weights the hand-over had to leave in host memory mark the model as not wholly loaded,
/// so that ComfyUI's next load of it places every module again (on the device, or cast per use).
/// Unmarked, ComfyUI skips the load of a model it loaded whole before: that is how a 12 GiB
/// loop sampled with a weight in host memory. (ComfyUIs without partial loads have nothing to
/// skip.)
#[test]
fn weights_left_in_host_memory_make_comfyui_place_the_model_again() {
    let _lock = support::shared();
    let e = env();
    let (_model, out) = merged_clone();
    let code = std::ffi::CString::new(
        r#"
import sys
def check(m):
    import comfy.model_management as mm
    model = m.model
    if not hasattr(m, "partially_load") or not hasattr(model, "model_loaded_weight_memory"):
        return None
    mm.load_models_gpu([m])
    whole = model.model_loaded_weight_memory
    # Unmarked: ComfyUI takes the model for loaded and does nothing.
    model.model_loaded_weight_memory = whole // 2
    mm.load_models_gpu([m])
    skipped = model.model_loaded_weight_memory
    model.model_loaded_weight_memory = whole
    # Marked as the hand-over marks it: ComfyUI loads it again, whole.
    sys.modules["comfyrs_host"]._not_loaded(m, whole // 2)
    mm.load_models_gpu([m])
    return (whole, skipped, model.model_loaded_weight_memory, model.model_lowvram)
"#,
    )
    .unwrap();
    let seen: Option<(u64, u64, u64, bool)> = e
        .bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let m = pyo3::types::PyModule::from_code(py, &code, c"not_loaded_check.py", c"not_loaded_check").unwrap();
            let obj = py_object(py, &out);
            m.getattr("check").unwrap().call1((obj,)).unwrap().extract().unwrap()
        })
        .unwrap();
    let Some((whole, skipped, after, lowvram)) = seen else { return };
    assert!(whole > 0, "ComfyUI loaded the model");
    assert_eq!(skipped, whole / 2, "unmarked, ComfyUI skips the load");
    assert_eq!((after, lowvram), (whole, false), "marked, ComfyUI loads the whole model again");
}

/// A merged clone ComfyUI has loaded for sampling and not unloaded leaves its weights in the
/// module both share; the Entry still reads the base model's own weights (and identity) from
/// the base, and the merged weights (another identity) from the clone.
#[test]
fn the_entry_reads_the_base_while_a_merged_clone_is_applied() {
    let _lock = support::shared();
    let e = env();
    let path = e.models.join("checkpoints").join(&e.ckpt).to_string_lossy().into_owned();
    let model = comfyui_model(Path::new(&path), None);
    let key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let (_, weights, base_id, _) = comfyrs_bridge::model::state_dict(&model).unwrap().unwrap();
    let base = weights[key].copy();
    let mut merged = indexmap::IndexMap::new();
    merged.insert(key.to_string(), (&base * 2.0f64).contiguous());
    let out = comfyrs_bridge::model::with_weights(&model, &merged).unwrap();
    let applied = out.clone();
    e.bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let obj = py_object(py, &applied);
            obj.call_method0("patch_model").unwrap();
        })
        .unwrap();
    let (_, seen, id, _) = comfyrs_bridge::model::state_dict(&model).unwrap().unwrap();
    assert!(seen[key].equal(&base), "the base's weights, not the applied clone's");
    assert_eq!(id, base_id, "the base keeps its identity");
    let (_, seen, clone_id, _) = comfyrs_bridge::model::state_dict(&out).unwrap().unwrap();
    assert!(seen[key].equal(&merged[key]), "the clone's weights are the merged ones");
    assert_ne!(clone_id, base_id, "the merged clone is another model");
    let untouched = "diffusion_model.time_embed.0.weight";
    assert!(seen[untouched].equal(&weights[untouched]), "keys the merge left keep the base's weights");
    e.bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let obj = py_object(py, &out);
            obj.call_method0("unpatch_model").unwrap();
        })
        .unwrap();
}

/// A MODEL stored in fp16, bf16 or fp8 (as ComfyUI loads one with a weight dtype): WIDEN's Entry
/// reads the parameters themselves in that dtype (no full-precision copy), and a merged weight
/// handed back in that dtype is what ComfyUI's patching installs, exactly (doubling is exact).
#[test]
fn handoff_keeps_low_precision_storage() {
    let _lock = support::shared();
    let e = env();
    let path = e.models.join("checkpoints").join(&e.ckpt).to_string_lossy().into_owned();
    let key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    for (dtype, kind) in [("float16", tch::Kind::Half), ("bfloat16", tch::Kind::BFloat16), ("float8_e4m3fn", tch::Kind::Float8e4m3fn)] {
        let bridge = &e.bridge;
        let model = comfyui_model(Path::new(&path), Some(dtype));
        let (_, weights, _, _) = comfyrs_bridge::model::state_dict(&model).expect("a ModelPatcher").unwrap();
        let w = &weights[key];
        assert_eq!(w.kind(), kind, "{dtype}: Entry sees the stored dtype");
        let k = key.to_string();
        let m2 = model.clone();
        let param_ptr: i64 = bridge
            .with_python(move |py| {
                use pyo3::types::PyAnyMethods;
                let obj = py_object(py, &m2);
                obj.getattr("model").unwrap().call_method0("state_dict").unwrap().get_item(&k).unwrap().call_method0("data_ptr").unwrap().extract::<i64>().unwrap()
            })
            .unwrap();
        assert_eq!(param_ptr, w.data_ptr() as i64, "{dtype}: Entry's tensor is the parameter itself, not a copy");

        let merged_t = (w.to_kind(tch::Kind::Float) * 2.0f64).to_kind(kind).contiguous();
        let mut merged = indexmap::IndexMap::new();
        merged.insert(key.to_string(), merged_t.shallow_clone());
        let out = comfyrs_bridge::model::with_weights(&model, &merged).unwrap();
        let k2 = key.to_string();
        let (same_dtype, diff): (bool, f64) = bridge
            .with_python(move |py| {
                use pyo3::types::PyAnyMethods;
                let obj = py_object(py, &out);
                let code = std::ffi::CString::new(
                    "def check(m, k):\n    import torch\n    base = m.model.state_dict()[k].clone()\n    m.patch_model()\n    got = m.model.state_dict()[k].clone()\n    m.unpatch_model()\n    return got.dtype == base.dtype, float((got.float() - 2 * base.float()).abs().max())\n",
                )
                .unwrap();
                let m = pyo3::types::PyModule::from_code(py, &code, c"handoff_dtype_check.py", c"handoff_dtype_check").unwrap();
                m.getattr("check").unwrap().call1((obj, k2)).unwrap().extract::<(bool, f64)>().unwrap()
            })
            .unwrap();
        assert!(same_dtype, "{dtype}: the patched weight keeps its dtype");
        assert_eq!(diff, 0.0, "{dtype}: the patched weight is the merged tensor");
    }
}

/// A native MODEL (WIDENBaseInput, memory-mapped) given to KSampler becomes a ComfyUI MODEL
/// through ComfyUI's own state-dict loader, and samples like the checkpoint loader's MODEL.
#[test]
fn native_model_feeds_a_python_sampler() {
    let _lock = support::shared();
    let e = env();
    let mut exec = Executor::new(CacheMode::Lru, 8 << 30);
    let mut plain = widen_txt2img(&e.ckpt, 1.0, 5);
    let p = plain.as_object_mut().unwrap();
    for id in ["20", "21", "22", "23"] {
        p.remove(id);
    }
    p["3"]["inputs"]["model"] = json!(["4", 0]);
    p["9"]["inputs"]["filename_prefix"] = json!("native");
    let reference = run_prompt(&mut exec, plain.clone());
    assert!(reference.success(), "{:?}", reference.errors);
    let p = plain.as_object_mut().unwrap();
    p.insert("30".into(), json!({"class_type": "WIDENBaseInput", "inputs": {"model_name": e.ckpt}}));
    p["3"]["inputs"]["model"] = json!(["30", 1]);
    let r = run_prompt(&mut exec, plain.clone());
    assert!(r.success(), "{:?}", r.errors);
    png(&r);
    assert_eq!(digest(&r), digest(&reference), "the native MODEL samples as ComfyUI's own");
    // Same weights again (seed changed): the ComfyUI MODEL is built once.
    p_seed(&mut plain, 6);
    let r2 = run_prompt(&mut exec, plain);
    assert!(r2.success(), "{:?}", r2.errors);
}

fn p_seed(prompt: &mut Json, seed: u64) {
    prompt["3"]["inputs"]["seed"] = json!(seed);
}

/// The test SDXL CLIP's weights (TestSDXLCLIP, seed 1) as a file in ComfyUI's own key layout, in
/// the dtypes the CLIP holds them in, under `checkpoints`; and a small kohya-named LoRA on both
/// text encoders under `loras`. Written once per scratch folder and, for the checkpoint, per
/// ComfyUI source (the files that decide the CLIP's dtypes, not the checkout's path): the scratch
/// folder outlives a run, and ComfyUI versions hold some of those weights in other dtypes (a file
/// one wrote would not be the CLIP another makes). A checkpoint of another source unused for a day
/// is removed when a new one is written. Returns (checkpoint, LoRA) names.
fn sdxl_clip_files() -> (String, &'static str) {
    const LORA: &str = "comfyrs-test-sdxl-clip-lora-v1.safetensors";
    let e = env();
    let ckpt_dir = e.models.join("checkpoints").to_string_lossy().into_owned();
    let lora = e.models.join("loras").join(LORA).to_string_lossy().into_owned();
    let ckpt = e
        .bridge
        .with_python(move |py| {
            use pyo3::types::PyAnyMethods;
            let code = std::ffi::CString::new(
                r#"
def write(ckpt_dir, lora):
    import hashlib, os, time, torch, nodes, safetensors.torch
    comfyui = os.path.dirname(os.path.abspath(nodes.__file__))
    h = hashlib.sha1()
    for source in ("nodes.py", "comfy/model_management.py", "comfy/sd1_clip.py", "comfy/sdxl_clip.py"):
        with open(os.path.join(comfyui, source), "rb") as f:
            h.update(f.read())
    prefix = "comfyrs-test-sdxl-clip-v1-"
    name = prefix + h.hexdigest()[:10] + ".safetensors"
    ckpt = os.path.join(ckpt_dir, name)
    # One file per ComfyUI source, wherever it is checked out; the others of that prefix are
    # older sources' (1.6 GB each: left alone they filled the disk of a machine whose clones move).
    if not os.path.exists(ckpt) and os.path.isdir(ckpt_dir):
        for old in os.listdir(ckpt_dir):
            if old.startswith(prefix) and os.path.getmtime(os.path.join(ckpt_dir, old)) < time.time() - 86400:
                os.remove(os.path.join(ckpt_dir, old))
    def save(sd, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        safetensors.torch.save_file(sd, path + ".tmp")
        os.replace(path + ".tmp", path)
    if not os.path.exists(ckpt):
        clip = nodes.NODE_CLASS_MAPPINGS["TestSDXLCLIP"]().run(1)[0]
        sd = clip.cond_stage_model.state_dict()
        save({k: v.contiguous() for k, v in sd.items() if k.startswith(("clip_l.", "clip_g.")) and v.is_floating_point()}, ckpt)
    if not os.path.exists(lora):
        g = torch.Generator().manual_seed(7)
        sd = {}
        for module, out, inp in (("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
                                 ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280),
                                 ("lora_te2_text_model_encoder_layers_1_mlp_fc1", 5120, 1280)):
            rank = 4
            sd[module + ".lora_down.weight"] = (torch.rand(rank, inp, generator=g) - 0.5) * 0.2
            sd[module + ".lora_up.weight"] = (torch.rand(out, rank, generator=g) - 0.5) * 0.2
            sd[module + ".alpha"] = torch.tensor(float(rank))
        save(sd, lora)
    return name
"#,
            )
            .unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"clip_files.py", c"clip_files").unwrap();
            m.getattr("write").unwrap().call1((ckpt_dir, lora)).unwrap().extract::<String>().unwrap()
        })
        .unwrap();
    (ckpt, LORA)
}

/// A ComfyUI CLIP made by the test pack's TestSDXLCLIP node.
fn comfyui_clip(seed: u64) -> Value {
    let bridge = &env().bridge;
    bridge
        .with_python(move |py| -> Result<Value, String> {
            use pyo3::types::PyAnyMethods;
            let nodes = py.import("nodes").map_err(|e| e.to_string())?;
            let class = nodes.getattr("NODE_CLASS_MAPPINGS").and_then(|m| m.get_item("TestSDXLCLIP")).map_err(|e| e.to_string())?;
            let clip = class.call0().and_then(|n| n.call_method1("run", (seed,))).and_then(|r| r.get_item(0)).map_err(|e| e.to_string())?;
            bridge.object_value(py, &clip, "CLIP").map_err(|e| e.to_string())
        })
        .unwrap()
        .unwrap()
}

/// The CLIP handoff itself: Entry's tensors are the text encoders' parameters (same storage, both
/// encoders, nothing else), and the Exit's CLIP is a clone whose patches hold the merged tensors.
#[test]
fn clip_handoff_shares_storage_both_ways() {
    let _lock = support::shared();
    let e = env();
    let clip = comfyui_clip(3);
    let (kind, weights, _, name) = comfyrs_bridge::model::state_dict(&clip).expect("a CLIP").unwrap();
    assert_eq!(kind, "CLIP", "{name}");
    assert!(weights.keys().all(|k| k.starts_with("clip_l.") || k.starts_with("clip_g.")), "{:?}", weights.keys().take(5).collect::<Vec<_>>());
    assert_eq!(comfyrs_nodes::arch::detect_clip_arch(weights.keys().map(|k| k.as_str())), Some(comfyrs_nodes::arch::Arch::SdxlClip));
    let key = "clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let w = &weights[key];
    assert_eq!(w.size(), [1280, 1280]);

    let ptrs = |v: &Value, k: &str| -> HashMap<&'static str, i64> {
        let k = k.to_string();
        let v = v.clone();
        e.bridge
            .with_python(move |py| {
                use pyo3::types::PyAnyMethods;
                let obj = py_object(py, &v);
                let param = obj.getattr("cond_stage_model").unwrap().call_method0("state_dict").unwrap().get_item(&k).unwrap();
                let mut m = HashMap::new();
                m.insert("param", param.call_method0("data_ptr").unwrap().extract::<i64>().unwrap());
                if let Ok(p) = obj.getattr("patcher").and_then(|p| p.getattr("patches")).and_then(|p| p.get_item(&k)) {
                    let v = p.get_item(-1).unwrap().get_item(1).unwrap();
                    let t = if v.len().unwrap() == 2 { v.get_item(1).unwrap().get_item(0).unwrap() } else { v.get_item(0).unwrap() };
                    m.insert("patch", t.call_method0("data_ptr").unwrap().extract::<i64>().unwrap());
                }
                m
            })
            .unwrap()
    };
    assert_eq!(ptrs(&clip, key)["param"], w.data_ptr() as i64, "Entry's tensor is the parameter itself");

    let merged_t = (w * 2.0f64).contiguous();
    let mut merged = indexmap::IndexMap::new();
    merged.insert(key.to_string(), merged_t.shallow_clone());
    let out = comfyrs_bridge::model::with_weights(&clip, &merged).unwrap();
    let Value::Handle(h) = &out else { panic!("{out:?}") };
    assert_eq!(h.type_name(), "CLIP");
    let p = ptrs(&out, key);
    assert_eq!(p["patch"], merged_t.data_ptr() as i64, "the patch is the merged tensor itself");
    assert_eq!(p["param"], w.data_ptr() as i64, "the clone shares the base text encoders");
}

fn clip_merge_prompt(ckpt: &str, lora: &str, t_factor: f64) -> Json {
    let encode = |clip: Json| json!({"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": clip}});
    let digest = |cond: &str| json!({"class_type": "TestCondDigest", "inputs": {"conditioning": [cond, 0]}});
    json!({
        // A ComfyUI CLIP, merged: Entry → Merge → Exit → CLIPTextEncode.
        "1": {"class_type": "TestSDXLCLIP", "inputs": {"seed": 1}},
        "2": {"class_type": "WIDENCLIPEntry", "inputs": {"clip": ["1", 0]}},
        "3": {"class_type": "WIDENCLIPLoRA", "inputs": {"lora_name": lora, "strength": 1.0}},
        "4": {"class_type": "WIDENCLIPMerge", "inputs": {"base": ["2", 0], "target": ["3", 0], "t_factor": t_factor}},
        "5": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["4", 0]}},
        "6": encode(json!(["5", 0])), "7": digest("6"),
        // The same CLIP unmerged.
        "8": encode(json!(["1", 0])), "9": digest("8"),
        // Its weights from a file, as a native CLIP: unmerged, and merged the same way.
        "10": {"class_type": "WIDENCLIPBaseInput", "inputs": {"ckpt_name": ckpt}},
        "11": encode(json!(["10", 1])), "12": digest("11"),
        "13": {"class_type": "WIDENCLIPMerge", "inputs": {"base": ["10", 0], "target": ["3", 0], "t_factor": t_factor}},
        "14": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["13", 0]}},
        "15": encode(json!(["14", 0])), "16": digest("15")
    })
}

/// CLIP merges hand back a CLIP that ComfyUI's CLIPTextEncode uses, both from a ComfyUI CLIP
/// (a clone with the merged weights as patches) and from a native one (built by ComfyUI's text
/// encoder loader): the same merge encodes the same, and a native CLIP encodes as the ComfyUI
/// CLIP it was saved from.
#[test]
fn clip_merges_hand_back_a_clip() {
    let _lock = support::shared();
    let (ckpt, lora) = sdxl_clip_files();
    let mut exec = Executor::new(CacheMode::Lru, 16 << 30);
    let d = |r: &RunReport, id: &str| r.outputs[id]["digest"][0].as_str().unwrap_or_else(|| panic!("{id}: {:?}", r.outputs.get(id))).to_string();
    let r1 = run_prompt(&mut exec, clip_merge_prompt(&ckpt, lora, 1.0));
    assert!(r1.success(), "{:?}", r1.errors);
    let widen = &r1.outputs["5"]["widen"][0];
    assert_eq!(widen["keys"].as_u64(), Some(3), "{widen}");
    assert_eq!(d(&r1, "12"), d(&r1, "9"), "a native CLIP encodes as the ComfyUI CLIP its weights came from");
    assert_ne!(d(&r1, "7"), d(&r1, "9"), "the merged CLIP encodes differently");
    assert_eq!(d(&r1, "7"), d(&r1, "16"), "merging the ComfyUI CLIP and the native one agree");

    // Only t_factor changed: the merges, their Exits and what encodes with them.
    let r2 = run_prompt(&mut exec, clip_merge_prompt(&ckpt, lora, 0.5));
    assert!(r2.success(), "{:?}", r2.errors);
    assert_eq!(sorted(r2.executed()), ids(&["4", "5", "6", "7", "13", "14", "15", "16"]));
    assert_ne!(d(&r2, "7"), d(&r1, "7"));
    assert_eq!(d(&r2, "7"), d(&r2, "16"));
}

/// A ComfyUI CLIP other than SDXL's (the tiny SD1.5 checkpoint's: CLIP-L alone) is refused by
/// the CLIP Entry with the reference's message.
#[test]
fn clip_entry_refuses_a_clip_that_is_not_sdxl() {
    let _lock = support::shared();
    let e = env();
    let mut exec = Executor::new(CacheMode::Lru, 8 << 30);
    let r = run_prompt(
        &mut exec,
        json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": e.ckpt}},
            "2": {"class_type": "WIDENCLIPEntry", "inputs": {"clip": ["4", 1]}},
            "3": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["2", 0]}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["3", 0]}},
            "7": {"class_type": "TestCondDigest", "inputs": {"conditioning": ["6", 0]}}
        }),
    );
    assert!(!r.success());
    let msg = format!("{:?}", r.errors);
    assert!(msg.contains("Only SDXL CLIP merging is supported in v1. Detected CLIP architecture is not SDXL"), "{msg}");
}

/// A native CLIP merge saved by the CLIP Exit is a pair of text encoder files that ComfyUI's
/// DualCLIPLoader (type sdxl) loads from its text encoder folder: every weight of the loaded encoders is
/// the saved one (but `logit_scale`, which that loader leaves as it is), every saved one has its
/// place, and the loaded CLIP encodes as the Exit's CLIP.
#[test]
fn saved_clip_loads_in_comfyuis_dual_clip_loader() {
    let _lock = support::shared();
    let e = env();
    let (ckpt, lora) = sdxl_clip_files();
    const NAME: &str = "comfyrs-test-saved-clip";
    const FOREIGN: &str = "comfyrs-test-saved-comfyui-clip";
    // The folder every ComfyUI reads text encoders from (one from before the `text_encoders`
    // name reads only this one), alone, so that the Exit saves there.
    let te = e.models.join("clip");
    let saved: Vec<PathBuf> = [e.models.join("text_encoders"), te.clone()]
        .iter()
        .flat_map(|dir| [(NAME, "clip_l"), (NAME, "clip_g"), (FOREIGN, "clip_l"), (FOREIGN, "clip_g")].map(|(name, enc)| dir.join(format!("{name}_{enc}.safetensors"))))
        .collect();
    // The scratch folder outlives the run, and the two saved pairs are 3 GB: gone before the
    // test (a run that stopped half way) and after it, pass or fail.
    let _cleanup = RemovedOnDrop::new(saved);
    let _ = std::fs::remove_dir(e.models.join("text_encoders"));
    std::fs::create_dir_all(&te).unwrap();
    let mut exec = Executor::new(CacheMode::Lru, 16 << 30);
    let r = run_prompt(
        &mut exec,
        json!({
            "10": {"class_type": "WIDENCLIPBaseInput", "inputs": {"ckpt_name": ckpt}},
            "3": {"class_type": "WIDENCLIPLoRA", "inputs": {"lora_name": lora, "strength": 1.0}},
            "13": {"class_type": "WIDENCLIPMerge", "inputs": {"base": ["10", 0], "target": ["3", 0], "t_factor": 1.0}},
            "14": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["13", 0], "save_model": true, "model_name": NAME}},
            "15": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["14", 0]}},
            "16": {"class_type": "TestCondDigest", "inputs": {"conditioning": ["15", 0]}},
            // The ComfyUI CLIP those weights came from, merged and saved the same way.
            "1": {"class_type": "TestSDXLCLIP", "inputs": {"seed": 1}},
            "2": {"class_type": "WIDENCLIPEntry", "inputs": {"clip": ["1", 0]}},
            "4": {"class_type": "WIDENCLIPMerge", "inputs": {"base": ["2", 0], "target": ["3", 0], "t_factor": 1.0}},
            "5": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["4", 0], "save_model": true, "model_name": FOREIGN}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["5", 0]}},
            "7": {"class_type": "TestCondDigest", "inputs": {"conditioning": ["6", 0]}}
        }),
    );
    assert!(r.success(), "{:?}", r.errors);
    let widen = &r.outputs["14"]["widen"][0];
    assert_eq!(widen["keys"].as_u64(), Some(3), "{widen}");
    assert_eq!(widen["saved"].as_array().map(Vec::len), Some(2), "{widen}");
    // A ComfyUI CLIP has no file: its weights are saved from the CLIP itself, the same as the
    // native CLIP's (another base, so another recipe hash).
    for enc in ["clip_l", "clip_g"] {
        let open = |name: &str| comfyrs_nodes::models::MappedFile::open(te.join(format!("{name}_{enc}.safetensors"))).unwrap();
        let (native, foreign) = (open(NAME), open(FOREIGN));
        assert_eq!(sorted(native.tensors().keys().map(String::as_str).collect()), sorted(foreign.tensors().keys().map(String::as_str).collect()), "{enc}");
        for k in native.tensors().keys() {
            assert_eq!(native.bytes(k).unwrap(), foreign.bytes(k).unwrap(), "{enc}: {k}");
        }
        let hash = |f: &comfyrs_nodes::models::MappedFile| f.metadata().unwrap()["__ecaj_recipe_hash__"].clone();
        assert_ne!(hash(&native), hash(&foreign));
    }
    let merged_digest = r.outputs["16"]["digest"][0].as_str().unwrap().to_string();
    assert_eq!(r.outputs["7"]["digest"][0].as_str(), Some(merged_digest.as_str()));
    let (l, g) = (format!("{NAME}_clip_l.safetensors"), format!("{NAME}_clip_g.safetensors"));
    let (pl, pg) = (te.join(&l).to_string_lossy().into_owned(), te.join(&g).to_string_lossy().into_owned());
    let (problems, digest) = e
        .bridge
        .with_python(move |py| -> (Vec<String>, String) {
            use pyo3::types::PyAnyMethods;
            let code = std::ffi::CString::new(
                r#"
def check(l, g, pl, pg):
    import inspect, torch, nodes, safetensors.torch
    loader = nodes.NODE_CLASS_MAPPINGS["DualCLIPLoader"]()
    # ComfyUI before its dual loader took a `type` loaded SDXL's pair only.
    sdxl = ("sdxl",) if "type" in inspect.signature(loader.load_clip).parameters else ()
    # As ComfyUI runs its nodes (older versions build the CLIP with in-place operations).
    with torch.inference_mode():
        clip = loader.load_clip(l, g, *sdxl)[0]
    sd = {k: v for k, v in clip.cond_stage_model.state_dict().items() if v.is_floating_point()}
    problems, used = [], set()
    for enc, path in (("clip_l.", pl), ("clip_g.", pg)):
        for k, v in safetensors.torch.load_file(path).items():
            assert not k.startswith(("clip_", "transformer.")), k
            name = next((n for n in (enc + "transformer." + k, enc + k) if n in sd), None)
            if name is None:
                problems.append("saved but not loaded: " + enc + k)
                continue
            used.add(name)
            # The loader reads a file into the encoder's transformer; logit_scale sits beside it
            # (kept at the loader's own value, not used to encode).
            if k == "logit_scale":
                continue
            if not torch.equal(sd[name].float(), v.float()):
                problems.append("differs: " + name)
    problems += ["loaded but not saved: " + k for k in sorted(set(sd) - used)]
    with torch.inference_mode():
        cond = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, "a red fox in the snow")[0]
    digest = nodes.NODE_CLASS_MAPPINGS["TestCondDigest"]().run(cond)["ui"]["digest"][0]
    return problems, digest
"#,
            )
            .unwrap();
            let m = pyo3::types::PyModule::from_code(py, &code, c"dual_clip.py", c"dual_clip").unwrap();
            m.getattr("check").unwrap().call1((l, g, pl, pg)).unwrap().extract().unwrap()
        })
        .unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(digest, merged_digest, "the loaded pair encodes as the Exit's CLIP");
}
