//! `GET /metrics`: the server's metrics in Prometheus' text format (docs/server.md, "Metrics").
//! It passes the same guard as every route: with an access token, the scraper sends it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::error::{ApiError, ApiResult};

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let workers = s.broker.as_ref().map(|l| l.workers());
    let text = tokio::task::spawn_blocking(move || s.metrics.render(&s.store, workers.as_deref()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}
