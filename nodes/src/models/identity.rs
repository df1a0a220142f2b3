//! File identity `(path, size, mtime)`: the fingerprint of a LoRA or model file. Retraining a
//! LoRA in place changes its size or mtime, so fingerprints (IS_CHANGED, recipe hashes) change.

use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// `(path, size, mtime)` of a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIdentity {
    /// Absolute path (canonicalized when possible).
    pub path: PathBuf,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i128,
}

fn mtime_ns(meta: &Metadata) -> i128 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        },
        Err(_) => 0,
    }
}

impl FileIdentity {
    /// Stat `path`.
    pub fn of(path: impl AsRef<Path>) -> std::io::Result<FileIdentity> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path)?;
        Ok(Self::from_meta(path, &meta))
    }

    /// Stat an open file (the identity of what was actually opened).
    pub fn of_file(path: &Path, file: &File) -> std::io::Result<FileIdentity> {
        let meta = file.metadata()?;
        Ok(Self::from_meta(path, &meta))
    }

    fn from_meta(path: &Path, meta: &Metadata) -> FileIdentity {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        FileIdentity { path, size: meta.len(), mtime_ns: mtime_ns(meta) }
    }

    /// mtime as float seconds (Python's `os.stat().st_mtime`).
    pub fn mtime_secs(&self) -> f64 {
        self.mtime_ns as f64 / 1e9
    }

    /// A stable string for hashing: `path|size|mtime_ns`.
    pub fn fingerprint(&self) -> String {
        format!("{}|{}|{}", self.path.display(), self.size, self.mtime_ns)
    }

    /// True when the file on disk still has this identity.
    pub fn is_current(&self) -> bool {
        FileIdentity::of(&self.path).map(|now| now == *self).unwrap_or(false)
    }
}

/// `(mtime float seconds, size bytes)` of a file, `(0.0, 0)` when it cannot be stat'ed
/// (`docs/widen.md`, "Saving merged models").
pub fn file_stats(path: impl AsRef<Path>) -> (f64, u64) {
    match FileIdentity::of(path) {
        Ok(id) => (id.mtime_secs(), id.size),
        Err(_) => (0.0, 0),
    }
}
