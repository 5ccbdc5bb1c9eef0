//! The worker's Prometheus metrics (one registry per `App`; labels never carry entity keys).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use riskstream_common::Decision;
use riskstream_common::metrics::{Counter, Family, Gauge, Histogram, Registry, latency_histogram};

use crate::features::FeatureEngine;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimelinessLabel {
    pub timeliness: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

/// A window output's name (from the feature file: bounded) and what happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowOutputLabel {
    pub output: String,
    /// `emitted` (first emission of a window), `updated` (re-emission after a late event),
    /// `too_late` (the event's windows were final: side output).
    pub kind: String,
}

/// A dead letter's source topic (by role: `events`, `repartition`, `results`, `rules`,
/// `lists`) and its code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub source: String,
    pub code: String,
}

#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Arc<Registry>,
    /// Events by what happened to them: `decided`, `dlq`.
    pub events: Family<ResultLabel, Counter>,
    /// Decided events by timeliness: `on_time`, `late`, `too_late`, `beyond_retention`.
    pub timeliness: Family<TimelinessLabel, Counter>,
    pub decisions: Family<OutcomeLabel, Counter>,
    pub processing_latency: Histogram,
    pub state_keys: Gauge,
    pub state_bytes: Gauge,
    pub state_evictions: Family<CauseLabel, Counter>,
    /// Records copied to the dead-letter topic, by source topic role and code.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    seen_evictions: Arc<[AtomicU64; 3]>,
    /// Committed lag of each stage's consumer (`local`, `route`, `state`, `join`, `windows`).
    pub consumer_lag: riskstream_common::lag::LagGauges,
    /// Window outputs: emissions, updates and too-late events per definition.
    pub window_outputs: Family<WindowOutputLabel, Counter>,
    /// Windows kept (not yet final) by the windows stage, over its partitions.
    pub window_outputs_open: Gauge,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("riskstream_worker");
        let events = Family::<ResultLabel, Counter>::default();
        let timeliness = Family::<TimelinessLabel, Counter>::default();
        let decisions = Family::<OutcomeLabel, Counter>::default();
        let processing_latency = latency_histogram();
        let state_keys = Gauge::default();
        let state_bytes = Gauge::default();
        let state_evictions = Family::<CauseLabel, Counter>::default();
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        r.register(
            "events",
            "Events read, by result (decided, dlq)",
            events.clone(),
        );
        r.register(
            "event_timeliness",
            "Decided events by timeliness: on_time, late (behind the watermark, within the allowed lateness), too_late (beyond it; copied to the late topic), beyond_retention (older than the key's state retention)",
            timeliness.clone(),
        );
        r.register("decisions", "Decisions by outcome", decisions.clone());
        r.register(
            "processing_latency_seconds",
            "From reading an event to its decision being handed to the producer",
            processing_latency.clone(),
        );
        r.register(
            "state_keys",
            "Keys held in window state",
            state_keys.clone(),
        );
        r.register(
            "state_bytes",
            "Approximate bytes of window state",
            state_bytes.clone(),
        );
        r.register(
            "state_evictions",
            "Keys evicted from window state by cause (size = state lost)",
            state_evictions.clone(),
        );
        r.register(
            "dead_letters",
            "Records copied to the dead-letter topic, by source topic (events, repartition, results, rules, lists) and code",
            dead_letters.clone(),
        );
        let consumer_lag = riskstream_common::lag::LagGauges::default();
        r.register(
            "consumer_lag",
            "Messages behind the high watermark from the committed offsets, per stage's consumer",
            consumer_lag.clone(),
        );
        let window_outputs = Family::<WindowOutputLabel, Counter>::default();
        r.register(
            "window_outputs",
            "Window outputs by definition and kind: emitted (a window at its close), updated (re-emitted after a late event within the allowed lateness), too_late (every window of the event final; to the side output)",
            window_outputs.clone(),
        );
        let window_outputs_open = Gauge::default();
        r.register(
            "window_outputs_open",
            "Windows the windows stage keeps (not yet past their allowed lateness)",
            window_outputs_open.clone(),
        );
        Self {
            registry: Arc::new(r),
            events,
            timeliness,
            decisions,
            processing_latency,
            state_keys,
            state_bytes,
            state_evictions,
            dead_letters,
            seen_evictions: Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            consumer_lag,
            window_outputs,
            window_outputs_open,
        }
    }

    /// One window-output emission or too-late event (`kind`: a fixed label).
    pub fn window_output(&self, output: &str, kind: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.window_outputs
            .get_or_create(&WindowOutputLabel {
                output: output.to_string(),
                kind: kind.to_string(),
            })
            .inc_by(n);
    }

    pub fn event(&self, result: &str) {
        self.events
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// One record copied to the dead-letter topic.
    pub fn dead_lettered(&self, source: &str, code: &str) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                source: source.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// One decided event's timeliness (a fixed, low-cardinality label).
    pub fn timeliness(&self, label: &'static str) {
        self.timeliness
            .get_or_create(&TimelinessLabel {
                timeliness: label.to_string(),
            })
            .inc();
    }

    /// The lag reporter of one stage's consumer.
    pub fn lag_reporter(&self, stage: &'static str) -> riskstream_common::lag::LagReporter {
        riskstream_common::lag::LagReporter::new(self.consumer_lag.clone(), stage)
    }

    pub fn decided(&self, d: &Decision, latency: Duration) {
        self.event("decided");
        self.decisions
            .get_or_create(&OutcomeLabel {
                outcome: d.outcome.as_str().to_string(),
            })
            .inc();
        self.processing_latency.observe(latency.as_secs_f64());
    }

    /// Copies the engine's state figures into the gauges and counters.
    pub fn observe_state(&self, engine: &FeatureEngine) {
        self.state_keys.set(engine.entry_count() as i64);
        self.state_bytes.set(engine.weighted_size_bytes() as i64);
        let s = engine.stats().snapshot();
        for (i, (cause, total)) in [
            ("expired", s.evicted_expired),
            ("size", s.evicted_size),
            ("explicit", s.evicted_explicit),
        ]
        .into_iter()
        .enumerate()
        {
            let before = self.seen_evictions[i].swap(total, Ordering::Relaxed);
            if total > before {
                self.state_evictions
                    .get_or_create(&CauseLabel {
                        cause: cause.into(),
                    })
                    .inc_by(total - before);
            }
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
