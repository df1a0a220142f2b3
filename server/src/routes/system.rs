//! System and frontend-support routes, and the web frontend's files at `/`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json as JsonBody, Router};
use serde_json::{json, Value as Json};
use tower_http::services::{ServeDir, ServeFile};

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
        .route("/extensions", get(|| async { JsonBody(json!([])) }))
        .route("/i18n", get(|| async { JsonBody(json!({})) }))
        .route("/workflow_templates", get(|| async { JsonBody(json!({})) }))
        .route("/global_subgraphs", get(|| async { JsonBody(json!({})) }))
        .route("/global_subgraphs/{id}", get(global_subgraph))
        .route("/node_replacements", get(|| async { JsonBody(json!({})) }))
}

async fn global_subgraph(Path(id): Path<String>) -> Response {
    (StatusCode::NOT_FOUND, JsonBody(json!({"error": format!("no global subgraph {id:?}")}))).into_response()
}

async fn features(State(s): State<AppState>) -> JsonBody<Json> {
    JsonBody(super::ws::server_flags(s.options.max_upload))
}

/// `/proc/meminfo`'s MemTotal and MemAvailable in bytes (zeros where there is no /proc).
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

async fn system_stats(State(s): State<AppState>) -> JsonBody<Json> {
    let info = s.host.system();
    let (ram_total, ram_free) = memory();
    let version = |v: &str| if v.is_empty() { "unknown".to_string() } else { v.to_string() };
    JsonBody(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": version(&info.comfyui_version),
            "required_frontend_version": info.frontend_version,
            "python_version": version(&info.python_version),
            "pytorch_version": version(&info.pytorch_version),
            "embedded_python": false,
            "deploy_environment": "local",
            "argv": std::env::args().collect::<Vec<_>>(),
            "comfyrs_version": env!("CARGO_PKG_VERSION"),
        },
        "devices": info.devices,
    }))
}

/// The web frontend's files when a root is configured; otherwise `/` says how to get one.
pub fn frontend(root: Option<&std::path::Path>) -> Router<AppState> {
    match root {
        Some(root) => {
            let index = ServeFile::new(root.join("index.html"));
            Router::new().fallback_service(ServeDir::new(root).fallback(index))
        }
        None => Router::new().route("/", get(no_frontend)),
    }
}

async fn no_frontend() -> Html<&'static str> {
    Html(
        "<!doctype html><title>comfyrs</title><h1>comfyrs serve</h1>\
         <p>The API is up (try <a href=\"/system_stats\">/system_stats</a>), but no web frontend is installed.</p>\
         <p>Install ComfyUI's frontend with <code>pip install comfyui-frontend-package</code> into the Python \
         comfyrs uses, or pass <code>--front-end-root DIR</code> (a folder holding its index.html).</p>",
    )
}

