//! The few CUDA runtime calls tch does not expose (events, a second stream, async copies),
//! looked up in the CUDA runtime that libtorch's CUDA backend has already loaded.
//!
//! Only an already-loaded runtime is used (never a new one), so these calls act on the same
//! context and streams as libtorch. Without one (CPU-only libtorch, or `COMFYRS_WIDEN_EVENTS=0`
//! for comparisons), [`runtime`] is `None` and callers keep to tch's own calls.

use std::ffi::{c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

pub type Status = c_int;
pub type EventHandle = *mut c_void;
/// A `cudaStream_t`; null is the legacy default stream, where libtorch queues everything tch does.
pub type Stream = *mut c_void;

type CreateEventFn = unsafe extern "C" fn(*mut EventHandle, c_uint) -> Status;
type RecordFn = unsafe extern "C" fn(EventHandle, Stream) -> Status;
type EventFn = unsafe extern "C" fn(EventHandle) -> Status;
type CreateStreamFn = unsafe extern "C" fn(*mut Stream, c_uint) -> Status;
type WaitEventFn = unsafe extern "C" fn(Stream, EventHandle, c_uint) -> Status;
type StreamFn = unsafe extern "C" fn(Stream) -> Status;
type MemcpyAsyncFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, Stream) -> Status;
type HostGetFlagsFn = unsafe extern "C" fn(*mut c_uint, *mut c_void) -> Status;

pub struct Runtime {
    pub create_event: CreateEventFn,
    pub record: RecordFn,
    pub event_synchronize: EventFn,
    pub destroy_event: EventFn,
    pub create_stream: CreateStreamFn,
    pub stream_wait_event: WaitEventFn,
    pub stream_synchronize: StreamFn,
    pub memcpy_async: MemcpyAsyncFn,
    pub host_get_flags: HostGetFlagsFn,
}

/// `cudaMemcpyDeviceToHost`.
pub const DEVICE_TO_HOST: c_int = 2;
/// `cudaStreamNonBlocking`: no implicit ordering with the legacy default stream.
pub const NON_BLOCKING: c_uint = 0x01;

pub fn runtime() -> Option<&'static Runtime> {
    static RT: OnceLock<Option<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        // `COMFYRS_WIDEN_EVENTS=0`: tch's calls only (device-wide waits, one stream), for comparisons.
        if super::knobs::switched_off("COMFYRS_WIDEN_EVENTS") {
            return None;
        }
        let names: [&CStr; 3] = [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"];
        // SAFETY: dlopen/dlsym with NUL-terminated names; RTLD_NOLOAD never runs initializers of
        // a new library, and the symbols have the CUDA runtime's documented C signatures.
        unsafe {
            let handle = names.iter().map(|n| libc::dlopen(n.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD)).find(|h| !h.is_null())?;
            let sym = |name: &CStr| {
                let p = libc::dlsym(handle, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(Runtime {
                create_event: std::mem::transmute::<*mut c_void, CreateEventFn>(sym(c"cudaEventCreateWithFlags")?),
                record: std::mem::transmute::<*mut c_void, RecordFn>(sym(c"cudaEventRecord")?),
                event_synchronize: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventSynchronize")?),
                destroy_event: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventDestroy")?),
                create_stream: std::mem::transmute::<*mut c_void, CreateStreamFn>(sym(c"cudaStreamCreateWithFlags")?),
                stream_wait_event: std::mem::transmute::<*mut c_void, WaitEventFn>(sym(c"cudaStreamWaitEvent")?),
                stream_synchronize: std::mem::transmute::<*mut c_void, StreamFn>(sym(c"cudaStreamSynchronize")?),
                memcpy_async: std::mem::transmute::<*mut c_void, MemcpyAsyncFn>(sym(c"cudaMemcpyAsync")?),
                host_get_flags: std::mem::transmute::<*mut c_void, HostGetFlagsFn>(sym(c"cudaHostGetFlags")?),
            })
        }
    })
    .as_ref()
}

/// Whether `ptr` is in page-locked memory from the CUDA runtime (`None`: no runtime to ask).
pub fn is_page_locked(ptr: *mut c_void) -> Option<bool> {
    let rt = runtime()?;
    let mut flags: c_uint = 0;
    // SAFETY: cudaHostGetFlags only inspects the address; it fails for memory it did not allocate.
    Some(unsafe { (rt.host_get_flags)(&mut flags, ptr) } == 0)
}
