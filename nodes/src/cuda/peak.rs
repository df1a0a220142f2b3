//! The peak device memory of a span of work, as the device sees it (what a card of that size
//! would have to hold: the CUDA context, libtorch's allocator with what it keeps cached, any other
//! library's memory), for benchmarks (`docs/architecture.md`, "Memory").
//!
//! tch has no view of libtorch's allocator statistics, so the device's own count is sampled. The
//! caching allocator gives memory back to the device only when asked, so what it holds at a
//! moment is the most it has held since it last gave memory back: [`release_cached`] before a
//! span makes the span's peak its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use super::{device_memory, CudaRuntime};

/// How often the device is asked (a `cudaMemGetInfo` costs microseconds).
const EVERY: Duration = Duration::from_millis(2);

/// Samples the memory in use on one device until stopped.
pub struct PeakWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    rt: Arc<CudaRuntime>,
    index: usize,
}

impl PeakWatch {
    /// Starts sampling device `index`.
    pub fn start(rt: Arc<CudaRuntime>, index: usize) -> PeakWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(in_use(&rt, index)));
        let thread = {
            let (stop, peak, rt) = (stop.clone(), peak.clone(), rt.clone());
            std::thread::Builder::new()
                .name("comfyrs-device-peak".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max(in_use(&rt, index), Ordering::Relaxed);
                        std::thread::sleep(EVERY);
                    }
                })
                .ok()
        };
        PeakWatch { stop, peak, thread, rt, index }
    }

    /// The most memory in use on the device since the start, bytes.
    pub fn stop(mut self) -> u64 {
        self.finish();
        // A last look: the span's own end.
        self.peak.fetch_max(in_use(&self.rt, self.index), Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeakWatch {
    fn drop(&mut self) {
        self.finish();
    }
}

fn in_use(rt: &CudaRuntime, index: usize) -> u64 {
    device_memory(rt, index).map_or(0, |m| m.total - m.free)
}

/// Makes libtorch's caching allocator on device `index` give back every block it keeps cached
/// and unused. tch has no call for that (libtorch's `emptyCache`), but the allocator does it
/// before it refuses an allocation it cannot serve: this asks for more than the device has, and
/// the refusal is the expected outcome. Returns whether it was refused (false would mean the
/// device holds more than it says, and nothing was released).
pub fn release_cached(rt: &CudaRuntime, index: usize) -> bool {
    let Some(m) = device_memory(rt, index) else { return false };
    Tensor::f_empty([(m.total + (1 << 30)) as i64], (Kind::Uint8, Device::Cuda(index))).is_err()
}
