use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::config::Config;
use crate::NodesArgs;

pub fn main(args: NodesArgs, config: &Config) -> Result<ExitCode> {
    let mut engine = crate::engine::Engine::new(config)?;
    // The full list includes ComfyUI's Python nodes unless Python is off; one native class
    // needs no Python.
    let native = args.class.as_deref().is_some_and(|c| engine.registry.get(c).is_some());
    // A fresh record cache lists the Python classes without starting Python (--refresh starts it).
    if args.refresh && config.python != crate::config::PythonMode::Never {
        engine.start_python(None)?;
    } else if !native && engine.can_start_python() {
        engine.load_python_nodes(None)?;
    }
    let reg = &engine.registry;
    let mut out = std::io::stdout().lock();
    if args.list {
        for name in reg.names() {
            writeln!(out, "{name}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let doc = match &args.class {
        None => reg.object_info(),
        Some(class) => match reg.get(class) {
            Some(c) => serde_json::json!({ class.clone(): c.schema().to_object_info() }),
            None => {
                let hint = reg.suggest(class);
                if hint.is_empty() {
                    bail!("no node type '{class}'; `comfyrs nodes --list` shows the {} known types", reg.len());
                }
                bail!("no node type '{class}'; did you mean {}?", hint.join(", "));
            }
        },
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(ExitCode::SUCCESS)
}
