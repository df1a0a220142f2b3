//! The binary's engine gives the embedded ComfyUI its way to ask the WIDEN caches for device
//! memory (docs/architecture.md, "Memory"): ComfyUI's `free_memory` is wrapped, and the handler
//! it calls first is the engine's. The bridge's own tests install a handler of their own; this
//! one fails if the binary stops installing the engine's.
#![cfg(feature = "python")]

mod common;

use std::path::Path;

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
        log.lines().any(|l| l.contains("ComfyUI needed 0.00 GiB more") && l.contains("the WIDEN caches gave back 0.00 GiB")),
        "the engine's handler did not answer:\n{log}"
    );
}
