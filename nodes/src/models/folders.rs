//! Model folders the ComfyUI way (`docs/comfyui.md`, "Model folders").
//!
//! A models root (`--models-dir`) provides the default directory of each folder kind
//! (`loras`, `checkpoints`, `diffusion_models` = `unet` + `diffusion_models`, ...);
//! `extra_model_paths.yaml` files add directories. Names are listed as paths relative to their
//! directory (sub-folders included, `/`-separated), merged, de-duplicated and sorted; a name is
//! resolved by trying each directory in order (earlier directories shadow later ones). Names
//! that could climb out of a directory (`..`, absolute paths) are refused.

use std::collections::{BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};

use indexmap::IndexMap;

use super::{FormatError, Result};

/// ComfyUI's model extension set (`supported_pt_extensions`).
pub const MODEL_EXTENSIONS: &[&str] =
    &[".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"];

/// Default folder kinds: (kind, directories under the models root).
const DEFAULT_KINDS: &[(&str, &[&str])] = &[
    ("checkpoints", &["checkpoints"]),
    ("loras", &["loras"]),
    ("vae", &["vae"]),
    ("text_encoders", &["text_encoders", "clip"]),
    ("diffusion_models", &["unet", "diffusion_models"]),
    ("clip_vision", &["clip_vision"]),
    ("style_models", &["style_models"]),
    ("embeddings", &["embeddings"]),
    ("vae_approx", &["vae_approx"]),
    ("controlnet", &["controlnet", "t2i_adapter"]),
    ("gligen", &["gligen"]),
    ("upscale_models", &["upscale_models"]),
    ("hypernetworks", &["hypernetworks"]),
    ("photomaker", &["photomaker"]),
    ("model_patches", &["model_patches"]),
    ("audio_encoders", &["audio_encoders"]),
];

/// Legacy kind names mapped by every folder API.
pub fn canonical_kind(kind: &str) -> &str {
    match kind {
        "unet" => "diffusion_models",
        "clip" => "text_encoders",
        other => other,
    }
}

/// Directories and allowed extensions of one folder kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderKind {
    pub dirs: Vec<PathBuf>,
    /// Lower-case extensions with the dot; `None` = any file.
    pub extensions: Option<Vec<String>>,
}

/// The model folder registry.
#[derive(Debug, Clone, Default)]
pub struct ModelFolders {
    kinds: IndexMap<String, FolderKind>,
}

impl ModelFolders {
    /// An empty registry (no kinds).
    pub fn empty() -> Self {
        ModelFolders::default()
    }

    /// The default kinds with their directories under `models_dir`.
    pub fn new(models_dir: impl AsRef<Path>) -> Self {
        let root = models_dir.as_ref();
        let exts: Vec<String> = MODEL_EXTENSIONS.iter().map(|s| s.to_string()).collect();
        let mut kinds = IndexMap::new();
        for (kind, dirs) in DEFAULT_KINDS {
            kinds.insert(
                kind.to_string(),
                FolderKind {
                    dirs: dirs.iter().map(|d| normalize(&root.join(d))).collect(),
                    extensions: Some(exts.clone()),
                },
            );
        }
        ModelFolders { kinds }
    }

    /// Registered kind names.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(|s| s.as_str())
    }

    pub fn kind(&self, kind: &str) -> Result<&FolderKind> {
        self.kinds.get(canonical_kind(kind)).ok_or_else(|| FormatError::UnknownFolder {
            kind: kind.to_string(),
            known: self.kinds.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Directories of a kind, in search order.
    pub fn dirs(&self, kind: &str) -> Result<&[PathBuf]> {
        Ok(&self.kind(kind)?.dirs)
    }

    /// Add a directory to a kind (first when `first`, else last). Unknown kinds are created
    /// accepting any extension (like ComfyUI does for unknown keys of extra_model_paths.yaml).
    pub fn add_dir(&mut self, kind: &str, dir: impl AsRef<Path>, first: bool) {
        let dir = normalize(dir.as_ref());
        let entry = self
            .kinds
            .entry(canonical_kind(kind).to_string())
            .or_insert_with(|| FolderKind { dirs: Vec::new(), extensions: None });
        if first {
            entry.dirs.retain(|d| *d != dir);
            entry.dirs.insert(0, dir);
        } else if !entry.dirs.contains(&dir) {
            entry.dirs.push(dir);
        }
    }

    /// Load an `extra_model_paths.yaml` (current ComfyUI semantics, docs/comfyui.md,
    /// "extra_model_paths.yaml"): every non-empty top-level section may set `base_path` (`~` and
    /// `$VARS` expanded; relative paths are relative to the YAML file) and `is_default` (put its
    /// directories first); every other key is a folder kind (legacy names mapped) with one path or
    /// newline-separated paths, joined to `base_path`, or resolved against the YAML file's
    /// directory without one.
    pub fn load_extra_model_paths(&mut self, yaml_path: impl AsRef<Path>) -> Result<()> {
        let yaml_path = yaml_path.as_ref();
        let bad = |reason: String| FormatError::BadConfig { path: yaml_path.to_path_buf(), reason };
        let text = std::fs::read_to_string(yaml_path).map_err(super::io_err(yaml_path))?;
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).map_err(|e| bad(e.to_string()))?;
        let yaml_dir = yaml_path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."));
        let yaml_dir = std::path::absolute(yaml_dir).unwrap_or_else(|_| yaml_dir.to_path_buf());
        let Some(doc) = docs.into_iter().next() else { return Ok(()) };
        let sections = match doc {
            yaml_rust2::Yaml::Hash(h) => h,
            yaml_rust2::Yaml::Null => return Ok(()),
            other => return Err(bad(format!("top level must be a mapping of sections, got {other:?}"))),
        };
        for (name, section) in sections {
            let name = scalar(&name).unwrap_or_default();
            let section = match section {
                yaml_rust2::Yaml::Hash(h) => h,
                yaml_rust2::Yaml::Null => continue, // empty section: skipped
                other => {
                    return Err(bad(format!("section '{name}' must be a mapping, got {other:?}")))
                }
            };
            let mut base_path: Option<PathBuf> = None;
            let mut is_default = false;
            for (k, v) in &section {
                match scalar(k).as_deref() {
                    Some("base_path") => {
                        if let Some(s) = scalar(v) {
                            let p = PathBuf::from(expand_vars(&expand_user(&s)));
                            base_path = Some(if p.is_absolute() { p } else { yaml_dir.join(p) });
                        }
                    }
                    Some("is_default") => {
                        is_default = match v {
                            yaml_rust2::Yaml::Boolean(b) => *b,
                            other => scalar(other).is_some_and(|s| {
                                matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1")
                            }),
                        }
                    }
                    _ => {}
                }
            }
            for (k, v) in &section {
                let Some(kind) = scalar(k) else { continue };
                if kind == "base_path" || kind == "is_default" {
                    continue;
                }
                let Some(value) = scalar(v) else { continue };
                let mut dirs = Vec::new();
                for line in value.split('\n') {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let full = match &base_path {
                        Some(b) => b.join(line),
                        None => {
                            let p = PathBuf::from(line);
                            if p.is_absolute() {
                                p
                            } else {
                                yaml_dir.join(p)
                            }
                        }
                    };
                    dirs.push(full);
                }
                if is_default {
                    // Keep the section's own order at the front.
                    for d in dirs.iter().rev() {
                        self.add_dir(&kind, d, true);
                    }
                } else {
                    for d in &dirs {
                        self.add_dir(&kind, d, false);
                    }
                }
            }
        }
        Ok(())
    }

    /// All file names of a kind: relative to their directory, `/`-separated, filtered by the
    /// kind's extensions (case-insensitive), merged over all directories, de-duplicated and
    /// sorted. Missing directories are skipped; symlinks are followed (cycles broken); `.git`
    /// directories are skipped.
    pub fn list(&self, kind: &str) -> Result<Vec<String>> {
        let fk = self.kind(kind)?;
        let mut names = BTreeSet::new();
        for dir in &fk.dirs {
            let mut visited = HashSet::new();
            walk(dir, "", &mut visited, &mut |rel| {
                if allowed(rel, fk.extensions.as_deref()) {
                    names.insert(rel.to_string());
                }
            });
        }
        Ok(names.into_iter().collect())
    }

    /// Resolve a listed name to a file path: the first directory (in order) containing it.
    /// Names that are absolute or contain `..` are refused.
    pub fn resolve(&self, kind: &str, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let fk = self.kind(kind)?;
        for dir in &fk.dirs {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        Err(FormatError::ModelNotFound {
            kind: kind.to_string(),
            name: name.to_string(),
            searched: fk.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Refuse names that could escape a model directory.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(FormatError::BadName { name: name.to_string(), reason: reason.into() });
    if name.is_empty() {
        return bad("empty name");
    }
    if name.contains('\0') {
        return bad("contains a NUL byte");
    }
    if name.starts_with('/') || name.starts_with('\\') || Path::new(name).is_absolute() {
        return bad("absolute paths are not allowed");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return bad("drive-qualified paths are not allowed");
    }
    if name.split(['/', '\\']).any(|c| c == "..") {
        return bad("path traversal ('..') is not allowed");
    }
    Ok(())
}

fn allowed(rel: &str, exts: Option<&[String]>) -> bool {
    let Some(exts) = exts else { return true };
    let file = rel.rsplit('/').next().unwrap_or(rel);
    // Python's splitext: the extension starts at the last dot that is not leading.
    let trimmed = file.trim_start_matches('.');
    let Some(pos) = trimmed.rfind('.') else { return false };
    let ext = trimmed[pos..].to_ascii_lowercase();
    exts.contains(&ext)
}

fn walk(dir: &Path, rel: &str, visited: &mut HashSet<PathBuf>, f: &mut dyn FnMut(&str)) {
    let Ok(canon) = std::fs::canonicalize(dir) else { return };
    if !visited.insert(canon) {
        return; // symlink cycle
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        // metadata() follows symlinks.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if name == ".git" {
                continue;
            }
            walk(&path, &child_rel, visited, f);
        } else if meta.is_file() {
            f(&child_rel);
        }
    }
}

fn scalar(y: &yaml_rust2::Yaml) -> Option<String> {
    match y {
        yaml_rust2::Yaml::String(s) => Some(s.clone()),
        yaml_rust2::Yaml::Integer(i) => Some(i.to_string()),
        yaml_rust2::Yaml::Real(r) => Some(r.clone()),
        yaml_rust2::Yaml::Boolean(b) => Some(if *b { "True".into() } else { "False".into() }),
        _ => None,
    }
}

/// `~` / `~/...` → `$HOME/...` (like `os.path.expanduser` for the current user).
pub fn expand_user(s: &str) -> String {
    if s == "~" || s.starts_with("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return format!("{}{}", home.to_string_lossy(), &s[1..]);
        }
    }
    s.to_string()
}

/// `$NAME` and `${NAME}` → the variable's value; unknown variables are left as they are
/// (like `os.path.expandvars`).
pub fn expand_vars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            if i + 1 < chars.len() && chars[i + 1] == '{' {
                if let Some(end) = chars[i + 2..].iter().position(|&c| c == '}') {
                    let name: String = chars[i + 2..i + 2 + end].iter().collect();
                    if let Ok(v) = std::env::var(&name) {
                        out.push_str(&v);
                        i += end + 3;
                        continue;
                    }
                }
            } else {
                let len = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                if len > 0 {
                    let name: String = chars[i + 1..i + 1 + len].iter().collect();
                    if let Ok(v) = std::env::var(&name) {
                        out.push_str(&v);
                        i += len + 1;
                        continue;
                    }
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Lexical normalization (`os.path.normpath`): drop `.`, fold `..` into the parent.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
