//! A ComfyUI node class seen through the runtime's [`NodeClass`] contract.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use indexmap::IndexMap;
use serde_json::{Map, Value as Json};

use comfyrs_runtime::expansion::{ExpandedNode, Expansion, ResultPart};
use comfyrs_runtime::node::{Args, CallOutput, ExecContext, Fingerprint, NodeClass, NodeError, Placement};
use comfyrs_runtime::prompt::{Input, Link};
use comfyrs_runtime::schema::{InputKind, NodeSchema, Section};

use crate::convert::{json_to_py, py_to_value, value_to_py};
use crate::{interp, RecordError, Shared};

/// Schemas are re-read from Python (file lists change on disk) at most this often.
const SCHEMA_TTL: Duration = Duration::from_secs(2);

/// What `node_info` tells beyond the `/object_info` record.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flags {
    pub has_fingerprint: bool,
    pub has_validate: bool,
    pub has_lazy: bool,
    pub v3: bool,
    /// The arguments VALIDATE_INPUTS takes (those inputs skip the built-in checks), and
    /// whether it takes any (`**kwargs`).
    pub validate_args: Vec<String>,
    pub validate_kwargs: bool,
}

impl Flags {
    /// ComfyUI's rule for which inputs a class's VALIDATE_INPUTS checks itself: the arguments
    /// it names; `**kwargs` covers every input, but link types are skipped only for a named
    /// `input_types`.
    pub(crate) fn validates(&self, name: &str) -> bool {
        let named = self.validate_args.iter().any(|a| a == name);
        self.has_validate && (named || (self.validate_kwargs && name != "input_types"))
    }
}

pub struct PyNode {
    name: String,
    shared: Arc<Shared>,
    schema: RwLock<(Instant, Arc<NodeSchema>)>,
    /// Why the last schema refresh failed, so that a lasting failure is warned about once.
    refresh_error: Mutex<Option<String>>,
    flags: Flags,
}

impl PyNode {
    pub(crate) fn new(name: String, shared: Arc<Shared>, schema: NodeSchema, flags: Flags) -> PyNode {
        PyNode { name, shared, schema: RwLock::new((Instant::now(), Arc::new(schema))), refresh_error: Mutex::new(None), flags }
    }

    /// The ComfyUI class name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the class is a V3 schema node (`comfy_api`).
    pub fn is_v3(&self) -> bool {
        self.flags.v3
    }

    /// The schema read again from Python; `None` (the old schema stays) if that failed, with a
    /// warning the first time a given failure is seen.
    fn refresh_schema(&self) -> Option<NodeSchema> {
        let read = Python::attach(|py| -> Result<NodeSchema, RecordError> {
            let record = self.shared.host(py).call_method1("node_record", (&self.name,)).and_then(|r| r.extract::<String>());
            let text = record.map_err(|e| RecordError::Raised(e.to_string()))?;
            parse_record(&text).map(|(schema, _)| schema)
        });
        let mut last = self.refresh_error.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(schema) => {
                *last = None;
                Some(schema)
            }
            Err(e) => {
                let e = e.to_string();
                if last.as_deref() != Some(e.as_str()) {
                    tracing::warn!(class = %self.name, "the schema of node class {} could not be re-read, so its previous one is kept: {e}", self.name);
                    *last = Some(e);
                }
                None
            }
        }
    }

    /// Hidden inputs of the class as {name: (token, value)}.
    fn hidden<'py>(&self, py: Python<'py>, schema: &NodeSchema, ctx: &ExecContext<'_>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        // Hidden inputs of other types are ordinary inputs the prompt fills (`args`).
        for spec in schema.inputs.iter().filter(|i| i.section == Section::Hidden && i.is_supplied_hidden()) {
            let InputKind::Hidden(token) = &spec.kind else { continue };
            let value = match token.as_str() {
                "PROMPT" => json_to_py(py, ctx.prompt)?,
                "EXTRA_PNGINFO" => match ctx.extra_pnginfo {
                    Some(j) => json_to_py(py, j)?,
                    None => py.None().into_bound(py),
                },
                "UNIQUE_ID" => ctx.node_id.into_pyobject(py)?.into_any(),
                "AUTH_TOKEN_COMFY_ORG" | "API_KEY_COMFY_ORG" | "COMFY_USAGE_SOURCE" => {
                    match ctx.extra_data.and_then(|e| e.get(token.to_ascii_lowercase())) {
                        Some(j) => json_to_py(py, j)?,
                        None => py.None().into_bound(py),
                    }
                }
                _ => py.None().into_bound(py),
            };
            d.set_item(&spec.name, PyTuple::new(py, [token.into_pyobject(py)?.into_any(), value])?)?;
        }
        Ok(d)
    }

    fn prompt_py<'py>(&self, py: Python<'py>, schema: &NodeSchema, ctx: &ExecContext<'_>) -> PyResult<Bound<'py, PyAny>> {
        // The prompt is converted only for classes that read it (hidden PROMPT or DYNPROMPT).
        let wants = schema.inputs.iter().any(|i| matches!(&i.kind, InputKind::Hidden(t) if t == "PROMPT" || t == "DYNPROMPT"));
        if wants {
            json_to_py(py, ctx.prompt)
        } else {
            Ok(py.None().into_bound(py))
        }
    }

    /// Runs `f` on the Python thread, forwarding comfyrs's interrupt to ComfyUI's flag while the
    /// call runs.
    fn on_python_thread<'a, R: Send + 'a>(
        &self,
        ctx: &ExecContext<'_>,
        f: impl FnOnce(Python<'_>) -> R + Send + 'a,
    ) -> Result<R, NodeError> {
        let mut forwarded = false;
        let interrupt = ctx.interrupt.clone();
        // Only while this call is the one running (not while it waits behind another call):
        // ComfyUI's interrupt flag is process-wide.
        let running = AtomicBool::new(false);
        let running_ref = &running;
        let job = move |py: Python<'_>| {
            running_ref.store(true, Ordering::SeqCst);
            let r = f(py);
            running_ref.store(false, Ordering::SeqCst);
            r
        };
        self.shared
            .thread
            .run(job, || {
                if !forwarded && running.load(Ordering::SeqCst) && interrupt.is_set() {
                    forwarded = true;
                    let set = Python::attach(|py| self.shared.host(py).call_method1("set_interrupt", (true,)).map(|_| ()));
                    if let Err(e) = set {
                        tracing::warn!(class = %self.name, node = ctx.node_id, "the interrupt could not be passed to ComfyUI, so node {} ({}) runs to its end: {e}", ctx.node_id, self.name);
                    }
                }
            })
            .map_err(|e| NodeError::msg(e.to_string()))
    }

    fn constants_py<'py>(&self, py: Python<'py>, args: &Args) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, vals) in &args.values {
            let l = PyList::empty(py);
            for v in vals {
                l.append(value_to_py(py, &self.shared, v)?)?;
            }
            d.set_item(k, l)?;
        }
        Ok(d)
    }

    fn required_links(&self, schema: &NodeSchema, args: &Args) -> Vec<String> {
        schema
            .inputs
            .iter()
            .filter(|i| i.section == Section::Required && !args.values.contains_key(&i.name))
            .map(|i| i.name.clone())
            .collect()
    }
}

/// Parses a record from the host: the schema plus the flags under `__comfyrs__` (absent flags
/// are false).
pub(crate) fn parse_record(text: &str) -> Result<(NodeSchema, Flags), RecordError> {
    let mut rec: Json = serde_json::from_str(text).map_err(|e| RecordError::Json(e.to_string()))?;
    let extra = rec.as_object_mut().and_then(|o| o.remove("__comfyrs__")).unwrap_or(Json::Null);
    let mut schema = NodeSchema::from_object_info(&rec).map_err(RecordError::Schema)?;
    let b = |k: &str| extra.get(k).and_then(Json::as_bool).unwrap_or(false);
    schema.not_idempotent = b("not_idempotent");
    if let Some(a) = rec.get("search_aliases").and_then(Json::as_array) {
        schema.search_aliases = a.iter().filter_map(|s| s.as_str().map(String::from)).collect();
    }
    let validate_args = extra.get("validate_args").and_then(Json::as_array).map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default();
    let flags = Flags {
        has_fingerprint: b("has_fingerprint"),
        has_validate: b("has_validate"),
        has_lazy: b("has_lazy"),
        v3: b("v3"),
        validate_args,
        validate_kwargs: b("validate_kwargs"),
    };
    Ok((schema, flags))
}

/// How long one poll of a running async call may hold the Python thread (other calls queue
/// behind it meanwhile).
const ASYNC_SLICE: Duration = Duration::from_millis(10);

/// Where a call stands after the host answered.
enum Step {
    Done(Result<CallOutput, NodeError>),
    /// An async call still running, by its token in the host.
    Pending(u64),
}

/// Reads what the host's `call` or `poll` returned: `("ok", outputs, ui_json, seconds)`,
/// `("expand", calls, ui_json, seconds)`, `("pending", token)` or an error tuple.
fn read_step(host: &Bound<'_, PyAny>, r: &Bound<'_, PyAny>, types: &[String], name: &str, ctx: &ExecContext<'_>) -> PyResult<Step> {
    let py = r.py();
    let t = r.cast::<PyTuple>().map_err(PyErr::from)?;
    let status: String = t.get_item(0)?.extract()?;
    match status.as_str() {
        "ok" | "expand" => {}
        "pending" => return Ok(Step::Pending(t.get_item(1)?.extract()?)),
        _ => return Ok(Step::Done(Err(node_error(t)?))),
    }
    let sizer = host.getattr(pyo3::intern!(py, "byte_size"))?;
    let mut slots: Vec<Vec<comfyrs_runtime::Value>> = Vec::new();
    let mut expansion = None;
    if status == "expand" {
        expansion = Some(read_expansion(&t.get_item(1)?, types, &sizer)?);
    } else {
        for (i, slot) in t.get_item(1)?.try_iter()?.enumerate() {
            let slot = slot?;
            let ty = types.get(i).map(String::as_str).unwrap_or("*");
            let mut vals = Vec::new();
            for item in slot.try_iter()? {
                vals.push(py_to_value(&item?, ty, &sizer)?);
            }
            slots.push(vals);
        }
        // A node that returned nothing for its declared outputs (an output node returning only
        // UI) still has its slots.
        if slots.is_empty() && !types.is_empty() {
            slots = vec![Vec::new(); types.len()];
        }
    }
    let ui_text: Option<String> = t.get_item(2)?.extract()?;
    let ui = match ui_text.map(|s| serde_json::from_str::<Json>(&s)) {
        None => None,
        Some(Ok(Json::Object(m))) => Some(m),
        // The host sends a dict's JSON; anything else is a bug of the bridge, and losing the UI
        // should not fail a node that ran.
        Some(other) => {
            tracing::warn!(class = %name, node = ctx.node_id, "the UI output of node {} ({name}) was dropped: the bridge sent {other:?}", ctx.node_id);
            None
        }
    };
    Ok(Step::Done(Ok(CallOutput { outputs: slots, ui: ui.filter(|m: &Map<String, Json>| !m.is_empty()), expansion })))
}

/// A node expansion as the host hands it over (`_expansion` in comfyrs_host.py): per call,
/// the graph's nodes or None, and per output slot a link or values.
fn read_expansion(calls: &Bound<'_, PyAny>, types: &[String], sizer: &Bound<'_, PyAny>) -> PyResult<Expansion> {
    let mut all = Expansion::default();
    for call in calls.try_iter()? {
        let call = call?;
        let mut one = Expansion::default();
        let nodes = call.get_item(0)?;
        if !nodes.is_none() {
            for node in nodes.try_iter()? {
                let node = node?;
                let id: String = node.get_item(0)?.extract()?;
                let mut inputs = IndexMap::new();
                for input in node.get_item(3)?.try_iter()? {
                    let input = input?;
                    let name: String = input.get_item(0)?.extract()?;
                    let value = if input.get_item(1)?.extract::<bool>()? {
                        Input::Link(Link { node: input.get_item(2)?.extract()?, slot: input.get_item(3)?.extract()? })
                    } else {
                        Input::Const(py_to_value(&input.get_item(2)?, "*", sizer)?)
                    };
                    inputs.insert(name, value);
                }
                let node = ExpandedNode { class_type: node.get_item(1)?.extract()?, inputs, display_id: node.get_item(2)?.extract()? };
                one.nodes.insert(id, node);
            }
        }
        for (i, slot) in call.get_item(1)?.try_iter()?.enumerate() {
            let slot = slot?;
            let kind: String = slot.get_item(0)?.extract()?;
            let part = if kind == "link" {
                ResultPart::Link(Link { node: slot.get_item(1)?.extract()?, slot: slot.get_item(2)?.extract()? })
            } else {
                let ty = types.get(i).map(String::as_str).unwrap_or("*");
                let mut vals = Vec::new();
                for item in slot.get_item(1)?.try_iter()? {
                    vals.push(py_to_value(&item?, ty, sizer)?);
                }
                ResultPart::Values(vals)
            };
            one.result.push(vec![part]);
        }
        all.push_call(Vec::new(), Some(one), types.len()).map_err(pyo3::exceptions::PyValueError::new_err)?;
    }
    Ok(all)
}

/// Maps a Python error tuple `("error", is_interrupt, message, type, traceback)`.
fn node_error(t: &Bound<'_, PyTuple>) -> PyResult<NodeError> {
    let interrupt: bool = t.get_item(1)?.extract()?;
    if interrupt {
        return Ok(NodeError::Interrupted);
    }
    Ok(NodeError::Failed { message: t.get_item(2)?.extract()?, exception_type: t.get_item(3)?.extract()?, traceback: t.get_item(4)?.extract()? })
}

fn py_err(py: Python<'_>, e: PyErr) -> NodeError {
    let tb = e
        .traceback(py)
        .and_then(|tb| tb.format().ok())
        .map(|s| s.lines().map(|l| format!("{l}\n")).collect())
        .unwrap_or_default();
    NodeError::Failed {
        message: e.value(py).to_string(),
        exception_type: e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into()),
        traceback: tb,
    }
}

impl NodeClass for PyNode {
    fn schema(&self) -> Arc<NodeSchema> {
        {
            let g = self.schema.read().unwrap_or_else(|p| p.into_inner());
            if g.0.elapsed() < SCHEMA_TTL {
                return g.1.clone();
            }
        }
        let fresh = self.refresh_schema();
        let mut g = self.schema.write().unwrap_or_else(|p| p.into_inner());
        g.0 = Instant::now();
        if let Some(s) = fresh {
            if *g.1 != s {
                g.1 = Arc::new(s);
            }
        }
        g.1.clone()
    }

    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let schema = self.schema.read().unwrap_or_else(|p| p.into_inner()).1.clone();
        let types: Vec<String> = schema.outputs.iter().map(|o| o.ty.clone()).collect();
        let name = &self.name;
        let mut step = self.on_python_thread(ctx, |py| -> Step {
            let run = || -> PyResult<Step> {
                let host = self.shared.host(py);
                let inputs = self.constants_py(py, args)?;
                // A required lazy input that check_lazy_status did not ask for was never
                // evaluated; ComfyUI passes it as None (its functions take it positionally).
                for i in schema.inputs.iter().filter(|i| i.lazy && i.section == Section::Required && !args.values.contains_key(&i.name)) {
                    inputs.set_item(&i.name, PyList::new(py, [py.None()])?)?;
                }
                let hidden = self.hidden(py, &schema, ctx)?;
                let prompt = self.prompt_py(py, &schema, ctx)?;
                let out_dir = ctx.output_dir.to_str().filter(|s| !s.is_empty());
                // V3 classes take the credentials from here (their hidden inputs are not in
                // the record's hidden section).
                let extra_data = match ctx.extra_data {
                    Some(j) => json_to_py(py, j)?,
                    None => py.None().into_bound(py),
                };
                let r = host.getattr(pyo3::intern!(py, "call"))?.call1((
                    name,
                    ctx.node_id,
                    ctx.prompt_id,
                    inputs,
                    hidden,
                    prompt,
                    out_dir,
                    ctx.interrupt.is_set(),
                    ctx.call_index,
                    extra_data,
                ))?;
                read_step(host, &r, &types, name, ctx)
            };
            interp::in_call(ctx, || run().unwrap_or_else(|e| Step::Done(Err(py_err(py, e)))))
        })?;
        // An async call still running: its tasks advance in the Python thread's event loop
        // while other calls run there; this worker polls it in short slices (docs/architecture.md,
        // "The Python bridge").
        loop {
            let token = match step {
                Step::Done(r) => return r,
                Step::Pending(token) => token,
            };
            if ctx.interrupt.is_set() {
                let _ = self.on_python_thread(ctx, |py| self.shared.host(py).call_method1("cancel", (token,)).map(|_| ()));
                return Err(NodeError::Interrupted);
            }
            step = self.on_python_thread(ctx, |py| -> Step {
                let run = || -> PyResult<Step> {
                    let host = self.shared.host(py);
                    let r = host.call_method1("poll", (token, ASYNC_SLICE.as_secs_f64(), ctx.interrupt.is_set()))?;
                    read_step(host, &r, &types, name, ctx)
                };
                interp::in_call(ctx, || run().unwrap_or_else(|e| Step::Done(Err(py_err(py, e)))))
            })?;
        }
    }

    fn fingerprint(&self, node_id: &str, constants: &Args) -> Option<Fingerprint> {
        if !self.flags.has_fingerprint {
            return None;
        }
        let schema = self.schema.read().unwrap_or_else(|p| p.into_inner()).1.clone();
        let links = self.required_links(&schema, constants);
        let r = Python::attach(|py| -> PyResult<Option<String>> {
            let d = self.constants_py(py, constants)?;
            self.shared.host(py).call_method1("fingerprint", (&self.name, d, links, node_id))?.extract()
        });
        // A failing IS_CHANGED makes the node "always changed", as in ComfyUI, which also only
        // warns.
        match r {
            Ok(None) => None,
            Ok(Some(s)) if s == "always" => Some(Fingerprint::Always),
            Ok(Some(s)) => match serde_json::from_str(&s) {
                Ok(j) => Some(Fingerprint::Value(j)),
                Err(e) => {
                    tracing::warn!(class = %self.name, "the IS_CHANGED result of node class {} could not be read, so it runs every time: {e}", self.name);
                    Some(Fingerprint::Always)
                }
            },
            Err(e) => {
                tracing::warn!(class = %self.name, "IS_CHANGED of node class {} failed, so it runs every time: {e}", self.name);
                Some(Fingerprint::Always)
            }
        }
    }

    fn check_lazy_status(&self, ctx: &ExecContext, args: &Args) -> Result<Vec<String>, NodeError> {
        if !self.flags.has_lazy {
            return Ok(Vec::new());
        }
        let schema = self.schema.read().unwrap_or_else(|p| p.into_inner()).1.clone();
        let lazy: Vec<String> = schema.inputs.iter().filter(|i| i.lazy && !args.values.contains_key(&i.name)).map(|i| i.name.clone()).collect();
        let name = &self.name;
        self.on_python_thread(ctx, |py| -> Result<Vec<String>, NodeError> {
            let run = || -> PyResult<Result<Vec<String>, NodeError>> {
                let host = self.shared.host(py);
                let inputs = self.constants_py(py, args)?;
                let hidden = self.hidden(py, &schema, ctx)?;
                let prompt = self.prompt_py(py, &schema, ctx)?;
                let extra = match ctx.extra_pnginfo {
                    Some(j) => json_to_py(py, j)?,
                    None => py.None().into_bound(py),
                };
                let r = host.getattr("check_lazy")?.call1((name, ctx.node_id, ctx.prompt_id, inputs, lazy, hidden, prompt, extra))?;
                let t = r.cast::<PyTuple>().map_err(PyErr::from)?;
                let status: String = t.get_item(0)?.extract()?;
                if status != "ok" {
                    return Ok(Err(node_error(t)?));
                }
                Ok(Ok(t.get_item(1)?.extract()?))
            };
            interp::in_call(ctx, || match run() {
                Ok(r) => r,
                Err(e) => Err(py_err(py, e)),
            })
        })?
    }

    fn validates_input(&self, name: &str) -> bool {
        self.flags.validates(name)
    }

    fn validate_inputs(&self, constants: &Args, received_types: &[(String, String)]) -> Result<Vec<(String, String)>, NodeError> {
        if !self.flags.has_validate {
            return Ok(Vec::new());
        }
        let schema = self.schema.read().unwrap_or_else(|p| p.into_inner()).1.clone();
        let links = self.required_links(&schema, constants);
        Python::attach(|py| -> Result<Vec<(String, String)>, NodeError> {
            let run = || -> PyResult<Result<Vec<(String, String)>, NodeError>> {
                let d = self.constants_py(py, constants)?;
                let types = pyo3::types::PyDict::new(py);
                for (k, t) in received_types {
                    types.set_item(k, t)?;
                }
                let r = self.shared.host(py).call_method1("validate", (&self.name, d, links, types))?;
                if let Ok(t) = r.cast::<PyTuple>() {
                    if t.len() == 4 && t.get_item(0)?.extract::<String>().is_ok_and(|s| s == "raised") {
                        return Ok(Err(NodeError::Failed {
                            message: t.get_item(1)?.extract()?,
                            exception_type: t.get_item(2)?.extract()?,
                            traceback: t.get_item(3)?.extract()?,
                        }));
                    }
                }
                Ok(Ok(r.extract()?))
            };
            run().unwrap_or_else(|e| Err(py_err(py, e)))
        })
    }

    /// Python nodes run on worker threads (which hand the call to the Python thread), so the
    /// scheduler keeps dispatching native nodes while a sampler runs.
    fn placement(&self) -> Placement {
        Placement::Worker
    }
}
