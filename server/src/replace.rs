//! Node replacements: node classes that are gone (renamed, merged into another) and what
//! replaces each, as ComfyUI's own nodes register them (`api.node_replacement.register`).
//! `/node_replacements` lists them for the frontend, which offers them when a workflow uses an
//! old class; a prompt submitted with an old class that no longer exists gets the first
//! replacement whose new class does, before it is validated, as ComfyUI's server does.

use std::collections::HashMap;

use comfyrs_runtime::Registry;
use serde_json::{Map, Value as Json};

/// One input of the new node: a fixed value, or the old node's input of another name.
enum InputMap {
    Set { new: String, value: Json },
    From { new: String, old: String },
}

struct Replacement {
    new_class: String,
    inputs: Vec<InputMap>,
    /// (old output slot, new output slot).
    outputs: Vec<(u64, u64)>,
}

#[derive(Default)]
pub struct Replacements {
    /// As registered: old class -> the replacements' records (`/node_replacements`).
    listed: Json,
    by_old: HashMap<String, Vec<Replacement>>,
}

impl Replacements {
    /// From the `/node_replacements` document; records it cannot read are skipped (and listed
    /// unchanged for the frontend).
    pub fn from_json(listed: Json) -> Replacements {
        let mut by_old = HashMap::new();
        for (old, offered) in listed.as_object().into_iter().flatten() {
            let parsed: Vec<Replacement> = offered.as_array().into_iter().flatten().filter_map(parse).collect();
            if !parsed.is_empty() {
                by_old.insert(old.clone(), parsed);
            }
        }
        let listed = if listed.is_object() { listed } else { Json::Object(Map::new()) };
        Replacements { listed, by_old }
    }

    pub fn listed(&self) -> &Json {
        &self.listed
    }

    /// Replaces, in an API prompt, every node whose class is not registered but has a
    /// replacement whose new class is: the new node gets only the mapped inputs (ComfyUI's
    /// rule: unmapped ones are dropped), and links out of it move to the mapped output slots.
    pub fn apply(&self, prompt: &mut Json, registry: &Registry) {
        let Some(nodes) = prompt.as_object_mut() else { return };
        if self.by_old.is_empty() {
            return;
        }
        let mut replaced: Vec<(String, &Replacement)> = Vec::new();
        for (id, node) in nodes.iter() {
            let Some(class) = node.get("class_type").and_then(Json::as_str) else { continue };
            if node.get("inputs").is_none() || registry.get(class).is_some() {
                continue;
            }
            let Some(first) = self.by_old.get(class).and_then(|r| r.first()) else { continue };
            // A replacement by a class this server does not have would only confuse the error.
            if registry.get(&first.new_class).is_some() {
                replaced.push((id.clone(), first));
            }
        }
        for (id, r) in &replaced {
            let node = nodes.get_mut(id).and_then(Json::as_object_mut).expect("a node listed above");
            let old_inputs = node.get("inputs").and_then(Json::as_object).cloned().unwrap_or_default();
            let mut inputs = Map::new();
            for m in &r.inputs {
                match m {
                    InputMap::Set { new, value } => {
                        inputs.insert(new.clone(), value.clone());
                    }
                    InputMap::From { new, old } => {
                        if let Some(v) = old_inputs.get(old) {
                            inputs.insert(new.clone(), v.clone());
                        }
                    }
                }
            }
            node.insert("class_type".into(), Json::String(r.new_class.clone()));
            node.insert("inputs".into(), Json::Object(inputs));
        }
        // Links out of a replaced node follow its output mapping.
        for (id, r) in &replaced {
            if r.outputs.is_empty() {
                continue;
            }
            for node in nodes.values_mut() {
                let Some(inputs) = node.get_mut("inputs").and_then(Json::as_object_mut) else { continue };
                for v in inputs.values_mut() {
                    let Some(link) = v.as_array_mut().filter(|a| a.len() == 2 && a[0].as_str() == Some(id.as_str())) else { continue };
                    let Some(slot) = link[1].as_u64() else { continue };
                    if let Some(&(_, new)) = r.outputs.iter().find(|(old, _)| *old == slot) {
                        link[1] = Json::from(new);
                    }
                }
            }
        }
    }
}

fn parse(record: &Json) -> Option<Replacement> {
    let new_class = record.get("new_node_id")?.as_str()?.to_string();
    let mut inputs = Vec::new();
    for m in record.get("input_mapping").and_then(Json::as_array).into_iter().flatten() {
        let new = m.get("new_id")?.as_str()?.to_string();
        if let Some(value) = m.get("set_value") {
            inputs.push(InputMap::Set { new, value: value.clone() });
        } else if let Some(old) = m.get("old_id").and_then(Json::as_str) {
            inputs.push(InputMap::From { new, old: old.to_string() });
        }
    }
    let outputs = record
        .get("output_mapping")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m.get("old_idx")?.as_u64()?, m.get("new_idx")?.as_u64()?)))
        .collect();
    Some(Replacement { new_class, inputs, outputs })
}
