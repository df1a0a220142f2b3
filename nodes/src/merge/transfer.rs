//! Moving weights between host memory and the compute device for the Exit.
//!
//! Inputs travel in their storage dtype and are widened to fp32 on the device (half the bus bytes
//! for fp16 and no fp32 copy in host memory, which the peak-memory bound needs).
//! Uploads go through two page-locked staging buffers, and results are narrowed to each key's
//! storage dtype on the device and copied into page-locked host memory: both at full link speed,
//! where pageable memory goes through the driver's own staging at a fraction of it.

use tch::{Device, Kind, Tensor};

use comfyrs_runtime::memory::Place;

use crate::cuda::{CopyStream, Event, HostArena, PendingHost};
use crate::models::MappedTensor;

use super::engine::MergeEngine;

/// Stacks one tensor per key into `[B, *S]` fp32 on the engine's device.
pub fn stack_to_device(engine: &MergeEngine, tensors: &[MappedTensor]) -> Result<Tensor, tch::TchError> {
    let device = engine.device();
    let same_kind = tensors.windows(2).all(|w| w[0].kind() == w[1].kind());
    if let (Device::Cuda(_), true) = (device, same_kind) {
        let views: Vec<&Tensor> = tensors.iter().map(|t| &**t).collect();
        return upload(engine, &views)?.f_to_kind(Kind::Float);
    }
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| if same_kind { t.f_to_device(device) } else { t.f_to_device(device)?.f_to_kind(Kind::Float) })
        .collect::<Result<_, _>>()?;
    Tensor::f_stack(&parts, 0)?.f_to_kind(Kind::Float)
}

/// Bytes per staging buffer of [`staged_upload`].
const STAGE_BYTES: usize = 128 << 20;

/// Stacks same-shape, same-dtype host tensors into `[B, *S]` on the engine's device, keeping
/// their dtype.
pub fn upload(engine: &MergeEngine, tensors: &[&Tensor]) -> Result<Tensor, tch::TchError> {
    let device = engine.device();
    match (device, tensors.first(), engine.pinned()) {
        (Device::Cuda(index), Some(first), Some(_)) if first.device() == Device::Cpu => staged_upload(engine, tensors, first, index),
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
fn staged_upload(engine: &MergeEngine, tensors: &[&Tensor], first: &Tensor, index: usize) -> Result<Tensor, tch::TchError> {
    let pinned = engine.pinned().expect("checked by upload");
    let device = Device::Cuda(index);
    let kind = first.kind();
    let key_shape = first.size();
    let numel = first.numel() as i64;
    let elt = kind.elt_size_in_bytes();
    let per_stage = (STAGE_BYTES / (numel as usize * elt).max(1)).max(1);
    let mut parts = Vec::with_capacity(tensors.len().div_ceil(per_stage));
    let (mut fill, start) = (std::time::Duration::ZERO, std::time::Instant::now());
    let mut pool = engine.staging.lock().unwrap_or_else(|e| e.into_inner());
    if pool.is_none() {
        let bytes = || pinned.empty(STAGE_BYTES as i64, Kind::Uint8);
        *pool = Some(Staging { buffers: [bytes()?, bytes()?], pending: [None, None], unordered: false });
        engine.staging_pool.charge(Place::Host, 2 * STAGE_BYTES as u64);
    }
    let staging = pool.as_mut().expect("allocated");
    let buffers = &staging.buffers;
    // Keys bigger than a staging buffer go one per round through a buffer of their own size.
    let oversized;
    let buffers: [&Tensor; 2] = if numel as usize * elt > STAGE_BYTES {
        oversized = [pinned.empty(numel, kind)?, pinned.empty(numel, kind)?];
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
        match engine.cuda().and_then(|rt| Event::record(rt, index)) {
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

/// Page-locked host copies of same-shape, same-dtype host tensors, one row per tensor, in order:
/// rows of one call share a few large blocks (a [`HostArena`]'s), back to back where a block
/// holds several, so later uploads of the same keys go up in few copies. (Ordinary host memory
/// on the CPU.)
pub fn page_locked_copies(engine: &MergeEngine, tensors: &[&Tensor]) -> Result<Vec<Tensor>, tch::TchError> {
    let Some(first) = tensors.first() else { return Ok(Vec::new()) };
    let (kind, shape, numel) = (first.kind(), first.size(), first.numel() as i64);
    let mut arena = HostArena::new(|bytes| match engine.pinned() {
        Some(pinned) => pinned.empty(bytes, Kind::Uint8),
        None => Tensor::f_empty([bytes], (Kind::Uint8, Device::Cpu)),
    });
    arena.expect(std::iter::repeat_n(numel * kind.elt_size_in_bytes() as i64, tensors.len()));
    let mut rows = Vec::with_capacity(tensors.len());
    while rows.len() < tensors.len() {
        let start = rows.len();
        let piece = arena.rows((tensors.len() - start) as i64, &shape, kind)?;
        let n = piece.size()[0];
        fill_staging(&piece.f_view([-1])?, &tensors[start..start + n as usize], numel, &shape)?;
        for r in 0..n {
            rows.push(piece.f_select(0, r)?);
        }
    }
    Ok(rows)
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

/// The engine's two staging buffers (raw bytes), allocated on first use and kept.
pub(crate) struct Staging {
    buffers: [Tensor; 2],
    /// Marks the end of each buffer's last upload (any Exit's: they take turns).
    pending: [Option<Event>; 2],
    /// An upload went out without an event (no CUDA runtime found): wait for the device.
    unordered: bool,
}

/// The first `len` elements of a byte buffer as `kind`.
fn reinterpret(bytes: &Tensor, kind: Kind, len: i64) -> Result<Tensor, tch::TchError> {
    if bytes.kind() == kind {
        return bytes.f_narrow(0, 0, len);
    }
    bytes.f_narrow(0, 0, len * kind.elt_size_in_bytes() as i64)?.f_view_dtype(kind)
}

/// `t` in host memory as `kind`, contiguous and owned (never a view of `t`'s storage), as a
/// [`PendingHost`]: on CUDA the narrowing runs on the device and the copy lands in page-locked
/// memory while the device computes the next chunk, so the result is readable only once its
/// copy has landed. `stream`: the run's copy stream, if it has one.
pub fn to_host(engine: &MergeEngine, stream: Option<&CopyStream>, t: &Tensor, kind: Kind) -> Result<PendingHost, tch::TchError> {
    let device = t.device();
    let Device::Cuda(index) = device else {
        let out = t.f_to_kind(kind)?.f_contiguous()?;
        // `to_kind` to the same kind returns the same storage: copy so the caller owns it.
        let out = if out.data_ptr() == t.data_ptr() { owned_copy(&out)? } else { out };
        return Ok(PendingHost::ready(out));
    };
    let narrowed = t.f_to_kind(kind)?.f_contiguous()?;
    let Some(pinned) = engine.pinned() else {
        return Ok(PendingHost::ready(narrowed.f_to_device(Device::Cpu)?));
    };
    let narrowed = match stream {
        Some(stream) => {
            let host = pinned.empty(narrowed.numel() as i64, kind)?.f_view(narrowed.size().as_slice())?;
            match stream.download(narrowed, host) {
                Ok(pending) => return Ok(pending),
                Err((narrowed, _)) => narrowed,
            }
        }
        None => narrowed,
    };
    // Without a copy stream: a non-blocking copy on the default stream, into page-locked memory
    // from libtorch's caching host allocator, readable after an event (or a device-wide wait).
    let host = narrowed.f_to_device_(Device::Cpu, kind, true, false)?;
    let done = engine.cuda().and_then(|rt| Event::record(rt, index));
    Ok(PendingHost::after_default_stream(host, narrowed, index, done))
}

/// `t` (`[B, *S]`, on a CUDA device) in host memory as `kind`, carved from `arena`'s page-locked
/// blocks and copied on `stream` while the device computes on: one piece per run of rows that
/// share a block, each with its row range and its pending copy. Unlike [`to_host`], whose
/// allocations libtorch rounds up to powers of two, this holds about the results' own size.
pub fn to_host_packed(
    stream: &CopyStream,
    arena: &mut HostArena<'_>,
    t: &Tensor,
    kind: Kind,
) -> Result<Vec<(std::ops::Range<i64>, PendingHost)>, tch::TchError> {
    let narrowed = t.f_to_kind(kind)?.f_contiguous()?;
    let size = narrowed.size();
    let (rows, row) = (size[0], &size[1..]);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < rows {
        let dst = arena.rows(rows - start, row, kind)?;
        let n = dst.size()[0];
        // Rows of a contiguous tensor: contiguous, and sharing its storage (which the pending
        // copy keeps allocated).
        let src = narrowed.f_narrow(0, start, n)?;
        let pending = match stream.download(src, dst) {
            Ok(p) => p,
            Err((src, mut dst)) => {
                dst.f_copy_(&src)?;
                PendingHost::ready(dst)
            }
        };
        pieces.push((start..start + n, pending));
        start += n;
    }
    Ok(pieces)
}

/// fp32 results `[B, *S]` made ready for narrowing to `kind` (docs/widen.md, "Model formats"):
/// fp8 values beyond the largest finite value saturate there (a plain cast would make them NaN
/// or infinite); for scaled fp8 (`base_scales`: the keys' scales in the base) each key's row is
/// divided by its new per-tensor scale: the base's while the row's largest magnitude over it
/// rounds to at most the fp8 maximum (below the maximum plus half the top step: values the merge
/// left alone then keep their bytes), else that magnitude over the fp8 maximum; returned as `[B]`
/// fp32. Other kinds pass through.
pub fn fp8_prepare(t: &Tensor, kind: Kind, base_scales: Option<&[f32]>) -> Result<(Tensor, Option<Tensor>), tch::TchError> {
    // (largest finite value, half the step below it)
    let (max, half_top) = match kind {
        Kind::Float8e4m3fn => (448.0, 16.0),
        Kind::Float8e5m2 => (57344.0, 4096.0),
        _ => return Ok((t.shallow_clone(), None)),
    };
    let Some(base_scales) = base_scales else {
        return Ok((t.f_clamp(-max, max)?, None));
    };
    let amax = if t.dim() > 1 {
        let dims: Vec<i64> = (1..t.dim() as i64).collect();
        t.f_abs()?.f_amax(dims.as_slice(), true)?
    } else {
        t.f_abs()?
    };
    let needed = amax.f_div_scalar(max)?;
    let needed = needed.f_where_scalarother(&needed.f_isfinite()?.f_logical_and(&needed.f_gt(0.0)?)?, 1.0)?;
    let base = Tensor::f_from_slice(base_scales)?.f_to_device(t.device())?.f_reshape(needed.size().as_slice())?;
    let base = base.f_where_scalarother(&base.f_gt(0.0)?.f_logical_and(&base.f_isfinite()?)?, 1.0)?;
    let fits = amax.f_lt_tensor(&base.f_mul_scalar(max + half_top)?)?;
    let scale = base.f_where_self(&fits, &needed)?;
    let values = t.f_div(&scale)?.f_clamp(-max, max)?;
    Ok((values, Some(scale.f_flatten(0, -1)?)))
}

/// The copy stream for one Exit run, where the engine may use one.
pub fn copy_stream(engine: &MergeEngine) -> Option<CopyStream> {
    match (engine.device(), engine.cuda(), engine.pinned()) {
        (Device::Cuda(index), Some(rt), Some(_)) if engine.settings().copy_stream => CopyStream::new(rt, index),
        _ => None,
    }
}

/// A copy of `t` in a new allocation.
pub fn owned_copy(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_results_saturate_and_scaled_rows_keep_or_renew_their_scale() {
        let t = Tensor::from_slice(&[1.0f32, -2.0, 500.0, -1e6]).reshape([2, 2]);
        // Plain fp8: beyond the largest finite value saturates instead of NaN.
        let (v, s) = fp8_prepare(&t, Kind::Float8e4m3fn, None).unwrap();
        assert!(s.is_none());
        let back = Vec::<f32>::try_from(v.to_kind(Kind::Float8e4m3fn).to_kind(Kind::Float).view(-1)).unwrap();
        assert_eq!(back, [1.0, -2.0, 448.0, -448.0]);
        // Scaled: row 0 fits under its base scale 0.01 (max 2 / 0.01 = 200 < 464): kept; row 1
        // does not: max|W| / 448; an all-zero row keeps its base scale.
        let t = Tensor::from_slice(&[1.0f32, -2.0, 5.0, -1.0, 0.0, 0.0]).reshape([3, 2]);
        let (v, s) = fp8_prepare(&t, Kind::Float8e4m3fn, Some(&[0.01, 0.01, 0.5])).unwrap();
        let s = Vec::<f32>::try_from(s.unwrap()).unwrap();
        assert_eq!(s, [0.01, 5.0 / 448.0, 0.5]);
        let v = Vec::<f32>::try_from(v.view(-1)).unwrap();
        assert!((v[0] - 100.0).abs() < 1e-3 && (v[1] + 200.0).abs() < 1e-3);
        assert!(v[2] <= 448.0 && (v[2] - 448.0).abs() < 1e-3);
        assert_eq!(&v[4..], [0.0, 0.0]);
        // Just above the largest value but rounding to it: the base scale stays (4.6 / 0.01 = 460).
        let (_, s) = fp8_prepare(&Tensor::from_slice(&[4.6f32, 0.0]).reshape([1, 2]), Kind::Float8e4m3fn, Some(&[0.01])).unwrap();
        assert_eq!(Vec::<f32>::try_from(s.unwrap()).unwrap(), [0.01]);
        // Other kinds pass through.
        let (v, s) = fp8_prepare(&t, Kind::Half, None).unwrap();
        assert!(s.is_none() && v.equal(&t));
    }
}
