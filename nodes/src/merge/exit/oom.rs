//! Chunks that do not fit in device memory (`docs/decisions.md` D18, D35): the Exit evaluates a
//! group's keys in chunks, and a chunk whose compute runs out of memory is never a crash. Its
//! keys are retried in smaller chunks, and the rest of the run keeps the smaller size (every
//! failure costs the allocator a full release of its cached blocks); a key that does not fit on
//! its own gets one more try after the engine's caches give up their device memory, and only
//! then is an error, which names the key, what it needs and the limit to raise. Before any of
//! that, the first failure of a run where ComfyUI runs asks it for room for the chunk (the
//! caches' least recently used entries, then the models ComfyUI is not using, never the one the
//! merge reads), and retries the chunk as it was if some came free.

use tch::Tensor;

use crate::merge::device_plan::human;
use crate::recipe::{KeyTooLarge, PackError};

/// What a run has learned about chunk sizes, across its groups.
#[derive(Debug)]
pub(crate) struct Shrink {
    /// Chunks are planned at 1/divisor of their size from the memory budget.
    divisor: usize,
    /// Whether the caches' device entries were given up already in this run.
    freed_caches: bool,
    /// Whether room was asked for already in this run.
    asked_room: bool,
    /// Chunks that ran out of memory and were retried.
    pub(crate) retries: usize,
    /// Chunks computed.
    pub(crate) chunks: usize,
    /// The limit as words, for the log and the error.
    limit: String,
}

impl Shrink {
    /// No failure yet; `limit` names the memory the chunks run under (for messages).
    pub(crate) fn new(limit: String) -> Shrink {
        Shrink { divisor: 1, freed_caches: false, asked_room: false, retries: 0, chunks: 0, limit }
    }

    /// The fraction of the planned chunk size that chunks have now (1: all of it).
    pub(crate) fn divisor(&self) -> usize {
        self.divisor
    }

    /// A chunk's size for a group planned at `batch` keys per chunk.
    pub(crate) fn size(&self, batch: usize) -> usize {
        (batch / self.divisor).max(1)
    }

    /// Halves chunk sizes until a group planned at `batch` keys per chunk runs chunks of at most
    /// half of `failed` keys (`failed` ≥ 2).
    fn halve(&mut self, batch: usize, failed: usize) {
        while self.size(batch) > failed / 2 {
            self.divisor *= 2;
        }
    }
}

/// Takes a chunk's result for its keys.
type Install<'h> = &'h mut dyn FnMut(&[String], Tensor) -> Result<(), PackError>;

/// The hooks a group's evaluation runs through: computing a chunk, taking its result, asking for
/// room, giving up the caches' device memory, and the user's interrupt.
pub(crate) struct Hooks<'h> {
    pub(crate) eval: &'h mut dyn FnMut(&[String]) -> Result<Tensor, PackError>,
    pub(crate) install: Install<'h>,
    /// Makes about this many bytes of device memory free where ComfyUI runs: the caches' least
    /// recently used entries first, then the models it is not using; returns what came free
    /// (0: nothing was asked).
    pub(crate) room: &'h mut dyn FnMut(u64) -> u64,
    /// Drops the caches' device entries; returns their bytes.
    pub(crate) free: &'h mut dyn FnMut() -> u64,
    pub(crate) interrupted: &'h dyn Fn() -> bool,
}

/// Evaluates one group's `keys` in chunks of `batch` keys (less after earlier failures), each of
/// which needs about `per_key` bytes of working memory per key, handing every result to
/// `hooks.install` in key order.
pub(crate) fn run_group(keys: &[String], batch: usize, per_key: u64, shrink: &mut Shrink, hooks: Hooks) -> Result<(), PackError> {
    let Hooks { eval, install, room, free, interrupted } = hooks;
    let mut rest = keys;
    while !rest.is_empty() {
        if interrupted() {
            return Err(PackError::Interrupted);
        }
        let n = shrink.size(batch).min(rest.len());
        let chunk = &rest[..n];
        match eval(chunk) {
            Ok(done) => {
                install(chunk, done)?;
                shrink.chunks += 1;
                rest = &rest[n..];
            }
            Err(e) if e.is_out_of_memory() => {
                shrink.retries += 1;
                if !shrink.asked_room {
                    shrink.asked_room = true;
                    let freed = room(per_key.saturating_mul(n as u64));
                    if freed > 0 {
                        tracing::debug!(
                            "device memory: a chunk of {n} keys did not fit under {}; {} came free (the caches' older \
                             entries first, then models ComfyUI is not using); retrying the chunk",
                            shrink.limit,
                            human(freed)
                        );
                        continue;
                    }
                }
                if n > 1 {
                    shrink.halve(batch, n);
                    let next = shrink.size(batch).min(n);
                    tracing::debug!(
                        "device memory: a chunk of {n} keys did not fit under {}; retrying as {} chunks of {next} keys \
                         (later chunks of this merge keep the smaller size): {}",
                        shrink.limit,
                        n.div_ceil(next),
                        first_line(&e)
                    );
                } else if !shrink.freed_caches {
                    shrink.freed_caches = true;
                    let freed = free();
                    tracing::debug!(
                        "device memory: key '{}' did not fit on its own under {}; the caches gave back {} of device memory, retrying",
                        chunk[0],
                        shrink.limit,
                        human(freed)
                    );
                } else {
                    let cause = first_line(&e);
                    return Err(KeyTooLarge { key: chunk[0].clone(), limit: shrink.limit.clone(), need: human(per_key), cause }.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// libtorch's message for an error, without its C++ backtrace.
fn first_line(e: &PackError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i}")).collect()
    }

    /// A chunk's "merge": each key's index, times two. Chunks of more than `fits` keys ask libtorch's
    /// CPU allocator for more memory than any machine has, which it refuses with the error a
    /// device out of memory gives (the same classification; nothing is faked).
    fn compute(chunk: &[String], fits: usize) -> Result<Tensor, PackError> {
        if chunk.len() > fits {
            let _never = Tensor::f_empty([1i64 << 60], (Kind::Uint8, Device::Cpu))?;
        }
        let idx: Vec<f32> = chunk.iter().map(|k| k[1..].parse::<f32>().unwrap() * 2.0).collect();
        Ok(Tensor::f_from_slice(&idx)?)
    }

    /// Runs `keys` through [`run_group`] planned at `batch` per chunk; returns every key's
    /// result in install order, the chunk sizes computed, the times `free` was asked, and the
    /// outcome.
    fn drive(keys: &[String], batch: usize, fits: usize, shrink: &mut Shrink) -> (Vec<f32>, Vec<usize>, usize, Result<(), PackError>) {
        let (mut got, mut sizes, mut frees) = (Vec::new(), Vec::new(), 0);
        let outcome = run_group(
            keys,
            batch,
            1 << 20,
            shrink,
            Hooks {
                eval: &mut |chunk| compute(chunk, fits),
                install: &mut |chunk, t| {
                    sizes.push(chunk.len());
                    got.extend(Vec::<f32>::try_from(&t)?);
                    Ok(())
                },
                room: &mut |_| 0,
                free: &mut || {
                    frees += 1;
                    0
                },
                interrupted: &|| false,
            },
        );
        (got, sizes, frees, outcome)
    }

    #[test]
    fn libtorchs_allocation_failures_are_out_of_memory() {
        let e = PackError::from(Tensor::f_empty([1i64 << 60], (Kind::Uint8, Device::Cpu)).unwrap_err());
        assert!(e.is_out_of_memory(), "{e}");
    }

    #[test]
    fn a_chunk_out_of_memory_is_retried_smaller_and_the_results_are_the_same() {
        let all = keys(37);
        let expected: Vec<f32> = (0..37).map(|i| i as f32 * 2.0).collect();
        let mut s = Shrink::new("the 1.0 GiB device memory limit".into());
        let (got, sizes, frees, outcome) = drive(&all, 16, 16, &mut s);
        outcome.unwrap();
        assert_eq!((got, sizes.clone(), frees, s.retries), (expected.clone(), vec![16, 16, 5], 0, 0), "all fits as planned");
        // Only 5 keys fit: 16 fails, 8 fails, 4 fits, and the run keeps chunks of 4 from then on.
        let mut s = Shrink::new("the 1.0 GiB device memory limit".into());
        let (got, sizes, frees, outcome) = drive(&all, 16, 5, &mut s);
        outcome.unwrap();
        assert_eq!(got, expected, "same results, in key order");
        assert_eq!(sizes, vec![4; 9].into_iter().chain([1]).collect::<Vec<_>>());
        assert_eq!((s.retries, s.chunks, frees), (2, 10, 0));
        // The next group of the same run starts at the smaller size: no failure there.
        let (_, sizes, _, outcome) = drive(&keys(8), 16, 5, &mut s);
        outcome.unwrap();
        assert_eq!((sizes, s.retries), (vec![4, 4], 2));
    }

    /// The caches or ComfyUI's models held the memory: the first failure asks for room (the failed
    /// chunk's working memory), once per run, and the chunk is retried at its planned size.
    #[test]
    fn the_first_failure_asks_for_room_and_keeps_the_chunk_size() {
        let fits = std::cell::Cell::new(5);
        let (mut sizes, mut asked) = (Vec::new(), Vec::new());
        let mut s = Shrink::new("the 12.0 GiB device memory limit".into());
        let run = |keys: &[String], s: &mut Shrink, sizes: &mut Vec<usize>, asked: &mut Vec<u64>| {
            run_group(
                keys,
                16,
                1 << 20,
                s,
                Hooks {
                    eval: &mut |chunk| compute(chunk, fits.get()),
                    install: &mut |chunk, _| {
                        sizes.push(chunk.len());
                        Ok(())
                    },
                    room: &mut |bytes| {
                        asked.push(bytes);
                        fits.set(16);
                        1 << 30
                    },
                    free: &mut || 0,
                    interrupted: &|| false,
                },
            )
        };
        run(&keys(37), &mut s, &mut sizes, &mut asked).unwrap();
        assert_eq!((sizes.clone(), asked.clone(), s.retries), (vec![16, 16, 5], vec![16 << 20], 1));
        // Asked once per run: a later failure in the same run shrinks the chunks instead.
        fits.set(5);
        sizes.clear();
        run(&keys(8), &mut s, &mut sizes, &mut asked).unwrap();
        assert_eq!((sizes, asked.len(), s.retries), (vec![4, 4], 1, 2));
    }

    #[test]
    fn a_key_that_never_fits_frees_the_caches_once_then_names_itself() {
        let mut s = Shrink::new("the 12.0 GiB device memory limit".into());
        let (got, _, frees, outcome) = drive(&keys(4), 4, 0, &mut s);
        assert!(got.is_empty());
        assert_eq!(frees, 1, "the caches give up their device memory once before the error");
        let e = outcome.unwrap_err();
        assert!(matches!(e, PackError::DeviceMemory(_)), "{e:?}");
        assert!(!e.is_out_of_memory(), "final: nothing above retries it");
        assert_eq!(e.exception_type(), "OutOfMemoryError");
        let m = e.to_string();
        for part in ["key 'k0'", "the 12.0 GiB device memory limit", "about 1 MiB", "--device-memory", "can't allocate memory"] {
            assert!(m.contains(part), "{part:?} missing from: {m}");
        }
    }

    #[test]
    fn other_errors_and_interrupts_stop_the_group_at_once() {
        let mut s = Shrink::new(String::new());
        let mut calls = 0;
        let outcome = run_group(
            &keys(4),
            2,
            1,
            &mut s,
            Hooks {
                eval: &mut |_| {
                    calls += 1;
                    Err(PackError::from(Tensor::from_slice(&[1.0f32]).f_reshape([7]).unwrap_err()))
                },
                install: &mut |_, _| Ok(()),
                room: &mut |_| 0,
                free: &mut || 0,
                interrupted: &|| false,
            },
        );
        assert!(!outcome.unwrap_err().is_out_of_memory());
        assert_eq!((calls, s.retries), (1, 0), "a shape error is not retried");
        let outcome = run_group(
            &keys(4),
            2,
            1,
            &mut s,
            Hooks { eval: &mut |c| compute(c, 4), install: &mut |_, _| Ok(()), room: &mut |_| 0, free: &mut || 0, interrupted: &|| true },
        );
        assert!(matches!(outcome, Err(PackError::Interrupted)));
    }

    #[test]
    fn halving_reaches_half_of_the_failed_chunk_for_any_planned_size() {
        let mut s = Shrink::new("the test's limit".into());
        assert_eq!(s.size(100), 100);
        s.halve(100, 100);
        assert_eq!(s.size(100), 50);
        // A tail shorter than the planned size: halving goes below the tail, not just the plan.
        s.halve(100, 10);
        assert!(s.size(100) <= 5, "{}", s.size(100));
        // Every group keeps the smaller size, relative to its own plan; never below one key.
        assert_eq!(s.size(7), 1);
        s.halve(3, 2);
        assert_eq!(s.size(3), 1);
    }
}
