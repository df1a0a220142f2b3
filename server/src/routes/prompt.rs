//! Submitting and managing prompts: `/prompt`, `/queue`, `/interrupt`, `/free`, and the
//! queue's pause (beyond ComfyUI).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonBody, Router};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::{node_errors_json, validate, ErrorRecord, Rejection};
use serde_json::{json, Map, Value as Json};

use super::{body, AppState};
use crate::error::{ApiError, ApiResult};
use crate::store::{Enqueued, QueueItem};
use crate::time::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/prompt", get(queue_info).post(submit))
        .route("/queue", get(queue).post(edit_queue))
        .route("/queue/pause", post(pause))
        .route("/queue/resume", post(resume))
        .route("/interrupt", post(interrupt))
        .route("/free", post(free))
}

/// `extra_data` keys that are credentials: kept apart, never echoed (ComfyUI does the same).
const SENSITIVE: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];

async fn queue_info(State(s): State<AppState>) -> JsonBody<Json> {
    JsonBody(json!({"exec_info": {"queue_remaining": s.queue_remaining()}}))
}

fn rejected(r: &Rejection) -> Response {
    (StatusCode::BAD_REQUEST, JsonBody(r.to_json())).into_response()
}

fn reject(kind: &str, message: &str, details: impl Into<String>) -> Response {
    rejected(&Rejection::new(ErrorRecord::new(kind, message, details)))
}

/// ComfyUI accepts a client-chosen id only in the canonical form: lowercase, hyphenated UUID.
fn canonical_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

async fn submit(State(s): State<AppState>, headers: HeaderMap, raw: Bytes) -> ApiResult<Response> {
    let mut req = body::object(&raw)?;
    // The counter moves for every submission without a number, valid or not (as ComfyUI's).
    let front = req.get("front").and_then(Json::as_bool).unwrap_or(false);
    let number_json = match req.get("number") {
        Some(n) => {
            let n = n.as_f64().or_else(|| n.as_str().and_then(|t| t.parse().ok())).ok_or_else(|| ApiError::bad_request("number must be a number"))?;
            json!(if front { -n } else { n })
        }
        None => {
            let n = s.store.next_number();
            json!(if front { -n } else { n })
        }
    };
    let number = number_json.as_f64().unwrap_or(0.0);
    let Some(mut prompt_json) = req.remove("prompt") else {
        return Ok(reject("no_prompt", "No prompt provided", "No prompt provided"));
    };
    let prompt_id = match req.get("prompt_id") {
        None | Some(Json::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Json::String(id)) if canonical_uuid(id) => id.clone(),
        Some(other) => {
            let shown = other.as_str().map(str::to_string).unwrap_or_else(|| other.to_string());
            return Ok(reject("invalid_prompt_id", "Invalid prompt_id", format!("prompt_id must be a lowercase hyphenated UUID, got {shown}")));
        }
    };
    let targets: Option<Vec<String>> = match req.get("partial_execution_targets") {
        None | Some(Json::Null) => None,
        Some(Json::Array(a)) => Some(a.iter().map(|t| t.as_str().map(str::to_string).unwrap_or_else(|| t.to_string())).collect()),
        Some(_) => return Err(ApiError::bad_request("partial_execution_targets must be a list of node ids")),
    };
    let priority = match req.get("priority") {
        None | Some(Json::Null) => 0,
        Some(p) => p.as_i64().ok_or_else(|| ApiError::bad_request("priority must be an integer (higher runs first)"))?,
    };
    let mut extra: Map<String, Json> = match req.remove("extra_data") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("extra_data must be a JSON object")),
    };
    if let Some(c) = req.get("client_id").filter(|c| !c.is_null()) {
        extra.insert("client_id".into(), c.clone());
    }
    if let Some(src) = headers.get("comfy-usage-source").and_then(|v| v.to_str().ok()) {
        extra.entry("comfy_usage_source").or_insert_with(|| json!(src));
    }
    let mut sensitive = Map::new();
    for k in SENSITIVE {
        if let Some(v) = extra.remove(k) {
            sensitive.insert(k.into(), v);
        }
    }
    crate::webhook::check(extra.get("webhook")).map_err(ApiError::bad_request)?;
    extra.insert("create_time".into(), json!(now_ms()));

    s.replacements.apply(&mut prompt_json, &s.registry);
    let prompt = match Prompt::from_json(&prompt_json) {
        Ok(p) => p,
        Err(e) => return Ok(reject("invalid_prompt", "Invalid prompt", e.to_string())),
    };
    // Python nodes' validators may wait for the interpreter: off the async threads (the
    // rejection boxed: it is large, and moves between threads).
    let registry = s.registry.clone();
    let validated = tokio::task::spawn_blocking(move || validate(prompt, &registry, targets.as_deref()).map_err(Box::new))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("validation failed: {e}")))?;
    let v = match validated {
        Ok(v) => v,
        Err(r) => return Ok(rejected(&r)),
    };
    let item = QueueItem {
        prompt_id: prompt_id.clone(),
        number,
        number_json: number_json.clone(),
        priority,
        prompt: v.prompt.to_json(),
        extra_data: Json::Object(extra),
        outputs: v.outputs.iter().map(|&i| v.id(i).to_string()).collect(),
        sensitive: Json::Object(sensitive),
        create_time: now_ms(),
        attempts: 0,
    };
    let number_json = match s.store.enqueue(&item)? {
        Enqueued::Added => {
            s.control.notify();
            s.broadcast_status();
            number_json
        }
        Enqueued::Known { number } => number,
    };
    Ok(JsonBody(json!({"prompt_id": prompt_id, "number": number_json, "node_errors": node_errors_json(&v.node_errors)})).into_response())
}

async fn queue(State(s): State<AppState>) -> ApiResult<JsonBody<Json>> {
    let (running, pending) = s.store.queue()?;
    Ok(JsonBody(json!({
        "queue_running": running.iter().map(QueueItem::tuple).collect::<Vec<_>>(),
        "queue_pending": pending.iter().map(QueueItem::tuple).collect::<Vec<_>>(),
        "paused": s.control.paused(),
    })))
}

async fn edit_queue(State(s): State<AppState>, raw: Bytes) -> ApiResult<StatusCode> {
    let req = body::object(&raw)?;
    // Checked before anything changes: a malformed request changes nothing.
    let ids = body::ids(req.get("delete"))?;
    let mut changed = 0;
    if req.get("clear").and_then(Json::as_bool).unwrap_or(false) {
        changed += s.store.clear_pending()?;
    }
    changed += s.store.delete_pending(&ids)?;
    if changed > 0 {
        s.broadcast_status();
    }
    Ok(StatusCode::OK)
}

async fn pause(State(s): State<AppState>) -> ApiResult<JsonBody<Json>> {
    s.store.set_flag("paused", true)?;
    s.control.set_paused(true);
    Ok(JsonBody(json!({"paused": true})))
}

async fn resume(State(s): State<AppState>) -> ApiResult<JsonBody<Json>> {
    s.store.set_flag("paused", false)?;
    s.control.set_paused(false);
    Ok(JsonBody(json!({"paused": false})))
}

async fn interrupt(State(s): State<AppState>, raw: Bytes) -> ApiResult<StatusCode> {
    let req = body::object(&raw)?;
    let id = req.get("prompt_id").and_then(Json::as_str);
    s.interrupt(id).await?;
    Ok(StatusCode::OK)
}

async fn free(State(s): State<AppState>, raw: Bytes) -> ApiResult<StatusCode> {
    let req = body::object(&raw)?;
    let flag = |k: &str| req.get(k).and_then(Json::as_bool).unwrap_or(false);
    s.control.request_free(flag("unload_models"), flag("free_memory"));
    // Applied before the next prompt; wake the executor so an idle server applies it now.
    s.control.notify();
    Ok(StatusCode::OK)
}
