//! Deciding one event, as local mode and keyed mode's join stage both do: the event's
//! processing span (a child of its producer's), the `features.update` and `score` spans, the
//! timeliness and decision metrics, and the decision record (with the trace context of its
//! `kafka.produce` span) plus, for an event later than the allowed lateness, the copy of its
//! source record to the late topic.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use rdkafka::producer::FutureProducer;
use riskstream_common::telemetry::link_span;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Event, FeatureValue};

use crate::output::{DecisionTopics, LateCopy, send_decision};
use crate::scoring::DecideContext;
use crate::stream::Lateness;
use crate::worker::WorkerState;

/// An event to decide and what is known of it before its features.
pub struct ToDecide<'a> {
    pub event: &'a Event,
    /// The `traceparent` the event arrived with (the producer's span), if valid.
    pub parent: Option<&'a TraceParent>,
    /// Where the event was read (span attributes).
    pub partition: i32,
    pub offset: i64,
    pub late: bool,
    pub lateness: Lateness,
    /// Some feature group's values never arrived (an expired join).
    pub features_incomplete: bool,
    /// When the event was read: its latency starts here.
    pub started: Instant,
    /// Too late: the source record, copied to the late topic.
    pub late_copy: Option<LateCopy>,
}

/// The features of an event by name, and whether it was beyond its key's state retention.
pub type Features = (BTreeMap<String, FeatureValue>, bool);

/// Computes the features (`features`, inside the event's spans), scores, counts, and enqueues
/// the outputs; the future resolves when Kafka acknowledged them.
pub fn decide(
    state: &WorkerState,
    producer: &FutureProducer,
    e: ToDecide<'_>,
    features: &dyn Fn() -> Features,
) -> impl Future<Output = ()> + Send + use<> {
    let span = tracing::info_span!(
        "process event",
        otel.name = "riskstream.worker.process",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.kafka.partition = e.partition,
        messaging.kafka.offset = e.offset,
        event_id = %e.event.event_id,
        late = e.late,
    );
    let trace = link_span(&span, e.parent);
    let _entered = span.enter();
    let (features, beyond_retention) =
        tracing::info_span!("features.update", otel.name = "riskstream.features.update")
            .in_scope(features);
    state
        .metrics
        .timeliness(timeliness_label(e.lateness, beyond_retention));
    let ctx = DecideContext {
        trace_id: trace.trace_id_hex(),
        late: e.late,
        lateness_ms: e.lateness.lateness_ms,
        beyond_retention,
        features_incomplete: e.features_incomplete,
        started: e.started,
    };
    let decision = tracing::info_span!("score", otel.name = "riskstream.score")
        .in_scope(|| state.scorer.decide(e.event, &features, &ctx));
    state.metrics.decided(&decision, e.started.elapsed());
    let topics = &state.config.kafka.topics;
    let produce_span = tracing::info_span!(
        "kafka.produce",
        otel.name = "riskstream.decision.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.destination.name = %topics.decisions,
        outcome = decision.outcome.as_str(),
    );
    let out_trace = link_span(&produce_span, Some(&trace));
    let sent = send_decision(
        producer,
        DecisionTopics {
            decisions: &topics.decisions,
            late: &topics.events_late,
        },
        &decision,
        e.late_copy,
        out_trace,
    );
    tracing::Instrument::instrument(sent, produce_span)
}

/// The metric label of an event's timeliness: `on_time`, `late` (behind the watermark within
/// the allowed lateness), `too_late` (beyond it: also copied to the late topic) or
/// `beyond_retention` (older than its key's state retention).
pub fn timeliness_label(lateness: Lateness, beyond_retention: bool) -> &'static str {
    if beyond_retention {
        "beyond_retention"
    } else if lateness.too_late {
        "too_late"
    } else if lateness.late() {
        "late"
    } else {
        "on_time"
    }
}
