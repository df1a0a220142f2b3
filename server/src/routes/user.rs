//! Users, settings and user data (saved workflows, `user.css`, ...): `/users`, `/settings`,
//! `/userdata`, `/v2/userdata`.
//!
//! Single-user mode only, as ComfyUI runs without `--multi-user`: every request is user
//! `default`, whose files live in `<user_dir>/default`, and the `Comfy-User` header is ignored.
//! Client paths go through [`crate::paths`] (lexical checks, then links resolved).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json as JsonBody, Router};
use serde_json::{json, Map, Value as Json};

use super::files::{blocking, check_announced, content_type, serve_file, too_large};
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::paths::{self, PathError};

/// The one user of single-user mode.
const USER: &str = "default";
const SETTINGS: &str = "comfy.settings.json";

/// The user's folder and the lock that keeps settings updates (read, merge, write) whole: the
/// frontend posts several settings at once.
pub struct Users {
    root: PathBuf,
    settings: Mutex<()>,
}

impl Users {
    pub fn new(user_dir: &Path) -> Users {
        Users { root: user_dir.join(USER), settings: Mutex::new(()) }
    }

    fn settings_file(&self) -> PathBuf {
        self.root.join(SETTINGS)
    }
}

type Ctx = Extension<Arc<Users>>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(get_users).post(post_users))
        .route("/settings", get(get_settings).post(post_settings))
        .route("/settings/{id}", get(get_setting).post(post_setting))
        .route("/userdata", get(list_userdata))
        .route("/v2/userdata", get(list_userdata_v2))
        .route("/userdata/{file}", get(get_userdata).post(post_userdata).delete(delete_userdata))
        .route("/userdata/{file}/move/{dest}", axum::routing::post(move_userdata))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!("{what}: {e}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// 403 for a path outside the user's folder, 400 for a malformed one (as ComfyUI answers).
fn path_error(e: PathError) -> ApiError {
    match e {
        PathError::Io { .. } => internal("cannot resolve the path", e),
        e if e.is_escape() => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        e => ApiError::bad_request(e.to_string()),
    }
}

/// A path parameter or query value: decoded once by the router, and once more if still
/// encoded (clients encode `/` as `%2F`, some twice), as ComfyUI does.
fn decoded(raw: &str) -> ApiResult<String> {
    if !raw.contains('%') {
        return Ok(raw.to_string());
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request(format!("{raw:?} does not decode to UTF-8 text")))
}

fn user_file(u: &Users, raw: &str) -> ApiResult<PathBuf> {
    paths::resolve_file(&u.root, &decoded(raw)?).map_err(path_error)
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `overwrite` is on unless it is exactly "false" (ComfyUI's default).
fn overwrite(q: &HashMap<String, String>) -> bool {
    q.get("overwrite").is_none_or(|v| v != "false")
}

fn millis(t: std::io::Result<SystemTime>) -> i64 {
    t.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn secs(t: std::io::Result<SystemTime>) -> f64 {
    t.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// ComfyUI's `created` is the platform's ctime: the inode change time on Unix.
#[cfg(unix)]
fn created_ms(md: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    md.ctime() * 1000 + md.ctime_nsec() / 1_000_000
}

#[cfg(not(unix))]
fn created_ms(md: &std::fs::Metadata) -> i64 {
    millis(md.created())
}

/// `{"path", "size", "modified", "created"}` (times in ms), the path relative to `base`.
fn file_info(path: &Path, base: &Path) -> Json {
    let md = std::fs::metadata(path).ok();
    json!({
        "path": paths::relative(base, path),
        "size": md.as_ref().map(|m| m.len()).unwrap_or(0),
        "modified": md.as_ref().map(|m| millis(m.modified())).unwrap_or(0),
        "created": md.as_ref().map(created_ms).unwrap_or(0),
    })
}

/// Writes `body` to `path` through a temporary file in its folder and a rename, so a reader
/// never sees half a file. Without `overwrite` an existing file wins: `Ok(false)`.
fn write_atomic(path: &Path, body: &[u8], overwrite: bool) -> std::io::Result<bool> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".userdata-").tempfile_in(dir)?;
    tmp.write_all(body)?;
    if overwrite {
        tmp.persist(path).map_err(|e| e.error)?;
        return Ok(true);
    }
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error),
    }
}

// ---- users and settings ----

async fn get_users(Extension(u): Ctx) -> JsonBody<Json> {
    JsonBody(json!({"storage": "server", "migrated": u.root.is_dir()}))
}

/// Users are only added in multi-user mode, which comfyrs does not have.
async fn post_users() -> ApiError {
    ApiError::bad_request("comfyrs serve runs in single-user mode (user \"default\"): users cannot be added")
}

fn read_settings(u: &Users) -> Map<String, Json> {
    let Ok(text) = std::fs::read(u.settings_file()) else { return Map::new() };
    match serde_json::from_slice(&text) {
        Ok(Json::Object(m)) => m,
        _ => {
            tracing::error!("the user settings file {} is not a JSON object; treating it as empty", u.settings_file().display());
            Map::new()
        }
    }
}

fn write_settings(u: &Users, settings: Map<String, Json>) -> ApiResult<()> {
    let text = serde_json::to_vec_pretty(&Json::Object(settings)).map_err(|e| internal("cannot encode the settings", e))?;
    write_atomic(&u.settings_file(), &text, true).map_err(|e| internal(&format!("cannot write {}", u.settings_file().display()), e))?;
    Ok(())
}

/// Read, change and write the settings under the lock.
async fn update_settings(u: Arc<Users>, change: impl FnOnce(&mut Map<String, Json>) + Send + 'static) -> ApiResult<()> {
    blocking(move || {
        let _held = u.settings.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = read_settings(&u);
        change(&mut s);
        write_settings(&u, s)
    })
    .await
}

async fn get_settings(Extension(u): Ctx) -> ApiResult<JsonBody<Json>> {
    blocking(move || Ok(JsonBody(Json::Object(read_settings(&u))))).await
}

async fn get_setting(Extension(u): Ctx, UrlPath(id): UrlPath<String>) -> ApiResult<JsonBody<Json>> {
    blocking(move || Ok(JsonBody(read_settings(&u).remove(&id).unwrap_or(Json::Null)))).await
}

async fn post_settings(Extension(u): Ctx, body: Bytes) -> ApiResult<StatusCode> {
    let new = super::body::object(&body)?;
    update_settings(u, move |s| s.extend(new)).await?;
    Ok(StatusCode::OK)
}

async fn post_setting(Extension(u): Ctx, UrlPath(id): UrlPath<String>, body: Bytes) -> ApiResult<StatusCode> {
    let value = super::body::json(&body)?;
    update_settings(u, move |s| {
        s.insert(id, value);
    })
    .await?;
    Ok(StatusCode::OK)
}

// ---- user data ----

/// Files (not folders) under `dir`, hidden names skipped as ComfyUI's glob skips them, sorted;
/// links are listed only when they resolve inside the user's folder, and linked folders are
/// not descended into (no loops).
fn walk_files(root: &Path, dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if paths::check_inside(root, &p).is_err() {
            continue;
        }
        let Ok(md) = std::fs::metadata(&p) else { continue };
        let linked = e.file_type().map(|t| t.is_symlink()).unwrap_or(true);
        if md.is_file() {
            out.push(p);
        } else if md.is_dir() && recurse && !linked {
            walk_files(root, &p, recurse, out);
        }
    }
}

async fn list_userdata(Extension(u): Ctx, Query(q): Query<HashMap<String, String>>) -> ApiResult<JsonBody<Json>> {
    let dir = q.get("dir").map(String::as_str).unwrap_or("");
    if dir.is_empty() {
        return Err(ApiError::bad_request("give the folder to list with ?dir=NAME (e.g. workflows)"));
    }
    let path = paths::resolve_dir(&u.root, &decoded(dir)?).map_err(path_error)?;
    let (recurse, full_info, split) = (flag(&q, "recurse"), flag(&q, "full_info"), flag(&q, "split"));
    let dir = dir.to_string();
    blocking(move || {
        if !path.exists() {
            return Err(ApiError::not_found(format!("no folder {dir:?} in the user data")));
        }
        let mut files = Vec::new();
        walk_files(&u.root, &path, recurse, &mut files);
        let out: Vec<Json> = files
            .iter()
            .map(|f| {
                if full_info {
                    return file_info(f, &path);
                }
                let rel = paths::relative(&path, f);
                if split {
                    let mut v = vec![json!(rel)];
                    v.extend(rel.split('/').map(|s| json!(s)));
                    return Json::Array(v);
                }
                json!(rel)
            })
            .collect();
        Ok(JsonBody(Json::Array(out)))
    })
    .await
}

/// Everything under `dir` (folders and files, hidden ones too, as `os.walk` lists them);
/// linked folders are listed but not descended into.
fn walk_all(root: &Path, dir: &Path, out: &mut Vec<Json>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if paths::check_inside(root, &p).is_err() {
            continue;
        }
        let Ok(md) = std::fs::metadata(&p) else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = paths::relative(root, &p);
        if md.is_dir() {
            out.push(json!({"name": name, "path": rel, "type": "directory"}));
            if !e.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
                walk_all(root, &p, out);
            }
        } else {
            out.push(json!({"name": name, "path": rel, "type": "file", "size": md.len(), "modified": secs(md.modified())}));
        }
    }
}

async fn list_userdata_v2(Extension(u): Ctx, Query(q): Query<HashMap<String, String>>) -> ApiResult<JsonBody<Json>> {
    let rel = decoded(q.get("path").map(String::as_str).unwrap_or(""))?;
    let target = paths::resolve_dir(&u.root, &rel).map_err(|e| match e {
        PathError::Io { .. } => path_error(e),
        e => ApiError::bad_request(e.to_string()),
    })?;
    blocking(move || {
        if !target.exists() {
            if target == u.root {
                // A new user has no folder yet: nothing saved.
                return Ok(JsonBody(json!([])));
            }
            return Err(ApiError::not_found(format!("no {rel:?} in the user data")));
        }
        if !target.is_dir() {
            return Err(ApiError::bad_request(format!("{rel:?} is a file, not a folder")));
        }
        let mut out = Vec::new();
        walk_all(&u.root, &target, &mut out);
        out.sort_by_cached_key(|e| (e["type"] != "directory", e["name"].as_str().unwrap_or("").to_lowercase()));
        Ok(JsonBody(Json::Array(out)))
    })
    .await
}

async fn get_userdata(Extension(u): Ctx, UrlPath(file): UrlPath<String>, req: Request) -> ApiResult<Response> {
    let path = user_file(&u, &file)?;
    if !path.is_file() {
        return Err(ApiError::not_found(format!("no user data file {file:?}")));
    }
    // User data is whatever clients stored: never rendered as a page in the app's origin.
    // Only the user's own stylesheet is served for use.
    let (ctype, disposition) = if path == u.root.join("user.css") {
        ("text/css".to_string(), "inline")
    } else {
        let t = content_type(&file);
        (if super::files::dangerous(&t) { "application/octet-stream".into() } else { t }, "attachment")
    };
    let extra = vec![
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_DISPOSITION, HeaderValue::from_static(disposition)),
    ];
    Ok(serve_file(&path, &ctype, req, extra).await)
}

/// The answer to a write or move: the path relative to the user's folder, or its file info.
fn written(u: &Users, path: &Path, full_info: bool) -> Json {
    if full_info {
        file_info(path, &u.root)
    } else {
        json!(paths::relative(&u.root, path))
    }
}

async fn post_userdata(
    State(s): State<AppState>,
    Extension(u): Ctx,
    UrlPath(file): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<JsonBody<Json>> {
    let limit = s.options.max_upload;
    // Before the body is read: a client told 413 early need not send it all.
    check_announced(req.headers(), limit)?;
    let body = Bytes::from_request(req, &s).await.map_err(|e: BytesRejection| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::new(e.status(), e.body_text())
        }
    })?;
    let path = user_file(&u, &file)?;
    let (overwrite, full_info) = (overwrite(&q), flag(&q, "full_info"));
    blocking(move || {
        match write_atomic(&path, &body, overwrite) {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::new(StatusCode::CONFLICT, format!("{file:?} already exists: save with overwrite=true to replace it"))),
            Err(e) => return Err(ApiError::bad_request(format!("cannot save {file:?}: {e}"))),
        }
        Ok(JsonBody(written(&u, &path, full_info)))
    })
    .await
}

async fn delete_userdata(Extension(u): Ctx, UrlPath(file): UrlPath<String>) -> ApiResult<StatusCode> {
    let path = user_file(&u, &file)?;
    blocking(move || {
        let md = std::fs::symlink_metadata(&path).map_err(|_| ApiError::not_found(format!("no user data file {file:?}")))?;
        if md.is_dir() {
            return Err(ApiError::bad_request(format!("{file:?} is a folder: delete the files in it")));
        }
        std::fs::remove_file(&path).map_err(|e| internal(&format!("cannot delete {file:?}"), e))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn move_userdata(
    Extension(u): Ctx,
    UrlPath((file, dest)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<JsonBody<Json>> {
    let source = user_file(&u, &file)?;
    let target = user_file(&u, &dest)?;
    let (overwrite, full_info) = (overwrite(&q), flag(&q, "full_info"));
    blocking(move || {
        if !source.is_file() {
            return Err(ApiError::not_found(format!("no user data file {file:?}")));
        }
        if !overwrite && std::fs::symlink_metadata(&target).is_ok() {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("{dest:?} already exists: move with overwrite=true to replace it")));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ApiError::bad_request(format!("cannot create the folder of {dest:?}: {e}")))?;
        }
        std::fs::rename(&source, &target).map_err(|e| ApiError::bad_request(format!("cannot move {file:?} to {dest:?}: {e}")))?;
        Ok(JsonBody(written(&u, &target, full_info)))
    })
    .await
}
