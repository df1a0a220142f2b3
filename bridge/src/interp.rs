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

use std::cell::Cell;
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

use comfyrs_runtime::node::ExecContext;

use crate::BridgeError;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long the last job took on the Python thread (GIL attach included), for the benchmark.
pub(crate) static LAST_JOB_NS: AtomicU64 = AtomicU64::new(0);

/// The Python thread: a job queue served by the thread that initialized the interpreter.
pub(crate) struct PyThread {
    tx: Mutex<mpsc::Sender<Job>>,
    id: ThreadId,
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
                let init = unsafe { init_interpreter(&exe) };
                let init_time = t.elapsed();
                let result = match init {
                    Err(e) => Err(e),
                    Ok(()) => match catch_unwind(AssertUnwindSafe(|| Python::attach(boot))) {
                        Ok(r) => r,
                        Err(p) => Err(BridgeError::Boot(format!("panic while starting ComfyUI: {}", panic_text(&p)))),
                    },
                };
                let ok = result.is_ok();
                let _ = boot_tx.send(result.map(|r| (r, init_time)));
                if !ok {
                    return;
                }
                // After a job, poll briefly before sleeping: a scheduler issuing node calls back to
                // back then skips a thread wake-up per call.
                loop {
                    let job = match spin_recv(&rx) {
                        Some(j) => j,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                    };
                    job();
                }
            })
            .map_err(|e| BridgeError::Boot(format!("cannot start the Python thread: {e}")))?;
        let id = handle.thread().id();
        match boot_rx.recv() {
            Ok(Ok((r, init))) => Ok((PyThread { tx: Mutex::new(tx), id }, r, init)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BridgeError::Boot("the Python thread died while starting ComfyUI".into())),
        }
    }

    /// Runs `f` on the Python thread with the GIL and waits for it. `on_wait` is called about
    /// every 20 ms while the call runs (the interrupt watcher).
    pub(crate) fn run<'a, R, F>(&self, f: F, mut on_wait: impl FnMut()) -> Result<R, BridgeError>
    where
        F: FnOnce(Python<'_>) -> R + Send + 'a,
        R: Send + 'a,
    {
        if std::thread::current().id() == self.id {
            return Ok(Python::attach(f));
        }
        let (rtx, rrx) = mpsc::sync_channel::<std::thread::Result<R>>(1);
        let job: Box<dyn FnOnce() + Send + 'a> = Box::new(move || {
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| Python::attach(f)));
            LAST_JOB_NS.store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let _ = rtx.send(r);
        });
        // SAFETY: the job borrows data of lifetime 'a. This function does not return before the
        // job has run or been dropped: `rrx` yields a value or disconnects only when the job's
        // `rtx` is consumed or dropped, and a job the channel refuses is dropped right here.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| BridgeError::Boot("the Python thread has stopped".into()))?;
        // Short calls: poll briefly before sleeping (saves a wake-up); long ones sleep.
        let spin_until = Instant::now() + SPIN;
        while Instant::now() < spin_until {
            match rrx.try_recv() {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(p)) => return Err(BridgeError::Python(format!("panic in a Python call: {}", panic_text(&p)))),
                Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
                Err(mpsc::TryRecvError::Disconnected) => return Err(BridgeError::Boot("the Python thread has stopped".into())),
            }
        }
        loop {
            match rrx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(p)) => return Err(BridgeError::Python(format!("panic in a Python call: {}", panic_text(&p)))),
                Err(mpsc::RecvTimeoutError::Timeout) => on_wait(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(BridgeError::Boot("the Python thread has stopped".into()))
                }
            }
        }
    }
}

/// How long either side polls before blocking.
const SPIN: Duration = Duration::from_micros(30);

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

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "?".into())
}

/// Initializes CPython with the venv's python as `sys.executable` (so `sys.prefix` and
/// site-packages are the venv's), no signal handlers (Ctrl-C belongs to comfyrs), no argv
/// parsing. Leaves the GIL released.
unsafe fn init_interpreter(executable: &Path) -> Result<(), BridgeError> {
    if ffi::Py_IsInitialized() != 0 {
        return Ok(()); // someone else started Python in this process; use theirs
    }
    let exe = CString::new(executable.as_os_str().as_encoded_bytes())
        .map_err(|_| BridgeError::Venv(format!("{} contains a NUL byte", executable.display())))?;
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

unsafe fn status_text(s: &ffi::PyStatus) -> String {
    if s.err_msg.is_null() {
        "unknown error".into()
    } else {
        std::ffi::CStr::from_ptr(s.err_msg).to_string_lossy().into_owned()
    }
}

// ------------------------------------------------------------------------------------------------
// The context of the node call running on the Python thread, for the progress hook.

thread_local! {
    static CURRENT: Cell<Option<*const ExecContext<'static>>> = const { Cell::new(None) };
}

/// Makes `ctx` the current call's context on this thread until the guard drops.
pub(crate) struct CurrentCall {
    prev: Option<*const ExecContext<'static>>,
}

impl CurrentCall {
    pub(crate) fn enter(ctx: &ExecContext<'_>) -> CurrentCall {
        // SAFETY: the pointer is only dereferenced while the guard lives, and the guard lives
        // inside the call that borrows `ctx`.
        let p = unsafe { std::mem::transmute::<*const ExecContext<'_>, *const ExecContext<'static>>(ctx) };
        CurrentCall { prev: CURRENT.with(|c| c.replace(Some(p))) }
    }
}

impl Drop for CurrentCall {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.prev));
    }
}

/// Runs `f` with the current call's context, if a node call is running on this thread.
pub(crate) fn with_current<R>(f: impl FnOnce(&ExecContext<'_>) -> R) -> Option<R> {
    CURRENT.with(|c| c.get()).map(|p| f(unsafe { &*p }))
}
