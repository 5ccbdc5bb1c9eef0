//! ingest's Prometheus metrics (one registry per `App`).

use std::sync::Arc;

use riskstream_common::metrics::{
    Counter, Family, Gauge, Histogram, HttpLabels, ReasonLabel, Registry, latency_histogram,
};

#[derive(Clone)]
pub struct IngestMetrics {
    pub registry: Arc<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub events_accepted: Counter,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub produce_latency: Histogram,
    pub in_flight_requests: Gauge,
}

impl IngestMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("riskstream_ingest");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let events_accepted = Counter::default();
        let events_rejected = Family::<ReasonLabel, Counter>::default();
        let produce_latency = latency_histogram();
        let in_flight_requests = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "events_accepted",
            "Events acknowledged by Kafka",
            events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Events refused, by reason",
            events_rejected.clone(),
        );
        registry.register(
            "produce_latency_seconds",
            "Time from handing a record to the producer to its acknowledgement",
            produce_latency.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight_requests.clone(),
        );
        Self {
            registry: Arc::new(registry),
            http_requests,
            events_accepted,
            events_rejected,
            produce_latency,
            in_flight_requests,
        }
    }

    pub fn reject(&self, reason: &str) {
        self.events_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
