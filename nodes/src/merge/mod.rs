//! The merge engine: the WIDEN Exit's evaluator and everything it keeps between runs (caches,
//! memos, staging buffers), below the node surface (`crate::pack`) and above the recipe data
//! (`crate::recipe`) and the CUDA shim (`crate::cuda`). See `docs/architecture.md`, "Where
//! state lives".

pub mod cache;
mod chunk_memory;
pub mod device_plan;
mod engine;
pub mod exit;
mod factors;
mod memo;
pub mod preflight;
pub mod report;
pub mod report_png;
pub mod save;
pub mod save_target;
mod settings;
pub mod transfer;
mod warm;

pub use cache::{ByteLru, CacheStats, Cached, StatsCache, SubtreeCache, SubtreeFactorCache};
pub use engine::{default_host_limit, mem_available, EngineError, EngineStats, MergeEngine};
pub use exit::{evaluate, run_exit, ExitOptions, ExitResult, ExitStats, Reporter, Silent};
pub use settings::MergeSettings;
