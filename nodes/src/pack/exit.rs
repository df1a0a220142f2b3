//! The Exit evaluator (`recipe-and-nodes.md` §6, with decisions D3-D10, D17-D19).
//!
//! 1. Validation of the tree (paths `root.base`, `root.target.branches[1]`, ...), block-config
//!    architectures (D10), before any file is opened.
//! 2. Analysis: every LoRA set loaded (memory-mapped factors) against the base's names and
//!    shapes, every Model Input opened; keys to process = base keys ∩ keys any contribution
//!    touches.
//! 3. Per key, a content hash per merge subtree (file identities, strengths, the key's own
//!    effective t_factor and block multipliers, the device): the subtree cache (D19) answers the
//!    keys whose hash it has seen, at every level of the merge chain.
//! 4. The other keys are grouped by shape and by which contributions touch them in which form
//!    (low-rank factors or dense), and evaluated in chunks sized from a memory budget, halving a
//!    chunk on out-of-memory down to one key (D18).
//! 5. Semantics: a Merge's contribution(s) are its target's leaves (nested composes flattened,
//!    D7), each measured against the backbone (the merge's base, or the evaluated `backbone`
//!    recipe, D8); a Merge used as a target or branch is a model of its own (D9); block configs
//!    multiply LoRA/model strengths and t_factors per key (D10); t_factor cases of D5 and
//!    non-contributors (D3) are the math module's. Results are in each key's own dtype (D17).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use comfyrs_runtime::ExecContext;
use indexmap::IndexMap;
use serde_json::{json, Value as Json};
use tch::{Device, Kind, Tensor};

use crate::arch::Arch;
use crate::lora::{LoadOptions, LoraFile, LoraSet};
use crate::models::{CheckpointDomain, CheckpointFile, FileIdentity, MappedTensor};
use crate::widen::{ColumnStats, Contribution, Widen, WidenConfig};

use super::cache::{CACHE, STATS};
use super::model::NativeModel;
use super::recipe::{BlockConfig, Recipe, RecipeDomain, RecipeKind, SourceDir};
use super::save;
use super::{PackContext, PackError};

pub struct ExitOptions {
    pub domain: RecipeDomain,
    pub save_model: bool,
    pub model_name: String,
    pub save_workflow: bool,
    pub enable_cache: bool,
    /// The running prompt's `extra_pnginfo` (saved as `__ecaj_workflow__` with `save_workflow`).
    pub extra_pnginfo: Option<Json>,
}

/// Seconds per phase of an Exit run.
#[derive(Clone, Debug, Default)]
pub struct Phases {
    pub analysis: f64,
    pub load: f64,
    pub compute: f64,
    pub results: f64,
}

/// What a run did, for logs and the Exit's UI output.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    /// Keys the recipe changes.
    pub keys: usize,
    /// Keys computed in this run.
    pub recomputed: usize,
    /// Keys whose final result came from the subtree cache.
    pub cache_hits: usize,
    /// Merge-subtree results reused from the cache at any level (inner merges included).
    pub subtree_hits: usize,
    /// Keys × merge steps whose column statistics were reused (t_factor-only changes).
    pub stats_hits: usize,
    /// Bytes of the merged keys (each in its storage dtype).
    pub bytes: usize,
    /// Where the time went, seconds: reading the recipe's files and planning, moving weights to
    /// the device, computing (with results already travelling to host memory), and waiting for
    /// the last results to arrive.
    pub phases: Phases,
    pub groups: usize,
    pub seconds: f64,
    pub device: String,
    pub saved: Option<String>,
    pub reused_saved_file: bool,
    pub lora_reports: Vec<String>,
}

impl ExitStats {
    pub fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("keys".into(), json!(self.keys));
        m.insert("recomputed".into(), json!(self.recomputed));
        m.insert("cache_hits".into(), json!(self.cache_hits));
        m.insert("subtree_hits".into(), json!(self.subtree_hits));
        m.insert("stats_hits".into(), json!(self.stats_hits));
        m.insert("bytes".into(), json!(self.bytes));
        let r = |x: f64| (x * 1e4).round() / 1e4;
        let p = &self.phases;
        m.insert(
            "phases".into(),
            json!({"analysis": r(p.analysis), "load": r(p.load), "compute": r(p.compute), "results": r(p.results)}),
        );
        m.insert("groups".into(), json!(self.groups));
        m.insert("seconds".into(), json!((self.seconds * 1e4).round() / 1e4));
        m.insert("device".into(), json!(self.device));
        if let Some(s) = &self.saved {
            m.insert("saved".into(), json!(s));
            m.insert("reused_saved_file".into(), json!(self.reused_saved_file));
        }
        if !self.lora_reports.is_empty() {
            m.insert("loras".into(), json!(self.lora_reports));
        }
        Json::Object(m)
    }
}

pub struct ExitResult {
    pub model: Arc<NativeModel>,
    pub stats: ExitStats,
}

/// Progress and interrupt hooks (the runtime's `ExecContext`, or nothing for library use).
pub trait Reporter {
    fn progress(&self, done: u64, total: u64);
    fn interrupted(&self) -> bool;
}

impl Reporter for ExecContext<'_> {
    fn progress(&self, done: u64, total: u64) {
        ExecContext::progress(self, done, total)
    }
    fn interrupted(&self) -> bool {
        self.check_interrupt().is_err()
    }
}

/// No progress, never interrupted.
pub struct Silent;
impl Reporter for Silent {
    fn progress(&self, _: u64, _: u64) {}
    fn interrupted(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Validates the tree (§6.1, D10, D20). Returns the base.
pub fn validate(root: &Recipe, domain: RecipeDomain) -> Result<Recipe, PackError> {
    let exit = match domain {
        RecipeDomain::Diffusion => "Exit",
        RecipeDomain::Clip => "CLIP Exit",
    };
    if !root.is_base() && !root.is_merge() {
        let merge = if domain == RecipeDomain::Clip { "CLIP Merge" } else { "Merge" };
        return Err(PackError::value(format!(
            "{exit} node expects RecipeMerge or RecipeBase at root, got {}. Connect a {merge} node to {exit}.",
            root.type_name()
        )));
    }
    walk(root, "root")?;
    let base = root.find_base().ok_or_else(|| PackError::value("recipe has no RecipeBase".to_string()))?;
    let RecipeKind::Base { arch, domain: bd, .. } = &base.kind else { unreachable!() };
    if *bd != domain {
        let (want, node) = match domain {
            RecipeDomain::Clip => ("clip", "Use CLIP Entry node to create CLIP recipes."),
            RecipeDomain::Diffusion => ("diffusion", "Use the Entry node (or WIDENBaseInput) to create diffusion recipes."),
        };
        return Err(PackError::value(format!(
            "RecipeBase at root has domain='{}', expected domain='{want}'. {node}",
            bd.name()
        )));
    }
    check_block_configs(root, "root", *arch)?;
    Ok(base)
}

fn walk(node: &Recipe, path: &str) -> Result<(), PackError> {
    match &node.kind {
        RecipeKind::Base { .. } | RecipeKind::Lora { .. } | RecipeKind::Model { .. } => Ok(()),
        RecipeKind::Compose { branches } => {
            if branches.is_empty() {
                return Err(PackError::value(format!("RecipeCompose at {path} has no branches")));
            }
            for (i, b) in branches.iter().enumerate() {
                if b.is_base() {
                    return Err(PackError::value(format!(
                        "Invalid branch type at {path}.branches[{i}]: expected RecipeLoRA, RecipeModel, RecipeCompose, or RecipeMerge, got RecipeBase"
                    )));
                }
                walk(b, &format!("{path}.branches[{i}]"))?;
            }
            Ok(())
        }
        RecipeKind::Merge { base, target, backbone, .. } => {
            if !base.is_base() && !base.is_merge() {
                return Err(PackError::value(format!(
                    "Invalid base type at {path}.base: expected RecipeBase or RecipeMerge, got {}",
                    base.type_name()
                )));
            }
            if target.is_base() {
                return Err(PackError::value(format!(
                    "Invalid target type at {path}.target: expected RecipeLoRA, RecipeModel, RecipeCompose, or RecipeMerge, got RecipeBase"
                )));
            }
            walk(base, &format!("{path}.base"))?;
            walk(target, &format!("{path}.target"))?;
            if let Some(b) = backbone {
                if matches!(b.kind, RecipeKind::Compose { .. }) {
                    return Err(PackError::value(format!(
                        "Invalid backbone type at {path}.backbone: a Compose is not a model. Connect an Entry, Merge, \
                         LoRA or Model Input output to 'backbone' (or leave it unconnected to use the merge's base)."
                    )));
                }
                walk(b, &format!("{path}.backbone"))?;
            }
            Ok(())
        }
    }
}

fn check_bc(bc: &Option<Arc<BlockConfig>>, path: &str, arch: Arch) -> Result<(), PackError> {
    if let Some(bc) = bc {
        if bc.arch != arch {
            return Err(PackError::value(format!(
                "Block config architecture '{}' at {path} does not match base model architecture '{}'. \
                 Use a Block Config node matching the base model's architecture.",
                bc.arch.tag(),
                arch.tag()
            )));
        }
    }
    Ok(())
}

fn check_block_configs(node: &Recipe, path: &str, arch: Arch) -> Result<(), PackError> {
    match &node.kind {
        RecipeKind::Base { .. } => Ok(()),
        RecipeKind::Lora { block_config, .. } | RecipeKind::Model { block_config, .. } => check_bc(block_config, path, arch),
        RecipeKind::Compose { branches } => {
            for (i, b) in branches.iter().enumerate() {
                check_block_configs(b, &format!("{path}.branches[{i}]"), arch)?;
            }
            Ok(())
        }
        RecipeKind::Merge { base, target, backbone, block_config, .. } => {
            check_bc(block_config, path, arch)?;
            check_block_configs(base, &format!("{path}.base"), arch)?;
            check_block_configs(target, &format!("{path}.target"), arch)?;
            if let Some(b) = backbone {
                check_block_configs(b, &format!("{path}.backbone"), arch)?;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Analysis

/// A loaded LoRA set (one LoRA node chain).
pub struct LoadedSet {
    pub set: LoraSet,
    pub files: Vec<(String, f64, FileIdentity)>,
    /// Keys whose every delta can enter as low-rank factors (checked once per set: it asks
    /// libtorch for factor sizes, thousands of calls per run otherwise).
    low_rank: std::collections::HashSet<String>,
    /// Content identity: files, strengths and order, the base and the LoRA architecture.
    key: [u8; 32],
}

pub struct LoadedModel {
    pub file: CheckpointFile,
    pub name: String,
}

/// Everything the evaluation needs, by recipe node (pointer identity within this run).
pub struct Analysis {
    pub base: Arc<NativeModel>,
    pub arch: Arch,
    sets: HashMap<usize, Arc<LoadedSet>>,
    models: HashMap<usize, Arc<LoadedModel>>,
    /// Per node: hash of its content and the identity of the files it reads (no block configs,
    /// no t_factor: those enter per key).
    static_hash: HashMap<usize, [u8; 32]>,
    /// Per node: hash of its whole content (t_factors included), or `None` when a block config
    /// sits in its subtree. Without block configs a node's result is the same function of every
    /// key, so its key hash is one hash of this and the key instead of a walk of the subtree.
    whole_hash: HashMap<usize, Option<[u8; 32]>>,
    pub keys: Vec<String>,
    /// `key_hash` results of this run by (node, key): the recursion would otherwise redo every
    /// subtree for each level that asks.
    key_hashes: std::sync::Mutex<HashMap<usize, HashMap<String, [u8; 32]>>>,
}

fn ptr(r: &Recipe) -> usize {
    Arc::as_ptr(r) as usize
}

/// Parsed LoRA files by (file fingerprint, arch, base identity).
type LoraMemo = HashMap<(String, Arch, [u8; 32]), Arc<LoraFile>>;

/// Process-wide memo of parsed LoRA files.
fn load_lora(path: &std::path::Path, base: &NativeModel, arch: Arch) -> Result<Arc<LoraFile>, PackError> {
    use std::sync::{LazyLock, Mutex};
    static MEMO: LazyLock<Mutex<LoraMemo>> = LazyLock::new(Default::default);
    let id = FileIdentity::of(path).map_err(|e| PackError::not_found(format!("cannot stat '{}': {e}", path.display())))?;
    let key = (id.fingerprint(), arch, *base.identity());
    if let Some(f) = MEMO.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(f.clone());
    }
    let opts = LoadOptions { index: Some(base.name_index()), require_match: true };
    let file = Arc::new(LoraFile::load_with(path, arch, &opts).map_err(PackError::format)?);
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() > 256 {
        memo.clear();
    }
    memo.insert(key, file.clone());
    Ok(file)
}

/// The LoRA set of `files` at their strengths, memoized by content (`key`): building one clones
/// every delta spec of every file (thousands for full-size LoRAs, ~5 ms on a GPU host for four
/// SDXL LoRAs), and a slider change elsewhere in the recipe would otherwise redo it on each run.
fn loaded_set(key: [u8; 32], files: &[(String, f64, Arc<LoraFile>)], base: &NativeModel) -> Arc<LoadedSet> {
    use std::sync::{LazyLock, Mutex};
    static SETS: LazyLock<Mutex<HashMap<[u8; 32], Arc<LoadedSet>>>> = LazyLock::new(Default::default);
    if let Some(s) = SETS.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return s.clone();
    }
    let mut set = LoraSet::new();
    for (_, strength, file) in files {
        set.add(file, *strength);
    }
    let low_rank = set
        .deltas
        .affected_keys()
        .filter(|k| base.shape(k).is_some_and(|shape| fits_low_rank(set.deltas.specs(k), &shape)))
        .map(String::from)
        .collect();
    let loaded = Arc::new(LoadedSet {
        set,
        files: files.iter().map(|(name, strength, file)| (name.clone(), *strength, file.identity.clone())).collect(),
        low_rank,
        key,
    });
    let mut sets = SETS.lock().unwrap_or_else(|e| e.into_inner());
    if sets.len() >= 64 {
        sets.clear();
    }
    sets.insert(key, loaded.clone());
    loaded
}

pub fn analyze(pack: &PackContext, root: &Recipe, base_node: &Recipe) -> Result<Analysis, PackError> {
    let RecipeKind::Base { model, arch, domain } = &base_node.kind else { unreachable!() };
    let lora_arch = match domain {
        RecipeDomain::Diffusion => *arch,
        RecipeDomain::Clip => Arch::SdxlClip,
    };
    let mut a = Analysis {
        base: model.clone(),
        arch: *arch,
        sets: HashMap::new(),
        models: HashMap::new(),
        static_hash: HashMap::new(),
        whole_hash: HashMap::new(),
        keys: Vec::new(),
        key_hashes: Default::default(),
    };
    let folders = pack.folders().clone();
    // Identities of the sets and models the recipe reads: the keys they touch are memoized by them.
    let mut sources: Vec<[u8; 32]> = Vec::new();
    fn visit(
        node: &Recipe,
        a: &mut Analysis,
        folders: &crate::models::ModelFolders,
        lora_arch: Arch,
        domain: RecipeDomain,
        sources: &mut Vec<[u8; 32]>,
    ) -> Result<[u8; 32], PackError> {
        if let Some(h) = a.static_hash.get(&ptr(node)) {
            return Ok(*h);
        }
        let mut h = blake3::Hasher::new();
        match &node.kind {
            RecipeKind::Base { model, .. } => {
                h.update(b"B");
                h.update(model.identity());
            }
            RecipeKind::Lora { loras, .. } => {
                h.update(b"L");
                let mut loaded = Vec::with_capacity(loras.len());
                for l in loras {
                    let path = folders.resolve("loras", &l.path).map_err(|e| match e {
                        crate::models::FormatError::BadName { .. } => PackError::value(e.to_string()),
                        _ => PackError::not_found(format!(
                            "LoRA file not found: {} (referenced by LoRA node with strength {}; searched the loras folders). \
                             Put the file in a loras folder or pick another lora_name.",
                            l.path, l.strength
                        )),
                    })?;
                    let file = load_lora(&path, &a.base, lora_arch)?;
                    h.update(l.path.as_bytes());
                    h.update(&l.strength.to_bits().to_le_bytes());
                    h.update(file.identity.fingerprint().as_bytes());
                    loaded.push((l.path.clone(), l.strength, file));
                }
                // The set's content so far identifies it (files, strengths, order), with the base
                // and the LoRA architecture its names were resolved against.
                let mut key = h.clone();
                key.update(a.base.identity());
                key.update(lora_arch.tag().as_bytes());
                let key = *key.finalize().as_bytes();
                sources.push(key);
                a.sets.insert(ptr(node), loaded_set(key, &loaded, &a.base));
            }
            RecipeKind::Model { path, strength, source_dir, .. } => {
                h.update(b"M");
                let kinds: &[&str] = match (domain, source_dir) {
                    (RecipeDomain::Clip, _) | (_, SourceDir::Checkpoints) => &["checkpoints"],
                    (_, SourceDir::DiffusionModels) => &["diffusion_models"],
                };
                let resolved = kinds.iter().find_map(|k| folders.resolve(k, path).ok());
                let Some(p) = resolved else {
                    return Err(PackError::not_found(format!(
                        "Checkpoint file not found: {path}\nReferenced by Model Input node with strength {strength}"
                    )));
                };
                let cd = match domain {
                    RecipeDomain::Diffusion => CheckpointDomain::Diffusion,
                    RecipeDomain::Clip => CheckpointDomain::Clip,
                };
                let file = CheckpointFile::open(&p, cd).map_err(PackError::format)?;
                if domain == RecipeDomain::Diffusion {
                    if let Some(ca) = file.arch() {
                        if ca != a.arch {
                            return Err(PackError::value(format!(
                                "Architecture mismatch: checkpoint '{path}' has architecture '{}' but base model has '{}'\n\
                                 Both models must have the same architecture for merging.",
                                ca.tag(),
                                a.arch.tag()
                            )));
                        }
                    }
                }
                h.update(path.as_bytes());
                h.update(source_dir.name().as_bytes());
                h.update(&strength.to_bits().to_le_bytes());
                h.update(file.file().identity().fingerprint().as_bytes());
                sources.push(*blake3::hash(format!("{cd:?}|{}", file.file().identity().fingerprint()).as_bytes()).as_bytes());
                a.models.insert(ptr(node), Arc::new(LoadedModel { file, name: path.clone() }));
            }
            RecipeKind::Compose { branches } => {
                h.update(b"C");
                for b in branches {
                    h.update(&visit(b, a, folders, lora_arch, domain, sources)?);
                }
            }
            RecipeKind::Merge { base, target, backbone, .. } => {
                h.update(b"G");
                h.update(&visit(base, a, folders, lora_arch, domain, sources)?);
                h.update(&visit(target, a, folders, lora_arch, domain, sources)?);
                match backbone {
                    Some(b) => h.update(&visit(b, a, folders, lora_arch, domain, sources)?),
                    None => h.update(b"-"),
                };
            }
        }
        let out = *h.finalize().as_bytes();
        a.static_hash.insert(ptr(node), out);
        Ok(out)
    }
    visit(root, &mut a, &folders, lora_arch, *domain, &mut sources)?;
    whole_hash(root, &a.static_hash, &mut a.whole_hash);
    a.keys = touched_keys(&a, sources);
    Ok(a)
}

/// Keys to process: base keys (float tensors) that some set or model touches, sorted. Memoized
/// by the identities of the base and of those sources (a slider change asks again for the same).
fn touched_keys(a: &Analysis, mut sources: Vec<[u8; 32]>) -> Vec<String> {
    use std::sync::{LazyLock, Mutex};
    type Memo = HashMap<[u8; 32], Arc<Vec<String>>>;
    static MEMO: LazyLock<Mutex<Memo>> = LazyLock::new(Default::default);
    sources.sort_unstable();
    sources.dedup();
    let mut h = blake3::Hasher::new();
    h.update(b"touched keys");
    h.update(a.base.identity());
    sources.iter().for_each(|s| {
        h.update(s);
    });
    let memo_key = *h.finalize().as_bytes();
    if let Some(keys) = MEMO.lock().unwrap_or_else(|e| e.into_inner()).get(&memo_key) {
        return keys.to_vec();
    }
    let mut touched: std::collections::HashSet<&str> = Default::default();
    for set in a.sets.values() {
        touched.extend(set.set.deltas.affected_keys());
    }
    for m in a.models.values() {
        touched.extend(m.file.keys());
    }
    let mut keys: Vec<String> = a
        .base
        .keys()
        .filter(|k| touched.contains(*k))
        .filter(|k| matches!(a.base.kind(k), Some(Kind::Float | Kind::Half | Kind::BFloat16)))
        .map(String::from)
        .collect();
    keys.sort();
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() >= 64 {
        memo.clear();
    }
    memo.insert(memo_key, Arc::new(keys.clone()));
    keys
}

/// `rows` as one `[B, *S]` view when they lie back to back in one tensor's memory, as the keys
/// of a chunk do in the subtree cache when the same chunk asks for them again: the stack it
/// saves is a copy of the whole chunk and a call per key.
fn consecutive_rows(rows: &[Tensor]) -> Option<Tensor> {
    let first = rows.first()?;
    let size = first.size();
    let numel = first.numel();
    let row_bytes = numel * first.kind().elt_size_in_bytes();
    let base = first.data_ptr() as usize;
    let lined_up = first.is_contiguous()
        && rows.iter().enumerate().all(|(i, r)| {
            r.data_ptr() as usize == base + i * row_bytes && r.kind() == first.kind() && r.device() == first.device() && r.size() == size
        });
    if !lined_up {
        return None;
    }
    let mut shape = vec![rows.len() as i64];
    shape.extend_from_slice(&size);
    let mut strides = vec![numel as i64];
    strides.extend_from_slice(&first.stride());
    // `as_strided` checks the extent against the first row's storage, so rows that merely sit
    // next to it in memory (another allocation) fail here instead of being read through it.
    first.f_as_strided(shape.as_slice(), strides.as_slice(), None).ok()
}

/// Fills [`Analysis::whole_hash`] for `node` and its subtree.
fn whole_hash(node: &Recipe, statics: &HashMap<usize, [u8; 32]>, out: &mut HashMap<usize, Option<[u8; 32]>>) -> Option<[u8; 32]> {
    if let Some(h) = out.get(&ptr(node)) {
        return *h;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"whole");
    h.update(&statics[&ptr(node)]);
    let mut ok = true;
    let mut child = |c: &Recipe, h: &mut blake3::Hasher, out: &mut HashMap<usize, Option<[u8; 32]>>| match whole_hash(c, statics, out) {
        Some(x) => {
            h.update(&x);
        }
        None => ok = false,
    };
    match &node.kind {
        RecipeKind::Base { .. } => {}
        RecipeKind::Lora { block_config, .. } | RecipeKind::Model { block_config, .. } => {
            if block_config.is_some() {
                out.insert(ptr(node), None);
                return None;
            }
        }
        RecipeKind::Compose { branches } => branches.iter().for_each(|b| child(b, &mut h, out)),
        RecipeKind::Merge { base, target, backbone, t_factor, block_config } => {
            child(base, &mut h, out);
            child(target, &mut h, out);
            match backbone {
                Some(b) => child(b, &mut h, out),
                None => {
                    h.update(b"-");
                }
            }
            h.update(&t_factor.to_bits().to_le_bytes());
            ok &= block_config.is_none();
        }
    }
    let result = ok.then(|| *h.finalize().as_bytes());
    out.insert(ptr(node), result);
    result
}

/// The device, as bytes for hashing (no allocation, unlike its `Debug` text).
fn device_tag(device: Device) -> [u8; 9] {
    let (kind, index) = match device {
        Device::Cpu => (0u8, 0usize),
        Device::Cuda(i) => (1, i),
        Device::Mps => (2, 0),
        Device::Vulkan => (3, 0),
    };
    let mut tag = [kind; 9];
    tag[1..].copy_from_slice(&(index as u64).to_le_bytes());
    tag
}

impl Analysis {
    pub fn lora_reports(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sets.values().flat_map(|s| s.set.reports.iter().map(|r| r.summary())).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The per-key multiplier of a block config (1.0 without one).
    fn mult(&self, bc: &Option<Arc<BlockConfig>>, key: &str) -> f64 {
        bc.as_ref().map_or(1.0, |bc| bc.multiplier(key, self.arch))
    }

    /// Content hash of `node`'s result (a model, or a contribution relative to its enclosing
    /// merge's base) on `key`, on `device`.
    pub fn key_hash(&self, node: &Recipe, key: &str, device: Device) -> [u8; 32] {
        if let Some(Some(whole)) = self.whole_hash.get(&ptr(node)) {
            let mut h = blake3::Hasher::new();
            h.update(b"key of whole");
            h.update(whole);
            h.update(key.as_bytes());
            h.update(&device_tag(device));
            return *h.finalize().as_bytes();
        }
        // By node, then key: a lookup borrows the key (no allocation; thousands per run).
        if let Some(h) = self.key_hashes.lock().unwrap_or_else(|e| e.into_inner()).get(&ptr(node)).and_then(|m| m.get(key)) {
            return *h;
        }
        let out = self.compute_key_hash(node, key, device);
        self.key_hashes.lock().unwrap_or_else(|e| e.into_inner()).entry(ptr(node)).or_default().insert(key.to_string(), out);
        out
    }

    /// (One device per run: the memo does not key on it.)
    fn compute_key_hash(&self, node: &Recipe, key: &str, device: Device) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.static_hash[&ptr(node)]);
        h.update(key.as_bytes());
        match &node.kind {
            RecipeKind::Base { .. } => {}
            RecipeKind::Lora { block_config, .. } | RecipeKind::Model { block_config, .. } => {
                h.update(&self.mult(block_config, key).to_bits().to_le_bytes());
            }
            RecipeKind::Compose { branches } => {
                for b in branches {
                    h.update(&self.key_hash(b, key, device));
                }
            }
            RecipeKind::Merge { t_factor, block_config, .. } => {
                h.update(&self.stats_hash(node, key, device));
                h.update(&(t_factor * self.mult(block_config, key)).to_bits().to_le_bytes());
            }
        }
        *h.finalize().as_bytes()
    }

    /// What a Merge's column statistics on `key` depend on: its base, contributions and
    /// backbone (their content hashes on this key) and the device — everything but its t_factor.
    pub fn stats_hash(&self, node: &Recipe, key: &str, device: Device) -> [u8; 32] {
        let RecipeKind::Merge { base, target, backbone, .. } = &node.kind else {
            unreachable!("statistics belong to merges")
        };
        let mut h = blake3::Hasher::new();
        h.update(b"merge inputs");
        h.update(&self.static_hash[&ptr(node)]);
        h.update(key.as_bytes());
        h.update(&self.key_hash(base, key, device));
        h.update(&self.key_hash(target, key, device));
        if let Some(b) = backbone {
            h.update(&self.key_hash(b, key, device));
        }
        h.update(&device_tag(device));
        *h.finalize().as_bytes()
    }

    /// Leaves of a merge target: nested composes flattened (D7).
    fn leaves<'r>(&self, target: &'r Recipe, out: &mut Vec<&'r Recipe>) {
        match &target.kind {
            RecipeKind::Compose { branches } => {
                for b in branches {
                    self.leaves(b, out);
                }
            }
            _ => out.push(target),
        }
    }

    /// Whether `set` can enter `key` as low-rank factors.
    fn low_rank_ok(&self, set: &LoadedSet, key: &str) -> bool {
        set.low_rank.contains(key)
    }
}

/// Whether every delta of a key of `shape` is a pair of factors of matching sizes.
fn fits_low_rank(specs: &[crate::lora::DeltaSpec], shape: &[i64]) -> bool {
    if shape.len() < 2 {
        return false;
    }
    let out = shape[0];
    let k: i64 = shape[1..].iter().product();
    specs.iter().all(|s| match s.low_rank() {
        Some((up, down)) => {
            let rows = s.rows.map_or(out, |r| r.len);
            let r = up.size().get(1).copied().unwrap_or(0);
            up.size()[0] == rows
                && up.numel() as i64 == rows * r
                && down.size()[0] == r
                && down.numel() as i64 == r * k
                && s.rows.is_none_or(|rr| rr.start + rr.len <= out)
        }
        None => false,
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation

struct Eval<'a> {
    a: &'a Analysis,
    widen: Widen,
    device: Device,
    use_cache: bool,
    /// The recipe's root (pointer identity): its results are the Exit's output.
    root: usize,
    subtree_hits: usize,
    /// Keys × merge steps whose column statistics came from the cache.
    stats_hits: usize,
    /// Time spent moving base and model weights to the device.
    load_seconds: f64,
}

/// Debug-level timing of an evaluation's steps (`-v`): waits for the GPU at each mark so the
/// time lands on the step that spent it. Costs nothing unless debug logging is on.
struct Lap {
    on: bool,
    device: Device,
    last: Instant,
}

impl Lap {
    fn start(device: Device) -> Self {
        Lap { on: tracing::enabled!(tracing::Level::DEBUG), device, last: Instant::now() }
    }

    fn mark(&mut self, step: &str) {
        if !self.on {
            return;
        }
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = Instant::now();
        tracing::debug!(step, ms = format!("{:.2}", (now - self.last).as_secs_f64() * 1e3), "WIDEN Exit step");
        self.last = now;
    }
}

/// Memory budget in bytes for one chunk's working set.
fn budget(device: Device) -> usize {
    if let Some(mb) = std::env::var("COMFYRS_WIDEN_BUDGET_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        return mb << 20;
    }
    match device {
        Device::Cpu => (mem_available().unwrap_or(4 << 30) / 4).max(64 << 20),
        _ => {
            // 80% of the free memory, less what the subtree cache may keep there.
            let free = gpu_free_bytes().unwrap_or(4 << 30);
            ((free as f64 * 0.8) as usize).saturating_sub(CACHE.stats().device_limit).max(256 << 20)
        }
    }
}

/// The host RAM a merge may use: `MemAvailable`, capped by `COMFYRS_WIDEN_HOST_RAM_MB` (for
/// machines shared with other work).
fn host_ram_for_merges() -> Option<usize> {
    let cap = std::env::var("COMFYRS_WIDEN_HOST_RAM_MB").ok().and_then(|v| v.parse::<usize>().ok()).map(|mb| mb << 20);
    match (mem_available(), cap) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// `MemAvailable` of /proc/meminfo.
pub fn mem_available() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free device memory: libtorch exposes no query through tch, so ask the driver's tool once.
pub(crate) fn gpu_free_bytes() -> Option<usize> {
    use std::sync::OnceLock;
    static FREE: OnceLock<Option<usize>> = OnceLock::new();
    *FREE.get_or_init(|| {
        let out = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"])
            .output()
            .ok()?;
        let mb: usize = String::from_utf8_lossy(&out.stdout).trim().lines().next()?.trim().parse().ok()?;
        Some(mb << 20)
    })
}

fn is_oom(e: &PackError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("not enough memory")
}

impl Eval<'_> {
    fn stack(&mut self, tensors: &[MappedTensor]) -> Result<Tensor, PackError> {
        let start = Instant::now();
        let t = super::transfer::stack_to_device(tensors, self.device)?;
        self.load_seconds += start.elapsed().as_secs_f64();
        Ok(t)
    }

    /// A model (Base or Merge) on the chunk's keys: `[B, *S]` fp32 on the device.
    fn model(&mut self, node: &Recipe, keys: &[String]) -> Result<Tensor, PackError> {
        Ok(self.model_owned(node, keys)?.0)
    }

    /// [`Eval::model`], and whether the tensor is a fresh one that nothing else holds (a merge
    /// may then write its result into it).
    fn model_owned(&mut self, node: &Recipe, keys: &[String]) -> Result<(Tensor, bool), PackError> {
        match &node.kind {
            RecipeKind::Base { model, .. } => {
                let t = keys.iter().map(|k| model.tensor(k)).collect::<Result<Vec<_>, _>>()?;
                Ok((self.stack(&t)?, true))
            }
            // Merge results are shared with the subtree cache.
            RecipeKind::Merge { .. } => Ok((self.merge_cached(node, keys)?, !self.use_cache)),
            _ => Err(PackError::runtime(format!("{} is not a model", node.type_name()))),
        }
    }

    fn merge_cached(&mut self, node: &Recipe, keys: &[String]) -> Result<Tensor, PackError> {
        if !self.use_cache {
            return self.merge(node, keys);
        }
        let hashes: Vec<[u8; 32]> = keys.iter().map(|k| self.a.key_hash(node, k, self.device)).collect();
        let cached: Vec<Option<Tensor>> = hashes.iter().map(|h| CACHE.get(h)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| cached[i].is_none()).collect();
        self.subtree_hits += keys.len() - missing.len();
        let computed = if missing.is_empty() {
            None
        } else {
            let sub: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
            let t = self.merge(node, &sub)?;
            // Kept where it was computed (device memory on a GPU) as views of the chunk: no kernel
            // per key (a copy each cost ~6 ms per 582 keys on an H100). Nothing writes into merge
            // results, and a chunk's memory returns once its last key is evicted (keys of a
            // chunk are used, and so evicted, together).
            // The root's results go in at the cold end: a slider change asks for the branches
            // below it again, not for the output it replaces, so under pressure the output goes
            // first. (At one priority, a cache too small for both evicted each branch chunk just
            // before the next run needed it: a CPU slider change found none of them.)
            let root = ptr(node) == self.root;
            for (j, &i) in missing.iter().enumerate() {
                let row = t.f_select(0, j as i64)?;
                if root {
                    CACHE.insert_cold(hashes[i], row);
                } else {
                    CACHE.insert(hashes[i], row);
                }
            }
            Some(t)
        };
        if missing.len() == keys.len() {
            return Ok(computed.expect("computed"));
        }
        if computed.is_none() {
            let rows: Vec<Tensor> = cached.into_iter().map(|c| c.expect("all cached")).collect();
            if let Some(batch) = consecutive_rows(&rows) {
                return Ok(batch.f_to_device(self.device)?);
            }
            return Ok(Tensor::f_stack(&rows, 0)?.f_to_device(self.device)?);
        }
        let mut rows = Vec::with_capacity(keys.len());
        let mut j = 0;
        for c in cached {
            rows.push(match c {
                Some(t) => t.f_to_device(self.device)?,
                None => {
                    j += 1;
                    computed.as_ref().expect("computed").f_select(0, j as i64 - 1)?
                }
            });
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }

    /// One merge step on the chunk's keys.
    fn merge(&mut self, node: &Recipe, keys: &[String]) -> Result<Tensor, PackError> {
        let RecipeKind::Merge { base, target, backbone, t_factor, block_config } = &node.kind else { unreachable!() };
        let mut lap = Lap::start(self.device);
        let (cur, cur_fresh) = self.model_owned(base, keys)?;
        lap.mark("merge base");
        let bb = match backbone {
            None => None,
            Some(b) if b.is_base() || b.is_merge() => Some(self.model_owned(b, keys)?),
            Some(b) => Some((self.dense_weights(b, &cur, keys)?, true)),
        };
        let mut leaves = Vec::new();
        self.a.leaves(target, &mut leaves);
        let mut contributions = Vec::with_capacity(leaves.len());
        for leaf in &leaves {
            contributions.push(self.contribution(leaf, &cur, bb.is_none(), keys)?);
        }
        lap.mark("contributions");
        let (backbone_t, fresh) = match &bb {
            Some((t, fresh)) => (t, *fresh),
            None => (&cur, cur_fresh),
        };
        let stats_keys: Vec<[u8; 32]> = keys.iter().map(|k| self.a.stats_hash(node, k, self.device)).collect();
        lap.mark("hashes");
        // Per-key t (D10): t_factor × block × layer multipliers.
        let ts: Vec<f64> = keys.iter().map(|k| t_factor * self.a.mult(block_config, k)).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut distinct: Vec<f64> = Vec::new();
        for t in &ts {
            if !distinct.iter().any(|d| d.to_bits() == t.to_bits()) {
                distinct.push(*t);
            }
        }
        if distinct.len() == 1 {
            let backbone_t = if fresh { backbone_t.shallow_clone() } else { super::transfer::owned_copy(backbone_t)? };
            let r = self.widen_op(distinct[0], backbone_t, &contributions, &key_refs, &stats_keys);
            lap.mark("widen");
            return r;
        }
        let mut result = backbone_t.f_zeros_like()?;
        for t in distinct {
            let idx: Vec<i64> = (0..keys.len() as i64).filter(|&i| ts[i as usize].to_bits() == t.to_bits()).collect();
            let index = Tensor::f_from_slice(&idx)?.f_to_device(self.device)?;
            let sel = |x: &Tensor| x.f_index_select(0, &index);
            let sub_c: Vec<Contribution> = contributions
                .iter()
                .map(|c| {
                    Ok(match c {
                        Contribution::Weights(w) => Contribution::Weights(sel(w)?),
                        Contribution::LowRank { up, down } => Contribution::LowRank { up: sel(up)?, down: sel(down)? },
                    })
                })
                .collect::<Result<_, tch::TchError>>()?;
            let sub_keys: Vec<&str> = idx.iter().map(|&i| key_refs[i as usize]).collect();
            let sub_stats: Vec<[u8; 32]> = idx.iter().map(|&i| stats_keys[i as usize]).collect();
            let r = self.widen_op(t, sel(backbone_t)?, &sub_c, &sub_keys, &sub_stats)?;
            result = result.f_index_copy(0, &index, &r)?;
        }
        Ok(result)
    }

    /// Filter (one contribution) or merge at `t`, writing into `backbone` (the caller's own
    /// tensor), reusing cached column statistics when every key has them (`stats_keys`).
    fn widen_op(
        &mut self,
        t: f64,
        backbone: Tensor,
        cs: &[Contribution],
        keys: &[&str],
        stats_keys: &[[u8; 32]],
    ) -> Result<Tensor, PackError> {
        let w = self.widen.with_t(t)?;
        let mut lap = Lap::start(self.device);
        // The chunk's statistics are stored whole as well as per key: a chunk asked again (a t
        // slider) takes one lookup instead of one per key and a concatenation.
        let chunk = {
            let mut h = blake3::Hasher::new();
            h.update(b"chunk statistics");
            stats_keys.iter().for_each(|k| {
                h.update(k);
            });
            *h.finalize().as_bytes()
        };
        let known = if self.use_cache {
            match STATS.get(&chunk) {
                Some(whole) => Some(whole),
                None => {
                    let found: Option<Vec<ColumnStats>> = stats_keys.iter().map(|h| STATS.get(h)).collect();
                    found.map(|parts| ColumnStats::cat_keys(&parts)).transpose()?
                }
            }
        } else {
            None
        };
        if known.is_some() {
            self.stats_hits += keys.len();
        }
        lap.mark("statistics lookup");
        let (r, used) = w.merge_with_stats(backbone, cs, known.as_ref(), keys)?;
        lap.mark("filter/merge");
        if let (Some(used), None, true) = (used, &known, self.use_cache) {
            for (i, h) in stats_keys.iter().enumerate() {
                // Views: no kernel per key (a copy each was ~30 ms for 582 keys on an H100); the
                // batch's statistics (kilobytes per key) live until its last key is evicted.
                STATS.insert(*h, used.keys(i as i64, 1)?);
            }
            STATS.insert(chunk, used);
        }
        Ok(r.f_to_kind(Kind::Float)?)
    }

    /// A leaf's contribution: low-rank factors where the set allows it and the backbone is the
    /// merge's base, else the contributor's full weights.
    fn contribution(&mut self, leaf: &Recipe, cur: &Tensor, may_low_rank: bool, keys: &[String]) -> Result<Contribution, PackError> {
        if let (RecipeKind::Lora { block_config, .. }, true) = (&leaf.kind, may_low_rank) {
            let set = self.a.sets[&ptr(leaf)].clone();
            let shape = cur.size()[1..].to_vec();
            if keys.iter().all(|k| self.a.low_rank_ok(&set, k)) {
                return self.low_rank(&set, block_config, keys, &shape);
            }
        }
        Ok(Contribution::Weights(self.dense_weights(leaf, cur, keys)?))
    }

    fn low_rank(
        &self,
        set: &LoadedSet,
        bc: &Option<Arc<BlockConfig>>,
        keys: &[String],
        shape: &[i64],
    ) -> Result<Contribution, PackError> {
        let specs: Vec<&[crate::lora::DeltaSpec]> = keys.iter().map(|k| set.set.deltas.specs(k)).collect();
        let mults: Vec<f64> = keys.iter().map(|k| self.a.mult(bc, k)).collect();
        let prints: Vec<super::factors::FilePrint> = set.files.iter().map(|(_, _, id)| (id.path.as_path(), id.fingerprint())).collect();
        if let Some(c) = super::factors::uniform_low_rank(&specs, &mults, shape, self.device, &prints)? {
            return Ok(c);
        }
        let out = shape[0];
        let k: i64 = shape[1..].iter().product();
        let mut per_key = Vec::with_capacity(keys.len());
        let mut max_r = 1;
        for key in keys {
            let s_key = self.a.mult(bc, key);
            let mut ups = Vec::new();
            let mut downs = Vec::new();
            for spec in set.set.deltas.specs(key) {
                let (up, down) = spec.low_rank().expect("checked low-rank");
                let r = down.size()[0];
                let scale = spec.effective_scale() * s_key;
                let up = up.f_to_device(self.device)?.f_to_kind(Kind::Float)?.f_reshape([-1, r])?.f_mul_scalar(scale)?;
                let up = match spec.rows {
                    None => up,
                    Some(rows) => {
                        let full = Tensor::f_zeros([out, r], (Kind::Float, self.device))?;
                        full.f_narrow(0, rows.start, rows.len)?.f_copy_(&up)?;
                        full
                    }
                };
                ups.push(up);
                downs.push(down.f_to_device(self.device)?.f_to_kind(Kind::Float)?.f_reshape([r, k])?);
            }
            let (u, d) = if ups.is_empty() {
                (Tensor::f_zeros([out, 1], (Kind::Float, self.device))?, Tensor::f_zeros([1, k], (Kind::Float, self.device))?)
            } else {
                (Tensor::f_cat(&ups, 1)?, Tensor::f_cat(&downs, 0)?)
            };
            max_r = max_r.max(u.size()[1]);
            per_key.push((u, d));
        }
        let mut us = Vec::with_capacity(keys.len());
        let mut ds = Vec::with_capacity(keys.len());
        for (u, d) in per_key {
            let r = u.size()[1];
            if r < max_r {
                us.push(Tensor::f_cat(&[u, Tensor::f_zeros([out, max_r - r], (Kind::Float, self.device))?], 1)?);
                ds.push(Tensor::f_cat(&[d, Tensor::f_zeros([max_r - r, k], (Kind::Float, self.device))?], 0)?);
            } else {
                us.push(u);
                ds.push(d);
            }
        }
        Ok(Contribution::low_rank(Tensor::f_stack(&us, 0)?, Tensor::f_stack(&ds, 0)?))
    }

    /// A contributor's full weights on the chunk (`cur` = the merge's base).
    fn dense_weights(&mut self, leaf: &Recipe, cur: &Tensor, keys: &[String]) -> Result<Tensor, PackError> {
        match &leaf.kind {
            RecipeKind::Lora { block_config, .. } => {
                let set = self.a.sets[&ptr(leaf)].clone();
                let mut rows = Vec::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    let base_row = cur.f_select(0, i as i64)?;
                    let kind = self.a.base.kind(key).unwrap_or(Kind::Float);
                    let mut acc = base_row.f_zeros_like()?;
                    for spec in set.set.deltas.specs(key) {
                        spec.add_into(&mut acc, &base_row, kind).map_err(PackError::format)?;
                    }
                    let s = self.a.mult(block_config, key);
                    rows.push(if s == 1.0 { acc } else { acc.f_mul_scalar(s)? });
                }
                Ok(cur.f_add(&Tensor::f_stack(&rows, 0)?)?)
            }
            RecipeKind::Model { strength, block_config, .. } => {
                let m = self.a.models[&ptr(leaf)].clone();
                let t = m.file.get_weights(keys).map_err(PackError::format)?;
                let w = self.stack(&t)?;
                let scales: Vec<f32> = keys.iter().map(|k| (strength * self.a.mult(block_config, k)) as f32).collect();
                if scales.iter().all(|&s| s == 1.0) {
                    return Ok(w);
                }
                let mut sshape = vec![keys.len() as i64];
                sshape.extend(std::iter::repeat_n(1, w.dim() - 1));
                let s = Tensor::f_from_slice(&scales)?.f_to_device(self.device)?.f_reshape(&sshape)?;
                Ok(cur.f_add(&w.f_sub(cur)?.f_mul(&s)?)?)
            }
            RecipeKind::Merge { .. } | RecipeKind::Base { .. } => self.model(leaf, keys),
            RecipeKind::Compose { .. } => Err(PackError::runtime("a Compose is not a model")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver

/// Group signature: shape, and per leaf set whether it touches the key and in which form.
fn group_keys(a: &Analysis, root: &Recipe, keys: &[String]) -> Vec<(Vec<i64>, Vec<String>)> {
    let mut sets: Vec<&Arc<LoadedSet>> = Vec::new();
    fn collect<'x>(a: &'x Analysis, n: &Recipe, out: &mut Vec<&'x Arc<LoadedSet>>) {
        match &n.kind {
            RecipeKind::Lora { .. } => {
                if let Some(s) = a.sets.get(&ptr(n)) {
                    out.push(s)
                }
            }
            RecipeKind::Compose { branches } => branches.iter().for_each(|b| collect(a, b, out)),
            RecipeKind::Merge { base, target, backbone, .. } => {
                collect(a, base, out);
                collect(a, target, out);
                if let Some(b) = backbone {
                    collect(a, b, out);
                }
            }
            _ => {}
        }
    }
    collect(a, root, &mut sets);
    // Memoized by what decides it (a slider change asks again for the same grouping).
    use std::sync::{LazyLock, Mutex};
    type Groups = Vec<(Vec<i64>, Vec<String>)>;
    static MEMO: LazyLock<Mutex<HashMap<[u8; 32], Arc<Groups>>>> = LazyLock::new(Default::default);
    let mut h = blake3::Hasher::new();
    h.update(b"groups");
    h.update(a.base.identity());
    sets.iter().for_each(|s| {
        h.update(&s.key);
    });
    keys.iter().for_each(|k| {
        h.update(k.as_bytes());
        h.update(&[0]);
    });
    let memo_key = *h.finalize().as_bytes();
    if let Some(g) = MEMO.lock().unwrap_or_else(|e| e.into_inner()).get(&memo_key) {
        return g.to_vec();
    }
    let mut groups: IndexMap<(Vec<i64>, Vec<u8>), Vec<String>> = IndexMap::new();
    for k in keys {
        let shape = a.base.shape(k).unwrap_or_default();
        let sig: Vec<u8> = sets
            .iter()
            .map(|s| {
                if s.set.deltas.specs(k).is_empty() {
                    0
                } else if a.low_rank_ok(s, k) {
                    1
                } else {
                    2
                }
            })
            .collect();
        groups.entry((shape, sig)).or_default().push(k.clone());
    }
    let groups: Groups = groups.into_iter().map(|((shape, _), keys)| (shape, keys)).collect();
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() >= 64 {
        memo.clear();
    }
    memo.insert(memo_key, Arc::new(groups.clone()));
    groups
}

pub fn run_exit(pack: &PackContext, rep: &dyn Reporter, root: &Recipe, opts: &ExitOptions) -> Result<ExitResult, PackError> {
    let start = Instant::now();
    let base_node = validate(root, opts.domain)?;
    let RecipeKind::Base { model: base_model, .. } = &base_node.kind else { unreachable!() };
    if let (Some(origin), Some(p)) = (base_model.foreign_origin(), super::foreign_models()) {
        p.prepare(origin).map_err(|e| PackError::runtime(format!("WIDEN Exit: preparing the base MODEL failed: {e}")))?;
    }
    let device = Device::cuda_if_available();
    let mut stats = ExitStats { device: format!("{device:?}"), ..Default::default() };
    if root.is_base() {
        rep.progress(1, 1);
        stats.seconds = start.elapsed().as_secs_f64();
        return Ok(ExitResult { model: base_model.clone(), stats });
    }
    // Saved-model short-circuit.
    let save_target = if opts.save_model && opts.domain == RecipeDomain::Diffusion {
        let path = save::target_path(pack, &opts.model_name)?;
        let (json, hash) = save::serialize(pack, root);
        if let Some(model) = save::check_saved(&path, &hash, base_model)? {
            rep.progress(1, 1);
            stats.keys = model.overrides().len();
            stats.bytes = model.merged_bytes();
            stats.saved = Some(path.display().to_string());
            stats.reused_saved_file = true;
            stats.seconds = start.elapsed().as_secs_f64();
            tracing::info!(path = %path.display(), "WIDEN Exit: reusing the saved model (recipe hash matches)");
            return Ok(ExitResult { model, stats });
        }
        Some((path, json, hash))
    } else {
        None
    };
    // `enable_cache: false` bypasses the subtree cache (no lookup, no store). Unlike the
    // reference's single-entry cache it does not evict: other recipes' entries stay valid.
    let analysis_start = Instant::now();
    let mut lap = Lap::start(device);
    let a = analyze(pack, root, &base_node)?;
    lap.mark("analysis: files and sets");
    stats.lora_reports = a.lora_reports();
    for r in &stats.lora_reports {
        tracing::info!("WIDEN LoRA: {r}");
    }
    stats.keys = a.keys.len();
    let widen = Widen::new(WidenConfig::default(), device)?;
    let mut ev = Eval { a: &a, widen, device, use_cache: opts.enable_cache, root: ptr(root), subtree_hits: 0, stats_hits: 0, load_seconds: 0.0 };
    // Keys whose final result is cached.
    let mut merged: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut todo = Vec::new();
    for k in &a.keys {
        let hit = if opts.enable_cache { CACHE.get(&a.key_hash(root, k, device)) } else { None };
        match hit {
            Some(t) => install(&a, &mut merged, std::slice::from_ref(k), &t.f_unsqueeze(0)?)?,
            None => todo.push(k.clone()),
        }
    }
    lap.mark("analysis: final-result lookups");
    stats.cache_hits = merged.len();
    stats.recomputed = todo.len();
    let groups = pipeline_order(group_keys(&a, root, &todo), device);
    lap.mark("analysis: grouping");
    stats.groups = groups.len();
    let total = groups.len().max(1) as u64;
    if groups.is_empty() {
        rep.progress(1, 1);
    }
    let budget = budget(device);
    let n_models = a.sets.len() + a.models.len();
    let batch_of = |shape: &[i64]| -> usize {
        let numel: i64 = shape.iter().product::<i64>().max(1);
        let per_key = 4 * numel as usize * (3 + 3 * n_models.max(1));
        (budget / per_key.max(1)).clamp(1, 4096)
    };
    if !groups.is_empty() {
        let storage = |k: &str| -> u64 {
            let numel: i64 = a.base.shape(k).unwrap_or_default().iter().product();
            numel as u64 * a.base.kind(k).unwrap_or(Kind::Float).elt_size_in_bytes() as u64
        };
        let estimate = super::preflight::Estimate {
            merged_bytes: groups.iter().flat_map(|(_, keys)| keys).map(|k| storage(k)).sum(),
            worst_chunk: groups
                .iter()
                .map(|(shape, keys)| storage(&keys[0]) * batch_of(shape).min(keys.len()) as u64)
                .max()
                .unwrap_or(0),
            save_model: save_target.is_some(),
        };
        estimate.check(host_ram_for_merges())?;
    }
    stats.phases.analysis = analysis_start.elapsed().as_secs_f64();
    for (gi, (shape, keys)) in groups.iter().enumerate() {
        let batch = batch_of(shape);
        for chunk in keys.chunks(batch) {
            if rep.interrupted() {
                return Err(PackError { message: "interrupted".into(), exception_type: "InterruptProcessingException" });
            }
            let t0 = Instant::now();
            let done = eval_with_backoff(&mut ev, root, chunk)?;
            // Results travel to host memory while the next chunk computes.
            install(&a, &mut merged, chunk, &done)?;
            stats.phases.compute += t0.elapsed().as_secs_f64();
        }
        rep.progress(gi as u64 + 1, total);
    }
    let t_wait = Instant::now();
    super::transfer::finish(device);
    stats.phases.results = t_wait.elapsed().as_secs_f64();
    stats.subtree_hits = ev.subtree_hits;
    stats.phases.load = ev.load_seconds;
    stats.phases.compute -= ev.load_seconds;
    stats.stats_hits = ev.stats_hits;
    let out: IndexMap<String, MappedTensor> = merged.into_iter().map(|(k, t)| (k, MappedTensor::owned(t))).collect();
    let model = base_model.with_overrides(out, &run_hash(&a, root, device));
    stats.bytes = model.merged_bytes();
    if let Some((path, json, hash)) = save_target {
        let wf = if opts.save_workflow { opts.extra_pnginfo.as_ref() } else { None };
        save::save_model(&path, &model, &json, &hash, wf)?;
        stats.saved = Some(path.display().to_string());
    }
    stats.seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        keys = stats.keys,
        recomputed = stats.recomputed,
        cache_hits = stats.cache_hits,
        subtree_hits = stats.subtree_hits,
        groups = stats.groups,
        seconds = stats.seconds,
        "WIDEN Exit"
    );
    Ok(ExitResult { model, stats })
}

/// On a GPU a chunk's results go to the host while the next chunk computes: the link sits idle
/// until the first chunk is done, and the run ends one chunk's copy after the last kernel.
/// Smallest groups first start the link early and keep it busy while the bigger ones compute;
/// the biggest, last, is halved so that the copy left after the last kernel is half of it.
/// (Side by side on an H100, full-size SDXL: a t slider change took 42.6-43.3 ms against
/// 46.6 ms with the biggest group right after the smallest; with the biggest whole and last, a
/// cold merge waited 27-35 ms for its last copy, halved 13-15 ms.)
fn pipeline_order(mut groups: Vec<(Vec<i64>, Vec<String>)>, device: Device) -> Vec<(Vec<i64>, Vec<String>)> {
    if !device.is_cuda() {
        return groups;
    }
    groups.sort_by_key(|g| g.0.iter().product::<i64>() * g.1.len() as i64);
    if let Some((shape, keys)) = groups.pop() {
        let half = keys.len().div_ceil(2);
        let (a, b) = keys.split_at(half);
        groups.push((shape.clone(), a.to_vec()));
        if !b.is_empty() {
            groups.push((shape, b.to_vec()));
        }
    }
    groups
}

/// Puts a chunk's results (`[B, *S]` fp32, any device) into `merged`, each key in its own
/// storage dtype (D17) in host memory. Keys of one dtype share one transfer.
fn install(a: &Analysis, merged: &mut BTreeMap<String, Tensor>, keys: &[String], done: &Tensor) -> Result<(), PackError> {
    let kinds: Vec<Kind> = keys.iter().map(|k| a.base.kind(k).unwrap_or(Kind::Float)).collect();
    if kinds.iter().all(|k| *k == kinds[0]) {
        let host = super::transfer::to_host(done, kinds[0])?;
        for (i, k) in keys.iter().enumerate() {
            merged.insert(k.clone(), host.f_select(0, i as i64)?);
        }
    } else {
        for (i, (k, kind)) in keys.iter().zip(kinds).enumerate() {
            merged.insert(k.clone(), super::transfer::to_host(&done.f_select(0, i as i64)?, kind)?);
        }
    }
    Ok(())
}

fn run_hash(a: &Analysis, root: &Recipe, device: Device) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&a.static_hash[&ptr(root)]);
    for k in &a.keys {
        h.update(&a.key_hash(root, k, device));
    }
    *h.finalize().as_bytes()
}

fn eval_with_backoff(ev: &mut Eval, root: &Recipe, chunk: &[String]) -> Result<Tensor, PackError> {
    match ev.model(root, chunk) {
        Ok(t) => Ok(t),
        Err(e) if is_oom(&e) => {
            if chunk.len() == 1 {
                return Err(PackError::runtime(format!(
                    "Out of memory while merging key '{}' on its own (batch of 1, device {:?}). Free memory on the \
                     device or set COMFYRS_WIDEN_BUDGET_MB. Cause: {}",
                    chunk[0], ev.device, e.message
                )));
            }
            tracing::warn!(keys = chunk.len(), "WIDEN: out of memory on a chunk; retrying in halves");
            let mid = chunk.len() / 2;
            let a = eval_with_backoff(ev, root, &chunk[..mid])?.f_to_device(Device::Cpu)?;
            let b = eval_with_backoff(ev, root, &chunk[mid..])?.f_to_device(Device::Cpu)?;
            Ok(Tensor::f_cat(&[a, b], 0)?)
        }
        Err(e) => Err(e),
    }
}

/// For tests: a recipe evaluated without the runtime.
pub fn evaluate(pack: &PackContext, root: &Recipe, domain: RecipeDomain, enable_cache: bool) -> Result<ExitResult, PackError> {
    run_exit(
        pack,
        &Silent,
        root,
        &ExitOptions { domain, save_model: false, model_name: String::new(), save_workflow: false, enable_cache, extra_pnginfo: None },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(shape: &[i64], n: usize, tag: &str) -> (Vec<i64>, Vec<String>) {
        (shape.to_vec(), (0..n).map(|i| format!("{tag}{i}")).collect())
    }

    #[test]
    fn pipeline_order_puts_the_smallest_first_and_halves_the_biggest_at_the_end() {
        let groups = vec![group(&[1280, 1280], 5, "big"), group(&[320, 320], 2, "small"), group(&[640, 640], 3, "mid")];
        let order = pipeline_order(groups.clone(), Device::Cuda(0));
        let tags: Vec<(usize, &str)> = order.iter().map(|(_, k)| (k.len(), &k[0][..k[0].len() - 1])).collect();
        assert_eq!(tags, [(2, "small"), (3, "mid"), (3, "big"), (2, "big")]);
        let big: Vec<&String> = order[2..].iter().flat_map(|(_, k)| k).collect();
        assert_eq!(big, groups[0].1.iter().collect::<Vec<_>>(), "the halves keep every key, in order");
        // On the CPU nothing overlaps: the order stays as grouped.
        assert_eq!(pipeline_order(groups.clone(), Device::Cpu), groups);
        // A one-key biggest group is not split into an empty half.
        let order = pipeline_order(vec![group(&[8, 8], 1, "a")], Device::Cuda(0));
        assert_eq!(order.len(), 1);
    }

    #[test]
    fn consecutive_rows_are_one_view_and_anything_else_is_refused() {
        let chunk = Tensor::arange(2 * 3 * 4, (Kind::Float, Device::Cpu)).reshape([2 * 3, 4]).reshape([3, 2, 4]);
        let rows: Vec<Tensor> = (0..3).map(|i| chunk.select(0, i)).collect();
        let view = consecutive_rows(&rows).expect("rows of one chunk, in order");
        assert_eq!(view.size(), [3, 2, 4]);
        assert_eq!(view.data_ptr(), chunk.data_ptr(), "a view, not a copy");
        assert!(view.equal(&chunk));
        // Out of order, a subset with a gap, or rows of different tensors: not one view.
        let swapped = [rows[1].shallow_clone(), rows[0].shallow_clone()];
        assert!(consecutive_rows(&swapped).is_none());
        let gap = [rows[0].shallow_clone(), rows[2].shallow_clone()];
        assert!(consecutive_rows(&gap).is_none());
        let other = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        assert!(consecutive_rows(&[rows[0].shallow_clone(), other]).is_none());
        // A tail of the chunk is a view too.
        let tail = consecutive_rows(&rows[1..]).expect("rows 1 and 2");
        assert!(tail.equal(&chunk.narrow(0, 1, 2)));
    }
}
