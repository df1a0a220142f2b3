//! End-to-end tests of the `comfyrs` binary: real files, real process, real exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value as Json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_comfyrs"))
}

fn repo() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn write(dir: &Path, name: &str, doc: &Json) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    p
}

fn run_json(args: &[&str]) -> (Output, Json) {
    let out = bin().args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("--json output is not JSON ({e}):\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    (out, doc)
}

/// a → concat(a, "-b") → concat(_, "-c") → preview;  x → preview (independent branch)
fn chain() -> Json {
    json!({
        "1": { "class_type": "PrimitiveString", "inputs": { "value": "a" } },
        "2": { "class_type": "StringConcatenate", "inputs": { "string_a": ["1", 0], "string_b": "-b", "delimiter": "" } },
        "3": { "class_type": "StringConcatenate", "inputs": { "string_a": ["2", 0], "string_b": "-c", "delimiter": "" } },
        "4": { "class_type": "PreviewAny", "inputs": { "source": ["3", 0] } },
        "5": { "class_type": "PrimitiveString", "inputs": { "value": "x" } },
        "6": { "class_type": "PreviewAny", "inputs": { "source": ["5", 0] } }
    })
}

fn executed(file: &Json) -> Vec<String> {
    let mut ids: Vec<String> = file["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "executed")
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn runs_a_workflow_and_reports_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "chain.json", &chain());
    let (out, doc) = run_json(&["run", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = &doc["files"][0];
    assert_eq!(file["success"], true);
    assert_eq!(file["outputs"]["4"]["text"], json!(["a-b-c"]));
    assert_eq!(file["outputs"]["6"]["text"], json!(["x"]));
    assert_eq!(executed(file).len(), 6);
}

#[test]
fn second_run_in_one_call_executes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "chain.json", &chain());
    let f = f.to_str().unwrap();
    let (out, doc) = run_json(&["run", f, f]);
    assert!(out.status.success());
    assert_eq!(executed(&doc["files"][0]).len(), 6);
    assert_eq!(executed(&doc["files"][1]), Vec::<String>::new());
    // The output nodes are cache hits, so nothing above them is even visited.
    assert_eq!(doc["files"][1]["cached"], 2);
    // Cached output nodes still report their UI.
    assert_eq!(doc["files"][1]["outputs"]["4"]["text"], json!(["a-b-c"]));
}

#[test]
fn renumbered_workflow_hits_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", &chain());
    // Same graph, other ids, other key order.
    let renumbered = json!({
        "40": { "class_type": "PreviewAny", "inputs": { "source": ["30", 0] } },
        "30": { "class_type": "StringConcatenate", "inputs": { "delimiter": "", "string_b": "-c", "string_a": ["20", 0] } },
        "20": { "class_type": "StringConcatenate", "inputs": { "string_a": ["10", 0], "string_b": "-b", "delimiter": "" } },
        "10": { "class_type": "PrimitiveString", "inputs": { "value": "a" } }
    });
    let b = write(dir.path(), "b.json", &renumbered);
    let (_, doc) = run_json(&["run", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(executed(&doc["files"][1]), Vec::<String>::new());
    assert_eq!(doc["files"][1]["outputs"]["40"]["text"], json!(["a-b-c"]));
}

#[test]
fn changing_one_constant_reruns_exactly_its_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", &chain());
    let mut changed = chain();
    changed["2"]["inputs"]["string_b"] = json!("-B");
    let b = write(dir.path(), "b.json", &changed);
    let (_, doc) = run_json(&["run", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(executed(&doc["files"][1]), vec!["2", "3", "4"]);
    assert_eq!(doc["files"][1]["outputs"]["4"]["text"], json!(["a-B-c"]));
}

#[test]
fn set_overrides_a_constant_by_id_or_title() {
    let dir = tempfile::tempdir().unwrap();
    let mut wf = chain();
    wf["5"]["_meta"] = json!({ "title": "Other" });
    let f = write(dir.path(), "chain.json", &wf);
    let (out, doc) = run_json(&["run", f.to_str().unwrap(), "--set", "1.value=z", "--set", "Other.value=\"q\""]);
    assert!(out.status.success());
    assert_eq!(doc["files"][0]["outputs"]["4"]["text"], json!(["z-b-c"]));
    assert_eq!(doc["files"][0]["outputs"]["6"]["text"], json!(["q"]));
    let out = bin().args(["run", f.to_str().unwrap(), "--set", "99.value=1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node with id or title '99'"));
}

#[test]
fn validate_prints_comfyui_error_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut wf = chain();
    wf["3"]["inputs"]["string_a"] = json!(["77", 0]);
    wf["7"] = json!({ "class_type": "StringConcatenat", "inputs": {} });
    let f = write(dir.path(), "bad.json", &wf);
    let out = bin().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["type"], "missing_node_type");
    assert!(doc["error"]["message"].as_str().unwrap().contains("Did you mean 'StringConcatenate'"), "suggests the near name: {doc}");
    assert_eq!(doc["error"]["extra_info"]["node_id"], "7");

    wf.as_object_mut().unwrap().remove("7");
    let f = write(dir.path(), "bad.json", &wf);
    let out = bin().args(["validate", f.to_str().unwrap()]).output().unwrap();
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    // Output 6 is still valid, so the prompt is accepted with node 3's error listed.
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(doc["outputs"], json!(["6"]));
    assert_eq!(doc["node_errors"]["3"]["errors"][0]["type"], "bad_linked_input");
    assert_eq!(doc["node_errors"]["3"]["dependent_outputs"], json!(["4"]));
}

#[test]
fn invalid_json_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.json");
    std::fs::write(&f, "{\n  \"1\": {\"class_type\": \"PrimitiveString\",\n  \"inputs\": {\"value\": \"a\"}\n").unwrap();
    let out = bin().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["error"]["details"].as_str().unwrap().contains("line 4"), "{doc}");
}

#[test]
fn nodes_prints_object_info() {
    let out = bin().args(["nodes", "StringConcatenate"]).output().unwrap();
    assert!(out.status.success());
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    let rec = &doc["StringConcatenate"];
    for key in ["input", "input_order", "output", "output_is_list", "output_name", "name", "display_name", "description", "python_module", "category", "output_node"] {
        assert!(rec.get(key).is_some(), "missing {key} in {rec}");
    }
    let out = bin().args(["nodes", "NoSuchNode", "--python", "never"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = bin().args(["run", "/nonexistent/wf.json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read workflow file /nonexistent/wf.json"));
}

#[test]
fn every_example_workflow_runs() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = bin().args(["fixtures", "--models-dir"]).arg(&models).output().unwrap();
    assert!(out.status.success(), "fixtures: {}", String::from_utf8_lossy(&out.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "workflows/ has examples: {files:?}");
    for f in files {
        let out = bin()
            .args(["run", "--quiet", "--output-dir", dir.path().to_str().unwrap(), "--models-dir"])
            .arg(&models)
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{} failed:\n{}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
    if cfg!(feature = "python") {
        // txt2img_tiny_sd15.json ran through the embedded ComfyUI and saved its image.
        let pngs = std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png")).count();
        assert!(pngs >= 1, "SaveImage wrote a PNG into --output-dir");
    }
}

#[test]
fn ui_workflow_converts_and_runs() {
    let f = repo().join("workflows/strings_ui.json");
    let (out, doc) = run_json(&["run", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = &doc["files"][0];
    // Reroute followed, PrimitiveNode value copied, bypassed node passed through, muted node absent.
    assert_eq!(file["outputs"]["6"]["text"], json!(["Hello world"]));
    assert!(file["outputs"].get("7").is_none());
    let ids: Vec<&str> = file["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&"5") && !ids.contains(&"2") && !ids.contains(&"4"), "virtual/bypassed nodes are not run: {ids:?}");
}

/// `comfyrs convert` prints the API prompt a UI workflow runs as; that prompt runs as the
/// workflow does. A workflow that cannot be converted gets ComfyUI's error JSON and exit 1.
#[test]
fn convert_prints_the_api_prompt_a_ui_workflow_runs_as() {
    let f = repo().join("workflows/strings_ui.json");
    let out = bin().args(["convert", "--python", "never"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prompt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The reroute (5), the PrimitiveNode (2) and the bypassed node (4) are gone, the muted
    // output (7) too; the concatenation reads the greeting through the reroute.
    let mut ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    ids.sort();
    assert_eq!(ids, ["1", "3", "6"], "{prompt}");
    assert_eq!(prompt["3"]["class_type"], "StringConcatenate");
    assert_eq!(prompt["3"]["inputs"]["string_a"], json!(["1", 0]));
    assert_eq!(prompt["6"]["inputs"]["source"], json!(["3", 0]));
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.json");
    std::fs::write(&api, &out.stdout).unwrap();
    let (run, doc) = run_json(&["run", api.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(doc["files"][0]["outputs"]["6"]["text"], json!(["Hello world"]));

    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, r#"{"1": {"class_type": "NoSuchNode", "inputs": {}}}"#).unwrap();
    let out = bin().args(["convert", "--python", "never"]).arg(&unknown).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| json!(String::from_utf8_lossy(&out.stdout)));
    assert_eq!(out.status.code(), Some(0), "an API prompt is printed as it is, known classes or not: {doc}");
    assert_eq!(doc["1"]["class_type"], "NoSuchNode");
}

/// `comfyrs bench merge` on the tiny layouts: every workload runs end to end, the slider rows
/// reuse what they should, and the engines take the configured memory budget (this checks the
/// benchmark's wiring, not its timings).
#[test]
fn bench_merge_runs_every_workload_on_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["bench", "merge", "--host-memory", "3GiB", "--tiny", "--repeat", "1", "--workloads", "w1,w2,w3,zimage,flux,qwen,clip", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let row = |prefix: &str| -> String {
        stdout.lines().find(|l| l.starts_with(&format!("| {prefix}"))).unwrap_or_else(|| panic!("no row '{prefix}' in:\n{stdout}")).to_string()
    };
    for w in ["W1: one LoRA", "W2: compose", "W3: compose", "Z-Image: compose", "Flux-dev: compose", "Qwen-Image (fp8 e4m3fn): compose", "SDXL CLIP-L/G: compose"] {
        assert!(row(w).contains(" 0 subtree hits"), "a cold run must start from empty caches: {}", row(w));
    }
    let strength = row("W2, LoRA3 strength changed");
    assert!(strength.contains("0 statistics reused") && !strength.contains(" 0 subtree hits"), "{strength}");
    let t = row("W2, last t changed");
    let keys: String = t.split(" keys,").next().unwrap().rsplit("| ").next().unwrap().to_string();
    assert!(t.contains(&format!("{keys} statistics reused")), "every key's statistics are reused after a t change: {t}");
    assert!(stdout.contains("(within)") && !stdout.contains("EXCEEDED"), "{stdout}");
    // The saved CLIP merge: one file per text encoder, in text_encoders.
    let saved = row("SDXL CLIP-L/G, the same merge saved");
    let keys = saved.split(" keys,").next().unwrap().rsplit("| ").next().unwrap().to_string();
    assert!(saved.contains(&format!("{keys} keys, {keys} recomputed")), "each save merges and writes anew: {saved}");
    for enc in ["clip_l", "clip_g"] {
        let f = dir.path().join(format!("text_encoders/bench_clip_saved_0_{enc}.safetensors"));
        assert!(f.is_file() && saved.contains(&f.display().to_string()), "{saved}");
    }
    // The engines count in the memory budget the flags configure.
    assert!(stdout.contains("engine budget: memory: host") && stdout.contains(" of 3.00 GiB"), "{stdout}");
    // Flux's LoRAs (every linear layer, the fused qkv and linear1 among them) merge something.
    let flux = row("Flux-dev: compose");
    assert!(!flux.contains("| 0 keys"), "{flux}");
}

/// The Exit's RAM preflight refuses a merge that does not fit, before any work, naming both
/// numbers, and writes no model file.
#[test]
fn a_merge_that_does_not_fit_in_ram_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = bin().args(["fixtures", "--models-dir"]).arg(&models).output().unwrap();
    assert!(out.status.success(), "fixtures: {}", String::from_utf8_lossy(&out.stderr));
    let run = |cap_mb: &str| {
        bin()
            .args(["run", "--quiet", "--models-dir"])
            .arg(&models)
            .arg(repo().join("workflows/widen_sdxl_merge.json"))
            .env("COMFYRS_WIDEN_HOST_RAM_MB", cap_mb)
            .output()
            .unwrap()
    };
    let saved = models.join("checkpoints/widen_sdxl_tiny_merge.safetensors");
    let out = run("0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Insufficient system RAM for merge: 0 MB available, estimated") && stderr.contains("MB needed"),
        "{stderr}"
    );
    assert!(!saved.exists(), "nothing is written when the merge is refused");
    // With room, the same workflow merges and saves.
    let out = run("100000");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(saved.exists());
}

/// `--json` reports the one memory budget: its limits and what each cache holds against them.
#[test]
fn json_reports_every_cache_against_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = bin().args(["fixtures", "--models-dir"]).arg(&models).output().unwrap();
    assert!(out.status.success(), "fixtures: {}", String::from_utf8_lossy(&out.stderr));
    let wf = repo().join("workflows/widen_sdxl_merge.json");
    let (out, doc) = run_json(&["run", "--quiet", "--host-memory", "3GiB", "--models-dir", models.to_str().unwrap(), wf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let memory = &doc["memory"];
    assert_eq!(memory["host_limit"], json!(3u64 << 30), "the configured host limit is the budget's: {memory}");
    let pool = |name: &str| -> u64 {
        let p = memory["pools"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no pool {name}: {memory}"));
        p["host"].as_u64().unwrap() + p["device"].as_u64().unwrap()
    };
    assert!(pool("outputs") > 0, "the executor's outputs count in the budget: {memory}");
    assert!(pool("widen.subtrees") > 0, "the merge's subtree cache counts in the same budget: {memory}");
    let sum: u64 = memory["pools"].as_array().unwrap().iter().map(|p| p["host"].as_u64().unwrap()).sum();
    assert_eq!(memory["host_used"].as_u64().unwrap(), sum, "{memory}");
    assert!(memory["host_used"].as_u64().unwrap() <= memory["host_limit"].as_u64().unwrap(), "{memory}");
}

/// `comfyrs report` draws a merge's report: from a workflow it runs (the Exit's own statistics)
/// and, without merging, from the file that run saved; both are the same picture.
#[test]
fn report_draws_a_workflow_merge_and_its_saved_file_alike() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = bin().args(["fixtures", "--arch", "sdxl", "--models-dir"]).arg(&models).output().unwrap();
    assert!(out.status.success(), "fixtures: {}", String::from_utf8_lossy(&out.stderr));
    let from_workflow = dir.path().join("workflow.png");
    let out = bin()
        .args(["report", "--models-dir"])
        .arg(&models)
        .arg("--output-dir")
        .arg(dir.path().join("output"))
        .arg("-o")
        .arg(&from_workflow)
        .arg(repo().join("workflows/widen_sdxl_merge.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("WIDEN merge on sdxl_f16") && table.contains("sdxl_kohya_lora ×1"), "{table}");
    let saved = models.join("checkpoints/widen_sdxl_tiny_merge.safetensors");
    let from_file = dir.path().join("saved.png");
    let out = bin().args(["report", "-o"]).arg(&from_file).arg(&saved).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), table, "the saved metadata holds the same report");
    let png = std::fs::read(&from_file).unwrap();
    assert_eq!(png, std::fs::read(&from_workflow).unwrap());
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(info.width >= 960 && info.height >= 400, "{}x{}", info.width, info.height);
    let pixels = &buf[..info.buffer_size()];
    let white = pixels.chunks(3).filter(|p| p.iter().all(|&v| v == 255)).count();
    assert!(white < pixels.len() / 3, "not blank");
    // A file without a report: a clear error naming what to do.
    let plain = models.join("diffusion_models/tiny/sdxl_f16.safetensors");
    let out = bin().args(["report"]).arg(&plain).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no merge report") && stderr.contains("comfyrs report WORKFLOW.json"), "{stderr}");
}
