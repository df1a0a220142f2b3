use std::process::ExitCode;

use anyhow::Result;
use comfyrs_runtime::validate::{node_errors_json, validate};
use serde_json::json;

use crate::load::{load, LoadError};
use crate::ValidateArgs;

/// Prints ComfyUI's validation JSON; exit 0 when at least one output can run.
pub fn main(args: ValidateArgs) -> Result<ExitCode> {
    let reg = crate::natives::registry();
    let loaded = match load(&args.file, &reg, &args.sets) {
        Ok(l) => l,
        Err(LoadError::Io(e)) => return Err(e),
        Err(LoadError::Rejected(r)) => {
            println!("{}", serde_json::to_string_pretty(&r.to_json())?);
            return Ok(ExitCode::from(1));
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    match validate(loaded.prompt, &reg, None) {
        Ok(v) => {
            let outputs: Vec<&str> = v.outputs.iter().map(|&i| v.id(i)).collect();
            let doc = json!({ "error": null, "outputs": outputs, "node_errors": node_errors_json(&v.node_errors) });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            println!("{}", serde_json::to_string_pretty(&r.to_json())?);
            Ok(ExitCode::from(1))
        }
    }
}
