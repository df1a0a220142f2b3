//! The CUDA shim: the few CUDA runtime calls tch does not expose (events, copy streams, free
//! device memory, page-locked allocations), looked up in the runtime libtorch has already loaded.
//!
//! Nothing here is process-wide: the merge engine finds the runtime when it is created
//! ([`CudaRuntime::find`]) and owns what it makes with it (events, streams). Without a loaded
//! CUDA runtime (a CPU-only libtorch, or `widen.events = false`) callers keep to tch's own calls:
//! device-wide waits and one stream (`docs/architecture.md`, "Layers of the merge pack").

mod arena;
mod event;
mod memory;
mod peak;
mod pinned;
mod runtime;
mod stream;
mod upload;

pub use arena::HostArena;
pub use event::Event;
pub use memory::{device_memory, DeviceMemory};
pub use peak::{release_cached, PeakWatch};
pub use pinned::PinnedAllocator;
pub use runtime::CudaRuntime;
pub use stream::{CopyStream, PendingHost};
pub use upload::{UploadError, UploadStream};
