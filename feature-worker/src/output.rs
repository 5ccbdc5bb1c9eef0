//! What the worker produces and how: one produce-with-retry behaviour for every output (a record
//! is enqueued in call order, then re-sent with backoff until Kafka acknowledges it), the
//! acknowledged-output future the stage runner settles input offsets with, and the worker's own
//! outgoing records: a decision with its late copy, and a dead letter.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use riskstream_common::Decision;
use riskstream_common::kafka::{dead_letter_payload, header};
use riskstream_common::trace_context::TraceParent;

use crate::record::Record;

/// First wait before re-sending an unacknowledged record; doubles up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long to wait for room when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// The input records an output carries: done once the output is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settles {
    /// One record: (partition, offset).
    One((i32, i64)),
    /// Several records, of any partitions (the parts of a join).
    Many(Vec<(i32, i64)>),
}

impl Settles {
    pub fn offsets(&self) -> &[(i32, i64)] {
        match self {
            Settles::One(one) => std::slice::from_ref(one),
            Settles::Many(v) => v,
        }
    }
}

/// An output in flight: resolves, with the input records it settles, once Kafka acknowledged
/// every record it produces.
pub type AckedOutput = Pin<Box<dyn Future<Output = Settles> + Send>>;

/// Wraps the future of some outputs into the [`AckedOutput`] that settles `settles`.
pub fn acked(settles: Settles, outputs: impl Future<Output = ()> + Send + 'static) -> AckedOutput {
    Box::pin(async move {
        outputs.await;
        settles
    })
}

/// One record to produce, kept whole so it can be re-sent.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    /// Explicit partition (else the producer's partitioner picks one by key).
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
    /// A null value (a tombstone on a compacted topic: the key is removed); `payload` unused.
    pub tombstone: bool,
}

impl OutRecord {
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key,
            payload,
            headers: None,
            tombstone: false,
        }
    }

    fn try_enqueue(&self, producer: &FutureProducer) -> Result<DeliveryFuture, KafkaError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic);
        if !self.tombstone {
            record = record.payload(&self.payload);
        }
        if let Some(k) = &self.key {
            record = record.key(k);
        }
        if let Some(q) = self.partition {
            record = record.partition(q);
        }
        if let Some(h) = &self.headers {
            record = record.headers(h.clone());
        }
        producer.send_result(record).map_err(|(e, _)| e)
    }

    /// Enqueues, waiting while the producer's queue is full.
    async fn enqueue(&self, producer: &FutureProducer) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match self.try_enqueue(producer) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                other => return other,
            }
        }
    }
}

/// A produced record on its way to an acknowledgement.
pub struct Delivery {
    producer: FutureProducer,
    record: OutRecord,
    enqueued: Option<DeliveryFuture>,
}

/// Enqueues `record` now if the producer's queue has room (records to one partition then keep
/// the call order; a full queue defers it to [`Delivery::acknowledged`]).
pub fn produce(producer: &FutureProducer, record: OutRecord) -> Delivery {
    let enqueued = record.try_enqueue(producer);
    Delivery::new(producer, record, enqueued)
}

/// As [`produce`], waiting while the producer's queue is full, so records to one partition
/// always keep the call order (the router's envelopes: an entity's order is its partition's).
pub async fn produce_in_order(producer: &FutureProducer, record: OutRecord) -> Delivery {
    let enqueued = record.enqueue(producer).await;
    Delivery::new(producer, record, enqueued)
}

impl Delivery {
    fn new(
        producer: &FutureProducer,
        record: OutRecord,
        enqueued: Result<DeliveryFuture, KafkaError>,
    ) -> Self {
        let enqueued = match enqueued {
            Ok(f) => Some(f),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => None,
            Err(e) => {
                tracing::warn!(topic = %record.topic, error = %e, "record cannot be enqueued, retrying");
                None
            }
        };
        Self {
            producer: producer.clone(),
            record,
            enqueued,
        }
    }

    /// Waits until Kafka acknowledges the record, re-sending it (same partition, key and
    /// headers) with backoff after every failure. A re-sent copy may land after later records.
    pub async fn acknowledged(self) {
        let Delivery {
            producer,
            record,
            mut enqueued,
        } = self;
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            let delivery = match enqueued.take() {
                Some(f) => Ok(f),
                None => record.enqueue(&producer).await,
            };
            let failure = match delivery {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => return,
                    Ok(Err((e, _))) => e.to_string(),
                    Err(_) => "delivery report lost".to_string(),
                },
                Err(e) => e.to_string(),
            };
            tracing::warn!(topic = %record.topic, error = %failure, "output not acknowledged, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }
}

/// A late event's original record, copied to the late topic beside its decision.
pub struct LateCopy {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Where a decision and its late copy go.
pub struct DecisionTopics<'a> {
    pub decisions: &'a str,
    pub late: &'a str,
}

/// Enqueues the decision (and, for a late event, its copy to the late topic) with `trace` as
/// their `traceparent`; the future resolves when Kafka acknowledged both.
pub fn send_decision(
    producer: &FutureProducer,
    topics: DecisionTopics<'_>,
    decision: &Decision,
    late_copy: Option<LateCopy>,
    trace: TraceParent,
) -> impl Future<Output = ()> + Send + use<> {
    let child = trace.to_string();
    let value = serde_json::to_vec(decision).unwrap_or_default();
    let key = decision.event_id.to_string().into_bytes();
    let headers = riskstream_common::kafka::headers([(header::TRACEPARENT, child.as_str())]);
    let decision = produce(
        producer,
        OutRecord {
            headers: Some(headers),
            ..OutRecord::new(topics.decisions, Some(key), value)
        },
    );
    let late = late_copy.map(|late| {
        let headers = riskstream_common::kafka::headers([
            (header::TRACEPARENT, child.as_str()),
            (
                header::DLQ_REASON,
                "event behind the watermark by more than the allowed lateness (decided, with event-time features)",
            ),
        ]);
        produce(
            producer,
            OutRecord {
                headers: Some(headers),
                ..OutRecord::new(topics.late, late.key, late.payload)
            },
        )
    });
    async move {
        decision.acknowledged().await;
        if let Some(late) = late {
            late.acknowledged().await;
        }
    }
}

/// Copies a poison record (of any topic the worker reads) to the dead-letter topic with its
/// headers and the reason (a payload too large for any producer cut to
/// `DLQ_MAX_PAYLOAD_BYTES`, its size in a header); the future resolves when Kafka acknowledged
/// it.
pub fn dead_letter(
    producer: &FutureProducer,
    topic: &str,
    m: Record<'_>,
    reason: &str,
    code: &'static str,
) -> impl Future<Output = ()> + Send + use<> {
    tracing::warn!(topic = m.topic, partition = m.partition, offset = m.offset, code, reason = %reason, "poison record sent to the dead-letter topic");
    let mut headers = OwnedHeaders::new();
    if let Some(h) = m.headers {
        for h in h.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: Some(h.value.unwrap_or_default()),
            });
        }
    }
    let (src_part, src_off) = (m.partition.to_string(), m.offset.to_string());
    let (payload, truncated_from) = dead_letter_payload(m.payload);
    for (k, v) in [
        (header::DLQ_REASON, reason),
        (header::DLQ_ERROR_CODE, code),
        (header::DLQ_SOURCE_TOPIC, m.topic),
        (header::DLQ_SOURCE_PARTITION, src_part.as_str()),
        (header::DLQ_SOURCE_OFFSET, src_off.as_str()),
    ]
    .into_iter()
    .chain(
        truncated_from
            .as_deref()
            .map(|size| (header::DLQ_TRUNCATED_FROM, size)),
    ) {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let record = OutRecord {
        headers: Some(headers),
        ..OutRecord::new(topic, m.key.map(<[u8]>::to_vec), payload.to_vec())
    };
    produce(producer, record).acknowledged()
}
