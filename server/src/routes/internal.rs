//! `/internal/*`: routes ComfyUI keeps for its own frontend (served only there, not under
//! `/api`): the recent log for the terminal panel and the model folders.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json as JsonBody, Router};
use serde_json::{json, Map, Value as Json};

use super::{body, AppState};
use crate::error::{ApiError, ApiResult};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/logs", get(logs))
        .route("/logs/raw", get(raw))
        .route("/logs/subscribe", patch(subscribe))
        .route("/folder_paths", get(folder_paths))
}

/// The whole recent log as one string.
async fn logs(State(s): State<AppState>) -> JsonBody<Json> {
    let text: String = s.options.logs.entries().iter().map(|e| format!("{} - {}", e.t, e.m)).collect();
    JsonBody(json!(text))
}

async fn raw(State(s): State<AppState>) -> JsonBody<Json> {
    JsonBody(json!({"entries": s.options.logs.entries(), "size": crate::logs::size()}))
}

async fn subscribe(State(s): State<AppState>, raw: Bytes) -> ApiResult<StatusCode> {
    let req = body::object(&raw)?;
    let client = req.get("clientId").and_then(Json::as_str).ok_or_else(|| ApiError::bad_request("clientId must be the socket's client id (a string)"))?;
    let enabled = req.get("enabled").and_then(Json::as_bool).ok_or_else(|| ApiError::bad_request("enabled must be true or false"))?;
    s.log_subscribers.set(&s.hub, client, enabled);
    Ok(StatusCode::OK)
}

async fn folder_paths(State(s): State<AppState>) -> JsonBody<Json> {
    let m: Map<String, Json> = s.host.model_folders().into_iter().map(|f| (f.name, json!(f.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()))).collect();
    JsonBody(Json::Object(m))
}
