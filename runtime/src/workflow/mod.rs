//! Workflow documents: format detection and UI workflow → API prompt conversion
//! (docs/comfyui.md, "UI workflows" to "From UI workflow to prompt").
//!
//! ```text
//! Document::parse(text)?            // Api(prompt) | Ui(workflow)
//!     .into_prompt(&schemas, &opts)? // Converted { prompt, warnings, controls }
//! ```
//!
//! The conversion mirrors what the ComfyUI frontend does when it queues a workflow: widgets
//! are derived from the node schemas, `widgets_values` are mapped onto them, links are
//! resolved through reroutes, bypassed nodes and subgraph boundaries, and frontend-only nodes
//! (Reroute, PrimitiveNode, Note, MarkdownNote) disappear. Every graph walk is a loop with an
//! explicit stack; nothing recurses on graph depth.
//!
//! Supported: version 0.4 (array) and version 1 (object) links; inputs matched by name;
//! `widgets_values` as a list or an object; control_after_generate and upload companion
//! widgets; the pre-1.16 forceInput placeholder layout; the `sample_` and `true`/`false`
//! fixups; muted (mode 2) nodes (not emitted; a link from one leaves a widget input its
//! widget value and a socket unset, as in the frontend); bypassed (mode 4) nodes with the
//! current type-matching rule; legacy `Reroute` (and rgthree's), `Note`, `MarkdownNote`, groups;
//! `PrimitiveNode` values (into widget inputs linked directly, and into subgraph instances);
//! subgraph node ids that collide renumbered as the frontend does on load; KJNodes'
//! `SetNode`/`GetNode`; converted widgets; array values wrapped as `{"__value__": [...]}`;
//! dynamic prompts; subgraphs (`definitions.subgraphs`, nested, ids `"10:3"`, per-instance
//! widget values in the current form and the legacy `proxyWidgets` form; an unconnected
//! promoted input feeds every inner consumer the promoted value); V3 dynamic combos (the
//! chosen option's `combo.key` sub-widgets follow the combo's value); V3 autogrow members
//! (`group.prefix0`..., widget members of the first groups before other widgets); widgets the
//! frontend sends but never saves (ImageCompare's `compare_view`).
//!
//! Refused with a message saying what to do: active nodes of unknown type
//! ([`ConvertError::UnknownNodeTypes`]; muted/bypassed or unconnected ones are skipped with a
//! warning), legacy group nodes ([`ConvertError::GroupNode`]), link cycles through
//! reroutes/bypassed nodes ([`ConvertError::Cycle`]), self-containing subgraphs.
//!
//! Limits (as for any server-side conversion): widgets that custom frontend extensions add,
//! rename or serialize specially cannot be known from the schema; widget values of autogrow
//! members in groups the frontend grows after load are not placed (links into them are).

mod convert;
mod document;
pub mod dynprompt;
mod graph;
mod widgets;

use std::fmt;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::registry::Registry;
use crate::schema::NodeSchema;

pub use convert::{ui_to_prompt, ui_to_prompt_with};
pub use document::{Document, FormatError};

/// Options of the UI → API conversion.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Seed for the random choices of dynamic prompts (`{a|b}` in widgets flagged
    /// `dynamicPrompts`). `None` draws a fresh seed from the clock, so each conversion may
    /// choose differently, as the frontend does on each queue; `Some(seed)` makes every choice
    /// reproducible. Each widget's choices depend only on the seed, the node's execution id
    /// and the input name, not on the order nodes are converted in.
    pub dynamic_prompt_seed: Option<u64>,
    /// When set, every dynamic-prompt choice draws this number (in `[0, 1)`) instead of a
    /// random one: `0.0` takes the first alternative of every group, as the frontend does
    /// with `Math.random` stubbed to return 0 (the frontend comparison in
    /// tests/frontend_oracle.rs relies on it). Overrides `dynamic_prompt_seed`.
    pub dynamic_prompt_draw: Option<f64>,
}

/// The result of a conversion.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted {
    /// The API prompt: node id → `{inputs, class_type, _meta: {title}}`.
    pub prompt: Json,
    /// Things that did not stop the conversion but that a user may want to know (skipped
    /// unknown nodes that were muted, widget count mismatches, dangling links...).
    pub warnings: Vec<String>,
    /// The control_after_generate mode of each emitted widget that has one (after the legacy
    /// `true`/`false` fixup). These are not part of the prompt; a caller that emulates the
    /// frontend's "randomize after queueing" can use them.
    pub controls: Vec<ControlWidget>,
}

/// One control_after_generate widget: `mode` is `fixed`, `increment`, `decrement`,
/// `randomize` (or `increment-wrap`) for input `input` of prompt node `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlWidget {
    pub node: String,
    pub input: String,
    pub mode: String,
}

/// A UI node named in an error: its execution id (`"10:3"` inside subgraph instances), its
/// title when the user set one, and its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef {
    pub id: String,
    pub title: Option<String>,
    pub node_type: String,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.title {
            Some(t) => write!(f, "node {} \"{}\" (type {})", self.id, t, self.node_type),
            None => write!(f, "node {} (type {})", self.id, self.node_type),
        }
    }
}

/// Why a UI workflow cannot be converted. Each message says what to change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// The document is not shaped like a UI workflow.
    #[error("{0}")]
    Shape(String),
    /// Active nodes whose types no registered class (native or Python) provides.
    #[error("{}", unknown_types_message(.0))]
    UnknownNodeTypes(Vec<NodeRef>),
    /// A legacy group node (`workflow>Name`), which is not expanded.
    #[error("{node} is a legacy group node (\"{group}\"), which comfyrs does not expand: open the workflow in the ComfyUI frontend and convert the group node to a subgraph (right-click it → Convert to Subgraph) and save, or export the workflow in API format (Workflow → Export (API)) and run that file")]
    GroupNode { node: NodeRef, group: String },
    /// Reroute / bypass / subgraph links that loop back on themselves.
    #[error("the links feeding input \"{input}\" of {consumer} run in a circle through {node}: reroute or bypassed nodes feed each other, so the input has no source; reconnect one of them to a real node's output")]
    Cycle { node: NodeRef, consumer: Box<NodeRef>, input: String },
    /// A subgraph definition that contains an instance of itself.
    #[error("{node} is an instance of subgraph \"{definition}\", which (directly or through nested subgraphs) contains itself; unpack or remove the nested instance in the ComfyUI frontend")]
    RecursiveSubgraph { node: NodeRef, definition: String },
}

fn unknown_types_message(nodes: &[NodeRef]) -> String {
    let mut types: Vec<&str> = nodes.iter().map(|n| n.node_type.as_str()).collect();
    types.sort();
    types.dedup();
    let list: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    format!(
        "{} of unknown type: {}. No installed node provides {}: install the custom node pack that defines {}, fix the type name, or mute/bypass/delete {} in the workflow",
        if nodes.len() == 1 { "a node is" } else { "nodes are" },
        list.join(", "),
        if types.len() == 1 { format!("\"{}\"", types[0]) } else { format!("{:?}", types) },
        if types.len() == 1 { "it" } else { "them" },
        if nodes.len() == 1 { "the node" } else { "those nodes" },
    )
}

/// The schema look-up `ui_to_prompt` wants, backed by a registry.
pub fn registry_schemas(registry: &Registry) -> impl Fn(&str) -> Option<Arc<NodeSchema>> + '_ {
    move |name| registry.get(name).map(|c| c.schema())
}
