//! Plain atomic counters and fixed-bucket histograms of the scoring core (per model version and
//! per scorer), for the worker to export. Recording is lock-free; snapshots are consistent
//! enough for metrics (each counter is read once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use riskstream_common::Outcome;
use serde::Serialize;

/// Upper bounds of the latency buckets, microseconds (one more bucket counts the rest).
pub const LATENCY_BOUNDS_US: [u64; 13] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 20_000,
];
/// Upper bounds of the score buckets (scores are in [0, 1]; the last bucket is [0.9, 1]).
pub const SCORE_BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// A histogram's state at one moment. `counts[i]` counts values `<= upper_bounds[i]` and
/// above the previous bound (not cumulative); a last extra count holds values above every bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    pub upper_bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl HistogramSnapshot {
    /// Cumulative counts per upper bound (Prometheus `le` buckets), then `+Inf`.
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }
}

/// Latency in microseconds.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Bounds and sum in microseconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            upper_bounds: LATENCY_BOUNDS_US.iter().map(|&b| b as f64).collect(),
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_us.load(Ordering::Relaxed) as f64,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Scores in [0, 1], ten buckets of 0.1.
#[derive(Debug, Default)]
pub struct ScoreHistogram {
    buckets: [AtomicU64; SCORE_BOUNDS.len() + 1],
    /// Sum of scores in millionths.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl ScoreHistogram {
    pub fn record(&self, score: f64) {
        let s = if score.is_nan() {
            0.0
        } else {
            score.clamp(0.0, 1.0)
        };
        let i = SCORE_BOUNDS.partition_point(|&b| b < s);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((s * 1e6).round() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            upper_bounds: SCORE_BOUNDS.to_vec(),
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one model version in one role.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Events scored (successfully).
    pub scored: AtomicU64,
    /// Events on which the model failed.
    pub errors: AtomicU64,
    /// Events on which its score decided the outcome.
    pub acted_on: AtomicU64,
    pub scores: ScoreHistogram,
    pub latency: LatencyHistogram,
}

/// A model version's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStatsSnapshot {
    pub model: String,
    pub version: String,
    pub role: String,
    pub scored: u64,
    pub errors: u64,
    pub acted_on: u64,
    pub scores: HistogramSnapshot,
    /// Microseconds per evaluation.
    pub latency_us: HistogramSnapshot,
}

impl ModelStats {
    pub fn snapshot(&self, model: &str, version: &str, role: &str) -> ModelStatsSnapshot {
        ModelStatsSnapshot {
            model: model.to_string(),
            version: version.to_string(),
            role: role.to_string(),
            scored: self.scored.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            acted_on: self.acted_on.load(Ordering::Relaxed),
            scores: self.scores.snapshot(),
            latency_us: self.latency.snapshot(),
        }
    }
}

/// Counters of the scorer as a whole.
#[derive(Debug, Default)]
pub struct ScorerStats {
    decisions: [AtomicU64; Outcome::ALL.len()],
    pub scoring_errors: AtomicU64,
    pub rule_errors: AtomicU64,
    pub list_block_hits: AtomicU64,
    pub list_allow_hits: AtomicU64,
    pub late_events: AtomicU64,
    /// Time of `decide`, from entering it to the decision being built.
    pub decide_latency: LatencyHistogram,
}

/// The scorer's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScorerStatsSnapshot {
    /// Decisions by outcome, in [`Outcome::ALL`] order.
    pub decisions: Vec<(Outcome, u64)>,
    pub scoring_errors: u64,
    pub rule_errors: u64,
    pub list_block_hits: u64,
    pub list_allow_hits: u64,
    pub late_events: u64,
    pub decide_latency_us: HistogramSnapshot,
}

impl ScorerStats {
    pub fn record_outcome(&self, outcome: Outcome) {
        if let Some(c) = self.decisions.get(outcome as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> ScorerStatsSnapshot {
        ScorerStatsSnapshot {
            decisions: Outcome::ALL
                .iter()
                .zip(&self.decisions)
                .map(|(o, c)| (*o, c.load(Ordering::Relaxed)))
                .collect(),
            scoring_errors: self.scoring_errors.load(Ordering::Relaxed),
            rule_errors: self.rule_errors.load(Ordering::Relaxed),
            list_block_hits: self.list_block_hits.load(Ordering::Relaxed),
            list_allow_hits: self.list_allow_hits.load(Ordering::Relaxed),
            late_events: self.late_events.load(Ordering::Relaxed),
            decide_latency_us: self.decide_latency.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_at_their_bounds() {
        let s = ScoreHistogram::default();
        for v in [0.0, 0.1, 0.1001, 0.95, 1.0, 2.0] {
            s.record(v);
        }
        let snap = s.snapshot();
        assert_eq!(snap.counts[0], 2); // 0.0 and 0.1
        assert_eq!(snap.counts[1], 1); // 0.1001
        assert_eq!(snap.counts[9], 3); // 0.95, 1.0, clamped 2.0
        assert_eq!(snap.count, 6);
        assert_eq!(*snap.cumulative().last().unwrap(), 6);

        let l = LatencyHistogram::default();
        l.record(Duration::from_micros(3));
        l.record(Duration::from_secs(1));
        let snap = l.snapshot();
        assert_eq!(snap.counts[2], 1);
        assert_eq!(snap.counts[LATENCY_BOUNDS_US.len()], 1);
        assert_eq!(snap.sum, 1_000_003.0);
    }

    #[test]
    fn outcomes_are_counted_in_order() {
        let s = ScorerStats::default();
        s.record_outcome(Outcome::Decline);
        s.record_outcome(Outcome::Decline);
        s.record_outcome(Outcome::Approve);
        let snap = s.snapshot();
        assert_eq!(
            snap.decisions,
            vec![
                (Outcome::Approve, 1),
                (Outcome::Review, 0),
                (Outcome::Challenge, 0),
                (Outcome::Decline, 2)
            ]
        );
    }
}
