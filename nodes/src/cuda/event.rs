//! CUDA events on the default stream, from the CUDA runtime libtorch has already loaded.
//!
//! tch offers only a device-wide wait (`Cuda::synchronize`), which also waits for every kernel
//! queued so far. Reusing a staging buffer needs only its own upload to be done; waiting on an
//! event recorded after that upload lets the host fill the buffer again while the GPU is still
//! computing the previous group. Without a loadable runtime, [`Event::record`] returns `None` and
//! callers fall back to the device-wide wait.

use super::cuda_runtime::{runtime, EventHandle, Stream};

/// `cudaEventDisableTiming`: events used only for ordering are cheaper without timing.
const DISABLE_TIMING: std::ffi::c_uint = 0x02;

/// A point in the default stream's work (where libtorch queues everything tch does).
pub struct Event(EventHandle);

// SAFETY: CUDA events may be recorded, waited on and destroyed from any host thread.
unsafe impl Send for Event {}

impl Event {
    /// Marks everything queued on the default stream so far. `None` without a CUDA runtime.
    pub fn record() -> Option<Event> {
        let rt = runtime()?;
        let mut ev: EventHandle = std::ptr::null_mut();
        let default_stream: Stream = std::ptr::null_mut();
        // SAFETY: `ev` receives a new event; the null stream is the legacy default stream.
        unsafe {
            if (rt.create_event)(&mut ev, DISABLE_TIMING) != 0 {
                return None;
            }
            if (rt.record)(ev, default_stream) != 0 {
                (rt.destroy_event)(ev);
                return None;
            }
        }
        Some(Event(ev))
    }

    pub(crate) fn handle(&self) -> EventHandle {
        self.0
    }

    /// Blocks the calling thread until the marked work has finished. Returns false when the
    /// wait failed (the caller should then wait for the whole device).
    pub fn wait(&self) -> bool {
        let Some(rt) = runtime() else { return false };
        // SAFETY: the event is alive and was recorded.
        unsafe { (rt.event_synchronize)(self.0) == 0 }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Some(rt) = runtime() {
            // SAFETY: destroying a recorded event is allowed even while its work is pending.
            unsafe {
                (rt.destroy_event)(self.0);
            }
        }
    }
}
