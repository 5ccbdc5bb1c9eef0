//! What a repartition partition's consumers track of its sources, shared by the state and
//! windows stages: the input watermark (per source partition the latest watermark published,
//! idle flags) and the duplicate filter of envelopes re-sent by a new router. Both are plain
//! data, serializable into the windows stage's commit checkpoint.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The input watermark of one repartition partition: the minimum over the source partitions of
/// the latest watermark each published; idle sources do not count until they publish again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputWatermark {
    /// Per source partition: highest watermark seen, idle flag.
    marks: Vec<(i64, bool)>,
}

impl InputWatermark {
    /// `sources`: the partition count of the events topic (every source must be heard from).
    pub fn new(sources: usize) -> Self {
        Self {
            marks: vec![(i64::MIN, false); sources],
        }
    }

    pub fn observe(&mut self, src_partition: i32, watermark_ms: i64, idle: bool) {
        // Decoders refuse impossible partitions; this bound keeps a bad marker from ever
        // sizing the vector (a partition id is at most MAX_SOURCE_PARTITION).
        let Ok(i) = usize::try_from(src_partition) else {
            return;
        };
        if src_partition > super::records::MAX_SOURCE_PARTITION {
            return;
        }
        if i >= self.marks.len() {
            // The events topic grew: the new source holds the watermark until heard from.
            self.marks.resize(i + 1, (i64::MIN, false));
        }
        let m = &mut self.marks[i];
        m.0 = m.0.max(watermark_ms);
        m.1 = idle;
    }

    /// The minimum over the active sources; `i64::MIN` while an active source was never heard
    /// from. When every source is idle, the highest watermark of them all (Flink's rule: an
    /// operator whose inputs are all idle advances to the furthest of them).
    pub fn value_ms(&self) -> i64 {
        let active = self.marks.iter().filter(|(_, idle)| !idle).map(|(w, _)| *w);
        match active.min() {
            Some(w) => w,
            None => self.marks.iter().map(|(w, _)| *w).max().unwrap_or(i64::MIN),
        }
    }
}

/// What [`Dedup::admit`] did with an envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Already received (a router re-sent it after a rebalance): ignore.
    Duplicate,
    /// New: process it now.
    Fresh(T),
}

/// Duplicate detection of one repartition partition: per source partition, the highest
/// (source offset, group) received.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    received: HashMap<i32, (i64, u32)>,
}

impl Dedup {
    pub fn admit<T>(
        &mut self,
        src_partition: i32,
        src_offset: i64,
        group: u32,
        item: T,
    ) -> Arrival<T> {
        let pos = (src_offset, group);
        match self.received.get(&src_partition) {
            Some(&last) if pos <= last => Arrival::Duplicate,
            _ => {
                self.received.insert(src_partition, pos);
                Arrival::Fresh(item)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_watermark_is_the_minimum_of_active_sources() {
        let mut w = InputWatermark::new(3);
        assert_eq!(w.value_ms(), i64::MIN, "nothing heard from any source");
        w.observe(0, 100, false);
        w.observe(1, 50, false);
        assert_eq!(w.value_ms(), i64::MIN, "source 2 not heard from");
        w.observe(2, 70, false);
        assert_eq!(w.value_ms(), 50);
        // A lower marker (a re-started router) never moves a source back.
        w.observe(1, 10, false);
        assert_eq!(w.value_ms(), 50);
        w.observe(1, 50, true);
        assert_eq!(w.value_ms(), 70, "idle source excluded");
        w.observe(0, 100, true);
        w.observe(2, 70, true);
        assert_eq!(w.value_ms(), 100, "all idle: the furthest of them");
        w.observe(4, 5, false);
        assert_eq!(
            w.value_ms(),
            i64::MIN,
            "the events topic grew: source 3 unheard"
        );
        w.observe(3, 9, false);
        assert_eq!(w.value_ms(), 5, "a new source partition counts");
        // An impossible source partition (a hostile marker) never sizes the state.
        w.observe(i32::MAX, 1, false);
        w.observe(-1, 1, false);
        assert_eq!(w.marks.len(), 5);
        assert_eq!(w.value_ms(), 5);
    }

    #[test]
    fn resent_envelopes_are_duplicates_and_everything_else_is_fresh() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(1, 10, 0, 'a'), Arrival::Fresh('a'));
        assert_eq!(d.admit(1, 10, 2, 'b'), Arrival::Fresh('b'));
        // A new router replays offsets 10..: every copy is recognised.
        assert_eq!(d.admit(1, 10, 0, 'x'), Arrival::Duplicate);
        assert_eq!(d.admit(1, 10, 2, 'x'), Arrival::Duplicate);
        // Another source's offsets are independent; event time plays no part.
        assert_eq!(d.admit(2, 3, 0, 'c'), Arrival::Fresh('c'));
        assert_eq!(d.admit(1, 11, 0, 'd'), Arrival::Fresh('d'));
    }
}
