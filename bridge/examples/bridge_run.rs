//! Runs API-format prompts through the bridge alone (no native nodes), for trying a ComfyUI
//! checkout by hand:
//!
//! ```text
//! COMFYUI_PATH=/path/to/ComfyUI cargo run -p comfyrs-bridge --example bridge_run -- \
//!     --models DIR --out DIR [--custom-nodes DIR]... [--bench] prompt.json...
//! ```
//!
//! `--fixture` writes the tiny SD1.5 checkpoint into `<models>/checkpoints` first. Each prompt
//! file may use `$CKPT` for that checkpoint's name.

use std::path::PathBuf;
use std::process::ExitCode;

use comfyrs_bridge::{Bridge, BridgeOptions};
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::{Event, EventSink};
use comfyrs_runtime::executor::{Executor, RunOptions};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use comfyrs_runtime::Registry;

struct Print;
impl EventSink for Print {
    fn emit(&self, e: &Event) {
        match e {
            Event::Executing { node, class_type, .. } => eprintln!("  executing {node} ({class_type})"),
            Event::Progress { node, value, max, .. } => eprintln!("  progress {node}: {value}/{max}"),
            Event::Error { node, class_type, message, .. } => eprintln!("  error {node} ({class_type}): {message}"),
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    let mut opts = BridgeOptions::default();
    let mut prompts = Vec::new();
    let mut fixture = false;
    let mut bench = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--models" => opts.models_dir = args.next().map(PathBuf::from),
            "--out" => opts.output_dir = args.next().map(PathBuf::from),
            "--custom-nodes" => opts.custom_nodes.extend(args.next().map(PathBuf::from)),
            "--fixture" => fixture = true,
            "--bench" => bench = true,
            _ => prompts.push(PathBuf::from(a)),
        }
    }
    let mut ckpt = String::new();
    if fixture {
        let models = opts.models_dir.clone().unwrap_or_else(|| PathBuf::from("models"));
        match comfyrs_testkit::sd15::ensure_tiny_sd15(&models) {
            Ok(p) => ckpt = p.file_name().unwrap().to_string_lossy().into_owned(),
            Err(e) => {
                eprintln!("fixture: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let bridge = match Bridge::start(&opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let r = bridge.report();
    eprintln!(
        "ComfyUI {} ({} nodes, V3 {}, torch {}): start {:.2}s (interpreter {:.3}s, torch {:.2}s, ComfyUI {:.2}s, nodes {:.2}s)",
        r.comfyui_path.display(),
        r.node_count,
        r.v3,
        r.torch_version,
        r.total.as_secs_f64(),
        r.python_init.as_secs_f64(),
        r.import_torch.as_secs_f64(),
        r.import_comfyui.as_secs_f64(),
        r.load_nodes.as_secs_f64()
    );
    for f in bridge.import_failures() {
        eprintln!("import failed: {} ({})", f.path, f.error.lines().last().unwrap_or(""));
    }
    for e in &r.schema_errors {
        eprintln!("schema failed: {e}");
    }
    let mut registry = Registry::new();
    bridge.register(&mut registry);
    let mut exec = Executor::new(CacheMode::Lru, 8 << 30);
    let mut ok = true;
    for p in prompts {
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t.replace("$CKPT", &ckpt),
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                ok = false;
                continue;
            }
        };
        eprintln!("{}:", p.display());
        let prompt = match Prompt::parse(&text) {
            Ok((p, _)) => p,
            Err(e) => {
                eprintln!("  {e}");
                ok = false;
                continue;
            }
        };
        let v = match validate(prompt, &registry, None) {
            Ok(v) => v,
            Err(rej) => {
                eprintln!("  rejected: {}", rej.render());
                ok = false;
                continue;
            }
        };
        let report = exec.run(
            &v,
            &RunOptions { prompt_id: p.display().to_string(), extra_pnginfo: None, output_dir: opts.output_dir.clone().unwrap_or_default(), events: &Print, extra_data: None, registry: Some(&registry) },
        );
        for e in &report.errors {
            eprintln!("  node {} ({}) failed: {}: {}", e.node_id, e.node_type, e.exception_type, e.exception_message);
            for l in &e.traceback {
                eprint!("    {l}");
            }
        }
        for (node, ui) in &report.outputs {
            println!("{node}: {}", serde_json::Value::Object(ui.clone()));
        }
        eprintln!("  {} in {:.2}s", if report.success() { "ok" } else { "FAILED" }, report.seconds);
        ok &= report.success();
    }
    if bench {
        match comfyrs_bridge::bench::run(&bridge, 2000) {
            Ok(b) => eprintln!("{}", b.render()),
            Err(e) => eprintln!("bench: {e}"),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
