//! A real Kafka-protocol broker for tests (librdkafka's mock cluster on real TCP ports, owned by
//! a thread of the test process) and helpers to read back what a test produced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use riskstream_common::broker::EmbeddedBroker;
use riskstream_common::kafka::{KafkaConfig, Topics};

/// A running test broker; dropping it stops the broker.
pub struct MockBroker {
    pub bootstrap: String,
    inner: Option<EmbeddedBroker>,
}

impl MockBroker {
    /// Starts a broker and creates `topics` with `partitions` partitions each.
    pub fn start(partitions: i32, topics: &[&str]) -> MockBroker {
        let inner = EmbeddedBroker::with_topics(partitions, topics.iter().copied())
            .unwrap_or_else(|e| panic!("mock kafka broker failed to start: {e}"));
        MockBroker {
            bootstrap: inner.bootstrap().to_string(),
            inner: Some(inner),
        }
    }

    /// Starts a broker with every topic of `topics` created.
    pub fn with_topics(partitions: i32, topics: &Topics) -> MockBroker {
        Self::start(partitions, &topics.all())
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        if let Some(b) = &self.inner {
            b.create_topic(name, partitions)
                .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        }
    }

    /// Kafka settings for tests: small fetch waits and fast rebalances.
    pub fn kafka_config(&self, topics: &Topics) -> KafkaConfig {
        let mut k = KafkaConfig {
            brokers: self.bootstrap.clone(),
            topics: topics.clone(),
            fetch_wait_max: Duration::from_millis(5),
            session_timeout: Duration::from_millis(3000),
            heartbeat_interval: Duration::from_millis(500),
            message_timeout: Duration::from_secs(5),
            ..KafkaConfig::default()
        };
        k.client_id = "riskstream-test".into();
        k
    }

    /// Stops the broker (listeners close; clients see it as down).
    pub fn stop(&mut self) {
        if let Some(b) = self.inner.take() {
            b.stop();
        }
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or(b"null"))
            .expect("record value is json")
    }
}

/// Reads records from `topic` (from the beginning, a fresh group) until `n` arrived or `timeout`
/// passed; returns what arrived.
pub async fn read_records(
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Record> {
    let group = crate::unique("reader");
    let consumer: StreamConsumer = kafka.consumer(&group).expect("test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(Record {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp_ms: m.timestamp().to_millis(),
            }),
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}
