//! A worker's output files, to the server (docs/scale-out.md, "Outputs"): a node's UI names the
//! files it wrote (`{"images": [{"filename", "subfolder", "type"}]}`); the worker uploads each
//! to the server, which keeps it under that name unless another file has it, and reports the
//! server's names in its messages and its history entry, so `/view` serves what a client is
//! told about.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Mutex;

use lru::LruCache;
use serde_json::Value as Json;

/// (type, subfolder, the worker's file name).
type FileRef = (String, String, String);

pub(crate) struct Uploads {
    server: String,
    token: Option<String>,
    output_dir: PathBuf,
    temp_dir: PathBuf,
    /// Files already on the server, and their names there: a cached output node replays the
    /// UI of an earlier prompt, naming files uploaded then. Held across an upload, so the
    /// messages and the history entry of a prompt never upload a file twice.
    names: Mutex<LruCache<FileRef, String>>,
    /// One HTTP client for every request to the server, uploads and outcome reports: its
    /// connections stay open between prompts.
    agent: ureq::Agent,
}

/// Files remembered as uploaded.
const REMEMBERED: usize = 16_384;

impl Uploads {
    pub fn new(server: &str, token: Option<String>, output_dir: PathBuf, temp_dir: PathBuf) -> Uploads {
        let names = Mutex::new(LruCache::new(NonZeroUsize::new(REMEMBERED).expect("not zero")));
        Uploads { server: server.trim_end_matches('/').to_string(), token, output_dir, temp_dir, names, agent: ureq::Agent::new_with_defaults() }
    }

    /// The HTTP client this worker talks to its server with.
    pub fn agent(&self) -> ureq::Agent {
        self.agent.clone()
    }

    /// Rewrites the file references of every node's UI in a history entry's `outputs`.
    pub fn rewrite_outputs(&self, prompt_id: &str, delivery: u64, outputs: &mut Json) {
        if let Some(nodes) = outputs.as_object_mut() {
            for ui in nodes.values_mut() {
                self.rewrite_ui(prompt_id, delivery, ui);
            }
        }
    }

    /// Rewrites the file references in one node's UI to the names the server keeps the files
    /// under, uploading those it does not have yet. A file that cannot be uploaded keeps its
    /// name (it stays on this worker's disk; the log says why). Blocking.
    pub fn rewrite_ui(&self, prompt_id: &str, delivery: u64, ui: &mut Json) {
        let Some(fields) = ui.as_object_mut() else { return };
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        for item in fields.values_mut().filter_map(Json::as_array_mut).flatten() {
            let Some(r) = file_ref(item) else { continue };
            let server_name = match names.get(&r) {
                Some(n) => n.clone(),
                None => match self.upload(prompt_id, delivery, &r) {
                    Ok(n) => {
                        names.put(r.clone(), n.clone());
                        n
                    }
                    Err(e) => {
                        tracing::warn!("cannot upload {} of prompt {prompt_id} to the server: {e}; it stays on this worker", r.2);
                        continue;
                    }
                },
            };
            item["filename"] = Json::String(server_name);
        }
    }

    fn upload(&self, prompt_id: &str, delivery: u64, (kind, subfolder, filename): &FileRef) -> Result<String, String> {
        let base = if kind == "temp" { &self.temp_dir } else { &self.output_dir };
        let path = base.join(subfolder).join(filename);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let url = format!("{}/internal/comfyrs/files", self.server);
        let mut req = self
            .agent
            .post(&url)
            .query("prompt_id", prompt_id)
            .query("delivery", delivery.to_string())
            .query("type", kind)
            .query("subfolder", subfolder)
            .query("filename", filename)
            .header("Content-Type", "application/octet-stream");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send(&bytes[..]).map_err(|e| format!("{url}: {e}"))?;
        let body: Json = serde_json::from_str(&resp.body_mut().read_to_string().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let name = body.get("filename").and_then(Json::as_str).ok_or_else(|| format!("{url} answered {body}"))?;
        if name != filename {
            tracing::debug!("{filename} of prompt {prompt_id} is {name} on the server (another file had its name)");
        }
        Ok(name.to_string())
    }
}

/// An output or temp file named in a UI.
fn file_ref(item: &Json) -> Option<FileRef> {
    let kind = item.get("type")?.as_str().filter(|k| *k == "output" || *k == "temp")?;
    let filename = item.get("filename")?.as_str().filter(|f| !f.is_empty() && !f.contains('/'))?;
    let subfolder = item.get("subfolder").and_then(Json::as_str).unwrap_or("");
    if subfolder.split('/').any(|p| p == "..") || subfolder.starts_with('/') {
        return None;
    }
    Some((kind.to_string(), subfolder.to_string(), filename.to_string()))
}
