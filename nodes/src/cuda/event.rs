//! CUDA events: a point in a stream's work that the host (or another stream) can wait for.
//!
//! tch offers only a device-wide wait (`Cuda::synchronize`), which also waits for every kernel
//! queued so far. Reusing a staging buffer needs only its own upload to be done; waiting on an
//! event recorded after that upload lets the host fill the buffer again while the GPU is still
//! computing the previous group.

use std::sync::Arc;

use super::runtime::{EventHandle, StreamHandle};
use super::CudaRuntime;

/// `cudaEventDisableTiming`: events used only for ordering are cheaper without timing.
const DISABLE_TIMING: std::ffi::c_uint = 0x02;

/// A recorded event. Holds the runtime it came from, so it can always be waited on and destroyed.
pub struct Event {
    rt: Arc<CudaRuntime>,
    handle: EventHandle,
}

// SAFETY: CUDA events may be recorded, waited on and destroyed from any host thread; the handle
// is owned by this value alone.
unsafe impl Send for Event {}

impl Event {
    /// Marks everything queued so far on the legacy default stream of device `index` (where
    /// libtorch queues everything tch does). `None` if the runtime refused.
    pub fn record(rt: &Arc<CudaRuntime>, index: usize) -> Option<Event> {
        Self::record_on(rt, index, std::ptr::null_mut())
    }

    /// Marks everything queued so far on `stream` of device `index`.
    pub(super) fn record_on(rt: &Arc<CudaRuntime>, index: usize, stream: StreamHandle) -> Option<Event> {
        rt.on_device(index, || {
            let mut ev: EventHandle = std::ptr::null_mut();
            // SAFETY: `ev` receives a new event; `stream` is null (the legacy default stream) or a
            // stream the caller owns and keeps alive for the call.
            unsafe {
                if (rt.create_event)(&mut ev, DISABLE_TIMING) != 0 {
                    return None;
                }
                if (rt.record)(ev, stream) != 0 {
                    (rt.destroy_event)(ev);
                    return None;
                }
            }
            Some(Event { rt: rt.clone(), handle: ev })
        })
        .flatten()
    }

    pub(super) fn handle(&self) -> EventHandle {
        self.handle
    }

    /// Blocks the calling thread until the marked work has finished. Returns false when the
    /// wait failed (the caller should then wait for the whole device).
    pub fn wait(&self) -> bool {
        // SAFETY: the event is alive (owned by `self`) and was recorded.
        unsafe { (self.rt.event_synchronize)(self.handle) == 0 }
    }

    /// Whether the marked work has finished, without waiting. False while it runs, and when the
    /// query failed (a later [`Event::wait`] then decides).
    pub fn is_done(&self) -> bool {
        // SAFETY: the event is alive (owned by `self`) and was recorded.
        unsafe { (self.rt.event_query)(self.handle) == 0 }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: destroying a recorded event is allowed even while its work is pending; the
        // handle is not used again.
        unsafe {
            (self.rt.destroy_event)(self.handle);
        }
    }
}
