//! How long to wait before retrying Redis: from 100 ms, doubling per failure up to 5 s, back to
//! the start after a success. Every loop that talks to the broker retries this way.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const MOST: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Backoff {
        Backoff(FIRST)
    }

    /// The wait before the next retry; the one after it is twice as long (at most 5 s).
    pub fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MOST);
        wait
    }

    /// A call succeeded: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.0 = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), FIRST);
    }
}
