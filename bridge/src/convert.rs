//! Values across the boundary: runtime [`Value`]s to Python objects and back, and
//! [`PyHandle`], the opaque handle a Python object lives in on the Rust side.

use std::any::Any;
use std::sync::{Arc, RwLock};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use serde_json::Value as Json;

use comfyrs_runtime::value::{Opaque, SharedBytes, Value};

use crate::Shared;

/// A Python object held by the runtime (a MODEL, a LATENT dict, an IMAGE tensor...). What it
/// holds is measured when the object crosses into Rust, for the byte-bounded cache: its tensor
/// storages and torch modules, each a [`SharedBytes`] unit named by its identity, so that a
/// module every clone of a MODEL holds is counted once (docs/architecture.md, "Memory").
/// Dropping a handle without the GIL is fine: pyo3 defers the decref to the next time any
/// thread holds the GIL.
pub struct PyHandle {
    obj: Py<PyAny>,
    type_name: String,
    /// Host memory only this object holds (tensors without a storage to name).
    bytes: usize,
    /// Device memory the object holds that no other value does (see [`PyHandle::sized`]).
    device_bytes: usize,
    /// Storages and modules it may share with other values.
    shared: Vec<SharedBytes>,
    py_type: String,
}

impl PyHandle {
    pub(crate) fn new(obj: Py<PyAny>, type_name: String, bytes: usize, shared: Vec<SharedBytes>, py_type: String) -> Self {
        PyHandle { obj, type_name, bytes, device_bytes: 0, shared, py_type }
    }

    /// A handle of `obj` sized by its maker instead of by walking it: `bytes` of host memory
    /// and `device_bytes` of device memory that it holds and no other value does, and `shared`,
    /// what it holds with the value it was made from. For a MODEL whose merged weights the Exit
    /// handed over: its merged tensors are its own, every other weight is the origin's; the
    /// outputs cache counts its own tensors where they are, so old clones give way on a small
    /// card. (Walking an SDXL MODEL's object graph to measure it took longer than the merge it
    /// followed.)
    pub(crate) fn sized(obj: &Bound<'_, PyAny>, type_name: &str, bytes: usize, device_bytes: usize, shared: Vec<SharedBytes>) -> PyResult<Value> {
        let py_type = obj.get_type().name()?.to_string();
        let type_name = type_name.to_string();
        Ok(Value::Handle(Arc::new(PyHandle { obj: obj.clone().unbind(), type_name, bytes, device_bytes, shared, py_type })))
    }

    /// The Python object (clone it with `clone_ref` under the GIL to keep it).
    pub fn object(&self) -> &Py<PyAny> {
        &self.obj
    }

    /// The Python class name of the object (`ModelPatcher`, `dict`, `Tensor`).
    pub fn python_type(&self) -> &str {
        &self.py_type
    }

    /// The object as a tch tensor sharing its storage (no copy), if it is a `torch.Tensor`.
    pub fn tensor(&self) -> PyResult<Option<tch::Tensor>> {
        Python::attach(|py| py_to_tensor(self.obj.bind(py)))
    }
}

impl Opaque for PyHandle {
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn byte_size(&self) -> usize {
        self.bytes
    }
    fn shared_bytes(&self) -> &[SharedBytes] {
        &self.shared
    }
    fn device_byte_size(&self) -> usize {
        self.device_bytes
    }
    fn describe(&self) -> String {
        let bytes = self.bytes + self.device_bytes + self.shared.iter().map(|s| s.bytes).sum::<usize>();
        format!("<{} {} ({bytes} bytes)>", self.type_name, self.py_type)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A `torch.Tensor` object to a tch tensor over the same storage; `None` for other objects.
pub fn py_to_tensor(obj: &Bound<'_, PyAny>) -> PyResult<Option<tch::Tensor>> {
    // SAFETY: `obj` is a live object and we hold the GIL (the `Bound`); torch is imported by the
    // bridge's boot (THPVariable_Check needs torch's type objects).
    let t = unsafe { tch::Tensor::pyobject_unpack(obj.as_ptr() as *mut tch::python::CPyObject) };
    t.map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot view a torch.Tensor from Rust: {e}")))
}

/// A tch tensor to a `torch.Tensor` object over the same storage.
pub fn tensor_to_py<'py>(py: Python<'py>, t: &tch::Tensor) -> PyResult<Bound<'py, PyAny>> {
    let p = t.pyobject_wrap().map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    // SAFETY: we hold the GIL (`py`); THPVariable_Wrap returns a new reference that we own, or
    // null with a Python error set.
    unsafe { Bound::from_owned_ptr_or_err(py, p as *mut pyo3::ffi::PyObject) }
}

/// A hook for native handles that Python nodes may consume: returns the tensor a native value
/// stands for (e.g. a native IMAGE), which then crosses as a `torch.Tensor` without a copy. See
/// [`Bridge::add_tensor_extractor`](crate::Bridge::add_tensor_extractor).
pub type TensorExtractor = fn(&dyn Opaque) -> Option<tch::Tensor>;

/// A hook for native MODEL and CLIP handles that Python nodes may consume: the ComfyUI type the
/// value stands for (`"MODEL"` or `"CLIP"`), its state dict (a UNet's keys without
/// `diffusion_model.`; a CLIP's `clip_l.…` and `clip_g.…` keys; tensors shared) and an identity of
/// those weights. The bridge builds the ComfyUI object from it with ComfyUI's own state-dict
/// loaders (kept per identity, so each is built once). See
/// [`Bridge::add_model_extractor`](crate::Bridge::add_model_extractor).
pub type ModelExtractor = fn(&dyn Opaque) -> Option<NativeWeights>;

/// What a [`ModelExtractor`] returns: ComfyUI type, state dict, identity.
pub type NativeWeights = (&'static str, indexmap::IndexMap<String, tch::Tensor>, [u8; 32]);

/// The extractors added to one bridge, tried in the order they were added.
#[derive(Default)]
pub(crate) struct Extractors {
    tensor: RwLock<Vec<TensorExtractor>>,
    model: RwLock<Vec<ModelExtractor>>,
}

impl Extractors {
    pub(crate) fn add_tensor(&self, f: TensorExtractor) {
        self.tensor.write().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    pub(crate) fn add_model(&self, f: ModelExtractor) {
        self.model.write().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    fn tensor(&self, h: &dyn Opaque) -> Option<tch::Tensor> {
        // Copied out so that no lock is held while an extractor runs.
        let fs = self.tensor.read().unwrap_or_else(|p| p.into_inner()).clone();
        fs.iter().find_map(|f| f(h))
    }

    fn model(&self, h: &dyn Opaque) -> Option<NativeWeights> {
        let fs = self.model.read().unwrap_or_else(|p| p.into_inner()).clone();
        fs.iter().find_map(|f| f(h))
    }
}

/// Keeps a native value (and the memory its tensors view) alive while Python holds a model
/// built from it.
#[pyclass(frozen)]
struct KeepAlive(#[allow(dead_code)] Arc<dyn Opaque>);

/// Names and tensors (shared, not copied) as two Python lists, for the host module's calls that
/// take a state dict.
pub fn named_tensors_to_py<'py, 'a>(
    py: Python<'py>,
    items: impl Iterator<Item = (&'a str, &'a tch::Tensor)>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let (keys, tensors) = (PyList::empty(py), PyList::empty(py));
    for (k, t) in items {
        keys.append(k)?;
        tensors.append(tensor_to_py(py, t)?)?;
    }
    Ok((keys, tensors))
}

fn native_model_to_py<'py>(py: Python<'py>, shared: &Shared, h: &Arc<dyn Opaque>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some((kind, sd, identity)) = shared.extractors.model(h.as_ref()) else { return Ok(None) };
    let (keys, tensors) = named_tensors_to_py(py, sd.iter().map(|(k, t)| (k.as_str(), t)))?;
    let hex: String = identity.iter().map(|b| format!("{b:02x}")).collect();
    let keep = Py::new(py, KeepAlive(h.clone()))?;
    Ok(Some(shared.host(py).call_method1("model_from_state_dict", (kind, keys, tensors, hex, keep))?))
}

/// A runtime value as a Python object: ints stay ints, floats floats, JSON becomes dicts and
/// lists, Python handles become their objects again, native handles go through `shared`'s
/// extractors.
pub(crate) fn value_to_py<'py>(py: Python<'py>, shared: &Shared, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Json(j) => json_to_py(py, j)?,
        Value::List(items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(value_to_py(py, shared, it)?)?;
            }
            l.into_any()
        }
        Value::None => py.None().into_bound(py),
        Value::Handle(h) => {
            if let Some(ph) = h.as_any().downcast_ref::<PyHandle>() {
                ph.obj.clone_ref(py).into_bound(py)
            } else {
                let tensor = shared.extractors.tensor(h.as_ref());
                let model = if tensor.is_none() { native_model_to_py(py, shared, h)? } else { None };
                match (tensor, model) {
                    (Some(t), _) => tensor_to_py(py, &t)?,
                    (None, Some(m)) => m,
                    (None, None) => {
                        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                            "a native {} value cannot be passed to a Python node (no conversion is registered for it)",
                            h.type_name()
                        )))
                    }
                }
            }
        }
    })
}

/// JSON to Python: integers stay ints, other numbers floats, objects dicts (in order).
pub fn json_to_py<'py>(py: Python<'py>, j: &Json) -> PyResult<Bound<'py, PyAny>> {
    Ok(match j {
        Json::Null => py.None().into_bound(py),
        Json::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Json::String(s) => PyString::new(py, s).into_any(),
        Json::Array(a) => {
            let l = PyList::empty(py);
            for it in a {
                l.append(json_to_py(py, it)?)?;
            }
            l.into_any()
        }
        Json::Object(m) => {
            let d = PyDict::new(py);
            for (k, v) in m {
                d.set_item(k, json_to_py(py, v)?)?;
            }
            d.into_any()
        }
    })
}

/// A Python result to a runtime value. Exact ints, floats, strings, bools and None become native
/// values (so native nodes can consume them); everything else is kept as a [`PyHandle`] of the
/// output's declared type, its byte size measured by `sizer`.
pub fn py_to_value(obj: &Bound<'_, PyAny>, type_name: &str, sizer: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::None);
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract::<bool>()?));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i128>() {
            return Ok(Value::Int(i));
        }
    } else if obj.is_exact_instance_of::<PyFloat>() {
        return Ok(Value::Float(obj.extract::<f64>()?));
    } else if obj.is_exact_instance_of::<PyString>() {
        return Ok(Value::String(obj.extract::<String>()?));
    }
    let py_type = obj.get_type().name()?.to_string();
    // ComfyUI's ExecutionBlocker becomes the runtime's, which stops every node that uses it
    // (Python or native) before it is called.
    if py_type == "ExecutionBlocker" {
        if let Ok(message) = obj.getattr(pyo3::intern!(obj.py(), "message")) {
            let message = if message.is_none() { None } else { Some(message.str()?.to_string()) };
            return Ok(comfyrs_runtime::blocker::ExecutionBlocker::value(message));
        }
    }
    let (bytes, units): (usize, Vec<(u64, usize)>) = sizer.call1((obj,))?.extract()?;
    let shared = units.into_iter().map(|(id, bytes)| SharedBytes { id, bytes }).collect();
    let ty = if type_name.is_empty() || type_name == "*" { py_type.clone() } else { type_name.to_string() };
    Ok(Value::Handle(Arc::new(PyHandle::new(obj.clone().unbind(), ty, bytes, shared, py_type))))
}

/// Wraps any Python object as a runtime value (see [`py_to_value`]), sized by `shared`'s host.
pub(crate) fn object_value_in(py: Python<'_>, shared: &Shared, obj: &Bound<'_, PyAny>, type_name: &str) -> PyResult<Value> {
    let sizer = shared.host(py).getattr(pyo3::intern!(py, "byte_size"))?;
    py_to_value(obj, type_name, &sizer)
}

/// [`Bridge::object_value`](crate::Bridge::object_value) of the bridge running in this process
/// (for code that holds no [`Bridge`](crate::Bridge), such as a native node).
pub fn object_value(py: Python<'_>, obj: &Bound<'_, PyAny>, type_name: &str) -> PyResult<Value> {
    let bridge = crate::Bridge::running()
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("the comfyrs bridge has not started"))?;
    bridge.object_value(py, obj, type_name)
}
