//! ComfyUI's own nodes under `comfyrs serve`: a sampler's step progress and its latent previews
//! reach the submitting client's socket, as ComfyUI's server sends them.

mod common;

use std::time::Duration;

use common::{repo, Serve};
use serde_json::{json, Value as Json};

#[test]
fn a_python_samplers_progress_and_previews_reach_the_socket() {
    let server = Serve::start();
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws?clientId=fox", server.addr)).expect("socket");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    }
    let prompt: Json = serde_json::from_str(&std::fs::read_to_string(repo().join("workflows/txt2img_tiny_sd15.json")).unwrap()).unwrap();
    let body = json!({"prompt": prompt, "client_id": "fox"});
    let resp = ureq::post(&format!("{}/prompt", server.base)).send(body.to_string()).expect("POST /prompt");
    let resp: Json = serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap();
    let id = resp["prompt_id"].as_str().expect("accepted").to_string();

    let (mut steps, mut previews, mut success) = (Vec::new(), 0, false);
    loop {
        match ws.read().unwrap_or_else(|e| panic!("socket: {e}\nserver log:\n{}", server.log())) {
            // Type 1: a preview image with its format (1 JPEG, 2 PNG).
            tungstenite::Message::Binary(b) if b.len() > 8 && b[..4] == 1u32.to_be_bytes() => {
                assert!(matches!(u32::from_be_bytes(b[4..8].try_into().unwrap()), 1 | 2));
                previews += 1;
            }
            tungstenite::Message::Text(t) => {
                let m: Json = serde_json::from_str(t.as_str()).unwrap();
                match m["type"].as_str() {
                    Some("progress") if m["data"]["node"] == "3" => steps.push((m["data"]["value"].as_u64().unwrap(), m["data"]["max"].as_u64().unwrap())),
                    Some("execution_success") => success = true,
                    Some("execution_error") => panic!("the prompt failed: {m}"),
                    Some("executing") if m["data"]["node"].is_null() && m["data"]["prompt_id"] == id.as_str() => break,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    assert!(success);
    assert_eq!(steps.last(), Some(&(2, 2)), "KSampler's steps: {steps:?}");
    assert!(previews >= 1, "no latent preview reached the socket");

    // `/system_stats` reports the embedded interpreter and torch, as ComfyUI reports its own.
    let system = server.get("/system_stats").1["system"].clone();
    assert!(system["python_version"].as_str().is_some_and(|v| v.starts_with("3.")), "{system}");
    assert!(system["pytorch_version"].as_str().is_some_and(|v| v.starts_with("2.")), "{system}");
}
