//! Content-addressed cache keys (docs/architecture.md, "How caching works").
//!
//! A node's signature is a blake3 hash of its class, its constant inputs in canonical form
//! (ints and floats distinct), its fingerprint, and for each linked input the source's
//! signature and output index. Node ids never enter (except for nodes that ask for their own id),
//! so a renumbered workflow, or another workflow holding the same sub-graph, hits the cache.

use std::fmt;

use serde_json::Value as Json;

use indexmap::IndexMap;

use crate::node::{Args, Fingerprint, NodeClass};
use crate::prompt::Input;
use crate::schema::{InputKind, NodeSchema};
use crate::validate::Validated;
use crate::value::Value;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature(pub [u8; 32]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Signs every node reachable from the outputs, in dependency order, without recursion.
/// Nodes not needed by any output get `None`.
pub fn sign_all(v: &Validated) -> Vec<Option<Signature>> {
    sign_all_with(v, &run_salt())
}

/// [`sign_all`] with the run's salt given (the executor signs the nodes expansions add with
/// the same one).
pub fn sign_all_with(v: &Validated, salt: &Salt) -> Vec<Option<Signature>> {
    let n = v.prompt.nodes.len();
    let order = topo_order(v);
    let mut sigs: Vec<Option<Signature>> = vec![None; n];
    for i in order {
        let (id, node) = v.prompt.nodes.get_index(i).unwrap();
        let view = NodeView { schema: &v.schemas[i], class: v.classes[i].as_ref(), id, key_id: id, inputs: &node.inputs, links: &v.links[i] };
        sigs[i] = Some(sign_node(&view, &sigs, salt));
    }
    sigs
}

/// One random salt per run makes "always changed" fingerprints unique to that run.
pub type Salt = [u8; 16];

/// What signing one node reads.
pub struct NodeView<'a> {
    pub schema: &'a NodeSchema,
    pub class: &'a dyn NodeClass,
    /// The node's id in the run (salts an "always changed" fingerprint).
    pub id: &'a str,
    /// The id that enters the key of a node that asks for its own id: the prompt's id, or for
    /// a node an expansion added, its id relative to the prompt node it descends from.
    pub key_id: &'a str,
    pub inputs: &'a IndexMap<String, Input>,
    /// Resolved links: (input name, source index, slot).
    pub links: &'a [(String, usize, usize)],
}

/// Nodes reachable from the outputs through any link, sources before consumers (Kahn).
pub fn topo_order(v: &Validated) -> Vec<usize> {
    let n = v.prompt.nodes.len();
    let mut needed = vec![false; n];
    let mut stack: Vec<usize> = v.outputs.clone();
    for &o in &v.outputs {
        needed[o] = true;
    }
    while let Some(i) = stack.pop() {
        for &(_, src, _) in &v.links[i] {
            if !needed[src] {
                needed[src] = true;
                stack.push(src);
            }
        }
    }
    let mut indeg = vec![0usize; n];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).filter(|&i| needed[i]) {
        for &(_, src, _) in &v.links[i] {
            indeg[i] += 1;
            consumers[src].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| needed[i] && indeg[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            indeg[c] -= 1;
            if indeg[c] == 0 {
                ready.push(c);
            }
        }
    }
    order
}

/// A node's signature; the sources its links name must be signed already.
pub fn sign_node(n: &NodeView, sigs: &[Option<Signature>], salt: &Salt) -> Signature {
    let (schema, id) = (n.schema, n.id);
    let mut h = blake3::Hasher::new();
    h.update(b"comfyrs-node-v1\0");
    put_str(&mut h, &schema.name);

    // Constant inputs: declared ones only (undeclared constants never reach the node).
    let mut constants = Args::default();
    let mut names: Vec<&String> = n.inputs.keys().collect();
    names.sort();
    for name in &names {
        if let Input::Const(c) = &n.inputs[*name] {
            if schema.accepts_constant(name) {
                constants.insert(name, c.clone());
            }
        }
    }
    match n.class.fingerprint(id, &constants) {
        None => {
            h.update(&[0]);
        }
        Some(Fingerprint::Value(j)) => {
            h.update(&[1]);
            put_json(&mut h, &j);
        }
        Some(Fingerprint::Always) => {
            // Unique to this run and this node: like ComfyUI's NaN, it equals nothing else, so
            // two "always changed" nodes of one prompt never share a result.
            h.update(&[2]);
            h.update(salt);
            put_str(&mut h, id);
        }
    }
    let wants_id = schema.not_idempotent
        || schema.inputs.iter().any(|s| matches!(&s.kind, InputKind::Hidden(t) if t == "UNIQUE_ID"));
    if wants_id {
        h.update(&[3]);
        put_str(&mut h, n.key_id);
    }
    let mut holds_object = false;
    for name in names {
        match &n.inputs[name] {
            Input::Const(c) => {
                if constants.values.contains_key(name.as_str()) {
                    put_str(&mut h, name);
                    h.update(b"c");
                    put_value(&mut h, c);
                    holds_object |= holds_handle(c);
                }
            }
            Input::Link(l) => {
                // Validation resolved every link of a needed node.
                if let Some(&(_, src, slot)) = n.links.iter().find(|(k, _, _)| k == name) {
                    put_str(&mut h, name);
                    h.update(b"l");
                    h.update(&sigs[src].expect("sources are signed first").0);
                    h.update(&(slot as u64).to_le_bytes());
                } else {
                    put_str(&mut h, name);
                    h.update(b"?");
                    put_str(&mut h, &l.node);
                }
            }
            Input::Malformed(_) => {}
        }
    }
    if holds_object {
        // A live object handed over as a constant (an expansion passing a tensor on) is keyed
        // by its address, which is unique only while it lives: within this run.
        h.update(b"run");
        h.update(salt);
    }
    Signature(*h.finalize().as_bytes())
}

fn holds_handle(v: &Value) -> bool {
    match v {
        Value::Handle(_) => true,
        Value::List(items) => items.iter().any(holds_handle),
        _ => false,
    }
}

/// A fresh salt for one run.
pub fn run_salt() -> Salt {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = blake3::hash(&[t.to_le_bytes().as_slice(), &crate::random::fresh_u64().to_le_bytes(), &std::process::id().to_le_bytes()].concat());
    h.as_bytes()[..16].try_into().unwrap()
}

fn put_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// Canonical, type-tagged encoding: `1` and `1.0` differ, object key order does not matter,
/// `-0.0` is `0.0` (equal floats, as ComfyUI's cache keys compare them) and every NaN is one.
pub fn put_value(h: &mut blake3::Hasher, v: &Value) {
    match v {
        Value::Int(i) => {
            h.update(b"i");
            h.update(&i.to_le_bytes());
        }
        Value::Float(f) => {
            h.update(b"f");
            let bits = if f.is_nan() {
                f64::NAN.to_bits()
            } else if *f == 0.0 {
                0.0f64.to_bits()
            } else {
                f.to_bits()
            };
            h.update(&bits.to_le_bytes());
        }
        Value::Bool(b) => {
            h.update(if *b { b"T" } else { b"F" });
        }
        Value::String(s) => {
            h.update(b"s");
            put_str(h, s);
        }
        Value::Json(j) => {
            h.update(b"j");
            put_json(h, j);
        }
        Value::List(items) => {
            h.update(b"L");
            h.update(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(h, it);
            }
        }
        Value::None => {
            h.update(b"N");
        }
        Value::Handle(handle) => {
            // Constants are never handles; if one appears, make it unique to this object.
            h.update(b"H");
            h.update(&(std::sync::Arc::as_ptr(handle) as *const () as usize as u64).to_le_bytes());
        }
    }
}

pub fn put_json(h: &mut blake3::Hasher, j: &Json) {
    match j {
        Json::Null => {
            h.update(b"N");
        }
        Json::Bool(b) => {
            h.update(if *b { b"T" } else { b"F" });
        }
        Json::Number(_) => put_value(h, &Value::from_json(j)),
        Json::String(s) => {
            h.update(b"s");
            put_str(h, s);
        }
        Json::Array(a) => {
            h.update(b"[");
            h.update(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_json(h, x);
            }
        }
        Json::Object(o) => {
            h.update(b"{");
            h.update(&(o.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for k in keys {
                put_str(h, k);
                put_json(h, &o[k]);
            }
        }
    }
}
