//! Cache affinity (docs/scale-out.md, "Cache affinity"): which worker a prompt should go to
//! first. A prompt's heavy nodes (those that load or merge models) get keys from the prompt's
//! structure: a node's class, its constant inputs in canonical form, and for each link the key
//! of the node it comes from and the output index, hashed with blake3. The same sub-graph gives
//! the same key in any prompt, whatever its node ids. Workers announce the keys of the prompts
//! they ran (their caches keep those results); the dispatcher offers a prompt to the worker
//! announcing most of its keys.
//!
//! These are not the executor's signatures: those also read each class's fingerprint
//! (`IS_CHANGED`), which may need Python or the files, and the server signs nothing. A changed
//! file under an unchanged name sends a prompt to a worker that has to load it again: a
//! routing miss, never a wrong result.

use std::collections::HashMap;

use comfyrs_runtime::Registry;
use serde_json::Value as Json;

/// Output types whose producers are worth routing for: loading or merging them takes seconds.
const HEAVY_TYPES: &[&str] = &["MODEL", "CLIP", "VAE", "CONTROL_NET", "CLIP_VISION", "STYLE_MODEL", "UPSCALE_MODEL", "GLIGEN"];

/// Whether a node of `class` loads or merges a model: one of its outputs is a model type, or
/// it is a WIDEN node (whose recipe caches a worker keeps warm).
fn heavy(class: &str, registry: &Registry) -> bool {
    if class.starts_with("WIDEN") {
        return true;
    }
    registry.get(class).is_some_and(|c| c.schema().outputs.iter().any(|o| HEAVY_TYPES.contains(&o.ty.as_str())))
}

/// The keys of `prompt`'s heavy nodes (hex, sorted, without repeats). `prompt` is an API
/// prompt (`{"id": {"class_type", "inputs"}}`); a link is a `[node id, output index]` pair.
pub fn keys(prompt: &Json, registry: &Registry) -> Vec<String> {
    let Some(nodes) = prompt.as_object() else { return Vec::new() };
    let mut memo: HashMap<&str, Option<[u8; 32]>> = HashMap::new();
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|(_, n)| n["class_type"].as_str().is_some_and(|c| heavy(c, registry)))
        .filter_map(|(id, _)| key(id, nodes, &mut memo, 0))
        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Deeper than this, a graph is not one a client built by hand: no key (and no affinity).
const MAX_DEPTH: usize = 512;

fn key<'a>(id: &'a str, nodes: &'a serde_json::Map<String, Json>, memo: &mut HashMap<&'a str, Option<[u8; 32]>>, depth: usize) -> Option<[u8; 32]> {
    if let Some(k) = memo.get(id) {
        return *k;
    }
    if depth > MAX_DEPTH {
        return None;
    }
    // A cycle (the server validated the prompt, so none is expected) ends in no key.
    memo.insert(id, None);
    let node = nodes.get(id)?;
    let mut h = blake3::Hasher::new();
    h.update(node["class_type"].as_str().unwrap_or("").as_bytes());
    h.update(&[0]);
    let mut inputs: Vec<(&String, &Json)> = node["inputs"].as_object().map(|m| m.iter().collect()).unwrap_or_default();
    inputs.sort_by(|a, b| a.0.cmp(b.0));
    for (name, v) in inputs {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        match link(v) {
            Some((from, slot)) => {
                let upstream = key(from, nodes, memo, depth + 1)?;
                h.update(b"L");
                h.update(&upstream);
                h.update(&slot.to_le_bytes());
            }
            None => {
                h.update(b"C");
                comfyrs_runtime::signature::put_json(&mut h, v);
            }
        }
    }
    let k = Some(*h.finalize().as_bytes());
    memo.insert(id, k);
    k
}

/// `["id", 0]`: a link to output 0 of node "id".
fn link(v: &Json) -> Option<(&str, u64)> {
    match v.as_array().map(Vec::as_slice) {
        Some([Json::String(from), slot]) => Some((from.as_str(), slot.as_u64()?)),
        _ => None,
    }
}

/// Which worker to offer a prompt with `keys` to: the one announcing most of them (ties: the
/// one that is idle, then the first by name); none when no worker announces any.
pub fn choose<'a>(keys: &[String], workers: &'a [super::Heartbeat]) -> Option<&'a str> {
    if keys.is_empty() {
        return None;
    }
    workers
        .iter()
        .map(|w| (w.warm.iter().filter(|k| keys.binary_search(k).is_ok()).count(), w.prompt.is_none(), w))
        .filter(|(n, _, _)| *n > 0)
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.name.cmp(&a.2.name)))
        .map(|(_, _, w)| w.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        Registry::new()
    }

    #[test]
    fn the_same_sub_graph_has_the_same_key_under_other_ids_and_a_changed_input_another() {
        let a = json!({
            "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "m.safetensors"}},
            "2": {"class_type": "WIDENExit", "inputs": {"widen": ["1", 0], "t": 1.0}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        });
        let b = json!({
            "10": {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}},
            "20": {"class_type": "WIDENExit", "inputs": {"t": 1.0, "widen": ["30", 0]}},
            "30": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "m.safetensors"}},
        });
        let (ka, kb) = (keys(&a, &registry()), keys(&b, &registry()));
        assert_eq!(ka.len(), 2, "the two WIDEN nodes; PreviewAny is not heavy");
        assert_eq!(ka, kb);
        let mut c = a.clone();
        c["2"]["inputs"]["t"] = json!(0.5);
        let kc = keys(&c, &registry());
        assert_eq!(kc.iter().filter(|k| ka.contains(k)).count(), 1, "the base is shared, the merge is not");
        // 1 and 1.0 are different inputs.
        let mut d = a.clone();
        d["2"]["inputs"]["t"] = json!(1);
        assert_ne!(keys(&d, &registry()), ka);
    }

    #[test]
    fn the_worker_with_most_keys_is_chosen_and_idle_breaks_ties() {
        let hb = |name: &str, warm: &[&str], busy: bool| super::super::Heartbeat {
            name: name.into(),
            host: "h".into(),
            device: "cpu".into(),
            pid: 1,
            started: 0,
            at: 0,
            prompt: busy.then(|| "p".to_string()),
            done: 0,
            warm: warm.iter().map(|s| s.to_string()).collect(),
            lease_ms: 0,
        };
        let keys: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let ws = [hb("w1", &["a"], false), hb("w2", &["a", "b"], true), hb("w3", &["x"], false)];
        assert_eq!(choose(&keys, &ws), Some("w2"));
        let ws = [hb("w1", &["a"], true), hb("w2", &["b"], false)];
        assert_eq!(choose(&keys, &ws), Some("w2"), "as warm, and idle");
        assert_eq!(choose(&keys, &[hb("w1", &["x"], false)]), None);
        assert_eq!(choose(&[], &[hb("w1", &["a"], false)]), None);
    }
}
