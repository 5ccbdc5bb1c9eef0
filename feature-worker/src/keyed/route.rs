//! The route stage of keyed mode: reads `events` (group `G.route`), measures lateness at the
//! source partition (a flag on the decision: late events are routed and scored like any
//! other), and fans each event out to the repartition topic (one envelope per feature
//! group whose key it has) plus a base record to the results topic; publishes each source
//! partition's watermark to every repartition partition (markers, idle markers).
//!
//! The lateness decision depends only on the records of the source partition before the event:
//! when a partition is assigned, its watermark is rebuilt by replaying the partition up to the
//! first offset read, so a new owner decides exactly as the previous one would have.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};
use riskstream_common::kafka::{header, header_str};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{EventDecoder, now_ms};

use super::{
    KeyedError, ROUTE_GROUP_SUFFIX, RepartitionRecord, ResultRecord, StageConsumer, delivered,
    enqueue, partition_count, repartition_key, repartition_of, replay, stage_consumer,
};
use crate::app::{WorkerState, dead_letter, send_with_retry};
use crate::stream::Lateness;

/// The watermark of one source partition and the late rule, as the router applies them.
#[derive(Debug, Clone, Copy)]
pub struct SourceClock {
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    max_event_time_ms: Option<i64>,
}

impl SourceClock {
    pub fn new(out_of_orderness_ms: i64, allowed_lateness_ms: i64) -> Self {
        Self {
            out_of_orderness_ms,
            allowed_lateness_ms,
            max_event_time_ms: None,
        }
    }

    /// `max event time - out_of_orderness` (`i64::MIN` before the first event).
    pub fn watermark_ms(&self) -> i64 {
        self.max_event_time_ms
            .map_or(i64::MIN, |m| m.saturating_sub(self.out_of_orderness_ms))
    }

    /// Admits an event: its lateness against the watermark before it (too late: behind by
    /// more than the allowed lateness); then the watermark may advance.
    pub fn admit(&mut self, event_time_ms: i64) -> Lateness {
        let lateness_ms = self.watermark_ms().saturating_sub(event_time_ms).max(0);
        self.max_event_time_ms = Some(
            self.max_event_time_ms
                .map_or(event_time_ms, |m| m.max(event_time_ms)),
        );
        Lateness {
            lateness_ms,
            too_late: lateness_ms > self.allowed_lateness_ms,
        }
    }
}

type Acked = Pin<Box<dyn std::future::Future<Output = (i32, i64)> + Send>>;

/// Per source partition bookkeeping.
struct Source {
    clock: SourceClock,
    /// Last watermark published in a marker, and when.
    published: Option<(i64, Instant)>,
    /// When the reader hit the end of the partition (cleared by a new record).
    eof_since: Option<Instant>,
    idle_sent: bool,
    tracker: crate::stream::OffsetTracker,
}

struct Router {
    state: WorkerState,
    consumer: Arc<StageConsumer>,
    producer: FutureProducer,
    decoder: EventDecoder,
    group_id: String,
    repartition_partitions: i32,
    sources: HashMap<i32, Source>,
    restored: HashSet<i32>,
    in_flight: FuturesUnordered<Acked>,
    watermark_interval: Duration,
    /// Cancelled at shutdown (stops a replay in progress).
    stop: CancellationToken,
}

pub(crate) async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let cfg = state.config.clone();
    let group_id = format!("{}{ROUTE_GROUP_SUFFIX}", cfg.worker.group_id);
    let repartition_partitions = partition_count(&cfg.kafka, &cfg.kafka.topics.repartition).await?;
    let consumer = Arc::new(stage_consumer(
        &cfg.kafka,
        &group_id,
        &cfg.kafka.topics.events,
        true,
        state.metrics.lag_reporter("route"),
    )?);
    let decoder = EventDecoder::new(riskstream_common::DecodeLimits {
        max_event_size_bytes: 1024 * 1024,
        max_future_skew_ms: i64::MAX / 4,
        required_key: None,
    });
    let mut r = Router {
        state,
        consumer: consumer.clone(),
        producer,
        decoder,
        group_id,
        repartition_partitions,
        sources: HashMap::new(),
        restored: HashSet::new(),
        in_flight: FuturesUnordered::new(),
        watermark_interval: cfg.worker.watermark_interval.max(Duration::from_millis(1)),
        stop: shutdown.clone(),
    };
    r.run(shutdown).await;
    drop(r);
    riskstream_common::kafka::commit_and_close(consumer, super::CLOSE_TIMEOUT).await;
    Ok(())
}

impl Router {
    async fn run(&mut self, shutdown: CancellationToken) {
        let max_in_flight = self.state.config.worker.max_in_flight;
        let mut tick = tokio::time::interval(self.watermark_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            self.handle_revocations();
            let reading = self.in_flight.len() < max_in_flight;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((p, o)) = self.in_flight.next(), if !self.in_flight.is_empty() => self.acknowledged(p, o),
                m = consumer.recv(), if reading => match m {
                    Ok(m) => {
                        // Revocations served inside this recv() precede the message.
                        self.handle_revocations();
                        self.on_message(&m).await
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        self.handle_revocations();
                        if let Some(s) = self.sources.get_mut(&p) {
                            s.eof_since.get_or_insert_with(Instant::now);
                        } else if consumer.context().is_assigned(p) {
                            let mut s = self.new_source();
                            s.eof_since = Some(Instant::now());
                            self.sources.insert(p, s);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error (route)");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
        let deadline = Instant::now() + self.state.config.worker.shutdown_timeout;
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.in_flight.next()).await {
                Ok(Some((p, o))) => self.acknowledged(p, o),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.in_flight.len(),
                        "route drain timed out; unacknowledged events will be routed again"
                    );
                    break;
                }
            }
        }
    }

    fn new_source(&self) -> Source {
        let w = &self.state.config.worker;
        Source {
            clock: SourceClock::new(
                i64::try_from(w.out_of_orderness.as_millis()).unwrap_or(i64::MAX),
                i64::try_from(w.state.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
            ),
            published: None,
            eof_since: None,
            idle_sent: false,
            tracker: crate::stream::OffsetTracker::default(),
        }
    }

    fn handle_revocations(&mut self) {
        for p in self.consumer.context().take_revoked() {
            // In-flight records were not committed: the next owner routes them again (its
            // copies are dropped as duplicates by the state stage).
            self.sources.remove(&p);
            self.restored.remove(&p);
        }
    }

    /// Rebuilds the watermark of `p` from its records before `first_offset`.
    async fn restore(&mut self, p: i32, first_offset: i64) {
        let mut source = self.new_source();
        let kafka = self.state.config.kafka.clone();
        let decoder = &self.decoder;
        let started = Instant::now();
        let replayed = replay(
            &kafka,
            &self.group_id,
            &kafka.topics.events,
            p,
            first_offset,
            &self.stop,
            |m| {
                if let Ok(e) = decoder.decode_slice(m.payload().unwrap_or_default(), now_ms()) {
                    source.clock.admit(e.event_time_ms);
                }
            },
        )
        .await;
        match replayed {
            Ok(n) => tracing::info!(
                partition = p,
                first_offset,
                replayed = n,
                watermark_ms = source.clock.watermark_ms(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "source watermark restored"
            ),
            Err(e) => tracing::error!(partition = p, error = %e, "source watermark replay failed"),
        }
        self.sources.insert(p, source);
        self.restored.insert(p);
    }

    async fn on_message(&mut self, m: &BorrowedMessage<'_>) {
        let read_at_unix_us = riskstream_common::now_ms().saturating_mul(1000);
        let (p, offset) = (m.partition(), m.offset());
        if !self.consumer.context().is_assigned(p) {
            return; // revoked meanwhile: the next owner reads it
        }
        if !self.restored.contains(&p) {
            self.restore(p, offset).await;
            if self.stop.is_cancelled() {
                // The replay was cut short by shutdown: emit nothing from a partial state.
                return;
            }
        }
        let Some(source) = self.sources.get_mut(&p) else {
            return;
        };
        source.tracker.begin(offset);
        source.eof_since = None;
        source.idle_sent = false;
        let payload = m.payload().unwrap_or_default();
        let event = match self.decoder.decode_slice(payload, now_ms()) {
            Ok(e) => e,
            Err(err) => {
                self.state.metrics.event("dlq");
                let fut = dead_letter(
                    self.producer.clone(),
                    self.state.config.kafka.topics.events_dlq.clone(),
                    m,
                    err.to_string(),
                    err.code(),
                );
                self.in_flight.push(Box::pin(async move {
                    fut.await;
                    (p, offset)
                }));
                return;
            }
        };
        let traceparent = header_str(m.headers(), header::TRACEPARENT).map(str::to_string);
        let topics = self.state.config.kafka.topics.clone();
        let event_key = event.event_id.to_string();
        let mut deliveries: Vec<(Option<DeliveryFuture>, Record)> = Vec::new();
        let lateness = source.clock.admit(event.event_time_ms);
        let watermark_ms = source.clock.watermark_ms();
        let mut groups = Vec::new();
        let set = self.state.engine.feature_set();
        for (gi, g) in set.groups().iter().enumerate() {
            let Some(key) = g.key_ref(&event) else {
                continue;
            };
            let group = u32::try_from(gi).unwrap_or(u32::MAX);
            let q = repartition_of(group, &key, self.repartition_partitions);
            let record = RepartitionRecord::Event {
                event: Box::new(event.clone()),
                group,
                src_partition: p,
                src_offset: offset,
                watermark_ms,
                traceparent: traceparent.clone(),
            };
            let rec = Record {
                topic: topics.repartition.clone(),
                partition: Some(q),
                key: repartition_key(group, &key),
                payload: serde_json::to_vec(&record).unwrap_or_default(),
            };
            let f = rec.enqueue(&self.producer).await;
            deliveries.push((f, rec));
            groups.push(group);
        }
        let too_late = lateness.too_late;
        let base = ResultRecord::Base {
            event: Box::new(event),
            groups,
            late: lateness.late(),
            lateness_ms: lateness.lateness_ms,
            read_at_unix_us,
            traceparent,
            source_key: too_late
                .then(|| m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
                .flatten(),
            source_payload: too_late.then(|| String::from_utf8_lossy(payload).into_owned()),
        };
        let rec = Record {
            topic: topics.feature_results.clone(),
            partition: None,
            key: event_key,
            payload: serde_json::to_vec(&base).unwrap_or_default(),
        };
        let f = rec.enqueue(&self.producer).await;
        deliveries.push((f, rec));
        let producer = self.producer.clone();
        self.in_flight.push(Box::pin(async move {
            for (f, rec) in deliveries {
                let ok = match f {
                    Some(f) => delivered(f).await,
                    None => false,
                };
                if !ok {
                    // Rare (delivery timed out): the copy may land after later records.
                    send_with_retry(
                        &producer,
                        &rec.topic,
                        Some(rec.key.as_bytes()),
                        &rec.payload,
                        rdkafka::message::OwnedHeaders::new(),
                    )
                    .await;
                }
            }
            (p, offset)
        }));
        self.maybe_publish(p, false).await;
    }

    /// Publishes the watermark of `p` to every repartition partition if it advanced and the
    /// last marker is older than `watermark_interval` (or `force`).
    async fn maybe_publish(&mut self, p: i32, force: bool) {
        let interval = self.watermark_interval;
        let Some(source) = self.sources.get_mut(&p) else {
            return;
        };
        let w = source.clock.watermark_ms();
        let due = match source.published {
            None => w > i64::MIN || force,
            Some((last, at)) => w > last && (force || at.elapsed() >= interval),
        };
        if !due {
            return;
        }
        source.published = Some((w, Instant::now()));
        self.publish(p, w, false).await;
    }

    async fn publish(&mut self, p: i32, watermark_ms: i64, idle: bool) {
        publish_marker(
            &self.producer,
            &self.state.config.kafka.topics.repartition,
            self.repartition_partitions,
            p,
            watermark_ms,
            idle,
        )
        .await;
    }

    async fn on_tick(&mut self) {
        let idle_timeout = self.state.config.worker.idle_timeout;
        let parts: Vec<i32> = self.sources.keys().copied().collect();
        for p in parts {
            self.maybe_publish(p, true).await;
            let Some(s) = self.sources.get_mut(&p) else {
                continue;
            };
            if !s.idle_sent && s.eof_since.is_some_and(|t| t.elapsed() >= idle_timeout) {
                s.idle_sent = true;
                let w = s.clock.watermark_ms();
                tracing::debug!(partition = p, watermark_ms = w, "source partition idle");
                self.publish(p, w, true).await;
            }
        }
    }

    fn acknowledged(&mut self, p: i32, o: i64) {
        let Some(source) = self.sources.get_mut(&p) else {
            return; // revoked meanwhile
        };
        source.tracker.done(o);
        if let Some(next) = source.tracker.committable() {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(
                    &self.state.config.kafka.topics.events,
                    p,
                    Offset::Offset(next),
                )
                .is_ok()
                && let Err(e) = self.consumer.store_offsets(&tpl)
            {
                tracing::debug!(partition = p, error = %e, "store offset (route)");
            }
        }
    }
}

/// Sends a watermark marker of source `p` to every repartition partition.
async fn publish_marker(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    p: i32,
    watermark_ms: i64,
    idle: bool,
) {
    let marker = RepartitionRecord::Marker {
        src_partition: p,
        watermark_ms,
        idle,
    };
    let payload = serde_json::to_vec(&marker).unwrap_or_default();
    for q in 0..partitions {
        // A lost marker is superseded by the next one: no delivery tracking.
        let _ = enqueue(producer, topic, Some(q), None, &payload, None).await;
    }
}

/// One produced record, kept to re-send if its delivery fails.
struct Record {
    topic: String,
    partition: Option<i32>,
    key: String,
    payload: Vec<u8>,
}

impl Record {
    async fn enqueue(&self, producer: &FutureProducer) -> Option<DeliveryFuture> {
        enqueue(
            producer,
            &self.topic,
            self.partition,
            Some(self.key.as_bytes()),
            &self.payload,
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::SourceClock;

    #[test]
    fn lateness_is_measured_against_the_watermark_before_the_event() {
        let mut c = SourceClock::new(100, 50);
        assert_eq!(c.watermark_ms(), i64::MIN);
        assert_eq!(c.admit(10_000).lateness_ms, 0);
        assert_eq!(c.watermark_ms(), 9_900);
        let l = c.admit(9_850);
        assert_eq!((l.lateness_ms, l.late(), l.too_late), (50, true, false));
        let l = c.admit(9_849);
        assert_eq!((l.lateness_ms, l.too_late), (51, true));
        // A late event does not move the watermark; a newer one does.
        assert_eq!(c.watermark_ms(), 9_900);
        assert_eq!(c.admit(10_500).lateness_ms, 0);
        assert_eq!(c.watermark_ms(), 10_400);
    }
}
