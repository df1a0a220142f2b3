//! Reading workflow files: API prompts as they are, UI workflows converted with the node
//! schemas, `--set` overrides applied.

// A rejection carries ComfyUI's whole error payload and is returned once per file.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use comfyrs_runtime::prompt::{parse_json, Input, Prompt, PromptError};
use comfyrs_runtime::validate::{ErrorRecord, Rejection};
use comfyrs_runtime::workflow::{registry_schemas, ConvertError, ConvertOptions, Document};
use comfyrs_runtime::validate::{validate, Validated};

use crate::engine::Engine;
use comfyrs_runtime::{Registry, Value};
use serde_json::{json, Value as Json};

/// A workflow ready to validate.
pub struct Loaded {
    pub prompt: Prompt,
    /// `extra_pnginfo` for output nodes: the UI workflow when the file was one.
    pub extra_pnginfo: Option<Json>,
    pub warnings: Vec<String>,
}

/// Why a file cannot become a prompt: either a usage problem, or a rejection in ComfyUI's shape.
pub enum LoadError {
    Io(anyhow::Error),
    Rejected(Rejection),
}

impl From<Rejection> for LoadError {
    fn from(r: Rejection) -> Self {
        LoadError::Rejected(r)
    }
}

pub fn load(path: &Path, registry: &Registry, sets: &[String]) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read workflow file {}", path.display()))
        .map_err(LoadError::Io)?;
    let json = parse_json(&text).map_err(|e| LoadError::Rejected(prompt_error(e)))?;
    let mut loaded = from_json(json, registry)?;
    apply_sets(&mut loaded.prompt, sets).map_err(LoadError::Io)?;
    Ok(loaded)
}

pub fn from_json(json: Json, registry: &Registry) -> Result<Loaded, LoadError> {
    // The /prompt envelope may carry the UI workflow for output nodes to embed.
    let envelope_extra = json.pointer("/extra_data/extra_pnginfo").cloned();
    let doc = Document::detect(json).map_err(|e| reject("invalid_prompt", "Not a workflow", e.to_string()))?;
    let extra_pnginfo = match (&doc, envelope_extra) {
        (_, Some(extra)) => Some(extra),
        (Document::Ui(ui), None) => Some(json!({ "workflow": ui })),
        _ => None,
    };
    let converted = doc.into_prompt(&registry_schemas(registry), &ConvertOptions::default()).map_err(|e| {
        // Unknown types are what the embedded ComfyUI may still provide: same kind as validation's.
        let kind = if matches!(e, ConvertError::UnknownNodeTypes(_)) { "missing_node_type" } else { "invalid_prompt" };
        reject(kind, "Cannot convert the UI workflow to a prompt", e.to_string())
    })?;
    let prompt = Prompt::from_json(&converted.prompt).map_err(prompt_error)?;
    Ok(Loaded { prompt, extra_pnginfo, warnings: converted.warnings })
}

/// A file loaded and validated against the engine's nodes.
pub struct Prepared {
    pub result: Result<Validated, Rejection>,
    pub extra_pnginfo: Option<Json>,
    pub warnings: Vec<String>,
}

/// Loads and validates a workflow. When it names node types that are not native, ComfyUI's
/// classes are loaded (from the record cache, else by starting the embedded ComfyUI, once) and
/// the file is tried again with them.
///
/// With classes from the record cache, a value missing from a cached file list (a model or
/// image added since the cache was written) starts the embedded ComfyUI, whose lists are
/// current, and the file is validated again.
pub fn prepare(engine: &mut Engine, path: &Path, sets: &[String], output_dir: Option<&Path>) -> Result<Prepared> {
    engine.set_python_output(output_dir);
    loop {
        let prepared = match load(path, &engine.registry, sets) {
            Err(LoadError::Io(e)) => return Err(e),
            Err(LoadError::Rejected(r)) => Prepared { result: Err(r), extra_pnginfo: None, warnings: Vec::new() },
            Ok(l) => Prepared { result: validate(l.prompt, &engine.registry, None), extra_pnginfo: l.extra_pnginfo, warnings: l.warnings },
        };
        if let Err(r) = &prepared.result {
            if r.error.kind == "missing_node_type" && engine.can_start_python() {
                engine.load_python_nodes(output_dir)?;
                continue;
            }
        }
        if engine.python_pending() && lists_may_be_stale(&prepared) {
            tracing::info!("a value is not in a cached list of choices; starting the embedded ComfyUI for the current lists");
            engine.start_python(output_dir)?;
            continue;
        }
        return Ok(prepared);
    }
}

/// Whether validation failed on a value not in a list of choices (the lists of the record
/// cache were current when it was written, not necessarily now).
fn lists_may_be_stale(p: &Prepared) -> bool {
    let errors = match &p.result {
        Ok(v) => &v.node_errors,
        Err(r) => &r.node_errors,
    };
    errors.values().flat_map(|n| &n.errors).any(|e| e.kind == "value_not_in_list")
}

fn reject(kind: &str, message: &str, details: String) -> LoadError {
    LoadError::Rejected(Rejection::new(ErrorRecord::new(kind, message, details)))
}

fn prompt_error(e: PromptError) -> Rejection {
    Rejection::new(ErrorRecord::new("invalid_prompt", "Invalid prompt", e.to_string()))
}

/// Applies `NODE.INPUT=VALUE` overrides. NODE is an id or a title that names exactly one node.
pub fn apply_sets(prompt: &mut Prompt, sets: &[String]) -> Result<()> {
    for set in sets {
        let (target, value) = set
            .split_once('=')
            .ok_or_else(|| anyhow!("--set '{set}' needs the form NODE.INPUT=VALUE, e.g. --set 3.seed=42"))?;
        let (node, input) = target
            .rsplit_once('.')
            .ok_or_else(|| anyhow!("--set '{set}': write the node and the input as NODE.INPUT, e.g. 3.seed"))?;
        let id = resolve_node(prompt, node).with_context(|| format!("--set '{set}'"))?;
        let value = match serde_json::from_str::<Json>(value) {
            Ok(j) => Input::from_json(&j),
            Err(_) => Input::Const(Value::String(value.to_string())),
        };
        let rec = prompt.nodes.get_mut(&id).expect("resolved");
        if let Some(Input::Link(l)) = rec.inputs.get(input) {
            if !matches!(value, Input::Link(_)) {
                tracing::warn!("--set {set}: input '{input}' of node {id} was linked to node {}; the constant replaces the link", l.node);
            }
        }
        rec.inputs.insert(input.to_string(), value);
    }
    Ok(())
}

fn resolve_node(prompt: &Prompt, node: &str) -> Result<String> {
    if prompt.nodes.contains_key(node) {
        return Ok(node.to_string());
    }
    let by_title: Vec<&String> = prompt.nodes.iter().filter(|(_, n)| n.title.as_deref() == Some(node)).map(|(id, _)| id).collect();
    match by_title.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let ids: Vec<&str> = prompt.nodes.keys().map(String::as_str).take(20).collect();
            bail!("no node with id or title '{node}' (ids: {})", ids.join(", "))
        }
        many => bail!("title '{node}' names {} nodes ({}); use the node id", many.len(), many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
    }
}
