//! `comfyrs workers`: the workers of a deployment as their heartbeats describe them
//! (docs/scale-out.md, "Observability"), read straight from the broker.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use figment::value::Value;

use crate::config::{Config, ConfigArgs};

#[derive(Args)]
pub struct WorkersArgs {
    /// The Redis the server hands prompts to, e.g. redis://10.0.0.2:6379 [env: COMFYRS_BROKER].
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// Print the heartbeats as JSON (one array) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl WorkersArgs {
    /// Moves this command's settings into the configuration's flag layer.
    pub fn settings_to_config(&mut self) {
        if let Some(url) = &self.broker {
            self.config.command_flags = vec![("--broker", "broker.url", Value::from(url.clone()))];
        }
    }
}

pub fn main(args: WorkersArgs, config: &Config) -> Result<ExitCode> {
    let broker = crate::commands::serve::broker_settings(config)
        .context("comfyrs workers needs --broker redis://HOST:PORT (the Redis the server and its workers use)")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let workers = rt.block_on(async {
        let roster = comfyrs_server::broker::Roster::connect(&broker.url, &broker.namespace).await?;
        roster.list().await
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&workers)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if workers.is_empty() {
        writeln!(out, "no workers (none has written a heartbeat in the last {} s)", (comfyrs_server::broker::HEARTBEAT * 3).as_secs())?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let rows: Vec<[String; 7]> = workers
        .iter()
        .map(|w| {
            [
                w.name.clone(),
                w.device.clone(),
                format!("{}:{}", w.host, w.pid),
                w.prompt.as_ref().map(|p| format!("running {p}")).unwrap_or_else(|| "idle".into()),
                w.done.to_string(),
                w.warm.len().to_string(),
                crate::progress::fmt_secs(((now - w.started).max(0) as f64) / 1000.0),
            ]
        })
        .collect();
    let head = ["NAME", "DEVICE", "HOST:PID", "STATE", "DONE", "WARM", "UP"];
    let widths: Vec<usize> = (0..head.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string();
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(ExitCode::SUCCESS)
}
