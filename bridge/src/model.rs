//! The MODEL and CLIP handoff: a ComfyUI MODEL's diffusion weights, or a CLIP's SDXL text
//! encoders, as tch tensors (shared, no copy), and a clone of it with merged weights installed as
//! patches. Plain functions, so the crate that
//! links both the bridge and the WIDEN pack wires them:
//!
//! ```ignore
//! comfyrs_nodes::pack::set_foreign_models(std::sync::Arc::new(comfyrs_nodes::pack::ForeignFns {
//!     state_dict: comfyrs_bridge::model::state_dict,
//!     prepare: comfyrs_bridge::model::prepare,
//!     with_weights: comfyrs_bridge::model::with_weights,
//!     make_room: comfyrs_bridge::model::make_room,
//!     unload_idle: comfyrs_bridge::model::unload_idle,
//!     device_free: comfyrs_bridge::model::device_free,
//! }));
//! ```
//!
//! They take no [`Bridge`] (the pack's hooks are plain functions): a Python MODEL can only come
//! from the bridge running in this process, which they reach through [`Bridge::running`]. Every
//! call runs on the bridge's Python thread (ComfyUI's model management is not thread-safe).

use indexmap::IndexMap;
use pyo3::prelude::*;
use pyo3::types::PyModule;

use comfyrs_runtime::Value;

use crate::convert::{named_tensors_to_py, py_to_tensor, PyHandle};
use crate::{format_py_err, Bridge, BridgeError};

/// A Python MODEL's or CLIP's weights: its ComfyUI type (`"MODEL"` or `"CLIP"`), the tensors
/// by ComfyUI's keys (`diffusion_model.…`; `clip_l.…` and `clip_g.…`), their identity and a name.
pub type Weights = (&'static str, IndexMap<String, tch::Tensor>, [u8; 32], String);

fn python_model(v: &Value) -> Option<(Bridge, Value)> {
    let Value::Handle(h) = v else { return None };
    h.as_any().downcast_ref::<PyHandle>()?;
    Some((Bridge::running()?, v.clone()))
}

/// Runs `f` on the Python thread with the bridge's host module and the object of `v` (a Python
/// handle: checked by [`python_model`]).
fn with_object<R: Send>(
    bridge: &Bridge,
    v: Value,
    f: impl FnOnce(Python<'_>, &Bound<'_, PyModule>, &Bound<'_, PyAny>) -> PyResult<R> + Send,
) -> Result<R, BridgeError> {
    let shared = bridge.shared();
    bridge.with_python(move |py| {
        let Value::Handle(h) = &v else { unreachable!("checked") };
        let ph = h.as_any().downcast_ref::<PyHandle>().expect("checked");
        let obj = ph.object().bind(py).clone();
        f(py, shared.host(py), &obj).map_err(|e| BridgeError::Python(format_py_err(py, &e)))
    })?
}

/// Runs `f` on the Python thread with the bridge's host module.
fn with_host<R: Send>(bridge: &Bridge, f: impl FnOnce(&Bound<'_, PyModule>) -> PyResult<R> + Send) -> Result<R, BridgeError> {
    let shared = bridge.shared();
    bridge.with_python(move |py| f(shared.host(py)).map_err(|e| BridgeError::Python(format_py_err(py, &e))))?
}

/// The weights of a Python MODEL (a ModelPatcher over a diffusion model: its UNet) or CLIP (its
/// SDXL text encoders) as tensors over the same storage. `None` when `v` is neither. Weights the
/// patcher has patches for are computed (those alone are copies).
pub fn state_dict(v: &Value) -> Option<Result<Weights, String>> {
    let (bridge, v) = python_model(v)?;
    let r = with_object(&bridge, v, |_py, host, obj| -> PyResult<Option<Weights>> {
        let r = host.call_method1("model_weights", (obj,))?;
        if r.is_none() {
            return Ok(None);
        }
        let (kind, keys, tensors, ident, name): (String, Vec<String>, Vec<Bound<'_, PyAny>>, String, String) = r.extract()?;
        let kind = if kind == "CLIP" { "CLIP" } else { "MODEL" };
        let mut map = IndexMap::with_capacity(keys.len());
        for (k, t) in keys.into_iter().zip(tensors) {
            let t = py_to_tensor(&t)?.ok_or_else(|| pyo3::exceptions::PyTypeError::new_err(format!("{k} is not a tensor")))?;
            map.insert(k, t);
        }
        let mut h = blake3::Hasher::new();
        h.update(b"comfyui-model");
        h.update(ident.as_bytes());
        Ok(Some((kind, map, *h.finalize().as_bytes(), name)))
    });
    match r {
        Ok(None) => None,
        Ok(Some(w)) => Some(Ok(w)),
        Err(e) => Some(Err(e.to_string())),
    }
}

/// Before weights read by [`state_dict`] are used again: unloads the model's loaded clones,
/// so that weights a clone patched in place are restored.
pub fn prepare(v: &Value) -> Result<(), String> {
    let Some((bridge, v)) = python_model(v) else { return Ok(()) };
    with_object(&bridge, v, |_py, host, obj| host.call_method1("model_prepare", (obj,)).map(|_| ())).map_err(|e| e.to_string())
}

/// A clone of the Python MODEL or CLIP `v` with `merged` (its keys, CPU tensors, shared with
/// Python, not copied) installed as patches replacing those weights ("set" patches where this
/// ComfyUI has them; else "diff" patches with strength_model 0, which do the same).
pub fn with_weights(v: &Value, merged: &IndexMap<String, tch::Tensor>) -> Result<Value, String> {
    let (bridge, v) = python_model(v).ok_or_else(|| "the MODEL is not a Python object".to_string())?;
    // The clone is of the origin's type (a MODEL or a CLIP).
    let kind = match &v {
        Value::Handle(h) => h.type_name().to_string(),
        _ => unreachable!("python_model accepts handles only"),
    };
    let merged: Vec<(String, tch::Tensor)> = merged.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    // Everything but the merged tensors the clone shares with its origin.
    let shared = match &v {
        Value::Handle(h) => h.shared_bytes().to_vec(),
        _ => Vec::new(),
    };
    let clone = with_object(&bridge, v, move |py, host, obj| {
        let (keys, tensors) = named_tensors_to_py(py, merged.iter().map(|(k, t)| (k.as_str(), t)))?;
        let m = host.call_method1("model_with_weights", (obj, keys, tensors))?;
        // The merged tensors are all the clone holds of its own (docs/architecture.md, "Memory"),
        // on a GPU whether they came there or were copied there: the outputs cache counts them
        // where they are, so old clones give way on a small card.
        let host_bytes: usize = m.getattr(pyo3::intern!(py, "_comfyrs_host_bytes"))?.extract()?;
        let device_bytes: usize = m.getattr(pyo3::intern!(py, "_comfyrs_device_bytes"))?.extract()?;
        PyHandle::sized(&m, &kind, host_bytes, device_bytes, shared)
    })
    .map_err(|e| e.to_string())?;
    Ok(clone)
}

/// Has ComfyUI offload models it is not using until about `bytes` more device memory are free
/// (its own `free_memory`), for a merge over `origin` that ran out of device memory while
/// ComfyUI's models held it (docs/architecture.md, "Memory"); comfyrs's caches give first, as
/// they do for any room ComfyUI makes. Returns the bytes that came free. The models sharing
/// `origin`'s weights stay loaded: the merge reads its base from them, and the sampler takes its
/// result from them next. 0 without a running bridge or a GPU.
pub fn make_room(origin: Option<&Value>, bytes: u64) -> u64 {
    ask_room(origin, bytes, true)
}

/// [`make_room`] from ComfyUI's models alone, for a merge sizing its chunks before it starts: the
/// caches keep what the merge is about to read.
pub fn unload_idle(origin: Option<&Value>, bytes: u64) -> u64 {
    ask_room(origin, bytes, false)
}

fn ask_room(origin: Option<&Value>, bytes: u64, caches: bool) -> u64 {
    let ask = move |host: &Bound<'_, PyModule>, obj: Option<&Bound<'_, PyAny>>| host.call_method1("make_room", (bytes, obj, caches))?.extract::<u64>();
    let freed = match origin.and_then(python_model) {
        Some((bridge, v)) => with_object(&bridge, v, |_py, host, obj| ask(host, Some(obj))),
        None => {
            let Some(bridge) = Bridge::running() else { return 0 };
            with_host(&bridge, |host| ask(host, None))
        }
    };
    freed.unwrap_or_else(|e| {
        tracing::debug!("device memory: asking ComfyUI to make room failed: {e}");
        0
    })
}

/// The memory free on `device` for a merge's chunks as ComfyUI counts it (under a device memory
/// limit, the limit less what the process's tensors hold), or None without a running bridge,
/// off the GPU, or on another GPU than ComfyUI's: a merge sizes its chunks by it, beside the
/// models ComfyUI keeps loaded (docs/architecture.md, "Memory").
pub fn device_free(device: tch::Device) -> Option<u64> {
    let tch::Device::Cuda(index) = device else { return None };
    let bridge = Bridge::running()?;
    with_host(&bridge, |host| host.call_method1("device_free", (index,))?.extract::<Option<u64>>()).unwrap_or_else(|e| {
        tracing::debug!("device memory: asking ComfyUI what is free failed: {e}");
        None
    })
}
