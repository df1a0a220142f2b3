//! UI workflow → API prompt (docs/comfyui.md, "From UI workflow to prompt").
//!
//! 1. Flatten: walk the root graph and expand active subgraph instances into contexts (an
//!    instance path plus the definition graph), giving each node its execution id.
//! 2. Apply PrimitiveNodes: copy their value into the widgets they feed.
//! 3. Emit every active backend node: widget values from the schema's widget list, then each
//!    linked input resolved through reroutes, bypassed nodes and subgraph boundaries.
//! 4. Drop links to nodes that were not emitted; order the prompt topologically.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::{json, Map, Value as Json};

use super::dynprompt::{self, ChoiceRng};
use super::graph::{self, UiGraph, UiNode, SUBGRAPH_INPUT_ID, SUBGRAPH_OUTPUT_ID};
use super::widgets;
use super::{ControlWidget, ConvertError, ConvertOptions, Converted, NodeRef};
use crate::schema::NodeSchema;

const MODE_NEVER: i64 = 2;
const MODE_BYPASS: i64 = 4;

/// Converts a UI workflow into an API prompt, with a fresh random seed for dynamic prompts.
pub fn ui_to_prompt(workflow: &Json, schemas: &dyn Fn(&str) -> Option<Arc<NodeSchema>>) -> Result<Converted, ConvertError> {
    ui_to_prompt_with(workflow, schemas, &ConvertOptions::default())
}

/// Converts a UI workflow into an API prompt. `schemas` returns the schema of a backend class
/// (native or Python), `None` for unknown types.
pub fn ui_to_prompt_with(
    workflow: &Json,
    schemas: &dyn Fn(&str) -> Option<Arc<NodeSchema>>,
    options: &ConvertOptions,
) -> Result<Converted, ConvertError> {
    let mut warnings = Vec::new();
    let root = UiGraph::parse(workflow, "the workflow", &mut warnings)?;
    if workflow.get("nodes").is_none() {
        return Err(ConvertError::Shape(
            "the workflow has no \"nodes\" array, so it is not a UI workflow; save it again from the ComfyUI frontend".into(),
        ));
    }
    let mut defs = graph::collect_definitions(workflow, &mut warnings)?;
    // Root nodes have no renumbering; definition k is graph k + 1.
    let mut renumbered = vec![HashMap::new()];
    renumbered.extend(graph::renumber_colliding_ids(&root, &mut defs, workflow.get("last_node_id")));
    let mut graphs = vec![root];
    let mut def_index = HashMap::new();
    for (id, g) in defs {
        def_index.insert(id, graphs.len());
        graphs.push(g);
    }
    let group_nodes: HashSet<String> = workflow
        .get("extra")
        .and_then(|e| e.get("groupNodes"))
        .and_then(Json::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();

    let seed = options.dynamic_prompt_seed.unwrap_or_else(clock_seed);
    let mut conv = Converter {
        graphs: &graphs,
        def_index,
        renumbered,
        group_nodes,
        schemas,
        schema_cache: HashMap::new(),
        ctxs: Vec::new(),
        flats: Vec::new(),
        by_ctx_node: HashMap::new(),
        primitive_values: HashMap::new(),
        warnings,
        seed,
        draw: options.dynamic_prompt_draw,
    };
    conv.flatten()?;
    conv.apply_primitives();
    conv.emit()
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos ^ crate::random::fresh_u64()
}

#[derive(Clone)]
enum Kind {
    Real(Arc<NodeSchema>),
    Reroute,
    Primitive,
    Note,
    Instance(usize),
    /// KJNodes' frontend-only `SetNode` / `GetNode` pair: a named, wireless reroute.
    SetNode,
    GetNode,
    GroupNode,
    Unknown,
}

/// One graph in one place: the root, or a subgraph definition inside an instance path.
struct Ctx<'g, 'a> {
    graph: usize,
    /// Instance node ids from the root down to this context's instance.
    path: Vec<String>,
    parent: Option<usize>,
    /// The instance node (in the parent context's graph).
    instance: Option<&'g UiNode<'a>>,
    /// Active instances in this graph: local node id → child context.
    children: HashMap<String, usize>,
    /// Per-instance values of subgraph inputs (promoted widgets), by input name.
    input_values: HashMap<String, Json>,
    /// Values PrimitiveNodes in the parent graph feed into this instance's inputs.
    primitive_inputs: HashMap<String, Json>,
    /// Per-instance values of inner widgets promoted through `proxyWidgets`:
    /// (inner node id, widget name) → value.
    widget_overrides: HashMap<(String, String), Json>,
    /// Promotions aimed deeper, at (nested instance id, source node id, widget name).
    deep_overrides: Vec<(String, String, String, Json)>,
}

struct Flat<'g, 'a> {
    ctx: usize,
    node: &'g UiNode<'a>,
    kind: Kind,
    exec_id: String,
}

enum Resolved {
    /// A real node's output.
    Node(String, i64),
    /// A widget value from a subgraph instance.
    Value(Json),
    /// No source: the input keeps its widget value, a socket stays absent.
    Nothing,
    /// The source is a muted node: the frontend writes the link, then drops it with the node,
    /// so the input is absent even where it has a widget.
    Removed,
}

enum State {
    Link { ctx: usize, link: String, wanted: String },
    Output { ctx: usize, node: String, slot: i64, wanted: String },
}

struct Converter<'g, 'a, 's> {
    graphs: &'g [UiGraph<'a>],
    def_index: HashMap<String, usize>,
    /// Per graph, the node ids the frontend's load-time repair changed (old → new).
    renumbered: Vec<HashMap<String, String>>,
    group_nodes: HashSet<String>,
    schemas: &'s dyn Fn(&str) -> Option<Arc<NodeSchema>>,
    schema_cache: HashMap<String, Option<Arc<NodeSchema>>>,
    ctxs: Vec<Ctx<'g, 'a>>,
    flats: Vec<Flat<'g, 'a>>,
    by_ctx_node: HashMap<(usize, String), usize>,
    /// PrimitiveNode values per target: (context, node id) → widget name → (value, the
    /// primitive's control mode).
    primitive_values: HashMap<(usize, String), PrimitiveTargets>,
    warnings: Vec<String>,
    seed: u64,
    /// A fixed draw for every dynamic-prompt choice ([`ConvertOptions::dynamic_prompt_draw`]).
    draw: Option<f64>,
}

/// Whether any socket of the node is linked.
fn connected(node: &UiNode) -> bool {
    node.inputs.iter().any(|i| i.link.is_some()) || node.outputs.iter().any(|o| !o.links.is_empty())
}

/// Widget name → (value, control mode) set by PrimitiveNodes on one node.
type PrimitiveTargets = IndexMap<String, (Json, Option<String>)>;

fn is_active(mode: i64) -> bool {
    mode != MODE_NEVER && mode != MODE_BYPASS
}

/// litegraph's `isValidConnection`: `*` and "" match anything, comparison ignores case, and
/// comma-separated type lists match when any members match.
fn valid_connection(a: &str, b: &str) -> bool {
    let any_a = a.is_empty() || a == "*";
    let any_b = b.is_empty() || b == "*";
    if any_a || any_b || a == b {
        return true;
    }
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    if !a.contains(',') && !b.contains(',') {
        return a == b;
    }
    a.split(',').any(|x| b.split(',').any(|y| {
        let (x_any, y_any) = (x.is_empty() || x == "*", y.is_empty() || y == "*");
        x_any || y_any || x == y
    }))
}

/// Which input of a bypassed node stands in for output `slot` when the consumer wants type
/// `wanted` (the current frontend rule, docs/comfyui.md, "Source resolution").
fn bypass_input(node: &UiNode, slot: usize, wanted: &str) -> Option<usize> {
    let inputs = &node.inputs;
    if wanted.is_empty() || wanted == "*" {
        let i = if inputs.len() > slot { slot } else { 0 };
        return (i < inputs.len()).then_some(i);
    }
    let out_ty = node.outputs.get(slot).map(|o| o.ty.as_str()).unwrap_or("");
    if let Some(i) = inputs.get(slot) {
        if valid_connection(&i.ty, out_ty) && valid_connection(&i.ty, wanted) {
            return Some(slot);
        }
    }
    if let Some(i) = inputs.iter().position(|i| i.ty == wanted) {
        return Some(i);
    }
    inputs.iter().position(|i| valid_connection(&i.ty, out_ty) && valid_connection(&i.ty, wanted))
}

/// FNV-1a, to give each widget its own dynamic-prompt stream.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl<'g, 'a, 's> Converter<'g, 'a, 's> {
    fn graph(&self, ctx: usize) -> &'g UiGraph<'a> {
        &self.graphs[self.ctxs[ctx].graph]
    }

    fn exec_id(&self, ctx: usize, local: &str) -> String {
        let path = &self.ctxs[ctx].path;
        if path.is_empty() {
            local.to_string()
        } else {
            format!("{}:{}", path.join(":"), local)
        }
    }

    fn node_ref(&self, ctx: usize, node: &UiNode) -> NodeRef {
        NodeRef { id: self.exec_id(ctx, &node.id), title: node.title.clone(), node_type: node.ty.clone() }
    }

    fn schema(&mut self, ty: &str) -> Option<Arc<NodeSchema>> {
        if let Some(s) = self.schema_cache.get(ty) {
            return s.clone();
        }
        let s = (self.schemas)(ty);
        self.schema_cache.insert(ty.to_string(), s.clone());
        s
    }

    fn classify(&mut self, node: &UiNode) -> Kind {
        match node.ty.as_str() {
            "Reroute" | "Reroute (rgthree)" => return Kind::Reroute,
            "SetNode" => return Kind::SetNode,
            "GetNode" => return Kind::GetNode,
            "PrimitiveNode" => return Kind::Primitive,
            "Note" | "MarkdownNote" => return Kind::Note,
            _ => {}
        }
        if let Some(&g) = self.def_index.get(&node.ty) {
            return Kind::Instance(g);
        }
        let group_like = node.ty.starts_with("workflow>") || node.ty.starts_with("workflow/") || self.group_nodes.contains(&node.ty);
        if group_like && self.schema(&node.ty).is_none() {
            return Kind::GroupNode;
        }
        match self.schema(&node.ty) {
            Some(s) => Kind::Real(s),
            None => Kind::Unknown,
        }
    }

    /// Step 1: every node of every active context, in document order with each instance's
    /// inner nodes right after it. An explicit stack replaces recursion into subgraphs.
    fn flatten(&mut self) -> Result<(), ConvertError> {
        self.ctxs.push(Ctx {
            graph: 0,
            path: Vec::new(),
            parent: None,
            instance: None,
            children: HashMap::new(),
            input_values: HashMap::new(),
            primitive_inputs: HashMap::new(),
            widget_overrides: HashMap::new(),
            deep_overrides: Vec::new(),
        });
        let mut unknown = Vec::new();
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        while let Some((ctx, pos)) = stack.pop() {
            let g = self.graph(ctx);
            let Some((_, node)) = g.nodes.get_index(pos) else { continue };
            stack.push((ctx, pos + 1));
            let kind = self.classify(node);
            let exec_id = self.exec_id(ctx, &node.id);
            let active = is_active(node.mode);
            match &kind {
                Kind::Unknown if active && !connected(node) => self.warnings.push(format!(
                    "{} has an unknown type and no connections; it was skipped (frontend-only helper nodes such as labels or group bypassers look like this; if it is a backend node, install the node pack that defines \"{}\")",
                    self.node_ref(ctx, node),
                    node.ty
                )),
                Kind::Unknown if active => unknown.push(self.node_ref(ctx, node)),
                Kind::Unknown => self.warnings.push(format!(
                    "{} is {} and its type is unknown; it was skipped (install the node pack that defines \"{}\" to use it)",
                    self.node_ref(ctx, node),
                    if node.mode == MODE_NEVER { "muted" } else { "bypassed" },
                    node.ty
                )),
                Kind::GroupNode if active => {
                    let group = node.ty.trim_start_matches("workflow>").trim_start_matches("workflow/").to_string();
                    return Err(ConvertError::GroupNode { node: self.node_ref(ctx, node), group });
                }
                Kind::GroupNode => self.warnings.push(format!(
                    "{} is a {} legacy group node; it was not expanded",
                    self.node_ref(ctx, node),
                    if node.mode == MODE_NEVER { "muted" } else { "bypassed" }
                )),
                Kind::Instance(def) if active => {
                    let def = *def;
                    // A definition inside its own instance path would expand forever.
                    let mut up = Some(ctx);
                    while let Some(c) = up {
                        if self.ctxs[c].graph == def {
                            return Err(ConvertError::RecursiveSubgraph {
                                node: self.node_ref(ctx, node),
                                definition: self.graphs[def].name.clone().unwrap_or_else(|| node.ty.clone()),
                            });
                        }
                        up = self.ctxs[c].parent;
                    }
                    let child = self.new_instance_ctx(ctx, node, def);
                    self.ctxs[ctx].children.insert(node.id.clone(), child);
                    stack.push((child, 0));
                }
                _ => {}
            }
            self.by_ctx_node.insert((ctx, node.id.clone()), self.flats.len());
            self.flats.push(Flat { ctx, node, kind, exec_id });
        }
        if !unknown.is_empty() {
            return Err(ConvertError::UnknownNodeTypes(unknown));
        }
        Ok(())
    }

    /// The context of an active subgraph instance, with its per-instance widget values.
    fn new_instance_ctx(&mut self, parent: usize, inst: &'g UiNode<'a>, def: usize) -> usize {
        let dg = &self.graphs[def];
        let mut path = self.ctxs[parent].path.clone();
        path.push(inst.id.clone());
        let mut c = Ctx {
            graph: def,
            path,
            parent: Some(parent),
            instance: Some(inst),
            children: HashMap::new(),
            input_values: HashMap::new(),
            primitive_inputs: HashMap::new(),
            widget_overrides: HashMap::new(),
            deep_overrides: Vec::new(),
        };
        let wv = inst.widgets_values;
        let value_at = |i: usize, name: &str| -> Option<Json> {
            match wv {
                Some(Json::Array(a)) => a.get(i).cloned(),
                Some(Json::Object(m)) => m.get(name).cloned(),
                _ => None,
            }
        };
        let proxy = inst
            .properties
            .and_then(|p| p.get("proxyWidgets"))
            .and_then(Json::as_array)
            .filter(|a| !a.is_empty());
        if let Some(proxy) = proxy {
            // Legacy promotion list: widgets_values[i] belongs to proxyWidgets[i].
            for (i, entry) in proxy.iter().enumerate() {
                let Some(e) = entry.as_array() else { continue };
                let (Some(nid), Some(wname)) = (e.first().and_then(graph::id_string), e.get(1).and_then(Json::as_str)) else { continue };
                // The frontend renames the promoted node along with the definition's node.
                let nid = self.renumbered[def].get(&nid).cloned().unwrap_or(nid);
                if wname.starts_with("$$") {
                    continue; // display-only preview, not a value
                }
                let Some(v) = value_at(i, wname) else { continue };
                if nid == "-1" {
                    c.input_values.insert(wname.to_string(), v);
                } else if let Some(src) = e.get(2).and_then(graph::id_string) {
                    c.deep_overrides.push((nid, src, wname.to_string(), v));
                } else {
                    c.widget_overrides.insert((nid, wname.to_string()), v);
                }
            }
        } else {
            // Current form: one host widget per subgraph input that feeds an inner widget, in
            // interface order; widgets_values holds their per-instance values.
            let mut k = 0;
            for port in &dg.sub_inputs {
                let is_widget = match inst.inputs.iter().find(|i| i.name == port.name) {
                    Some(i) => i.widget.is_some(),
                    None => port.link_ids.iter().any(|lid| {
                        dg.links.get(lid).is_some_and(|l| {
                            dg.nodes
                                .get(&l.target)
                                .is_some_and(|n| n.inputs.iter().any(|i| i.link.as_deref() == Some(lid.as_str()) && i.widget.is_some()))
                        })
                    }),
                };
                if !is_widget {
                    continue;
                }
                if let Some(v) = value_at(k, &port.name) {
                    c.input_values.insert(port.name.clone(), v);
                }
                k += 1;
            }
        }
        // Promotions the parent aimed through this instance.
        let pc = &self.ctxs[parent];
        for ((nid, wname), v) in &pc.widget_overrides {
            if nid == &inst.id && !c.input_values.contains_key(wname) {
                c.input_values.insert(wname.clone(), v.clone());
            }
        }
        for (nid, src, wname, v) in &pc.deep_overrides {
            if nid == &inst.id {
                c.widget_overrides.entry((src.clone(), wname.clone())).or_insert_with(|| v.clone());
            }
        }
        self.ctxs.push(c);
        self.ctxs.len() - 1
    }

    /// Step 2: PrimitiveNodes copy their value into the widget of every node they feed
    /// directly, whatever their mode, as the frontend's applyToGraph does.
    fn apply_primitives(&mut self) {
        for fi in 0..self.flats.len() {
            if !matches!(self.flats[fi].kind, Kind::Primitive) {
                continue;
            }
            let (ctx, node) = (self.flats[fi].ctx, self.flats[fi].node);
            let value = match node.widgets_values {
                Some(Json::Array(a)) => a.first().cloned(),
                Some(Json::Object(m)) => m.get("value").or_else(|| m.values().next()).cloned(),
                _ => None,
            };
            // [value, control mode?, filter?]; old files stored the mode as true/false.
            let mode = match node.widgets_values.and_then(|v| v.get(1)) {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Bool(true)) => Some("randomize".to_string()),
                Some(Json::Bool(false)) => Some("fixed".to_string()),
                _ => None,
            };
            let Some(value) = value else {
                let targets: usize = node.outputs.iter().map(|o| o.links.len()).sum();
                if targets > 0 {
                    let r = self.node_ref(ctx, node);
                    self.warnings.push(format!("{r} (PrimitiveNode) has no value in widgets_values; the widgets it feeds keep their own values"));
                }
                continue;
            };
            let g = self.graph(ctx);
            // The frontend gives a PrimitiveNode its widget from the target of its first link,
            // and only when that input is a widget input: a primitive whose first link goes
            // to a reroute or a plain socket has no widget and no value to apply.
            let links: Vec<&String> = node.outputs.first().map(|o| o.links.iter().collect()).unwrap_or_default();
            let target_input = |lid: &str| {
                let link = g.links.get(lid)?;
                let target = g.nodes.get(&link.target)?;
                let input = target.inputs.iter().find(|i| i.link.as_deref() == Some(lid))?;
                Some((target, input))
            };
            if links.first().and_then(|l| target_input(l)).is_none_or(|(_, i)| i.widget.is_none()) {
                if !links.is_empty() {
                    let r = self.node_ref(ctx, node);
                    self.warnings.push(format!(
                        "{r} (PrimitiveNode) does not feed a widget directly (its first link goes to a reroute or a socket), so, as in the frontend, its value is not used; connect it straight to a widget input"
                    ));
                }
                continue;
            }
            // Its value goes into every widget input it feeds directly (applyToGraph follows
            // no reroutes).
            let mut targets: Vec<(String, String, Option<usize>)> = Vec::new();
            for lid in &links {
                let Some((target, input)) = target_input(lid) else { continue };
                let Some(widget) = input.widget.clone() else { continue };
                let child = if self.def_index.contains_key(&target.ty) { self.ctxs[ctx].children.get(&target.id).copied() } else { None };
                targets.push((target.id.clone(), widget, child));
                if let Some(child) = child {
                    self.ctxs[child].primitive_inputs.insert(input.name.clone(), value.clone());
                }
            }
            for (target, widget, child) in targets {
                if child.is_none() {
                    self.primitive_values.entry((ctx, target)).or_default().insert(widget, (value.clone(), mode.clone()));
                }
            }
        }
    }

    /// Follows a link back to what feeds it (docs/comfyui.md, "Source resolution"), as a
    /// loop: reroute and bypass chains of any length cost no stack.
    fn resolve(&mut self, ctx: usize, link: &str, wanted: &str, consumer: (usize, &UiNode), input: &str) -> Result<Resolved, ConvertError> {
        let mut visited: HashSet<(usize, String, bool, i64)> = HashSet::new();
        let mut fallback: Option<Json> = None;
        let mut state = State::Link { ctx, link: link.to_string(), wanted: wanted.to_string() };
        let nothing = |fallback: Option<Json>| Ok(fallback.map(Resolved::Value).unwrap_or(Resolved::Nothing));
        loop {
            state = match state {
                State::Link { ctx, link, wanted } => {
                    let g = self.graph(ctx);
                    let Some(l) = g.links.get(&link) else {
                        let r = self.node_ref(consumer.0, consumer.1);
                        self.warnings.push(format!(
                            "link {link} on the way to input \"{input}\" of {r} is not in the workflow's links; treated as unconnected (reconnect it in the frontend)"
                        ));
                        return nothing(fallback);
                    };
                    if l.origin != SUBGRAPH_INPUT_ID {
                        State::Output { ctx, node: l.origin.clone(), slot: l.origin_slot, wanted }
                    } else {
                        // Up and out of a subgraph instance.
                        let c = &self.ctxs[ctx];
                        let (Some(inst), Some(parent)) = (c.instance, c.parent) else { return nothing(fallback) };
                        let Some(port) = usize::try_from(l.origin_slot).ok().and_then(|k| g.sub_inputs.get(k)) else {
                            return nothing(fallback);
                        };
                        let inst_input = inst.inputs.iter().enumerate().find(|(_, i)| i.name == port.name);
                        match inst_input.and_then(|(k, i)| i.link.clone().map(|l| (k, l, i.ty.clone()))) {
                            Some((k, outer, ty)) => {
                                if let Some(v) = c.primitive_inputs.get(&port.name) {
                                    fallback = Some(v.clone());
                                }
                                if !visited.insert((parent, inst.id.clone(), true, k as i64)) {
                                    return Err(self.cycle(parent, inst, consumer, input));
                                }
                                State::Link { ctx: parent, link: outer, wanted: ty }
                            }
                            None => {
                                let promoted = match c.input_values.get(&port.name) {
                                    Some(v) => Some(v.clone()),
                                    None => self.promoted_value(ctx, &port.name),
                                };
                                return Ok(promoted.map(Resolved::Value).unwrap_or(Resolved::Nothing));
                            }
                        }
                    }
                }
                State::Output { ctx, node, slot, wanted } => {
                    let g = self.graph(ctx);
                    let Some(n) = g.nodes.get(&node) else {
                        let r = self.node_ref(consumer.0, consumer.1);
                        self.warnings.push(format!(
                            "input \"{input}\" of {r} is linked from node {node}, which is not in the workflow; treated as unconnected"
                        ));
                        return nothing(fallback);
                    };
                    if !visited.insert((ctx, node.clone(), false, slot)) {
                        return Err(self.cycle(ctx, n, consumer, input));
                    }
                    let Ok(slot_u) = usize::try_from(slot) else { return nothing(fallback) };
                    if n.mode == MODE_BYPASS {
                        let Some(i) = bypass_input(n, slot_u, &wanted) else { return nothing(fallback) };
                        let inp = &n.inputs[i];
                        let Some(l) = inp.link.clone() else { return nothing(fallback) };
                        if !visited.insert((ctx, node.clone(), true, i as i64)) {
                            return Err(self.cycle(ctx, n, consumer, input));
                        }
                        State::Link { ctx, link: l, wanted: inp.ty.clone() }
                    } else if n.mode == MODE_NEVER {
                        // The frontend resolves a muted source to nothing: a widget input
                        // keeps its widget value, a socket stays absent.
                        return nothing(fallback);
                    } else {
                        let Some(&fi) = self.by_ctx_node.get(&(ctx, node.clone())) else { return nothing(fallback) };
                        match &self.flats[fi].kind {
                            Kind::Real(_) => return Ok(Resolved::Node(self.flats[fi].exec_id.clone(), slot)),
                            Kind::Instance(def) => {
                                let Some(&child) = self.ctxs[ctx].children.get(&node) else { return Ok(Resolved::Removed) };
                                let dg = &self.graphs[*def];
                                let inner = dg.sub_outputs.get(slot_u).and_then(|p| p.link_ids.first().cloned()).or_else(|| {
                                    dg.links
                                        .iter()
                                        .find(|(_, l)| l.target == SUBGRAPH_OUTPUT_ID && l.target_slot == slot)
                                        .map(|(id, _)| id.clone())
                                });
                                match inner {
                                    Some(l) => State::Link { ctx: child, link: l, wanted },
                                    None => return nothing(fallback),
                                }
                            }
                            Kind::GetNode => {
                                let name = n.widgets_values.and_then(|v| v.get(0)).and_then(Json::as_str).unwrap_or("");
                                let setter = g.nodes.values().find(|s| {
                                    s.ty == "SetNode" && s.widgets_values.and_then(|v| v.get(0)).and_then(Json::as_str) == Some(name)
                                });
                                match setter {
                                    Some(s) => match s.inputs.first().and_then(|i| i.link.clone()) {
                                        Some(l) => State::Link { ctx, link: l, wanted },
                                        None => return nothing(fallback),
                                    },
                                    None => {
                                        let r = self.node_ref(ctx, n);
                                        self.warnings.push(format!(
                                            "{r} reads the constant \"{name}\", but no SetNode in its graph sets it; the input it feeds is left unconnected (add a SetNode named \"{name}\" or fix the name)"
                                        ));
                                        return nothing(fallback);
                                    }
                                }
                            }
                            Kind::Reroute | Kind::Primitive | Kind::Note | Kind::SetNode => match n.inputs.get(slot_u).and_then(|i| i.link.clone()) {
                                Some(l) => State::Link { ctx, link: l, wanted },
                                None => return nothing(fallback),
                            },
                            Kind::GroupNode | Kind::Unknown => return Ok(Resolved::Removed),
                        }
                    }
                }
            };
        }
    }

    /// The value of the widget an unconnected subgraph input is promoted from, when the
    /// instance stores none of its own: the frontend's promoted widget starts as a view of the
    /// first inner widget the input feeds (through nested instances down to a real widget),
    /// and every consumer of the input reads that value, sockets included (a PreviewAny
    /// `source` fed by a promoted `width` gets the width).
    fn promoted_value(&mut self, ctx: usize, port_name: &str) -> Option<Json> {
        let (mut ctx, mut port_name) = (ctx, port_name.to_string());
        let mut seen: HashSet<(usize, String)> = HashSet::new();
        'levels: while seen.insert((ctx, port_name.clone())) {
            let g = self.graph(ctx);
            let port = g.sub_inputs.iter().find(|p| p.name == port_name)?;
            for lid in &port.link_ids {
                let Some(target) = g.links.get(lid).and_then(|l| g.nodes.get(&l.target)) else { continue };
                let Some(inp) = target.inputs.iter().find(|i| i.link.as_deref() == Some(lid.as_str())) else { continue };
                let Some(&fi) = self.by_ctx_node.get(&(ctx, target.id.clone())) else { continue };
                match self.flats[fi].kind.clone() {
                    Kind::Real(schema) => {
                        let Some(widget) = inp.widget.clone() else { continue };
                        if let Some(v) = self.ctxs[ctx].widget_overrides.get(&(target.id.clone(), widget.clone())) {
                            return Some(v.clone());
                        }
                        let assigned = widgets::assign(&schema, target.widgets_values, &String::new, &mut Vec::new());
                        return assigned.values.get(&widget).cloned();
                    }
                    Kind::Instance(_) if inp.widget.is_some() => {
                        let Some(&child) = self.ctxs[ctx].children.get(&target.id) else { continue };
                        if let Some(v) = self.ctxs[child].input_values.get(&inp.name) {
                            return Some(v.clone());
                        }
                        (ctx, port_name) = (child, inp.name.clone());
                        continue 'levels;
                    }
                    _ => {}
                }
            }
            return None;
        }
        None
    }

    fn cycle(&self, ctx: usize, node: &UiNode, consumer: (usize, &UiNode), input: &str) -> ConvertError {
        ConvertError::Cycle { node: self.node_ref(ctx, node), consumer: Box::new(self.node_ref(consumer.0, consumer.1)), input: input.to_string() }
    }

    /// Steps 3–4: the prompt.
    fn emit(mut self) -> Result<Converted, ConvertError> {
        let mut records: Vec<(usize, String, Map<String, Json>)> = Vec::new();
        let mut controls = Vec::new();
        for fi in 0..self.flats.len() {
            let Kind::Real(schema) = self.flats[fi].kind.clone() else { continue };
            let (ctx, node) = (self.flats[fi].ctx, self.flats[fi].node);
            if !is_active(node.mode) {
                continue;
            }
            let exec_id = self.flats[fi].exec_id.clone();
            let r = self.node_ref(ctx, node);
            let describe = || r.to_string();
            let assigned = widgets::assign(&schema, node.widgets_values, &describe, &mut self.warnings);
            let mut values = assigned.values;

            // Per-instance promoted values, then PrimitiveNode values.
            let mut overrides: Vec<(String, Json, &str)> = Vec::new();
            for ((nid, w), v) in &self.ctxs[ctx].widget_overrides {
                if nid == &node.id {
                    overrides.push((w.clone(), v.clone(), "a promoted subgraph widget"));
                }
            }
            let mut control_modes = assigned.controls;
            if let Some(p) = self.primitive_values.get(&(ctx, node.id.clone())) {
                for (w, (v, mode)) in p {
                    overrides.push((w.clone(), v.clone(), "a PrimitiveNode"));
                    // The primitive's own control widget drives this value now.
                    match mode {
                        Some(m) => {
                            control_modes.insert(w.clone(), m.clone());
                        }
                        _ => {
                            control_modes.shift_remove(w);
                        }
                    }
                }
            }
            for (w, v, from) in overrides {
                match values.get_mut(&w) {
                    Some(slot) => *slot = v,
                    None => self.warnings.push(format!("{r}: {from} sets widget \"{w}\", which this class does not have; ignored")),
                }
            }

            // Dynamic prompts.
            for (name, v) in values.iter_mut() {
                let Some(spec) = schema.find_input(name) else { continue };
                if !widgets::dynamic_prompts(spec) {
                    continue;
                }
                if let Json::String(s) = v {
                    if s.contains('{') || s.contains('/') {
                        let mut rng = ChoiceRng::new(self.seed ^ fnv(&[&exec_id, name]));
                        let fixed = self.draw.map(|d| d.clamp(0.0, 1.0 - f64::EPSILON));
                        *s = dynprompt::process(s, &mut || fixed.unwrap_or_else(|| rng.next_f64()));
                    }
                }
            }

            let mut inputs = Map::new();
            for (k, v) in values {
                let curve = schema.find_input(&k).and_then(widgets::widget_type).as_deref() == Some(widgets::CURVE);
                inputs.insert(k, if curve { widgets::wrap_curve(v) } else { widgets::wrap_array(v) });
            }
            for inp in &node.inputs {
                let Some(link) = &inp.link else { continue };
                if inp.name.is_empty() {
                    continue;
                }
                match self.resolve(ctx, link, &inp.ty, (ctx, node), &inp.name)? {
                    Resolved::Node(id, slot) => {
                        inputs.insert(inp.name.clone(), json!([id, slot]));
                    }
                    Resolved::Value(v) => {
                        inputs.insert(inp.name.clone(), widgets::wrap_array(v));
                    }
                    Resolved::Nothing => {}
                    Resolved::Removed => {
                        inputs.shift_remove(&inp.name);
                    }
                }
            }
            // Control widgets matter only where the widget value is what gets sent.
            for (input, mode) in control_modes {
                if inputs.get(&input).is_some_and(|v| !v.is_array()) {
                    controls.push(ControlWidget { node: exec_id.clone(), input, mode });
                }
            }
            let title = node.title.clone().unwrap_or_else(|| if schema.display_name.is_empty() { node.ty.clone() } else { schema.display_name.clone() });
            let mut rec = Map::new();
            rec.insert("inputs".into(), Json::Object(inputs));
            rec.insert("class_type".into(), Json::String(node.ty.clone()));
            rec.insert("_meta".into(), json!({ "title": title }));
            records.push((fi, exec_id, rec));
        }

        // Links to nodes that were not emitted are dropped (the frontend's cleanup).
        let emitted: HashSet<String> = records.iter().map(|(_, id, _)| id.clone()).collect();
        for (_, _, rec) in records.iter_mut() {
            if let Some(Json::Object(inputs)) = rec.get_mut("inputs") {
                inputs.retain(|_, v| match v.as_array() {
                    Some(a) if a.len() == 2 => a[0].as_str().is_none_or(|s| emitted.contains(s)),
                    _ => true,
                });
            }
        }

        // Topological order, ties by document order (Kahn's algorithm; cycles, which
        // validation reports, keep document order at the end).
        let index: HashMap<&str, usize> = records.iter().enumerate().map(|(i, (_, id, _))| (id.as_str(), i)).collect();
        let mut indegree = vec![0usize; records.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); records.len()];
        for (i, (_, _, rec)) in records.iter().enumerate() {
            let mut sources: Vec<usize> = rec["inputs"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_array().filter(|a| a.len() == 2).and_then(|a| a[0].as_str()).and_then(|s| index.get(s).copied())).collect())
                .unwrap_or_default();
            sources.sort_unstable();
            sources.dedup();
            for s in sources {
                indegree[i] += 1;
                users[s].push(i);
            }
        }
        let mut heap: BinaryHeap<Reverse<(usize, usize)>> =
            (0..records.len()).filter(|&i| indegree[i] == 0).map(|i| Reverse((records[i].0, i))).collect();
        let mut order = Vec::with_capacity(records.len());
        let mut placed = vec![false; records.len()];
        while let Some(Reverse((_, i))) = heap.pop() {
            order.push(i);
            placed[i] = true;
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    heap.push(Reverse((records[u].0, u)));
                }
            }
        }
        order.extend((0..records.len()).filter(|&i| !placed[i]));

        let mut slots: Vec<Option<(String, Map<String, Json>)>> = records.into_iter().map(|(_, id, rec)| Some((id, rec))).collect();
        let mut prompt = Map::new();
        for i in order {
            if let Some((id, rec)) = slots[i].take() {
                prompt.insert(id, Json::Object(rec));
            }
        }
        Ok(Converted { prompt: Json::Object(prompt), warnings: self.warnings, controls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rule_matches_litegraph() {
        assert!(valid_connection("MODEL", "MODEL"));
        assert!(valid_connection("*", "MODEL"));
        assert!(valid_connection("", "CLIP"));
        assert!(valid_connection("model", "MODEL"));
        assert!(!valid_connection("MODEL", "CLIP"));
        assert!(valid_connection("IMAGE,MASK", "MASK"));
        assert!(!valid_connection("IMAGE,MASK", "LATENT"));
    }
}
