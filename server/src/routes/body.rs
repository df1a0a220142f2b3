//! Request bodies as ComfyUI reads them: JSON whatever the Content-Type says (clients send
//! `text/plain` or nothing), and an empty body where one is optional.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;

use crate::error::{ApiError, ApiResult};

/// The body as JSON; an empty body is `null`.
pub fn json(body: &Bytes) -> ApiResult<Json> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Json::Null);
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// The body as a JSON object; `null` counts as empty.
pub fn object(body: &Bytes) -> ApiResult<serde_json::Map<String, Json>> {
    match json(body)? {
        Json::Object(m) => Ok(m),
        Json::Null => Ok(Default::default()),
        other => Err(ApiError::bad_request(format!("the request body must be a JSON object, not {}", comfyrs_runtime::prompt::json_kind(&other)))),
    }
}

/// The `delete` list of `POST /queue` and `POST /history`: prompt ids; absent or null is none.
pub fn ids(v: Option<&Json>) -> ApiResult<Vec<String>> {
    let wrong = || ApiError::bad_request("delete must be a list of prompt ids (strings)");
    match v {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(wrong)).collect(),
        Some(_) => Err(wrong()),
    }
}

/// A body over the size limit is refused by the extractors with a plain-text 413; this says,
/// as JSON like every other error, what the limit is and how to raise it.
pub async fn explain_too_large(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let plain = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/plain"));
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE || !plain {
        return resp;
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than this server accepts ({limit} bytes); raise the limit with --max-upload or [server] max_upload"),
    )
    .into_response()
}
