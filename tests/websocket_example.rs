//! ComfyUI's own client example, `script_examples/websockets_api_example.py`, against a real
//! `comfyrs serve`: it queues a txt2img prompt with a client-chosen id, waits on the socket for
//! the end of execution, reads `/history/{id}` and downloads every image through `/view`.
//!
//! The script is run from a temporary copy with a few lines changed, since it hardcodes what a
//! test cannot use: `server_address = "127.0.0.1:8188"` becomes the test server's address (the
//! test server picks a free port: 8188 may be taken, e.g. by a running ComfyUI), its checkpoint
//! `v1-5-pruned-emaonly.safetensors` becomes the fixture SD1.5 checkpoint (the same
//! architecture, tiny; `comfyrs fixtures` writes it), and its 512x512 image in 20 steps becomes
//! 64x64 in 2 (the same graph; on a CPU the full size takes about a minute per step). Everything
//! else, the prompt, the socket handling and the downloads, runs as ComfyUI ships it. It runs
//! through `runpy`, which hands back the script's globals, so the test can check the `images` it
//! got.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{venv, Serve};

/// Each text the copy changes, found exactly once in the original, and what it becomes (the
/// address is added at run time).
const EDITS: [(&str, &str); 4] = [
    // The fixture SD1.5 checkpoint (workflows/txt2img_tiny_sd15.json uses it too).
    ("v1-5-pruned-emaonly.safetensors", "comfyrs-tiny-sd15-v2.safetensors"),
    ("\"height\": 512", "\"height\": 64"),
    ("\"width\": 512", "\"width\": 64"),
    ("\"steps\": 20", "\"steps\": 2"),
];
const ADDRESS_LINE: &str = "server_address = \"127.0.0.1:8188\"";

/// ComfyUI's checkout: COMFYUI_PATH, else the snapshot next to the project's checkouts.
fn comfyui() -> PathBuf {
    let p = std::env::var_os("COMFYUI_PATH").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared/comfyui"));
    assert!(
        p.join("script_examples/websockets_api_example.py").is_file(),
        "ComfyUI's script_examples/websockets_api_example.py is not under {} (set COMFYUI_PATH to a ComfyUI checkout)",
        p.display()
    );
    p
}

#[test]
fn comfyui_websockets_api_example_gets_its_images() {
    let original = std::fs::read_to_string(comfyui().join("script_examples/websockets_api_example.py")).unwrap();
    let server = Serve::start();
    let address = format!("server_address = \"{}\"", server.addr);
    let mut script = original.clone();
    for (from, to) in EDITS.iter().copied().chain([(ADDRESS_LINE, address.as_str())]) {
        assert_eq!(original.matches(from).count(), 1, "the example no longer has exactly one {from:?}: update this test");
        script = script.replace(from, to);
    }
    let copy = server.folder().join("websockets_api_example.py");
    std::fs::write(&copy, script).unwrap();

    // The images it downloaded, per output node: count, and whether each is a PNG.
    let report = "import json, runpy, sys\n\
                  g = runpy.run_path(sys.argv[1])\n\
                  print(json.dumps({n: [len(b) for b in imgs if b[:8] == b'\\x89PNG\\r\\n\\x1a\\n'] for n, imgs in g['images'].items()}))\n";
    let mut child = common::KillOnDrop(
        Command::new(venv().join("bin/python"))
            .args(["-c", report])
            .arg(&copy)
            .current_dir(server.folder())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run the venv's python (run scripts/setup.sh)"),
    );
    // Bounded: the example itself has no timeout.
    let status = server.wait_for("the example script to finish", Duration::from_secs(300), || child.0.try_wait().unwrap());
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.0.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(
        status.success(),
        "the example failed ({status}); if it cannot import websocket, run scripts/setup.sh\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    let images: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    // SaveImage is node 9 in the example's prompt; one latent, so one image.
    let saved = images["9"].as_array().unwrap_or_else(|| panic!("no images for SaveImage (node 9): {images}"));
    assert_eq!(saved.len(), 1, "one PNG from SaveImage: {images}");
    assert!(saved[0].as_u64().unwrap() > 100, "a real PNG: {images}");
    // And the server wrote it where SaveImage writes, under the example's prefix.
    let pngs: Vec<_> = std::fs::read_dir(server.folder().join("state/output"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ComfyUI_") && n.ends_with(".png"))
        .collect();
    assert_eq!(pngs.len(), 1, "{pngs:?}");
}
