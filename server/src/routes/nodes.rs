//! Node definitions and model lists: `/object_info`, `/models`, `/experiment/models`,
//! `/embeddings`.

use std::path::Path;
use std::time::UNIX_EPOCH;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Json as JsonBody, Router};
use serde_json::{json, Map, Value as Json};

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::host::ModelFolder;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_one))
        .route("/embeddings", get(embeddings))
        .route("/models", get(model_kinds))
        .route("/models/{folder}", get(models))
        .route("/experiment/models", get(experiment_kinds))
        .route("/experiment/models/{folder}", get(experiment_models))
}

async fn object_info(State(s): State<AppState>) -> JsonBody<Json> {
    let reg = s.registry.clone();
    // Schemas of model-loading nodes list the model folders: off the async threads.
    JsonBody(tokio::task::spawn_blocking(move || reg.object_info()).await.unwrap_or_else(|_| json!({})))
}

/// An unknown class answers 200 with `{}` (clients wait forever on anything else).
async fn object_info_one(State(s): State<AppState>, UrlPath(class): UrlPath<String>) -> JsonBody<Json> {
    let mut m = Map::new();
    if let Some(c) = s.registry.get(&class) {
        m.insert(class, c.schema().to_object_info());
    }
    JsonBody(Json::Object(m))
}

/// ComfyUI leaves these out of the model lists: they are not model folders.
const NOT_MODELS: [&str; 2] = ["configs", "custom_nodes"];

fn folders(s: &AppState) -> Vec<ModelFolder> {
    s.host.model_folders().into_iter().filter(|f| !NOT_MODELS.contains(&f.name.as_str())).collect()
}

fn folder(s: &AppState, name: &str) -> ApiResult<ModelFolder> {
    folders(s).into_iter().find(|f| f.name == name).ok_or_else(|| ApiError::not_found(format!("no model folder named {name:?}")))
}

/// A file found under one of a folder kind's directories.
pub struct Found {
    /// Relative to its directory, with forward slashes.
    pub name: String,
    pub path_index: usize,
    pub path: std::path::PathBuf,
}

/// Every file with an allowed extension under the folder's directories, recursively, sorted
/// by name; a name found in an earlier directory hides the same name in a later one.
pub fn list_files(f: &ModelFolder) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, dir) in f.paths.iter().enumerate() {
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
                if !f.extensions.is_empty() && !f.extensions.iter().any(|x| name.ends_with(&x.to_lowercase())) {
                    continue;
                }
                let Ok(rel) = p.strip_prefix(dir) else { continue };
                let rel = rel.to_string_lossy().replace('\\', "/");
                if seen.insert(rel.clone()) {
                    out.push(Found { name: rel, path_index: i, path: p });
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

async fn model_kinds(State(s): State<AppState>) -> JsonBody<Json> {
    JsonBody(json!(folders(&s).iter().map(|f| f.name.clone()).collect::<Vec<_>>()))
}

async fn models(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult<JsonBody<Json>> {
    let f = folder(&s, &name)?;
    Ok(JsonBody(json!(list_files(&f).into_iter().map(|x| x.name).collect::<Vec<_>>())))
}

async fn experiment_kinds(State(s): State<AppState>) -> JsonBody<Json> {
    let v: Vec<Json> = folders(&s)
        .iter()
        .map(|f| json!({"name": f.name, "folders": f.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "extensions": f.extensions}))
        .collect();
    JsonBody(json!(v))
}

fn secs(t: std::io::Result<std::time::SystemTime>) -> f64 {
    t.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

async fn experiment_models(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult<JsonBody<Json>> {
    let f = folder(&s, &name)?;
    let v: Vec<Json> = list_files(&f)
        .into_iter()
        .map(|x| {
            let md = std::fs::metadata(&x.path).ok();
            json!({
                "name": x.name, "pathIndex": x.path_index,
                "modified": md.as_ref().map(|m| secs(m.modified())).unwrap_or(0.0),
                "created": md.as_ref().map(|m| secs(m.created())).unwrap_or(0.0),
                "size": md.as_ref().map(|m| m.len()).unwrap_or(0),
            })
        })
        .collect();
    Ok(JsonBody(json!(v)))
}

async fn embeddings(State(s): State<AppState>) -> JsonBody<Json> {
    let names: Vec<String> = folders(&s)
        .iter()
        .filter(|f| f.name == "embeddings")
        .flat_map(list_files)
        .map(|x| Path::new(&x.name).with_extension("").to_string_lossy().replace('\\', "/"))
        .collect();
    JsonBody(json!(names))
}
