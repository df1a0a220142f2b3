//! Reading the UI workflow graph (docs/comfyui.md, "UI workflows"): nodes, links in both the
//! version-0.4 array shape and the version-1 object shape, and subgraph definitions.
//!
//! Everything here borrows from the parsed JSON; nothing is converted yet.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_json::Value as Json;

use super::ConvertError;

/// Node id of the subgraph input pseudo-node inside a definition.
pub(crate) const SUBGRAPH_INPUT_ID: &str = "-10";
/// Node id of the subgraph output pseudo-node inside a definition.
pub(crate) const SUBGRAPH_OUTPUT_ID: &str = "-20";

/// One graph: the root workflow or one subgraph definition.
pub(crate) struct UiGraph<'a> {
    pub nodes: IndexMap<String, UiNode<'a>>,
    pub links: HashMap<String, UiLink>,
    /// Subgraph interface (empty for the root graph).
    pub sub_inputs: Vec<SubgraphPort>,
    pub sub_outputs: Vec<SubgraphPort>,
    /// Definition name (subgraphs) for messages.
    pub name: Option<String>,
}

pub(crate) struct SubgraphPort {
    pub name: String,
    pub link_ids: Vec<String>,
}

pub(crate) struct UiNode<'a> {
    pub id: String,
    pub ty: String,
    pub mode: i64,
    pub title: Option<String>,
    pub inputs: Vec<UiInput>,
    pub outputs: Vec<UiOutput>,
    pub widgets_values: Option<&'a Json>,
    pub properties: Option<&'a Json>,
}

pub(crate) struct UiInput {
    pub name: String,
    pub ty: String,
    pub link: Option<String>,
    /// `widget.name` when this socket belongs to a widget input.
    pub widget: Option<String>,
}

pub(crate) struct UiOutput {
    pub ty: String,
    pub links: Vec<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct UiLink {
    pub origin: String,
    pub origin_slot: i64,
    pub target: String,
    pub target_slot: i64,
}

/// A node or link id as the string the prompt uses: integers print without a fraction,
/// strings stay as they are.
pub(crate) fn id_string(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    Some((f as i64).to_string())
                } else {
                    Some(f.to_string())
                }
            }
        }
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn slot_number(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A slot type as a string; litegraph's event types (numbers) and missing types become "".
pub(crate) fn type_string(v: Option<&Json>) -> String {
    match v {
        Some(Json::String(s)) => s.clone(),
        _ => String::new(),
    }
}

impl<'a> UiGraph<'a> {
    /// Parses one graph object. `what` names it in messages ("the workflow", "subgraph X").
    pub fn parse(json: &'a Json, what: &str, warnings: &mut Vec<String>) -> Result<UiGraph<'a>, ConvertError> {
        let obj = json
            .as_object()
            .ok_or_else(|| ConvertError::Shape(format!("{what} is not a JSON object; re-save it from the ComfyUI frontend")))?;
        let node_list = match obj.get("nodes") {
            Some(Json::Array(a)) => a.as_slice(),
            None | Some(Json::Null) => &[],
            Some(_) => {
                return Err(ConvertError::Shape(format!("{what}: \"nodes\" is not an array; re-save it from the ComfyUI frontend")))
            }
        };
        let mut nodes = IndexMap::with_capacity(node_list.len());
        for (i, n) in node_list.iter().enumerate() {
            let node = UiNode::parse(n, i, what)?;
            if nodes.contains_key(&node.id) {
                return Err(ConvertError::Shape(format!(
                    "{what}: two nodes share the id {}; the file is corrupt: re-save it from the ComfyUI frontend",
                    node.id
                )));
            }
            nodes.insert(node.id.clone(), node);
        }

        let mut links = HashMap::new();
        if let Some(Json::Array(list)) = obj.get("links") {
            for l in list {
                match parse_link(l) {
                    Some((id, link)) => {
                        links.insert(id, link);
                    }
                    None if l.is_null() => {}
                    None => warnings.push(format!("{what}: skipped a malformed entry in \"links\": {}", short(l))),
                }
            }
        }

        let port_list = |key: &str| -> Vec<SubgraphPort> {
            obj.get(key)
                .and_then(Json::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| SubgraphPort {
                            name: p.get("name").and_then(Json::as_str).unwrap_or("").to_string(),
                            link_ids: p
                                .get("linkIds")
                                .and_then(Json::as_array)
                                .map(|l| l.iter().filter_map(id_string).collect())
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(UiGraph {
            nodes,
            links,
            sub_inputs: port_list("inputs"),
            sub_outputs: port_list("outputs"),
            name: obj.get("name").and_then(Json::as_str).map(String::from),
        })
    }
}

fn parse_link(l: &Json) -> Option<(String, UiLink)> {
    match l {
        // Version 0.4: [id, origin_id, origin_slot, target_id, target_slot, type]
        Json::Array(a) if a.len() >= 5 => Some((
            id_string(&a[0])?,
            UiLink { origin: id_string(&a[1])?, origin_slot: slot_number(&a[2])?, target: id_string(&a[3])?, target_slot: slot_number(&a[4])? },
        )),
        // Version 1: {id, origin_id, origin_slot, target_id, target_slot, type, parentId?}
        Json::Object(o) => Some((
            id_string(o.get("id")?)?,
            UiLink {
                origin: id_string(o.get("origin_id")?)?,
                origin_slot: slot_number(o.get("origin_slot")?)?,
                target: id_string(o.get("target_id")?)?,
                target_slot: slot_number(o.get("target_slot")?)?,
            },
        )),
        _ => None,
    }
}

impl<'a> UiNode<'a> {
    fn parse(n: &'a Json, index: usize, what: &str) -> Result<UiNode<'a>, ConvertError> {
        let obj = n.as_object().ok_or_else(|| {
            ConvertError::Shape(format!("{what}: nodes[{index}] is not an object; re-save the workflow from the ComfyUI frontend"))
        })?;
        let id = obj.get("id").and_then(id_string).ok_or_else(|| {
            ConvertError::Shape(format!("{what}: nodes[{index}] has no usable \"id\"; re-save the workflow from the ComfyUI frontend"))
        })?;
        let ty = match obj.get("type") {
            Some(Json::String(s)) => s.clone(),
            _ => {
                return Err(ConvertError::Shape(format!(
                    "{what}: node {id} has no \"type\"; re-save the workflow from the ComfyUI frontend or delete that node"
                )))
            }
        };
        let mode = obj.get("mode").and_then(slot_number).unwrap_or(0);
        let title = obj.get("title").and_then(Json::as_str).map(String::from);
        let inputs = obj
            .get("inputs")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .map(|i| UiInput {
                        name: i.get("name").and_then(Json::as_str).unwrap_or("").to_string(),
                        ty: type_string(i.get("type")),
                        link: i.get("link").and_then(id_string),
                        widget: i.get("widget").and_then(|w| w.get("name")).and_then(Json::as_str).map(String::from),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let outputs = obj
            .get("outputs")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .map(|o| UiOutput {
                        ty: type_string(o.get("type")),
                        links: o.get("links").and_then(Json::as_array).map(|l| l.iter().filter_map(id_string).collect()).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(UiNode {
            id,
            ty,
            mode,
            title,
            inputs,
            outputs,
            widgets_values: obj.get("widgets_values").filter(|v| !v.is_null()),
            properties: obj.get("properties"),
        })
    }
}

/// Collects every subgraph definition: `definitions.subgraphs` of the root and, nested, of
/// each definition, in the frontend's order (each definition followed by its own nested ones;
/// the first of two with one id wins), walked with an explicit stack.
pub(crate) fn collect_definitions<'a>(root: &'a Json, warnings: &mut Vec<String>) -> Result<Vec<(String, UiGraph<'a>)>, ConvertError> {
    let mut defs: Vec<(String, UiGraph<'a>)> = Vec::new();
    let list = |g: &'a Json| g.get("definitions").and_then(|d| d.get("subgraphs")).and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]);
    let mut stack: Vec<std::slice::Iter<'a, Json>> = vec![list(root).iter()];
    while let Some(iter) = stack.last_mut() {
        let Some(def) = iter.next() else {
            stack.pop();
            continue;
        };
        let Some(id) = def.get("id").and_then(Json::as_str) else {
            warnings.push("skipped a subgraph definition without an \"id\"".to_string());
            continue;
        };
        if defs.iter().any(|(d, _)| d == id) {
            continue;
        }
        let name = def.get("name").and_then(Json::as_str).unwrap_or(id);
        let graph = UiGraph::parse(def, &format!("subgraph definition \"{name}\" ({id})"), warnings)?;
        defs.push((id.to_string(), graph));
        stack.push(list(def).iter());
    }
    Ok(defs)
}

/// The frontend's load-time repair of node ids (docs/comfyui.md, "UI workflows"): a node inside a
/// definition whose id is already taken by a root node or by a node of an earlier definition
/// gets a fresh id, the next free number after the workflow's `last_node_id` (which each fresh
/// or larger id moves on). Renames the nodes and their links in place; returns, per
/// definition (in `defs` order), the old → new ids, which `proxyWidgets` entries follow too.
pub(crate) fn renumber_colliding_ids(root: &UiGraph, defs: &mut [(String, UiGraph)], last_node_id: Option<&Json>) -> Vec<HashMap<String, String>> {
    let numeric = |id: &str| id.parse::<i64>().ok().filter(|n| n.to_string() == id);
    let mut taken: std::collections::HashSet<String> = root.nodes.keys().cloned().collect();
    let mut numbers: std::collections::HashSet<i64> = root.nodes.keys().filter_map(|k| numeric(k)).collect();
    let mut last = last_node_id.and_then(slot_number).unwrap_or(0);
    let mut out = Vec::with_capacity(defs.len());
    for (_, g) in defs.iter_mut() {
        let mut renamed: HashMap<String, String> = HashMap::new();
        for id in g.nodes.keys() {
            if taken.contains(id) {
                let mut next = last + 1;
                while numbers.contains(&next) {
                    next += 1;
                }
                last = next;
                numbers.insert(next);
                taken.insert(next.to_string());
                renamed.insert(id.clone(), next.to_string());
            } else {
                taken.insert(id.clone());
                if let Some(n) = numeric(id) {
                    numbers.insert(n);
                    last = last.max(n);
                }
            }
        }
        if !renamed.is_empty() {
            let nodes = std::mem::take(&mut g.nodes);
            g.nodes = nodes
                .into_iter()
                .map(|(id, mut n)| {
                    let id = renamed.get(&id).cloned().unwrap_or(id);
                    n.id = id.clone();
                    (id, n)
                })
                .collect();
            for l in g.links.values_mut() {
                if let Some(n) = renamed.get(&l.origin) {
                    l.origin = n.clone();
                }
                if let Some(n) = renamed.get(&l.target) {
                    l.target = n.clone();
                }
            }
        }
        out.push(renamed);
    }
    out
}

/// A JSON value cut short for messages.
pub(crate) fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}
