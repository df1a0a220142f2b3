//! Running a closure that borrows the caller's stack on another thread, and waiting for it.
//!
//! The Python thread serves a queue of `'static` jobs, while a node call borrows its arguments and
//! context from the caller's stack. [`hand_off`] erases that borrow and keeps it sound with a
//! completion guard: however the caller leaves `hand_off` (a result, an error, or a panic of its
//! `on_wait` callback unwinding through it), it does not leave before the job has run and dropped
//! everything it captured, or has been dropped unrun.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long either side polls before blocking: a scheduler issuing node calls back to back then
/// skips a thread wake-up per call.
pub(crate) const SPIN: Duration = Duration::from_micros(30);

/// How often the waiting caller's `on_wait` runs while a job is queued or running.
const WAIT_TICK: Duration = Duration::from_millis(20);

/// A unit of work for the serving thread. Dropping it, after running it or instead, releases the
/// caller waiting in [`hand_off`].
pub(crate) struct Job {
    work: Option<Box<dyn FnOnce() + Send + 'static>>,
    done: Arc<Done>,
}

impl Job {
    /// Runs the work. Completion is signalled when `self` drops: at the end of this call, or
    /// while a panic of the work unwinds out of it.
    pub(crate) fn run(mut self) {
        if let Some(work) = self.work.take() {
            work();
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Declared first so that it fires last, even if dropping the work panics: by then the
        // work and everything it borrowed from the caller are gone.
        let _signal = Signal(&self.done);
        drop(self.work.take());
    }
}

/// Whether a job has finished (run and dropped, or dropped unrun).
#[derive(Default)]
struct Done {
    finished: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Done {
    fn signal(&self) {
        self.finished.store(true, Ordering::Release);
        // Notify under the lock: a waiter that saw `false` under the lock is already waiting.
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }

    fn wait(&self) {
        let spin_until = Instant::now() + SPIN;
        while Instant::now() < spin_until {
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
        }
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.finished.load(Ordering::Acquire) {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct Signal<'a>(&'a Done);

impl Drop for Signal<'_> {
    fn drop(&mut self) {
        self.0.signal();
    }
}

/// The caller's side of a queued job: dropping it (on return, or while a panic unwinds) blocks
/// until the job has finished or was dropped unrun.
struct Pending(Arc<Done>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.wait();
    }
}

/// Why a handed-off job gave no result.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum HandoffError {
    /// The serving thread is gone (its queue is closed), or dropped the job unrun.
    #[error("the thread serving the queue has stopped")]
    Stopped,
    /// The job panicked; the serving thread lives on.
    #[error("{0}")]
    Panicked(String),
}

/// Queues `f` for the thread serving `queue` and waits for its result, calling `on_wait` about
/// every 20 ms meanwhile. `f` may borrow from the caller: this function does not return, nor let
/// a panic of `on_wait` unwind past it, before `f` has finished and its captures are dropped.
pub(crate) fn hand_off<'a, R: Send + 'a>(
    queue: &Mutex<mpsc::Sender<Job>>,
    f: impl FnOnce() -> R + Send + 'a,
    mut on_wait: impl FnMut(),
) -> Result<R, HandoffError> {
    // Declared before `_pending`, so dropped after it: the job's send below always finds it.
    let (rtx, rrx) = mpsc::sync_channel::<std::thread::Result<R>>(1);
    let work: Box<dyn FnOnce() + Send + 'a> = Box::new(move || {
        let r = catch_unwind(AssertUnwindSafe(f));
        // Cannot fail: the receiver outlives the job (see above).
        let _ = rtx.send(r);
    });
    let done = Arc::new(Done::default());
    let _pending = Pending(done.clone());
    // SAFETY: `work` borrows data that lives for 'a, which outlives this call; only the type
    // forgets 'a. The job cannot outlive this call: `_pending` is a local of this frame (nothing
    // can leak or forget it), it is dropped whenever this function returns or unwinds, and its drop
    // blocks until `Job::drop` has dropped `work` and every capture, whether the job ran, panicked,
    // or was dropped unrun by a queue that refused it or closed.
    let work = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Box<dyn FnOnce() + Send + 'static>>(work) };
    let job = Job { work: Some(work), done };
    // A refused job comes back inside the error and is dropped here, unrun.
    queue.lock().unwrap_or_else(|p| p.into_inner()).send(job).map_err(|_| HandoffError::Stopped)?;
    let received = |r: std::thread::Result<R>| r.map_err(|p| HandoffError::Panicked(panic_text(&*p)));
    // Short calls: poll briefly before sleeping (saves a wake-up); long ones sleep.
    let spin_until = Instant::now() + SPIN;
    while Instant::now() < spin_until {
        match rrx.try_recv() {
            Ok(r) => return received(r),
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Disconnected) => return Err(HandoffError::Stopped),
        }
    }
    loop {
        match rrx.recv_timeout(WAIT_TICK) {
            Ok(r) => return received(r),
            Err(mpsc::RecvTimeoutError::Timeout) => on_wait(),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(HandoffError::Stopped),
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "(a panic without a message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    /// A thread serving a queue of jobs, as the Python thread does.
    fn server() -> (Mutex<mpsc::Sender<Job>>, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Job>();
        let h = thread::spawn(move || {
            for job in rx {
                job.run();
            }
        });
        (Mutex::new(tx), h)
    }

    /// Records when it is dropped, so a test can see the order of events.
    struct Canary<'l> {
        values: Vec<u64>,
        log: &'l Mutex<Vec<String>>,
    }

    impl Drop for Canary<'_> {
        fn drop(&mut self) {
            self.values.iter_mut().for_each(|v| *v = 0xdead);
            self.log.lock().unwrap().push("caller's data dropped".into());
        }
    }

    #[test]
    fn returns_the_result_of_a_borrowing_job() {
        let (queue, _h) = server();
        let data = [1u64, 2, 3];
        let sum = hand_off(&queue, || data.iter().sum::<u64>(), || {}).unwrap();
        assert_eq!(sum, 6);
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_server_lives_on() {
        let (queue, _h) = server();
        let e = hand_off(&queue, || -> u32 { panic!("job failed on purpose") }, || {}).unwrap_err();
        assert!(matches!(&e, HandoffError::Panicked(m) if m == "job failed on purpose"), "{e:?}");
        assert_eq!(hand_off(&queue, || 7, || {}).unwrap(), 7);
    }

    #[test]
    fn a_closed_queue_is_an_error_not_a_hang() {
        let (tx, rx) = mpsc::channel::<Job>();
        drop(rx);
        let e = hand_off(&Mutex::new(tx), || 1, || {}).unwrap_err();
        assert!(matches!(e, HandoffError::Stopped));
    }

    #[test]
    fn a_job_dropped_unrun_releases_the_caller() {
        // The server takes the job, then drops it without running it (as a dying thread would).
        let (tx, rx) = mpsc::channel::<Job>();
        let h = thread::spawn(move || drop(rx.recv().unwrap()));
        let ran = AtomicUsize::new(0);
        let e = hand_off(&Mutex::new(tx), || ran.fetch_add(1, Ordering::SeqCst), || {}).unwrap_err();
        assert!(matches!(e, HandoffError::Stopped));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        h.join().unwrap();
    }

    /// The failure path the guard exists for: the caller panics (here in `on_wait`, as the
    /// interrupt watcher could) while its job is blocked on the serving thread. The panic must
    /// not unwind into the frame that owns the job's borrowed data until the job is done, and the
    /// job must see that data intact.
    #[test]
    fn an_unwinding_caller_waits_for_its_job() {
        let (queue, _h) = server();
        let log = Mutex::new(Vec::<String>::new());
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let unwound = thread::scope(|s| {
            // Releases the job well after the caller has started unwinding.
            s.spawn(|| {
                thread::sleep(Duration::from_millis(300));
                log.lock().unwrap().push("job released".into());
                release_tx.send(()).unwrap();
            });
            catch_unwind(AssertUnwindSafe(|| {
                let data = Canary { values: vec![1, 2, 3], log: &log };
                let (seen, log) = (&data.values, &log);
                let job = move || {
                    release_rx.recv().unwrap();
                    let sum: u64 = seen.iter().sum();
                    log.lock().unwrap().push(format!("job read {sum}"));
                };
                let _ = hand_off(&queue, job, move || {
                    log.lock().unwrap().push("caller panics".into());
                    panic!("caller failed while its job was queued");
                });
                unreachable!("on_wait panics before the job is released");
            }))
        });
        let p = unwound.unwrap_err();
        assert_eq!(panic_text(&*p), "caller failed while its job was queued");
        let log = log.into_inner().unwrap();
        assert_eq!(log, ["caller panics", "job released", "job read 6", "caller's data dropped"]);
    }
}
