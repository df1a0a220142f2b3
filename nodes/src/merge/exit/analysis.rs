//! Step 2 of the Exit: every LoRA set and Model Input loaded against the base, the keys to
//! process, and the per-key content hashes the subtree cache and the statistics cache use
//! (`docs/decisions.md` D19).

use std::collections::HashMap;
use std::sync::Arc;

use tch::{Device, Kind};

use crate::arch::Arch;
use crate::lora::{LoadOptions, LoraFile, LoraSet};
use crate::merge::engine::MergeEngine;
use crate::models::{CheckpointDomain, CheckpointFile, FileIdentity, ModelFolders};
use crate::recipe::model::NativeModel;
use crate::recipe::{BlockConfig, PackError, Recipe, RecipeDomain, RecipeKind, SourceDir};

/// A loaded LoRA set (one LoRA node chain).
pub struct LoadedSet {
    pub set: LoraSet,
    pub files: Vec<(String, f64, FileIdentity)>,
    /// Keys whose every delta can enter as low-rank factors (checked once per set: it asks
    /// libtorch for factor sizes, thousands of calls per run otherwise).
    pub(super) low_rank: std::collections::HashSet<String>,
    /// Content identity: files, strengths and order, the base and the LoRA architecture.
    pub(super) key: [u8; 32],
}

pub struct LoadedModel {
    pub file: CheckpointFile,
    pub name: String,
}

/// Everything the evaluation needs, by recipe node (pointer identity within this run).
pub struct Analysis {
    pub base: Arc<NativeModel>,
    pub arch: Arch,
    pub(super) sets: HashMap<usize, Arc<LoadedSet>>,
    pub(super) models: HashMap<usize, Arc<LoadedModel>>,
    /// Per node: hash of its content and the identity of the files it reads (no block configs,
    /// no t_factor: those enter per key).
    pub(super) static_hash: HashMap<usize, [u8; 32]>,
    /// Per node: hash of its whole content (t_factors included), or `None` when a block config
    /// sits in its subtree. Without block configs a node's result is the same function of every
    /// key, so its key hash is one hash of this and the key instead of a walk of the subtree.
    pub(super) whole_hash: HashMap<usize, Option<[u8; 32]>>,
    pub keys: Vec<String>,
    /// `key_hash` results of this run by (node, key): the recursion would otherwise redo every
    /// subtree for each level that asks.
    pub(super) key_hashes: std::sync::Mutex<HashMap<usize, HashMap<String, [u8; 32]>>>,
}

pub(super) fn ptr(r: &Recipe) -> usize {
    Arc::as_ptr(r) as usize
}


/// A parsed LoRA file, from the engine's memo when the same file was parsed for the same base.
pub(super) fn load_lora(engine: &MergeEngine, path: &std::path::Path, base: &NativeModel, arch: Arch) -> Result<Arc<LoraFile>, PackError> {
    let id = FileIdentity::of(path).map_err(|e| PackError::not_found(format!("cannot stat '{}': {e}", path.display())))?;
    engine.memos.lora_files.get_or_try_insert_with((id.fingerprint(), arch, *base.identity()), || {
        let opts = LoadOptions { index: Some(base.name_index()), require_match: true };
        Ok(Arc::new(LoraFile::load_with(path, arch, &opts)?))
    })
}

/// The LoRA set of `files` at their strengths, memoized by content (`key`): building one clones
/// every delta spec of every file (thousands for full-size LoRAs, ~5 ms on a GPU host for four
/// SDXL LoRAs), and a slider change elsewhere in the recipe would otherwise redo it on each run.
pub(super) fn loaded_set(engine: &MergeEngine, key: [u8; 32], files: &[(String, f64, Arc<LoraFile>)], base: &NativeModel) -> Arc<LoadedSet> {
    engine.memos.sets.get_or_insert_with(key, || {
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
        Arc::new(LoadedSet {
            set,
            files: files.iter().map(|(name, strength, file)| (name.clone(), *strength, file.identity.clone())).collect(),
            low_rank,
            key,
        })
    })
}

pub fn analyze(engine: &MergeEngine, folders: &ModelFolders, root: &Recipe, base_node: &Recipe) -> Result<Analysis, PackError> {
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
    // Identities of the sets and models the recipe reads: the keys they touch are memoized by them.
    let mut sources: Vec<[u8; 32]> = Vec::new();
    #[allow(clippy::too_many_arguments)]
    fn visit(
        engine: &MergeEngine,
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
                    let file = load_lora(engine, &path, &a.base, lora_arch)?;
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
                a.sets.insert(ptr(node), loaded_set(engine, key, &loaded, &a.base));
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
                let file = CheckpointFile::open(&p, cd)?;
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
                    h.update(&visit(engine, b, a, folders, lora_arch, domain, sources)?);
                }
            }
            RecipeKind::Merge { base, target, backbone, .. } => {
                h.update(b"G");
                h.update(&visit(engine, base, a, folders, lora_arch, domain, sources)?);
                h.update(&visit(engine, target, a, folders, lora_arch, domain, sources)?);
                match backbone {
                    Some(b) => h.update(&visit(engine, b, a, folders, lora_arch, domain, sources)?),
                    None => h.update(b"-"),
                };
            }
        }
        let out = *h.finalize().as_bytes();
        a.static_hash.insert(ptr(node), out);
        Ok(out)
    }
    visit(engine, root, &mut a, folders, lora_arch, *domain, &mut sources)?;
    whole_hash(root, &a.static_hash, &mut a.whole_hash);
    a.keys = touched_keys(engine, &a, sources);
    Ok(a)
}

/// Keys to process: base keys (float tensors) that some set or model touches, sorted. Memoized
/// by the identities of the base and of those sources (a slider change asks again for the same).
pub(super) fn touched_keys(engine: &MergeEngine, a: &Analysis, mut sources: Vec<[u8; 32]>) -> Vec<String> {
    sources.sort_unstable();
    sources.dedup();
    let mut h = blake3::Hasher::new();
    h.update(b"touched keys");
    h.update(a.base.identity());
    sources.iter().for_each(|s| {
        h.update(s);
    });
    let keys = engine.memos.touched_keys.get_or_insert_with(*h.finalize().as_bytes(), || {
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
            .filter(|k| matches!(a.base.kind(k), Some(Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Float8e4m3fn | Kind::Float8e5m2)))
            .map(String::from)
            .collect();
        keys.sort();
        Arc::new(keys)
    });
    keys.to_vec()
}

/// Fills [`Analysis::whole_hash`] for `node` and its subtree.
pub(super) fn whole_hash(node: &Recipe, statics: &HashMap<usize, [u8; 32]>, out: &mut HashMap<usize, Option<[u8; 32]>>) -> Option<[u8; 32]> {
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
pub(super) fn device_tag(device: Device) -> [u8; 9] {
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
    pub(super) fn mult(&self, bc: &Option<Arc<BlockConfig>>, key: &str) -> f64 {
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
    pub(super) fn leaves<'r>(&self, target: &'r Recipe, out: &mut Vec<&'r Recipe>) {
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
    pub(super) fn low_rank_ok(&self, set: &LoadedSet, key: &str) -> bool {
        set.low_rank.contains(key)
    }
}

/// Whether every delta of a key of `shape` is a pair of factors of matching sizes.
pub(super) fn fits_low_rank(specs: &[crate::lora::DeltaSpec], shape: &[i64]) -> bool {
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
