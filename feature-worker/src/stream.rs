//! Event-time bookkeeping per source partition, synchronous and I/O-free: the watermark, how
//! late each event is, the short reorder wait that hands events to the feature engine in
//! `(event_time_ms, event_id)` order when they arrive within it, and the offset tracker that
//! says which offset may be committed (everything before it has its output acknowledged).
//!
//! Semantics (see docs/features.md, "Time, disorder and lateness"):
//! - watermark `W = max event time seen on the partition - out_of_orderness`;
//! - an event's *lateness* is `max(0, W - t)` with `W` as it was before the event: it is
//!   *late* when that is positive and *too late* when it exceeds the allowed lateness (then it
//!   is copied to the late topic and no longer updates window outputs);
//! - every event, on time or late, is decided: it waits at most `reorder_wait` of wall time
//!   (zero: not at all), and events released together come out in `(event_time_ms,
//!   event_id)` order, so small disorder within the wait is undone before the features are
//!   computed. Nothing ever waits for the watermark.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Watermark and reorder settings.
#[derive(Debug, Clone, Copy)]
pub struct ClockConfig {
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    /// Longest wall time an event waits for earlier-timed events before it is decided.
    pub reorder_wait: Duration,
}

/// How late an event was when it arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    /// How far the event's time was behind the partition's watermark (0: not behind).
    pub lateness_ms: i64,
    /// Behind the watermark by more than the allowed lateness.
    pub too_late: bool,
}

impl Lateness {
    /// Behind the watermark at all.
    pub fn late(&self) -> bool {
        self.lateness_ms > 0
    }
}

/// The watermark of one source partition and the late rule: `W = max event time seen -
/// out_of_orderness`; an event's lateness is `max(0, W - t)` with `W` as it was before the
/// event, too late beyond `allowed_lateness_ms`. The local clock below and the keyed router
/// both apply it.
#[derive(Debug, Clone, Copy)]
pub struct Watermark {
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    max_event_time_ms: Option<i64>,
}

impl Watermark {
    pub fn new(out_of_orderness_ms: i64, allowed_lateness_ms: i64) -> Self {
        Self {
            out_of_orderness_ms,
            allowed_lateness_ms,
            max_event_time_ms: None,
        }
    }

    pub fn of(cfg: &ClockConfig) -> Self {
        Self::new(cfg.out_of_orderness_ms, cfg.allowed_lateness_ms)
    }

    /// `max event time - out_of_orderness` (`i64::MIN` before the first event).
    pub fn watermark_ms(&self) -> i64 {
        self.max_event_time_ms
            .map_or(i64::MIN, |m| m.saturating_sub(self.out_of_orderness_ms))
    }

    /// How late `event_time_ms` is against the current watermark.
    pub fn lateness_of(&self, event_time_ms: i64) -> Lateness {
        let lateness_ms = self.watermark_ms().saturating_sub(event_time_ms).max(0);
        Lateness {
            lateness_ms,
            too_late: lateness_ms > self.allowed_lateness_ms,
        }
    }

    /// Admits an event: its lateness against the watermark before it; then the watermark may
    /// advance.
    pub fn admit(&mut self, event_time_ms: i64) -> Lateness {
        let lateness = self.lateness_of(event_time_ms);
        self.max_event_time_ms = Some(
            self.max_event_time_ms
                .map_or(event_time_ms, |m| m.max(event_time_ms)),
        );
        lateness
    }
}

/// Sort key of a waiting event: event time, event id, arrival sequence (duplicates kept).
type Slot = (i64, Uuid, u64);

/// The event-time clock and reorder wait of one source partition.
#[derive(Debug)]
pub struct PartitionClock<T> {
    reorder_wait: Duration,
    watermark: Watermark,
    seq: u64,
    waiting: BTreeMap<Slot, (T, Lateness)>,
    /// Arrival time and slot of every waiting event, in arrival order.
    arrivals: VecDeque<(Instant, Slot)>,
}

impl<T> PartitionClock<T> {
    pub fn new(cfg: ClockConfig) -> Self {
        Self {
            reorder_wait: cfg.reorder_wait,
            watermark: Watermark::of(&cfg),
            seq: 0,
            waiting: BTreeMap::new(),
            arrivals: VecDeque::new(),
        }
    }

    /// The partition's watermark (`i64::MIN` before its first event).
    pub fn watermark_ms(&self) -> i64 {
        self.watermark.watermark_ms()
    }

    /// How late `t` is against the current watermark.
    pub fn lateness_of(&self, event_time_ms: i64) -> Lateness {
        self.watermark.lateness_of(event_time_ms)
    }

    /// Admits one event: its lateness (against the watermark before it), then the watermark
    /// advances. The event waits until [`PartitionClock::release`] hands it out.
    pub fn admit(&mut self, event_time_ms: i64, event_id: Uuid, item: T, now: Instant) -> Lateness {
        let lateness = self.watermark.admit(event_time_ms);
        self.seq += 1;
        let slot = (event_time_ms, event_id, self.seq);
        self.waiting.insert(slot, (item, lateness));
        self.arrivals.push_back((now, slot));
        lateness
    }

    /// Takes the events whose wait is over, with every event ordered before them (they come
    /// out early rather than out of order), in `(event_time_ms, event_id)` order.
    pub fn release(&mut self, now: Instant) -> Vec<(T, Lateness)> {
        let mut bound: Option<Slot> = None;
        while let Some(&(at, slot)) = self.arrivals.front() {
            if !self.waiting.contains_key(&slot) {
                // Already released early with an event ordered after it.
                self.arrivals.pop_front();
                continue;
            }
            if now.saturating_duration_since(at) < self.reorder_wait {
                break;
            }
            self.arrivals.pop_front();
            bound = Some(bound.map_or(slot, |b| b.max(slot)));
        }
        let Some(bound) = bound else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > bound {
                break;
            }
            out.push(entry.remove());
        }
        out
    }

    /// Everything waiting, in order (shutdown drain).
    pub fn release_all(&mut self) -> Vec<(T, Lateness)> {
        self.arrivals.clear();
        std::mem::take(&mut self.waiting).into_values().collect()
    }

    /// When the oldest waiting event's wait ends (perhaps earlier: an event released early
    /// still has its entry until the next release).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.arrivals.front().map(|(at, _)| *at + self.reorder_wait)
    }

    pub fn buffered(&self) -> usize {
        self.waiting.len()
    }

    /// The events waiting, in release order.
    pub fn waiting(&self) -> impl Iterator<Item = &T> {
        self.waiting.values().map(|(item, _)| item)
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

    fn cfg(ooo: i64, lateness: i64, wait_ms: u64) -> ClockConfig {
        ClockConfig {
            out_of_orderness_ms: ooo,
            allowed_lateness_ms: lateness,
            reorder_wait: Duration::from_millis(wait_ms),
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn items<T>(v: Vec<(T, Lateness)>) -> Vec<T> {
        v.into_iter().map(|x| x.0).collect()
    }

    #[test]
    fn without_a_reorder_wait_every_event_is_released_on_arrival() {
        let now = Instant::now();
        let mut c = PartitionClock::new(cfg(100, 0, 0));
        for (t, n) in [(1000, 1), (950, 2), (5000, 3), (10, 4)] {
            c.admit(t, id(n), t, now);
            assert_eq!(items(c.release(now)), vec![t]);
        }
        assert_eq!(c.buffered(), 0);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn events_arriving_within_the_wait_come_out_in_event_time_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = PartitionClock::new(cfg(100, 0, 5));
        c.admit(1000, id(1), 1000, t0);
        c.admit(950, id(2), 950, t0 + ms(1));
        c.admit(1020, id(3), 1020, t0 + ms(2));
        assert!(c.release(t0 + ms(4)).is_empty(), "nothing waited 5 ms yet");
        assert_eq!(c.next_deadline(), Some(t0 + ms(5)));
        // The first event's wait is over: it and the earlier-timed 950 come out, in order.
        assert_eq!(items(c.release(t0 + ms(5))), vec![950, 1000]);
        c.admit(990, id(4), 990, t0 + ms(6));
        // 1020's wait is over; 990 is ordered before it, so it comes out early, in order.
        assert_eq!(items(c.release(t0 + ms(7))), vec![990, 1020]);
        c.admit(900, id(5), 900, t0 + ms(8));
        assert!(c.release(t0 + ms(12)).is_empty());
        assert_eq!(items(c.release(t0 + ms(13))), vec![900]);
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn lateness_is_measured_against_the_watermark_before_the_event() {
        let now = Instant::now();
        let mut c = PartitionClock::new(cfg(100, 50, 0));
        assert_eq!(c.admit(10_000, id(1), (), now), Lateness::default());
        // Watermark 9_900.
        assert_eq!(c.admit(9_950, id(2), (), now).lateness_ms, 0);
        let l = c.admit(9_860, id(3), (), now);
        assert_eq!((l.lateness_ms, l.late(), l.too_late), (40, true, false));
        let l = c.admit(9_800, id(4), (), now);
        assert_eq!((l.lateness_ms, l.too_late), (100, true));
        // A late event does not move the watermark; a newer one does.
        assert_eq!(c.watermark_ms(), 9_900);
        c.admit(20_000, id(5), (), now);
        assert_eq!(c.watermark_ms(), 19_900);
        // Every event is handed out, with its lateness.
        let out = c.release(now);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].1.lateness_ms, 100);
    }

    #[test]
    fn the_bare_watermark_measures_lateness_against_the_watermark_before_the_event() {
        let mut c = Watermark::new(100, 50);
        assert_eq!(c.watermark_ms(), i64::MIN);
        assert_eq!(c.admit(10_000).lateness_ms, 0);
        assert_eq!(c.watermark_ms(), 9_900);
        let l = c.admit(9_850);
        assert_eq!((l.lateness_ms, l.late(), l.too_late), (50, true, false));
        let l = c.admit(9_849);
        assert_eq!((l.lateness_ms, l.too_late), (51, true));
        // A late event does not move the watermark; a newer one does.
        assert_eq!(c.watermark_ms(), 9_900);
        assert_eq!(c.admit(10_500).lateness_ms, 0);
        assert_eq!(c.watermark_ms(), 10_400);
    }

    #[test]
    fn ties_are_broken_by_event_id_and_duplicates_are_kept() {
        let now = Instant::now();
        let mut c = PartitionClock::new(cfg(1, 0, 10));
        c.admit(5, id(9), "b", now);
        c.admit(5, id(3), "a", now);
        c.admit(5, id(3), "a2", now);
        c.admit(4, id(1), "c", now);
        assert_eq!(items(c.release_all()), vec!["c", "a", "a2", "b"]);
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
