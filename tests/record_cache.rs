//! The record cache (docs/architecture.md, "The record cache"): a second `validate` or
//! `convert` of a workflow with Python nodes reads their schemas from the cache and starts no
//! Python; editing a custom node invalidates it; `comfyrs serve` with a fresh cache answers
//! `/object_info` before the embedded ComfyUI is up, and runs prompts once it is.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::{bin, Serve};
use serde_json::{json, Value as Json};

/// What the binary logs at `-v` when it starts the embedded ComfyUI.
const STARTS_PYTHON: &str = "starting the embedded ComfyUI";
const FROM_CACHE: &str = "from the record cache";

const PACK: &str = r#"
class RecordCacheProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, text):
        return {"ui": {"text": [text + "!"]}, "result": (text + "!",)}

NODE_CLASS_MAPPINGS = {"RecordCacheProbe": RecordCacheProbe}
"#;

/// A folder of custom nodes with one pack (its own folder, so its cache file is this test's).
fn custom_nodes(dir: &Path) -> PathBuf {
    let nodes = dir.join("custom_nodes");
    std::fs::create_dir_all(nodes.join("record_cache_probe")).unwrap();
    std::fs::write(nodes.join("record_cache_probe").join("__init__.py"), PACK).unwrap();
    nodes
}

fn workflow(dir: &Path) -> PathBuf {
    let p = dir.join("probe.json");
    let doc = json!({"1": {"class_type": "RecordCacheProbe", "inputs": {"text": "fox"}}});
    std::fs::write(&p, doc.to_string()).unwrap();
    p
}

/// The same node twice in a UI workflow (converting it needs the class's schema: its widget
/// values become inputs; an unconnected node of an unknown type would only be skipped).
fn ui_workflow(dir: &Path) -> PathBuf {
    let p = dir.join("probe_ui.json");
    let doc = json!({
        "last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "RecordCacheProbe", "pos": [0, 0], "size": [200, 60], "flags": {}, "order": 0, "mode": 0, "properties": {},
             "inputs": [], "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}], "widgets_values": ["fox"]},
            {"id": 2, "type": "RecordCacheProbe", "pos": [300, 0], "size": [200, 60], "flags": {}, "order": 1, "mode": 0, "properties": {},
             "inputs": [{"name": "text", "type": "STRING", "link": 1, "widget": {"name": "text"}}],
             "outputs": [{"name": "STRING", "type": "STRING", "links": null}], "widgets_values": ["unused"]}
        ],
        "links": [[1, 1, 0, 2, 0, "STRING"]]
    });
    std::fs::write(&p, doc.to_string()).unwrap();
    p
}

fn comfyrs(args: &[&str], nodes: &Path, file: &Path) -> (Output, String) {
    let out = bin().arg("-v").args(args).arg("--custom-nodes").arg(nodes).arg(file).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "comfyrs {args:?} failed:\n{}\n{log}", String::from_utf8_lossy(&out.stdout));
    (out, log)
}

/// The cache file a run wrote (named in its debug log), removed when the test ends.
struct CacheFile(Option<PathBuf>);

impl CacheFile {
    fn from_log(log: &str) -> CacheFile {
        CacheFile(log.lines().find_map(|l| l.split("wrote the record cache ").nth(1)).map(|p| PathBuf::from(p.trim())))
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn a_fresh_record_cache_validates_and_converts_without_python_and_an_edited_custom_node_invalidates_it() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = custom_nodes(dir.path());
    let file = workflow(dir.path());

    let (_, cold) = comfyrs(&["validate"], &nodes, &file);
    let cache = CacheFile::from_log(&cold);
    assert!(cache.0.as_ref().is_some_and(|p| p.is_file()), "the first run wrote no record cache:\n{cold}");
    assert!(cold.contains(STARTS_PYTHON), "{cold}");

    let ui = ui_workflow(dir.path());
    for (command, file) in [("validate", &file), ("convert", &ui)] {
        let (out, warm) = comfyrs(&[command], &nodes, file);
        assert!(warm.contains(FROM_CACHE), "{command} did not read the record cache:\n{warm}");
        assert!(!warm.contains(STARTS_PYTHON), "{command} started Python although the cache is fresh:\n{warm}");
        // ComfyUI prints its device at start; nothing of it may appear.
        assert!(!warm.contains("Device:"), "{warm}");
        let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
        match command {
            "validate" => assert_eq!(doc["outputs"], json!(["1"]), "{doc}"),
            _ => {
                assert_eq!(doc["1"]["inputs"]["text"], "fox", "{doc}");
                assert_eq!(doc["2"]["inputs"]["text"], json!(["1", 0]), "{doc}");
            }
        }
    }

    // An edited custom node (a newer mtime) makes the cache stale: Python starts and the cache
    // is written again.
    let py = nodes.join("record_cache_probe").join("__init__.py");
    let f = std::fs::File::options().append(true).open(&py).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(f);
    let (_, stale) = comfyrs(&["validate"], &nodes, &file);
    assert!(stale.contains(STARTS_PYTHON) && !stale.contains(FROM_CACHE), "an edited custom node did not invalidate the cache:\n{stale}");
    let (_, again) = comfyrs(&["validate"], &nodes, &file);
    assert!(again.contains(FROM_CACHE) && !again.contains(STARTS_PYTHON), "the cache was not rewritten:\n{again}");

    // A native-only workflow neither reads the cache nor starts Python.
    let native = common::repo().join("workflows").join("strings.json");
    let (_, plain) = comfyrs(&["validate"], &nodes, &native);
    assert!(!plain.contains("record cache") && !plain.contains(STARTS_PYTHON), "{plain}");

    // A corrupt file is ignored and replaced, never an error.
    std::fs::write(cache.0.as_ref().unwrap(), "{not json").unwrap();
    let (_, corrupt) = comfyrs(&["validate"], &nodes, &file);
    assert!(corrupt.contains(STARTS_PYTHON), "{corrupt}");
    let (_, replaced) = comfyrs(&["validate"], &nodes, &file);
    assert!(replaced.contains(FROM_CACHE), "{replaced}");
}

#[test]
fn serve_with_a_fresh_record_cache_lists_python_nodes_before_python_is_up_and_runs_them_after() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = custom_nodes(dir.path());
    let state = dir.path().join("state");
    let args: Vec<std::ffi::OsString> = vec!["-v".into(), "--state-dir".into(), state.clone().into_os_string(), "--custom-nodes".into(), nodes.into_os_string()];

    // Cold: Python starts before the server listens (and writes the cache).
    let cold = Serve::spawn(&args);
    let log = cold.log();
    let _cache = CacheFile::from_log(&log);
    assert!(log.contains("wrote the record cache"), "{log}");
    drop(cold);

    let server = Serve::spawn(&args);
    let (status, info) = server.get("/object_info/RecordCacheProbe");
    assert_eq!(status, 200);
    assert_eq!(info["RecordCacheProbe"]["output_node"], true, "{info}");
    let (_, all) = server.get("/object_info");
    assert!(all.get("RecordCacheProbe").is_some() && all.get("KSampler").is_some(), "Python classes missing from /object_info");

    // Queued at once; it runs once Python is up.
    let (status, reply) = server.post("/prompt", &json!({"prompt": {"1": {"class_type": "RecordCacheProbe", "inputs": {"text": "fox"}}}}));
    assert_eq!(status, 200, "{reply}");
    let id = reply["prompt_id"].as_str().unwrap().to_string();
    let entry = server.wait_for("the prompt's history entry", Duration::from_secs(240), || {
        let (_, h) = server.get(&format!("/history/{id}"));
        h.get(&id).filter(|e| e["status"]["completed"].as_bool().is_some()).cloned()
    });
    assert_eq!(entry["outputs"]["1"]["text"], json!(["fox!"]), "{entry}");

    // The server listened before the embedded ComfyUI was ready (the order of its log lines).
    let log = server.log();
    let listening = log.find("listening on http://").expect("listening line");
    let ready = log.find("ComfyUI nodes ready in").unwrap_or_else(|| panic!("no ready line:\n{log}"));
    assert!(listening < ready, "the server listened only after Python was ready:\n{log}");
    assert!(log.contains(FROM_CACHE), "{log}");
}
