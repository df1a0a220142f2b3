//! `comfyrs worker`: runs prompts a `comfyrs serve --broker` hands out through Redis, on this
//! machine's device, and reports each outcome to the server (docs/scale-out.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use figment::value::Value;

use crate::config::{default_state_dir, Config, ConfigArgs, PythonMode};
use crate::engine::{Engine, PythonSetup};
use crate::host::EngineHost;

#[derive(Args)]
#[command(after_help = "One worker per GPU (--device cuda:N), on any number of hosts, all with the server's --broker.\n\
Stop with Ctrl-C (or SIGTERM): the prompt running then is left to another worker.")]
pub struct WorkerArgs {
    /// The Redis the server hands prompts to, e.g. redis://10.0.0.2:6379 [env: COMFYRS_BROKER].
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// The server this worker reports outcomes to, e.g. http://10.0.0.5:8188 [env: COMFYRS_SERVER].
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The server's bearer token, when it requires one [env: COMFYRS_AUTH_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    auth_token: Option<String>,
    /// This worker's name among the workers [default: HOSTNAME-DEVICE-PID].
    #[arg(long)]
    name: Option<String>,
    /// Where this worker's output nodes write before their files go to the server (temporary
    /// files: beside it, with "-temp" added) [default: STATE_DIR/worker-output].
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// How long a claimed prompt stays this worker's without a renewal (renewed every third of
    /// it); a prompt of a worker that died is taken over after this long [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = lease_seconds)]
    lease: Option<std::time::Duration>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

fn lease_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.3..=86_400.0).contains(&v) => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a lease: give seconds between 0.3 and 86400, e.g. 30")),
    }
}

impl WorkerArgs {
    /// Moves this command's settings into the configuration's flag layer.
    pub fn settings_to_config(&mut self) {
        let mut flags: Vec<(&'static str, &'static str, Value)> = Vec::new();
        for (flag, key, v) in [("--broker", "broker.url", &self.broker), ("--server", "broker.server", &self.server), ("--auth-token", "server.auth_token", &self.auth_token)] {
            if let Some(v) = v {
                flags.push((flag, key, Value::from(v.clone())));
            }
        }
        self.config.command_flags = flags;
    }
}

pub fn main(args: WorkerArgs, config: &Config) -> Result<ExitCode> {
    let broker = crate::commands::serve::broker_settings(config)
        .context("comfyrs worker needs --broker redis://HOST:PORT (the Redis the server was started with)")?;
    let server = config.broker.server.clone().context("comfyrs worker needs --server http://HOST:PORT (the server it reports to)")?;
    let name = args.name.clone().unwrap_or_else(|| default_name(config));
    let output_dir = args.output_dir.clone().unwrap_or_else(|| config.server.state_dir.clone().unwrap_or_else(default_state_dir).join("worker-output"));
    let temp_dir = output_dir.with_file_name(format!("{}-temp", output_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "worker-output".into())));
    for d in [&output_dir, &temp_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut engine = Engine::without_python(config)?;
    engine.warm_up_device();
    if config.python != PythonMode::Never && engine.can_start_python() {
        let dirs = PythonSetup { output: Some(output_dir.clone()), temp: Some(temp_dir.clone()), previews: true, ..PythonSetup::default() };
        match engine.start_python_in(&dirs) {
            Ok(()) => {}
            Err(e) if config.python == PythonMode::Auto => eprintln!("warning: {e:#}; this worker runs native nodes only"),
            Err(e) => return Err(e),
        }
    }
    let host = Arc::new(EngineHost::new(engine)?);
    let opts = comfyrs_server::broker::WorkerOptions {
        broker,
        name: name.clone(),
        server,
        auth_token: config.server.auth_token.clone(),
        lease: args.lease.unwrap_or(comfyrs_server::broker::DEFAULT_LEASE),
        output_dir,
        temp_dir,
        device: device_name(config),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("comfyrs-worker").build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            comfyrs_server::wait_for_signal().await;
            eprintln!("comfyrs worker: stopping (the prompt running now is left to another worker)");
            let _ = stop.send(true);
        });
        eprintln!("comfyrs worker {name}: taking prompts from {}", config.broker.url_for_display().unwrap_or_default());
        comfyrs_server::broker::run_worker(opts, host, rx).await;
    });
    eprintln!("comfyrs worker: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `HOSTNAME-DEVICE-PID`: unique among the workers of a deployment.
fn default_name(config: &Config) -> String {
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{}", device_name(config).replace(':', ""), std::process::id())
}

/// `cpu` or `cuda:N`.
fn device_name(config: &Config) -> String {
    match config.device.resolve() {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}
