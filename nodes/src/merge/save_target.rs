//! Where a merge is saved and under which names (`docs/widen.md`, "Saving merged models"): a
//! MODEL as one checkpoint file, a CLIP as one file per text encoder, the way ComfyUI's text
//! encoder loaders read them.
//!
//! A saved file is described by its path and a [`KeyNaming`]: which of the model's (host) keys it
//! holds and the name each has in the file. Writing, reusing and fingerprinting a save all go
//! through it, so a MODEL and a CLIP differ only here.

use std::path::PathBuf;

use crate::models::ModelFolders;
use crate::recipe::model::NativeModel;
use crate::recipe::{PackError, RecipeDomain};

/// The text encoders a CLIP is saved as, each in a file of its own: the host keys' first
/// component (the SDXL CLIP's two, docs/widen.md "Checkpoint files").
pub const TEXT_ENCODERS: &[&str] = &["clip_l", "clip_g"];

/// The prefix saved keys of a ComfyUI MODEL base get: its weights are named
/// `diffusion_model.…`, a checkpoint's `model.diffusion_model.…` (what ComfyUI's loaders look for).
pub const FOREIGN_SAVE_PREFIX: &str = "model.";

/// How one saved file names the model's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyNaming {
    /// Every key, under its host name after `prefix` (empty, or [`FOREIGN_SAVE_PREFIX`]).
    Checkpoint { prefix: &'static str },
    /// The keys of one text encoder (`clip_l.…`), without that prefix and then without a leading
    /// `transformer.`: `clip_l.transformer.text_model.…` is saved as `text_model.…`, what a text
    /// encoder file holds.
    TextEncoder(&'static str),
}

impl KeyNaming {
    /// The name host key `host` has in the file; `None` when the file does not hold it.
    pub fn saved_name(&self, host: &str) -> Option<String> {
        match self {
            KeyNaming::Checkpoint { prefix } => Some(format!("{prefix}{host}")),
            KeyNaming::TextEncoder(enc) => {
                let rest = host.strip_prefix(enc)?.strip_prefix('.')?;
                Some(rest.strip_prefix("transformer.").unwrap_or(rest).to_string())
            }
        }
    }

    /// True when the file holds host key `host`.
    pub fn holds(&self, host: &str) -> bool {
        self.saved_name(host).is_some()
    }
}

/// One file a save writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveFile {
    pub path: PathBuf,
    pub naming: KeyNaming,
}

/// `model_name` → file name (docs/widen.md, "Saving merged models").
pub fn validate_model_name(name: &str) -> Result<String, PackError> {
    let n = name.trim();
    if n.is_empty() {
        return Err(PackError::value("Model name cannot be empty"));
    }
    if n.contains("..") {
        return Err(PackError::value(format!("Model name contains path traversal: '{n}'")));
    }
    if n.contains('/') || n.contains('\\') {
        return Err(PackError::value(format!("Model name contains path separators: '{n}'")));
    }
    Ok(if n.ends_with(".safetensors") { n.to_string() } else { format!("{n}.safetensors") })
}

/// Where saves of folder kind `kind` go: its first directory that exists, else its first. A
/// ComfyUI from before `text_encoders` reads text encoders from `clip` only, so an install that
/// has only that folder gets the files there.
fn first_dir(folders: &ModelFolders, kind: &str) -> Result<PathBuf, PackError> {
    let dirs = folders.dirs(kind).unwrap_or_default();
    dirs.iter()
        .find(|d| d.is_dir())
        .or_else(|| dirs.first())
        .cloned()
        .ok_or_else(|| PackError::value(format!("No {kind} directory configured in ComfyUI")))
}

/// The save path of a MODEL: the first checkpoints folder / validated name.
pub fn target_path(folders: &ModelFolders, model_name: &str) -> Result<PathBuf, PackError> {
    Ok(first_dir(folders, "checkpoints")?.join(validate_model_name(model_name)?))
}

/// The save path of text encoder `encoder` of a CLIP: the first text_encoders folder /
/// `{stem}_{encoder}.safetensors`, the stem being the validated name without `.safetensors`.
pub fn encoder_path(folders: &ModelFolders, model_name: &str, encoder: &str) -> Result<PathBuf, PackError> {
    let name = validate_model_name(model_name)?;
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    Ok(first_dir(folders, "text_encoders")?.join(format!("{stem}_{encoder}.safetensors")))
}

/// Every path a save under `model_name` may write, whatever the model holds (for the Exit's
/// fingerprint, which sees no model): the checkpoint, or each text encoder's file.
pub fn candidate_paths(folders: &ModelFolders, domain: RecipeDomain, model_name: &str) -> Result<Vec<PathBuf>, PackError> {
    match domain {
        RecipeDomain::Diffusion => Ok(vec![target_path(folders, model_name)?]),
        RecipeDomain::Clip => TEXT_ENCODERS.iter().map(|e| encoder_path(folders, model_name, e)).collect(),
    }
}

/// The files a merge over `base` saved under `model_name` consists of: a MODEL's one checkpoint,
/// a CLIP's file per text encoder present in the base (every key of the base belongs to one).
pub fn save_files(folders: &ModelFolders, domain: RecipeDomain, model_name: &str, base: &NativeModel) -> Result<Vec<SaveFile>, PackError> {
    match domain {
        RecipeDomain::Diffusion => {
            let prefix = if base.try_file().is_some() { "" } else { FOREIGN_SAVE_PREFIX };
            Ok(vec![SaveFile { path: target_path(folders, model_name)?, naming: KeyNaming::Checkpoint { prefix } }])
        }
        RecipeDomain::Clip => {
            let namings: Vec<KeyNaming> = TEXT_ENCODERS
                .iter()
                .map(|e| KeyNaming::TextEncoder(e))
                .filter(|n| base.keys().any(|k| n.holds(k)))
                .collect();
            if let Some(k) = base.keys().find(|k| !namings.iter().any(|n| n.holds(k))) {
                return Err(PackError::value(format!(
                    "Cannot save this CLIP: its key '{k}' belongs to none of the text encoders a CLIP is saved as ({}).",
                    TEXT_ENCODERS.join(", ")
                )));
            }
            namings
                .into_iter()
                .map(|naming| {
                    let KeyNaming::TextEncoder(e) = naming else { unreachable!() };
                    Ok(SaveFile { path: encoder_path(folders, model_name, e)?, naming })
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encoder_names_lose_the_encoder_and_transformer_prefixes() {
        let l = KeyNaming::TextEncoder("clip_l");
        assert_eq!(
            l.saved_name("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight").as_deref(),
            Some("text_model.encoder.layers.0.mlp.fc1.weight")
        );
        assert_eq!(l.saved_name("clip_l.transformer.text_projection.weight").as_deref(), Some("text_projection.weight"));
        assert_eq!(l.saved_name("clip_l.logit_scale").as_deref(), Some("logit_scale"));
        assert_eq!(l.saved_name("clip_g.logit_scale"), None);
        assert_eq!(l.saved_name("clip_lx.logit_scale"), None);
        assert!(!l.holds("clip_lx.logit_scale") && l.holds("clip_l.logit_scale"));
        let c = KeyNaming::Checkpoint { prefix: FOREIGN_SAVE_PREFIX };
        assert_eq!(c.saved_name("diffusion_model.x").as_deref(), Some("model.diffusion_model.x"));
    }

    #[test]
    fn encoder_files_are_named_after_the_stem() {
        let dir = tempfile::tempdir().unwrap();
        let f = ModelFolders::new(dir.path());
        let p = encoder_path(&f, " merged.safetensors ", "clip_g").unwrap();
        assert_eq!(p, dir.path().join("text_encoders/merged_clip_g.safetensors"));
        assert_eq!(candidate_paths(&f, RecipeDomain::Clip, "m").unwrap().len(), 2);
        assert!(encoder_path(&ModelFolders::empty(), "m", "clip_l").unwrap_err().to_string().contains("No text_encoders directory"));
        // An install with only the legacy folder gets the files there; with both, the first.
        std::fs::create_dir(dir.path().join("clip")).unwrap();
        assert_eq!(encoder_path(&f, "m", "clip_l").unwrap(), dir.path().join("clip/m_clip_l.safetensors"));
        std::fs::create_dir(dir.path().join("text_encoders")).unwrap();
        assert_eq!(encoder_path(&f, "m", "clip_l").unwrap(), dir.path().join("text_encoders/m_clip_l.safetensors"));
    }
}
