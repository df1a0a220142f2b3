//! How much memory the Exit may use: the per-chunk working budget on the device or host, and
//! the host RAM a merge may count on.

use tch::Device;

use crate::pack::cache::CACHE;
use crate::pack::knobs;

/// Memory budget in bytes for one chunk's working set.
pub(super) fn budget(device: Device) -> usize {
    if let Some(bytes) = knobs::mebibytes("COMFYRS_WIDEN_BUDGET_MB") {
        return bytes;
    }
    match device {
        Device::Cpu => (mem_available().unwrap_or(4 << 30) / 4).max(64 << 20),
        _ => {
            // 80% of the free memory, less what the subtree cache may keep there.
            let free = gpu_free_bytes().unwrap_or(4 << 30);
            ((free as f64 * 0.8) as usize).saturating_sub(CACHE.stats().device_limit).max(256 << 20)
        }
    }
}

/// The host RAM a merge may use: `MemAvailable`, capped by `COMFYRS_WIDEN_HOST_RAM_MB` (for
/// machines shared with other work).
pub(super) fn host_ram_for_merges() -> Option<usize> {
    let cap = knobs::mebibytes("COMFYRS_WIDEN_HOST_RAM_MB");
    match (mem_available(), cap) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// `MemAvailable` of /proc/meminfo.
pub fn mem_available() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free device memory: libtorch exposes no query through tch, so ask the driver's tool once.
pub(crate) fn gpu_free_bytes() -> Option<usize> {
    use std::sync::OnceLock;
    static FREE: OnceLock<Option<usize>> = OnceLock::new();
    *FREE.get_or_init(|| {
        let out = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"])
            .output()
            .ok()?;
        let mb: usize = String::from_utf8_lossy(&out.stdout).trim().lines().next()?.trim().parse().ok()?;
        Some(mb << 20)
    })
}
