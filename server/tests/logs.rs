//! `/internal/*`: the recent log (whole, raw, pushed to subscribed sockets) and the model
//! folders, over real HTTP and WebSocket on loopback.

mod common;

use std::path::PathBuf;

use comfyrs_server::{LogRing, ModelFolder, ServeOptions};
use common::*;
use serde_json::json;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

#[test]
fn the_recent_log_is_served_and_pushed_to_subscribers() {
    // As the binary does: one ring, its layer (filtered) in the process's subscriber, the ring
    // to serve().
    let ring = LogRing::new(50);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ring.layer().with_filter(LevelFilter::INFO))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::with_folders(vec![ModelFolder {
        name: "loras".into(),
        paths: vec![PathBuf::from("/models/loras"), PathBuf::from("/more/loras")],
        extensions: vec![".safetensors".into()],
    }]);
    let server = Server::start_host(ServeOptions { port: 0, logs: ring.clone(), ..ServeOptions::new(dir.path()) }, host);

    tracing::info!(answer = 42, "first marker");
    let (status, raw) = server.get("/internal/logs/raw");
    assert_eq!(status, 200);
    let entry = raw["entries"].as_array().unwrap().iter().find(|e| e["m"].as_str().unwrap().contains("first marker")).expect("the event is in the log").clone();
    assert!(entry["m"].as_str().unwrap().contains("answer=42"), "{entry}");
    assert!(entry["m"].as_str().unwrap().ends_with('\n'));
    assert!(entry["t"].as_str().unwrap().starts_with("20"), "{entry}");
    assert!(raw["size"]["cols"].as_u64().unwrap() > 0 && raw["size"]["rows"].as_u64().unwrap() > 0);
    let (status, whole) = server.get("/internal/logs");
    assert_eq!(status, 200);
    assert!(whole.as_str().unwrap().contains(&format!("{} - {}", entry["t"].as_str().unwrap(), entry["m"].as_str().unwrap())));
    // Only under /internal.
    assert_eq!(server.get("/api/internal/logs").0, 404);

    // The ring keeps the newest entries.
    for i in 0..60 {
        tracing::info!("filler {i}");
    }
    let (_, raw) = server.get("/internal/logs/raw");
    let entries = raw["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 50);
    let text = |e: &serde_json::Value| e["m"].as_str().unwrap().to_string();
    assert!(entries.iter().any(|e| text(e).contains("filler 59\n")));
    assert!(!entries.iter().any(|e| text(e).contains("filler 0\n")), "the oldest went");

    // A subscribed socket gets new entries as `logs` messages.
    let mut ws = Socket::connect(&server, "tail");
    assert_eq!(ws.text()["type"], "status");
    let r = server.call("PATCH", "/internal/logs/subscribe", &[], Some(br#"{"clientId": "tail", "enabled": true}"#));
    assert_eq!(r.status, 200);
    tracing::warn!("second marker");
    loop {
        let m = ws.text();
        if m["type"] == "logs" && m["data"]["entries"].as_array().unwrap().iter().any(|e| e["m"].as_str().unwrap().contains("second marker")) {
            assert!(m["data"]["size"]["cols"].is_u64());
            break;
        }
    }
    for bad in [&b"{}"[..], br#"{"clientId": 5, "enabled": true}"#, br#"{"clientId": "tail"}"#, b"nope"] {
        assert_eq!(server.call("PATCH", "/internal/logs/subscribe", &[], Some(bad)).status, 400);
    }

    let (status, folders) = server.get("/internal/folder_paths");
    assert_eq!(status, 200);
    assert_eq!(folders, json!({"loras": ["/models/loras", "/more/loras"]}));
}
