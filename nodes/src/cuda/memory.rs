//! Free and total memory of a device, from the CUDA runtime (`cudaMemGetInfo` on that device),
//! asked when needed: it changes as other processes and libtorch's allocator take memory.

use super::CudaRuntime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: u64,
    pub total: u64,
}

/// The memory of CUDA device `index`. Creates the device's context if it has none yet.
pub fn device_memory(rt: &CudaRuntime, index: usize) -> Option<DeviceMemory> {
    rt.on_device(index, || {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: both are valid out-pointers; the call acts on the current device.
        let status = unsafe { (rt.mem_get_info)(&mut free, &mut total) };
        (status == 0).then_some(DeviceMemory { free: free as u64, total: total as u64 })
    })
    .flatten()
}
