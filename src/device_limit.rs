//! `memory.device` enforced on the GPU (`docs/architecture.md`, "Memory"; `docs/decisions.md`
//! D35): libtorch's CUDA caching allocator takes a cap as `per_process_memory_fraction` (of the
//! device's total memory) in the variable it reads its settings from, once, when it first
//! allocates. Every tensor of the process goes through that allocator, the merges' and a ComfyUI
//! model's alike (the embedded Python uses the same libtorch), so the cap makes the whole process
//! live within the limit.
//!
//! The CUDA context and whatever else is in use on the device when comfyrs starts count against
//! the limit as they would on a card of that size: the allocator gets the limit less that. Under
//! the cap, large cached blocks are kept whole for the merge's chunks ([`SPLIT`]).

use comfyrs_nodes::cuda::{device_memory, CudaRuntime, DeviceMemory};
use comfyrs_nodes::merge::device_plan::human;

use crate::config::{Config, ConfigError};

/// The variables libtorch's allocator reads its settings from. Where both set a key, the CUDA
/// one wins (seen with libtorch 2.11 on an H200: `per_process_memory_fraction` of 0.05 in the
/// first and 0.5 in the second allowed 20 GiB of 140), so the cap goes there, where
/// src/pinned_env.rs also writes.
const VARS: [&str; 2] = ["PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"];

const KEY: &str = "per_process_memory_fraction";

/// Under a cap, blocks larger than this are not split for smaller tensors (libtorch's
/// `max_split_size_mb`), unless the user's settings say how to place blocks themselves. With
/// split blocks, a chunk's large working tensors found no piece big enough among the cached
/// blocks, and the allocator had to give back every cached block and try again, or the chunk ran
/// out of memory: a 12 GiB slider change of `bench merge` took 203-219 ms, 99 ms with this, and
/// no chunk ran out of memory (docs/architecture.md, "Memory").
const SPLIT: &str = "max_split_size_mb:512";
/// Settings of the user's that decide block placement: with one of them, [`SPLIT`] stays out.
const PLACEMENT: [&str; 2] = ["max_split_size_mb", "expandable_segments"];

/// Caps libtorch's allocator at the configured device memory, for commands that compute. Call
/// before libtorch allocates on the device, while no other thread of this program runs (the
/// environment is edited: only the CUDA driver's own threads may exist, started by the memory
/// query here, and they read no settings after they start).
pub fn apply(config: &Config) -> Result<(), ConfigError> {
    let Some(limit) = config.memory.device else { return Ok(()) };
    let tch::Device::Cuda(index) = config.device.resolve() else {
        tracing::debug!("memory.device {} applies to CPU merges only: there is no CUDA device in use", human(limit));
        return Ok(());
    };
    let Some(memory) = CudaRuntime::find().and_then(|rt| device_memory(&rt, index)) else {
        tracing::warn!(
            "memory.device {}: the CUDA runtime did not say how much memory cuda:{index} has, so libtorch's allocator is not capped; \
             merges still plan within the limit",
            human(limit)
        );
        return Ok(());
    };
    let invalid = |message: String| ConfigError::Invalid {
        key: "memory.device".into(),
        from: config.source("memory.device").to_string(),
        message,
    };
    let Some(fraction) = allocator_fraction(limit, memory).map_err(invalid)? else {
        tracing::debug!("memory.device {} is not less than cuda:{index}'s {}: nothing to cap", human(limit), human(memory.total));
        return Ok(());
    };
    let var = VARS[1];
    if let Some(user) = VARS.iter().find(|v| std::env::var(v).is_ok_and(|e| e.contains(KEY))) {
        tracing::warn!("{user} already sets {KEY}: libtorch's allocator keeps that cap, and merges plan within memory.device {}", human(limit));
        return Ok(());
    }
    // Block placement the user chose in the other variable stays theirs too.
    let placed = std::env::var(VARS[0]).is_ok_and(|e| places_blocks(&e));
    match with_fraction(std::env::var(var).ok().as_deref(), fraction, !placed) {
        Some(value) => {
            // Sound: see the function's contract (called at the top of `main`, before logging
            // threads, tokio, Python or libtorch's own threads exist).
            std::env::set_var(var, &value);
            tracing::debug!(
                "device memory: libtorch's allocator capped at {} of cuda:{index}'s {} ({var}={value}); {} was in use when comfyrs started",
                human((fraction * memory.total as f64) as u64),
                human(memory.total),
                human(memory.total - memory.free)
            );
        }
        None => tracing::warn!(
            "{var} already sets {KEY}: libtorch's allocator keeps that cap, and merges plan within memory.device {}",
            human(limit)
        ),
    }
    Ok(())
}

/// The allocator's cap for `limit` bytes on a device measured as `memory`, as a fraction of its
/// total memory: the limit less what was already in use. `None` when the limit is the whole
/// device or more; an error when what is in use already fills the limit.
fn allocator_fraction(limit: u64, memory: DeviceMemory) -> Result<Option<f64>, String> {
    if limit >= memory.total {
        return Ok(None);
    }
    let in_use = memory.total.saturating_sub(memory.free);
    // Less than 256 MiB for tensors would fail the first merge or model anyway.
    if limit < in_use + (256 << 20) {
        return Err(format!(
            "{} leaves no room: {} of the device is already in use (the CUDA context, other processes); write a larger size, e.g. {}, or auto",
            human(limit),
            human(in_use),
            human((in_use + (4u64 << 30)).min(memory.total))
        ));
    }
    Ok(Some((limit - in_use) as f64 / memory.total as f64))
}

/// Whether the settings `conf` decide block placement ([`PLACEMENT`]).
fn places_blocks(conf: &str) -> bool {
    PLACEMENT.iter().any(|p| conf.contains(p))
}

/// The variable's new value with the cap (and, with `split`, [`SPLIT`] where its settings leave
/// block placement open), or `None` to leave a cap the user set there.
fn with_fraction(existing: Option<&str>, fraction: f64, split: bool) -> Option<String> {
    if existing.is_some_and(|e| e.contains(KEY)) {
        return None;
    }
    // Rounded down, so the cap never exceeds the limit.
    let mut ours = format!("{KEY}:{:.6}", (fraction * 1e6).floor() / 1e6);
    if split && !existing.is_some_and(places_blocks) {
        ours = format!("{SPLIT},{ours}");
    }
    Some(match existing.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => format!("{e},{ours}"),
        None => ours,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_cap_is_the_limit_less_what_is_in_use() {
        let card = DeviceMemory { free: 140 * GIB, total: 141 * GIB };
        let f = allocator_fraction(24 * GIB, card).unwrap().unwrap();
        assert!((f * (141 * GIB) as f64 - (23 * GIB) as f64).abs() < 1.0, "{f}");
        assert_eq!(allocator_fraction(141 * GIB, card), Ok(None));
        assert_eq!(allocator_fraction(200 * GIB, card), Ok(None));
        let e = allocator_fraction(GIB, card).unwrap_err();
        assert!(e.contains("1.0 GiB of the device is already in use") && e.contains("e.g. 5.0 GiB"), "{e}");
    }

    #[test]
    fn the_users_settings_stay_and_their_own_cap_wins() {
        assert_eq!(with_fraction(None, 0.25, true).as_deref(), Some("max_split_size_mb:512,per_process_memory_fraction:0.250000"));
        assert_eq!(with_fraction(Some(" "), 1.0 / 3.0, true).as_deref(), Some("max_split_size_mb:512,per_process_memory_fraction:0.333333"));
        assert_eq!(
            with_fraction(Some("pinned_num_register_threads:8"), 0.5, true).as_deref(),
            Some("pinned_num_register_threads:8,max_split_size_mb:512,per_process_memory_fraction:0.500000")
        );
        // The user's own block placement stays as it is.
        assert_eq!(
            with_fraction(Some("expandable_segments:True,pinned_num_register_threads:8"), 0.5, true).as_deref(),
            Some("expandable_segments:True,pinned_num_register_threads:8,per_process_memory_fraction:0.500000")
        );
        assert_eq!(with_fraction(Some("max_split_size_mb:128"), 0.5, true).as_deref(), Some("max_split_size_mb:128,per_process_memory_fraction:0.500000"));
        assert_eq!(with_fraction(Some("per_process_memory_fraction:0.9"), 0.5, true), None);
        // Placement chosen in the other variable.
        assert_eq!(with_fraction(None, 0.5, false).as_deref(), Some("per_process_memory_fraction:0.500000"));
        assert!(places_blocks("expandable_segments:True") && !places_blocks("pinned_num_register_threads:8"));
    }
}
