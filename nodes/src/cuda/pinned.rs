//! Page-locked host memory from libtorch's caching host allocator (reused across runs:
//! allocating page-locked memory anew costs ~0.5 s per GiB).

use std::sync::{Arc, OnceLock};

use tch::{Device, Kind, Tensor};

use super::CudaRuntime;

/// Allocates page-locked host tensors for device `index`, the cheap way when this libtorch
/// allows it (checked once per allocator, with the CUDA runtime when there is one).
pub struct PinnedAllocator {
    index: usize,
    rt: Option<Arc<CudaRuntime>>,
    grows_page_locked: OnceLock<bool>,
}

impl PinnedAllocator {
    pub fn new(index: usize, rt: Option<Arc<CudaRuntime>>) -> PinnedAllocator {
        PinnedAllocator { index, rt, grows_page_locked: OnceLock::new() }
    }

    /// An uninitialized page-locked host tensor of `len` elements.
    pub fn empty(&self, len: i64, kind: Kind) -> Result<Tensor, tch::TchError> {
        if len > 0 && self.grows() {
            return grown_pinned(len, kind, self.index);
        }
        pinned_empty(len, kind, self.index)
    }

    /// Whether [`grown_pinned`] gives page-locked memory with this libtorch.
    fn grows(&self) -> bool {
        *self.grows_page_locked.get_or_init(|| match &self.rt {
            Some(rt) => grown_pinned(1, Kind::Uint8, self.index).is_ok_and(|t| rt.is_page_locked(t.data_ptr() as usize)),
            None => false,
        })
    }
}

/// A page-locked host tensor the slow way (no CUDA runtime to check the fast one with): a
/// non-blocking copy of an uninitialized device tensor, a wasted transfer and a device-wide wait.
fn pinned_empty(len: i64, kind: Kind, index: usize) -> Result<Tensor, tch::TchError> {
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
