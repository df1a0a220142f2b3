//! The record cache: every node class's `/object_info` record (with the bridge's flags), the
//! import failures and the node replacements of one started ComfyUI, kept on disk so that a
//! later process can validate, convert and list nodes without starting Python
//! (docs/architecture.md, "The record cache").
//!
//! The file is keyed by what decides those records: the ComfyUI checkout (path, version, git
//! HEAD, its node sources' mtimes and sizes), the custom node folders (every folder's mtime and
//! every `.py` file's mtime and size), the folders whose listings become combo choices (the
//! model folders), the Python executable, the comfyrs version and the bridge's own host script. A
//! file whose key differs, or that cannot be read, is ignored and replaced at the next start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::{json, Value as Json};

use crate::error::RecordError;
use crate::node::{parse_record, Flags};
use crate::{find_comfyui, find_venv, Bridge, BridgeError, BridgeOptions, ImportFailure, HOST_SOURCE};
use comfyrs_runtime::schema::NodeSchema;

/// Raised when the layout of the file changes.
const FORMAT: u64 = 1;

/// One class as the host described it: its record's exact text, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub class: String,
    pub text: Option<String>,
    pub error: Option<String>,
}

impl NodeRecord {
    pub(crate) fn read(&self) -> Result<(NodeSchema, Flags), RecordError> {
        match (&self.text, &self.error) {
            (Some(text), _) => parse_record(text),
            (None, e) => Err(RecordError::Raised(e.clone().unwrap_or_else(|| "(no reason given)".into()))),
        }
    }
}

/// What a fresh cache file holds.
#[derive(Clone, Debug)]
pub struct CachedNodes {
    pub records: Vec<NodeRecord>,
    pub failures: Vec<ImportFailure>,
    /// `/node_replacements` as ComfyUI answers it.
    pub replacements: Json,
}

/// The cache file for one set of bridge options, with the key it must carry to be fresh.
#[derive(Clone, Debug)]
pub struct RecordCache {
    path: PathBuf,
    key: Json,
}

impl RecordCache {
    /// The cache of the ComfyUI `opts` would start, in `dir` (the binary passes
    /// `~/.cache/comfyrs/records`). Fails only when there is no venv or ComfyUI to start.
    pub fn for_options(opts: &BridgeOptions, comfyrs_version: &str, dir: &Path) -> Result<RecordCache, BridgeError> {
        let venv = find_venv(opts)?;
        let exe = venv.join("bin").join("python");
        let comfyui = find_comfyui(opts, &venv)?;
        let mut custom = vec![comfyui.join("custom_nodes")];
        custom.extend(opts.custom_nodes.iter().cloned());
        let p = |p: &Path| p.to_string_lossy().into_owned();
        let key = json!({
            "format": FORMAT,
            "comfyrs": comfyrs_version,
            "host": blake3::hash(HOST_SOURCE.as_bytes()).to_hex().to_string(),
            "python": [p(&exe), stat(&exe)],
            "comfyui": p(&comfyui),
            "comfyui_version": std::fs::read_to_string(comfyui.join("comfyui_version.py")).ok(),
            "git_head": git_head(&comfyui),
            "comfyui_sources": tree_digest(&[comfyui.join("nodes.py"), comfyui.join("comfy_extras"), comfyui.join("comfy_api_nodes"), comfyui.join("comfy_api")]),
            "custom_nodes": custom.iter().map(|d| json!([p(d), tree_digest(std::slice::from_ref(d))])).collect::<Vec<_>>(),
            // Combo choices list the model folders (checkpoints, loras). The input folder is
            // left out: a server gets a new one per state folder, and the choices of its one
            // user (LoadImage) are checked by its VALIDATE_INPUTS, which starts Python.
            "listed_folders": dirs_digest(&[Some(comfyui.join("models")), opts.models_dir.clone()]),
            "extra_model_paths": stat(&comfyui.join("extra_model_paths.yaml")),
            "models_dir": opts.models_dir.as_deref().map(p),
        });
        // One file per ComfyUI, custom node folders and models folder, so switching between
        // two keeps both.
        let name = blake3::hash(json!([key["comfyui"], key["custom_nodes"].as_array().map(|a| a.iter().map(|c| c[0].clone()).collect::<Vec<_>>()), key["models_dir"]]).to_string().as_bytes()).to_hex();
        Ok(RecordCache { path: dir.join(format!("{}.json", &name[..16])), key })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached records when the file exists, parses and carries this key; None otherwise
    /// (why is logged at debug level: a stale or corrupt file is simply replaced later).
    pub fn load(&self) -> Option<CachedNodes> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("no record cache at {}: {e}", self.path.display());
                return None;
            }
        };
        let doc: Json = match serde_json::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("the record cache {} is not JSON, so it is ignored: {e}", self.path.display());
                return None;
            }
        };
        if doc.get("key") != Some(&self.key) {
            tracing::debug!("the record cache {} is stale (ComfyUI, custom nodes or comfyrs changed)", self.path.display());
            return None;
        }
        let read = || -> Option<CachedNodes> {
            let s = |v: &Json| v.as_str().map(String::from);
            let mut records = Vec::new();
            for r in doc.get("records")?.as_array()? {
                records.push(NodeRecord { class: s(r.get("class")?)?, text: r.get("text").and_then(s), error: r.get("error").and_then(s) });
            }
            let mut failures = Vec::new();
            for f in doc.get("failures")?.as_array()? {
                failures.push(ImportFailure { path: s(f.get("path")?)?, module: s(f.get("module")?)?, error: s(f.get("error")?)?, custom: f.get("custom")?.as_bool()? });
            }
            Some(CachedNodes { records, failures, replacements: doc.get("replacements")?.clone() })
        };
        let cached = read();
        if cached.is_none() {
            tracing::debug!("the record cache {} is malformed, so it is ignored", self.path.display());
        }
        cached
    }

    /// Writes what `bridge` read at start (atomically: a temporary file renamed over the old).
    pub fn store(&self, bridge: &Bridge) -> std::io::Result<()> {
        let replacements = bridge.node_replacements().unwrap_or_else(|e| {
            tracing::debug!("the node replacements are not cached: {e}");
            json!({})
        });
        let doc = json!({
            "key": self.key,
            "records": bridge.records().iter().map(|r| json!({"class": r.class, "text": r.text, "error": r.error})).collect::<Vec<_>>(),
            "failures": bridge.import_failures().iter().map(|f| json!({"path": f.path, "module": f.module, "error": f.error, "custom": f.custom})).collect::<Vec<_>>(),
            "replacements": replacements,
        });
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(doc.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        prune(dir, &self.path);
        written
    }
}

/// Files of the cache folder not written for this long are removed when another is written
/// (each custom node folder path gets its own file, and test runs use temporary ones).
const UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn prune(dir: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > UNUSED_FOR);
        if p != keep && old && p.extension().is_some_and(|x| x == "json") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// A file's (mtime in ns, size), or null when it does not exist.
fn stat(p: &Path) -> Json {
    match std::fs::metadata(p) {
        Ok(m) => json!([mtime(&m), m.len()]),
        Err(_) => Json::Null,
    }
}

fn mtime(m: &std::fs::Metadata) -> u128 {
    m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos())
}

/// The checked-out commit of a git checkout (HEAD, resolved through its ref when it names one).
fn git_head(repo: &Path) -> Option<String> {
    let head = std::fs::read_to_string(repo.join(".git").join("HEAD")).ok()?;
    let head = head.trim();
    match head.strip_prefix("ref: ") {
        Some(r) => std::fs::read_to_string(repo.join(".git").join(r)).ok().map(|s| s.trim().to_string()).or_else(|| Some(head.to_string())),
        None => Some(head.to_string()),
    }
}

/// A digest of every folder's mtime (a file added or removed anywhere) and every `.py` file's
/// mtime and size under `roots` (Python sources edited in place).
fn tree_digest(roots: &[PathBuf]) -> String {
    let mut h = blake3::Hasher::new();
    for r in roots {
        walk(r, 0, &mut |p, m| {
            let py = p.extension().is_some_and(|e| e == "py");
            if m.is_dir() || py {
                h.update(format!("{}\0{}\0{}\n", p.display(), mtime(m), if py { m.len() } else { 0 }).as_bytes());
            }
        });
    }
    h.finalize().to_hex().to_string()
}

/// A digest of the mtimes of the folders under `roots` (a file added to or removed from one).
fn dirs_digest(roots: &[Option<PathBuf>]) -> String {
    let mut h = blake3::Hasher::new();
    for r in roots.iter().flatten() {
        walk(r, 0, &mut |p, m| {
            if m.is_dir() {
                h.update(format!("{}\0{}\n", p.display(), mtime(m)).as_bytes());
            }
        });
    }
    h.finalize().to_hex().to_string()
}

/// Visits `p` and everything below it in a stable order (symlinks followed, depth bounded,
/// `__pycache__`, `.git` and `node_modules` skipped: they change without changing any node).
fn walk(p: &Path, depth: usize, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(m) = std::fs::metadata(p) else { return };
    f(p, &m);
    if !m.is_dir() || depth >= 8 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(p) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for e in entries {
        if e.file_name().is_some_and(|n| n == "__pycache__" || n == ".git" || n == "node_modules") {
            continue;
        }
        walk(&e, depth + 1, f);
    }
}
