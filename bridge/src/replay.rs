//! The replay window: what the local broker acknowledged in the last few seconds.
//!
//! Mosquitto acknowledges a QoS 1 message as soon as it holds it in memory, and writes its state
//! to disk only every `autosave_interval` seconds (5 in the shipped configuration). Killed in
//! between, it comes back without the messages it had acknowledged since its last save and not yet
//! delivered to the processor — messages the bridge has long acknowledged upstream. So the bridge
//! keeps what the local broker acknowledged for a while longer than that interval, and when the
//! connection to it is lost (the only sign of a crash it gets), moves the window into the spool,
//! ahead of everything not yet acknowledged. The drainer republishes it once the broker is back;
//! what had reached PostgreSQL already is absorbed by the processor's exactly-once store (every
//! message keeps its identity, see `identity`).
//!
//! Bounded by time and bytes: past `max_bytes` the oldest entries go early, counted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Per entry, besides its payload: the deque's slot (time, device id, payload pointer) and the
/// payload's allocation header.
const OVERHEAD: usize = 48;

pub struct ReplayWindow {
    /// Entry times are milliseconds since this instant.
    started: Instant,
    window: Duration,
    max_bytes: usize,
    entries: VecDeque<Delivered>,
    bytes: usize,
    /// Entries dropped before their time because of `max_bytes`.
    pub truncated: u64,
}

/// A message the local broker acknowledged: where it went and the envelope it carried. Compact
/// (40 bytes and the payload's exact length), as a fast bridge holds a few hundred thousand: the
/// payload is copied out of the buffer it was published from, which is larger.
pub struct Delivered {
    at_ms: u64,
    pub device_id: Uuid,
    pub payload: Box<[u8]>,
}

impl ReplayWindow {
    pub fn new(window: Duration, max_bytes: usize) -> ReplayWindow {
        ReplayWindow {
            started: Instant::now(),
            window,
            max_bytes,
            entries: VecDeque::new(),
            bytes: 0,
            truncated: 0,
        }
    }

    /// Remembers a message the local broker just acknowledged.
    pub fn delivered(&mut self, device_id: Uuid, payload: &[u8]) {
        let now = self.now_ms();
        self.bytes += payload.len() + OVERHEAD;
        self.entries.push_back(Delivered {
            at_ms: now,
            device_id,
            payload: payload.into(),
        });
        let window = self.window_ms();
        while let Some(oldest) = self.entries.front() {
            let expired = now - oldest.at_ms > window;
            let over = self.bytes > self.max_bytes;
            if !expired && !over {
                break;
            }
            if over && !expired {
                self.truncated += 1;
            }
            let oldest = self.entries.pop_front().expect("front exists");
            self.bytes -= oldest.payload.len() + OVERHEAD;
        }
    }

    /// Everything in the window, oldest first; the window is empty afterwards.
    pub fn take(&mut self) -> Vec<Delivered> {
        self.bytes = 0;
        let oldest = self.now_ms().saturating_sub(self.window_ms());
        let taken = self
            .entries
            .drain(..)
            .filter(|d| d.at_ms >= oldest)
            .collect();
        // A burst's deque would otherwise keep its room for good.
        self.entries.shrink_to_fit();
        taken
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_newest_within_its_bytes_and_counts_what_went_early() {
        let mut window = ReplayWindow::new(Duration::from_secs(60), 10 * (OVERHEAD + 4));
        for i in 0..25u32 {
            window.delivered(Uuid::nil(), &i.to_le_bytes());
        }
        assert_eq!(window.len(), 10);
        assert_eq!(window.truncated, 15);
        let taken = window.take();
        let first = u32::from_le_bytes(taken[0].payload[..].try_into().expect("4 bytes"));
        assert_eq!(first, 15, "oldest first, the newest kept");
        assert!(window.is_empty());
    }

    #[test]
    fn entries_older_than_the_window_are_not_replayed() {
        let mut window = ReplayWindow::new(Duration::from_millis(30), 1 << 20);
        window.delivered(Uuid::nil(), b"old");
        std::thread::sleep(Duration::from_millis(60));
        window.delivered(Uuid::nil(), b"new");
        let taken: Vec<_> = window.take().into_iter().map(|d| d.payload).collect();
        assert_eq!(taken, [Box::from(&b"new"[..])]);
    }
}
