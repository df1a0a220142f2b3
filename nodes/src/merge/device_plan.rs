//! How an engine shares the device memory it may use (`docs/architecture.md`, "Memory";
//! `docs/decisions.md` D18, D35): a limit (a simulated smaller card, or the device's own memory),
//! what of it was free when measured, the caches' share of that and the chunks' working memory.
//!
//! Pure arithmetic on one measurement, so that what a limit means can be tested without a GPU.

use crate::cuda::DeviceMemory;

/// The least working memory a chunk is planned with: below it the Exit's out-of-memory path
/// shrinks chunks instead.
pub const CHUNK_FLOOR: u64 = 256 << 20;

/// Share of the room the caches get when their limit is `auto`.
const CACHE_SHARE: f64 = 0.4;
/// Share of the room planned for the caches and one chunk together (the rest is slack for
/// libtorch's allocator: rounding, fragmentation, cuBLAS workspaces).
const WORKING_SHARE: f64 = 0.8;

/// One measurement of the device under a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePlan {
    /// The device memory the process may use: the configured limit, or the device's total.
    pub limit: u64,
    /// What the process may still take: the device's free memory, and no more than the limit
    /// less what is already in use on the device (the CUDA context, a model resident for
    /// sampling, the memory of other processes).
    pub room: u64,
}

impl DevicePlan {
    /// The plan for a device measured as `memory`, under `limit` bytes (None: no limit).
    pub fn new(limit: Option<u64>, memory: DeviceMemory) -> DevicePlan {
        let limit = limit.map_or(memory.total, |l| l.min(memory.total));
        let in_use = memory.total.saturating_sub(memory.free);
        DevicePlan { limit, room: memory.free.min(limit.saturating_sub(in_use)) }
    }

    /// The caches' device limit when it is left to the engine: 40% of the room.
    pub fn cache_share(&self) -> u64 {
        (self.room as f64 * CACHE_SHARE) as u64
    }

    /// Working memory for one chunk when the caches may hold `cache_limit`: 80% of the room less
    /// that, and at least [`CHUNK_FLOOR`].
    pub fn chunk_memory(&self, cache_limit: u64) -> u64 {
        ((self.room as f64 * WORKING_SHARE) as u64).saturating_sub(cache_limit).max(CHUNK_FLOOR)
    }
}

/// Working memory for one chunk on the CPU: a quarter of the available host memory, and under a
/// device limit no more than 80% of it (the CPU is then the device the limit is about).
pub fn cpu_chunk_memory(available: u64, limit: Option<u64>) -> u64 {
    let from_host = (available / 4).max(64 << 20);
    match limit {
        Some(l) => from_host.min((l as f64 * WORKING_SHARE) as u64).max(1),
        None => from_host,
    }
}

/// Bytes as a person reads them: `12.0 GiB`, `640 MiB`, `12 KiB`.
pub fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", b / MIB)
    } else {
        // (Keys of a small model: "0 MiB" would say nothing.)
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_read_in_the_unit_that_shows_them() {
        assert_eq!(human(12 * GIB), "12.0 GiB");
        assert_eq!(human(640 << 20), "640 MiB");
        assert_eq!(human(3000), "3 KiB");
        assert_eq!(human(0), "0 KiB");
    }

    #[test]
    fn a_limit_takes_what_is_in_use_off_the_room() {
        // An idle 141 GiB card with 1 GiB in use (the context): no limit leaves the free memory.
        let idle = DeviceMemory { free: 140 * GIB, total: 141 * GIB };
        let p = DevicePlan::new(None, idle);
        assert_eq!(p, DevicePlan { limit: 141 * GIB, room: 140 * GIB });
        // A simulated 24 GiB card on it: the context counts against the 24 GiB.
        let p = DevicePlan::new(Some(24 * GIB), idle);
        assert_eq!(p, DevicePlan { limit: 24 * GIB, room: 23 * GIB });
        assert_eq!(p.cache_share(), (23.0 * GIB as f64 * 0.4) as u64);
        // A model resident for sampling (7 GiB) leaves less for merging.
        let busy = DeviceMemory { free: 133 * GIB, total: 141 * GIB };
        assert_eq!(DevicePlan::new(Some(12 * GIB), busy).room, 4 * GIB);
        // A limit above the card is the card; one below what is in use leaves nothing.
        assert_eq!(DevicePlan::new(Some(1 << 50), idle).limit, 141 * GIB);
        assert_eq!(DevicePlan::new(Some(GIB / 2), idle).room, 0);
    }

    #[test]
    fn chunks_get_the_working_share_less_the_caches_and_never_less_than_the_floor() {
        let p = DevicePlan { limit: 12 * GIB, room: 10 * GIB };
        assert_eq!(p.chunk_memory(p.cache_share()), 4 * GIB);
        assert_eq!(p.chunk_memory(0), 8 * GIB);
        assert_eq!(p.chunk_memory(9 * GIB), CHUNK_FLOOR);
        assert!(DevicePlan::new(Some(24 * GIB), DeviceMemory { free: 80 * GIB, total: 80 * GIB }).chunk_memory(0) < 20 * GIB);
    }

    #[test]
    fn the_cpu_plans_under_a_limit_too() {
        assert_eq!(cpu_chunk_memory(16 * GIB, None), 4 * GIB);
        assert_eq!(cpu_chunk_memory(16 * GIB, Some(GIB)), (GIB as f64 * 0.8) as u64);
        assert_eq!(cpu_chunk_memory(16 * GIB, Some(64 * GIB)), 4 * GIB, "a limit never adds memory");
        assert_eq!(cpu_chunk_memory(16 * GIB, Some(0)), 1);
        assert_eq!(human(12 * GIB), "12.0 GiB");
        assert_eq!(human(640 << 20), "640 MiB");
    }
}
