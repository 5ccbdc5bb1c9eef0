//! The Kafka receivers (`otlp_spans` as OTLP protobuf, `decisions` as JSON) and the spans
//! dead-letter producer.
//!
//! At-least-once: a record's offset is stored (and so committed) only after the ClickHouse
//! insert holding its rows succeeded, or after its unstorable spans reached the dead-letter
//! topic. Acknowledgements are awaited in consumption order, so an offset is never stored
//! ahead of an earlier record that is not stored yet. While the table queue is full the loop
//! stops reading (backpressure); the lag gauge, fed by librdkafka's statistics only while the
//! consumer is polled, is then asked from the broker every [`STATS_INTERVAL`] instead, so it
//! shows the backlog growing rather than its value when the loop stopped.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use riskstream_common::lag::{LagContext, LagReporter, STATS_INTERVAL, committed_lag_from_broker};

/// The receivers' consumer: lag reported from its statistics.
type ReceiverConsumer = StreamConsumer<LagContext>;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use riskstream_common::Decision;
use riskstream_common::kafka::{KafkaConfig, dead_letter_payload, header, headers, is_retryable};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::convert::{self, reason};
use crate::metrics::{Metrics, receiver};
use crate::sink::{Ack, Sink, SinkError};
use riskstream_store::schema::{DecisionRow, SpanRow};

/// Kafka receiver failures at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaReceiverError {
    #[error("cannot create the kafka consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create the dead-letter producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
}

/// Where a dead letter came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Writes unstorable spans to the spans dead-letter topic with the reason in headers.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    metrics: Metrics,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConfig, metrics: Metrics) -> Result<Self, KafkaReceiverError> {
        Ok(Self {
            producer: kafka.producer().map_err(KafkaReceiverError::Producer)?,
            topic: kafka.topics.spans_dlq.clone(),
            metrics,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter; retries retryable failures until `stop` is cancelled when
    /// `persistent`, else tries once. Returns whether it was acknowledged.
    pub async fn send(
        &self,
        payload: &[u8],
        code: &str,
        message: &str,
        receiver_name: &str,
        source: Option<&Source>,
        persistent: Option<&CancellationToken>,
    ) -> bool {
        let partition = source.map(|s| s.partition.to_string()).unwrap_or_default();
        let offset = source.map(|s| s.offset.to_string()).unwrap_or_default();
        let source_topic = source.map_or(receiver_name, |s| s.topic.as_str());
        // A record larger than the producer may send is cut (it reached the topic compressed):
        // a copy Kafka can never take would stop the receiver.
        let (payload, truncated_from) = dead_letter_payload(payload);
        let mut pairs = vec![
            (header::DLQ_REASON, message),
            (header::DLQ_ERROR_CODE, code),
            (header::DLQ_SOURCE_TOPIC, source_topic),
        ];
        if source.is_some() {
            pairs.push((header::DLQ_SOURCE_PARTITION, partition.as_str()));
            pairs.push((header::DLQ_SOURCE_OFFSET, offset.as_str()));
        }
        if let Some(size) = &truncated_from {
            pairs.push((header::DLQ_TRUNCATED_FROM, size.as_str()));
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::<(), [u8]>::to(&self.topic)
                .payload(payload)
                .headers(headers(pairs.iter().copied()));
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.metrics.dead_lettered(receiver_name, code);
                    return true;
                }
                Err((e, _)) => {
                    tracing::warn!(topic = %self.topic, error = %e, code, "dead letter not delivered");
                    let Some(stop) = persistent else { return false };
                    if !is_retryable(&e) {
                        return false;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// What one Kafka record turned into.
struct Decoded<R> {
    rows: Vec<R>,
    /// (payload, reason code, message) of the parts that cannot be stored.
    dead: Vec<(Vec<u8>, &'static str, String)>,
}

fn decode_spans(payload: &[u8]) -> Decoded<SpanRow> {
    match convert::decode_protobuf(payload) {
        Ok(request) => {
            let c = convert::convert(&request);
            Decoded {
                dead: c
                    .rejected
                    .iter()
                    .map(|r| (r.encoded(), r.code, r.message.clone()))
                    .collect(),
                rows: c.rows,
            }
        }
        Err(e) => Decoded {
            rows: Vec::new(),
            dead: vec![(
                payload.to_vec(),
                reason::UNDECODABLE,
                format!("not an otlp ExportTraceServiceRequest: {e}"),
            )],
        },
    }
}

fn decode_decision(payload: &[u8]) -> Decoded<DecisionRow> {
    match serde_json::from_slice::<Decision>(payload) {
        Ok(d) => Decoded {
            rows: vec![DecisionRow::from(&d)],
            dead: Vec::new(),
        },
        Err(e) => Decoded {
            rows: Vec::new(),
            dead: vec![(
                payload.to_vec(),
                reason::UNDECODABLE,
                format!("not a decision: {e}"),
            )],
        },
    }
}

struct Pending {
    partition: i32,
    offset: i64,
    ack: Option<Ack>,
    /// Kept to dead-letter the record if ClickHouse rejects its rows for good.
    payload: Vec<u8>,
}

/// Which topic a receiver reads and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Spans,
    Decisions,
}

/// Bound on each broker request of a lag query made while the loop is blocked.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs a Kafka receiver until `stop` is cancelled; then stops reading, waits for the queued
/// rows' acknowledgements (bounded by the sink's hard stop) and stores their offsets.
pub struct KafkaReceiver {
    consumer: Arc<ReceiverConsumer>,
    topic: String,
    stream: Stream,
    dead_letters: Option<DeadLetters>,
    metrics: Metrics,
    lag: LagReporter,
}

impl KafkaReceiver {
    pub fn new(
        kafka: &KafkaConfig,
        group_id: &str,
        stream: Stream,
        dead_letters: Option<DeadLetters>,
        metrics: Metrics,
    ) -> Result<Self, KafkaReceiverError> {
        let topic = match stream {
            Stream::Spans => kafka.topics.otlp_spans.clone(),
            Stream::Decisions => kafka.topics.decisions.clone(),
        };
        // One group per stream: the two topics are consumed independently.
        let group = match stream {
            Stream::Spans => format!("{group_id}.spans"),
            Stream::Decisions => format!("{group_id}.decisions"),
        };
        let stage = match stream {
            Stream::Spans => "spans",
            Stream::Decisions => "decisions",
        };
        let mut config = kafka.consumer_config(&group);
        // A full queue pauses reading for as long as ClickHouse is down.
        config.set("max.poll.interval.ms", "86400000");
        LagReporter::enable(&mut config);
        let lag = LagReporter::new(metrics.consumer_lag.clone(), stage);
        let consumer: ReceiverConsumer = config
            .create_with_context(LagContext(lag.clone()))
            .map_err(KafkaReceiverError::Consumer)?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|source| KafkaReceiverError::Subscribe {
                topic: topic.clone(),
                source,
            })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic,
            stream,
            dead_letters,
            metrics,
            lag,
        })
    }

    pub async fn run_spans(self, sink: Sink<SpanRow>, stop: CancellationToken) {
        self.run(sink, decode_spans, receiver::KAFKA, stop).await
    }

    pub async fn run_decisions(self, sink: Sink<DecisionRow>, stop: CancellationToken) {
        self.run(sink, decode_decision, receiver::KAFKA_DECISIONS, stop)
            .await
    }

    async fn run<R: riskstream_store::StoredRow>(
        self,
        sink: Sink<R>,
        decode: fn(&[u8]) -> Decoded<R>,
        receiver_name: &'static str,
        stop: CancellationToken,
    ) {
        let (pending_tx, pending_rx) = mpsc::channel::<Pending>(4096);
        let acker = tokio::spawn(ack_in_order(
            self.consumer.clone(),
            self.topic.clone(),
            pending_rx,
            self.dead_letters.clone(),
            receiver_name,
            self.metrics.clone(),
            stop.clone(),
        ));
        tracing::info!(topic = %self.topic, stream = ?self.stream, "kafka receiver started");
        let lag_check = tokio::time::sleep(STATS_INTERVAL);
        tokio::pin!(lag_check);
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // The lag is asked from the broker only if handling this record blocks for a while
            // (at least half a statistics interval; the check is pushed out as records flow).
            let now = tokio::time::Instant::now();
            if lag_check.deadline() < now + STATS_INTERVAL / 2 {
                lag_check.as_mut().reset(now + STATS_INTERVAL);
            }
            let handled = async {
                let pending = self
                    .handle(&message, &sink, decode, receiver_name, &stop)
                    .await?;
                pending_tx.send(pending).await.ok()
            };
            tokio::pin!(handled);
            let handled = loop {
                tokio::select! {
                    h = &mut handled => break h,
                    () = &mut lag_check => {
                        self.report_lag_from_broker().await;
                        lag_check.as_mut().reset(tokio::time::Instant::now() + STATS_INTERVAL);
                    }
                }
            };
            if handled.is_none() {
                break;
            }
        }
        drop(pending_tx);
        let _ = acker.await;
        // Commit what was stored now rather than at the next auto-commit tick.
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(topic = %self.topic, error = %e, "final commit skipped");
        }
        tracing::info!(topic = %self.topic, "kafka receiver stopped");
    }

    /// Sets the lag gauge from the broker's figures (the loop is blocked, so librdkafka's
    /// statistics wait in the unpolled consumer queue).
    async fn report_lag_from_broker(&self) {
        let consumer = self.consumer.clone();
        let lag = tokio::task::spawn_blocking(move || {
            committed_lag_from_broker(&*consumer, LAG_QUERY_TIMEOUT)
        })
        .await;
        match lag {
            Ok(Ok(n)) => self.lag.set(n),
            Ok(Err(e)) => {
                tracing::debug!(topic = %self.topic, error = %e, "lag not available from the broker");
            }
            Err(e) => tracing::debug!(topic = %self.topic, error = %e, "lag query task"),
        }
    }

    /// Decodes one record, dead-letters what cannot be stored and queues the rest. `None` when
    /// stopping before the record was fully handled (its offset is then not stored).
    async fn handle<R: riskstream_store::StoredRow>(
        &self,
        message: &BorrowedMessage<'_>,
        sink: &Sink<R>,
        decode: fn(&[u8]) -> Decoded<R>,
        receiver_name: &'static str,
        stop: &CancellationToken,
    ) -> Option<Pending> {
        let payload = message.payload().unwrap_or_default();
        let decoded = decode(payload);
        self.metrics
            .received(receiver_name, decoded.rows.len() + decoded.dead.len());
        let source = Source {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        };
        for (body, code, why) in &decoded.dead {
            self.metrics.rejected(receiver_name, code, 1);
            tracing::debug!(code, reason = %why, partition = source.partition, offset = source.offset, "record not storable");
            if let Some(dl) = &self.dead_letters {
                if !dl
                    .send(body, code, why, receiver_name, Some(&source), Some(stop))
                    .await
                {
                    return None;
                }
            }
        }
        let ack = if decoded.rows.is_empty() {
            None
        } else {
            let submitted = tokio::select! {
                r = sink.submit(decoded.rows, receiver_name) => r,
                _ = stop.cancelled() => return None,
            };
            match submitted {
                Ok(ack) => Some(ack),
                Err(_) => return None,
            }
        };
        Some(Pending {
            partition: source.partition,
            offset: source.offset,
            ack,
            payload: payload.to_vec(),
        })
    }
}

async fn ack_in_order(
    consumer: Arc<ReceiverConsumer>,
    topic: String,
    mut pending: mpsc::Receiver<Pending>,
    dead_letters: Option<DeadLetters>,
    receiver_name: &'static str,
    metrics: Metrics,
    stop: CancellationToken,
) {
    while let Some(p) = pending.recv().await {
        if let Some(ack) = p.ack {
            match ack.await {
                Ok(Ok(())) => {}
                Ok(Err(SinkError::Rejected(why))) => {
                    metrics.rejected(receiver_name, reason::INSERT_REJECTED, 1);
                    if let Some(dl) = &dead_letters {
                        let source = Source {
                            topic: topic.clone(),
                            partition: p.partition,
                            offset: p.offset,
                        };
                        // Keep trying past the stop signal? No: an undelivered dead letter
                        // leaves the offset unstored, so the record is read again.
                        let hard = CancellationToken::new();
                        let guard = stop.clone();
                        let dl = dl.clone();
                        let delivered = tokio::select! {
                            d = dl.send(&p.payload, reason::INSERT_REJECTED, &why, receiver_name, Some(&source), Some(&hard)) => d,
                            _ = guard.cancelled() => false,
                        };
                        if !delivered {
                            return;
                        }
                    }
                }
                // Not stored (shutdown): stop storing offsets so it is read again.
                Ok(Err(_)) | Err(_) => return,
            }
        }
        if let Err(e) = consumer.store_offset(&topic, p.partition, p.offset) {
            // After a rebalance the partition may belong to another member: it re-reads.
            tracing::debug!(topic = %topic, partition = p.partition, offset = p.offset, error = %e, "offset not stored");
        }
    }
}
