//! What `comfyrs serve` is told at start.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::logs::LogRing;
use crate::webhook::WebhookPolicy;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: IpAddr,
    /// 0 picks a free port (tests); the bound address is in [`crate::Running::addr`].
    pub port: u16,
    /// Holds `comfyrs.sqlite` (queue and history); the default home of the folders below.
    pub state_dir: PathBuf,
    pub output_dir: PathBuf,
    pub input_dir: PathBuf,
    pub temp_dir: PathBuf,
    /// Per-user settings and saved workflows (`/userdata`, `/settings`).
    pub user_dir: PathBuf,
    /// The web frontend's files, served at `/`; none: `/` explains how to get it.
    pub front_end_root: Option<PathBuf>,
    /// When set, every route and the socket require it (`Authorization: Bearer ...`).
    pub auth_token: Option<String>,
    /// Largest accepted upload and request body, in bytes (ComfyUI: 100 MB).
    pub max_upload: usize,
    /// History entries kept on disk; older ones are dropped (ComfyUI keeps 10,000 in memory).
    pub max_history: usize,
    /// The recent log `/internal/logs` shows; the binary installs its layer (a fresh ring, which
    /// nothing fills, by default).
    pub logs: Arc<LogRing>,
    /// Retries of webhook deliveries (`extra_data.webhook`).
    pub webhooks: WebhookPolicy,
    /// Hand prompts to workers through Redis instead of running them here (docs/scale-out.md).
    pub broker: Option<crate::broker::BrokerSettings>,
}

impl ServeOptions {
    /// Everything under one state directory, loopback on ComfyUI's port.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        ServeOptions {
            listen: IpAddr::from([127, 0, 0, 1]),
            port: 8188,
            output_dir: state_dir.join("output"),
            input_dir: state_dir.join("input"),
            temp_dir: state_dir.join("temp"),
            user_dir: state_dir.join("user"),
            state_dir,
            front_end_root: None,
            auth_token: None,
            max_upload: 100 * 1024 * 1024,
            max_history: 10_000,
            logs: LogRing::new(crate::logs::DEFAULT_CAPACITY),
            webhooks: WebhookPolicy::default(),
            broker: None,
        }
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir.join("comfyrs.sqlite")
    }
}
