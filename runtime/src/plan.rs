//! The nodes of one run: the validated prompt's, then those node expansions add while it runs
//! (docs/comfyui.md, "Node expansion"). Nodes are numbered in that order, so an index into the
//! prompt stays valid as the plan grows.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::node::NodeClass;
use crate::prompt::Input;
use crate::schema::NodeSchema;
use crate::validate::Validated;

/// A node an expansion added.
pub(crate) struct AddedNode {
    pub id: String,
    pub class: Arc<dyn NodeClass>,
    pub schema: Arc<NodeSchema>,
    pub inputs: IndexMap<String, Input>,
    /// Every link resolved: (input name, source index, slot).
    pub links: Vec<(String, usize, usize)>,
    /// The id relative to the prompt node it descends from (what enters its cache key when the
    /// node asks for its own id).
    pub key_id: String,
    /// The node the UI shows it as.
    pub display: String,
    /// The node whose expansion added it.
    pub parent: String,
}

pub(crate) struct Plan<'a> {
    pub base: &'a Validated,
    added: Vec<AddedNode>,
    added_index: HashMap<String, usize>,
}

/// What a call needs of its node, owned, so a worker thread can take it.
pub(crate) struct Callee {
    pub id: String,
    pub class: Arc<dyn NodeClass>,
    pub schema: Arc<NodeSchema>,
}

impl<'a> Plan<'a> {
    pub fn new(base: &'a Validated) -> Self {
        Plan { base, added: Vec::new(), added_index: HashMap::new() }
    }

    /// Nodes in the prompt.
    pub fn base_len(&self) -> usize {
        self.base.prompt.nodes.len()
    }

    pub fn len(&self) -> usize {
        self.base_len() + self.added.len()
    }

    fn added(&self, i: usize) -> Option<&AddedNode> {
        i.checked_sub(self.base_len()).map(|k| &self.added[k])
    }

    pub fn id(&self, i: usize) -> &str {
        match self.added(i) {
            Some(a) => &a.id,
            None => self.base.id(i),
        }
    }

    pub fn schema(&self, i: usize) -> &Arc<NodeSchema> {
        match self.added(i) {
            Some(a) => &a.schema,
            None => &self.base.schemas[i],
        }
    }

    pub fn class(&self, i: usize) -> &Arc<dyn NodeClass> {
        match self.added(i) {
            Some(a) => &a.class,
            None => &self.base.classes[i],
        }
    }

    pub fn links(&self, i: usize) -> &[(String, usize, usize)] {
        match self.added(i) {
            Some(a) => &a.links,
            None => &self.base.links[i],
        }
    }

    pub fn inputs(&self, i: usize) -> &IndexMap<String, Input> {
        match self.added(i) {
            Some(a) => &a.inputs,
            None => &self.base.prompt.nodes[i].inputs,
        }
    }

    /// The id a node's key uses when it asks for its own id.
    pub fn key_id(&self, i: usize) -> &str {
        match self.added(i) {
            Some(a) => &a.key_id,
            None => self.base.id(i),
        }
    }

    /// The node the UI shows `i` as: itself for a prompt node.
    pub fn display(&self, i: usize) -> &str {
        match self.added(i) {
            Some(a) => &a.display,
            None => self.base.id(i),
        }
    }

    /// The node whose expansion added `i`; `None` for a prompt node.
    pub fn parent(&self, i: usize) -> Option<&str> {
        self.added(i).map(|a| a.parent.as_str())
    }

    pub fn is_added(&self, i: usize) -> bool {
        i >= self.base_len()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.base.prompt.nodes.get_index_of(id).or_else(|| self.added_index.get(id).copied())
    }

    /// Adds a node; its index is returned. The caller checked that its id is new.
    pub fn add(&mut self, node: AddedNode) -> usize {
        let i = self.len();
        self.added_index.insert(node.id.clone(), i);
        self.added.push(node);
        i
    }

    pub fn callee(&self, i: usize) -> Callee {
        Callee { id: self.id(i).to_string(), class: self.class(i).clone(), schema: self.schema(i).clone() }
    }
}
