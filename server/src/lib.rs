//! `comfyrs serve`: ComfyUI's HTTP and WebSocket API in front of a durable queue.
//!
//! The server knows the runtime (prompts, validation, the executor, events) and nothing of
//! WIDEN, libtorch or Python: the binary hands it a [`Host`] with the node registry and the
//! executors. Accepted prompts are written to SQLite before `POST /prompt` answers; one
//! executor thread per device takes them in priority order and writes the history entry and
//! the queue removal in one transaction, so a crash at any moment loses nothing and runs
//! nothing twice (docs/server.md).

pub mod broker;
mod control;
mod error;
mod guard;
mod host;
mod hub;
mod imaging;
mod job;
mod logs;
mod messages;
mod metrics;
mod options;
mod paths;
mod replace;
mod routes;
mod server;
mod store;
mod time;
mod webhook;
mod worker;

pub use error::ServeError;
pub use host::{Host, ModelFolder, SystemInfo};
pub use logs::{LogLayer, LogRing, DEFAULT_CAPACITY as LOG_CAPACITY};
pub use options::ServeOptions;
pub use server::{serve, wait_for_signal, Running};
pub use store::{Store, StoreError};
pub use webhook::WebhookPolicy;
