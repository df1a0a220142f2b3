//! ComfyUI's web frontend as the oracle for comfyrs's UI workflow → API prompt conversion
//! (docs/comfyui.md, "From UI workflow to prompt"). ComfyUI leaves the conversion to its
//! frontend; comfyrs does it itself. For every workflow of the corpus in
//! tests/data/frontend-corpus/, the page served by a real `comfyrs serve` loads it
//! (`app.loadGraphData`) and converts it (`(await app.graphToPrompt()).output`), and comfyrs
//! converts the same file with the same node definitions (the server's /object_info records,
//! which the page also reads); the two prompts must agree node by node: the same node ids,
//! `class_type`, input names and values (literals, and `[id, slot]` links). `_meta.title` is
//! compared too. Every difference of every workflow is reported in one failure message.
//!
//! Dynamic prompts (`{a|b}` in widgets flagged `dynamicPrompts`) are random in both; the page's
//! `Math.random` is stubbed to return 0 and comfyrs draws 0 too
//! (`ConvertOptions::dynamic_prompt_draw`), so both take every group's first alternative.
//!
//! A workflow runs only when the server's /object_info knows all its node classes; the others
//! are skipped (and listed). With ComfyUI 0.33 (`COMFYUI_PATH=/work/shared/comfyui`, detected
//! by its V3 nodes) every workflow must run; with the embedded March 2024 ComfyUI, at least
//! [`MIN_RUN_EMBEDDED`] (those whose nodes that copy or comfyrs's native nodes provide).
//!
//! Where comfyrs differs on purpose, [`ACCEPTED`] lists the exact difference; an entry that no
//! longer shows up fails the test too, so a frontend that changes its behaviour is noticed.
//!
//! Needs `chromium` and `chromedriver` on PATH, as tests/browser.rs.

mod common;
// Not in common/mod.rs: only the browser tests compile the WebDriver client.
#[path = "common/browser.rs"]
mod browser;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use browser::{browser_tools, Driver, Page};
use comfyrs_runtime::schema::NodeSchema;
use comfyrs_runtime::workflow::{ui_to_prompt_with, ConvertOptions};
use common::{repo, Serve};
use serde_json::Value as Json;

/// The corpus, one UI workflow per file, named by the feature it exercises.
fn corpus() -> Vec<(String, Json)> {
    let dir = repo().join("tests/data/frontend-corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let wf = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), wf)
        })
        .collect()
}

/// Node types only the frontend knows: they never reach the prompt.
const FRONTEND_ONLY: &[&str] = &["Reroute", "PrimitiveNode", "Note", "MarkdownNote"];

/// The backend classes a workflow uses (subgraph instances and frontend-only nodes aside).
fn classes(wf: &Json) -> BTreeSet<String> {
    let subgraph_ids: BTreeSet<&str> = wf["definitions"]["subgraphs"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["id"].as_str()).collect())
        .unwrap_or_default();
    let mut graphs = vec![wf];
    graphs.extend(wf["definitions"]["subgraphs"].as_array().into_iter().flatten());
    graphs
        .iter()
        .flat_map(|g| g["nodes"].as_array().into_iter().flatten())
        .filter_map(|n| n["type"].as_str())
        .filter(|t| !subgraph_ids.contains(t) && !FRONTEND_ONLY.contains(t))
        .map(String::from)
        .collect()
}

/// Classes that only current ComfyUI (V3 nodes) has: their presence says the server runs it.
const CURRENT_COMFYUI_MARKERS: &[&str] = &["ResizeImageMaskNode", "BatchImagesNode", "GLSLShader"];

/// How many workflows must run with the embedded (March 2024) ComfyUI: those without nodes
/// that only current ComfyUI has.
const MIN_RUN_EMBEDDED: usize = 43;

/// Differences comfyrs keeps on purpose: (workflow, node id, input, frontend value, comfyrs
/// value), each exactly as reported.
const ACCEPTED: &[(&str, &str, &str, &str, &str)] = &[
    // A PrimitiveNode wired to a subgraph instance's promoted widget input: the frontend puts
    // the primitive's value into the instance's widget, but when it builds the prompt it
    // follows the link out of the subgraph to the primitive (a virtual node, so nothing) and
    // sends the inner widget's own value, ignoring the value the user sees on the primitive.
    // comfyrs sends the primitive's value (docs/comfyui.md, "From UI workflow to prompt",
    // step 3).
    ("primitive_node_into_subgraph.json", "10:14", "seed", "42", "31337"),
];

#[test]
fn frontend_and_comfyrs_convert_ui_workflows_alike() {
    let (chromium, chromedriver) = browser_tools();
    let corpus = corpus();
    assert!(corpus.len() >= 30, "the corpus has {} workflows; it should have at least 30", corpus.len());
    let server = Serve::start();
    let (status, info) = server.get("/object_info");
    assert_eq!(status, 200, "/object_info: {info}");
    let info = info.as_object().expect("/object_info is an object").clone();
    let mut schemas: HashMap<String, Arc<NodeSchema>> = HashMap::new();
    for (name, rec) in &info {
        match NodeSchema::from_object_info(rec) {
            Ok(s) => {
                schemas.insert(name.clone(), Arc::new(s));
            }
            Err(e) => panic!("the server's /object_info record of {name} does not parse: {e}"),
        }
    }
    let current = CURRENT_COMFYUI_MARKERS.iter().all(|c| info.contains_key(*c));
    let (_, stats) = server.get("/system_stats");
    eprintln!(
        "ComfyUI {} ({}; {} node classes)",
        stats["system"]["comfyui_version"],
        if current { "current, with V3 nodes" } else { "the embedded March 2024 copy" },
        info.len()
    );

    let mut runnable = Vec::new();
    for (name, wf) in &corpus {
        let missing: Vec<String> = classes(wf).into_iter().filter(|c| !info.contains_key(c)).collect();
        if missing.is_empty() {
            runnable.push((name.clone(), wf.clone()));
        } else {
            eprintln!("skipped {name}: the server has no {}", missing.join(", "));
        }
    }
    let minimum = if current { corpus.len() } else { MIN_RUN_EMBEDDED };
    assert!(
        runnable.len() >= minimum,
        "only {} of {} workflows have all their node classes on this server; at least {minimum} must run",
        runnable.len(),
        corpus.len()
    );

    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let frontend: Vec<(String, Result<Json, String>)> = rt.block_on(async {
        let mut page = driver.open(&chromium, profile.path()).await;
        let result = frontend_prompts(&page, &server.base, &runnable).await;
        page.collect_log().await;
        let log = page.log.clone();
        let _ = page.client.close().await;
        result.unwrap_or_else(|e| panic!("{e}\nbrowser log: {}\nserver log:\n{}", serde_json::to_string_pretty(&log).unwrap(), server.log()))
    });

    let lookup = |name: &str| schemas.get(name).cloned();
    let options = ConvertOptions { dynamic_prompt_draw: Some(0.0), ..Default::default() };
    let mut report = Vec::new();
    let mut accepted_seen = vec![false; ACCEPTED.len()];
    for ((name, wf), (_, page_prompt)) in runnable.iter().zip(&frontend) {
        let ours = ui_to_prompt_with(wf, &lookup, &options).map(|c| c.prompt).map_err(|e| e.to_string());
        match (page_prompt, ours) {
            (Ok(theirs), Ok(ours)) => {
                for d in differences(theirs, &ours) {
                    let accepted = ACCEPTED.iter().position(|&(w, id, input, t, o)| {
                        w == name && d.node == id && d.input.as_deref() == Some(input) && d.theirs == t && d.ours == o
                    });
                    match accepted {
                        Some(i) => accepted_seen[i] = true,
                        None => report.push(format!("{name}: {d}")),
                    }
                }
            }
            (Err(e), Ok(_)) => report.push(format!("{name}: the frontend could not convert it ({e}); comfyrs did")),
            (Ok(_), Err(e)) => report.push(format!("{name}: comfyrs could not convert it ({e}); the frontend did")),
            (Err(a), Err(b)) => report.push(format!("{name}: neither converts it (frontend: {a}; comfyrs: {b})")),
        }
    }
    for (&(w, id, input, t, o), seen) in ACCEPTED.iter().zip(&accepted_seen) {
        if !seen && runnable.iter().any(|(name, _)| name == w) {
            report.push(format!(
                "{w}: the accepted difference at node {id}, input {input} (frontend {t} vs comfyrs {o}) no longer shows; the frontend or comfyrs changed: review the entry in ACCEPTED"
            ));
        }
    }
    eprintln!("compared {} of {} workflows with the frontend", runnable.len(), corpus.len());
    assert!(report.is_empty(), "the frontend and comfyrs convert differently ({} differences):\n{}", report.len(), report.join("\n"));
}

/// Loads every workflow into the page and asks the frontend for its API prompt.
async fn frontend_prompts(page: &Page, base: &str, workflows: &[(String, Json)]) -> Result<Vec<(String, Result<Json, String>)>, String> {
    page.boot(base).await?;
    // Dynamic prompts take the first alternative of every group (comfyrs is told to draw 0 too).
    page.js("Math.random = () => 0; return true;", vec![]).await;
    let mut out = Vec::new();
    for (name, wf) in workflows {
        let prompt = page
            .client
            .execute_async(
                "const [wf, done] = arguments; \
                 (async () => { \
                   app.graph.clear(); \
                   await app.loadGraphData(wf, true, true, null); \
                   const p = await app.graphToPrompt(); \
                   return {ok: p.output}; \
                 })().then(done, e => done({err: String(e && e.stack || e)}));",
                vec![wf.clone()],
            )
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let result = match prompt.get("ok") {
            Some(p) => Ok(p.clone()),
            None => Err(prompt["err"].as_str().unwrap_or("no answer").to_string()),
        };
        out.push((name.clone(), result));
    }
    Ok(out)
}

/// One difference between the two prompts.
struct Difference {
    node: String,
    class: String,
    /// The input that differs; `None` for the node as a whole (missing, other class, title).
    input: Option<String>,
    /// Both sides as JSON text ("(absent)" where a side has nothing).
    theirs: String,
    ours: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.input {
            Some(i) => write!(f, "node {} ({}), input {i}: frontend {} vs comfyrs {}", self.node, self.class, self.theirs, self.ours),
            None => write!(f, "node {} ({}): frontend {} vs comfyrs {}", self.node, self.class, self.theirs, self.ours),
        }
    }
}

/// Every difference between the frontend's prompt and comfyrs's.
fn differences(theirs: &Json, ours: &Json) -> Vec<Difference> {
    let empty = serde_json::Map::new();
    let show = |v: Option<&Json>| v.map(Json::to_string).unwrap_or_else(|| "(absent)".into());
    let (t, o) = (theirs.as_object().unwrap_or(&empty), ours.as_object().unwrap_or(&empty));
    let mut out = Vec::new();
    let ids: BTreeSet<&String> = t.keys().chain(o.keys()).collect();
    for id in ids {
        let (tn, on) = (t.get(id), o.get(id));
        let class = tn.or(on).map(|n| n["class_type"].as_str().unwrap_or_default().to_string()).unwrap_or_default();
        let diff = |input: Option<&str>, a: Option<&Json>, b: Option<&Json>| Difference {
            node: id.clone(),
            class: class.clone(),
            input: input.map(String::from),
            theirs: show(a),
            ours: show(b),
        };
        let (Some(tn), Some(on)) = (tn, on) else {
            out.push(diff(None, tn, on));
            continue;
        };
        if tn["class_type"] != on["class_type"] {
            out.push(diff(None, Some(&tn["class_type"]), Some(&on["class_type"])));
        }
        if tn["_meta"]["title"] != on["_meta"]["title"] {
            out.push(diff(None, Some(&tn["_meta"]), Some(&on["_meta"])));
        }
        let (ti, oi) = (tn["inputs"].as_object().unwrap_or(&empty), on["inputs"].as_object().unwrap_or(&empty));
        let names: BTreeSet<&String> = ti.keys().chain(oi.keys()).collect();
        for input in names {
            let (a, b) = (ti.get(input), oi.get(input));
            if !same_value(a, b) {
                out.push(diff(Some(input), a, b));
            }
        }
    }
    out
}

/// JSON equality where numbers compare by value (the page's `1` is comfyrs's `1.0`).
fn same_value(a: Option<&Json>, b: Option<&Json>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Json::Number(x)), Some(Json::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(Json::Array(x)), Some(Json::Array(y))) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(Some(p), Some(q))),
        (Some(Json::Object(x)), Some(Json::Object(y))) => {
            x.len() == y.len() && x.iter().all(|(k, v)| same_value(Some(v), y.get(k)))
        }
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}
