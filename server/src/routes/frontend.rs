//! The web frontend's side of the server: its files at `/` with ComfyUI's cache headers, and the
//! folders ComfyUI fills from optional Python packages (workflow templates, embedded docs),
//! answered as empty since comfyrs ships neither.

use axum::extract::{Path, Request};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json as JsonBody, Router};
use serde_json::json;
use tower_http::services::ServeDir;

use super::AppState;

/// Routes outside `/api`, as ComfyUI mounts them: only at their plain paths.
pub fn routes() -> Router<AppState> {
    Router::new().route("/templates/{*path}", get(template))
}

/// The core template index the frontend's template browser reads (`index.json`, its translations
/// `index.<lang>.json`, and `index_logo.json`): empty, which the frontend shows as "no templates"
/// (ComfyUI answers 404 when its templates package is missing, which the frontend logs as an
/// error). Every other template file is missing.
async fn template(Path(path): Path<String>) -> Response {
    let is_index = path.starts_with("index") && path.ends_with(".json") && !path.contains('/');
    match path.as_str() {
        "index_logo.json" => JsonBody(json!({})).into_response(),
        _ if is_index => JsonBody(json!([])).into_response(),
        _ => (StatusCode::NOT_FOUND, format!("no workflow template {path:?}: comfyrs ships no workflow templates")).into_response(),
    }
}

/// The web frontend's files when a root is configured; otherwise `/` says how to get one.
/// Missing files are 404 (not index.html: the frontend routes in the page, and a stylesheet or
/// module answered with HTML is a console error).
pub fn files(root: Option<&std::path::Path>) -> Router<AppState> {
    match root {
        Some(root) => {
            let index = root.join("index.html");
            let mut r = Router::new().route("/", get(move || index_page(index.clone())));
            // index.html links a `user.css` beside itself that the package does not ship: ComfyUI
            // answers 404, which the browser logs as an error on every load. An empty stylesheet
            // changes nothing else (a user's own lives in user data, /userdata/user.css).
            if !root.join("user.css").is_file() {
                r = r.route("/user.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], "") }));
            }
            r.fallback_service(ServeDir::new(root).append_index_html_on_directories(false))
        }
        None => Router::new().route("/", get(no_frontend)),
    }
}

/// `index.html`, never cached (a new frontend version must be picked up on reload), as ComfyUI.
async fn index_page(path: std::path::PathBuf) -> Response {
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store, must-revalidate"),
                (header::PRAGMA, "no-cache"),
                (header::EXPIRES, "0"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::NOT_FOUND, format!("cannot read the web frontend's {}: {e}", path.display())).into_response(),
    }
}

async fn no_frontend() -> Html<&'static str> {
    Html(
        "<!doctype html><title>comfyrs</title><h1>comfyrs serve</h1>\
         <p>The API is up (try <a href=\"/system_stats\">/system_stats</a>), but no web frontend is installed.</p>\
         <p>Install ComfyUI's frontend with <code>pip install comfyui-frontend-package</code> into the Python \
         comfyrs uses, or pass <code>--front-end-root DIR</code> (a folder holding its index.html).</p>",
    )
}

const IMAGE_EXTENSIONS: [&str; 9] = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"];

/// ComfyUI's cache policy on every response that does not set its own: scripts, stylesheets and
/// `index*.json` are never cached (they change with the frontend version under the same name),
/// images are cached a day (an hour when missing).
pub async fn cache_control(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut res = next.run(req).await;
    let file = path.rsplit('/').next().unwrap_or("");
    let policy = if path.ends_with(".js") || path.ends_with(".css") || (file.starts_with("index") && file.ends_with(".json")) {
        Some("no-store")
    } else if IMAGE_EXTENSIONS.iter().any(|e| path.to_ascii_lowercase().ends_with(e)) {
        match res.status().as_u16() {
            404 => Some("public, max-age=3600"),
            200..=206 | 301 | 308 => Some("public, max-age=86400"),
            302 | 303 | 307 => Some("no-cache"),
            _ => None,
        }
    } else {
        None
    };
    if let Some(p) = policy {
        res.headers_mut().entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static(p));
    }
    res
}
