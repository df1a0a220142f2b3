//! Results from device memory to host memory on a copy stream of their own, as values that
//! cannot be read before their copy has landed.
//!
//! tch queues everything on the default stream, where a result's copy to the host waits for the
//! kernels before it and holds up the kernels after it: merging and reading back take the sum of
//! their times. Queued on a second stream, after an event that marks the result as computed, a
//! chunk's copy runs while the next chunk computes, and a run ends one copy after its last
//! kernel. (On an H100 a full SDXL result is ~36 ms of link time against ~8 ms of merging.)

use std::sync::Arc;

use tch::{Device, Tensor};

use super::runtime::{StreamHandle, DEVICE_TO_HOST, NON_BLOCKING};
use super::{CudaRuntime, Event};

/// A host tensor that may still be being written by a copy from the device. The tensor is
/// reachable only through [`PendingHost::wait`], which returns once the copy has landed; dropped
/// unread (an error or a panic elsewhere in the run), it still waits, so neither the page-locked
/// block it lands in nor the device memory it reads from can be reused while the copy runs.
pub struct PendingHost {
    host: Tensor,
    pending: Pending,
}

enum Pending {
    /// Nothing in flight.
    Ready,
    /// A copy on a stream, followed by `done`; `source` keeps the device memory it reads from
    /// allocated (dropping it would let libtorch's allocator hand that memory to the next kernel
    /// on the default stream before the copy has read it).
    Copy { done: Event, source: Tensor, index: usize },
    /// A non-blocking copy on the default stream of device `.0`, with no event to wait on.
    Device(usize),
}

impl PendingHost {
    /// A host tensor with nothing in flight.
    pub fn ready(host: Tensor) -> PendingHost {
        PendingHost { host, pending: Pending::Ready }
    }

    /// A host tensor written by a non-blocking copy queued on device `index`'s default stream:
    /// readable once `done` fires (or, without an event, after a device-wide wait).
    pub fn after_default_stream(host: Tensor, source: Tensor, index: usize, done: Option<Event>) -> PendingHost {
        let pending = match done {
            Some(done) => Pending::Copy { done, source, index },
            None => Pending::Device(index),
        };
        PendingHost { host, pending }
    }

    /// The host tensor, once its copy has landed.
    pub fn wait(mut self) -> Tensor {
        self.settle();
        self.host.shallow_clone()
    }

    /// Lets go of the device memory the copy reads from once the copy has landed, without
    /// waiting for it. Returns whether the copy has landed (false also where that cannot be told
    /// without a device-wide wait). A merge's results would otherwise hold their device copies
    /// until the merge ends: under a small card's limit that is the room of the last chunks.
    pub fn release_if_landed(&mut self) -> bool {
        match &self.pending {
            Pending::Ready => true,
            Pending::Copy { done, .. } if done.is_done() => {
                self.pending = Pending::Ready;
                true
            }
            _ => false,
        }
    }

    fn settle(&mut self) {
        match std::mem::replace(&mut self.pending, Pending::Ready) {
            Pending::Ready => {}
            Pending::Copy { done, source, index } => {
                if !done.wait() {
                    // Nothing better to do than a device-wide wait; the source stays alive until then.
                    tch::Cuda::synchronize(index as i64);
                }
                drop(source);
            }
            Pending::Device(index) => tch::Cuda::synchronize(index as i64),
        }
    }
}

impl Drop for PendingHost {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A stream of its own for copies: device → host copies of results, made per Exit run (two Exits
/// running at once each have theirs), and the engine's host → device uploads
/// ([`super::UploadStream`] owns one). Dropping it waits for the copies queued on it.
pub struct CopyStream {
    rt: Arc<CudaRuntime>,
    index: usize,
    handle: StreamHandle,
}

// SAFETY: a CUDA stream may be used from any host thread; the handle is owned by this value and
// destroyed once, in `drop`.
unsafe impl Send for CopyStream {}

impl CopyStream {
    /// A new non-blocking stream on device `index`.
    pub fn new(rt: &Arc<CudaRuntime>, index: usize) -> Option<CopyStream> {
        let mut handle: StreamHandle = std::ptr::null_mut();
        // SAFETY: `handle` receives a new stream on device `index` (made current for the call).
        let status = rt.on_device(index, || unsafe { (rt.create_stream)(&mut handle, NON_BLOCKING) })?;
        (status == 0).then(|| CopyStream { rt: rt.clone(), index, handle })
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.index)
    }

    /// The stream, for copies queued by another type of this module; alive while `self` is.
    pub(super) fn handle(&self) -> StreamHandle {
        self.handle
    }

    /// Queues a copy of the contiguous device tensor `src` into `dst`, a contiguous page-locked
    /// host tensor of the same dtype and size, after all work queued so far on the default
    /// stream. Gives the tensors back (`Err`) when the copy could not be queued: the caller then
    /// copies with tch.
    pub fn download(&self, src: Tensor, dst: Tensor) -> Result<PendingHost, (Tensor, Tensor)> {
        let fits = src.device() == self.device()
            && dst.device() == Device::Cpu
            && src.is_contiguous()
            && dst.is_contiguous()
            && src.kind() == dst.kind()
            && src.numel() == dst.numel();
        if !fits {
            return Err((src, dst));
        }
        let Some(computed) = Event::record(&self.rt, self.index) else {
            return Err((src, dst));
        };
        let bytes = src.numel() * src.kind().elt_size_in_bytes();
        // SAFETY: both pointers span `bytes` (same dtype and element count, both contiguous);
        // `src` stays allocated inside the returned `PendingHost` until the event after the copy
        // has fired, and `dst` is reachable only through it; the stream first waits for the
        // event that marks `src` as computed.
        let queued = self
            .rt
            .on_device(self.index, || unsafe {
                (self.rt.stream_wait_event)(self.handle, computed.handle(), 0) == 0
                    && (self.rt.memcpy_async)(dst.data_ptr(), src.data_ptr(), bytes, DEVICE_TO_HOST, self.handle) == 0
            })
            .unwrap_or(false);
        if !queued {
            return Err((src, dst));
        }
        match Event::record_on(&self.rt, self.index, self.handle) {
            Some(done) => Ok(PendingHost { host: dst, pending: Pending::Copy { done, source: src, index: self.index } }),
            None => {
                // The copy is queued but cannot be marked: wait for it here, then it is ready.
                self.synchronize();
                Ok(PendingHost::ready(dst))
            }
        }
    }

    /// Blocks until every copy queued on the stream has landed.
    pub fn synchronize(&self) {
        // SAFETY: the stream is alive (owned by `self`).
        if unsafe { (self.rt.stream_synchronize)(self.handle) } != 0 {
            tch::Cuda::synchronize(self.index as i64);
        }
    }
}

impl Drop for CopyStream {
    fn drop(&mut self) {
        self.synchronize();
        // SAFETY: the stream is idle (synchronized above) and the handle is not used again.
        unsafe {
            (self.rt.destroy_stream)(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_result_reads_back_and_an_unread_one_drops_cleanly() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let p = PendingHost::ready(t.shallow_clone());
        assert!(p.wait().equal(&t));
        let mut p = PendingHost::ready(t.shallow_clone());
        assert!(p.release_if_landed(), "nothing in flight: landed");
        assert!(p.wait().equal(&t));
        drop(PendingHost::ready(t));
    }
}
