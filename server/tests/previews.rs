//! Previews, progress text and custom messages of running nodes reach the submitting client as
//! ComfyUI sends them.

mod common;

use common::*;
use serde_json::json;

fn prompt() -> serde_json::Value {
    json!({
        "1": {"class_type": "TestPreview", "inputs": {"value": "x"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    })
}

/// Binary frames and text messages until the prompt is done.
fn collect(ws: &mut Socket, id: &str) -> (Vec<Vec<u8>>, Vec<serde_json::Value>) {
    let (mut bin, mut text) = (Vec::new(), Vec::new());
    loop {
        match ws.next() {
            Msg::Binary(b) => bin.push(b),
            Msg::Text(t) => {
                let done = t["type"] == "executing" && t["data"]["node"].is_null() && t["data"]["prompt_id"] == id;
                text.push(t);
                if done {
                    return (bin, text);
                }
            }
        }
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
}

#[test]
fn a_plain_client_gets_type_1_previews_and_type_3_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = Socket::connect(&server, "plain");
    ws.text();
    let id = server.queue(prompt(), Some("plain"))["prompt_id"].as_str().unwrap().to_string();
    let (bin, text) = collect(&mut ws, &id);
    let preview = bin.iter().find(|b| u32_at(b, 0) == 1).expect("a type 1 preview");
    assert_eq!(u32_at(preview, 4), 1, "JPEG");
    assert_eq!(&preview[8..], b"JPEG");
    let t = bin.iter().find(|b| u32_at(b, 0) == 3).expect("a type 3 progress text");
    let n = u32_at(t, 4) as usize;
    assert_eq!(&t[8..8 + n], b"1");
    assert_eq!(&t[8 + n..], b"step 1 of 1");
    assert!(text.iter().any(|m| m["type"] == "my_pack.note" && m["data"] == json!({"hello": "world"})));
}

#[test]
fn a_client_announcing_preview_metadata_gets_type_4() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = Socket::connect(&server, "meta");
    ws.text();
    ws.send_text(&json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}}).to_string());
    let reply = ws.text();
    assert_eq!(reply["type"], "feature_flags");
    assert_eq!(reply["data"]["supports_preview_metadata"], true);
    let id = server.queue(prompt(), Some("meta"))["prompt_id"].as_str().unwrap().to_string();
    let (bin, _) = collect(&mut ws, &id);
    let p = bin.iter().find(|b| u32_at(b, 0) == 4).expect("a type 4 preview");
    let m = u32_at(p, 4) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&p[8..8 + m]).unwrap();
    assert_eq!(meta["node_id"], "1");
    assert_eq!(meta["prompt_id"], id.as_str());
    assert_eq!(meta["image_type"], "image/jpeg");
    assert_eq!(&p[8 + m..], b"JPEG");
}

#[test]
fn nobody_listening_means_no_preview_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // Another client is connected but the prompt names a client that is not: no preview.
    let mut other = Socket::connect(&server, "other");
    other.text();
    let id = server.queue(prompt(), Some("absent"))["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_history(&id)["outputs"]["2"], json!({"text": ["x:false"]}));
    // Without a client id every socket would see it: then it is made.
    let mut p = prompt();
    p["1"]["inputs"]["value"] = json!("y");
    let id = server.queue(p, None)["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_history(&id)["outputs"]["2"], json!({"text": ["y:true"]}));
}
