use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::ConfigCmdArgs;

/// Prints the configuration `Config::load` produced: TOML lines (a valid comfyrs.toml), or JSON.
pub fn main(args: ConfigCmdArgs, config: &Config) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&config.to_json())?)?;
    } else {
        for line in config.to_toml_lines() {
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
