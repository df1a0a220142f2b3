//! What merges learn about the working memory their chunks really have (`docs/architecture.md`,
//! "Memory"). The device plan is measured once, at the first merge, and in the image loop that is
//! before ComfyUI loads the model it samples with: under 12 GiB every later slider change planned
//! chunks of 3.9 GiB, ran out of memory four or five times while halving them to a size that
//! fit, and asked ComfyUI for room each time, which took the very cache entries the change was
//! about to read (Exit 0.4-1.8 s against 0.1 s for the same merge without ComfyUI, H100). A merge
//! that had to shrink its chunks leaves the size it ended with to the next one; a few merges in a
//! row that fit try twice that again, up to the plan, so memory that came back is used again.
//! Merges that can ask ComfyUI what is free measure for themselves instead (`exit/room_now.rs`).

use std::sync::Mutex;

use super::device_plan::human;

/// Merges that fit in a row before the learned size is doubled.
const GROW_AFTER: u32 = 8;

/// The learned chunk working memory of one engine (None: the plan's own).
#[derive(Debug, Default)]
pub(crate) struct ChunkMemory {
    learned: Mutex<Option<Learned>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Learned {
    bytes: u64,
    /// Merges since the last change of `bytes` that needed no retry.
    clean: u32,
}

/// The chunk working memory one merge starts with, and the plan's it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkBudget {
    pub(crate) planned: u64,
    pub(crate) bytes: u64,
}

impl ChunkMemory {
    /// Working memory for the chunks of the next merge, when the plan says `planned`.
    pub(crate) fn budget(&self, planned: u64) -> ChunkBudget {
        ChunkBudget { planned, bytes: self.current().map_or(planned, |l| l.bytes.min(planned)) }
    }

    /// What a merge found: it started with `start` (from [`ChunkMemory::budget`]), ended with
    /// `ended` bytes per chunk after halving chunks that did not fit, and retried `retries` chunks.
    pub(crate) fn record(&self, start: ChunkBudget, ended: u64, retries: usize) {
        let ChunkBudget { planned, bytes: started } = start;
        let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if ended < started {
            tracing::debug!("device memory: later merges start with chunks of {} (this one had to shrink them from {})", human(ended), human(started));
            *learned = Some(Learned { bytes: ended, clean: 0 });
            return;
        }
        let Some(l) = learned.as_mut() else { return };
        if retries > 0 {
            l.clean = 0;
            return;
        }
        l.clean += 1;
        if l.clean >= GROW_AFTER {
            let grown = l.bytes.saturating_mul(2);
            if grown >= planned {
                *learned = None;
            } else {
                *l = Learned { bytes: grown, clean: 0 };
            }
        }
    }

    fn current(&self) -> Option<Learned> {
        *self.learned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_merge_that_shrank_its_chunks_starts_the_next_at_that_size() {
        let m = ChunkMemory::default();
        assert_eq!(m.budget(4000 * MIB).bytes, 4000 * MIB, "nothing learned: the plan");
        // Out of memory, halved four times.
        m.record(ChunkBudget { planned: 4000 * MIB, bytes: 4000 * MIB }, 250 * MIB, 5);
        assert_eq!(m.budget(4000 * MIB).bytes, 250 * MIB);
        // A smaller plan still wins.
        assert_eq!(m.budget(100 * MIB).bytes, 100 * MIB);
        // A retry that needed room but no halving keeps the size and starts the count again.
        m.record(ChunkBudget { planned: 4000 * MIB, bytes: 250 * MIB }, 250 * MIB, 1);
        assert_eq!(m.budget(4000 * MIB).bytes, 250 * MIB);
    }

    #[test]
    fn merges_that_fit_try_twice_the_size_again_up_to_the_plan() {
        let m = ChunkMemory::default();
        m.record(ChunkBudget { planned: 1000 * MIB, bytes: 1000 * MIB }, 200 * MIB, 3);
        for _ in 0..GROW_AFTER - 1 {
            m.record(ChunkBudget { planned: 1000 * MIB, bytes: 200 * MIB }, 200 * MIB, 0);
        }
        assert_eq!(m.budget(1000 * MIB).bytes, 200 * MIB);
        m.record(ChunkBudget { planned: 1000 * MIB, bytes: 200 * MIB }, 200 * MIB, 0);
        assert_eq!(m.budget(1000 * MIB).bytes, 400 * MIB, "eight merges in a row fit: twice the size");
        // One that needs a retry resets the count.
        for _ in 0..GROW_AFTER - 1 {
            m.record(ChunkBudget { planned: 1000 * MIB, bytes: 400 * MIB }, 400 * MIB, 0);
        }
        m.record(ChunkBudget { planned: 1000 * MIB, bytes: 400 * MIB }, 400 * MIB, 1);
        for _ in 0..GROW_AFTER - 1 {
            m.record(ChunkBudget { planned: 1000 * MIB, bytes: 400 * MIB }, 400 * MIB, 0);
        }
        assert_eq!(m.budget(1000 * MIB).bytes, 400 * MIB);
        m.record(ChunkBudget { planned: 1000 * MIB, bytes: 400 * MIB }, 400 * MIB, 0);
        assert_eq!(m.budget(1000 * MIB).bytes, 800 * MIB);
        // Doubling past the plan forgets what was learned: the plan again.
        for _ in 0..GROW_AFTER {
            m.record(ChunkBudget { planned: 1000 * MIB, bytes: 800 * MIB }, 800 * MIB, 0);
        }
        assert_eq!(m.budget(1000 * MIB).bytes, 1000 * MIB);
        // With nothing learned, merges that fit change nothing.
        m.record(ChunkBudget { planned: 1000 * MIB, bytes: 1000 * MIB }, 1000 * MIB, 0);
        assert_eq!(m.budget(1000 * MIB).bytes, 1000 * MIB);
    }
}
