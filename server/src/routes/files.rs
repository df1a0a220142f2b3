//! Files in the output, input and temp folders: `/view`, `/view_metadata/{folder}`,
//! `/upload/image`, `/upload/mask`, and `/internal/files/{type}`.
//!
//! Every client-supplied name goes through [`crate::paths`]: lexical checks, then the existing
//! part resolved so links cannot lead out of the folder.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonBody, Router};
use serde_json::{json, Value as Json};
use tower_http::services::ServeFile;

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::imaging;
use crate::options::ServeOptions;
use crate::paths::{self, PathError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/view", get(view))
        .route("/view_metadata/{folder}", get(view_metadata))
        .route("/upload/image", post(upload_image))
        .route("/upload/mask", post(upload_mask))
}

/// Served under `/internal` only (ComfyUI's internal routes have no `/api` copy).
pub fn internal() -> Router<AppState> {
    Router::new().route("/files/{kind}", get(list_files))
}

/// The three folders files are served from and uploaded to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Input,
    Output,
    Temp,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "input" => Some(Kind::Input),
            "output" => Some(Kind::Output),
            "temp" => Some(Kind::Temp),
            _ => None,
        }
    }

    fn parse_or_400(s: &str) -> ApiResult<Kind> {
        Kind::parse(s).ok_or_else(|| ApiError::bad_request(format!("unknown type {s:?}: use input, output or temp")))
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Input => "input",
            Kind::Output => "output",
            Kind::Temp => "temp",
        }
    }

    fn dir(self, o: &ServeOptions) -> &Path {
        match self {
            Kind::Input => &o.input_dir,
            Kind::Output => &o.output_dir,
            Kind::Temp => &o.temp_dir,
        }
    }

    /// `name [output]` → (`name`, Output): the annotation node widgets put on file names.
    fn annotated(name: &str) -> (&str, Option<Kind>) {
        for k in [Kind::Output, Kind::Input, Kind::Temp] {
            if let Some(rest) = name.strip_suffix(&format!("[{}]", k.name())) {
                return (rest.strip_suffix(' ').unwrap_or(rest), Some(k));
            }
        }
        (name, None)
    }
}

fn path_error(status: StatusCode, e: PathError) -> ApiError {
    if let PathError::Io { .. } = e {
        tracing::error!("{e}");
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    ApiError::new(status, e.to_string())
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!("{what}: {e}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// File system work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the file task failed: {e}")))?
}

/// Types a browser may run or render as a page (ComfyUI's list): served as downloads so an
/// uploaded or generated file cannot script the app's origin.
pub(super) fn dangerous(content_type: &str) -> bool {
    const LIST: [&str; 12] = [
        "text/html",
        "text/html-sandboxed",
        "application/xhtml+xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "text/css",
        "image/svg+xml",
        "application/xml",
        "text/xml",
        "message/rfc822",
    ];
    let t = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    LIST.contains(&t.as_str()) || t.ends_with("+xml") || t.ends_with("/xml")
}

/// A header-safe quoted file name (RFC 6266 quoted-string).
fn quoted(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A file from disk with ranges and caching headers, as `content_type`, plus `extra` headers.
pub(super) async fn serve_file(path: &Path, content_type: &str, req: Request, extra: Vec<(header::HeaderName, HeaderValue)>) -> Response {
    let mime: mime_guess::Mime = content_type.parse().unwrap_or(mime_guess::mime::APPLICATION_OCTET_STREAM);
    match ServeFile::new_with_mime(path, &mime).try_call(req).await {
        Ok(resp) => {
            let mut resp = resp.map(axum::body::Body::new);
            for (k, v) in extra {
                resp.headers_mut().insert(k, v);
            }
            resp
        }
        Err(e) => io_error(&format!("cannot read {}", path.display()), e).into_response(),
    }
}

/// The guessed content type of a file name (`application/octet-stream` when unknown).
pub(super) fn content_type(name: &str) -> String {
    mime_guess::from_path(name).first().map(|m| m.essence_str().to_string()).unwrap_or_else(|| "application/octet-stream".into())
}

async fn view(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>, req: Request) -> Response {
    match view_inner(&s, &q, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn view_inner(s: &AppState, q: &HashMap<String, String>, req: Request) -> ApiResult<Response> {
    let Some(filename) = q.get("filename") else {
        return Err(ApiError::not_found("give the file to view with ?filename=NAME"));
    };
    let (name, annotated) = Kind::annotated(filename);
    if name.is_empty() {
        return Err(ApiError::bad_request("the file name is empty"));
    }
    if name.starts_with('/') || name.contains("..") {
        return Err(ApiError::bad_request("file names must be relative and must not contain `..`"));
    }
    let kind = match annotated {
        Some(k) => k,
        None => Kind::parse_or_400(q.get("type").map(String::as_str).unwrap_or("output"))?,
    };
    let base = kind.dir(&s.options);
    let dir = match q.get("subfolder") {
        Some(sub) => paths::resolve_dir(base, sub).map_err(|e| path_error(StatusCode::FORBIDDEN, e))?,
        None => base.to_path_buf(),
    };
    // As ComfyUI: only the last segment of the name counts; folders go in `subfolder`.
    let name = name.rsplit('/').next().unwrap_or(name).to_string();
    let file = paths::file(&dir, &name).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
    paths::check_inside(base, &file).map_err(|e| path_error(StatusCode::FORBIDDEN, e))?;
    if !file.is_file() {
        return Err(ApiError::not_found(format!("no file {name:?} in the {} folder", kind.name())));
    }
    let disposition = |v: &str| (header::CONTENT_DISPOSITION, header_value(v));
    let channel = q.get("channel").cloned().unwrap_or_default();

    let encoded = if let Some(spec) = q.get("preview").cloned() {
        let (f, c) = (file.clone(), channel.clone());
        Some(blocking(move || imaging::preview(&f, &spec, &c).map_err(|e| ApiError::bad_request(e.to_string()))).await?)
    } else if channel == "rgb" || channel == "a" {
        let f = file.clone();
        let rgb = channel == "rgb";
        Some(blocking(move || if rgb { imaging::rgb(&f) } else { imaging::alpha(&f) }.map_err(|e| ApiError::bad_request(e.to_string()))).await?)
    } else {
        None
    };
    if let Some(enc) = encoded {
        let headers = [
            (header::CONTENT_TYPE, HeaderValue::from_static(enc.content_type)),
            disposition(&format!("filename=\"{}\"", quoted(&name))),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ];
        return Ok((headers, enc.bytes).into_response());
    }

    let mut ctype = content_type(&name);
    let mut disp = format!("filename=\"{}\"", quoted(&name));
    let mut extra = vec![(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"))];
    if dangerous(&ctype) {
        // The answer depends on a request header: caches must not replay one for the other.
        extra.push((header::VARY, HeaderValue::from_static("Sec-Fetch-Dest")));
        extra.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        // An SVG loaded by <img> runs no script; browsers set Sec-Fetch-Dest and pages cannot.
        let as_image = req.headers().get("sec-fetch-dest").is_some_and(|v| v == "image");
        if !(as_image && ctype == "image/svg+xml") {
            ctype = "application/octet-stream".into();
            disp = format!("attachment; {disp}");
        }
    }
    extra.push(disposition(&disp));
    Ok(serve_file(&file, &ctype, req, extra).await)
}

/// Largest safetensors header read (ComfyUI reads at most 1 MiB; metadata with embedded
/// previews can be larger).
const MAX_HEADER: u64 = 16 << 20;

async fn view_metadata(State(s): State<AppState>, UrlPath(folder): UrlPath<String>, Query(q): Query<HashMap<String, String>>) -> ApiResult<JsonBody<Json>> {
    let Some(filename) = q.get("filename").cloned() else {
        return Err(ApiError::not_found("give the model file with ?filename=NAME.safetensors"));
    };
    if !filename.ends_with(".safetensors") {
        return Err(ApiError::not_found("only .safetensors files carry metadata"));
    }
    let Some(f) = s.host.model_folders().into_iter().find(|f| f.name == folder) else {
        return Err(ApiError::not_found(format!("no model folder named {folder:?}")));
    };
    let found = f.paths.iter().find_map(|dir| paths::resolve_file(dir, &filename).ok().filter(|p| p.is_file()));
    let Some(path) = found else {
        return Err(ApiError::not_found(format!("no {filename:?} in the {folder} folders")));
    };
    let meta = blocking(move || Ok(safetensors_metadata(&path))).await?;
    meta.map(JsonBody).ok_or_else(|| ApiError::not_found(format!("{filename:?} has no __metadata__ in its header")))
}

/// The header's `__metadata__` object; only the header is read (an 8-byte little-endian
/// length, then that much JSON).
fn safetensors_metadata(path: &Path) -> Option<Json> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return None;
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf).ok()?;
    let mut header: Json = serde_json::from_slice(&buf).ok()?;
    match header.get_mut("__metadata__").map(Json::take) {
        Some(m @ Json::Object(_)) => Some(m),
        _ => None,
    }
}

async fn list_files(State(s): State<AppState>, UrlPath(kind): UrlPath<String>) -> Response {
    let Some(kind) = Kind::parse(&kind) else {
        return (StatusCode::BAD_REQUEST, JsonBody(json!({"error": "Invalid directory type"}))).into_response();
    };
    let dir = kind.dir(&s.options).to_path_buf();
    let listed = blocking(move || {
        let rd = std::fs::read_dir(&dir).map_err(|e| io_error(&format!("cannot list {}", dir.display()), e))?;
        let mut files: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let md = std::fs::metadata(e.path()).ok()?;
                (md.is_file() && !name.starts_with('.')).then(|| (md.modified().unwrap_or(std::time::UNIX_EPOCH), name))
            })
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Ok(files.into_iter().map(|(_, n)| format!("{n} [{}]", kind.name())).collect::<Vec<_>>())
    })
    .await;
    match listed {
        Ok(v) => JsonBody(json!(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The fields of an upload form.
#[derive(Default)]
struct Upload {
    image: Option<(String, Bytes)>,
    kind: Option<String>,
    subfolder: String,
    overwrite: bool,
    original_ref: Option<String>,
}

pub(super) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is larger than this server accepts ({limit} bytes): send a smaller file, or raise the limit with --max-upload or [server] max_upload"),
    )
}

fn multipart_error(e: MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(limit);
    }
    ApiError::new(e.status(), format!("cannot read the upload form: {}", e.body_text()))
}

/// A body announced (Content-Length) larger than the limit is refused before it is read.
pub(super) fn check_announced(headers: &HeaderMap, limit: usize) -> ApiResult<()> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    Ok(())
}

async fn read_upload(headers: &HeaderMap, form: Result<Multipart, MultipartRejection>, limit: usize) -> ApiResult<Upload> {
    check_announced(headers, limit)?;
    let mut form = form.map_err(|e| ApiError::bad_request(format!("send the upload as multipart/form-data: {}", e.body_text())))?;
    let mut up = Upload::default();
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(e, limit))? {
        let name = field.name().unwrap_or("").to_string();
        if name == "image" {
            let filename = field.file_name().unwrap_or("").to_string();
            let data = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
            up.image = Some((filename, data));
            continue;
        }
        let text = field.text().await.map_err(|e| multipart_error(e, limit))?;
        match name.as_str() {
            "type" => up.kind = Some(text),
            "subfolder" => up.subfolder = text,
            "overwrite" => up.overwrite = text == "true" || text == "1",
            "original_ref" => up.original_ref = Some(text),
            _ => {}
        }
    }
    Ok(up)
}

async fn upload_image(State(s): State<AppState>, headers: HeaderMap, form: Result<Multipart, MultipartRejection>) -> ApiResult<JsonBody<Json>> {
    let up = read_upload(&headers, form, s.options.max_upload).await?;
    store_upload(&s, up, None).await
}

async fn upload_mask(State(s): State<AppState>, headers: HeaderMap, form: Result<Multipart, MultipartRejection>) -> ApiResult<JsonBody<Json>> {
    let up = read_upload(&headers, form, s.options.max_upload).await?;
    let Some(r) = up.original_ref.as_deref() else {
        return Err(ApiError::bad_request("a mask upload needs original_ref: {\"filename\", \"subfolder\", \"type\"} of the image it applies to"));
    };
    let r: Json = serde_json::from_str(r).map_err(|e| ApiError::bad_request(format!("original_ref is not valid JSON: {e}")))?;
    let original = original_path(&s, &r)?;
    store_upload(&s, up, Some(original)).await
}

/// The image a mask applies to, as `/view` finds it (`type` defaults to output there).
fn original_path(s: &AppState, r: &Json) -> ApiResult<PathBuf> {
    let filename = r["filename"].as_str().unwrap_or("");
    let (name, annotated) = Kind::annotated(filename);
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return Err(ApiError::bad_request("original_ref.filename must be a relative file name without `..`"));
    }
    let kind = match annotated {
        Some(k) => k,
        None => Kind::parse_or_400(r["type"].as_str().unwrap_or("output"))?,
    };
    let base = kind.dir(&s.options);
    let dir = paths::resolve_dir(base, r["subfolder"].as_str().unwrap_or("")).map_err(|e| path_error(StatusCode::FORBIDDEN, e))?;
    let file = paths::file(&dir, name).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
    paths::check_inside(base, &file).map_err(|e| path_error(StatusCode::FORBIDDEN, e))?;
    if !file.is_file() {
        return Err(ApiError::not_found(format!("the image the mask applies to, {name:?}, is not in the {} folder", kind.name())));
    }
    Ok(file)
}

/// Writes the upload (or, for a mask, the original with the mask's alpha) and answers
/// `{"name", "subfolder", "type"}`.
async fn store_upload(s: &AppState, up: Upload, mask_of: Option<PathBuf>) -> ApiResult<JsonBody<Json>> {
    let Some((filename, data)) = up.image else {
        return Err(ApiError::bad_request("the upload form has no `image` file field"));
    };
    if filename.is_empty() {
        return Err(ApiError::bad_request("the uploaded `image` has no file name"));
    }
    if filename.contains('/') {
        return Err(ApiError::bad_request("the file name must not contain `/`: put folders in the `subfolder` field"));
    }
    let kind = Kind::parse_or_400(up.kind.as_deref().unwrap_or("input"))?;
    let base = kind.dir(&s.options).to_path_buf();
    let subfolder = up.subfolder;
    let overwrite = up.overwrite;
    let sub = subfolder.clone();
    let name = blocking(move || {
        let dir = paths::resolve_dir(&base, &sub).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
        let target = paths::resolve_file(&dir, &filename).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
        paths::check_inside(&base, &target).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
        let content = match &mask_of {
            Some(original) => imaging::apply_mask(original, &data).map_err(|e| ApiError::bad_request(e.to_string()))?,
            None => data.to_vec(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| match e.kind() {
            // The subfolder's fault: a name too long, or a file where a folder should be.
            ErrorKind::InvalidFilename | ErrorKind::InvalidInput | ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
                ApiError::bad_request(format!("cannot create the subfolder {sub:?}: {e}"))
            }
            _ => io_error(&format!("cannot create {}", dir.display()), e),
        })?;
        write_unique(&base, &dir, &filename, &content, &data, overwrite).map(|(name, _)| name)
    })
    .await?;
    Ok(JsonBody(json!({"name": name, "subfolder": subfolder, "type": kind.name()})))
}

/// A file a worker's prompt wrote (docs/scale-out.md, "Outputs"):
/// `POST /internal/comfyrs/files?prompt_id=&delivery=&type=output|temp&subfolder=&filename=`,
/// the bytes as the body. Kept under its name unless another file has it (then ` (1)`, ...);
/// answers `{"filename", "subfolder", "type"}` with the name the worker must report. Files of
/// a delivery whose outcome is not the one recorded are deleted when the outcome is recorded.
pub(super) async fn worker_file(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>, data: Bytes) -> ApiResult<JsonBody<Json>> {
    let Some(link) = s.broker.clone() else {
        return Err(ApiError::not_found("this server runs prompts itself; workers upload to a server started with --broker"));
    };
    let arg = |k: &str| q.get(k).map(String::as_str).ok_or_else(|| ApiError::bad_request(format!("the query needs {k}")));
    let prompt_id = arg("prompt_id")?.to_string();
    let delivery: i64 = arg("delivery")?.parse().map_err(|_| ApiError::bad_request("delivery must be an integer"))?;
    let kind = match Kind::parse_or_400(arg("type")?)? {
        Kind::Input => return Err(ApiError::bad_request("workers upload output or temp files, not input")),
        k => k,
    };
    let subfolder = q.get("subfolder").cloned().unwrap_or_default();
    let filename = arg("filename")?.to_string();
    if filename.is_empty() || filename.contains('/') {
        return Err(ApiError::bad_request("filename must be a file name without `/` (folders go in subfolder)"));
    }
    if !link.dispatched(&prompt_id) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("prompt {prompt_id} is not running on the workers (its outcome is recorded, or it is unknown)")));
    }
    let base = kind.dir(&s.options).to_path_buf();
    let sub = subfolder.clone();
    let store = s.clone();
    let name = blocking(move || {
        let dir = paths::resolve_dir(&base, &sub).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
        let target = paths::resolve_file(&dir, &filename).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
        paths::check_inside(&base, &target).map_err(|e| path_error(StatusCode::BAD_REQUEST, e))?;
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&format!("cannot create {}", dir.display()), e))?;
        let (name, created) = write_unique(&base, &dir, &filename, &data, &data, false)?;
        if created {
            let rel = paths::relative(&base, &dir.join(&name));
            store.store.add_upload(&prompt_id, delivery, kind.name(), &rel)?;
        }
        Ok(name)
    })
    .await?;
    Ok(JsonBody(json!({"filename": name, "subfolder": subfolder, "type": kind.name()})))
}

/// Deletes files workers uploaded that no history entry names (`(type, path)`, as
/// [`Store::settle_uploads`](crate::store::Store::settle_uploads) returns them).
pub(crate) fn discard_uploads(o: &ServeOptions, files: &[(String, String)]) {
    for (kind, rel) in files {
        let Some(k) = Kind::parse(kind) else { continue };
        let base = k.dir(o);
        let Ok(path) = paths::join(base, rel) else { continue };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed {} (a duplicate run's output)", path.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {} (a duplicate run's output): {e}", path.display()),
        }
    }
}

/// Most ` (n)` names tried before giving up.
const MAX_RENAMES: u32 = 10_000;

/// Writes `content` as `filename` in `dir` through a temporary file and a rename, so readers
/// never see half a file. Without `overwrite` an existing file is kept: one with the same bytes
/// as `uploaded` is reused, otherwise ` (1)`, ` (2)`, ... goes before the extension. Returns
/// the name written (or reused), and whether a new file was written.
fn write_unique(base: &Path, dir: &Path, filename: &str, content: &[u8], uploaded: &[u8], overwrite: bool) -> ApiResult<(String, bool)> {
    let io = |e: std::io::Error| match e.kind() {
        // The name, not the server: too long or not allowed by the file system.
        ErrorKind::InvalidFilename | ErrorKind::InvalidInput => ApiError::bad_request(format!("cannot save {filename:?} (choose a shorter or plainer name): {e}")),
        _ => io_error(&format!("cannot write into {}", dir.display()), e),
    };
    let mut tmp = tempfile::Builder::new().prefix(".upload-").tempfile_in(dir).map_err(io)?;
    tmp.write_all(content).map_err(io)?;
    let target = dir.join(filename);
    if overwrite {
        // A rename replaces a link itself, never what it points to.
        tmp.persist(&target).map_err(|e| io(e.error))?;
        return Ok((filename.to_string(), true));
    }
    let p = Path::new(filename);
    let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = p.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    for i in 0..MAX_RENAMES {
        let name = if i == 0 { filename.to_string() } else { format!("{stem} ({i}){ext}") };
        let path = dir.join(&name);
        if i > 0 && paths::check_inside(base, &path).is_err() {
            continue;
        }
        match tmp.persist_noclobber(&path) {
            Ok(_) => return Ok((name, true)),
            Err(e) if e.error.kind() == ErrorKind::AlreadyExists => {
                tmp = e.file;
                if std::fs::read(&path).is_ok_and(|b| b == uploaded) {
                    return Ok((name, false));
                }
            }
            Err(e) => return Err(io(e.error)),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("{filename:?} and {MAX_RENAMES} numbered variants already exist: upload under another name")))
}
