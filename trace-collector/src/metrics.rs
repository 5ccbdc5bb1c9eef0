//! The collector's Prometheus metrics (one registry per [`crate::App`]): spans received, stored
//! and rejected by receiver and reason, batch sizes, insert latency and queue depth per table.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Receiver label values.
pub mod receiver {
    pub const KAFKA: &str = "kafka";
    pub const OTLP_HTTP: &str = "otlp_http";
    pub const OTLP_GRPC: &str = "otlp_grpc";
    pub const KAFKA_DECISIONS: &str = "kafka_decisions";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub receiver: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of one collector.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub received: Family<ReceiverLabels, Counter>,
    pub stored: Family<ReceiverLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub batch_rows: HistogramFamily<TableLabels>,
    pub insert_seconds: HistogramFamily<TableLabels>,
    pub insert_errors: Family<TableLabels, Counter>,
    pub queue_rows: Family<TableLabels, Gauge>,
    pub dead_lettered: Family<RejectLabels, Counter>,
    /// Committed lag of the Kafka receivers' consumers (stage `spans`, `decisions`).
    pub consumer_lag: riskstream_common::lag::LagGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("collector");
        let received = Family::<ReceiverLabels, Counter>::default();
        let stored = Family::<ReceiverLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let batch_rows: HistogramFamily<TableLabels> =
            Family::new_with_constructor(batch_histogram);
        let insert_seconds: HistogramFamily<TableLabels> =
            Family::new_with_constructor(latency_histogram);
        let insert_errors = Family::<TableLabels, Counter>::default();
        let queue_rows = Family::<TableLabels, Gauge>::default();
        let dead_lettered = Family::<RejectLabels, Counter>::default();
        registry.register(
            "received_rows",
            "Spans (or decisions) received, by receiver",
            received.clone(),
        );
        registry.register(
            "stored_rows",
            "Spans (or decisions) stored in ClickHouse, by receiver",
            stored.clone(),
        );
        registry.register(
            "rejected_rows",
            "Spans (or decisions) that could not be stored, by receiver and reason",
            rejected.clone(),
        );
        registry.register(
            "batch_rows",
            "Rows per ClickHouse insert",
            batch_rows.clone(),
        );
        registry.register(
            "insert_duration_seconds",
            "Latency of successful ClickHouse inserts",
            insert_seconds.clone(),
        );
        registry.register(
            "insert_errors",
            "Failed ClickHouse insert attempts",
            insert_errors.clone(),
        );
        registry.register(
            "queue_rows",
            "Rows accepted and not yet stored",
            queue_rows.clone(),
        );
        registry.register(
            "dead_lettered_records",
            "Records written to the dead-letter topic, by receiver and reason",
            dead_lettered.clone(),
        );
        let consumer_lag = riskstream_common::lag::LagGauges::default();
        registry.register(
            "consumer_lag",
            "Messages behind the high watermark from the committed offsets, per Kafka receiver",
            consumer_lag.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            received,
            stored,
            rejected,
            batch_rows,
            insert_seconds,
            insert_errors,
            queue_rows,
            dead_lettered,
            consumer_lag,
        }
    }

    pub fn received(&self, receiver: &str, n: usize) {
        self.received
            .get_or_create(&ReceiverLabels {
                receiver: receiver.into(),
            })
            .inc_by(n as u64);
    }

    pub fn stored(&self, receiver: &str, n: usize) {
        self.stored
            .get_or_create(&ReceiverLabels {
                receiver: receiver.into(),
            })
            .inc_by(n as u64);
    }

    /// Spans stored so far, from every span receiver (decisions not counted).
    pub fn spans_stored(&self) -> u64 {
        [receiver::KAFKA, receiver::OTLP_HTTP, receiver::OTLP_GRPC]
            .into_iter()
            .map(|r| {
                self.stored
                    .get_or_create(&ReceiverLabels { receiver: r.into() })
                    .get()
            })
            .sum()
    }

    pub fn rejected(&self, receiver: &str, reason: &str, n: usize) {
        self.rejected
            .get_or_create(&RejectLabels {
                receiver: receiver.into(),
                reason: reason.into(),
            })
            .inc_by(n as u64);
    }

    pub fn dead_lettered(&self, receiver: &str, reason: &str) {
        self.dead_lettered
            .get_or_create(&RejectLabels {
                receiver: receiver.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}
