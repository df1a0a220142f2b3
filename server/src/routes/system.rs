//! System and frontend-support routes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as JsonBody, Router};
use serde_json::{json, Value as Json};

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/system_stats", get(system_stats))
        .route("/comfyrs/workers", get(workers))
        .route("/features", get(features))
        .route("/extensions", get(|| async { JsonBody(json!([])) }))
        .route("/i18n", get(|| async { JsonBody(json!({})) }))
        .route("/workflow_templates", get(|| async { JsonBody(json!({})) }))
        .route("/global_subgraphs", get(|| async { JsonBody(json!({})) }))
        .route("/global_subgraphs/{id}", get(global_subgraph))
        .route("/node_replacements", get(|State(s): State<AppState>| async move { JsonBody(s.replacements.listed().clone()) }))
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

/// The live workers of a server with a broker (their heartbeats; an empty list without one).
async fn workers(State(s): State<AppState>) -> JsonBody<Json> {
    JsonBody(json!(s.broker.as_ref().map(|l| l.workers()).unwrap_or_default()))
}

async fn system_stats(State(s): State<AppState>) -> JsonBody<Json> {
    let info = s.host.system();
    let (ram_total, ram_free) = memory();
    let version = |v: &str| if v.is_empty() { "unknown".to_string() } else { v.to_string() };
    let mut stats = json!({
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
            "argv": argv(),
            "comfyrs_version": env!("CARGO_PKG_VERSION"),
        },
        "devices": info.devices,
    });
    // With a broker the devices that run prompts are the workers' (docs/scale-out.md).
    if let Some(link) = &s.broker {
        stats["workers"] = json!(link.workers());
    }
    JsonBody(stats)
}

/// The command line, plus ComfyUI's `--disable-api-nodes`: comfyrs has none of ComfyUI's paid API
/// nodes, and the frontend reads that flag from here to skip fetching ComfyUI's release notes
/// from api.comfy.org (about a ComfyUI this is not; offline, that fetch is a console error).
fn argv() -> Vec<String> {
    let mut argv: Vec<String> = std::env::args().collect();
    argv.push("--disable-api-nodes".to_string());
    argv
}

