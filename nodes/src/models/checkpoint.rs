//! Model checkpoint files: key normalization to host keys and zero-copy tensor access.
//!
//! Diffusion domain (`docs/widen.md`, "Checkpoint files", with `docs/decisions.md` D16): keys of
//! VAE and text encoders are excluded; `model.diffusion_model.`, `model.transformer.`,
//! `diffusion_model.` and `transformer.` prefixes become `diffusion_model.`; a file without any of
//! these prefixes (the usual ComfyUI `diffusion_models` layout: `double_blocks.0.…`, `layers.0.…`)
//! gets `diffusion_model.` prepended to every key. In a prefixed file, unprefixed keys (schedule
//! buffers and the like) are skipped.
//!
//! CLIP domain (docs/widen.md, "Checkpoint files", with D16): `conditioner.embedders.N.` /
//! `model.conditioner.embedders.N.` / `cond_stage_model.N.` / `model.cond_stage_model.N.` keys,
//! embedder 0 → `clip_l.`, 1 → `clip_g.`; an OpenCLIP-layout embedder
//! (`…embedders.1.model.transformer.resblocks.N.…`) is mapped to the HF layout the host uses
//! (`clip_g.transformer.text_model.encoder.layers.N.…`): `attn.in_proj_weight` is split into
//! `q_proj`/`k_proj`/`v_proj` row slices (views, no copy), `text_projection` is transposed into
//! `text_projection.weight`. Files already in host layout (`clip_l.…`, `clip_g.…`) are read as they
//! are. Integer `position_ids` buffers are skipped.
//!
//! Scaled fp8 (docs/widen.md, "Model formats"): in either domain, a host key `X.scale_weight` (or
//! `X.weight_scale`) beside an fp8 `X.weight` is that weight's per-tensor scale, not a weight of its
//! own; it, `X.scale_input` / `X.input_scale`, `X.comfy_quant` and the `scaled_fp8` marker are
//! companions: kept out of the host keys (nothing merges or reports them), listed by
//! [`CheckpointFile::companions`] so that a saved merge keeps them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use super::{FileDtype, FormatError, MappedFile, MappedTensor, Result};
use crate::arch::{detect_checkpoint_arch, detect_clip_arch, Arch};

/// Which part of a checkpoint to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointDomain {
    Diffusion,
    Clip,
}

/// How the file's keys were laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointLayout {
    /// Diffusion keys with a recognized prefix (`diffusion_model.`, `model.diffusion_model.`, ...).
    Prefixed,
    /// Diffusion keys without prefix (ComfyUI `diffusion_models` files).
    Unprefixed,
    /// Text encoders as conditioner embedders (LDM checkpoints).
    Conditioner,
    /// Text encoders already in host layout (`clip_l.`, `clip_g.`).
    Host,
    /// Nothing relevant found.
    Empty,
}

/// Where a host key's tensor comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    pub file_key: String,
    /// Row slice `(start, len)` of the file tensor (OpenCLIP fused in-projection).
    pub rows: Option<(usize, usize)>,
    /// Transposed 2-D view (OpenCLIP `text_projection`).
    pub transpose: bool,
}

impl KeySource {
    fn plain(k: &str) -> Self {
        KeySource { file_key: k.to_string(), rows: None, transpose: false }
    }
}

/// An open checkpoint file with its host-key mapping.
pub struct CheckpointFile {
    file: Arc<MappedFile>,
    domain: CheckpointDomain,
    layout: CheckpointLayout,
    keys: IndexMap<String, KeySource>,
    /// Scaled-fp8 companions (scales, input scales, the marker), by host name.
    companions: IndexMap<String, KeySource>,
    /// Host key of a scaled fp8 weight → host name of its scale.
    scales: std::collections::HashMap<String, String>,
    skipped: Vec<String>,
    arch: Option<Arch>,
}

/// Names the scale of an fp8 `X.weight` may have beside it (`X.<name>`).
const SCALE_NAMES: &[&str] = &["scale_weight", "weight_scale"];
/// Other per-layer companions of a scaled fp8 weight.
const COMPANION_NAMES: &[&str] = &["scale_input", "input_scale", "comfy_quant"];

/// Moves the scaled-fp8 companions out of `keys`: `(companions, weight → scale)`.
fn split_companions(
    file: &MappedFile,
    keys: &mut IndexMap<String, KeySource>,
) -> (IndexMap<String, KeySource>, std::collections::HashMap<String, String>) {
    let fp8 = |host: &str, keys: &IndexMap<String, KeySource>| {
        keys.get(host).and_then(|s| file.meta(&s.file_key)).is_some_and(|m| m.dtype.fp8().is_some())
    };
    let mut companions = IndexMap::new();
    let mut scales = std::collections::HashMap::new();
    let names: Vec<String> = keys.keys().cloned().collect();
    for host in names {
        let (stem, leaf) = match host.rsplit_once('.') {
            Some((stem, leaf)) => (stem, leaf),
            None => ("", host.as_str()),
        };
        let weight = format!("{stem}.weight");
        let companion = if leaf == "scaled_fp8" {
            true
        } else if SCALE_NAMES.contains(&leaf) && fp8(&weight, keys) {
            scales.insert(weight, host.clone());
            true
        } else {
            COMPANION_NAMES.contains(&leaf) && fp8(&weight, keys)
        };
        if companion {
            let src = keys.shift_remove(&host).expect("listed");
            companions.insert(host, src);
        }
    }
    (companions, scales)
}

const EXCLUDED: &[&str] = &[
    "first_stage_model.",
    "model.first_stage_model.",
    "conditioner.",
    "model.conditioner.",
    "cond_stage_model.",
    "model.cond_stage_model.",
    "encoder.",
    "decoder.",
    "quant_conv.",
    "post_quant_conv.",
];

const DIFFUSION_PREFIXES: &[&str] =
    &["model.diffusion_model.", "model.transformer.", "diffusion_model.", "transformer."];

/// Normalize one diffusion key (`prefixed_file`: the file has prefixed keys).
pub fn normalize_diffusion_key(key: &str, prefixed_file: bool) -> Option<String> {
    if EXCLUDED.iter().any(|p| key.starts_with(p)) {
        return None;
    }
    for p in DIFFUSION_PREFIXES {
        if let Some(rest) = key.strip_prefix(p) {
            return Some(format!("diffusion_model.{rest}"));
        }
    }
    if prefixed_file {
        None
    } else {
        Some(format!("diffusion_model.{key}"))
    }
}

const CLIP_PREFIXES: &[&str] =
    &["model.conditioner.embedders.", "conditioner.embedders.", "model.cond_stage_model.", "cond_stage_model."];

/// Check the extension (`.safetensors`, or ComfyUI's `.sft` alias).
pub fn check_safetensors_ext(path: &Path) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if name.ends_with(".safetensors") || name.ends_with(".sft") {
        return Ok(());
    }
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_else(|| "(no extension)".into());
    Err(FormatError::UnsupportedFormat { path: path.to_path_buf(), ext })
}

impl CheckpointFile {
    /// Open a checkpoint and build the host-key mapping (names only; no tensor data read).
    pub fn open(path: impl AsRef<Path>, domain: CheckpointDomain) -> Result<CheckpointFile> {
        let path = path.as_ref();
        check_safetensors_ext(path)?;
        let file = MappedFile::open(path)?;
        Self::from_mapped(file, domain)
    }

    /// Build the mapping over an already-open file.
    pub fn from_mapped(file: Arc<MappedFile>, domain: CheckpointDomain) -> Result<CheckpointFile> {
        let mut keys = IndexMap::new();
        let mut skipped = Vec::new();
        let layout;
        match domain {
            CheckpointDomain::Diffusion => {
                let prefixed = file.keys().any(|k| DIFFUSION_PREFIXES.iter().any(|p| k.starts_with(p)));
                layout = if prefixed { CheckpointLayout::Prefixed } else { CheckpointLayout::Unprefixed };
                for k in file.keys() {
                    match normalize_diffusion_key(k, prefixed) {
                        Some(host) => {
                            keys.insert(host, KeySource::plain(k));
                        }
                        None => skipped.push(k.to_string()),
                    }
                }
            }
            CheckpointDomain::Clip => {
                let mut unexpected = Vec::new();
                let mut conditioner = false;
                let mut host = false;
                for k in file.keys() {
                    if k.starts_with("clip_l.") || k.starts_with("clip_g.") {
                        host = true;
                        keys.insert(k.to_string(), KeySource::plain(k));
                        continue;
                    }
                    let Some(rest) = CLIP_PREFIXES.iter().find_map(|p| k.strip_prefix(p)) else {
                        skipped.push(k.to_string());
                        continue;
                    };
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'.') {
                        skipped.push(k.to_string());
                        continue;
                    }
                    let idx: u64 = rest[..digits].parse().unwrap_or(u64::MAX);
                    let tail = &rest[digits + 1..];
                    let enc = match idx {
                        0 => "clip_l",
                        1 => "clip_g",
                        other => {
                            if !unexpected.contains(&other) {
                                unexpected.push(other);
                            }
                            continue;
                        }
                    };
                    conditioner = true;
                    if tail.ends_with("position_ids") {
                        skipped.push(k.to_string());
                        continue;
                    }
                    if let Some(oc) = tail.strip_prefix("model.") {
                        let rows = file.meta(k).and_then(|m| m.shape.first().copied()).unwrap_or(0);
                        match openclip_to_host(oc, rows) {
                            Some(mapped) => {
                                for (suffix, src_rows, transpose) in mapped {
                                    keys.insert(
                                        format!("{enc}.{suffix}"),
                                        KeySource { file_key: k.to_string(), rows: src_rows, transpose },
                                    );
                                }
                            }
                            None => skipped.push(k.to_string()),
                        }
                    } else {
                        keys.insert(format!("{enc}.{tail}"), KeySource::plain(k));
                    }
                }
                if !unexpected.is_empty() {
                    unexpected.sort_unstable();
                    return Err(FormatError::UnexpectedEmbedders {
                        path: file.path().to_path_buf(),
                        indices: unexpected,
                    });
                }
                layout = if conditioner {
                    CheckpointLayout::Conditioner
                } else if host {
                    CheckpointLayout::Host
                } else {
                    CheckpointLayout::Empty
                };
            }
        }
        let (companions, scales) = split_companions(&file, &mut keys);
        let layout = if keys.is_empty() { CheckpointLayout::Empty } else { layout };
        let arch = match domain {
            CheckpointDomain::Diffusion => detect_checkpoint_arch(keys.keys().map(|s| s.as_str())),
            CheckpointDomain::Clip => detect_clip_arch(keys.keys().map(|s| s.as_str())),
        };
        Ok(CheckpointFile { file, domain, layout, keys, companions, scales, skipped, arch })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
    pub fn file(&self) -> &Arc<MappedFile> {
        &self.file
    }
    pub fn domain(&self) -> CheckpointDomain {
        self.domain
    }
    pub fn layout(&self) -> CheckpointLayout {
        self.layout
    }
    /// Detected architecture (docs/widen.md, "Architecture detection", for diffusion; `sdxl_clip`
    /// for CLIP with both encoders).
    pub fn arch(&self) -> Option<Arch> {
        self.arch
    }
    /// Host keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|s| s.as_str())
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn contains(&self, host_key: &str) -> bool {
        self.keys.contains_key(host_key)
    }
    pub fn source(&self, host_key: &str) -> Option<&KeySource> {
        self.keys.get(host_key)
    }
    /// Scaled-fp8 companions by host name (scales, input scales, the `scaled_fp8` marker), in
    /// file order: not host keys, but part of the model when it is saved or handed to ComfyUI.
    pub fn companions(&self) -> &IndexMap<String, KeySource> {
        &self.companions
    }

    /// True when some weight of the file is scaled fp8.
    pub fn is_scaled(&self) -> bool {
        !self.scales.is_empty()
    }

    /// Host name of the scale of a scaled fp8 weight.
    pub fn scale_key(&self, host_key: &str) -> Option<&str> {
        self.scales.get(host_key).map(String::as_str)
    }

    /// The per-tensor scale of a scaled fp8 weight (its true value is the stored fp8 value times
    /// this), `None` for any other key. A scale with more than one value is an error.
    pub fn scale(&self, host_key: &str) -> Result<Option<f32>> {
        let Some(scale) = self.scales.get(host_key) else { return Ok(None) };
        let src = &self.companions[scale];
        read_scale(&self.file, &src.file_key).map(Some)
    }

    /// File keys not mapped to any host key (excluded components, unknown names).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
    pub fn has_clip_l(&self) -> bool {
        self.keys.keys().any(|k| k.starts_with("clip_l."))
    }
    pub fn has_clip_g(&self) -> bool {
        self.keys.keys().any(|k| k.starts_with("clip_g."))
    }

    /// Shape of a host key's tensor (after slicing / transposing).
    pub fn shape(&self, host_key: &str) -> Option<Vec<usize>> {
        let src = self.keys.get(host_key)?;
        let mut shape = self.file.meta(&src.file_key)?.shape.clone();
        if let Some((_, len)) = src.rows {
            shape[0] = len;
        }
        if src.transpose && shape.len() == 2 {
            shape.swap(0, 1);
        }
        Some(shape)
    }

    pub fn dtype(&self, host_key: &str) -> Option<FileDtype> {
        let src = self.keys.get(host_key)?;
        Some(self.file.meta(&src.file_key)?.dtype)
    }

    /// `host key → shape` for every key (what LoRA loading needs to validate targets).
    pub fn shapes(&self) -> IndexMap<String, Vec<i64>> {
        self.keys
            .keys()
            .filter_map(|k| Some((k.clone(), self.shape(k)?.iter().map(|&d| d as i64).collect())))
            .collect()
    }

    /// Zero-copy tensor of a host key (a view for sliced / transposed sources).
    pub fn tensor(&self, host_key: &str) -> Result<MappedTensor> {
        let src = self.keys.get(host_key).ok_or_else(|| FormatError::KeyNotFound {
            path: self.path().to_path_buf(),
            key: host_key.to_string(),
        })?;
        let mut t = self.file.tensor(&src.file_key)?;
        if let Some((start, len)) = src.rows {
            t = t.try_map_view(|x| x.f_narrow(0, start as i64, len as i64))?;
        }
        if src.transpose {
            t = t.try_map_view(|x| x.f_transpose(0, 1))?;
        }
        Ok(t)
    }

    /// Tensors of `keys` in request order; any missing key is an error listing all of them.
    pub fn get_weights<S: AsRef<str>>(&self, keys: &[S]) -> Result<Vec<MappedTensor>> {
        let missing: Vec<String> =
            keys.iter().map(|k| k.as_ref()).filter(|k| !self.contains(k)).map(String::from).collect();
        if !missing.is_empty() {
            return Err(FormatError::MissingKeys { path: self.path().to_path_buf(), missing });
        }
        keys.iter().map(|k| self.tensor(k.as_ref())).collect()
    }

    pub fn path_buf(&self) -> PathBuf {
        self.path().to_path_buf()
    }
}

/// One host key produced from an OpenCLIP key: `(suffix after clip_g., row slice, transpose)`.
pub type HostPart = (String, Option<(usize, usize)>, bool);

/// Map an OpenCLIP text-tower key (after `model.`) to host suffixes (after `clip_g.`):
/// `(suffix, row slice, transpose)`. `rows` = first dimension of the file tensor.
pub fn openclip_to_host(oc: &str, rows: usize) -> Option<Vec<HostPart>> {
    let tm = "transformer.text_model";
    let one = |s: String| Some(vec![(s, None, false)]);
    match oc {
        "token_embedding.weight" => return one(format!("{tm}.embeddings.token_embedding.weight")),
        "positional_embedding" => return one(format!("{tm}.embeddings.position_embedding.weight")),
        "ln_final.weight" => return one(format!("{tm}.final_layer_norm.weight")),
        "ln_final.bias" => return one(format!("{tm}.final_layer_norm.bias")),
        "text_projection" => return Some(vec![("transformer.text_projection.weight".into(), None, true)]),
        "logit_scale" => return one("logit_scale".into()),
        _ => {}
    }
    let rest = oc.strip_prefix("transformer.resblocks.")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'.') {
        return None;
    }
    let n = &rest[..digits];
    let leaf = &rest[digits + 1..];
    let layer = format!("{tm}.encoder.layers.{n}");
    for (from, to) in [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
        ("attn.out_proj.", "self_attn.out_proj."),
    ] {
        if let Some(p) = leaf.strip_prefix(from) {
            return one(format!("{layer}.{to}{p}"));
        }
    }
    let kind = match leaf {
        "attn.in_proj_weight" => "weight",
        "attn.in_proj_bias" => "bias",
        _ => return None,
    };
    if !rows.is_multiple_of(3) || rows == 0 {
        return None;
    }
    let w = rows / 3;
    Some(
        ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{layer}.self_attn.{p}.{kind}"), Some((i * w, w)), false))
            .collect(),
    )
}

/// A per-tensor scale stored under `file_key` (F32, F16 or BF16, one value).
pub fn read_scale(file: &MappedFile, file_key: &str) -> Result<f32> {
    let v = file.to_f64_vec(file_key)?;
    match v.as_slice() {
        [x] => Ok(*x as f32),
        _ => Err(FormatError::Corrupt {
            path: file.path().to_path_buf(),
            reason: format!("'{file_key}' holds {} values; only a per-tensor (single-value) fp8 scale is supported", v.len()),
        }),
    }
}
