//! Kafka plumbing shared by every service: connection settings, producer and consumer
//! builders with the pipeline's delivery guarantees, topic names, and header helpers.
//!
//! Only the Kafka protocol is used, so the same code runs against the embedded mock broker
//! (`riskstream broker`) and Apache Kafka.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use serde::{Deserialize, Serialize};

/// Default topic names. Every one is overridable in `[kafka.topics]`.
pub mod topic {
    pub const EVENTS: &str = "events";
    pub const EVENTS_DLQ: &str = "events.dlq";
    pub const EVENTS_LATE: &str = "events.late";
    pub const DECISIONS: &str = "decisions";
    pub const OTLP_SPANS: &str = "otlp_spans";
    pub const SPANS_DLQ: &str = "otlp_spans.dlq";
    pub const RULES: &str = "rules";
    pub const LISTS: &str = "lists";
    /// The keyBy repartition topic (events keyed by feature group and entity key).
    pub const REPARTITION: &str = "features.repartition";
    /// Per-event partial feature results, keyed by event id, gathered for scoring.
    pub const FEATURE_RESULTS: &str = "features.partial";
    /// Window outputs: per (definition, entity key, window) aggregates at window close and
    /// their late updates.
    pub const WINDOW_OUTPUTS: &str = "window_outputs";
    /// Events too late for a window output (every window of theirs already final).
    pub const WINDOW_OUTPUTS_LATE: &str = "window_outputs.late";
    /// Keyed state changelog (compacted): the newest state per (feature group, entity key),
    /// co-partitioned with the repartition topic; restored from on assignment.
    pub const CHANGELOG: &str = "features.changelog";
}

/// Header names the pipeline reads and writes.
pub mod header {
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// On dead-lettered records: why, and where from.
    pub const DLQ_REASON: &str = "riskstream-dlq-reason";
    pub const DLQ_ERROR_CODE: &str = "riskstream-dlq-code";
    pub const DLQ_SOURCE_TOPIC: &str = "riskstream-dlq-source-topic";
    pub const DLQ_SOURCE_PARTITION: &str = "riskstream-dlq-source-partition";
    pub const DLQ_SOURCE_OFFSET: &str = "riskstream-dlq-source-offset";
    /// On a dead letter whose payload was cut to [`super::DLQ_MAX_PAYLOAD_BYTES`]: the
    /// original payload's size in bytes.
    pub const DLQ_TRUNCATED_FROM: &str = "riskstream-dlq-truncated-from";
}

/// Largest payload a dead letter carries whole. A poison record can be larger than any
/// producer may send (it reached the topic compressed): its first this many bytes are copied,
/// with [`header::DLQ_TRUNCATED_FROM`], rather than retrying a copy Kafka can never take.
pub const DLQ_MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// The payload a dead letter of `payload` carries, and the original size when it was cut.
pub fn dead_letter_payload(payload: &[u8]) -> (&[u8], Option<String>) {
    if payload.len() <= DLQ_MAX_PAYLOAD_BYTES {
        (payload, None)
    } else {
        (
            &payload[..DLQ_MAX_PAYLOAD_BYTES],
            Some(payload.len().to_string()),
        )
    }
}

/// Topic names in use (defaults from [`topic`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Transactions from ingest and `produce` (key: the partition key, header `traceparent`).
    pub events: String,
    /// Records the worker cannot use (poison events, undecodable internal records, rejected
    /// control records), copied with the reason in headers.
    pub events_dlq: String,
    /// Copies of events later than the allowed lateness (still decided), for replay.
    pub events_late: String,
    /// One decision per event, keyed by event id (ingest's synchronous endpoint waits on it).
    pub decisions: String,
    /// OTLP spans of every service (protobuf `ExportTraceServiceRequest`), read by the collector.
    pub otlp_spans: String,
    /// Spans and decisions the collector cannot store, with the reason in headers.
    pub spans_dlq: String,
    /// Rule-set updates (compacted; one key keeps them in order).
    pub rules: String,
    /// Allow/block list updates (compacted).
    pub lists: String,
    /// The keyBy repartition topic: events keyed by (feature group, entity key).
    pub repartition: String,
    /// Per-event partial feature results, keyed by event id, gathered for scoring.
    pub feature_results: String,
    /// Window outputs (keyed mode): one record per emission of a `[[window_output]]` window, keyed by entity key; a late update re-emits the window with a higher count.
    pub window_outputs: String,
    /// Events too late for a window output (all their windows final), keyed by entity key.
    pub window_outputs_late: String,
    /// Keyed state changelog (compacted, co-partitioned with `repartition`): the newest state
    /// of every (feature group, entity key), restored from when a partition is assigned.
    pub changelog: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            events: topic::EVENTS.into(),
            events_dlq: topic::EVENTS_DLQ.into(),
            events_late: topic::EVENTS_LATE.into(),
            decisions: topic::DECISIONS.into(),
            otlp_spans: topic::OTLP_SPANS.into(),
            spans_dlq: topic::SPANS_DLQ.into(),
            rules: topic::RULES.into(),
            lists: topic::LISTS.into(),
            repartition: topic::REPARTITION.into(),
            feature_results: topic::FEATURE_RESULTS.into(),
            window_outputs: topic::WINDOW_OUTPUTS.into(),
            window_outputs_late: topic::WINDOW_OUTPUTS_LATE.into(),
            changelog: topic::CHANGELOG.into(),
        }
    }
}

impl Topics {
    /// Every topic name with the same random suffix: isolated topics for a test.
    pub fn with_suffix(suffix: &str) -> Self {
        let d = Self::default();
        let s = |t: String| format!("{t}-{suffix}");
        Self {
            events: s(d.events),
            events_dlq: s(d.events_dlq),
            events_late: s(d.events_late),
            decisions: s(d.decisions),
            otlp_spans: s(d.otlp_spans),
            spans_dlq: s(d.spans_dlq),
            rules: s(d.rules),
            lists: s(d.lists),
            repartition: s(d.repartition),
            feature_results: s(d.feature_results),
            window_outputs: s(d.window_outputs),
            window_outputs_late: s(d.window_outputs_late),
            changelog: s(d.changelog),
        }
    }

    /// Every topic the pipeline uses, internal ones included.
    pub fn all(&self) -> Vec<&str> {
        vec![
            &self.events,
            &self.events_dlq,
            &self.events_late,
            &self.decisions,
            &self.otlp_spans,
            &self.spans_dlq,
            &self.rules,
            &self.lists,
            &self.repartition,
            &self.feature_results,
            &self.window_outputs,
            &self.window_outputs_late,
            &self.changelog,
        ]
    }
}

/// Connection and client settings for Kafka. `RISKSTREAM__KAFKA__BROKERS` / `--brokers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Kafka `client.id` of every client (seen in broker logs and quotas).
    pub client_id: String,
    /// How long the producer keeps trying to deliver one record before reporting failure; 0:
    /// never (librdkafka re-sends it, in order, until Kafka acknowledges it). The worker's
    /// producer always uses 0, ingest's uses `ingest.produce_timeout`.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How long the producer waits to batch records (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Longest time a fetch waits for data (`fetch.wait.max.ms`). Kafka answers a fetch as soon
    /// as data arrives, so this bounds only idle polling, not latency; the embedded mock broker
    /// does not, which is why the demo sets it to a few milliseconds there.
    #[serde(with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// Consumer group `session.timeout.ms`: how long a silent member keeps its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Consumer group `heartbeat.interval.ms` (well below the session timeout).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Compression for produced batches: none, gzip, snappy, lz4, zstd.
    pub compression: String,
    /// Static group membership (`group.instance.id`) for this process's group consumers; empty:
    /// dynamic membership. Give each replica a stable, unique id (a StatefulSet pod name): a
    /// restart within `session_timeout` takes its partitions back without a rebalance, but a
    /// stopped member keeps them until `session_timeout` passes.
    pub group_instance_id: String,
    pub topics: Topics,
    /// Partitions, retention and cleanup of the topics (`riskstream topics create`).
    pub provision: crate::topics::Provision,
    /// Any further librdkafka property, passed through as is (applies to every client).
    pub extra: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "riskstream".into(),
            message_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(2),
            fetch_wait_max: Duration::from_millis(100),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            compression: "lz4".into(),
            group_instance_id: String::new(),
            topics: Topics::default(),
            provision: crate::topics::Provision::default(),
            extra: BTreeMap::new(),
        }
    }
}

/// Longest wait between reconnection attempts to a broker that is down (librdkafka's
/// `reconnect.backoff.max.ms`, 10 s by default; the Java client's is 1 s). librdkafka checks the
/// delivery timeouts of the records of a partition whose leader is down only when that broker's
/// thread wakes for its next attempt, so this bounds how late a record past `message.timeout.ms`
/// is reported failed (ingest's 503), and how long after a broker's return every client is
/// connected again (docs/kafka.md, "Broker outages").
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

impl KafkaConfig {
    /// Settings shared by every client (without `extra`).
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("socket.keepalive.enable", "true")
            // Small records must not wait for Nagle's algorithm (a decision is one record).
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.max.ms", ms(RECONNECT_BACKOFF_MAX))
            .set("log_level", "4");
        c
    }

    /// Applies the `extra` pass-through properties last, so they override our defaults.
    fn with_extra(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// Settings for a plain client (metadata, admin) with the `extra` properties.
    pub fn client_config(&self) -> ClientConfig {
        self.with_extra(self.base())
    }

    /// Producer settings: idempotent, `acks=all`, bounded delivery time.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", &self.compression)
            // The Java client's partitioner, so keys land where Kafka Streams and others expect.
            .set("partitioner", "murmur2_random")
            .set("queue.buffering.max.kbytes", "262144");
        self.with_extra(c)
    }

    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        self.producer_config().create()
    }

    /// Consumer settings for at-least-once processing: offsets are stored by the application
    /// only after its output was acknowledged (`enable.auto.offset.store=false`), and the stored
    /// offsets are committed in the background.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", ms(self.fetch_wait_max))
            .set("session.timeout.ms", ms(self.session_timeout))
            .set("heartbeat.interval.ms", ms(self.heartbeat_interval));
        if !self.group_instance_id.is_empty() {
            c.set("group.instance.id", &self.group_instance_id);
        }
        self.with_extra(c)
    }

    pub fn consumer(&self, group_id: &str) -> Result<StreamConsumer, KafkaError> {
        self.consumer_config(group_id).create()
    }
}

/// Whether a Kafka error is worth retrying (the broker is down, slow or rebalancing) rather
/// than a property of the record (too large, invalid).
pub fn is_retryable(err: &KafkaError) -> bool {
    let code = match err {
        KafkaError::MessageProduction(c) => *c,
        KafkaError::MessageConsumption(c) => *c,
        KafkaError::MetadataFetch(c) => *c,
        KafkaError::Flush(c) => *c,
        _ => return true,
    };
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::UnknownTopicOrPartition
    )
}

/// Reports a client-level error as rdkafka's default context does (`error!`), except the
/// end-of-partition event that consumers with `enable.partition.eof` ask for: that is a signal
/// the stage loop handles, not an error, and logging it floods the log (one line per partition
/// per fetch). Every context of ours routes `ClientContext::error` here.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
            tracing::trace!(reason, "partition end reached");
        }
        _ => tracing::error!(error = %error, reason, "kafka client error"),
    }
}

/// A consumer context that only quiets end-of-partition events (see [`log_client_error`]):
/// for readers with `enable.partition.eof` and no rebalance logic (replays, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct EofReaderContext;

impl rdkafka::ClientContext for EofReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for EofReaderContext {}

/// The value of a header as UTF-8, if present and valid.
pub fn header_str<'a>(headers: Option<&'a BorrowedHeaders>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Builds headers from name/value pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs.into_iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    })
}

/// The eager (assign/unassign) rebalance, for a `ConsumerContext::rebalance` override: the same
/// steps as rdkafka's default, without its `rebalance_protocol()` query, which can block forever
/// when the rebalance is the one run while the consumer is being closed (dropped). Our consumers
/// use the default eager assignors, never the cooperative one.
pub fn eager_rebalance<C: ConsumerContext>(
    ctx: &C,
    consumer: &BaseConsumer<C>,
    err: RDKafkaRespErr,
    tpl: &mut rdkafka::TopicPartitionList,
) {
    let rebalance = match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
        other => {
            let code: RDKafkaErrorCode = other.into();
            tracing::warn!(error = %code, "rebalance error");
            Rebalance::Error(KafkaError::Rebalance(code))
        }
    };
    ctx.pre_rebalance(consumer, &rebalance);
    let result = match &rebalance {
        Rebalance::Assign(tpl) => consumer.assign(tpl),
        _ => consumer.unassign(),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "applying a rebalance");
    }
    ctx.post_rebalance(consumer, &rebalance);
}

/// Commits a consumer's stored offsets and closes it (drops the last handle) on a thread of its
/// own, waiting at most `timeout`. librdkafka's close runs a final revoke that can block for a
/// long time while the whole group is leaving at once; doing it off the async runtime, bounded,
/// keeps shutdown bounded (a consumer still closing after `timeout` is left to finish or be
/// evicted by the group's session timeout; what it had done is already committed).
pub async fn commit_and_close<T, C>(consumer: std::sync::Arc<T>, timeout: Duration)
where
    T: Consumer<C> + Send + Sync + 'static,
    C: ConsumerContext + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::debug!(error = %e, "final commit");
            }
            drop(consumer);
            let _ = tx.send(());
        });
    if spawned.is_ok() && tokio::time::timeout(timeout, rx).await.is_err() {
        tracing::warn!(
            ?timeout,
            "kafka consumer still closing after the timeout; moving on"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_ssl_settings_pass_through_and_librdkafka_has_tls() {
        let cfg = KafkaConfig {
            extra: [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "riskstream"),
                ("sasl.password", "secret"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..KafkaConfig::default()
        };
        for c in [
            cfg.producer_config(),
            cfg.consumer_config("g"),
            cfg.client_config(),
        ] {
            assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        }
        // librdkafka refuses SASL_SSL at client creation when built without TLS; no broker is
        // contacted before the first request.
        let producer: Result<FutureProducer, _> = cfg.producer();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn static_membership_only_when_an_instance_id_is_given() {
        let dynamic = KafkaConfig::default().consumer_config("g");
        assert_eq!(dynamic.get("group.instance.id"), None);
        let fixed = KafkaConfig {
            group_instance_id: "worker-0".into(),
            ..KafkaConfig::default()
        };
        let c = fixed.consumer_config("g");
        assert_eq!(c.get("group.instance.id"), Some("worker-0"));
        assert_eq!(c.get("group.id"), Some("g"));
        // Producers never get it (librdkafka would warn about a consumer property).
        assert_eq!(fixed.producer_config().get("group.instance.id"), None);
    }
}
