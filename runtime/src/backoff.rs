//! Exponential backoff with jitter, for reconnecting and retrying: `backon`'s schedule (doubling
//! from `min` up to `max`, each delay plus a random part of itself, never giving up) with a
//! `reset` for when the connection came back.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        // Jitter adds up to the current delay again, so the ceiling is half of `max`.
        let builder = ExponentialBuilder::default()
            .with_min_delay(min / 2)
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The next delay, in `[d, 2d)` for `d` doubling from `min / 2` up to `max / 2`: many clients
    /// that failed together do not retry together.
    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times`: the schedule never ends.
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_up_to_the_cap_vary_and_reset() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut backoff = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
        assert!(delays[0] < min, "{delays:?}");
        assert!(delays[11] >= max / 2, "{delays:?}");
        let mut other = Backoff::new(min, max);
        let others: Vec<Duration> = (0..12).map(|_| other.next_delay()).collect();
        assert_ne!(delays, others, "jitter makes two schedules differ");
        backoff.reset();
        assert!(backoff.next_delay() < min);
    }
}
