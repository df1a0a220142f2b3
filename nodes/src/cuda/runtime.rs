//! The CUDA runtime's entry points, looked up (never loaded anew) in the runtime libtorch's CUDA
//! backend has loaded, so they act on the same contexts and streams as libtorch.

use std::ffi::{c_int, c_uint, c_void, CStr};

pub type Status = c_int;
pub type EventHandle = *mut c_void;
/// A `cudaStream_t`; null is the legacy default stream, where libtorch queues everything tch does.
pub type StreamHandle = *mut c_void;

type CreateEventFn = unsafe extern "C" fn(*mut EventHandle, c_uint) -> Status;
type RecordFn = unsafe extern "C" fn(EventHandle, StreamHandle) -> Status;
type EventFn = unsafe extern "C" fn(EventHandle) -> Status;
type CreateStreamFn = unsafe extern "C" fn(*mut StreamHandle, c_uint) -> Status;
type WaitEventFn = unsafe extern "C" fn(StreamHandle, EventHandle, c_uint) -> Status;
type StreamFn = unsafe extern "C" fn(StreamHandle) -> Status;
type MemcpyAsyncFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, StreamHandle) -> Status;
type HostGetFlagsFn = unsafe extern "C" fn(*mut c_uint, *mut c_void) -> Status;
type MemGetInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> Status;
type GetDeviceFn = unsafe extern "C" fn(*mut c_int) -> Status;
type SetDeviceFn = unsafe extern "C" fn(c_int) -> Status;

/// The function table. Every field is a symbol of the loaded CUDA runtime with the C signature
/// its type names (the CUDA runtime API's documented signatures); [`CudaRuntime::find`] is the
/// only way to build one, which is what makes calling them sound.
pub struct CudaRuntime {
    pub(super) create_event: CreateEventFn,
    pub(super) record: RecordFn,
    pub(super) event_synchronize: EventFn,
    pub(super) event_query: EventFn,
    pub(super) destroy_event: EventFn,
    pub(super) create_stream: CreateStreamFn,
    pub(super) destroy_stream: StreamFn,
    pub(super) stream_wait_event: WaitEventFn,
    pub(super) stream_synchronize: StreamFn,
    pub(super) memcpy_async: MemcpyAsyncFn,
    pub(super) host_get_flags: HostGetFlagsFn,
    pub(super) mem_get_info: MemGetInfoFn,
    get_device: GetDeviceFn,
    set_device: SetDeviceFn,
}

/// `cudaMemcpyHostToDevice`.
pub(super) const HOST_TO_DEVICE: c_int = 1;
/// `cudaMemcpyDeviceToHost`.
pub(super) const DEVICE_TO_HOST: c_int = 2;
/// `cudaStreamNonBlocking`: no implicit ordering with the legacy default stream.
pub(super) const NON_BLOCKING: c_uint = 0x01;

impl CudaRuntime {
    /// The CUDA runtime this process has already loaded (through libtorch), or `None`.
    pub fn find() -> Option<CudaRuntime> {
        let names: [&CStr; 3] = [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"];
        // SAFETY: dlopen/dlsym with NUL-terminated names; RTLD_NOLOAD never loads (so never runs
        // the initializers of) a library that is not already in the process. Each symbol is
        // transmuted to the function type of its documented C signature.
        unsafe {
            let handle = names.iter().map(|n| libc::dlopen(n.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD)).find(|h| !h.is_null())?;
            let sym = |name: &CStr| {
                let p = libc::dlsym(handle, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(CudaRuntime {
                create_event: std::mem::transmute::<*mut c_void, CreateEventFn>(sym(c"cudaEventCreateWithFlags")?),
                record: std::mem::transmute::<*mut c_void, RecordFn>(sym(c"cudaEventRecord")?),
                event_synchronize: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventSynchronize")?),
                event_query: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventQuery")?),
                destroy_event: std::mem::transmute::<*mut c_void, EventFn>(sym(c"cudaEventDestroy")?),
                create_stream: std::mem::transmute::<*mut c_void, CreateStreamFn>(sym(c"cudaStreamCreateWithFlags")?),
                destroy_stream: std::mem::transmute::<*mut c_void, StreamFn>(sym(c"cudaStreamDestroy")?),
                stream_wait_event: std::mem::transmute::<*mut c_void, WaitEventFn>(sym(c"cudaStreamWaitEvent")?),
                stream_synchronize: std::mem::transmute::<*mut c_void, StreamFn>(sym(c"cudaStreamSynchronize")?),
                memcpy_async: std::mem::transmute::<*mut c_void, MemcpyAsyncFn>(sym(c"cudaMemcpyAsync")?),
                host_get_flags: std::mem::transmute::<*mut c_void, HostGetFlagsFn>(sym(c"cudaHostGetFlags")?),
                mem_get_info: std::mem::transmute::<*mut c_void, MemGetInfoFn>(sym(c"cudaMemGetInfo")?),
                get_device: std::mem::transmute::<*mut c_void, GetDeviceFn>(sym(c"cudaGetDevice")?),
                set_device: std::mem::transmute::<*mut c_void, SetDeviceFn>(sym(c"cudaSetDevice")?),
            })
        }
    }

    /// Runs `f` with device `index` current on this thread (events, streams and memory queries
    /// act on the current device), then restores the previous one.
    pub(super) fn on_device<R>(&self, index: usize, f: impl FnOnce() -> R) -> Option<R> {
        let mut previous: c_int = 0;
        // SAFETY: the table's functions have these signatures; `previous` is a valid out-pointer.
        unsafe {
            if (self.get_device)(&mut previous) != 0 {
                return None;
            }
            if previous as usize != index && (self.set_device)(index as c_int) != 0 {
                return None;
            }
        }
        let r = f();
        if previous as usize != index {
            // SAFETY: as above; `previous` was the current device a moment ago.
            unsafe { (self.set_device)(previous) };
        }
        Some(r)
    }

    /// Whether `address` is in page-locked memory from the CUDA runtime (an address, never
    /// dereferenced).
    pub fn is_page_locked(&self, address: usize) -> bool {
        let mut flags: c_uint = 0;
        // SAFETY: cudaHostGetFlags only looks the address up in the runtime's own allocations;
        // it fails for memory it did not allocate and never reads through the pointer.
        unsafe { (self.host_get_flags)(&mut flags, address as *mut c_void) == 0 }
    }
}
