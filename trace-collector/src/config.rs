//! The collector's configuration: Kafka, ClickHouse and the `[collector]` section (listeners,
//! batching, queue bound, retry backoff, retention), with validation.

use std::time::Duration;

use riskstream_common::config::Validate;
use riskstream_common::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

pub use riskstream_store::ClickHouseConfig;

/// The `[collector]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// OTLP/HTTP (`POST /v1/traces`), `/metrics`, `/healthz`, `/readyz`.
    pub listen: String,
    /// OTLP/gRPC; empty disables it.
    pub otlp_grpc_listen: String,
    /// Consume the Kafka `otlp_spans` topic.
    pub kafka_spans: bool,
    /// Consume the Kafka `decisions` topic into the `decisions` table.
    pub kafka_decisions: bool,
    /// Consumer group of both Kafka receivers.
    pub group_id: String,
    /// An insert is sent once this many rows are waiting...
    pub batch_max_rows: usize,
    /// ...or this long after the first row of the batch arrived.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Rows accepted but not yet stored, per table. When full, Kafka consumption pauses and
    /// OTLP requests get 503 / `RESOURCE_EXHAUSTED` with a retry hint.
    pub queue_max_spans: usize,
    /// Inserts in flight at once per table (the next batch is sent while ClickHouse writes
    /// the previous one).
    pub insert_concurrency: usize,
    /// Backoff between attempts of a failed insert: doubles from min to max, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_min: Duration,
    /// Longest backoff between attempts of a failed insert.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// How long an OTLP request waits for its spans to be stored before getting 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `Retry-After` sent with 429/503 answers.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Largest accepted OTLP/HTTP body.
    pub max_request_bytes: usize,
    /// Spans and decisions older than this are deleted (TTL on servers that have it, daily
    /// partition drops otherwise). `0s` keeps everything.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Bearer tokens and HTTP limits of both OTLP listeners: the root `[auth]` and `[http]`
    /// sections, which the riskstream binary copies here (not a key of `[collector]`).
    /// Default: open.
    #[serde(skip)]
    pub access: riskstream_auth::AccessConfig,
}

impl Default for CollectorSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4318".into(),
            otlp_grpc_listen: "127.0.0.1:4317".into(),
            kafka_spans: true,
            kafka_decisions: true,
            group_id: "riskstream-collector".into(),
            batch_max_rows: 20_000,
            batch_max_wait: Duration::from_millis(200),
            queue_max_spans: 200_000,
            insert_concurrency: 2,
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(1),
            max_request_bytes: 16 * 1024 * 1024,
            retention: Duration::ZERO,
            access: riskstream_auth::AccessConfig::default(),
        }
    }
}

/// Everything the collector reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub collector: CollectorSection,
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut v = self.clickhouse.problems("clickhouse");
        let c = &self.collector;
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            v.push(format!(
                "collector.listen must be HOST:PORT, got {:?}",
                c.listen
            ));
        }
        if !c.otlp_grpc_listen.is_empty()
            && c.otlp_grpc_listen.parse::<std::net::SocketAddr>().is_err()
        {
            v.push(format!(
                "collector.otlp_grpc_listen must be HOST:PORT or empty, got {:?}",
                c.otlp_grpc_listen
            ));
        }
        if c.batch_max_rows == 0 {
            v.push("collector.batch_max_rows must be at least 1".into());
        }
        if c.insert_concurrency == 0 {
            v.push("collector.insert_concurrency must be at least 1".into());
        }
        if c.batch_max_wait.is_zero() {
            v.push("collector.batch_max_wait must be positive".into());
        }
        if c.queue_max_spans < c.batch_max_rows {
            v.push(format!(
                "collector.queue_max_spans ({}) must be at least collector.batch_max_rows ({})",
                c.queue_max_spans, c.batch_max_rows
            ));
        }
        if c.retry_backoff_min.is_zero() || c.retry_backoff_min > c.retry_backoff_max {
            v.push(
                "collector.retry_backoff_min must be positive and at most retry_backoff_max".into(),
            );
        }
        if c.request_timeout.is_zero() {
            v.push("collector.request_timeout must be positive".into());
        }
        if c.max_request_bytes == 0 {
            v.push("collector.max_request_bytes must be at least 1".into());
        }
        if (c.kafka_spans || c.kafka_decisions) && self.kafka.brokers.trim().is_empty() {
            v.push("kafka.brokers must be set when a Kafka receiver is enabled".into());
        }
        if c.group_id.trim().is_empty() {
            v.push("collector.group_id must not be empty".into());
        }
        if c.request_timeout >= c.access.http.request_timeout {
            v.push(format!(
                "collector.request_timeout ({:?}) must be below http.request_timeout ({:?})",
                c.request_timeout, c.access.http.request_timeout
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        assert!(Config::default().validate().is_empty());
        let mut c = Config::default();
        c.collector.batch_max_rows = 0;
        c.collector.listen = "nowhere".into();
        c.clickhouse.database = "a;drop".into();
        let problems = c.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn durations_are_humantime_strings_and_unknown_keys_fail() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "collector": {"batch_max_wait": "250ms", "retention": "7days"}
        }))
        .unwrap();
        assert_eq!(c.collector.batch_max_wait, Duration::from_millis(250));
        assert_eq!(c.collector.retention, Duration::from_secs(7 * 86400));
        let err = serde_json::from_value::<Config>(serde_json::json!({"collector": {"bogus": 1}}));
        assert!(err.is_err());
    }
}
