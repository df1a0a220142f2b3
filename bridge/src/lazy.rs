//! Python node classes known from the record cache before Python runs.
//!
//! A [`LazyNode`] answers schema questions from its cached record; the first call that needs
//! Python (execute, `check_lazy_status`, `IS_CHANGED`, `VALIDATE_INPUTS`, for classes that
//! have them) starts the embedded ComfyUI through the shared [`Launcher`], and from then on every
//! call goes to the started class's [`PyNode`], so behaviour and error messages are the bridge's
//! own (docs/architecture.md, "The record cache").

use std::sync::{Arc, OnceLock};

use comfyrs_runtime::node::{Args, CallOutput, ExecContext, Fingerprint, NodeClass, NodeError, Placement};
use comfyrs_runtime::schema::NodeSchema;
use comfyrs_runtime::Registry;

use crate::node::Flags;
use crate::records::CachedNodes;
use crate::{Bridge, PyNode, SchemaError};

type StartFn = Box<dyn Fn() -> Result<Bridge, String> + Send + Sync>;

/// Starts the bridge once, when the first lazy class needs it (or when asked, e.g. by a server
/// warming up in the background); every caller waits for that one start.
pub struct Launcher {
    start: StartFn,
    state: OnceLock<Result<Bridge, String>>,
}

impl Launcher {
    /// `start` boots the bridge (with the binary's extractors) and returns it, or says why not.
    pub fn new(start: impl Fn() -> Result<Bridge, String> + Send + Sync + 'static) -> Arc<Launcher> {
        Arc::new(Launcher { start: Box::new(start), state: OnceLock::new() })
    }

    /// The bridge, started now if it was not.
    pub fn get(&self) -> Result<&Bridge, &str> {
        self.state.get_or_init(|| (self.start)()).as_ref().map_err(String::as_str)
    }

    /// The bridge if it has started (never starts it).
    pub fn started(&self) -> Option<&Bridge> {
        self.state.get().and_then(|r| r.as_ref().ok())
    }
}

/// A Python class from the record cache; see the module docs.
pub struct LazyNode {
    name: String,
    schema: Arc<NodeSchema>,
    flags: Flags,
    launcher: Arc<Launcher>,
    /// The started class, looked up once (the bridge finds classes by a scan).
    resolved: OnceLock<Option<Arc<PyNode>>>,
}

impl LazyNode {
    /// The class in the started bridge (starting it if needed).
    fn real(&self) -> Result<Arc<PyNode>, String> {
        if let Some(Some(real)) = self.resolved.get() {
            return Ok(real.clone());
        }
        let bridge = self.launcher.get().map_err(|e| format!("cannot start the embedded Python ComfyUI for node class {}: {e}", self.name))?;
        self.resolved
            .get_or_init(|| bridge.class(&self.name))
            .clone()
            .ok_or_else(|| format!("node class {} was in the record cache but the embedded ComfyUI no longer provides it; run again (the cache was refreshed)", self.name))
    }

    /// The started class if Python runs (never starts it).
    fn started(&self) -> Option<Arc<PyNode>> {
        match self.resolved.get() {
            Some(r) => r.clone(),
            None => self.launcher.started().map(|b| self.resolved.get_or_init(|| b.class(&self.name)).clone())?,
        }
    }

    /// Whether this class has started its PyNode (tests, logs).
    pub fn is_started(&self) -> bool {
        self.launcher.started().is_some()
    }
}

impl NodeClass for LazyNode {
    fn schema(&self) -> Arc<NodeSchema> {
        // Once Python runs, the live schema (file lists re-read) replaces the cached one.
        match self.started() {
            Some(real) => real.schema(),
            None => self.schema.clone(),
        }
    }

    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        self.real().map_err(NodeError::msg)?.execute(ctx, args)
    }

    fn fingerprint(&self, node_id: &str, constants: &Args) -> Option<Fingerprint> {
        if !self.flags.has_fingerprint {
            return None;
        }
        match self.real() {
            Ok(real) => real.fingerprint(node_id, constants),
            Err(e) => {
                // As a failing IS_CHANGED: the node runs every time (and fails there, saying why).
                tracing::warn!(class = %self.name, "IS_CHANGED of node class {} could not run: {e}", self.name);
                Some(Fingerprint::Always)
            }
        }
    }

    fn check_lazy_status(&self, ctx: &ExecContext, args: &Args) -> Result<Vec<String>, NodeError> {
        if !self.flags.has_lazy {
            return Ok(Vec::new());
        }
        self.real().map_err(NodeError::msg)?.check_lazy_status(ctx, args)
    }

    fn validates_input(&self, name: &str) -> bool {
        self.flags.validates(name)
    }

    fn validate_inputs(&self, constants: &Args, received_types: &[(String, String)]) -> Result<Vec<(String, String)>, NodeError> {
        // A class with VALIDATE_INPUTS needs Python to validate: it starts here.
        if !self.flags.has_validate {
            return Ok(Vec::new());
        }
        match self.real() {
            Ok(real) => real.validate_inputs(constants, received_types),
            Err(e) => Err(NodeError::msg(format!("VALIDATE_INPUTS could not run: {e}"))),
        }
    }

    fn placement(&self) -> Placement {
        Placement::Worker
    }
}

/// Registers every cached class not registered yet as a [`LazyNode`] started by `launcher`,
/// and records the classes whose schema failed and the packs that failed to import, as
/// [`Bridge::register`] does. Returns how many classes were added.
pub fn register_cached(cached: &CachedNodes, launcher: &Arc<Launcher>, registry: &mut Registry) -> usize {
    let mut added = 0;
    for r in &cached.records {
        match r.read() {
            Ok((schema, flags)) => {
                let node = LazyNode { name: r.class.clone(), schema: Arc::new(schema), flags, launcher: launcher.clone(), resolved: OnceLock::new() };
                added += registry.register(Arc::new(node)) as usize;
            }
            Err(reason) => {
                let e = SchemaError { class: r.class.clone(), reason };
                tracing::warn!(class = %e.class, "node class {} was skipped: {}", e.class, e.reason);
                registry.mark_unavailable(&e.class, e.reason.to_string());
            }
        }
    }
    for f in cached.failures.iter().filter(|f| f.custom) {
        let pack = std::path::Path::new(&f.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| f.path.clone());
        registry.note_failed_pack(pack, f.error.lines().last().unwrap_or("").trim());
    }
    added
}
