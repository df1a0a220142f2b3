//! The CUDA shim's failure paths: a result copy that is still in flight when its run fails (an
//! error or a panic) is waited for before its memory can go; a copy that cannot be queued gives
//! its tensors back. These need a GPU: on a machine without one they say so and pass.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use comfyrs_nodes::cuda::{CopyStream, CudaRuntime, PinnedAllocator};
use tch::{Device, Kind, Tensor};

fn gpu() -> Option<Arc<CudaRuntime>> {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return None;
    }
    // Make sure libtorch has loaded its CUDA runtime before looking for it.
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cuda(0)));
    CudaRuntime::find().map(Arc::new)
}

const N: i64 = 1 << 24;

#[test]
fn a_panic_with_a_copy_in_flight_waits_for_it() {
    let Some(rt) = gpu() else { return };
    let stream = CopyStream::new(&rt, 0).expect("a copy stream");
    let pinned = PinnedAllocator::new(0, Some(rt.clone()));
    let src = Tensor::arange(N, (Kind::Float, Device::Cuda(0)));
    let dst = pinned.empty(N, Kind::Float).expect("page-locked memory");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _pending = stream.download(src.shallow_clone(), dst.shallow_clone()).unwrap_or_else(|_| panic!("the copy was not queued"));
        panic!("a node failed with results still travelling");
    }));
    assert!(outcome.is_err());
    // Unwinding dropped the pending result, which waited for its copy: the values are there.
    assert!(dst.equal(&Tensor::arange(N, (Kind::Float, Device::Cpu))));
}

#[test]
fn a_result_is_read_only_after_its_copy_and_a_bad_copy_gives_its_tensors_back() {
    let Some(rt) = gpu() else { return };
    let stream = CopyStream::new(&rt, 0).expect("a copy stream");
    let pinned = PinnedAllocator::new(0, Some(rt.clone()));
    let src = Tensor::arange(N, (Kind::Float, Device::Cuda(0))) * 2.0;
    let dst = pinned.empty(N, Kind::Float).expect("page-locked memory");
    let host = stream.download(src.shallow_clone(), dst).unwrap_or_else(|_| panic!("the copy was not queued")).wait();
    assert!(host.equal(&(Tensor::arange(N, (Kind::Float, Device::Cpu)) * 2.0)));
    // Sizes that differ: nothing is queued, both tensors come back to the caller.
    let small = pinned.empty(16, Kind::Float).unwrap();
    let (back_src, back_dst) = stream.download(src.shallow_clone(), small).err().expect("refused");
    assert_eq!((back_src.numel(), back_dst.numel()), (N as usize, 16));
}
