//! Event-time bookkeeping per source partition, synchronous and I/O-free: the watermark, the
//! late-event rule, the reorder buffer that hands events to the feature engine in
//! `(event_time_ms, event_id)` order, and the offset tracker that says which offset may be
//! committed (everything before it has its output acknowledged).
//!
//! Semantics (see docs/features.md):
//! - watermark `W = max event time seen on the partition - out_of_orderness`;
//! - an event with `t < W - allowed_lateness` is *late*: it is not added to state, its decision
//!   is flagged `late`, and it is copied to the late topic;
//! - every other event waits in the reorder buffer until `t <= W - allowed_lateness`, so events
//!   within the bound are processed in event-time order whatever order they arrived in;
//! - an idle partition (no new event for `idle_timeout` of wall time) releases its whole buffer,
//!   so a quiet partition never holds decisions back for long.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Watermark settings.
#[derive(Debug, Clone, Copy)]
pub struct ClockConfig {
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    pub idle_timeout: Duration,
}

/// What the clock did with an admitted event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Waiting in the reorder buffer.
    Buffered,
    /// Behind the watermark by more than the allowed lateness, by `lag_ms`.
    Late { lag_ms: i64 },
}

/// The event-time clock and reorder buffer of one source partition.
#[derive(Debug)]
pub struct PartitionClock<T> {
    cfg: ClockConfig,
    max_event_time_ms: Option<i64>,
    last_arrival: Option<Instant>,
    buffer: BTreeMap<(i64, Uuid), T>,
}

impl<T> PartitionClock<T> {
    pub fn new(cfg: ClockConfig) -> Self {
        Self {
            cfg,
            max_event_time_ms: None,
            last_arrival: None,
            buffer: BTreeMap::new(),
        }
    }

    /// The partition's watermark (`i64::MIN` before its first event).
    pub fn watermark_ms(&self) -> i64 {
        self.max_event_time_ms
            .map_or(i64::MIN, |m| m.saturating_sub(self.cfg.out_of_orderness_ms))
    }

    /// Events up to this time may be processed (no admissible event can arrive before it).
    fn release_bound_ms(&self) -> i64 {
        self.watermark_ms()
            .saturating_sub(self.cfg.allowed_lateness_ms)
    }

    /// How far `t` is behind the watermark (0 if not behind).
    pub fn lag_ms(&self, event_time_ms: i64) -> i64 {
        self.watermark_ms().saturating_sub(event_time_ms).max(0)
    }

    /// Admits one event: late, or buffered until its turn.
    pub fn admit(
        &mut self,
        event_time_ms: i64,
        event_id: Uuid,
        item: T,
        now: Instant,
    ) -> (Admission, Option<T>) {
        self.last_arrival = Some(now);
        if event_time_ms < self.release_bound_ms() {
            return (
                Admission::Late {
                    lag_ms: self.lag_ms(event_time_ms),
                },
                Some(item),
            );
        }
        self.max_event_time_ms = Some(
            self.max_event_time_ms
                .map_or(event_time_ms, |m| m.max(event_time_ms)),
        );
        self.buffer.insert((event_time_ms, event_id), item);
        (Admission::Buffered, None)
    }

    /// Takes the events whose turn has come, in `(event_time_ms, event_id)` order; all of them
    /// when the partition has been idle for `idle_timeout`.
    pub fn release(&mut self, now: Instant) -> Vec<T> {
        let idle = self
            .last_arrival
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.idle_timeout);
        if idle {
            // Idle: no event is coming to reorder against. Later events behind the (now
            // advanced) bound will be late.
            if let Some(&(t, _)) = self.buffer.keys().next_back() {
                let advanced = t.saturating_add(self.cfg.out_of_orderness_ms);
                self.max_event_time_ms =
                    Some(self.max_event_time_ms.map_or(advanced, |m| m.max(advanced)));
            }
            return std::mem::take(&mut self.buffer).into_values().collect();
        }
        let bound = self.release_bound_ms();
        let mut out = Vec::new();
        while let Some(entry) = self.buffer.first_entry() {
            if entry.key().0 > bound {
                break;
            }
            out.push(entry.remove());
        }
        out
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// Which offsets of a partition are done (output acknowledged), and so which may be committed.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    next_after_seen: Option<i64>,
}

impl OffsetTracker {
    /// An offset was read and its output is not yet acknowledged.
    pub fn begin(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.next_after_seen = Some(
            self.next_after_seen
                .map_or(offset + 1, |n| n.max(offset + 1)),
        );
    }

    /// The output of `offset` was acknowledged.
    pub fn done(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// The offset to commit (the next one to read after a restart): everything before it is done.
    pub fn committable(&self) -> Option<i64> {
        match self.pending.first() {
            Some(&first) => Some(first),
            None => self.next_after_seen,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ooo: i64, lateness: i64) -> ClockConfig {
        ClockConfig {
            out_of_orderness_ms: ooo,
            allowed_lateness_ms: lateness,
            idle_timeout: Duration::from_secs(3600),
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn events_within_the_bound_come_out_in_event_time_order() {
        let now = Instant::now();
        let mut c = PartitionClock::new(cfg(100, 0));
        for (t, n) in [(1000, 1), (950, 2), (1020, 3), (990, 4)] {
            assert_eq!(c.admit(t, id(n), t, now).0, Admission::Buffered);
        }
        // Watermark 1020 - 100 = 920: nothing released yet.
        assert!(c.release(now).is_empty());
        c.admit(1100, id(5), 1100, now);
        // Watermark 1000: 950, 990, 1000 released in order.
        assert_eq!(c.release(now), vec![950, 990, 1000]);
        c.admit(1300, id(6), 1300, now);
        assert_eq!(c.release(now), vec![1020, 1100]);
        assert_eq!(c.buffered(), 1);
    }

    #[test]
    fn events_behind_watermark_and_lateness_are_late_with_their_lag() {
        let now = Instant::now();
        let mut c = PartitionClock::new(cfg(100, 50));
        c.admit(10_000, id(1), (), now);
        // Watermark 9_900, release bound 9_850.
        assert_eq!(c.admit(9_860, id(2), (), now).0, Admission::Buffered);
        let (adm, back) = c.admit(9_800, id(3), (), now);
        assert_eq!(adm, Admission::Late { lag_ms: 100 });
        assert!(back.is_some(), "a late event is handed back, not kept");
    }

    #[test]
    fn ties_are_broken_by_event_id() {
        let now = Instant::now();
        let mut c = PartitionClock::new(cfg(1, 0));
        c.admit(5, id(9), "b", now);
        c.admit(5, id(3), "a", now);
        c.admit(6, id(1), "c", now);
        // Watermark 6 - 1 = 5: both events at 5 are released, by event id.
        assert_eq!(c.release(now), vec!["a", "b"]);
    }

    #[test]
    fn an_idle_partition_releases_everything() {
        let t0 = Instant::now();
        let mut c = PartitionClock::new(ClockConfig {
            idle_timeout: Duration::from_millis(50),
            ..cfg(1000, 0)
        });
        c.admit(10, id(1), 10, t0);
        c.admit(5, id(2), 5, t0);
        assert!(c.release(t0).is_empty());
        assert_eq!(c.release(t0 + Duration::from_millis(60)), vec![5, 10]);
        // An event far behind what was released is late now.
        assert!(matches!(c.admit(4, id(3), 4, t0).0, Admission::Late { .. }));
    }

    #[test]
    fn only_offsets_with_everything_before_done_are_committable() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.committable(), None);
        for o in 10..15 {
            t.begin(o);
        }
        t.done(11);
        t.done(12);
        assert_eq!(t.committable(), Some(10));
        t.done(10);
        assert_eq!(t.committable(), Some(13));
        t.done(14);
        t.done(13);
        assert_eq!(t.committable(), Some(15));
        assert_eq!(t.in_flight(), 0);
    }
}
