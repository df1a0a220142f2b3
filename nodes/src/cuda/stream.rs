//! Results from device memory to host memory on a copy stream of their own.
//!
//! tch queues everything on the default stream, where a result's copy to the host waits for the
//! kernels before it and holds up the kernels after it: merging and reading back take the sum of
//! their times. Queued on a second stream, after an event that marks the result as computed, a
//! chunk's copy runs while the next chunk computes, and a run ends one copy after its last
//! kernel. (On an H100 a full SDXL result is ~36 ms of link time against ~8 ms of merging.)

use std::sync::Mutex;

use tch::{Device, Tensor};

use super::cuda_events::Event;
use super::cuda_runtime::{runtime, Stream, DEVICE_TO_HOST, NON_BLOCKING};

struct Readback {
    stream: Stream,
    /// Device tensors with copies in flight: dropping one would let libtorch's allocator hand
    /// its memory to the next kernel on the default stream before the copy has read it.
    sources: Vec<Tensor>,
}

// SAFETY: a CUDA stream handle may be used from any host thread; the tensors are libtorch's.
unsafe impl Send for Readback {}

static READBACK: Mutex<Option<Readback>> = Mutex::new(None);

/// Whether results on `device` can go through the copy stream (ask before allocating for
/// [`download`]). The stream belongs to the device current when it is made; the Exit merges on
/// device 0.
pub fn usable(device: Device) -> bool {
    device == Device::Cuda(0) && stream_enabled() && runtime().is_some()
}

/// Queues a copy of the contiguous device tensor `src` into `dst`, a contiguous page-locked host
/// tensor of the same dtype and size, after all work queued so far. Returns false, having queued
/// nothing, where the copy stream is not available (the caller copies with tch instead).
pub fn download(src: &Tensor, dst: &Tensor) -> bool {
    if !usable(src.device()) || !src.is_contiguous() || !dst.is_contiguous() {
        return false;
    }
    let Some(rt) = runtime() else { return false };
    let mut guard = READBACK.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let mut stream: Stream = std::ptr::null_mut();
        // SAFETY: `stream` receives a new stream on the current device (kept for the process).
        if unsafe { (rt.create_stream)(&mut stream, NON_BLOCKING) } != 0 {
            return false;
        }
        *guard = Some(Readback { stream, sources: Vec::new() });
    }
    let rb = guard.as_mut().expect("created");
    let Some(computed) = Event::record() else {
        return false;
    };
    let bytes = src.numel() * src.kind().elt_size_in_bytes();
    // SAFETY: both pointers span `bytes` (same dtype and size, contiguous); `src` stays alive in
    // `sources` and `dst` is the caller's until `wait` returns; the stream waits for the event
    // that marks `src` as written.
    let queued = unsafe {
        (rt.stream_wait_event)(rb.stream, computed.handle(), 0) == 0
            && (rt.memcpy_async)(dst.data_ptr(), src.data_ptr(), bytes, DEVICE_TO_HOST, rb.stream) == 0
    };
    if queued {
        rb.sources.push(src.shallow_clone());
    }
    queued
}

/// Blocks until every queued copy has landed, then releases their device tensors.
pub fn wait() {
    let mut guard = READBACK.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some(rb), Some(rt)) = (guard.as_mut(), runtime()) {
        // SAFETY: the stream was created by `download` and is never destroyed.
        let status = unsafe { (rt.stream_synchronize)(rb.stream) };
        if status != 0 {
            // Nothing better to do than a device-wide wait; the copies' sources stay alive until then.
            tch::Cuda::synchronize(0);
        }
        rb.sources.clear();
    }
}

/// `COMFYRS_WIDEN_COPY_STREAM=0` keeps result copies on the default stream (for comparisons).
fn stream_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !super::knobs::switched_off("COMFYRS_WIDEN_COPY_STREAM"))
}
