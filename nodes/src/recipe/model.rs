//! `NativeModel`: a model (or CLIP) that lives in a memory-mapped safetensors file, with merged
//! tensors overriding some of its keys. What `WIDENBaseInput` reads and the Exit returns when the
//! base is native; the Python bridge can turn it into a ComfyUI MODEL later.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;
use comfyrs_runtime::Value;
use tch::Kind;

use crate::arch::{detect_base_arch, detect_clip_arch, Arch};
use crate::lora::NameIndex;
use crate::merge::report::MergeReport;
use crate::models::{CheckpointDomain, CheckpointFile, FileDtype, MappedTensor};

use super::RecipeDomain;
use super::PackError;

/// Where a model's base weights live (shared: cloning a source shares them).
#[derive(Clone)]
enum Source {
    /// A memory-mapped safetensors file.
    File(Arc<CheckpointFile>),
    /// A foreign (ComfyUI) MODEL: its weights, shared with it, and the MODEL value itself.
    Foreign(Arc<ForeignBase>),
}

struct ForeignBase {
    tensors: IndexMap<String, MappedTensor>,
    origin: Value,
    /// What a saved merge over this base records as its identity, computed when first asked.
    content: OnceLock<[u8; 32]>,
}

impl ForeignBase {
    /// blake3 over every key's name, dtype and shape and its first 64 values as f32: equal for
    /// the same weights loaded again (in another prompt or process), unlike the loaded object's
    /// identity, and different when a patch or a LoRA changed a key (docs/decisions.md D31).
    fn content_identity(&self) -> [u8; 32] {
        *self.content.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            h.update(b"foreign-content");
            let mut keys: Vec<&String> = self.tensors.keys().collect();
            keys.sort();
            for k in keys {
                let t = &self.tensors[k];
                h.update(format!("{k}|{:?}|{:?}\n", t.size(), t.kind()).as_bytes());
                let head = t.flatten(0, -1);
                let n = head.size()[0].min(64);
                let head = head.narrow(0, 0, n).f_to_device(tch::Device::Cpu).and_then(|t| t.f_to_kind(Kind::Float));
                match head {
                    Ok(v) => {
                        for x in Vec::<f32>::try_from(&v).unwrap_or_default() {
                            h.update(&x.to_le_bytes());
                        }
                    }
                    // Unreadable: an identity no other base has, so nothing saved is reused.
                    Err(e) => {
                        h.update(format!("unreadable {k} ({e}) of the base at {:p}", self).as_bytes());
                    }
                }
            }
            *h.finalize().as_bytes()
        })
    }
}

pub struct NativeModel {
    source: Source,
    arch: Arch,
    domain: RecipeDomain,
    /// Merged tensors (CPU, each in its key's own dtype), by host key.
    overrides: IndexMap<String, MappedTensor>,
    /// The scale of each merged key whose base is scaled fp8 (docs/widen.md, "Model formats").
    override_scales: IndexMap<String, f32>,
    identity: [u8; 32],
    /// Name of the file in the models folders (for messages and metadata).
    name: String,
    index: OnceLock<NameIndex>,
    /// The report of the merge that made this model (docs/widen.md, "Report"), set once by the
    /// Exit that made it.
    report: OnceLock<Arc<MergeReport>>,
}

impl NativeModel {
    /// Opens a model file: a diffusion model (prefixed or not), a full LDM checkpoint (its
    /// diffusion part, or its text encoders for `RecipeDomain::Clip`).
    pub fn open(path: &Path, name: &str, domain: RecipeDomain) -> Result<Arc<NativeModel>, PackError> {
        let cd = match domain {
            RecipeDomain::Diffusion => CheckpointDomain::Diffusion,
            RecipeDomain::Clip => CheckpointDomain::Clip,
        };
        let file = CheckpointFile::open(path, cd)?;
        let arch = match domain {
            RecipeDomain::Diffusion => detect_base_arch(file.keys()).ok_or_else(|| unsupported_arch(file.keys()))?,
            RecipeDomain::Clip => detect_clip_arch(file.keys()).ok_or_else(not_sdxl_clip)?,
        };
        let mut h = blake3::Hasher::new();
        h.update(b"file");
        h.update(file.file().identity().fingerprint().as_bytes());
        h.update(domain.name().as_bytes());
        Ok(Arc::new(NativeModel {
            source: Source::File(Arc::new(file)),
            arch,
            domain,
            overrides: IndexMap::new(),
            override_scales: IndexMap::new(),
            identity: *h.finalize().as_bytes(),
            name: name.to_string(),
            index: OnceLock::new(),
            report: OnceLock::new(),
        }))
    }

    /// A base over a foreign MODEL's (or CLIP's) weights (shared, not copied); `origin` is that
    /// MODEL.
    pub fn foreign(origin: Value, state: super::foreign::ForeignState) -> Result<Arc<NativeModel>, PackError> {
        let keys = || state.tensors.keys().map(|k| k.as_str());
        let arch = match state.domain {
            RecipeDomain::Diffusion => detect_base_arch(keys()).ok_or_else(|| unsupported_arch(keys()))?,
            RecipeDomain::Clip => detect_clip_arch(keys()).ok_or_else(not_sdxl_clip)?,
        };
        let mut h = blake3::Hasher::new();
        h.update(b"foreign");
        h.update(&state.identity);
        h.update(state.domain.name().as_bytes());
        Ok(Arc::new(NativeModel {
            source: Source::Foreign(Arc::new(ForeignBase {
                tensors: state.tensors.into_iter().map(|(k, t)| (k, MappedTensor::owned(t))).collect(),
                origin,
                content: OnceLock::new(),
            })),
            arch,
            domain: state.domain,
            overrides: IndexMap::new(),
            override_scales: IndexMap::new(),
            identity: *h.finalize().as_bytes(),
            name: state.name,
            index: OnceLock::new(),
            report: OnceLock::new(),
        }))
    }

    /// The foreign MODEL this model's base weights belong to (None: a file).
    pub fn foreign_origin(&self) -> Option<&Value> {
        match &self.source {
            Source::Foreign(f) => Some(&f.origin),
            Source::File(_) => None,
        }
    }

    /// A copy of `self` with `merged` overriding keys; `recipe_hash` names what made them.
    /// `scales`: the scale of every merged key whose base key is scaled fp8 (such a key's stored
    /// fp8 values times its scale are its weight).
    pub fn with_overrides(
        self: &Arc<Self>,
        merged: IndexMap<String, MappedTensor>,
        scales: IndexMap<String, f32>,
        recipe_hash: &[u8; 32],
    ) -> Arc<NativeModel> {
        let mut overrides: IndexMap<String, MappedTensor> =
            self.overrides.iter().map(|(k, v)| (k.clone(), v.clone_ref())).collect();
        let mut override_scales = self.override_scales.clone();
        for (k, v) in merged {
            override_scales.shift_remove(&k);
            overrides.insert(k, v);
        }
        override_scales.extend(scales);
        let mut h = blake3::Hasher::new();
        h.update(b"merged");
        h.update(&self.identity);
        h.update(recipe_hash);
        Arc::new(NativeModel {
            source: self.source.clone(),
            arch: self.arch,
            domain: self.domain,
            overrides,
            override_scales,
            identity: *h.finalize().as_bytes(),
            name: self.name.clone(),
            index: OnceLock::new(),
            report: OnceLock::new(),
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }
    /// The report of the merge that made this model (None: a base, or a merge without one).
    pub fn report(&self) -> Option<&Arc<MergeReport>> {
        self.report.get()
    }
    /// Attaches the report of the merge that made this model (the first one set stays).
    pub fn set_report(&self, report: Arc<MergeReport>) {
        let _ = self.report.set(report);
    }
    pub fn domain(&self) -> RecipeDomain {
        self.domain
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The file of the base weights (None for a foreign MODEL).
    pub fn try_file(&self) -> Option<&Arc<CheckpointFile>> {
        match &self.source {
            Source::File(f) => Some(f),
            Source::Foreign(_) => None,
        }
    }
    /// The file of the base weights. Panics for a model over a foreign MODEL (see
    /// [`try_file`](Self::try_file)).
    pub fn file(&self) -> &Arc<CheckpointFile> {
        self.try_file().expect("a model over a foreign MODEL has no file")
    }
    /// Identity of the weights: the file's (path, size, mtime) and the recipe of any overrides.
    pub fn identity(&self) -> &[u8; 32] {
        &self.identity
    }

    /// The identity a saved merge records for this base (docs/decisions.md D31): a file's
    /// identity, or the content of a foreign MODEL's weights (the loaded object's identity would
    /// not survive a reload).
    pub fn saved_identity(&self) -> [u8; 32] {
        match &self.source {
            Source::Foreign(f) if self.overrides.is_empty() => f.content_identity(),
            _ => self.identity,
        }
    }
    pub fn overrides(&self) -> &IndexMap<String, MappedTensor> {
        &self.overrides
    }

    /// Bytes of the merged keys, each in its storage dtype.
    pub fn merged_bytes(&self) -> usize {
        self.overrides.values().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    /// blake3 over the merged keys (name, dtype, shape, bytes and scale, in order): equal digests mean
    /// bit-identical merges, whichever device or path computed them.
    pub fn overrides_digest(&self) -> Result<String, tch::TchError> {
        let mut h = blake3::Hasher::new();
        for (key, t) in &self.overrides {
            let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
            h.update(key.as_bytes());
            h.update(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
            let len = t.numel() * t.kind().elt_size_in_bytes();
            if len > 0 {
                // SAFETY: a contiguous CPU tensor holds `len` initialized bytes at `data_ptr`,
                // alive while `t` is.
                h.update(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) });
            }
            if let Some(scale) = self.override_scales.get(key) {
                h.update(&scale.to_le_bytes());
            }
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// Host keys in file order.
    pub fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.source {
            Source::File(f) => Box::new(f.keys()),
            Source::Foreign(f) => Box::new(f.tensors.keys().map(|k| k.as_str())),
        }
    }
    pub fn contains(&self, key: &str) -> bool {
        match &self.source {
            Source::File(f) => f.contains(key),
            Source::Foreign(f) => f.tensors.contains_key(key),
        }
    }
    pub fn shape(&self, key: &str) -> Option<Vec<i64>> {
        match &self.source {
            Source::File(f) => f.shape(key).map(|s| s.iter().map(|&d| d as i64).collect()),
            Source::Foreign(f) => f.tensors.get(key).map(|t| t.size()),
        }
    }
    /// The key's dtype (an override keeps its base key's dtype, docs/decisions.md D17).
    pub fn kind(&self, key: &str) -> Option<Kind> {
        if let Some(t) = self.overrides.get(key) {
            return Some(t.kind());
        }
        match &self.source {
            Source::File(f) => f.dtype(key).and_then(FileDtype::kind),
            Source::Foreign(f) => f.tensors.get(key).map(|t| t.kind()),
        }
    }

    /// Bytes of the key in its storage dtype: what a merged result of it takes (D17; fp32 where
    /// the dtype is not known).
    pub fn storage_bytes(&self, key: &str) -> u64 {
        let numel: i64 = self.shape(key).unwrap_or_default().iter().product();
        numel as u64 * self.kind(key).unwrap_or(Kind::Float).elt_size_in_bytes() as u64
    }

    /// The scale of a scaled fp8 key (the key's weight is its stored values times this), `None`
    /// for every other key.
    pub fn scale(&self, key: &str) -> Result<Option<f32>, PackError> {
        if self.overrides.contains_key(key) {
            return Ok(self.override_scales.get(key).copied());
        }
        match &self.source {
            Source::File(f) => Ok(f.scale(key)?),
            Source::Foreign(_) => Ok(None),
        }
    }

    /// True when `key`'s base weight is scaled fp8 (so a merge result for it is stored with a
    /// scale of its own).
    pub fn is_scaled(&self, key: &str) -> bool {
        self.try_file().is_some_and(|f| f.scale_key(key).is_some())
    }

    /// The scales of `keys` (1 for unscaled keys), or `None` when no key is scaled.
    pub fn scales(&self, keys: &[String]) -> Result<Option<Vec<f32>>, PackError> {
        if !self.try_file().is_some_and(|f| f.is_scaled()) {
            return Ok(None);
        }
        let s = keys.iter().map(|k| Ok(self.scale(k)?.unwrap_or(1.0))).collect::<Result<Vec<f32>, PackError>>()?;
        Ok(s.iter().any(|&x| x != 1.0).then_some(s))
    }

    /// The companions of a scaled fp8 file by host name (docs/widen.md, "Model formats"), as the
    /// tensors this model has for them: a merged key's scale is its new one.
    pub fn companions(&self) -> Result<IndexMap<String, tch::Tensor>, PackError> {
        let mut out = IndexMap::new();
        let Some(f) = self.try_file() else { return Ok(out) };
        let new_scales: std::collections::HashMap<&str, f32> =
            self.override_scales.iter().filter_map(|(k, s)| Some((f.scale_key(k)?, *s))).collect();
        for (host, src) in f.companions() {
            let meta = f.file().meta(&src.file_key).expect("listed key");
            let t = match (new_scales.get(host.as_str()), meta.dtype.kind()) {
                (Some(s), Some(kind)) => tch::Tensor::from_slice(&[*s]).f_reshape(meta.shape_i64())?.f_to_kind(kind)?,
                (None, Some(_)) => f.file().tensor(&src.file_key)?.shallow_clone(),
                // Bytes of another dtype (a `comfy_quant` description).
                _ => tch::Tensor::from_slice(f.file().bytes(&src.file_key)?).f_reshape(meta.shape_i64())?,
            };
            out.insert(host.clone(), t);
        }
        Ok(out)
    }

    /// The scales of merged keys whose base is scaled fp8.
    pub fn override_scales(&self) -> &IndexMap<String, f32> {
        &self.override_scales
    }

    /// The current tensor of a key (override, else a zero-copy view of the file). For a scaled
    /// fp8 key, the stored values: see [`scale`](Self::scale).
    pub fn tensor(&self, key: &str) -> Result<MappedTensor, PackError> {
        if let Some(t) = self.overrides.get(key) {
            return Ok(t.clone_ref());
        }
        match &self.source {
            Source::File(f) => f.tensor(key).map_err(PackError::from),
            Source::Foreign(f) => f
                .tensors
                .get(key)
                .map(|t| t.clone_ref())
                .ok_or_else(|| PackError::runtime(format!("key {key} is not in the model"))),
        }
    }

    /// The LoRA name index of this model (names and shapes), built once.
    pub fn name_index(&self) -> &NameIndex {
        self.index.get_or_init(|| {
            let arch = match self.domain {
                RecipeDomain::Diffusion => self.arch,
                RecipeDomain::Clip => Arch::SdxlClip,
            };
            let shapes = match &self.source {
                Source::File(f) => f.shapes(),
                Source::Foreign(f) => f.tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect(),
            };
            NameIndex::from_shapes(arch, &shapes)
        })
    }
}

/// A native MODEL's or CLIP's weights for a foreign runtime (the bridge's model extractor): the
/// ComfyUI type it stands for, its state dict (UNet keys without `diffusion_model.`; the SDXL
/// text encoders' `clip_l.…` and `clip_g.…` keys, ComfyUI's own), tensors shared (views of the
/// file or the merged tensors), and the weights' identity. `None` for other values.
pub fn native_model_weights(h: &dyn comfyrs_runtime::value::Opaque) -> Option<(&'static str, IndexMap<String, tch::Tensor>, [u8; 32])> {
    let m = h.as_any().downcast_ref::<NativeModel>()?;
    if m.foreign_origin().is_some() {
        return None;
    }
    let mut sd = IndexMap::new();
    for k in m.keys() {
        let t = m.tensor(k).ok()?;
        let key = match m.domain {
            RecipeDomain::Diffusion => k.strip_prefix("diffusion_model.").unwrap_or(k),
            RecipeDomain::Clip => k,
        };
        sd.insert(key.to_string(), t.shallow_clone());
    }
    // A scaled fp8 model's scales and marker, under the same names as its weights.
    for (k, t) in m.companions().ok()? {
        let key = match m.domain {
            RecipeDomain::Diffusion => k.strip_prefix("diffusion_model.").unwrap_or(&k).to_string(),
            RecipeDomain::Clip => k,
        };
        sd.insert(key, t);
    }
    let kind = match m.domain {
        RecipeDomain::Diffusion => "MODEL",
        RecipeDomain::Clip => "CLIP",
    };
    Some((kind, sd, *m.identity()))
}

/// The one CLIP architecture WIDEN merges.
pub(crate) fn not_sdxl_clip() -> PackError {
    PackError::value(
        "Only SDXL CLIP merging is supported in v1. Detected CLIP architecture is not SDXL (requires both \
         clip_l and clip_g encoders).",
    )
}

pub(crate) fn unsupported_arch<'a>(keys: impl Iterator<Item = &'a str>) -> PackError {
    let mut prefixes: Vec<&str> = keys.map(|k| k.split('.').next().unwrap_or(k)).collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes.truncate(5);
    let list = prefixes.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ");
    PackError::value(format!(
        "Could not detect model architecture. Key prefixes: [{list}]. Supported architectures: flux, qwen, sdxl, zimage."
    ))
}

impl comfyrs_runtime::value::Opaque for NativeModel {
    fn type_name(&self) -> &str {
        match self.domain {
            RecipeDomain::Diffusion => "MODEL",
            RecipeDomain::Clip => "CLIP",
        }
    }
    /// The merged tensors this model owns. The base weights are a read-only file mapping (page
    /// cache, shared by every model of that file) or a foreign MODEL's (counted there), so they
    /// are not counted.
    fn byte_size(&self) -> usize {
        let own: usize = self
            .overrides
            .values()
            .filter(|t| !t.is_mapped())
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum();
        own + 1024
    }
    fn describe(&self) -> String {
        format!(
            "<{} {} {} '{}', {} merged keys>",
            self.type_name(),
            if self.foreign_origin().is_some() { "over a foreign MODEL," } else { "native" },
            self.arch.tag(),
            self.name,
            self.overrides.len()
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
