use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use comfyrs_runtime::executor::{NodeStatus, RunOptions, RunReport};
use comfyrs_runtime::validate::{node_errors_json, render_node_errors, Rejection};
use serde_json::{json, Value as Json};

use crate::config::Config;
use crate::engine::Engine;
use crate::load::prepare;
use crate::progress::{fmt_secs, Progress};
use crate::RunArgs;

enum Outcome {
    Ran(RunReport, Json),
    Rejected(Rejection),
}

pub fn main(args: RunArgs, config: &Config, quiet: bool) -> Result<ExitCode> {
    let mut engine = Engine::new(config)?;
    // Workflows with WIDEN nodes merge on the device: its start-up overlaps the rest of the
    // preparation.
    if args.files.iter().any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("\"WIDEN"))) {
        engine.warm_up_device();
    }
    let mut exec = engine.executor(config.cache.mode);
    install_ctrl_c(exec.interrupt.clone());
    let progress = Progress::new(quiet || args.json);
    let mut results = Vec::new();
    let mut interrupted = false;
    for (n, file) in args.files.iter().enumerate() {
        if interrupted {
            break;
        }
        let name = file.display().to_string();
        let prepared = prepare(&mut engine, file, &args.sets, Some(&args.output_dir))?;
        for w in &prepared.warnings {
            eprintln!("warning: {name}: {w}");
        }
        let outcome = match prepared.result {
            Err(r) => Outcome::Rejected(r),
            Ok(v) => {
                let node_errors = node_errors_json(&v.node_errors);
                if !v.node_errors.is_empty() && !args.json {
                    eprintln!("warning: {name}: some outputs failed validation and will not run:{}", render_node_errors(&v.node_errors));
                }
                let opts = RunOptions {
                    prompt_id: format!("{}-{}", n + 1, file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()),
                    extra_pnginfo: prepared.extra_pnginfo,
                    output_dir: args.output_dir.clone(),
                    events: &progress,
                    extra_data: None,
                    registry: Some(&engine.registry),
                };
                let report = exec.run(&v, &opts);
                interrupted = report.interrupted;
                Outcome::Ran(report, node_errors)
            }
        };
        if !args.json {
            print_human(&name, &outcome, quiet)?;
        }
        // What every cache holds against the one memory budget, after each workflow.
        tracing::debug!("{}", engine.budget.usage().summary());
        results.push((name, outcome));
    }
    if args.json {
        let files: Vec<Json> = results.iter().map(|(name, o)| to_json(name, o)).collect();
        let memory = serde_json::to_value(engine.budget.usage())?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&json!({ "files": files, "memory": memory }))?)?;
    }
    let ok = results.iter().all(|(_, o)| matches!(o, Outcome::Ran(r, _) if r.success()));
    Ok(if interrupted {
        ExitCode::from(130)
    } else if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn install_ctrl_c(flag: comfyrs_runtime::interrupt::Interrupt) {
    // Owned by the handler: the first press asks for a stop, the second quits.
    let presses = AtomicUsize::new(0);
    let _ = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupt: stopping after the running node finishes (Ctrl-C again to quit now)");
            flag.set();
        } else {
            eprintln!("\ninterrupt: quitting now");
            std::process::exit(130);
        }
    });
}

/// The summary and errors on stderr; the outputs' UI values on stdout.
fn print_human(name: &str, outcome: &Outcome, quiet: bool) -> std::io::Result<()> {
    match outcome {
        Outcome::Rejected(r) => eprintln!("{name}: rejected: {}", r.render()),
        Outcome::Ran(report, _) => {
            let executed = report.count(&NodeStatus::Executed);
            let cached = report.count(&NodeStatus::Cached);
            let state = if report.interrupted {
                "interrupted"
            } else if report.success() {
                "ok"
            } else {
                "failed"
            };
            if !quiet || !report.success() {
                eprintln!(
                    "{name}: {state}: {} nodes, {executed} executed, {cached} cached, in {}",
                    report.nodes.len(),
                    fmt_secs(report.seconds)
                );
            }
            for e in &report.errors {
                eprintln!("  node {} ({}) failed: {}: {}", e.node_id, e.node_type, e.exception_type, e.exception_message);
                for line in &e.traceback {
                    eprint!("    {line}");
                }
            }
            let skipped: Vec<&str> = report.nodes.iter().filter(|n| matches!(n.status, NodeStatus::Skipped { .. })).map(|n| n.id.as_str()).collect();
            if !skipped.is_empty() {
                eprintln!("  not run because an upstream node failed: {}", skipped.join(", "));
            }
            if quiet {
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            for (id, ui) in &report.outputs {
                for (key, items) in ui {
                    let items: Vec<String> = match items {
                        Json::Array(a) => a.iter().map(render_ui_item).collect(),
                        other => vec![render_ui_item(other)],
                    };
                    for it in items {
                        writeln!(out, "{id}.{key}: {it}")?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn render_ui_item(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Object(o) if o.contains_key("filename") => {
            let sub = o.get("subfolder").and_then(Json::as_str).unwrap_or("");
            let file = o.get("filename").and_then(Json::as_str).unwrap_or("");
            if sub.is_empty() { file.to_string() } else { format!("{sub}/{file}") }
        }
        other => other.to_string(),
    }
}

fn to_json(name: &str, o: &Outcome) -> Json {
    match o {
        Outcome::Rejected(r) => json!({ "file": name, "success": false, "validation": r.to_json() }),
        Outcome::Ran(report, node_errors) => json!({
            "file": name,
            "prompt_id": report.prompt_id,
            "success": report.success(),
            "interrupted": report.interrupted,
            "seconds": report.seconds,
            "outputs": report.outputs,
            "values": report.values,
            "nodes": report.nodes.iter().map(|n| json!({
                "id": n.id,
                "class_type": n.class_type,
                "status": match &n.status {
                    NodeStatus::Executed => "executed",
                    NodeStatus::Cached => "cached",
                    NodeStatus::Failed => "failed",
                    NodeStatus::Skipped { .. } => "skipped",
                    NodeStatus::NotRun => "not_run",
                },
                "blocked_by": match &n.status { NodeStatus::Skipped { blocked_by } => json!(blocked_by), _ => Json::Null },
                "seconds": n.seconds,
            })).collect::<Vec<_>>(),
            "executed": report.count(&NodeStatus::Executed),
            "cached": report.count(&NodeStatus::Cached),
            "errors": report.errors.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
            "node_errors": node_errors,
            "cache": { "entries": report.cache.entries, "bytes": report.cache.bytes, "hits": report.cache.hits, "misses": report.cache.misses, "evictions": report.cache.evictions },
        }),
    }
}
