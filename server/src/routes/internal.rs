//! `/internal/*`: routes ComfyUI keeps for its own frontend (served only there, not under
//! `/api`): the recent log for the terminal panel and the model folders. Also comfyrs's own
//! route for its workers (`/internal/comfyrs/…`, docs/scale-out.md).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
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
        .route("/comfyrs/outcome", post(outcome))
        .route("/comfyrs/files", post(super::files::worker_file))
}

/// A worker reports how a dispatched prompt ended: `{"prompt_id", "outcome": "completed" |
/// "failed" | "cancelled", "entry": <history entry>, "number", "create_time", "start_time",
/// "end_time", "delivery"}`, and for `/metrics` (optional: a report without them still records)
/// `"worker": <its name>, "nodes": [{"class_type", "status", "seconds"}]`. Answers
/// `{"recorded": bool}`: false when an earlier delivery's report was recorded (the worker then
/// acknowledges its entry all the same, and the files it uploaded are deleted).
async fn outcome(State(s): State<AppState>, raw: Bytes) -> ApiResult<JsonBody<Json>> {
    let Some(link) = s.broker.clone() else {
        return Err(ApiError::not_found("this server runs prompts itself; workers report to a server started with --broker"));
    };
    let req = body::object(&raw)?;
    let text = |k: &str| req.get(k).and_then(Json::as_str).ok_or_else(|| ApiError::bad_request(format!("{k} must be a string")));
    let int = |k: &str| req.get(k).and_then(Json::as_i64).ok_or_else(|| ApiError::bad_request(format!("{k} must be an integer")));
    let prompt_id = text("prompt_id")?.to_string();
    let outcome = match text("outcome")? {
        "completed" => crate::store::Outcome::Completed,
        "failed" => crate::store::Outcome::Failed,
        "cancelled" => crate::store::Outcome::Cancelled,
        other => return Err(ApiError::bad_request(format!("outcome must be completed, failed or cancelled, not {other:?}"))),
    };
    let entry = req.get("entry").filter(|e| e.is_object()).cloned().ok_or_else(|| ApiError::bad_request("entry must be the history entry (an object)"))?;
    let number = req.get("number").and_then(Json::as_f64).ok_or_else(|| ApiError::bad_request("number must be a number"))?;
    let f = crate::store::Finished { prompt_id, outcome, entry, number, create_time: int("create_time")?, start_time: int("start_time")?, end_time: int("end_time")? };
    let delivery = int("delivery")?;
    let worker = req.get("worker").and_then(Json::as_str).filter(|w| !w.is_empty()).unwrap_or("unnamed").to_string();
    let nodes = crate::metrics::NodeSample::from_json(req.get("nodes"));
    let recorded = tokio::task::spawn_blocking(move || {
        let recorded = crate::broker::link::record(&s, &link, &f, delivery)?;
        // A duplicate delivery's node work was done all the same; its outcome is counted once.
        s.metrics.nodes(&worker, &nodes);
        if recorded {
            s.metrics.prompt(&worker, f.outcome, f.start_time, f.end_time);
        }
        Ok::<_, crate::store::StoreError>(recorded)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(JsonBody(json!({"recorded": recorded})))
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
