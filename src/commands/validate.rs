use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use comfyrs_runtime::validate::node_errors_json;
use serde_json::json;

use crate::config::Config;
use crate::engine::Engine;
use crate::load::{load, prepare, LoadError};
use crate::ValidateArgs;

/// Prints ComfyUI's validation JSON; exit 0 when at least one output can run.
pub fn main(args: ValidateArgs, config: &Config) -> Result<ExitCode> {
    let mut engine = Engine::new(config)?;
    let prepared = prepare(&mut engine, &args.file, &args.sets, None)?;
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    match prepared.result {
        Ok(v) => {
            let outputs: Vec<&str> = v.outputs.iter().map(|&i| v.id(i)).collect();
            let doc = json!({ "error": null, "outputs": outputs, "node_errors": node_errors_json(&v.node_errors) });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            writeln!(out, "{}", serde_json::to_string_pretty(&r.to_json())?)?;
            Ok(ExitCode::from(1))
        }
    }
}

/// Prints the API prompt the file runs as; exit 1 when it cannot be converted (ComfyUI's error
/// JSON on stdout, as `validate`). Node types that are not native take their schemas from the
/// record cache, else from the embedded ComfyUI, started for them.
pub fn convert(args: ValidateArgs, config: &Config) -> Result<ExitCode> {
    let mut engine = Engine::new(config)?;
    let mut out = std::io::stdout().lock();
    loop {
        match load(&args.file, &engine.registry, &args.sets) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
                writeln!(out, "{}", serde_json::to_string_pretty(&loaded.prompt.to_json())?)?;
                return Ok(ExitCode::SUCCESS);
            }
            Err(LoadError::Io(e)) => return Err(e),
            Err(LoadError::Rejected(r)) if r.error.kind == "missing_node_type" && engine.can_start_python() => {
                engine.load_python_nodes(None)?;
            }
            Err(LoadError::Rejected(r)) => {
                writeln!(out, "{}", serde_json::to_string_pretty(&r.to_json())?)?;
                return Ok(ExitCode::from(1));
            }
        }
    }
}
