//! A reader that stops early (`comfyrs nodes | head -1`) ends comfyrs quietly with status 0,
//! as it ends cat or ripgrep, instead of a panic on the failed write.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_comfyrs"));
    c.env_remove("COMFYRS_CONFIG").current_dir(std::env::temp_dir());
    c
}

/// Reads one line of `comfyrs ARGS`'s stdout, closes the pipe, and checks the exit.
fn head_1(args: &[&str]) {
    let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(!line.trim().is_empty(), "comfyrs {args:?} printed a first line");
    drop(stdout);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked") && !stderr.contains("failed printing"), "comfyrs {args:?}:\n{stderr}");
    assert_eq!(status.code(), Some(0), "comfyrs {args:?}:\n{stderr}");
}

/// The pipe is closed before comfyrs writes anything, so its first write fails whatever the
/// output's size (`head -1` on a short output may read everything before closing).
fn closed_from_the_start(args: &[&str]) {
    let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked") && !stderr.contains("failed printing"), "comfyrs {args:?}:\n{stderr}");
    assert_eq!(status.code(), Some(0), "comfyrs {args:?}:\n{stderr}");
}

#[test]
fn nodes_stops_quietly_when_the_reader_goes() {
    head_1(&["nodes"]);
    head_1(&["nodes", "--list"]);
}

#[test]
fn every_printing_command_stops_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("wf.json");
    let doc = serde_json::json!({
        "1": { "class_type": "PrimitiveString", "inputs": { "value": "a" } },
        "2": { "class_type": "PreviewAny", "inputs": { "source": ["1", 0] } }
    });
    std::fs::write(&wf, doc.to_string()).unwrap();
    let wf = wf.to_str().unwrap();
    let models = dir.path().join("models");
    let models = models.to_str().unwrap();
    for args in [
        &["nodes", "--python", "never"][..],
        &["nodes", "--list", "--python", "never"],
        &["nodes", "StringConcatenate"],
        &["config"],
        &["config", "--json"],
        &["validate", wf, "--python", "never"],
        &["run", wf, "--python", "never"],
        &["run", wf, "--json", "--python", "never"],
        &["fixtures", "--arch", "sdxl", "--models-dir", models],
        &["bench", "executor", "--sizes", "10", "--shapes", "chain", "--repeat", "1"],
    ] {
        closed_from_the_start(args);
    }
}
