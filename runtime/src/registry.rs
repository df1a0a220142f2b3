//! The registry of node classes the binary wires together (native, then Python).

use std::sync::Arc;

use indexmap::IndexMap;

use crate::node::NodeClass;

#[derive(Clone, Default)]
pub struct Registry {
    classes: IndexMap<String, Arc<dyn NodeClass>>,
    /// Classes that exist but could not be loaded, with why: a prompt using one is told that,
    /// not "not found".
    unavailable: IndexMap<String, String>,
    /// Node packs that failed to import (their classes are unknown), with why: named when a
    /// prompt uses a class nobody registered.
    failed_packs: Vec<(String, String)>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a class under its schema name. A later registration of the same name does
    /// not replace an earlier one: register the implementations that must win first.
    pub fn register(&mut self, class: Arc<dyn NodeClass>) -> bool {
        let name = class.schema().name.clone();
        if self.classes.contains_key(&name) {
            return false;
        }
        self.classes.insert(name, class);
        true
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn NodeClass>> {
        self.classes.get(name)
    }

    /// Records a class that could not be loaded (its schema failed), with the reason.
    pub fn mark_unavailable(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.unavailable.insert(name.into(), reason.into());
    }

    /// Why a class known by name could not be loaded.
    pub fn unavailable(&self, name: &str) -> Option<&str> {
        self.unavailable.get(name).map(String::as_str)
    }

    /// Records a node pack that failed to import, with the reason (its error's last line).
    pub fn note_failed_pack(&mut self, pack: impl Into<String>, reason: impl Into<String>) {
        self.failed_packs.push((pack.into(), reason.into()));
    }

    /// Node packs that failed to import: (pack, reason).
    pub fn failed_packs(&self) -> &[(String, String)] {
        &self.failed_packs
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.classes.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The `/object_info` document of every class.
    pub fn object_info(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (name, c) in &self.classes {
            m.insert(name.clone(), c.schema().to_object_info());
        }
        serde_json::Value::Object(m)
    }

    /// Closest registered names, for "unknown node type" hints.
    pub fn suggest(&self, name: &str) -> Vec<&str> {
        let lower = name.to_lowercase();
        let mut scored: Vec<(usize, &str)> = self
            .names()
            .map(|n| (edit_distance(&lower, &n.to_lowercase()), n))
            .filter(|(d, n)| *d <= (n.len().max(name.len()) / 3).max(2))
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, n)| n).collect()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != *cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
