//! ingest's configuration: the `[ingest]` section plus the shared `[kafka]` one.

use std::time::Duration;

use riskstream_common::config::Validate;
use riskstream_common::event::fields;
use riskstream_common::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `host:port` to listen on; port 0 picks a free port.
    pub listen: String,
    /// The event field used as the Kafka record key (and so the partition).
    pub partition_key: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted event (its canonical JSON).
    pub max_event_size_bytes: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// How far in the future an `event_time` may be (clock skew).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How long a record may take to be acknowledged before the request fails with 503.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Bound on draining in-flight requests at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `Retry-After` seconds on 503.
    pub retry_after_secs: u32,
    /// How long `POST /v1/decisions` waits for the decision before answering 202.
    #[serde(with = "humantime_serde")]
    pub decision_timeout: Duration,
    /// The largest `?timeout_ms=` a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_decision_timeout: Duration,
    /// Most requests waiting for a decision at once (503 beyond it).
    pub max_pending_decisions: usize,
    /// How long a decision seen on the decisions topic is served by `GET /v1/decisions/{id}`.
    #[serde(with = "humantime_serde")]
    pub recent_decisions_ttl: Duration,
    /// Bound on the recent-decisions cache (bytes of decision JSON).
    pub recent_decisions_max_bytes: u64,
    /// Bearer tokens and HTTP limits: the root `[auth]` and `[http]` sections, which the
    /// riskstream binary copies here (not a key of `[ingest]`). Default: open.
    #[serde(skip)]
    pub access: riskstream_auth::AccessConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            partition_key: fields::ACCOUNT_ID.into(),
            max_body_bytes: 8 * 1024 * 1024,
            max_event_size_bytes: 64 * 1024,
            max_batch_events: 10_000,
            max_future_skew: Duration::from_secs(300),
            produce_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(15),
            retry_after_secs: 1,
            decision_timeout: Duration::from_millis(200),
            max_decision_timeout: Duration::from_secs(30),
            max_pending_decisions: 100_000,
            recent_decisions_ttl: Duration::from_secs(600),
            recent_decisions_max_bytes: 256 * 1024 * 1024,
            access: riskstream_auth::AccessConfig::default(),
        }
    }
}

impl IngestConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !fields::ENTITY_FIELDS.contains(&self.partition_key.as_str()) {
            v.push(format!(
                "ingest.partition_key must be one of {:?}, got {:?}",
                fields::ENTITY_FIELDS,
                self.partition_key
            ));
        }
        if self.max_body_bytes == 0 || self.max_event_size_bytes == 0 || self.max_batch_events == 0
        {
            v.push(
                "ingest.max_body_bytes, max_event_size_bytes and max_batch_events must be positive"
                    .into(),
            );
        }
        if self.produce_timeout.is_zero() {
            v.push("ingest.produce_timeout must be positive".into());
        }
        if self.decision_timeout > self.max_decision_timeout {
            v.push("ingest.decision_timeout must not exceed ingest.max_decision_timeout".into());
        }
        if self.max_pending_decisions == 0 {
            v.push("ingest.max_pending_decisions must be positive".into());
        }
        if self.access.http.request_timeout <= self.max_decision_timeout {
            v.push(format!(
                "http.request_timeout ({:?}) must exceed ingest.max_decision_timeout ({:?})",
                self.access.http.request_timeout, self.max_decision_timeout
            ));
        }
        v
    }
}

/// Everything ingest needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub ingest: IngestConfig,
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        self.ingest.problems()
    }
}
