//! Jobs (`/api/jobs`): one record per prompt, derived from the queue (pending, in progress)
//! and the history (completed, failed, cancelled), filtered, sorted and paged in SQL.
//!
//! The record has ComfyUI's fields and rules: keys whose value would be null
//! are left out; a finished job's status comes from its history entry; its preview is the first
//! saved visual output, else any previewable media, else a saved text file, else raw text.

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Map, Value as Json};

use crate::store::{Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [Status::Pending, Status::InProgress, Status::Completed, Status::Failed, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    CreatedAt,
    /// End minus start of execution; 0 for jobs that have not finished.
    ExecutionDuration,
}

/// What `GET /api/jobs` asks for.
#[derive(Clone, Debug)]
pub struct Query {
    pub statuses: Vec<Status>,
    pub workflow_id: Option<String>,
    pub sort_by: SortBy,
    pub descending: bool,
    pub limit: Option<i64>,
    pub offset: i64,
}

/// Every job as one relation. Ties keep ComfyUI's order: running, then pending in queue order,
/// then history in insertion order (its sort is stable in both directions).
const JOBS: &str = "
WITH jobs AS (
    SELECT CASE running WHEN 1 THEN 'in_progress' ELSE 'pending' END AS status,
           CASE running WHEN 1 THEN 0 ELSE 1 END AS rank, -priority AS k1, number AS k2,
           prompt_id, create_time, 0 AS duration,
           json_extract(extra_data, '$.extra_pnginfo.workflow.id') AS workflow_id,
           number_json, extra_data, NULL AS entry
    FROM queue
    UNION ALL
    SELECT outcome, 2, seq, 0, prompt_id, create_time, end_time - start_time, workflow_id, NULL, NULL, entry
    FROM history
)";

const FILTER: &str = "WHERE status IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR workflow_id = ?2)";

/// One page of jobs and how many match in all.
pub fn list(store: &Store, q: &Query) -> Result<(Vec<Json>, i64), StoreError> {
    let statuses = Json::from(q.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string();
    let key = match q.sort_by {
        SortBy::CreatedAt => "create_time",
        SortBy::ExecutionDuration => "duration",
    };
    let dir = if q.descending { "DESC" } else { "ASC" };
    let page = store.with_conn(|conn| {
        let total: i64 = conn.query_row(&format!("{JOBS} SELECT count(*) FROM jobs {FILTER}"), params![statuses, q.workflow_id], |r| r.get(0))?;
        let sql = format!(
            "{JOBS} SELECT status, prompt_id, number_json, extra_data, entry FROM jobs {FILTER}
             ORDER BY {key} {dir}, rank, k1, k2, prompt_id LIMIT ?3 OFFSET ?4"
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map(params![statuses, q.workflow_id, q.limit.unwrap_or(-1), q.offset], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, Option<String>>(4)?))
        })?;
        Ok((rows.collect::<Result<Vec<_>, _>>()?, total))
    })?;
    // Decoded after the database is released: the executor thread waits on it to record prompts.
    let (rows, total) = page;
    let mut jobs = Vec::with_capacity(rows.len());
    for (status, id, number, extra, entry) in rows {
        jobs.push(match entry {
            Some(entry) => from_history(&id, &serde_json::from_str(&entry)?, false),
            None => from_queue(
                &id,
                &status,
                &serde_json::from_str(number.as_deref().unwrap_or("null"))?,
                &serde_json::from_str(extra.as_deref().unwrap_or("{}"))?,
            ),
        });
    }
    Ok((jobs, total))
}

/// One job with details (outputs, status, workflow) when it has finished.
pub fn get(store: &Store, id: &str) -> Result<Option<Json>, StoreError> {
    if let Some(entry) = store.history_entry(id)? {
        return Ok(Some(from_history(id, &entry, true)));
    }
    let queued = store.with_conn(|conn| {
        Ok(conn
            .query_row("SELECT running, number_json, extra_data FROM queue WHERE prompt_id = ?1", [id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .optional()?)
    })?;
    let Some((running, number, extra)) = queued else { return Ok(None) };
    let status = if running == 1 { Status::InProgress } else { Status::Pending };
    Ok(Some(from_queue(id, status.as_str(), &serde_json::from_str(&number)?, &serde_json::from_str(&extra)?)))
}

/// Drops null values, as ComfyUI's records do.
fn pruned(m: Map<String, Json>) -> Json {
    Json::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect())
}

fn create_time_and_workflow(extra: &Json) -> (Json, Json) {
    (extra.get("create_time").cloned().unwrap_or(Json::Null), extra.pointer("/extra_pnginfo/workflow/id").cloned().unwrap_or(Json::Null))
}

/// A queued or running job (a dequeued one too, as `cancelled`).
pub fn from_queue(id: &str, status: &str, number: &Json, extra_data: &Json) -> Json {
    let (create_time, workflow_id) = create_time_and_workflow(extra_data);
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("status".into(), json!(status));
    m.insert("priority".into(), number.clone());
    m.insert("create_time".into(), create_time);
    m.insert("outputs_count".into(), json!(0));
    m.insert("previewable_outputs_count".into(), json!(0));
    m.insert("workflow_id".into(), workflow_id);
    pruned(m)
}

/// A finished job from its history entry; `details` adds what `GET /api/jobs/{id}` shows.
pub fn from_history(id: &str, entry: &Json, details: bool) -> Json {
    let tuple = entry.get("prompt").and_then(Json::as_array).cloned().unwrap_or_default();
    let at = |i: usize| tuple.get(i).cloned().unwrap_or(Json::Null);
    let (priority, prompt, extra_data) = (at(0), at(2), at(3));
    let (create_time, workflow_id) = create_time_and_workflow(&extra_data);
    let status_info = entry.get("status").cloned().unwrap_or_else(|| json!({}));
    let outputs = entry.get("outputs").cloned().unwrap_or_else(|| json!({}));

    let (mut start, mut end, mut error, mut interrupted) = (Json::Null, Json::Null, Json::Null, false);
    for msg in status_info.get("messages").and_then(Json::as_array).into_iter().flatten() {
        let (Some(name), Some(data)) = (msg.get(0).and_then(Json::as_str), msg.get(1).filter(|d| d.is_object())) else { continue };
        let ts = data.get("timestamp").cloned().unwrap_or(Json::Null);
        match name {
            "execution_start" => start = ts,
            "execution_success" => end = ts,
            "execution_error" => {
                end = ts;
                error = data.clone();
            }
            "execution_interrupted" => {
                end = ts;
                interrupted = true;
            }
            _ => {}
        }
    }
    let status = match status_info.get("status_str").and_then(Json::as_str) {
        Some("error") if interrupted => Status::Cancelled,
        Some("error") => Status::Failed,
        _ => Status::Completed,
    };
    let (count, preview) = outputs_summary(&outputs);

    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("status".into(), json!(status.as_str()));
    m.insert("priority".into(), priority);
    m.insert("create_time".into(), create_time);
    m.insert("execution_start_time".into(), start);
    m.insert("execution_end_time".into(), end);
    m.insert("execution_error".into(), error);
    m.insert("outputs_count".into(), json!(count));
    m.insert("previewable_outputs_count".into(), json!(previewable_count(&outputs)));
    m.insert("preview_output".into(), preview.unwrap_or(Json::Null));
    m.insert("workflow_id".into(), workflow_id);
    let mut job = pruned(m);
    if details {
        job["outputs"] = normalize_outputs(&outputs);
        job["execution_status"] = status_info;
        job["workflow"] = json!({"prompt": prompt, "extra_data": extra_data});
    }
    job
}

const PREVIEWABLE: [&str; 5] = ["images", "video", "audio", "3d", "text"];
const THREE_D: [&str; 5] = [".obj", ".fbx", ".gltf", ".glb", ".usdz"];
const TEXT_FILES: [&str; 3] = [".txt", ".md", ".json"];
/// Raw text previews are cut to this many characters.
const TEXT_PREVIEW_MAX: usize = 1024;

fn filename(item: &Json) -> String {
    item.get("filename").and_then(Json::as_str).unwrap_or("").to_lowercase()
}

fn ends_with_any(name: &str, exts: &[&str]) -> bool {
    exts.iter().any(|e| name.ends_with(e))
}

/// A 3D file name given as a bare string becomes a file record; other non-records are not
/// files (`None`).
fn normalize_item(item: &Json) -> Option<Json> {
    match item {
        Json::Object(_) => Some(item.clone()),
        Json::String(s) if ends_with_any(&s.to_lowercase(), &THREE_D) => Some(json!({"filename": s, "type": "output", "subfolder": "", "mediaType": "3d"})),
        _ => None,
    }
}

fn is_previewable(media: &str, item: &Json) -> bool {
    let format = item.get("format").and_then(Json::as_str).unwrap_or("");
    let name = filename(item);
    PREVIEWABLE.contains(&media) || format.starts_with("video/") || format.starts_with("audio/") || ends_with_any(&name, &THREE_D) || ends_with_any(&name, &TEXT_FILES)
}

fn is_text(media: &str, item: &Json) -> bool {
    media == "text" || ends_with_any(&filename(item), &TEXT_FILES)
}

/// Every output list of every node: (node id, media type, items).
fn output_lists(outputs: &Json) -> impl Iterator<Item = (&str, &str, &Vec<Json>)> {
    outputs.as_object().into_iter().flatten().flat_map(|(node, o)| {
        o.as_object().into_iter().flatten().filter(|(media, _)| media.as_str() != "animated").filter_map(move |(media, items)| Some((node.as_str(), media.as_str(), items.as_array()?)))
    })
}

/// How many output files the job made, and the one to preview.
fn outputs_summary(outputs: &Json) -> (usize, Option<Json>) {
    let (mut count, mut preview, mut fallback, mut text_file, mut text) = (0, None, None, None, None);
    for (node, media, items) in output_lists(outputs) {
        for raw in items {
            let Some(item) = normalize_item(raw) else {
                // Text values are a preview of last resort, not outputs.
                if media == "text" && preview.is_none() && text.is_none() && !raw.is_null() {
                    let value = raw.as_str().map(str::to_string).unwrap_or_else(|| raw.to_string());
                    let mut t = Map::new();
                    if value.chars().count() <= TEXT_PREVIEW_MAX {
                        t.insert("content".into(), json!(value));
                    } else {
                        t.insert("content".into(), json!(value.chars().take(TEXT_PREVIEW_MAX).collect::<String>()));
                        t.insert("truncated".into(), json!(true));
                    }
                    t.insert("nodeId".into(), json!(node));
                    t.insert("mediaType".into(), json!(media));
                    text = Some(Json::Object(t));
                }
                continue;
            };
            count += 1;
            if preview.is_some() || !is_previewable(media, &item) {
                continue;
            }
            let mut enriched = item.as_object().cloned().unwrap_or_default();
            enriched.insert("nodeId".into(), json!(node));
            enriched.entry("mediaType").or_insert_with(|| json!(media));
            let enriched = Json::Object(enriched);
            if is_text(media, &item) {
                text_file.get_or_insert(enriched);
            } else if item.get("type").and_then(Json::as_str) == Some("output") {
                preview = Some(enriched);
            } else {
                fallback.get_or_insert(enriched);
            }
        }
    }
    (count, preview.or(fallback).or(text_file).or(text))
}

/// Outputs the frontend's expanded view would show.
fn previewable_count(outputs: &Json) -> usize {
    output_lists(outputs).map(|(_, media, items)| items.iter().filter_map(normalize_item).filter(|i| is_previewable(media, i)).count()).sum()
}

/// History outputs with bare 3D file names turned into file records and nulls dropped.
fn normalize_outputs(outputs: &Json) -> Json {
    let Some(nodes) = outputs.as_object() else { return outputs.clone() };
    let mut out = Map::new();
    for (node, o) in nodes {
        let Some(lists) = o.as_object() else {
            out.insert(node.clone(), o.clone());
            continue;
        };
        let mut n = Map::new();
        for (media, items) in lists {
            let v = match items.as_array() {
                Some(items) if media != "animated" => Json::Array(items.iter().filter(|i| !i.is_null()).map(|i| normalize_item(i).unwrap_or_else(|| i.clone())).collect()),
                _ => items.clone(),
            };
            n.insert(media.clone(), v);
        }
        out.insert(node.clone(), Json::Object(n));
    }
    Json::Object(out)
}
