//! `/history`: finished prompts, paged from the database.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json as JsonBody, Router};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::{body, AppState};
use crate::error::{ApiError, ApiResult};

pub fn routes() -> Router<AppState> {
    Router::new().route("/history", get(list).post(edit)).route("/history/{prompt_id}", get(one))
}

#[derive(Deserialize)]
struct Window {
    max_items: Option<String>,
    offset: Option<String>,
}

fn count(name: &str, v: Option<&str>) -> ApiResult<Option<usize>> {
    v.map(|t| t.trim().parse::<i64>().map_err(|_| ApiError::bad_request(format!("{name} must be an integer, got {t:?}"))))
        .transpose()
        .map(|n| n.map(|n| n.max(0) as usize))
}

async fn list(State(s): State<AppState>, Query(w): Query<Window>) -> ApiResult<JsonBody<Json>> {
    let max_items = count("max_items", w.max_items.as_deref())?;
    let offset = count("offset", w.offset.as_deref())?;
    let entries = s.store.history(max_items, offset)?;
    Ok(JsonBody(Json::Object(entries.into_iter().collect::<Map<_, _>>())))
}

async fn one(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<JsonBody<Json>> {
    let mut m = Map::new();
    if let Some(e) = s.store.history_entry(&id)? {
        m.insert(id, e);
    }
    Ok(JsonBody(Json::Object(m)))
}

async fn edit(State(s): State<AppState>, raw: Bytes) -> ApiResult<StatusCode> {
    let req = body::object(&raw)?;
    // Checked before anything changes: a malformed request changes nothing.
    let ids = body::ids(req.get("delete"))?;
    if req.get("clear").and_then(Json::as_bool).unwrap_or(false) {
        s.store.clear_history()?;
    }
    if !ids.is_empty() {
        s.store.delete_history(&ids)?;
    }
    Ok(StatusCode::OK)
}
