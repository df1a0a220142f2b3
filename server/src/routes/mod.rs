//! The route table. Every route is served at its plain path and under `/api`, as ComfyUI
//! serves them (so `/api/jobs` also answers at `/api/api/jobs`, and not at `/jobs`).

mod body;
mod files;
mod frontend;
mod history;
mod internal;
mod jobs;
mod metrics;
mod nodes;
mod prompt;
mod system;
mod user;
mod ws;

pub(crate) use files::discard_uploads;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};

use crate::server::Shared;

pub type AppState = Arc<Shared>;

/// The routes ComfyUI registers on its main table, without prefix.
fn api() -> Router<AppState> {
    Router::new().merge(prompt::routes()).merge(history::routes()).merge(nodes::routes()).merge(system::routes()).merge(ws::routes()).merge(files::routes()).merge(user::routes()).merge(jobs::routes()).merge(metrics::routes())
}

/// ComfyUI's internal routes: served under `/internal` only, never under `/api`.
fn internal() -> Router<AppState> {
    Router::new().merge(files::internal()).merge(internal::routes())
}

pub fn app(shared: Arc<Shared>) -> Router {
    let limit = shared.options.max_upload;
    let front = shared.options.front_end_root.clone();
    Router::new()
        .merge(api())
        .nest("/api", api())
        .nest("/internal", internal())
        .merge(frontend::routes())
        .merge(frontend::files(front.as_deref()))
        .layer(Extension(Arc::new(user::Users::new(&shared.options.user_dir))))
        .layer(axum::middleware::from_fn(frontend::cache_control))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limit, body::explain_too_large))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), crate::guard::guard))
        .with_state(shared)
}
