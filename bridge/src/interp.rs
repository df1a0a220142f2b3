//! The embedded interpreter and the one thread Python nodes run on.
//!
//! CPython is started once per process, on a dedicated thread ("comfyrs-python") that stays
//! alive for the process's lifetime. Node calls are handed to that thread and the caller blocks
//! until the call is done; the thread holds the GIL only while it runs a call and waits for work
//! without it. Cheap, read-only calls (schemas, IS_CHANGED, VALIDATE_INPUTS) take the GIL on the
//! caller's thread instead, so validation never queues behind a running sampler.
//!
//! Why one thread rather than "any worker, serialized by the GIL": ComfyUI is written for a
//! single execution thread. Its model management (loaded-model lists, offloading) is not
//! thread-safe, and PyTorch releases the GIL inside every op, so two Python nodes on two worker
//! threads would interleave for real. Thread-local state (torch grad/inference mode, asyncio
//! loops, `threading.local` in custom nodes) also stays consistent, and each call does not
//! create a fresh Python thread state. The cost is one channel hand-off per call (measured by
//! `bench`), far below the 50 us budget.

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;
use scoped_tls_hkt::scoped_thread_local;

use comfyrs_runtime::node::ExecContext;

use crate::handoff::{hand_off, panic_text, HandoffError, Job, SPIN};
use crate::BridgeError;

/// The Python thread: a job queue served by the thread that initialized the interpreter.
pub(crate) struct PyThread {
    tx: Mutex<mpsc::Sender<Job>>,
    id: ThreadId,
    /// How long the last handed-off job took on the Python thread (GIL attach included).
    last_job_ns: AtomicU64,
}

impl PyThread {
    /// Starts the thread, initializes CPython on it with `executable` as `sys.executable`, and
    /// runs `boot` there (with the GIL). Returns once boot finished.
    pub(crate) fn start<B, R>(executable: &Path, boot: B) -> Result<(PyThread, R, Duration), BridgeError>
    where
        B: FnOnce(Python<'_>) -> Result<R, BridgeError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job>();
        let (boot_tx, boot_rx) = mpsc::channel::<Result<(R, Duration), BridgeError>>();
        let exe = executable.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("comfyrs-python".into())
            // Python recursion and torch's C++ frames need more than the 2 MiB default.
            .stack_size(32 << 20)
            .spawn(move || {
                let t = Instant::now();
                // SAFETY: called once, on this thread, before any other Python API use by the
                // bridge (PyThread::start runs once per process: `Bridge::start` guards it).
                let init = unsafe { init_interpreter(&exe) };
                let init_time = t.elapsed();
                let result = match init {
                    Err(e) => Err(e),
                    Ok(()) => match catch_unwind(AssertUnwindSafe(|| Python::attach(boot))) {
                        Ok(r) => r,
                        Err(p) => Err(BridgeError::Boot(format!("panic while starting ComfyUI: {}", panic_text(&*p)))),
                    },
                };
                let ok = result.is_ok();
                // The starting caller blocks on `boot_rx` until this arrives, so it cannot fail.
                let _ = boot_tx.send(result.map(|r| (r, init_time)));
                if !ok {
                    return;
                }
                loop {
                    let job = match spin_recv(&rx) {
                        Some(j) => j,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                    };
                    job.run();
                }
            })
            .map_err(|e| BridgeError::Boot(format!("cannot start the Python thread: {e}")))?;
        let id = handle.thread().id();
        match boot_rx.recv() {
            Ok(Ok((r, init))) => Ok((PyThread { tx: Mutex::new(tx), id, last_job_ns: AtomicU64::new(0) }, r, init)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BridgeError::Boot("the Python thread died while starting ComfyUI".into())),
        }
    }

    /// Runs `f` on the Python thread with the GIL and waits for it. `on_wait` is called about
    /// every 20 ms while the call runs (the interrupt watcher). `f` may borrow from the caller:
    /// see [`hand_off`](crate::handoff::hand_off) for why that is sound even if the caller
    /// unwinds.
    pub(crate) fn run<'a, R, F>(&self, f: F, on_wait: impl FnMut()) -> Result<R, BridgeError>
    where
        F: FnOnce(Python<'_>) -> R + Send + 'a,
        R: Send + 'a,
    {
        if std::thread::current().id() == self.id {
            return Ok(Python::attach(f));
        }
        let last = &self.last_job_ns;
        let job = move || {
            let t = Instant::now();
            let r = Python::attach(f);
            last.store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            r
        };
        hand_off(&self.tx, job, on_wait).map_err(|e| match e {
            HandoffError::Stopped => BridgeError::Stopped,
            HandoffError::Panicked(m) => BridgeError::Panicked(m),
        })
    }

    /// How long the last job handed to the Python thread took there (GIL attach included).
    pub(crate) fn last_job_time(&self) -> Duration {
        Duration::from_nanos(self.last_job_ns.load(Ordering::Relaxed))
    }
}

/// Transitional, for `bench.rs` only, which reads the last job time under this name (it is
/// moving to a testkit crate, which will call [`Bridge::last_job_time`](crate::Bridge::last_job_time)
/// instead; delete this then). Reads the running bridge's Python thread; holds no state.
pub(crate) const LAST_JOB_NS: LastJobNs = LastJobNs;

pub(crate) struct LastJobNs;

impl LastJobNs {
    pub(crate) fn load(&self, _order: Ordering) -> u64 {
        crate::Bridge::running().map(|b| b.last_job_time().as_nanos() as u64).unwrap_or(0)
    }
}

fn spin_recv(rx: &mpsc::Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + SPIN;
    while Instant::now() < until {
        match rx.try_recv() {
            Ok(j) => return Some(j),
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Disconnected) => return None,
        }
    }
    None
}

/// Initializes CPython with the venv's python as `sys.executable` (so `sys.prefix` and
/// site-packages are the venv's), no signal handlers (Ctrl-C belongs to comfyrs), no argv
/// parsing. Leaves the GIL released.
///
/// # Safety
/// Call once per process, before any other use of the Python C API by this process's bridge, on
/// the thread that is to own the interpreter's main thread state.
unsafe fn init_interpreter(executable: &Path) -> Result<(), BridgeError> {
    if ffi::Py_IsInitialized() != 0 {
        return Ok(()); // someone else started Python in this process; use theirs
    }
    let exe = CString::new(executable.as_os_str().as_encoded_bytes())
        .map_err(|_| BridgeError::Venv(format!("{} contains a NUL byte", executable.display())))?;
    // SAFETY (the FFI calls of this function): the interpreter is not initialized (checked
    // above; the caller's contract makes this the only initializing thread); PyConfig is a C
    // struct that PyConfig_InitPythonConfig fully initializes from zeroed memory, and it is
    // cleared exactly once on every path after that; `exe` outlives the call that copies it.
    let mut config: ffi::PyConfig = std::mem::zeroed();
    ffi::PyConfig_InitPythonConfig(&mut config);
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    config.user_site_directory = 0;
    let status = ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, exe.as_ptr());
    if ffi::PyStatus_Exception(status) != 0 {
        ffi::PyConfig_Clear(&mut config);
        return Err(BridgeError::Boot(format!("PyConfig: cannot set the executable: {}", status_text(&status))));
    }
    let status = ffi::Py_InitializeFromConfig(&config);
    ffi::PyConfig_Clear(&mut config);
    if ffi::PyStatus_Exception(status) != 0 {
        return Err(BridgeError::Boot(format!(
            "CPython failed to start with {} as its executable: {}",
            executable.display(),
            status_text(&status)
        )));
    }
    // The initializing thread holds the GIL; release it. Later work attaches through
    // PyGILState, which finds this thread's state again.
    ffi::PyEval_SaveThread();
    Ok(())
}

/// # Safety
/// `s` comes from a CPython status call: `err_msg` is null or a NUL-terminated static string.
unsafe fn status_text(s: &ffi::PyStatus) -> String {
    if s.err_msg.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, and by the caller's contract a NUL-terminated string CPython keeps.
        std::ffi::CStr::from_ptr(s.err_msg).to_string_lossy().into_owned()
    }
}

// ------------------------------------------------------------------------------------------------
// The context of the node call running on the Python thread, for the progress hook.

scoped_thread_local!(static CURRENT: for<'a> &'a ExecContext<'a>);

/// Runs `f` with `ctx` as the current call's context on this thread (see [`with_current`]).
pub(crate) fn in_call<R>(ctx: &ExecContext<'_>, f: impl FnOnce() -> R) -> R {
    CURRENT.set(ctx, f)
}

/// Runs `f` with the current call's context, if a node call is running on this thread.
pub(crate) fn with_current<R>(f: impl FnOnce(&ExecContext<'_>) -> R) -> Option<R> {
    CURRENT.is_set().then(|| CURRENT.with(|ctx| f(ctx)))
}
