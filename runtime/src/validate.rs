//! Prompt validation with ComfyUI's error JSON (docs/comfyui.md, "Validation").
//!
//! Everything here is iterative: a 100 000-node chain validates without recursion.

use std::collections::VecDeque;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::{json, Map, Value as Json};

use crate::coerce;
use crate::dynamic::finalized_inputs;
use crate::node::{Args, NodeClass};
use crate::prompt::{Input, Prompt};
use crate::registry::Registry;
use crate::schema::{InputKind, InputSpec, NodeSchema, Num, Section};
use crate::value::{format_float, Value};

/// One error in ComfyUI's shape: `{type, message, details, extra_info}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorRecord {
    pub kind: String,
    pub message: String,
    pub details: String,
    pub extra_info: Map<String, Json>,
}

impl ErrorRecord {
    pub fn new(kind: &str, message: impl Into<String>, details: impl Into<String>) -> Self {
        ErrorRecord { kind: kind.into(), message: message.into(), details: details.into(), extra_info: Map::new() }
    }
    pub fn extra(mut self, key: &str, value: Json) -> Self {
        self.extra_info.insert(key.into(), value);
        self
    }
    pub fn to_json(&self) -> Json {
        json!({ "type": self.kind, "message": self.message, "details": self.details, "extra_info": self.extra_info })
    }
}

/// The errors of one node: `node_errors[id]`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeErrors {
    pub errors: Vec<ErrorRecord>,
    pub dependent_outputs: Vec<String>,
    pub class_type: String,
}

impl NodeErrors {
    pub fn to_json(&self) -> Json {
        json!({
            "errors": self.errors.iter().map(ErrorRecord::to_json).collect::<Vec<_>>(),
            "dependent_outputs": self.dependent_outputs,
            "class_type": self.class_type,
        })
    }
}

/// A rejected prompt: nothing of it may run.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub error: ErrorRecord,
    pub node_errors: IndexMap<String, NodeErrors>,
}

impl Rejection {
    pub fn new(error: ErrorRecord) -> Self {
        Rejection { error, node_errors: IndexMap::new() }
    }
    pub fn to_json(&self) -> Json {
        json!({ "error": self.error.to_json(), "node_errors": node_errors_json(&self.node_errors) })
    }
    /// A human summary, one line per error.
    pub fn render(&self) -> String {
        let mut out = self.error.message.clone();
        if !self.error.details.is_empty() {
            out += &format!(": {}", self.error.details);
        }
        out + &render_node_errors(&self.node_errors)
    }
}

/// One indented line per node error: `node ID (Class): message — details`.
pub fn render_node_errors(errs: &IndexMap<String, NodeErrors>) -> String {
    let mut out = String::new();
    for (id, ne) in errs {
        for e in &ne.errors {
            out += &format!("\n  node {id} ({}): {}", ne.class_type, e.message);
            if !e.details.is_empty() {
                out += &format!(" — {}", e.details);
            }
        }
    }
    out
}

pub fn node_errors_json(errs: &IndexMap<String, NodeErrors>) -> Json {
    let mut m = Map::new();
    for (id, e) in errs {
        m.insert(id.clone(), e.to_json());
    }
    Json::Object(m)
}

/// A prompt that may run: constants coerced, links resolved to node indices.
pub struct Validated {
    pub prompt: Prompt,
    pub classes: Vec<Arc<dyn NodeClass>>,
    pub schemas: Vec<Arc<NodeSchema>>,
    /// For each node, its linked inputs as (input name, source index, slot), all of them,
    /// declared or not (undeclared links are passed through, as ComfyUI does).
    pub links: Vec<Vec<(String, usize, usize)>>,
    /// Indices of the valid output nodes to execute.
    pub outputs: Vec<usize>,
    /// Errors of outputs that will not run (the prompt was still accepted).
    pub node_errors: IndexMap<String, NodeErrors>,
}

impl Validated {
    pub fn id(&self, index: usize) -> &str {
        self.prompt.nodes.get_index(index).map(|(k, _)| k.as_str()).unwrap_or("?")
    }
}

/// Validates `prompt` against `registry`. `targets` restricts the outputs to run
/// (`partial_execution_targets`).
pub fn validate(mut prompt: Prompt, registry: &Registry, targets: Option<&[String]>) -> Result<Validated, Rejection> {
    // 1. Every node must name a registered class; otherwise nothing can be planned.
    let mut classes = Vec::with_capacity(prompt.nodes.len());
    let mut schemas = Vec::with_capacity(prompt.nodes.len());
    for (id, node) in &prompt.nodes {
        let Some(ct) = node.class_type.as_deref() else {
            // ComfyUI's words (current validate_prompt); the title is `_meta.title` or null.
            let shown = node.title.clone().unwrap_or_else(|| format!("ID #{id}"));
            return Err(Rejection::new(
                ErrorRecord::new(
                    "missing_node_type",
                    format!("Node '{shown}' has no class_type. The workflow may be corrupted or a custom node is missing."),
                    format!("Node ID '#{id}'"),
                )
                .extra("node_id", json!(id))
                .extra("class_type", Json::Null)
                .extra("node_title", json!(node.title)),
            ));
        };
        let Some(class) = registry.get(ct) else {
            // ComfyUI's message and details (clients match on them), plus our suggestion.
            let message = match registry.unavailable(ct) {
                Some(why) => format!("Node '{}' could not be loaded: {why}", node.display_title()),
                None => {
                    let hint = registry.suggest(ct);
                    let mut message = format!("Node '{}' not found. The custom node may not be installed.", node.display_title());
                    if !hint.is_empty() {
                        message += &format!(" Did you mean {}?", hint.iter().map(|h| format!("'{h}'")).collect::<Vec<_>>().join(", "));
                    }
                    if !registry.failed_packs().is_empty() {
                        let packs: Vec<String> = registry.failed_packs().iter().map(|(p, why)| format!("{p} ({why})")).collect();
                        message += &format!(" These custom node packs failed to import: {}.", packs.join("; "));
                    }
                    message
                }
            };
            return Err(Rejection::new(
                ErrorRecord::new("missing_node_type", message, format!("Node ID '#{id}'"))
                    .extra("node_id", json!(id))
                    .extra("class_type", json!(ct))
                    .extra("node_title", json!(node.display_title())),
            ));
        };
        schemas.push(class.schema());
        classes.push(class.clone());
    }

    // 2. Outputs.
    let mut outputs: Vec<usize> = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        if !s.output_node {
            continue;
        }
        if let Some(t) = targets {
            if !t.iter().any(|x| x == prompt.nodes.get_index(i).unwrap().0) {
                continue;
            }
        }
        outputs.push(i);
    }
    if outputs.is_empty() {
        return Err(Rejection::new(ErrorRecord::new(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "Nothing to run: add an output node (SaveImage, PreviewAny, WIDENExit with save_model, ...) or select one.",
        )));
    }

    // 3. Resolve links to indices; per-node own checks on the nodes reachable from outputs.
    let n = prompt.nodes.len();
    let mut links: Vec<Vec<(String, usize, usize)>> = vec![Vec::new(); n];
    let mut own: Vec<Vec<ErrorRecord>> = vec![Vec::new(); n];
    // Edges used for validity: declared links that resolved.
    let mut declared_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut reachable = vec![false; n];
    let mut queue: VecDeque<usize> = outputs.iter().copied().collect();
    for &o in &outputs {
        reachable[o] = true;
    }
    // Nodes whose own validation raised (reported below, where ComfyUI reports them).
    let mut raised: Vec<(usize, crate::node::NodeError)> = Vec::new();
    while let Some(i) = queue.pop_front() {
        let schema = schemas[i].clone();
        let (_, node) = prompt.nodes.get_index(i).unwrap();
        let mut coerced: Vec<(String, Value)> = Vec::new();
        // The type each linked input receives (ComfyUI's `input_types` for VALIDATE_INPUTS).
        let mut received: Vec<(String, String)> = Vec::new();
        // V3 dynamic inputs are checked slot by slot, as this prompt expands them.
        let finalized = finalized_inputs(&schema, &node.inputs);
        for spec in finalized.iter() {
            let spec: &InputSpec = spec;
            match node.inputs.get(&spec.name) {
                None => {
                    if spec.section == Section::Required {
                        own[i].push(
                            ErrorRecord::new("required_input_missing", "Required input is missing", spec.name.clone())
                                .extra("input_name", json!(spec.name)),
                        );
                    }
                }
                Some(Input::Malformed(v)) => own[i].push(
                    ErrorRecord::new("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", spec.name.clone())
                        .extra("input_name", json!(spec.name))
                        .extra("input_config", input_config(spec))
                        .extra("received_value", v.clone()),
                ),
                Some(Input::Link(l)) => match prompt.nodes.get_index_of(&l.node) {
                    None => own[i].push(
                        ErrorRecord::new("bad_linked_input", format!("Input '{}' is linked to node '{}', which is not in the prompt", spec.name, l.node), spec.name.clone())
                            .extra("input_name", json!(spec.name))
                            .extra("linked_node", json!([l.node, l.slot])),
                    ),
                    Some(src) => match schemas[src].outputs.get(l.slot) {
                        None => own[i].push(
                            ErrorRecord::new(
                                "bad_linked_input",
                                format!(
                                    "Input '{}' is linked to output {} of node '{}' ({}), which has {} output(s)",
                                    spec.name, l.slot, l.node, schemas[src].name, schemas[src].outputs.len()
                                ),
                                spec.name.clone(),
                            )
                            .extra("input_name", json!(spec.name))
                            .extra("linked_node", json!([l.node, l.slot])),
                        ),
                        Some(out) => {
                            received.push((spec.name.clone(), out.ty.clone()));
                            let wanted = spec.kind.type_name();
                            if !types_compatible(&out.ty, wanted) && !classes[i].validates_input("input_types") {
                                own[i].push(
                                    ErrorRecord::new(
                                        "return_type_mismatch",
                                        "Return type mismatch between linked nodes",
                                        format!("{}, received_type({}) mismatch input_type({})", spec.name, out.ty, wanted),
                                    )
                                    .extra("input_name", json!(spec.name))
                                    .extra("input_config", input_config(spec))
                                    .extra("received_type", json!(out.ty))
                                    .extra("linked_node", json!([l.node, l.slot])),
                                );
                            }
                            declared_edges[i].push(src);
                            if !reachable[src] {
                                reachable[src] = true;
                                queue.push_back(src);
                            }
                        }
                    },
                },
                Some(Input::Const(v)) => match check_constant_for(spec, v, classes[i].validates_input(&spec.name)) {
                    Ok(c) => coerced.push((spec.name.clone(), c)),
                    Err(e) => own[i].push(e),
                },
            }
        }
        // Undeclared links are not validated, but their sources run: validate those.
        for (name, input) in &node.inputs {
            if let Input::Link(l) = input {
                if !finalized.iter().any(|s| s.name == *name) {
                    if let Some(src) = prompt.nodes.get_index_of(&l.node) {
                        if !reachable[src] {
                            reachable[src] = true;
                            queue.push_back(src);
                        }
                    }
                }
            }
        }
        // Custom validation sees constants only.
        let mut constants = Args::default();
        for (k, v) in &coerced {
            constants.insert(k, v.clone());
        }
        match classes[i].validate_inputs(&constants, &received) {
            Ok(failures) => {
                for (input, msg) in failures {
                    let details = if msg.is_empty() { input.clone() } else { format!("{input} - {msg}") };
                    own[i].push(ErrorRecord::new("custom_validation_failed", "Custom validation failed for node", details).extra("input_name", json!(input)));
                }
            }
            Err(e) => raised.push((i, e)),
        }
        let node = prompt.nodes.get_index_mut(i).unwrap().1;
        for (k, v) in coerced {
            node.inputs.insert(k, Input::Const(v));
        }
    }
    // A validation that raised: on an output node, its own `exception_during_validation`; on
    // any other node, an `exception_during_inner_validation` of each node linking to it, on the
    // linking input (ComfyUI reports it from the consumer that was validating its inputs).
    for (i, e) in raised {
        let (message, exception_type, traceback) = match e {
            crate::node::NodeError::Failed { message, exception_type, traceback } => (message, exception_type, traceback),
            crate::node::NodeError::Interrupted => ("interrupted".to_string(), "InterruptProcessingException".to_string(), Vec::new()),
        };
        if outputs.contains(&i) {
            own[i].push(
                ErrorRecord::new("exception_during_validation", "Exception when validating node", message.clone())
                    .extra("exception_type", json!(exception_type))
                    .extra("traceback", json!(traceback)),
            );
            continue;
        }
        let id = prompt.nodes.get_index(i).unwrap().0.clone();
        for c in (0..n).filter(|&c| reachable[c] && declared_edges[c].contains(&i)) {
            let (_, node) = prompt.nodes.get_index(c).unwrap();
            for spec in finalized_inputs(&schemas[c], &node.inputs).iter() {
                let Some(Input::Link(l)) = node.inputs.get(&spec.name) else { continue };
                if l.node != id {
                    continue;
                }
                own[c].push(
                    ErrorRecord::new("exception_during_inner_validation", "Exception when validating inner node", message.clone())
                        .extra("input_name", json!(spec.name))
                        .extra("input_config", input_config(spec))
                        .extra("exception_message", json!(message))
                        .extra("exception_type", json!(exception_type))
                        .extra("traceback", json!(traceback))
                        .extra("linked_node", json!([l.node, l.slot])),
                );
            }
        }
    }
    // All links (declared or not) for scheduling; undeclared links to missing nodes are errors.
    for i in 0..n {
        if !reachable[i] {
            continue;
        }
        let (_, node) = prompt.nodes.get_index(i).unwrap();
        for (name, input) in &node.inputs {
            if let Input::Link(l) = input {
                match prompt.nodes.get_index_of(&l.node) {
                    Some(src) if l.slot < schemas[src].outputs.len() => links[i].push((name.clone(), src, l.slot)),
                    _ if finalized_inputs(&schemas[i], &node.inputs).iter().any(|s| s.name == *name) => {} // reported above
                    _ => own[i].push(
                        ErrorRecord::new("bad_linked_input", format!("Input '{name}' is linked to output {} of node '{}', which does not exist", l.slot, l.node), name.clone())
                            .extra("input_name", json!(name))
                            .extra("linked_node", json!([l.node, l.slot])),
                    ),
                }
            }
        }
    }
    // Undeclared links must be reachable too (they are scheduled).
    let mut extra: VecDeque<usize> = (0..n).filter(|&i| reachable[i]).collect();
    while let Some(i) = extra.pop_front() {
        for &(_, src, _) in &links[i] {
            if !reachable[src] {
                reachable[src] = true;
                extra.push_back(src);
            }
        }
    }

    // 4. Cycles over every link (a cycle through an undeclared link cannot be scheduled either).
    // Every member's error carries the path, so a long cycle shows its first and last
    // CYCLE_SHOWN / 2 nodes only (node_errors still lists every member): the report of an
    // n-node cycle would otherwise grow as n².
    const CYCLE_SHOWN: usize = 64;
    for cycle in find_cycles(n, &links, &reachable) {
        let label = |i: usize| format!("{} ({})", prompt.nodes.get_index(i).unwrap().0, schemas[i].name);
        let id = |i: usize| json!(prompt.nodes.get_index(i).unwrap().0);
        let (path, ids): (Vec<String>, Vec<Json>) = if cycle.len() <= CYCLE_SHOWN {
            (cycle.iter().chain(cycle.first()).map(|&i| label(i)).collect(), cycle.iter().map(|&i| id(i)).collect())
        } else {
            let (head, tail) = (&cycle[..CYCLE_SHOWN / 2], &cycle[cycle.len() - CYCLE_SHOWN / 2..]);
            let mut path: Vec<String> = head.iter().map(|&i| label(i)).collect();
            path.push(format!("... ({} more)", cycle.len() - CYCLE_SHOWN));
            path.extend(tail.iter().chain(cycle.first()).map(|&i| label(i)));
            (path, head.iter().chain(tail).map(|&i| id(i)).collect())
        };
        let details = path.join(" -> ");
        for &i in &cycle {
            own[i].push(
                ErrorRecord::new("dependency_cycle", "Dependency cycle detected", details.clone()).extra("cycle_nodes", Json::Array(ids.clone())),
            );
        }
    }

    // 5. Invalidity flows downstream along links.
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for &(_, src, _) in &links[i] {
            consumers[src].push(i);
        }
        for &src in &declared_edges[i] {
            if !links[i].iter().any(|&(_, s, _)| s == src) {
                consumers[src].push(i);
            }
        }
    }
    let mut invalid = vec![false; n];
    let mut q: VecDeque<usize> = (0..n).filter(|&i| reachable[i] && !own[i].is_empty()).collect();
    for &i in &q {
        invalid[i] = true;
    }
    while let Some(i) = q.pop_front() {
        for &c in &consumers[i] {
            if reachable[c] && !invalid[c] {
                invalid[c] = true;
                q.push_back(c);
            }
        }
    }

    // 6. node_errors with dependent outputs (in output order, as ComfyUI appends them). Walk
    // from whichever side has fewer starting points: down from each erroneous node, or up from
    // each output, so that neither many errors nor many outputs makes this quadratic.
    let with_errors: Vec<usize> = (0..n).filter(|&i| reachable[i] && !own[i].is_empty()).collect();
    let mut out_pos = vec![usize::MAX; n];
    for (k, &o) in outputs.iter().enumerate() {
        out_pos[o] = k;
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut seen = vec![usize::MAX; n]; // the walk that last visited a node
    let mut q = VecDeque::new();
    if with_errors.len() <= outputs.len() {
        for (walk, &i) in with_errors.iter().enumerate() {
            seen[i] = walk;
            q.push_back(i);
            while let Some(j) = q.pop_front() {
                if out_pos[j] != usize::MAX {
                    deps[i].push(out_pos[j]);
                }
                for &c in &consumers[j] {
                    if seen[c] != walk {
                        seen[c] = walk;
                        q.push_back(c);
                    }
                }
            }
            deps[i].sort_unstable();
        }
    } else {
        let mut sources: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (j, cs) in consumers.iter().enumerate() {
            for &c in cs {
                sources[c].push(j);
            }
        }
        for (walk, &o) in outputs.iter().enumerate() {
            seen[o] = walk;
            q.push_back(o);
            while let Some(j) = q.pop_front() {
                if !own[j].is_empty() {
                    deps[j].push(walk);
                }
                for &s in &sources[j] {
                    if seen[s] != walk {
                        seen[s] = walk;
                        q.push_back(s);
                    }
                }
            }
        }
    }
    let mut node_errors = IndexMap::new();
    for i in with_errors {
        node_errors.insert(
            prompt.nodes.get_index(i).unwrap().0.clone(),
            NodeErrors {
                errors: std::mem::take(&mut own[i]),
                dependent_outputs: deps[i].iter().map(|&k| prompt.nodes.get_index(outputs[k]).unwrap().0.clone()).collect(),
                class_type: schemas[i].name.clone(),
            },
        );
    }

    let valid_outputs: Vec<usize> = outputs.iter().copied().filter(|&o| !invalid[o]).collect();
    if valid_outputs.is_empty() {
        let mut lines = Vec::new();
        for &o in &outputs {
            if let Some(ne) = node_errors.get(prompt.nodes.get_index(o).unwrap().0) {
                for e in &ne.errors {
                    lines.push(format!("{}: {}", e.message, e.details));
                }
            }
        }
        return Err(Rejection {
            error: ErrorRecord::new("prompt_outputs_failed_validation", "Prompt outputs failed validation", lines.join("\n")),
            node_errors,
        });
    }
    Ok(Validated { prompt, classes, schemas, links, outputs: valid_outputs, node_errors })
}

/// ComfyUI's link type rule: equal, either side `*` (or V3 match-type), a list into COMBO, or
/// comma-separated type sets that intersect.
pub fn types_compatible(received: &str, wanted: &str) -> bool {
    const ANY: [&str; 2] = ["*", "COMFY_MATCHTYPE_V3"];
    if received == wanted || ANY.contains(&received) || ANY.contains(&wanted) {
        return true;
    }
    if wanted == "COMBO" && (received == "COMBO" || received.starts_with('[')) {
        return true;
    }
    let r: Vec<&str> = received.split(',').map(str::trim).collect();
    wanted.split(',').map(str::trim).any(|w| r.contains(&w))
}

/// ComfyUI's `input_config`: the `(type, options)` pair, options `{}` where none are declared.
fn input_config(spec: &InputSpec) -> Json {
    match spec.to_object_info() {
        Json::Array(mut a) => {
            if a.len() < 2 {
                a.push(Json::Object(Map::new()));
            }
            Json::Array(a)
        }
        other => other,
    }
}

/// Coerces a constant by the input's declared kind and checks range and membership.
pub fn check_constant(spec: &InputSpec, v: &Value) -> Result<Value, ErrorRecord> {
    check_constant_for(spec, v, false)
}

/// `check_constant`, or only the type coercion when the node's own validation checks the
/// input (`NodeClass::validates_input`), as ComfyUI does.
pub fn check_constant_for(spec: &InputSpec, v: &Value, custom: bool) -> Result<Value, ErrorRecord> {
    let coerced = match &spec.kind {
        InputKind::Int { .. } => coerce::to_int(v).map_err(|e| (e, "INT")),
        InputKind::Float { .. } => coerce::to_float(v).map_err(|e| (e, "FLOAT")),
        InputKind::String { .. } => coerce::to_string(v).map_err(|e| (e, "STRING")),
        InputKind::Boolean { .. } => coerce::to_bool(v).map_err(|e| (e, "BOOLEAN")),
        _ => Ok(v.clone()),
    };
    let coerced = coerced.map_err(|(e, ty)| {
        ErrorRecord::new("invalid_input_type", format!("Failed to convert an input value to a {ty} value"), format!("{}, {}, {e}", spec.name, py_str(v)))
            .extra("input_name", json!(spec.name))
            .extra("input_config", input_config(spec))
            .extra("received_value", v.to_json())
            .extra("exception_message", json!(e))
    })?;
    if custom {
        return Ok(coerced);
    }
    let range_err = |kind: &str, msg: String| {
        ErrorRecord::new(kind, msg, spec.name.clone())
            .extra("input_name", json!(spec.name))
            .extra("input_config", input_config(spec))
            .extra("received_value", coerced.to_json())
    };
    match &spec.kind {
        InputKind::Int { min, max, .. } | InputKind::Float { min, max, .. } => {
            if let Some(m) = min {
                if num_lt(&coerced, *m) {
                    return Err(range_err("value_smaller_than_min", format!("Value {} smaller than min of {}", py_repr(&coerced), num_repr(*m))));
                }
            }
            if let Some(m) = max {
                if num_gt(&coerced, *m) {
                    return Err(range_err("value_bigger_than_max", format!("Value {} bigger than max of {}", py_repr(&coerced), num_repr(*m))));
                }
            }
        }
        InputKind::Combo { options, multiselect, .. } => {
            let values: Vec<&Value> = match (&coerced, multiselect) {
                (Value::Json(Json::Array(_)), true) | (Value::List(_), true) => Vec::new(),
                _ => vec![&coerced],
            };
            let listed: Vec<Value> = match (&coerced, multiselect) {
                (Value::Json(Json::Array(a)), true) => a.iter().map(Value::from_json).collect(),
                (Value::List(l), true) => l.clone(),
                _ => Vec::new(),
            };
            for val in values.into_iter().chain(listed.iter()) {
                if !options.iter().any(|o| coerce::combo_eq(val, o)) {
                    let shown = if options.len() <= 20 {
                        format!("[{}]", options.iter().map(|o| py_repr(&Value::from_json(o))).collect::<Vec<_>>().join(", "))
                    } else {
                        format!("(list of length {})", options.len())
                    };
                    let mut e = ErrorRecord::new("value_not_in_list", "Value not in list", format!("{}: '{}' not in {shown}", spec.name, py_str(val)))
                        .extra("input_name", json!(spec.name))
                        .extra("received_value", val.to_json());
                    e = e.extra("input_config", if options.len() <= 20 { input_config(spec) } else { Json::Null });
                    return Err(e);
                }
            }
        }
        _ => {}
    }
    Ok(coerced)
}

fn num_lt(v: &Value, bound: Num) -> bool {
    match (v, bound) {
        (Value::Int(a), Num::Int(b)) => *a < b,
        (Value::Int(a), Num::Float(b)) => (*a as f64) < b,
        (Value::Float(a), b) => *a < b.as_f64(),
        _ => false,
    }
}

fn num_gt(v: &Value, bound: Num) -> bool {
    match (v, bound) {
        (Value::Int(a), Num::Int(b)) => *a > b,
        (Value::Int(a), Num::Float(b)) => (*a as f64) > b,
        (Value::Float(a), b) => *a > b.as_f64(),
        _ => false,
    }
}

fn num_repr(n: Num) -> String {
    match n {
        Num::Int(i) => i.to_string(),
        Num::Float(f) => format_float(f),
    }
}

/// Python's `str()` of a constant, as ComfyUI's f-strings show it.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's repr of a constant, as ComfyUI's messages show it.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => coerce::py_str_repr(s),
        Value::Float(f) => format_float(*f),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        other => other.to_json().to_string(),
    }
}

/// Strongly connected components with more than one node (or a self-loop), found with an
/// iterative Tarjan so that deep graphs cannot overflow the stack.
fn find_cycles(n: usize, links: &[Vec<(String, usize, usize)>], include: &[bool]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut out = Vec::new();
    // Frames: (node, position in its edge list).
    let mut frames: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if !include[root] || index[root] != UNSEEN {
            continue;
        }
        frames.push((root, 0));
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut pos)) = frames.last_mut() {
            if let Some(&(_, w, _)) = links[v].get(*pos) {
                *pos += 1;
                if !include[w] {
                    continue;
                }
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    frames.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                frames.pop();
                if let Some(&(parent, _)) = frames.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    loop {
                        let w = stack.pop().unwrap();
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    let self_loop = comp.len() == 1 && links[v].iter().any(|&(_, s, _)| s == v);
                    if comp.len() > 1 || self_loop {
                        comp.reverse();
                        out.push(comp);
                    }
                }
            }
        }
    }
    out
}
