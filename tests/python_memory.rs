//! The embedded ComfyUI's memory as the binary's engine deals with it (docs/architecture.md,
//! "Memory"): the outputs cache counts a model's weights once however many clones of it the
//! workflow makes, and ComfyUI asks the engine's memory (earlier results, then the WIDEN caches)
//! for device memory before it offloads a model (the bridge's own tests install a handler of
//! their own; this one fails if the binary stops installing the engine's).
#![cfg(feature = "python")]

mod common;

use std::path::{Path, PathBuf};

use common::bin;
use serde_json::{json, Value as Json};

/// A custom node that reports whether ComfyUI's `free_memory` is wrapped and what the handler
/// the binary installed gives back when asked for `nbytes`.
const PACK: &str = r#"
import sys

class DeviceYieldProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nbytes": ("INT", {"default": 1048576, "min": 0, "max": 2**40})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, nbytes):
        import comfy.model_management as mm
        handler = sys.modules["comfyrs_host"].STATE.get("device_yield")
        wrapped = bool(getattr(mm.free_memory, "_comfyrs_yields", False))
        given = "none" if handler is None else str(handler(nbytes))
        text = f"wrapped={wrapped} given={given}"
        return {"ui": {"text": [text]}, "result": (text,)}

NODE_CLASS_MAPPINGS = {"DeviceYieldProbe": DeviceYieldProbe}
"#;

fn probe(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let nodes = dir.join("custom_nodes");
    std::fs::create_dir_all(nodes.join("device_yield_probe")).unwrap();
    std::fs::write(nodes.join("device_yield_probe").join("__init__.py"), PACK).unwrap();
    let file = dir.join("probe.json");
    std::fs::write(&file, json!({"1": {"class_type": "DeviceYieldProbe", "inputs": {"nbytes": 3 << 20}}}).to_string()).unwrap();
    (nodes, file)
}

#[test]
fn comfyui_asks_the_engines_caches_before_it_offloads_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, file) = probe(dir.path());
    let out = bin()
        .env("COMFYRS_NO_RECORD_CACHE", "1")
        .args(["-v", "run", "--json", "--custom-nodes"])
        .arg(&nodes)
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "comfyrs run failed:\n{log}");
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    // On the CPU the caches hold no device memory: they are asked and give nothing.
    assert_eq!(doc["files"][0]["outputs"]["1"]["text"], json!(["wrapped=True given=0"]), "{doc}");
    // The handler is the engine's: its log line names the request.
    assert!(
        log.lines().any(|l| l.contains("ComfyUI needed 0.00 GiB more") && l.contains("earlier results gave back 0.00 GiB and the WIDEN caches 0.00 GiB")),
        "the engine's handler did not answer:\n{log}"
    );
}

/// The repository's ComfyUI example without its merge: checkpoint → sampler → image, and, with
/// `lora`, ComfyUI's LoraLoader between the checkpoint and the sampler and text encoders.
fn txt2img(dir: &Path, lora: bool) -> PathBuf {
    let text = std::fs::read_to_string(common::repo().join("workflows/comfyui_sd15_widen_ksampler.json")).unwrap();
    let mut doc: Json = serde_json::from_str(&text).unwrap();
    let nodes = doc.as_object_mut().unwrap();
    for id in ["20", "21", "22", "23"] {
        assert_eq!(nodes.remove(id).unwrap()["class_type"].as_str().unwrap().get(..5), Some("WIDEN"));
    }
    // The node the sampler and the text encoders take their MODEL and CLIP from.
    let from = if lora { "30" } else { "4" };
    if lora {
        nodes.insert(
            "30".into(),
            json!({"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                "lora_name": "tiny_sd15_attn_lora.safetensors", "strength_model": 0.8, "strength_clip": 0.5}}),
        );
    }
    nodes["3"]["inputs"]["model"] = json!([from, 0]);
    nodes["6"]["inputs"]["clip"] = json!([from, 1]);
    nodes["7"]["inputs"]["clip"] = json!([from, 1]);
    let p = dir.join(if lora { "lora.json" } else { "plain.json" });
    std::fs::write(&p, doc.to_string()).unwrap();
    p
}

/// The outputs cache's bytes after `comfyrs run FILE` on the fixture models.
fn cached_bytes(dir: &Path, file: &Path) -> u64 {
    let out = bin()
        .env("COMFYRS_NO_RECORD_CACHE", "1")
        .args(["run", "--json", "--models-dir"])
        .arg(dir.join("models"))
        .arg("--output-dir")
        .arg(dir.join("out"))
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "comfyrs run {} failed:\n{}", file.display(), String::from_utf8_lossy(&out.stderr));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["files"][0]["success"], true, "{doc}");
    doc["files"][0]["cache"]["bytes"].as_u64().unwrap_or_else(|| panic!("no cache bytes: {doc}"))
}

#[test]
fn a_loras_clone_of_a_model_adds_its_own_tensors_to_the_cache_not_the_model_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["fixtures", "-q", "--models-dir"]).arg(dir.path().join("models")).output().unwrap();
    assert!(out.status.success(), "comfyrs fixtures failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint = std::fs::metadata(dir.path().join("models/checkpoints/comfyrs-tiny-sd15-v2.safetensors")).unwrap().len();
    let lora_file = std::fs::metadata(dir.path().join("models/loras/tiny_sd15_attn_lora.safetensors")).unwrap().len();

    let plain = cached_bytes(dir.path(), &txt2img(dir.path(), false));
    // The checkpoint's MODEL, CLIP and VAE are counted (at least the file's weights).
    assert!(plain >= checkpoint * 9 / 10, "the cache holds {plain} bytes for a {checkpoint}-byte checkpoint");
    // LoraLoader's MODEL and CLIP are clones holding the same modules, plus the LoRA's tensors:
    // counted as the LoRA, not as a second copy of the checkpoint (as it was before).
    let with_lora = cached_bytes(dir.path(), &txt2img(dir.path(), true));
    let added = with_lora.saturating_sub(plain);
    assert!(added > 0 && added < 4 * lora_file + (64 << 10), "the LoRA's clones added {added} bytes (LoRA file: {lora_file} bytes)");
}
