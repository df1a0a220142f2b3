//! `comfyrs bench bridge`: what the bridge itself costs.
//!
//! - Start: interpreter start, `import torch`, ComfyUI's import, node loading and schemas, from
//!   the [`BootReport`](crate::BootReport) of the running bridge.
//! - Per call: a trivial Python node (four inputs: INT, FLOAT, STRING and a tensor handle; two
//!   outputs) called through [`PyNode::execute`](crate::PyNode) exactly as the scheduler calls
//!   it, minus the time the same Python function takes when Python calls it directly. The
//!   difference is the bridge's overhead: the hand-off to the Python thread, the GIL, value
//!   conversion, the host's bookkeeping and the result conversion (byte size included).
//! - Sizing a MODEL: what measuring a model-like output costs when it crosses into Rust (a
//!   patcher over a module of as many submodules as SDXL's UNet): its first time, again (the
//!   module's size remembered), a clone of it, and walking its module as plain objects.

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use serde_json::json;

use comfyrs_runtime::events::NoEvents;
use comfyrs_runtime::interrupt::Interrupt;
use comfyrs_runtime::node::{Args, ExecContext, NodeClass};
use comfyrs_runtime::Value;

use crate::{Bridge, BridgeError};

const BENCH_NODE: &str = r#"
import nodes, torch

class ComfyrsBenchNoop:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"x": ("INT", {"default": 0}), "f": ("FLOAT", {"default": 0.0}),
                             "s": ("STRING", {"default": ""}), "t": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE", "INT")
    FUNCTION = "run"
    CATEGORY = "comfyrs/bench"

    def run(self, x, f, s, t):
        return (t, x)

nodes.NODE_CLASS_MAPPINGS["ComfyrsBenchNoop"] = ComfyrsBenchNoop
_tensor = torch.zeros((1, 64, 64, 3))

class _Patcher:
    """The shape of ComfyUI's ModelPatcher as the sizing sees it: a module and dicts of patches."""
    def __init__(self, model, patches=None):
        self.model = model
        self.patches = dict(patches or {})
        self.backup = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}

    def clone(self):
        return _Patcher(self.model, self.patches)


def _model_like(modules):
    net = torch.nn.Module()
    net.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(modules))
    return _Patcher(net)


def sizing(n, modules):
    """Median seconds of sizing a model-like object: first, again, a clone with 64 patches, and
    with modules walked as plain objects."""
    import sys, time
    size = sys.modules["comfyrs_host"].byte_size

    def median(f, setup=lambda: None):
        ts = []
        for _ in range(n):
            x = setup()
            t = time.perf_counter()
            f(x)
            ts.append(time.perf_counter() - t)
        ts.sort()
        return ts[len(ts) // 2]

    first = median(size, lambda: _model_like(modules))
    p = _model_like(modules)
    size(p)
    again = median(lambda _: size(p))
    patched = p.clone()
    patched.patches = {f"blocks.{i}.weight": [(1.0, (torch.zeros(8, 8),), 1.0)] for i in range(64)}
    clone = median(lambda c: size(c), patched.clone)
    plain = median(lambda _: size(p, modules=False))
    return first, again, clone, plain


def direct(n):
    import time
    obj = ComfyrsBenchNoop()
    t = time.perf_counter()
    for i in range(n):
        obj.run(x=i, f=0.5, s="a", t=_tensor)
    return (time.perf_counter() - t) / n
"#;

/// The numbers `comfyrs bench bridge` reports.
#[derive(Clone, Debug)]
pub struct BridgeBench {
    pub python_init: Duration,
    pub import_torch: Duration,
    pub import_comfyui: Duration,
    pub load_nodes: Duration,
    pub schemas: Duration,
    pub start_total: Duration,
    pub node_count: usize,
    pub calls: usize,
    /// Median wall time of one bridged call.
    pub call: Duration,
    /// Median time of the call's work on the Python thread (GIL, conversions, the host's
    /// bookkeeping, the function): the call minus the hand-off between threads.
    pub on_python_thread: Duration,
    /// Mean time of the same Python function called directly from Python.
    pub python_function: Duration,
    /// `call - python_function`: the bridge's overhead per call.
    pub overhead: Duration,
    /// Median round trip of an empty job to the Python thread (part of the overhead; it depends
    /// on how busy the machine's cores are, since it is two thread wake-ups).
    pub handoff: Duration,
    /// Sizing a model-like output of this many submodules (medians).
    pub sizing_modules: usize,
    /// Its first sizing (the module's size measured).
    pub size_first: Duration,
    /// Again (the module's size remembered).
    pub size_again: Duration,
    /// A clone of it with 64 patches of its own.
    pub size_clone: Duration,
    /// Walking its module as plain objects (how every output was sized before).
    pub size_plain: Duration,
}

impl BridgeBench {
    pub fn to_json(&self) -> serde_json::Value {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let s = |d: Duration| d.as_secs_f64();
        json!({
            "start": {
                "python_init_s": s(self.python_init),
                "import_torch_s": s(self.import_torch),
                "import_comfyui_s": s(self.import_comfyui),
                "load_nodes_s": s(self.load_nodes),
                "schemas_s": s(self.schemas),
                "total_s": s(self.start_total),
                "nodes": self.node_count,
            },
            "call": {
                "calls": self.calls,
                "bridged_call_us": us(self.call),
                "python_function_us": us(self.python_function),
                "overhead_us": us(self.overhead),
                "on_python_thread_us": us(self.on_python_thread),
                "handoff_us": us(self.handoff),
            },
            "sizing": {
                "modules": self.sizing_modules,
                "first_ms": ms(self.size_first),
                "again_ms": ms(self.size_again),
                "clone_ms": ms(self.size_clone),
                "plain_walk_ms": ms(self.size_plain),
            }
        })
    }

    /// A few human lines.
    pub fn render(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        format!(
            "bridge start: {:.0} ms total (interpreter {:.0} ms, import torch {:.0} ms, import ComfyUI {:.0} ms, load nodes {:.0} ms, schemas {:.0} ms; {} nodes)\n\
             bridged call (median of {}): {:.1} us; Python function itself {:.2} us; overhead {:.1} us = work on the Python thread {:.1} us + thread hand-off (empty round trip {:.1} us)\n\
             sizing a MODEL of {} modules: first {:.2} ms, again {:.3} ms, a clone {:.3} ms; walking its modules as plain objects {:.2} ms",
            ms(self.start_total),
            ms(self.python_init),
            ms(self.import_torch),
            ms(self.import_comfyui),
            ms(self.load_nodes),
            ms(self.schemas),
            self.node_count,
            self.calls,
            us(self.call),
            us(self.python_function),
            us(self.overhead),
            us(self.on_python_thread),
            us(self.handoff),
            self.sizing_modules,
            ms(self.size_first),
            ms(self.size_again),
            ms(self.size_clone),
            ms(self.size_plain),
        )
    }
}

/// Measures the running bridge: `calls` bridged calls after a warm-up.
pub fn run(bridge: &Bridge, calls: usize) -> Result<BridgeBench, BridgeError> {
    let calls = calls.max(10);
    let tensor = bridge.with_python(|py| -> PyResult<Value> {
        let code = std::ffi::CString::new(BENCH_NODE).unwrap();
        let m = pyo3::types::PyModule::from_code(py, &code, c"comfyrs_bench.py", c"comfyrs_bench")?;
        crate::object_value(py, &m.getattr("_tensor")?, "IMAGE")
    })?
    .map_err(|e| BridgeError::Python(e.to_string()))?;
    let node = bridge.load_class("ComfyrsBenchNoop")?;

    let mut args = Args::default();
    args.insert("x", Value::Int(7));
    args.insert("f", Value::Float(0.5));
    args.insert("s", Value::String("a".into()));
    args.insert("t", tensor);
    let prompt = json!({});
    let interrupt = Interrupt::default();
    let out_dir = std::env::temp_dir();
    let ctx = ExecContext {
        prompt_id: "bench",
        node_id: "1",
        call_index: 0,
        prompt: &prompt,
        extra_pnginfo: None,
        extra_data: None,
        output_dir: &out_dir,
        events: &NoEvents,
        interrupt: &interrupt,
    };
    for _ in 0..(calls / 10).max(5) {
        node.execute(&ctx, &args).map_err(|e| BridgeError::Python(e.to_string()))?;
    }
    // Medians: the machine may be busy, and a median is what a typical call costs.
    let mut totals = Vec::with_capacity(calls);
    let mut inside = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        node.execute(&ctx, &args).map_err(|e| BridgeError::Python(e.to_string()))?;
        totals.push(t.elapsed());
        inside.push(Duration::from_nanos(crate::interp::LAST_JOB_NS.load(std::sync::atomic::Ordering::Relaxed)));
    }
    let call = median(&mut totals);
    let on_python_thread = median(&mut inside);

    let python_function = bridge
        .with_python(|py| -> PyResult<f64> { py.import("comfyrs_bench")?.call_method1("direct", (calls,))?.extract() })?
        .map_err(|e| BridgeError::Python(e.to_string()))?;
    let python_function = Duration::from_secs_f64(python_function);

    let mut trips = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        bridge.with_python(|_py| ())?;
        trips.push(t.elapsed());
    }
    let handoff = median(&mut trips);

    // As many modules as SDXL's UNet has (docs/architecture.md, "Memory").
    const MODULES: usize = 814;
    let (first, again, clone, plain) = bridge
        .with_python(|py| -> PyResult<(f64, f64, f64, f64)> { py.import("comfyrs_bench")?.call_method1("sizing", (21, MODULES))?.extract() })?
        .map_err(|e| BridgeError::Python(e.to_string()))?;

    let r = bridge.report();
    Ok(BridgeBench {
        python_init: r.python_init,
        import_torch: r.import_torch,
        import_comfyui: r.import_comfyui,
        load_nodes: r.load_nodes,
        schemas: r.schemas,
        start_total: r.total,
        node_count: r.node_count,
        calls,
        call,
        python_function,
        overhead: call.saturating_sub(python_function),
        on_python_thread,
        handoff,
        sizing_modules: MODULES,
        size_first: Duration::from_secs_f64(first),
        size_again: Duration::from_secs_f64(again),
        size_clone: Duration::from_secs_f64(clone),
        size_plain: Duration::from_secs_f64(plain),
    })
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
