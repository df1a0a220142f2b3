//! Node expansion (docs/comfyui.md, "Node expansion"): a call that returns a sub-graph to run
//! in its place, and a result whose slots may name outputs of that sub-graph.

use indexmap::IndexMap;

use crate::prompt::{Input, Link};
use crate::value::Value;

/// What one node's calls produced when at least one of them expanded.
#[derive(Clone, Debug, Default)]
pub struct Expansion {
    /// The nodes to add to the run, by id (ids unique within the prompt, as ComfyUI's
    /// GraphBuilder makes them: `<expanding id>.<call>.<graph>.<local id>`).
    pub nodes: IndexMap<String, ExpandedNode>,
    /// Per output slot, the parts its value list is made of, in call order.
    pub result: Vec<Vec<ResultPart>>,
}

/// One node of an expansion, in the prompt's shape.
#[derive(Clone, Debug)]
pub struct ExpandedNode {
    pub class_type: String,
    pub inputs: IndexMap<String, Input>,
    /// The node the UI shows this one as (ComfyUI's `override_display_id`); by default the
    /// expanding node's.
    pub display_id: Option<String>,
}

/// A piece of an output slot's value list.
#[derive(Clone, Debug)]
pub enum ResultPart {
    /// Values known now (a call that did not expand, or a literal in an expanding call's result).
    Values(Vec<Value>),
    /// The whole value list of an output of another node, usually one the expansion added.
    Link(Link),
}

impl Expansion {
    /// Appends one call's outcome: its plain outputs, or its own expansion.
    pub fn push_call(&mut self, outputs: Vec<Vec<Value>>, expansion: Option<Expansion>, n_out: usize) -> Result<(), String> {
        if self.result.len() < n_out {
            self.result.resize_with(n_out, Vec::new);
        }
        match expansion {
            None => {
                for (slot, vals) in outputs.into_iter().enumerate().take(n_out) {
                    self.result[slot].push(ResultPart::Values(vals));
                }
            }
            Some(e) => {
                for (id, node) in e.nodes {
                    if self.nodes.contains_key(&id) {
                        return Err(format!("two calls expanded into a node with the same id '{id}'"));
                    }
                    self.nodes.insert(id, node);
                }
                for (slot, parts) in e.result.into_iter().enumerate().take(n_out) {
                    self.result[slot].extend(parts);
                }
            }
        }
        Ok(())
    }
}
