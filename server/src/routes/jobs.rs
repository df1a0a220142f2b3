//! `/api/jobs`: the queue and the history as one paged list of jobs, and cancelling them.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json as JsonBody, Router};
use serde_json::{json, Value as Json};

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::job::{self, SortBy, Status};
use crate::server::Shared;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list))
        // The static path wins over `{id}` for every method; a GET of it finds no job, as in
        // ComfyUI (ids are UUIDs).
        .route("/api/jobs/cancel", post(cancel_batch).get(|| async { not_found() }))
        .route("/api/jobs/{id}", get(one))
        .route("/api/jobs/{id}/cancel", post(cancel_one))
}

fn not_found() -> ApiError {
    ApiError::not_found("Job not found")
}

/// An integer as Python's `int()` reads one; beyond i64 it saturates (Python's are unbounded).
fn integer(name: &str, v: &str) -> ApiResult<i64> {
    use std::num::IntErrorKind::{NegOverflow, PosOverflow};
    let t = v.trim().replace('_', "");
    match t.parse::<i64>() {
        Ok(n) => Ok(n),
        Err(e) if *e.kind() == PosOverflow => Ok(i64::MAX),
        Err(e) if *e.kind() == NegOverflow => Ok(i64::MIN),
        Err(_) => Err(ApiError::bad_request(format!("{name} must be an integer"))),
    }
}

fn parse(q: &[(String, String)]) -> ApiResult<job::Query> {
    // The first of repeated parameters counts, as in aiohttp.
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let statuses = match param("status").filter(|s| !s.is_empty()) {
        None => Status::ALL.to_vec(),
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect();
            let invalid: Vec<&str> = names.iter().map(String::as_str).filter(|s| Status::parse(s).is_none()).collect();
            if !invalid.is_empty() {
                let valid: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::bad_request(format!("Invalid status value(s): {}. Valid values: {}", invalid.join(", "), valid.join(", "))));
            }
            names.iter().filter_map(|s| Status::parse(s)).collect()
        }
    };
    let sort_by = match param("sort_by").unwrap_or("created_at").to_lowercase().as_str() {
        "created_at" => SortBy::CreatedAt,
        "execution_duration" => SortBy::ExecutionDuration,
        _ => return Err(ApiError::bad_request("sort_by must be 'created_at' or 'execution_duration'")),
    };
    let descending = match param("sort_order").unwrap_or("desc").to_lowercase().as_str() {
        "desc" => true,
        "asc" => false,
        _ => return Err(ApiError::bad_request("sort_order must be 'asc' or 'desc'")),
    };
    let limit = match param("limit") {
        None => None,
        Some(v) => match integer("limit", v)? {
            n if n <= 0 => return Err(ApiError::bad_request("limit must be a positive integer")),
            n => Some(n),
        },
    };
    let offset = param("offset").map(|v| integer("offset", v)).transpose()?.unwrap_or(0).max(0);
    let workflow_id = param("workflow_id").filter(|w| !w.is_empty()).map(str::to_string);
    Ok(job::Query { statuses, workflow_id, sort_by, descending, limit, offset })
}

async fn list(State(s): State<AppState>, q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> ApiResult<JsonBody<Json>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = parse(&q)?;
    let (mut jobs, total) = job::list(&s.store, &q)?;
    for j in &mut jobs {
        name_worker(&s, j);
    }
    let has_more = q.offset.saturating_add(jobs.len() as i64) < total;
    Ok(JsonBody(json!({
        "jobs": jobs,
        "pagination": {"offset": q.offset, "limit": q.limit, "total": total, "has_more": has_more},
    })))
}

async fn one(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<JsonBody<Json>> {
    let mut j = job::get(&s.store, &id)?.ok_or_else(not_found)?;
    name_worker(&s, &mut j);
    Ok(JsonBody(j))
}

/// With a broker, a running job names the worker that runs it (`"worker"`, from the workers'
/// heartbeats; absent until its worker's next beat).
fn name_worker(s: &crate::server::Shared, job: &mut Json) {
    let Some(link) = &s.broker else { return };
    if job["status"] != "in_progress" {
        return;
    }
    if let (Some(id), Some(obj)) = (job["id"].as_str().map(str::to_string), job.as_object_mut()) {
        if let Some(w) = link.worker_of(&id) {
            obj.insert("worker".into(), Json::String(w));
        }
    }
}

/// Interrupts the job if it runs, dequeues it if it waits; false when it had already finished
/// or is unknown.
async fn cancel(s: &Shared, id: &str) -> ApiResult<bool> {
    if s.interrupt(Some(id)).await? {
        tracing::info!("cancelling running prompt {id}");
        return Ok(true);
    }
    let Some(item) = s.store.queued(id)? else { return Ok(false) };
    if s.store.delete_pending(&[id.to_string()])? == 1 {
        tracing::info!("cancelling pending prompt {id}");
        s.broadcast_status();
        s.dequeued(&item);
        return Ok(true);
    }
    // It started between the two looks.
    s.interrupt(Some(id)).await
}

async fn cancel_one(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<JsonBody<Json>> {
    Ok(JsonBody(json!({"cancelled": cancel(&s, &id).await?})))
}

/// ComfyUI's canonical form of a job id: a lowercase hyphenated UUID.
fn canonical(v: &Json) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s))
}

async fn cancel_batch(State(s): State<AppState>, raw: Bytes) -> ApiResult<JsonBody<Json>> {
    let req: Json = serde_json::from_slice(&raw).map_err(|_| ApiError::bad_request("Request body must be valid JSON"))?;
    let Some(ids) = req.get("job_ids").and_then(Json::as_array) else {
        return Err(ApiError::bad_request("job_ids must be a list"));
    };
    let invalid: Vec<Json> = ids.iter().filter(|v| !canonical(v)).map(|v| if v.is_string() { v.clone() } else { json!(v.to_string()) }).collect();
    if !invalid.is_empty() {
        let mut e = ApiError::bad_request("job_ids contains invalid id(s): each must be a lowercase hyphenated UUID");
        e.body["invalid_ids"] = Json::Array(invalid);
        return Err(e);
    }
    let mut cancelled = false;
    for id in ids.iter().filter_map(Json::as_str) {
        cancelled |= cancel(&s, id).await?;
    }
    Ok(JsonBody(json!({"cancelled": cancelled})))
}
