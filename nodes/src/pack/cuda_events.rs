//! CUDA events on the default stream, from the CUDA runtime libtorch has already loaded.
//!
//! tch offers only a device-wide wait (`Cuda::synchronize`), which also waits for every kernel
//! queued so far. Reusing a staging buffer needs only its own upload to be done; waiting on an
//! event recorded after that upload lets the host fill the buffer again while the GPU is still
//! computing the previous group. Without a loadable runtime, [`Event::record`] returns `None` and
//! callers fall back to the device-wide wait.

use std::ffi::{c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

type Status = c_int;
type EventHandle = *mut c_void;
type CreateFn = unsafe extern "C" fn(*mut EventHandle, c_uint) -> Status;
type RecordFn = unsafe extern "C" fn(EventHandle, *mut c_void) -> Status;
type EventFn = unsafe extern "C" fn(EventHandle) -> Status;

struct Runtime {
    create: CreateFn,
    record: RecordFn,
    synchronize: EventFn,
    destroy: EventFn,
}

/// `cudaEventDisableTiming`: events used only for ordering are cheaper without timing.
const DISABLE_TIMING: c_uint = 0x02;

fn runtime() -> Option<&'static Runtime> {
    static RT: OnceLock<Option<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        // `COMFYRS_WIDEN_EVENTS=0`: device-wide waits only (for comparisons).
        if std::env::var("COMFYRS_WIDEN_EVENTS").is_ok_and(|v| v == "0") {
            return None;
        }
        // Only a runtime that is already loaded (by libtorch's CUDA backend): never load one.
        let names: [&CStr; 3] = [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"];
        // SAFETY: dlopen/dlsym with NUL-terminated names; RTLD_NOLOAD never runs initializers of
        // a new library, and the symbols have the CUDA runtime's documented C signatures.
        unsafe {
            let handle = names
                .iter()
                .map(|n| libc::dlopen(n.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD))
                .find(|h| !h.is_null())?;
            let sym = |name: &CStr| {
                let p = libc::dlsym(handle, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(Runtime {
                create: std::mem::transmute::<*mut c_void, CreateFn>(sym(c"cudaEventCreateWithFlags")?),
                record: std::mem::transmute::<*mut c_void, RecordFn>(sym(c"cudaEventRecord")?),
                synchronize: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventSynchronize")?),
                destroy: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventDestroy")?),
            })
        }
    })
    .as_ref()
}

/// A point in the default stream's work (where libtorch queues everything tch does).
pub struct Event(EventHandle);

// SAFETY: CUDA events may be recorded, waited on and destroyed from any host thread.
unsafe impl Send for Event {}

impl Event {
    /// Marks everything queued on the default stream so far. `None` without a CUDA runtime.
    pub fn record() -> Option<Event> {
        let rt = runtime()?;
        let mut ev: EventHandle = std::ptr::null_mut();
        // SAFETY: `ev` receives a new event; the null stream is the legacy default stream.
        unsafe {
            if (rt.create)(&mut ev, DISABLE_TIMING) != 0 {
                return None;
            }
            if (rt.record)(ev, std::ptr::null_mut()) != 0 {
                (rt.destroy)(ev);
                return None;
            }
        }
        Some(Event(ev))
    }

    /// Blocks the calling thread until the marked work has finished. Returns false when the
    /// wait failed (the caller should then wait for the whole device).
    pub fn wait(&self) -> bool {
        let Some(rt) = runtime() else { return false };
        // SAFETY: the event is alive and was recorded.
        unsafe { (rt.synchronize)(self.0) == 0 }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Some(rt) = runtime() {
            // SAFETY: destroying a recorded event is allowed even while its work is pending.
            unsafe {
                (rt.destroy)(self.0);
            }
        }
    }
}
