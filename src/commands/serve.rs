//! `comfyrs serve`: ComfyUI's HTTP and WebSocket API on a durable queue.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use comfyrs_server::ServeOptions;
use figment::value::Value;

use crate::config::{default_state_dir, Config, ConfigArgs, PythonMode};
use crate::engine::{Engine, PythonSetup};
use crate::host::EngineHost;

#[derive(Args)]
#[command(after_help = "Open http://127.0.0.1:8188 in a browser for ComfyUI's web frontend; point ComfyUI clients at the same address.\n\
Stop with Ctrl-C (or SIGTERM): the running prompt is interrupted and runs again at the next start.")]
pub struct ServeArgs {
    /// The address to listen on [env: COMFYRS_LISTEN; default: 127.0.0.1; without a value: 0.0.0.0,
    /// every interface, as ComfyUI's --listen].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "0.0.0.0")]
    listen: Option<String>,
    /// The port [env: COMFYRS_PORT; default: 8188].
    #[arg(long)]
    port: Option<u16>,
    /// Queue, history and the default output/, input/, temp/, user/ folders
    /// [env: COMFYRS_STATE_DIR; default: ~/.local/share/comfyrs].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Where output nodes write (default: STATE_DIR/output).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Uploads and LoadImage's files (default: STATE_DIR/input).
    #[arg(long, value_name = "DIR")]
    input_dir: Option<PathBuf>,
    /// Previews (default: STATE_DIR/temp).
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
    /// The web frontend's files, a folder with index.html [env: COMFYRS_FRONT_END_ROOT;
    /// default: the comfyui-frontend-package in comfyrs's Python].
    #[arg(long, value_name = "DIR")]
    front_end_root: Option<PathBuf>,
    /// Require this bearer token on every request and the socket [env: COMFYRS_AUTH_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    auth_token: Option<String>,
    /// The largest upload or request body, e.g. 100MiB [env: COMFYRS_MAX_UPLOAD].
    #[arg(long, value_name = "SIZE")]
    max_upload: Option<String>,
    /// History entries kept [env: COMFYRS_MAX_HISTORY; default: 10000].
    #[arg(long, value_name = "N")]
    max_history: Option<usize>,
    /// Hand prompts to `comfyrs worker` processes through this Redis instead of running them
    /// here, e.g. redis://10.0.0.2:6379 [env: COMFYRS_BROKER].
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl ServeArgs {
    /// Moves this command's settings into the configuration's flag layer.
    pub fn settings_to_config(&mut self) {
        let path = |p: &PathBuf| Value::from(p.to_string_lossy().into_owned());
        let mut flags: Vec<(&'static str, &'static str, Value)> = Vec::new();
        if let Some(v) = &self.listen {
            flags.push(("--listen", "server.listen", Value::from(v.clone())));
        }
        if let Some(v) = self.port {
            flags.push(("--port", "server.port", Value::from(v as u64)));
        }
        for (flag, key, v) in [
            ("--state-dir", "server.state_dir", &self.state_dir),
            ("--output-dir", "server.output_dir", &self.output_dir),
            ("--input-dir", "server.input_dir", &self.input_dir),
            ("--temp-dir", "server.temp_dir", &self.temp_dir),
            ("--front-end-root", "server.front_end_root", &self.front_end_root),
        ] {
            if let Some(p) = v {
                flags.push((flag, key, path(p)));
            }
        }
        if let Some(v) = &self.auth_token {
            flags.push(("--auth-token", "server.auth_token", Value::from(v.clone())));
        }
        if let Some(v) = &self.max_upload {
            flags.push(("--max-upload", "server.max_upload", Value::from(v.clone())));
        }
        if let Some(v) = self.max_history {
            flags.push(("--max-history", "server.max_history", Value::from(v as u64)));
        }
        if let Some(v) = &self.broker {
            flags.push(("--broker", "broker.url", Value::from(v.clone())));
        }
        self.config.command_flags = flags;
    }
}

/// The options the server crate takes, from the configuration.
pub fn options(config: &Config) -> ServeOptions {
    let s = &config.server;
    let state = s.state_dir.clone().unwrap_or_else(default_state_dir);
    let mut o = ServeOptions::new(&state);
    o.listen = s.listen;
    o.port = s.port;
    o.output_dir = s.output_dir.clone().unwrap_or(o.output_dir);
    o.input_dir = s.input_dir.clone().unwrap_or(o.input_dir);
    o.temp_dir = s.temp_dir.clone().unwrap_or(o.temp_dir);
    o.front_end_root = s.front_end_root.clone().or_else(installed_frontend);
    o.auth_token = s.auth_token.clone();
    o.max_upload = s.max_upload as usize;
    o.max_history = s.max_history;
    o.broker = broker_settings(config);
    o
}

/// The server's and the workers' view of the broker settings (the namespace was checked when the
/// configuration was read).
pub fn broker_settings(config: &Config) -> Option<comfyrs_server::broker::BrokerSettings> {
    let url = config.broker.url.as_deref()?;
    let mut b = comfyrs_server::broker::BrokerSettings::new(url);
    b.namespace = comfyrs_server::broker::Namespace::new(&config.broker.namespace).unwrap_or_default();
    b.affinity_wait = std::time::Duration::from_secs_f64(config.broker.affinity_wait);
    Some(b)
}

/// The static folder of the comfyui-frontend-package in comfyrs's Python venv.
fn installed_frontend() -> Option<PathBuf> {
    let venv = crate::venv::dir()?;
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|e| e.path().join("site-packages").join("comfyui_frontend_package").join("static"))
        .find(|p| p.join("index.html").is_file())
}

pub fn main(args: ServeArgs, config: &Config, logs: Arc<comfyrs_server::LogRing>) -> Result<ExitCode> {
    let mut options = options(config);
    options.logs = logs;
    let mut engine = Engine::without_python(config)?;
    engine.warm_up_device();
    let t = std::time::Instant::now();
    let deferred = start_python(&mut engine, config, &options)?;
    let launcher = if deferred { engine.launcher() } else { None };
    let host = Arc::new(EngineHost::new(engine)?);
    if !deferred && config.python != PythonMode::Never && crate::engine::python_versions().is_some() {
        eprintln!("ComfyUI nodes ready in {:.1} s", t.elapsed().as_secs_f64());
    }
    drop(args);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("comfyrs-http").build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let front = options.front_end_root.clone();
        let state = options.state_dir.clone();
        let running = comfyrs_server::serve(options, host).await?;
        let url = format!("http://{}", running.addr);
        eprintln!("comfyrs serve: listening on {url} (state in {})", state.display());
        if let Some(b) = config.broker.url_for_display() {
            eprintln!("prompts go to the workers through {b}: start them with `comfyrs worker --broker {b} --server {url}`");
        }
        match front {
            Some(f) => eprintln!("web frontend: {url}/ (from {})", f.display()),
            None => eprintln!("no web frontend installed (pip install comfyui-frontend-package, or --front-end-root DIR); the API is up"),
        }
        if let Some(l) = launcher {
            warm_up(l, t);
        }
        running.until_signal().await;
        eprintln!("comfyrs serve: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the embedded ComfyUI in the background once the server listens: prompts that reach a
/// Python node wait for it there (the launcher starts it once, whoever asks first).
#[cfg(feature = "python")]
fn warm_up(launcher: Arc<crate::engine::Launcher>, t: std::time::Instant) {
    let spawned = std::thread::Builder::new().name("comfyrs-python-start".into()).spawn(move || match launcher.get() {
        Ok(_) => eprintln!("ComfyUI nodes ready in {:.1} s", t.elapsed().as_secs_f64()),
        Err(e) => eprintln!("warning: {e}; prompts with Python nodes fail until comfyrs serve is restarted"),
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the embedded ComfyUI in the background ({e}); it starts with the first Python node");
    }
}

#[cfg(not(feature = "python"))]
fn warm_up(_launcher: Arc<crate::engine::Launcher>, _t: std::time::Instant) {}

/// A server lists every node up front (the frontend's node library). With a fresh record cache
/// the Python classes come from it and Python starts after the server listens (returns true);
/// otherwise Python starts now, unless `python = never`; with `auto` a ComfyUI that fails to
/// start leaves the native nodes.
fn start_python(engine: &mut Engine, config: &Config, o: &ServeOptions) -> Result<bool> {
    if config.python == PythonMode::Never {
        return Ok(false);
    }
    let dirs = PythonSetup { output: Some(o.output_dir.clone()), input: Some(o.input_dir.clone()), temp: Some(o.temp_dir.clone()), previews: true };
    for d in [&o.output_dir, &o.input_dir, &o.temp_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", Path::new(d).display()))?;
    }
    if engine.use_record_cache(&dirs) {
        return Ok(true);
    }
    match engine.start_python_in(&dirs) {
        Ok(()) => Ok(false),
        Err(e) if config.python == PythonMode::Auto => {
            eprintln!("warning: {e:#}; serving the native nodes only");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
