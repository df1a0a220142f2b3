//! `comfyrs report`: the picture and table of a WIDEN merge (docs/widen.md, "Report"), from a
//! saved merge's metadata (nothing is merged) or from the Exits of a workflow it runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use comfyrs_nodes::merge::report::{MergeReport, METADATA_KEY};
use comfyrs_nodes::merge::report_png;
use comfyrs_runtime::executor::RunOptions;
use serde_json::Value as Json;

use crate::config::Config;
use crate::engine::Engine;
use crate::load::prepare;
use crate::progress::Progress;
use crate::ReportArgs;

pub fn main(args: ReportArgs, config: &Config, quiet: bool) -> Result<ExitCode> {
    let is_workflow = args.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let reports = if is_workflow { from_workflow(&args, config, quiet)? } else { vec![(None, from_saved(&args.path)?)] };
    let many = reports.len() > 1;
    let mut out = std::io::stdout().lock();
    for (node, report) in &reports {
        let path = png_path(&args, node.as_deref().filter(|_| many));
        let png = report_png::draw(report)?.png()?;
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        if !quiet {
            if let (true, Some(id)) = (many, node) {
                writeln!(out, "WIDEN Exit {id}:")?;
            }
            writeln!(out, "{}", report.to_text())?;
        }
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The report saved in a merged model's metadata.
fn from_saved(path: &Path) -> Result<MergeReport> {
    if !path.is_file() {
        bail!("{} is not a file: give a saved merge (.safetensors) or a workflow (.json)", path.display());
    }
    comfyrs_nodes::merge::save::saved_report(path)?.ok_or_else(|| {
        anyhow!(
            "{} holds no merge report ({METADATA_KEY} in its metadata): it was not saved by a WIDEN Exit of this \
             comfyrs. Run the workflow that made it instead: comfyrs report WORKFLOW.json",
            path.display()
        )
    })
}

/// Runs the workflow and takes each WIDEN Exit's report from its UI output (the statistics that
/// run computed; an Exit answered from the cache or a saved file reports as well).
fn from_workflow(args: &ReportArgs, config: &Config, quiet: bool) -> Result<Vec<(Option<String>, MergeReport)>> {
    let mut engine = Engine::new(config)?;
    engine.warm_up_device();
    let mut exec = engine.executor(config.cache.mode);
    let progress = Progress::new(quiet);
    let prepared = prepare(&mut engine, &args.path, &args.sets, Some(&args.output_dir))?;
    let v = prepared.result.map_err(|r| anyhow!("{}: rejected: {}", args.path.display(), r.render()))?;
    let opts = RunOptions {
        prompt_id: "report".to_string(),
        extra_pnginfo: prepared.extra_pnginfo,
        output_dir: args.output_dir.clone(),
        events: &progress,
        extra_data: None,
        registry: Some(&engine.registry),
    };
    let run = exec.run(&v, &opts);
    if let Some(e) = run.errors.first() {
        bail!("{}: node {} ({}) failed: {}", args.path.display(), e.node_id, e.node_type, e.exception_message);
    }
    let mut reports = Vec::new();
    for (id, ui) in &run.outputs {
        if let Some(Json::Array(items)) = ui.get("widen_report") {
            for item in items {
                let r: MergeReport = serde_json::from_value(item.clone()).with_context(|| format!("the report of node {id}"))?;
                reports.push((Some(id.clone()), r));
            }
        }
    }
    if reports.is_empty() {
        bail!(
            "{}: no WIDEN Exit of this workflow reported a merge (a workflow needs a WIDEN Exit whose recipe merges \
             something, and that Exit must run: connect its MODEL to an output)",
            args.path.display()
        );
    }
    Ok(reports)
}

/// `-o`, else `<stem>.report.png` in the current folder; with several Exits, the node id added.
fn png_path(args: &ReportArgs, node: Option<&str>) -> PathBuf {
    let base = args.output.clone().unwrap_or_else(|| {
        let stem = args.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "merge".into());
        PathBuf::from(format!("{stem}.report.png"))
    });
    match node {
        None => base,
        Some(id) => {
            let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            base.with_file_name(format!("{stem}.{id}.png"))
        }
    }
}
