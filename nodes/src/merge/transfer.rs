//! Moving weights between host memory and the compute device for the Exit.
//!
//! Inputs travel in their storage dtype and are widened to fp32 on the device (half the bus bytes
//! for fp16 and no fp32 copy in host memory, which the peak-memory bound of issue 4 needs).
//! Uploads go through two page-locked staging buffers, and results are narrowed to each key's
//! storage dtype on the device and copied into page-locked host memory: both at full link speed,
//! where pageable memory goes through the driver's own staging at a fraction of it.

use tch::{Device, Kind, Tensor};

use crate::models::MappedTensor;

/// Stacks one tensor per key into `[B, *S]` fp32 on `device`.
pub fn stack_to_device(tensors: &[MappedTensor], device: Device) -> Result<Tensor, tch::TchError> {
    let same_kind = tensors.windows(2).all(|w| w[0].kind() == w[1].kind());
    if let (Device::Cuda(_), true) = (device, same_kind) {
        let views: Vec<&Tensor> = tensors.iter().map(|t| &**t).collect();
        return upload(&views, device)?.f_to_kind(Kind::Float);
    }
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| if same_kind { t.f_to_device(device) } else { t.f_to_device(device)?.f_to_kind(Kind::Float) })
        .collect::<Result<_, _>>()?;
    Tensor::f_stack(&parts, 0)?.f_to_kind(Kind::Float)
}

/// Bytes per staging buffer of [`staged_upload`].
const STAGE_BYTES: usize = 128 << 20;

/// Stacks same-shape, same-dtype host tensors into `[B, *S]` on `device`, keeping their dtype.
pub fn upload(tensors: &[&Tensor], device: Device) -> Result<Tensor, tch::TchError> {
    match (device, tensors.first()) {
        (Device::Cuda(index), Some(first)) if pinned_enabled() && first.device() == Device::Cpu => {
            staged_upload(tensors, first, index)
        }
        _ => {
            let parts: Vec<Tensor> = tensors.iter().map(|t| t.f_to_device(device)).collect::<Result<_, _>>()?;
            Tensor::f_stack(&parts, 0)
        }
    }
}

/// Host → device through two page-locked staging buffers: the CPU fills one (every core copying
/// pieces of keys, which also takes the memory map's page faults in parallel) while the GPU pulls
/// the other at full link speed. Copying straight from the pageable map
/// goes through the driver's single staging path at a fraction of that (7 vs 49 GiB/s measured
/// on an H100 host). Keys share shape and dtype.
fn staged_upload(tensors: &[&Tensor], first: &Tensor, index: usize) -> Result<Tensor, tch::TchError> {
    let device = Device::Cuda(index);
    let kind = first.kind();
    let key_shape = first.size();
    let numel = first.numel() as i64;
    let elt = kind.elt_size_in_bytes();
    let per_stage = (STAGE_BYTES / (numel as usize * elt).max(1)).max(1);
    let mut parts = Vec::with_capacity(tensors.len().div_ceil(per_stage));
    let (mut fill, start) = (std::time::Duration::ZERO, std::time::Instant::now());
    let mut pool = STAGING.lock().unwrap_or_else(|e| e.into_inner());
    if pool.is_none() {
        *pool = Some(Staging { buffers: [pinned_bytes(index)?, pinned_bytes(index)?], pending: [None, None], unordered: false });
    }
    let staging = pool.as_mut().expect("allocated");
    let buffers = &staging.buffers;
    // Keys bigger than a staging buffer go one per round through a buffer of their own size.
    let oversized;
    let buffers: [&Tensor; 2] = if numel as usize * elt > STAGE_BYTES {
        oversized = [pinned_empty(numel, kind, index)?, pinned_empty(numel, kind, index)?];
        [&oversized[0], &oversized[1]]
    } else {
        [&buffers[0], &buffers[1]]
    };
    for (round, chunk) in tensors.chunks(per_stage).enumerate() {
        // Rounds alternate buffers; before refilling one, its last upload must have finished.
        // With an event that is a wait for that copy alone, so the host fills the buffer while
        // the GPU still computes what was queued before (a device-wide wait would not).
        let slot_index = round % 2;
        if let Some(ev) = staging.pending[slot_index].take() {
            if !ev.wait() {
                tch::Cuda::synchronize(index as i64);
            }
        } else if staging.unordered {
            tch::Cuda::synchronize(index as i64);
            staging.unordered = false;
        }
        let buffer = reinterpret(buffers[slot_index], kind, chunk.len() as i64 * numel)?;
        let f0 = std::time::Instant::now();
        fill_staging(&buffer, chunk, numel, &key_shape)?;
        fill += f0.elapsed();
        let mut staged_shape = vec![chunk.len() as i64];
        staged_shape.extend_from_slice(&key_shape);
        let staged = buffer.f_view(staged_shape.as_slice())?;
        parts.push(staged.f_to_device_(device, kind, true, false)?);
        match super::cuda_events::Event::record() {
            Some(ev) => staging.pending[slot_index] = Some(ev),
            None => staging.unordered = true,
        }
    }
    drop(pool);
    tracing::debug!(
        keys = tensors.len(),
        fill_ms = format!("{:.1}", fill.as_secs_f64() * 1e3),
        total_ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1e3),
        "staged upload"
    );
    // One device-side copy (at device bandwidth) joins the rounds.
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    Tensor::f_cat(&parts, 0)
}

/// Copies each key into its slot of a staging buffer (`numel` elements apart), in pieces spread
/// over the cores. (One libtorch copy per key splits every few-MB key over all threads: 10-24
/// GB/s on an H100 host where plain copies reach 38 GB/s.)
fn fill_staging(buffer: &Tensor, chunk: &[&Tensor], numel: i64, key_shape: &[i64]) -> Result<(), tch::TchError> {
    use rayon::prelude::*;
    let plain = buffer.is_contiguous()
        && chunk.iter().all(|t| t.device() == Device::Cpu && t.is_contiguous() && t.kind() == buffer.kind() && t.numel() as i64 == numel);
    if !plain {
        for (j, t) in chunk.iter().enumerate() {
            let mut slot = buffer.f_narrow(0, j as i64 * numel, numel)?.f_view(key_shape)?;
            slot.f_copy_(&t.f_view(key_shape)?)?;
        }
        return Ok(());
    }
    let key_bytes = numel as usize * buffer.kind().elt_size_in_bytes();
    let dst = buffer.data_ptr() as usize;
    // Pieces of at most 4 MiB, so that a round of a few big keys (Z-Image: 29 MB each, four to
    // a buffer) still spreads over every core. Addresses as integers: raw pointers are not Send,
    // and the data outlives the call.
    const PIECE: usize = 4 << 20;
    let pieces: Vec<(usize, usize, usize)> = chunk
        .iter()
        .enumerate()
        .flat_map(|(j, t)| {
            let (src, slot) = (t.data_ptr() as usize, dst + j * key_bytes);
            (0..key_bytes).step_by(PIECE).map(move |off| (src + off, slot + off, PIECE.min(key_bytes - off)))
        })
        .collect();
    pieces.par_iter().for_each(|&(src, to, len)| {
        // SAFETY: each source is a contiguous CPU tensor of `key_bytes` bytes, borrowed for this
        // call, and a piece stays inside it; the buffer holds at least `chunk.len()` keys of the
        // same dtype (the caller sized the round), pieces do not overlap each other, and the
        // page-locked buffer is not any source's memory.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, to as *mut u8, len) }
    });
    Ok(())
}

/// The two staging buffers (raw bytes), allocated on first use and kept: page-locked memory is
/// slow to allocate (~0.5 s per GiB), so it is never allocated per call.
static STAGING: std::sync::Mutex<Option<Staging>> = std::sync::Mutex::new(None);

struct Staging {
    buffers: [Tensor; 2],
    /// Marks the end of each buffer's last upload.
    pending: [Option<super::cuda_events::Event>; 2],
    /// An upload went out without an event (no CUDA runtime found): wait for the device.
    unordered: bool,
}

fn pinned_bytes(index: usize) -> Result<Tensor, tch::TchError> {
    pinned_empty(STAGE_BYTES as i64, Kind::Uint8, index)
}

/// The first `len` elements of a byte buffer as `kind`.
fn reinterpret(bytes: &Tensor, kind: Kind, len: i64) -> Result<Tensor, tch::TchError> {
    if bytes.kind() == kind {
        return bytes.f_narrow(0, 0, len);
    }
    bytes.f_narrow(0, 0, len * kind.elt_size_in_bytes() as i64)?.f_view_dtype(kind)
}

/// An uninitialized page-locked host tensor of `len` elements from libtorch's caching host
/// allocator (reused across runs; allocating page-locked memory anew costs ~0.5 s per GiB).
fn pinned_empty(len: i64, kind: Kind, index: usize) -> Result<Tensor, tch::TchError> {
    if len > 0 && grows_page_locked(index) {
        return grown_pinned(len, kind, index);
    }
    // Without a way to check the above: copy an uninitialized device tensor (a wasted transfer).
    let t = Tensor::f_empty([len], (kind, Device::Cuda(index)))?.f_to_device_(Device::Cpu, kind, true, false)?;
    tch::Cuda::synchronize(index as i64);
    Ok(t)
}

/// tch has no call for a page-locked allocation, but a non-blocking copy of an empty device
/// tensor to the host gives an empty tensor whose storage allocates from the page-locked
/// allocator, and growing it allocates there without copying anything.
fn grown_pinned(len: i64, kind: Kind, index: usize) -> Result<Tensor, tch::TchError> {
    let mut t = Tensor::f_empty([0], (kind, Device::Cuda(index)))?.f_to_device_(Device::Cpu, kind, true, false)?;
    let _same = t.f_resize_([len])?;
    Ok(t)
}

/// Whether [`grown_pinned`] gives page-locked memory with this libtorch (checked once).
fn grows_page_locked(index: usize) -> bool {
    static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *YES.get_or_init(|| {
        grown_pinned(1, Kind::Uint8, index).ok().and_then(|t| super::cuda_runtime::is_page_locked(t.data_ptr())).unwrap_or(false)
    })
}

/// Whether transfers go through page-locked memory: uploads staged, results copied into it
/// (`COMFYRS_WIDEN_PINNED=0` turns both off, for comparisons: 6-10× slower on an H100 host).
fn pinned_enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !super::knobs::switched_off("COMFYRS_WIDEN_PINNED"))
}

/// `t` in host memory as `kind`, contiguous and owned (never a view of `t`'s storage).
/// On CUDA the narrowing runs on the device and the copy lands in page-locked memory, possibly
/// still in flight: call [`finish`] before reading it.
pub fn to_host(t: &Tensor, kind: Kind) -> Result<Tensor, tch::TchError> {
    let device = t.device();
    if device == Device::Cpu {
        let out = t.f_to_kind(kind)?.f_contiguous()?;
        // `to_kind` to the same kind returns the same storage: copy so the caller owns it.
        return if out.data_ptr() == t.data_ptr() { owned_copy(&out) } else { Ok(out) };
    }
    let narrowed = t.f_to_kind(kind)?.f_contiguous()?;
    if !pinned_enabled() {
        return narrowed.f_to_device(Device::Cpu);
    }
    // The copy runs on its own stream while the host prepares, and the device computes, the
    // next chunk (see `readback`); the caller must call [`finish`] before reading the result.
    if let (Device::Cuda(index), true) = (device, super::readback::usable(device)) {
        let host = pinned_empty(narrowed.numel() as i64, kind, index)?.f_view(narrowed.size().as_slice())?;
        if super::readback::download(&narrowed, &host) {
            return Ok(host);
        }
    }
    // Without a copy stream: a non-blocking copy on the default stream, into page-locked memory
    // from libtorch's caching host allocator.
    narrowed.f_to_device_(Device::Cpu, kind, true, false)
}

/// A copy of `t` in a new allocation.
pub fn owned_copy(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}

/// Calls [`finish`] when dropped. [`to_host`]'s copies land in page-locked blocks that libtorch's
/// allocator does not know are being written (the copy is the CUDA runtime's, not libtorch's):
/// a run that stops early (an error, an interrupt) must not free one with a copy in flight. Hold
/// one for as long as results may be in flight, declared after what holds them (locals drop in
/// reverse order).
pub struct FinishOnDrop(pub Device);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        finish(self.0);
    }
}

/// Waits for the device's pending work, including [`to_host`] copies.
pub fn finish(device: Device) {
    if let Device::Cuda(index) = device {
        super::readback::wait();
        tch::Cuda::synchronize(index as i64);
    }
}
