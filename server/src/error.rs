//! Errors: the ones that stop the server from starting, and the ones a route answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source} (is another server on that port? pick another with --port)")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start the executor thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot use the broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
}

/// A route's failure: a status and a JSON body (`{"error": ...}` unless the route's contract
/// says otherwise).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Json,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, body: json!({"error": message.into()}) }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
