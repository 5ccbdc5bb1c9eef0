//! What a worker's stages and its admin server share: the feature engine, the scorer, the
//! metrics, the configuration and the control plane's state ([`WorkerState`]); the feature
//! catalog the scorer validates rules and models against; decoding the `events` topic and
//! dead-lettering what any stage cannot use (poison to the dead-letter topic, with its reason).

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use riskstream_common::kafka::Topics;
use riskstream_common::{DecodeLimits, Event, EventDecoder, now_ms};

use crate::config::Config;
use crate::control::ControlState;
use crate::features::{Aggregation, FeatureEngine, FeatureSet};
use crate::metrics::WorkerMetrics;
use crate::output::dead_letter;
use crate::scoring::{FeatureCatalog, FeatureKind, Scorer};
use crate::stage::{Outputs, Record};

/// Largest event record the stages accept (bigger ones go to the dead-letter topic).
const MAX_EVENT_SIZE_BYTES: usize = 1024 * 1024;

/// What the admin server and the stages share.
#[derive(Clone)]
pub struct WorkerState {
    pub engine: Arc<FeatureEngine>,
    pub scorer: Arc<Scorer>,
    pub metrics: WorkerMetrics,
    pub config: Arc<Config>,
    /// Rule and list updates (file watcher, control topics): see [`crate::control`].
    pub control: Arc<ControlState>,
}

/// The feature names and kinds the scorer validates rules and models against.
pub fn catalog_of(set: &FeatureSet) -> FeatureCatalog {
    FeatureCatalog::new(set.features().map(|f| {
        let text =
            f.aggregation() == Aggregation::Last && f.field().is_some_and(|fl| !fl.is_numeric());
        (
            f.name().to_string(),
            if text {
                FeatureKind::Text
            } else {
                FeatureKind::Number
            },
        )
    }))
}

/// The decoder of records read from `events`. They were validated by whoever wrote them; here
/// it only guards against poison (no partition-key or skew rule applies).
pub fn events_decoder() -> EventDecoder {
    EventDecoder::new(DecodeLimits {
        max_event_size_bytes: MAX_EVENT_SIZE_BYTES,
        max_future_skew_ms: i64::MAX / 4,
        required_key: None,
    })
}

/// The `source` label of a dead letter: the role of the topic it was read from.
pub fn source_label(topics: &Topics, topic: &str) -> &'static str {
    [
        (&topics.events, "events"),
        (&topics.repartition, "repartition"),
        (&topics.feature_results, "results"),
        (&topics.rules, "rules"),
        (&topics.lists, "lists"),
    ]
    .into_iter()
    .find(|(t, _)| t.as_str() == topic)
    .map_or("other", |(_, label)| label)
}

impl WorkerState {
    /// The event of a record of `events`, or `None` for poison: counted and copied to the
    /// dead-letter topic (the record is done when the copy is acknowledged).
    pub fn decode_event(
        &self,
        decoder: &EventDecoder,
        producer: &FutureProducer,
        m: Record<'_>,
        out: &mut Outputs,
    ) -> Option<Event> {
        match decoder.decode_slice(m.payload, now_ms()) {
            Ok(e) => Some(e),
            Err(err) => {
                self.metrics.event("dlq");
                self.dead_letter(producer, m, &err.to_string(), err.code(), out);
                None
            }
        }
    }

    /// Copies a record no stage can use (poison event, undecodable or impossible internal
    /// record) to the dead-letter topic with its reason and code; the record is done when the
    /// copy is acknowledged.
    pub fn dead_letter(
        &self,
        producer: &FutureProducer,
        m: Record<'_>,
        reason: &str,
        code: &'static str,
        out: &mut Outputs,
    ) {
        self.metrics
            .dead_lettered(source_label(&self.config.kafka.topics, m.topic), code);
        let topic = &self.config.kafka.topics.events_dlq;
        let copy = dead_letter(producer, topic, m, reason, code);
        out.push(m.partition, m.offset, copy);
    }
}
