//! Device memory that comfyrs holds outside ComfyUI (the WIDEN caches), given to ComfyUI when it
//! needs room: before ComfyUI offloads part of a model to make room for a load or a decode, it
//! asks the handler registered here for the missing bytes (docs/architecture.md, "Memory").
//! Offloading part of SDXL's UNet and loading it again costs a second or more per image on a
//! 12 GiB card; the caches only save a few tens of milliseconds at the next slider change.

use pyo3::prelude::*;

use crate::{Bridge, BridgeError};

/// What ComfyUI calls, as `handler(bytes) -> bytes given back`.
#[pyclass(frozen, name = "DeviceYield")]
struct DeviceYield {
    give: Box<dyn Fn(u64) -> u64 + Send + Sync>,
}

#[pymethods]
impl DeviceYield {
    fn __call__(&self, py: Python<'_>, bytes: u64) -> u64 {
        // Freeing device tensors needs no Python; other Python threads may run meanwhile.
        py.detach(|| (self.give)(bytes))
    }
}

impl Bridge {
    /// Has ComfyUI ask `give` for device memory before it offloads a model to make room: `give`
    /// frees up to the bytes asked for and returns how many it freed. A later call replaces the
    /// handler (one interpreter per process; the last engine to start owns it).
    pub fn on_device_pressure(&self, give: impl Fn(u64) -> u64 + Send + Sync + 'static) -> Result<(), BridgeError> {
        let handler = DeviceYield { give: Box::new(give) };
        let shared = self.shared().clone();
        self.with_python(move |py| {
            Py::new(py, handler)
                .and_then(|h| shared.host(py).call_method1("set_device_yield", (h,)).map(drop))
                .map_err(|e| BridgeError::Python(crate::format_py_err(py, &e)))
        })?
    }
}
