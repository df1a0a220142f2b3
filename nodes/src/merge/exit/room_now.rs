//! The chunks' working memory as the device is when an Exit starts, where ComfyUI's models share
//! it (`docs/architecture.md`, "Memory"). The engine's plan is measured once, at its first merge,
//! and in the image loop that is before ComfyUI loads the model it samples with: under 12 GiB
//! every slider change then planned chunks for memory the UNet held, ran out of memory, asked
//! ComfyUI for room (which the caches gave first: the entries the change was about to read) and
//! halved its chunks four or five times (first change 1.4-2.1 s, H100). Asking ComfyUI what is
//! free before the first chunk, and having it unload the models it is not using when that is
//! far short of the plan, sizes the chunks to what is there. Not when it is only a little short:
//! unloading the VAE (164 MiB) at every slider change of that loop cost 35-55 ms a change, and
//! ComfyUI loads it again for the decode.

use super::super::chunk_memory::ChunkBudget;
use super::super::device_plan::{human, CHUNK_FLOOR};

/// Working memory for chunks when `free` bytes are free and `reserve` of them are spoken for:
/// an eighth of what is free is kept for libtorch's allocator (rounding, fragmentation, cuBLAS
/// workspaces), and the result lies between [`CHUNK_FLOOR`] and `want`.
pub(crate) fn working_memory(want: u64, free: u64, reserve: u64) -> u64 {
    let slack = (free / 8).max(CHUNK_FLOOR);
    free.saturating_sub(slack).saturating_sub(reserve).min(want).max(CHUNK_FLOOR.min(want))
}

/// The run's chunk budget from the device as it is: `start` (the plan) where that fits beside
/// what `free` reports, less where it does not. Where less than a quarter of it fits, the models
/// the merge does not read are asked to make up the rest (`unload_idle(bytes) -> bytes freed`) and
/// the device is measured again (`free`). None when `free` has no view of the device.
pub(crate) fn chunk_budget(
    start: ChunkBudget,
    reserve: u64,
    free: &mut dyn FnMut() -> Option<u64>,
    unload_idle: &mut dyn FnMut(u64) -> u64,
) -> Option<ChunkBudget> {
    let mut now = free()?;
    let mut working = working_memory(start.bytes, now, reserve);
    let mut unloaded = 0;
    if working < start.bytes / 4 {
        unloaded = unload_idle(start.bytes - working);
        if unloaded > 0 {
            now = free().unwrap_or(now + unloaded);
            working = working_memory(start.bytes, now, reserve);
        }
    }
    tracing::debug!(
        "device memory: {} free beside ComfyUI's models{}; {} of it for this merge's results and the caches' growth; chunks get {} (planned {})",
        human(now),
        if unloaded > 0 { format!(" (ComfyUI unloaded {} of models the merge does not read)", human(unloaded)) } else { String::new() },
        human(reserve),
        human(working),
        human(start.bytes)
    );
    Some(ChunkBudget { bytes: working, ..start })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn start(bytes: u64) -> ChunkBudget {
        ChunkBudget { planned: bytes, bytes }
    }

    #[test]
    fn chunks_get_what_is_free_less_the_reserve_and_the_slack() {
        assert_eq!(working_memory(4 * GIB, 16 * GIB, 2 * GIB), 4 * GIB, "plenty: the plan");
        assert_eq!(working_memory(8 * GIB, 8 * GIB, 2 * GIB), 5 * GIB, "8 less 1 (slack) less 2");
        assert_eq!(working_memory(8 * GIB, 2 * GIB, 3 * GIB), CHUNK_FLOOR, "never below the floor");
        assert_eq!(working_memory(100 * MIB, 0, 0), 100 * MIB, "nor above a plan below the floor");
        assert_eq!(working_memory(4 * GIB, GIB, 0), GIB - CHUNK_FLOOR, "the slack is at least the floor");
    }

    #[test]
    fn the_twelve_gib_loop_sizes_its_chunks_to_the_room_and_unloads_idle_models_when_short() {
        // A slider change of the 12 GiB loop (H100 log): 4.88 GiB free beside SDXL's UNet, text
        // encoders and VAE; 1.82 GiB of new merged weights and 2.05 GiB of cache growth to come.
        let reserve = 1820 * MIB + 2050 * MIB;
        let free = std::cell::Cell::new(4880 * MIB);
        let mut asked = Vec::new();
        let b = chunk_budget(
            start(3870 * MIB),
            reserve,
            &mut || Some(free.get()),
            &mut |bytes| {
                asked.push(bytes);
                // The text encoders and the VAE.
                free.set(free.get() + 1720 * MIB);
                1720 * MIB
            },
        )
        .unwrap();
        // 4880 less 610 (an eighth) less the reserve leaves 400 MiB, short of a quarter of the plan.
        assert_eq!(asked, vec![3870 * MIB - 400 * MIB], "asked for what the plan misses");
        // Measured again: 6600 MiB free, an eighth of it kept.
        assert_eq!(b, ChunkBudget { planned: 3870 * MIB, bytes: 6600 * MIB - 825 * MIB - reserve });
        // With a quarter of the plan free nothing is unloaded: the text encoders stay for the next
        // prompt, the VAE for the decode.
        let b = chunk_budget(start(3870 * MIB), reserve, &mut || Some(8 * GIB), &mut |_| panic!("nothing to unload")).unwrap();
        assert_eq!(b.bytes, 8 * GIB - GIB - reserve);
    }

    #[test]
    fn without_a_view_of_the_device_nothing_is_measured() {
        assert_eq!(chunk_budget(start(3 * GIB), GIB, &mut || None, &mut |_| panic!("nothing is asked")), None);
    }
}
