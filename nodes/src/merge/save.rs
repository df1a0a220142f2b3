//! Saving merged models (`docs/widen.md`, "Saving merged models") and the Exit's change
//! fingerprint ("Change detection").
//!
//! A save is one file or several (a CLIP's one per text encoder; `save_target` says which and
//! under which key names). Each holds every key of the base it covers (merged keys overlaid),
//! streamed one tensor at a time by the models module's atomic writer (temp file in the target
//! folder, fsync, rename), with the recipe JSON, its hash, the merged key list and optionally the
//! workflow in the metadata. A save whose files all hold the recipe's hash is reused without
//! evaluating anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use comfyrs_runtime::node::Fingerprint;
use comfyrs_runtime::{Args, Value};
use indexmap::IndexMap;
use serde_json::{json, Value as Json};

use crate::models::writer::{SafetensorsWriter, TensorHeader};
use tch::Kind;
use crate::models::{file_stats, FileDtype, FileIdentity, MappedFile, MappedTensor};

use crate::models::ModelFolders;
use super::report::{self, MergeReport};
use super::save_target::{candidate_paths, KeyNaming, SaveFile, FOREIGN_SAVE_PREFIX};
use crate::recipe::model::NativeModel;
use crate::recipe::{canonical_json, PackError, Recipe, RecipeDomain, RecipeKind};

pub use super::save_target::{save_files, target_path, validate_model_name};

/// Deterministic recipe JSON with file stats, and its hash (blake3 hex).
pub fn serialize(folders: &ModelFolders, root: &Recipe) -> (String, String) {
    let folders = folders.clone();
    let stats = move |name: &str| -> Option<(f64, u64)> {
        for kind in ["loras", "checkpoints", "diffusion_models"] {
            if let Ok(p) = folders.resolve(kind, name) {
                return Some(file_stats(&p));
            }
        }
        Some((0.0, 0))
    };
    let json = canonical_json(&root.to_json(&stats));
    let hash = blake3::hash(json.as_bytes()).to_hex().to_string();
    (json, hash)
}

/// The saved merge in `files` if each of them holds recipe hash `hash`: the base with the saved
/// merged keys (memory-mapped from the files). A missing or stale file means a new merge; a
/// file there without comfyrs/ecaj metadata is refused, whichever file it is, before anything
/// is merged.
pub fn check_saved(files: &[SaveFile], hash: &str, base: &Arc<NativeModel>) -> Result<Option<Arc<NativeModel>>, PackError> {
    let mut current = Vec::with_capacity(files.len());
    for f in files {
        if !f.path.exists() {
            current.push(None);
            continue;
        }
        let file = MappedFile::open(&f.path)?;
        let Some(md) = file.metadata().filter(|m| m.contains_key("__ecaj_version__")) else {
            return Err(PackError::value(format!(
                "File exists but is not an ecaj-saved model: {}\nRefusing to overwrite a file without ecaj metadata. \
                 Choose a different model_name.",
                f.path.display()
            )));
        };
        let fresh = md.get("__ecaj_recipe_hash__").map(String::as_str) == Some(hash);
        current.push(fresh.then_some((f, file)));
    }
    if current.iter().any(Option::is_none) {
        return Ok(None);
    }
    let mut merged = IndexMap::new();
    let mut scales = IndexMap::new();
    for (f, file) in current.into_iter().flatten() {
        // Host names (docs/widen.md, "Saving merged models").
        let keys: Vec<String> = file
            .metadata()
            .and_then(|m| m.get("__ecaj_affected_keys__"))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        for k in keys {
            let t = file.tensor(&stored_name(&file, f.naming, &k))?;
            // A scaled fp8 key was saved with its new scale, under the file's name for the
            // base's scale key.
            if let Some(scale_key) = base.try_file().and_then(|b| b.scale_key(&k)) {
                let name = stored_name(&file, f.naming, scale_key);
                scales.insert(k.clone(), crate::models::checkpoint::read_scale(&file, &name)?);
            }
            merged.insert(k, t);
        }
    }
    // In key order, as a merge lists them (a CLIP's files each hold part of them).
    merged.sort_keys();
    let mut h = [0u8; 32];
    h.copy_from_slice(blake3::hash(hash.as_bytes()).as_bytes());
    Ok(Some(base.with_overrides(merged, scales, &h)))
}

/// The name host key `host` has in a saved `file`. A checkpoint may name a key either way:
/// saved from a file base as it is, from a ComfyUI MODEL base under its checkpoint name.
fn stored_name(file: &MappedFile, naming: KeyNaming, host: &str) -> String {
    match naming {
        KeyNaming::Checkpoint { .. } if file.contains(host) => host.to_string(),
        KeyNaming::Checkpoint { .. } => format!("{FOREIGN_SAVE_PREFIX}{host}"),
        KeyNaming::TextEncoder(_) => naming.saved_name(host).unwrap_or_else(|| host.to_string()),
    }
}

/// The merge report saved in the file's metadata (docs/widen.md, "Report"); `None` for a file
/// saved without one.
pub fn saved_report(path: &Path) -> Result<Option<MergeReport>, PackError> {
    let file = MappedFile::open(path)?;
    let Some(json) = file.metadata().and_then(|m| m.get(report::METADATA_KEY).cloned()) else { return Ok(None) };
    MergeReport::from_json(&json).map(Some).map_err(|e| {
        PackError::value(format!("{}: the saved merge report ({}) is not readable: {e}", path.display(), report::METADATA_KEY))
    })
}

/// Writes file `f` of `model`'s save atomically: the base keys it holds, overrides overlaid,
/// under its names. A base that is a ComfyUI MODEL or CLIP (no file) is written from its own
/// tensors. A scaled fp8 base's companions (docs/widen.md, "Model formats") are written with
/// it: merged keys' scales are their new ones, the rest as the base has them. The metadata's
/// affected keys are the merged keys the file holds, under their host names.
pub fn save_file(
    f: &SaveFile,
    model: &NativeModel,
    recipe_json: &str,
    hash: &str,
    workflow: Option<&Json>,
    report: Option<&MergeReport>,
) -> Result<(), PackError> {
    let path = f.path.as_path();
    let companions = model.companions()?;
    // (host key, name in the file), in name order.
    let mut keys: Vec<(String, String)> = model
        .keys()
        .map(String::from)
        .chain(companions.keys().cloned())
        .filter_map(|k| f.naming.saved_name(&k).map(|n| (k, n)))
        .collect();
    keys.sort_by(|a, b| a.1.cmp(&b.1));
    if let Some(w) = keys.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(PackError::value(format!(
            "Cannot save {}: keys '{}' and '{}' would both be saved as '{}'.",
            path.display(),
            w[0].0,
            w[1].0,
            w[0].1
        )));
    }
    let mut headers = Vec::with_capacity(keys.len());
    let file = model.try_file();
    let file_dtype = |k: &str, kind: Kind| FileDtype::from_kind(kind).ok_or_else(|| PackError::value(format!("Unsupported dtype {kind:?} for tensor '{k}'")));
    for (k, name) in &keys {
        let (dtype, shape) = match (model.overrides().get(k), file) {
            (None, Some(file)) if companions.contains_key(k) => {
                let m = file.file().meta(&file.companions()[k].file_key).expect("listed companion");
                (m.dtype, m.shape.clone())
            }
            (Some(t), _) => (file_dtype(k, t.kind())?, t.size().iter().map(|&d| d as usize).collect()),
            (None, Some(file)) => (file.dtype(k).expect("listed key"), file.shape(k).expect("listed key")),
            (None, None) => (
                file_dtype(k, model.kind(k).expect("listed key"))?,
                model.shape(k).expect("listed key").iter().map(|&d| d as usize).collect(),
            ),
        };
        headers.push(TensorHeader::new(name.clone(), dtype, &shape));
    }
    let mut affected: Vec<&String> = model.overrides().keys().filter(|k| f.naming.holds(k)).collect();
    affected.sort();
    let mut md = BTreeMap::new();
    md.insert("__ecaj_version__".to_string(), "1".to_string());
    md.insert("__ecaj_recipe__".to_string(), recipe_json.to_string());
    md.insert("__ecaj_recipe_hash__".to_string(), hash.to_string());
    md.insert("__ecaj_affected_keys__".to_string(), serde_json::to_string(&affected).unwrap_or_default());
    if let Some(wf) = workflow.filter(|w| !w.is_null() && w.as_object().is_none_or(|o| !o.is_empty())) {
        md.insert("__ecaj_workflow__".to_string(), wf.to_string());
    }
    if let Some(r) = report {
        md.insert(report::METADATA_KEY.to_string(), r.to_json());
    }
    let mut w = SafetensorsWriter::create(path, &headers, Some(&md))?;
    let mut buf = Vec::new();
    for (k, _) in &keys {
        match (model.overrides().get(k), file) {
            (None, Some(_)) if companions.contains_key(k) => write_tensor(&mut w, &MappedTensor::owned(companions[k].shallow_clone()), &mut buf)?,
            (Some(t), _) => write_tensor(&mut w, t, &mut buf)?,
            (None, None) => write_tensor(&mut w, &model.tensor(k)?, &mut buf)?,
            (None, Some(file)) => {
                let src = file.source(k).expect("listed key");
                if src.rows.is_none() && !src.transpose {
                    w.write(file.file().bytes(&src.file_key)?)?;
                } else {
                    let t = file.tensor(k)?;
                    write_tensor(&mut w, &t, &mut buf)?;
                }
            }
        }
    }
    w.finish()?;
    tracing::info!(path = %path.display(), keys = keys.len(), merged = affected.len(), "WIDEN Exit: saved model");
    Ok(())
}

fn write_tensor(w: &mut SafetensorsWriter, t: &MappedTensor, buf: &mut Vec<u8>) -> Result<(), PackError> {
    // A ComfyUI MODEL's weights may live on the GPU.
    let c = t.f_contiguous()?.f_to_device(tch::Device::Cpu)?;
    let n = c.numel();
    buf.resize(n * c.kind().elt_size_in_bytes(), 0);
    c.f_copy_data_u8(buf, n)?;
    Ok(w.write(buf)?)
}

/// IS_CHANGED of the Exit (docs/widen.md, "Change detection"): the recipe's files are fingerprinted
/// by the LoRA / Model Input / Base Input nodes themselves (their signatures feed the Exit's); here
/// the save options and the identity of each file a save may write (a CLIP's every text encoder
/// file).
pub fn exit_fingerprint(folders: &ModelFolders, domain: RecipeDomain, a: &Args) -> Fingerprint {
    let b = |n: &str, d: bool| match a.get(n) {
        Some(Value::Bool(v)) => *v,
        _ => d,
    };
    let save = b("save_model", false);
    let cache = b("enable_cache", true);
    let name = match a.get("model_name") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    if !save {
        return Fingerprint::Value(json!(format!("cache={cache}")));
    }
    let id = |p: &Path| FileIdentity::of(p).ok().map(|id| format!("mtime={}|size={}", id.mtime_ns, id.size));
    let files = match domain {
        RecipeDomain::Diffusion => target_path(folders, &name).ok().and_then(|p| id(&p)).map(|s| format!("|{s}")).unwrap_or_else(|| "|no_cache".into()),
        RecipeDomain::Clip => match candidate_paths(folders, domain, &name) {
            Ok(paths) => paths
                .iter()
                .map(|p| format!("|{}:{}", p.file_name().unwrap_or_default().to_string_lossy(), id(p).unwrap_or_else(|| "none".into())))
                .collect(),
            Err(_) => "|no_cache".into(),
        },
    };
    Fingerprint::Value(json!(format!(
        "save=true|name={name}|wf={}|cache={cache}{files}",
        b("save_workflow", true)
    )))
}

/// `file_hash(recipe)` of docs/widen.md, "Change detection": LoRA and model file identities,
/// sorted, for reports.
pub fn file_hash(folders: &ModelFolders, root: &Recipe) -> String {
    let mut loras = std::collections::BTreeSet::new();
    let mut models = std::collections::BTreeSet::new();
    root.walk(&mut |r| match &r.kind {
        RecipeKind::Lora { loras: l, .. } => loras.extend(l.iter().map(|e| e.path.clone())),
        RecipeKind::Model { path, source_dir, .. } => {
            models.insert((path.clone(), *source_dir));
        }
        RecipeKind::Base { .. } | RecipeKind::Compose { .. } | RecipeKind::Merge { .. } => {}
    });
    let mut h = blake3::Hasher::new();
    for l in loras {
        let (m, s) = folders.resolve("loras", &l).map(file_stats).unwrap_or((0.0, 0));
        h.update(format!("lora:{l}|{m}|{s}\n").as_bytes());
    }
    for (p, sd) in models {
        let (m, s) = folders.resolve(sd.name(), &p).map(file_stats).unwrap_or((0.0, 0));
        h.update(format!("model:{p}|{}|{m}|{s}\n", sd.name()).as_bytes());
    }
    h.finalize().to_hex().to_string()
}
