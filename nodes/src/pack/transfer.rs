//! Moving weights between host memory and the compute device for the Exit.
//!
//! Inputs travel in their storage dtype and are widened to fp32 on the device (half the bus bytes
//! for fp16 and no fp32 copy in host memory, which the peak-memory bound of issue 4 needs).
//! Results are narrowed to each key's storage dtype on the device and copied into page-locked
//! host memory, which the GPU writes at full link speed (pageable memory goes through a staging
//! buffer at a fraction of it).

use tch::{Device, Kind, Tensor};

use crate::models::MappedTensor;

/// Stacks one tensor per key into `[B, *S]` fp32 on `device`.
pub fn stack_to_device(tensors: &[MappedTensor], device: Device) -> Result<Tensor, tch::TchError> {
    let same_kind = tensors.windows(2).all(|w| w[0].kind() == w[1].kind());
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| if same_kind { t.f_to_device(device) } else { t.f_to_device(device)?.f_to_kind(Kind::Float) })
        .collect::<Result<_, _>>()?;
    Tensor::f_stack(&parts, 0)?.f_to_kind(Kind::Float)
}

/// Whether results are copied into page-locked memory (`COMFYRS_WIDEN_PINNED=0` turns it off).
fn pinned_enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("COMFYRS_WIDEN_PINNED").map_or(true, |v| v != "0"))
}

/// `t` in host memory as `kind`, contiguous and owned (never a view of `t`'s storage).
/// On CUDA the narrowing runs on the device and the copy lands in page-locked memory.
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
    // An empty page-locked tensor grown in place keeps its page-locked allocator: this gets
    // page-locked memory without first filling a pageable buffer.
    let mut host = Tensor::f_empty([0], (kind, Device::Cpu))?.f_pin_memory(device)?;
    let _ = host.f_resize_(narrowed.size())?;
    host.f_copy_(&narrowed)?;
    Ok(host)
}

/// A copy of `t` in a new allocation.
pub fn owned_copy(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}
