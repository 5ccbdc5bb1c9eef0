//! How the windows stage commits without losing a window, synchronous and I/O-free: the
//! checkpoint stored as the commit metadata of a repartition partition, and [`Progress`], which
//! holds the partition's commit back to the oldest record still counted in a window that is
//! not final.
//!
//! The committed offset `c` of a partition and its checkpoint `{x, watermarks, dedup}` say:
//! every record before `c` only counts in windows that were purged (final) at `x`, every
//! emission of the records up to `x` was acknowledged, and after `x` the input watermark, the
//! windows' watermark and the duplicate filter were as stored. A restart reads from `c`,
//! restores the records `c..=x` silently into the windows still kept at `x` (emitted if the
//! watermark had passed their end), and goes on live after `x`: the windows are exactly those
//! of the previous owner at `x`, so what it emits after `x` is what the previous owner emitted
//! (or would have): re-emissions are identical.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::keyed::watermark::{Dedup, InputWatermark};

/// The checkpoint format's version (a checkpoint of another version is not used).
pub const CHECKPOINT_VERSION: u32 = 1;
/// Longest checkpoint stored: Kafka's default `offset.metadata.max.bytes` is 4096 (a longer
/// one fails the commit); beyond it the partition is committed without one and a restart
/// replays it from its beginning.
pub const MAX_CHECKPOINT_BYTES: usize = 4000;

/// The state of a repartition partition after its record `x`, beyond its windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub v: u32,
    /// The last record handled: the records from the committed offset up to it are restored.
    pub x: i64,
    /// The windows' watermark (the highest input watermark seen).
    pub windows_watermark_ms: i64,
    pub watermark: InputWatermark,
    pub dedup: Dedup,
}

impl Checkpoint {
    pub fn new(
        x: i64,
        windows_watermark_ms: i64,
        watermark: &InputWatermark,
        dedup: &Dedup,
    ) -> Self {
        Self {
            v: CHECKPOINT_VERSION,
            x,
            windows_watermark_ms,
            watermark: watermark.clone(),
            dedup: dedup.clone(),
        }
    }

    /// The commit metadata (`None`: longer than [`MAX_CHECKPOINT_BYTES`]).
    pub fn encode(&self) -> Option<String> {
        serde_json::to_string(self)
            .ok()
            .filter(|s| s.len() <= MAX_CHECKPOINT_BYTES)
    }

    /// A checkpoint from commit metadata (`None`: empty, not one, or another version).
    pub fn decode(metadata: &str) -> Option<Self> {
        serde_json::from_str::<Self>(metadata)
            .ok()
            .filter(|c| c.v == CHECKPOINT_VERSION)
    }
}

/// A commit the partition may make once the emissions up to `x` are acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    x: i64,
    /// Every record before it only counts in windows purged at `x`.
    bound: i64,
    checkpoint: Option<String>,
}

/// What a partition may commit now: settle `records` (every held record before the bound) and
/// store `checkpoint` with the offset they make committable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub records: Vec<i64>,
    /// `None`: too long to store (a restart replays the partition instead).
    pub checkpoint: Option<String>,
}

/// One partition's records read and not yet settled (the first record of each open window, and
/// records read while no window was open), and the commits proposed for them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Offsets read and not settled, in order.
    held: VecDeque<i64>,
    candidates: VecDeque<Candidate>,
    /// The bound of the newest candidate (proposals only move it forward).
    proposed: Option<i64>,
    /// A proposal was taken: the partition has a checkpoint, stored with every later offset.
    checkpointed: bool,
}

impl Progress {
    /// A record was read (it is settled by a later [`Progress::take_ready`]).
    pub fn read(&mut self, offset: i64) {
        self.held.push_back(offset);
    }

    /// Records read and not settled.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether record `offset` (`opened`: it is the first of a window) may be settled as soon
    /// as it is read. Only a window's first record must wait until the window is purged; any
    /// other may go at once while an earlier record is held, since that one keeps the commit
    /// before both (the commit then moves only when a proposal settles records). So only
    /// windows' first records are held, not every record of their span. Not before the first
    /// proposal was taken: the runner stores the (unchanged) offset on every settled record,
    /// and before a checkpoint is set that store would go without one.
    pub fn settles_at_once(&self, offset: i64, opened: bool) -> bool {
        self.checkpointed && !opened && self.held.front().is_some_and(|&h| h < offset)
    }

    /// Whether, after record `x`, a commit up to `bound` (the oldest position still counted in
    /// a kept window, or `x + 1`) would settle more than the last proposal: then the caller
    /// builds the checkpoint and [`Progress::propose`]s it.
    pub fn would_advance(&self, bound: i64) -> bool {
        self.proposed.is_none_or(|p| bound > p) && self.held.front().is_some_and(|&o| o < bound)
    }

    pub fn propose(&mut self, x: i64, bound: i64, checkpoint: Option<String>) {
        self.proposed = Some(bound);
        self.candidates.push_back(Candidate {
            x,
            bound,
            checkpoint,
        });
    }

    /// The newest proposal whose emissions are all acknowledged (`unacked_from`: the lowest
    /// position with an emission in flight, `None`: none), with the records it settles.
    pub fn take_ready(&mut self, unacked_from: Option<i64>) -> Option<Ready> {
        let mut newest = None;
        while let Some(c) = self.candidates.front() {
            if unacked_from.is_some_and(|u| u <= c.x) {
                break;
            }
            newest = self.candidates.pop_front();
        }
        let c = newest?;
        self.checkpointed = true;
        let mut records = Vec::new();
        while let Some(&o) = self.held.front() {
            if o >= c.bound {
                break;
            }
            records.push(o);
            self.held.pop_front();
        }
        Some(Ready {
            records,
            checkpoint: c.checkpoint,
        })
    }

    /// Whether a proposal waits for acknowledgements.
    pub fn waiting(&self) -> bool {
        !self.candidates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_fits_the_commit_metadata() {
        let mut w = InputWatermark::new(6);
        let mut d = Dedup::default();
        for p in 0..6 {
            w.observe(p, 1_700_000_000_000 + i64::from(p), p == 3);
            let _ = d.admit(p, 123_456_789, 4, ());
        }
        let c = Checkpoint::new(987_654_321, 1_700_000_000_000, &w, &d);
        let text = c.encode().unwrap_or_default();
        assert!(text.len() < 600, "{} bytes: {text}", text.len());
        assert_eq!(Checkpoint::decode(&text), Some(c.clone()));
        assert_eq!(Checkpoint::decode(""), None);
        assert_eq!(Checkpoint::decode("{\"v\":1}"), None);
        let other = text.replacen("\"v\":1", "\"v\":2", 1);
        assert_eq!(Checkpoint::decode(&other), None, "another version");
        // Far more sources than a commit can carry: none is stored.
        let mut many = InputWatermark::new(200);
        for p in 0..200 {
            many.observe(p, i64::MIN + 1, false);
        }
        assert_eq!(Checkpoint::new(1, 1, &many, &d).encode(), None);
    }

    #[test]
    fn only_first_records_of_windows_wait_while_an_earlier_record_is_held() {
        let mut p = Progress::default();
        assert!(
            !p.settles_at_once(5, false),
            "nothing held: it holds the commit itself"
        );
        p.read(5);
        assert!(!p.settles_at_once(6, false), "no checkpoint yet");
        p.read(6);
        p.propose(6, 6, None);
        assert_eq!(p.take_ready(None).map(|r| r.records), Some(vec![5]));
        assert!(p.settles_at_once(7, false));
        assert!(!p.settles_at_once(7, true), "a window's first record waits");
        p.read(7);
        // Settling up to 7 leaves 7 holding the rest.
        p.propose(9, 7, None);
        let ready = p.take_ready(None).unwrap_or_else(|| panic!("ready"));
        assert_eq!(ready.records, vec![6]);
        assert!(p.settles_at_once(10, false));
        assert!(
            !p.settles_at_once(6, false),
            "nothing earlier than 6 is held"
        );
    }

    #[test]
    fn records_settle_up_to_the_bound_once_the_emissions_before_are_acknowledged() {
        let mut p = Progress::default();
        for o in 10..16 {
            p.read(o);
        }
        assert!(!p.would_advance(10), "nothing before 10");
        assert!(p.would_advance(12));
        p.propose(13, 12, Some("at 13".into()));
        assert!(!p.would_advance(12), "already proposed");
        // An emission of record 13 is in flight: not yet.
        assert_eq!(p.take_ready(Some(13)), None);
        assert!(p.waiting());
        p.propose(15, 14, Some("at 15".into()));
        // 13's emission acknowledged, 15's not: the proposal at 13 is ready.
        assert_eq!(
            p.take_ready(Some(15)),
            Some(Ready {
                records: vec![10, 11],
                checkpoint: Some("at 13".into())
            })
        );
        // All acknowledged: the newest proposal settles the rest below its bound.
        assert_eq!(
            p.take_ready(None),
            Some(Ready {
                records: vec![12, 13],
                checkpoint: Some("at 15".into())
            })
        );
        assert_eq!(p.take_ready(None), None);
        assert!(!p.waiting());
        assert_eq!(p.held(), 2);
        // Two ready proposals at once: only the newest counts.
        p.read(16);
        p.propose(16, 15, None);
        p.propose(16, 17, Some("at 16".into()));
        assert_eq!(
            p.take_ready(None),
            Some(Ready {
                records: vec![14, 15, 16],
                checkpoint: Some("at 16".into())
            })
        );
    }
}
