//! Page-locked host rows to the device on a stream of their own, through two device slots.
//!
//! A non-blocking upload on the default stream (what tch offers) runs only after every kernel
//! queued before it: a slider change that brings 1.15 GiB of a base over the link spent that
//! ~24 ms after the previous chunk's kernels instead of beside them. Here each piece of an upload
//! goes into a slot of device memory that the stream owns, after the default stream's last read
//! of that slot, and the default stream waits only for that piece before widening it into the
//! merge's own fp32 tensor. The slots are the stream's, never memory libtorch's allocator could
//! hand to a kernel on the default stream meanwhile: that is what makes the second stream safe
//! without waiting for the default stream's work.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::runtime::HOST_TO_DEVICE;
use super::{CopyStream, CudaRuntime, Event};

/// Bytes of each of the two slots: a piece of an upload is at most this.
pub const SLOT_BYTES: usize = 64 << 20;

/// A stream for host → device copies and its two slots, owned by one merge engine (its users
/// take turns). Dropping it waits for what is queued on it.
pub struct UploadStream {
    rt: Arc<CudaRuntime>,
    index: usize,
    stream: CopyStream,
    slots: [Slot; 2],
    next: usize,
    /// Uploads whose host rows must stay allocated until they are done: a page-locked block
    /// freed while the link still reads it could be handed out and written again.
    in_flight: Vec<(Event, Vec<Tensor>)>,
}

struct Slot {
    /// `SLOT_BYTES` bytes of device memory.
    buffer: Tensor,
    /// Marks the default stream's last read of the slot.
    read: Option<Event>,
}


/// Why an upload was not queued: nothing was written to the output, or the caller must not use
/// it ([`UploadStream::upload`]).
#[derive(Debug)]
pub enum UploadError {
    /// A row is larger than a slot, or the rows are not contiguous host tensors of one dtype and
    /// shape: nothing was queued.
    Unsuited,
    /// The runtime refused a call part way; the output is not usable.
    Failed(String),
}

impl UploadStream {
    /// A new non-blocking stream on device `index` with its two slots.
    pub fn new(rt: &Arc<CudaRuntime>, index: usize) -> Result<UploadStream, tch::TchError> {
        let stream = CopyStream::new(rt, index)
            .ok_or_else(|| tch::TchError::Kind("the CUDA runtime could not create an upload stream".into()))?;
        let slot = || -> Result<Slot, tch::TchError> {
            Ok(Slot { buffer: Tensor::f_empty([SLOT_BYTES as i64], (Kind::Uint8, Device::Cuda(index)))?, read: None })
        };
        // (The stream is destroyed when it drops, if a slot cannot be allocated.)
        let slots = [slot()?, slot()?];
        Ok(UploadStream { rt: rt.clone(), index, stream, slots, next: 0, in_flight: Vec::new() })
    }

    /// Device memory the slots hold.
    pub fn device_bytes() -> u64 {
        2 * SLOT_BYTES as u64
    }

    /// Queues `runs` (page-locked host tensors `[n, *S]` of one dtype and row shape, contiguous)
    /// into the rows of `out` (`[Σn, *S]` on this stream's device, any floating dtype), in order,
    /// converted to `out`'s dtype: each piece on this stream into a slot, then widened into `out`
    /// on the default stream, which waits for that piece alone. Returns at once; what is queued
    /// after on the default stream sees `out` filled.
    pub fn upload(&mut self, runs: &[Tensor], out: &Tensor) -> Result<(), UploadError> {
        let Some(first) = runs.first() else { return Ok(()) };
        let (kind, row) = (first.kind(), first.size()[1..].to_vec());
        let row_bytes = row.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
        let rows: i64 = runs.iter().map(|r| r.size()[0]).sum();
        let suited = row_bytes > 0
            && row_bytes <= SLOT_BYTES
            && out.device() == Device::Cuda(self.index)
            && out.is_contiguous()
            && out.size().first() == Some(&rows)
            && out.size()[1..] == row[..]
            && runs.iter().all(|r| r.device() == Device::Cpu && r.is_contiguous() && r.kind() == kind && r.size()[1..] == row[..]);
        if !suited {
            return Err(UploadError::Unsuited);
        }
        self.in_flight.retain(|(done, _)| !done.is_done());
        let per_slot = (SLOT_BYTES / row_bytes) as i64;
        // Pieces: up to `per_slot` rows each, taken from the runs in order (a piece may span runs).
        let (mut run, mut at, mut out_row) = (0usize, 0i64, 0i64);
        while out_row < rows {
            let slot_index = self.next;
            self.next ^= 1;
            // The piece's copies: (run, its first row, rows).
            let mut copies = Vec::new();
            let mut filled = 0;
            while filled < per_slot && run < runs.len() {
                let n = (runs[run].size()[0] - at).min(per_slot - filled);
                copies.push((run, at, n));
                filled += n;
                at += n;
                if at == runs[run].size()[0] {
                    run += 1;
                    at = 0;
                }
            }
            let sources: Vec<Tensor> = copies.iter().map(|&(r, _, _)| runs[r].shallow_clone()).collect();
            let uploaded = self.queue_piece(slot_index, &copies, runs, row_bytes)?;
            // The default stream waits for this piece, then widens it into `out`.
            let waited = self
                .rt
                // SAFETY: the legacy default stream (null) waits for an event this value recorded.
                .on_device(self.index, || unsafe { (self.rt.stream_wait_event)(std::ptr::null_mut(), uploaded.handle(), 0) == 0 })
                .unwrap_or(false);
            if !waited && !uploaded.wait() {
                // (Where the device cannot wait, the host does; where neither can, the rows stay
                // allocated until the piece is known to be done, at the latest when this drops.)
                self.in_flight.push((uploaded, sources));
                return Err(UploadError::Failed("cannot wait for an upload".into()));
            }
            let slot = &mut self.slots[slot_index];
            let bytes = filled * row_bytes as i64;
            let mut shape = vec![filled];
            shape.extend_from_slice(&row);
            let failed = |e: tch::TchError| UploadError::Failed(e.to_string());
            let staged = slot.buffer.f_narrow(0, 0, bytes).and_then(|b| b.f_view_dtype(kind)).and_then(|b| b.f_view(shape.as_slice())).map_err(failed)?;
            out.f_narrow(0, out_row, filled).and_then(|mut dst| dst.f_copy_(&staged)).map_err(failed)?;
            slot.read = Event::record(&self.rt, self.index);
            if slot.read.is_none() {
                // Without a mark of the read, the next upload into this slot could overwrite it
                // before it is read: wait for the device here.
                tch::Cuda::synchronize(self.index as i64);
            }
            self.in_flight.push((uploaded, sources));
            out_row += filled;
        }
        Ok(())
    }

    /// Queues one piece's copies into slot `slot_index` on this stream, after the default
    /// stream's last read of the slot; returns the event that marks them done.
    fn queue_piece(&mut self, slot_index: usize, copies: &[(usize, i64, i64)], runs: &[Tensor], row_bytes: usize) -> Result<Event, UploadError> {
        let slot = &self.slots[slot_index];
        let dst = slot.buffer.data_ptr() as usize;
        let queued = self
            .rt
            .on_device(self.index, || {
                // SAFETY: the stream waits for the event that marks the slot's last read (alive,
                // owned by the slot). Each copy reads `n` rows of a contiguous page-locked host
                // tensor, inside it (`first + n` ≤ its rows), kept allocated by `in_flight` until
                // the copy is done, and writes inside the slot (the piece's rows fit its bytes,
                // `per_slot`), which nothing reads before the default stream has waited for it.
                unsafe {
                    if let Some(read) = &slot.read {
                        if (self.rt.stream_wait_event)(self.stream.handle(), read.handle(), 0) != 0 {
                            return false;
                        }
                    }
                    let mut offset = 0;
                    for &(r, first, n) in copies {
                        let src = runs[r].data_ptr() as usize + first as usize * row_bytes;
                        let len = n as usize * row_bytes;
                        if (self.rt.memcpy_async)((dst + offset) as *mut _, src as *const _, len, HOST_TO_DEVICE, self.stream.handle()) != 0 {
                            return false;
                        }
                        offset += len;
                    }
                    true
                }
            })
            .unwrap_or(false);
        if !queued {
            self.stream.synchronize();
            return Err(UploadError::Failed("the CUDA runtime refused an upload".into()));
        }
        match Event::record_on(&self.rt, self.index, self.stream.handle()) {
            Some(done) => Ok(done),
            None => {
                self.stream.synchronize();
                Err(UploadError::Failed("cannot mark an upload".into()))
            }
        }
    }
}

impl Drop for UploadStream {
    fn drop(&mut self) {
        // The default stream may still read a slot: its memory goes back to libtorch's allocator,
        // which orders later kernels on that stream after the read; but wait for the device (the
        // upload stream too), as nothing else here marks it. Then the host rows may go; the
        // stream itself is destroyed when its field drops.
        tch::Cuda::synchronize(self.index as i64);
        self.in_flight.clear();
    }
}
