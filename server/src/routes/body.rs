//! Request bodies as ComfyUI reads them: JSON whatever the Content-Type says (clients send
//! `text/plain` or nothing), and an empty body where one is optional.

use axum::body::Bytes;
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
