//! The recipe tree: immutable descriptions built by the WIDEN nodes, evaluated by the Exit.
//!
//! Nodes are `Arc`s; a recipe holds no tensors (a base holds a handle to its model, which maps
//! its file). Every node has a *content* hash (blake3) over what it says — LoRA names and
//! strengths, block configs, t_factors, structure, the base model's identity — so two nodes
//! with the same content are the same set (docs/decisions.md D11) wherever they come from. File
//! identities (size, mtime) are not read at build time (nodes do no I/O); the Exit folds them into
//! its per-key evaluation hashes.

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::arch::Arch;

pub mod block;
mod error;
pub mod foreign;
pub mod model;

pub use error::{KeyTooLarge, PackError};
use model::NativeModel;

/// Where a Model Input's file lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceDir {
    Checkpoints,
    DiffusionModels,
}

impl SourceDir {
    pub fn name(self) -> &'static str {
        match self {
            SourceDir::Checkpoints => "checkpoints",
            SourceDir::DiffusionModels => "diffusion_models",
        }
    }
}

/// Per-block overrides of a Block Config node (D10: every value is a relative multiplier).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockConfig {
    /// Architecture tag of the node that made it (`sdxl`, `sdxl_clip`, `zimage`, `flux`, `qwen`).
    pub arch: Arch,
    pub block_overrides: Vec<(String, f64)>,
    pub layer_type_overrides: Vec<(String, f64)>,
}

impl BlockConfig {
    /// The multiplier of a key: block × layer type (1.0 where a slider is absent).
    pub fn multiplier(&self, key: &str, arch: Arch) -> f64 {
        let class = crate::arch::classify_key(key, arch);
        let mut m = 1.0;
        if let Some(c) = &class {
            if let Some(b) = &c.block {
                if let Some((_, v)) = self.block_overrides.iter().find(|(n, _)| n == b) {
                    m *= v;
                }
            }
            if let Some(lt) = c.layer_type {
                if let Some((_, v)) = self.layer_type_overrides.iter().find(|(n, _)| n == lt.name()) {
                    m *= v;
                }
            }
        }
        m
    }

    pub fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("arch".into(), json!(self.arch.tag()));
        if !self.block_overrides.is_empty() {
            m.insert("block_overrides".into(), json!(self.block_overrides.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>()));
        }
        if !self.layer_type_overrides.is_empty() {
            m.insert(
                "layer_type_overrides".into(),
                json!(self.layer_type_overrides.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>()),
            );
        }
        Json::Object(m)
    }
}

/// Which pipeline a recipe belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipeDomain {
    Diffusion,
    Clip,
}

impl RecipeDomain {
    pub fn name(self) -> &'static str {
        match self {
            RecipeDomain::Diffusion => "diffusion",
            RecipeDomain::Clip => "clip",
        }
    }
    /// The socket type of recipes of this domain.
    pub fn socket(self) -> &'static str {
        match self {
            RecipeDomain::Diffusion => "WIDEN",
            RecipeDomain::Clip => "WIDEN_CLIP",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoraEntry {
    /// The name as the node got it (relative to the `loras` folders).
    pub path: String,
    pub strength: f64,
}

/// A recipe node.
pub enum RecipeKind {
    Base { model: Arc<NativeModel>, arch: Arch, domain: RecipeDomain },
    Lora { loras: Vec<LoraEntry>, block_config: Option<Arc<BlockConfig>> },
    Model { path: String, strength: f64, block_config: Option<Arc<BlockConfig>>, source_dir: SourceDir },
    Compose { branches: Vec<Recipe> },
    Merge { base: Recipe, target: Recipe, backbone: Option<Recipe>, t_factor: f64, block_config: Option<Arc<BlockConfig>> },
}

pub struct RecipeNode {
    pub kind: RecipeKind,
    hash: [u8; 32],
}

pub type Recipe = Arc<RecipeNode>;

impl fmt::Debug for RecipeNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.type_name(), &self.hash_hex()[..12])
    }
}

fn hash_f64(h: &mut blake3::Hasher, v: f64) {
    h.update(&v.to_bits().to_le_bytes());
}

fn hash_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

pub(crate) fn hash_block_config(h: &mut blake3::Hasher, bc: &Option<Arc<BlockConfig>>) {
    match bc {
        None => {
            h.update(b"-");
        }
        Some(bc) => {
            h.update(b"B");
            hash_str(h, bc.arch.tag());
            for (n, v) in &bc.block_overrides {
                hash_str(h, n);
                hash_f64(h, *v);
            }
            h.update(b"|");
            for (n, v) in &bc.layer_type_overrides {
                hash_str(h, n);
                hash_f64(h, *v);
            }
        }
    }
}

impl RecipeNode {
    pub fn new(kind: RecipeKind) -> Recipe {
        let mut h = blake3::Hasher::new();
        match &kind {
            RecipeKind::Base { model, arch, domain } => {
                h.update(b"base");
                h.update(model.identity());
                hash_str(&mut h, arch.tag());
                hash_str(&mut h, domain.name());
            }
            RecipeKind::Lora { loras, block_config } => {
                h.update(b"lora");
                for l in loras {
                    hash_str(&mut h, &l.path);
                    hash_f64(&mut h, l.strength);
                }
                hash_block_config(&mut h, block_config);
            }
            RecipeKind::Model { path, strength, block_config, source_dir } => {
                h.update(b"model");
                hash_str(&mut h, path);
                hash_f64(&mut h, *strength);
                hash_str(&mut h, source_dir.name());
                hash_block_config(&mut h, block_config);
            }
            RecipeKind::Compose { branches } => {
                h.update(b"compose");
                for b in branches {
                    h.update(b.hash());
                }
            }
            RecipeKind::Merge { base, target, backbone, t_factor, block_config } => {
                h.update(b"merge");
                h.update(base.hash());
                h.update(target.hash());
                match backbone {
                    Some(b) => h.update(b.hash()),
                    None => h.update(b"-"),
                };
                hash_f64(&mut h, *t_factor);
                hash_block_config(&mut h, block_config);
            }
        }
        Arc::new(RecipeNode { kind, hash: *h.finalize().as_bytes() })
    }

    /// Content hash of this subtree.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn hash_hex(&self) -> String {
        blake3::Hash::from(self.hash).to_hex().to_string()
    }

    /// The reference pack's class name of this node (used in messages).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            RecipeKind::Base { .. } => "RecipeBase",
            RecipeKind::Lora { .. } => "RecipeLoRA",
            RecipeKind::Model { .. } => "RecipeModel",
            RecipeKind::Compose { .. } => "RecipeCompose",
            RecipeKind::Merge { .. } => "RecipeMerge",
        }
    }

    pub fn is_base(&self) -> bool {
        matches!(self.kind, RecipeKind::Base { .. })
    }
    pub fn is_merge(&self) -> bool {
        matches!(self.kind, RecipeKind::Merge { .. })
    }
    pub fn is_contribution(&self) -> bool {
        !self.is_base()
    }

    /// Calls `f` on this node and every node below it, depth first: a merge's base, target and
    /// backbone, a compose's branches, in that order.
    pub fn walk(self: &Arc<Self>, f: &mut dyn FnMut(&Recipe)) {
        f(self);
        match &self.kind {
            RecipeKind::Compose { branches } => branches.iter().for_each(|b| b.walk(f)),
            RecipeKind::Merge { base, target, backbone, .. } => {
                base.walk(f);
                target.walk(f);
                if let Some(b) = backbone {
                    b.walk(f);
                }
            }
            RecipeKind::Base { .. } | RecipeKind::Lora { .. } | RecipeKind::Model { .. } => {}
        }
    }

    /// The RecipeBase reached by following `base` links.
    pub fn find_base(self: &Arc<Self>) -> Option<Recipe> {
        match &self.kind {
            RecipeKind::Base { .. } => Some(self.clone()),
            RecipeKind::Merge { base, .. } => base.find_base(),
            _ => None,
        }
    }

    /// Compose with `branch` appended (the original is unchanged).
    pub fn with_branch(self: &Arc<Self>, branch: Recipe) -> Recipe {
        match &self.kind {
            RecipeKind::Compose { branches } => {
                let mut b = branches.clone();
                b.push(branch);
                RecipeNode::new(RecipeKind::Compose { branches: b })
            }
            _ => RecipeNode::new(RecipeKind::Compose { branches: vec![branch] }),
        }
    }

    /// Deterministic JSON (`docs/widen.md`, "Saving merged models"), with file stats from `stats`
    /// (`name → (mtime, size)`) and the base identity.
    pub fn to_json(&self, stats: &dyn Fn(&str) -> Option<(f64, u64)>) -> Json {
        match &self.kind {
            RecipeKind::Base { model, arch, domain } => json!({
                "type": "RecipeBase",
                "arch": arch.tag(),
                "domain": domain.name(),
                "base_identity": blake3::Hash::from(model.saved_identity()).to_hex().to_string(),
            }),
            RecipeKind::Lora { loras, block_config } => {
                let entries: Vec<Json> = loras
                    .iter()
                    .map(|l| {
                        let mut e = serde_json::Map::new();
                        e.insert("path".into(), json!(l.path));
                        e.insert("strength".into(), json!(l.strength));
                        if let Some((mtime, size)) = stats(&l.path) {
                            e.insert("mtime".into(), json!(mtime));
                            e.insert("size".into(), json!(size));
                        }
                        Json::Object(e)
                    })
                    .collect();
                let mut m = serde_json::Map::new();
                m.insert("type".into(), json!("RecipeLoRA"));
                m.insert("loras".into(), Json::Array(entries));
                if let Some(bc) = block_config {
                    m.insert("block_config".into(), bc.to_json());
                }
                Json::Object(m)
            }
            RecipeKind::Model { path, strength, block_config, source_dir } => {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), json!("RecipeModel"));
                m.insert("path".into(), json!(path));
                m.insert("strength".into(), json!(strength));
                m.insert("source_dir".into(), json!(source_dir.name()));
                if let Some((mtime, size)) = stats(path) {
                    m.insert("mtime".into(), json!(mtime));
                    m.insert("size".into(), json!(size));
                }
                if let Some(bc) = block_config {
                    m.insert("block_config".into(), bc.to_json());
                }
                Json::Object(m)
            }
            RecipeKind::Compose { branches } => json!({
                "type": "RecipeCompose",
                "branches": branches.iter().map(|b| b.to_json(stats)).collect::<Vec<_>>(),
            }),
            RecipeKind::Merge { base, target, backbone, t_factor, block_config } => {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), json!("RecipeMerge"));
                m.insert("base".into(), base.to_json(stats));
                m.insert("target".into(), target.to_json(stats));
                m.insert("t_factor".into(), json!(t_factor));
                if let Some(b) = backbone {
                    m.insert("backbone".into(), b.to_json(stats));
                }
                if let Some(bc) = block_config {
                    m.insert("block_config".into(), bc.to_json());
                }
                Json::Object(m)
            }
        }
    }
}

/// Canonical JSON text: keys sorted, compact, ASCII-escaped.
pub fn canonical_json(v: &Json) -> String {
    fn sort(v: &Json) -> Json {
        match v {
            Json::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Json::Object(out)
            }
            Json::Array(a) => Json::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let s = serde_json::to_string(&sort(v)).unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        }
    }
    out
}

/// The opaque value carrying a recipe along links (`WIDEN` / `WIDEN_CLIP`).
pub struct RecipeHandle {
    pub recipe: Recipe,
    pub domain: RecipeDomain,
}

impl comfyrs_runtime::value::Opaque for RecipeHandle {
    fn type_name(&self) -> &str {
        self.domain.socket()
    }
    /// A recipe holds no tensors: its nodes are small; a base's model is owned by the node that
    /// produced it and counted there.
    fn byte_size(&self) -> usize {
        fn size(r: &RecipeNode) -> usize {
            256 + match &r.kind {
                RecipeKind::Base { .. } => 0,
                RecipeKind::Lora { loras, .. } => loras.iter().map(|l| l.path.len() + 16).sum(),
                RecipeKind::Model { path, .. } => path.len(),
                RecipeKind::Compose { branches } => branches.iter().map(|b| size(b)).sum(),
                RecipeKind::Merge { base, target, backbone, .. } => {
                    size(base) + size(target) + backbone.as_ref().map_or(0, |b| size(b))
                }
            }
        }
        size(&self.recipe)
    }
    fn describe(&self) -> String {
        format!("<{} {:?}>", self.domain.socket(), self.recipe)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A Block Config node's output (`BLOCK_CONFIG`).
pub struct BlockConfigHandle(pub Arc<BlockConfig>);

impl comfyrs_runtime::value::Opaque for BlockConfigHandle {
    fn type_name(&self) -> &str {
        "BLOCK_CONFIG"
    }
    fn byte_size(&self) -> usize {
        64 + (self.0.block_overrides.len() + self.0.layer_type_overrides.len()) * 40
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
