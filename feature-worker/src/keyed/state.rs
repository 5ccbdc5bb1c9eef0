//! The state stage of keyed mode: owns the window state of the entities of its repartition
//! partitions. Per partition it tracks the input watermark (the minimum over the source
//! partitions of their latest watermark, idle sources excluded; it drives nothing a decision
//! waits for), processes envelopes on arrival (after the short `worker.reorder_wait`, which
//! sorts what arrives within it by event time), each into its own event-time buckets (late
//! ones too), and emits one partial per (event, group) to the results
//! topic. The order of one entity's events is the order of its repartition partition: the
//! order of its source partition when all its events come from one, otherwise the order in
//! which the routers' records landed (docs/features.md).
//!
//! Exactly-once state through rebalances: envelopes re-sent by a new router are recognised by
//! their (source partition, source offset, group), which grows monotonically per source on one
//! repartition partition; on assignment the partition is replayed from its beginning up to the
//! first offset read (the committed one) in restore mode (state updated, nothing emitted), and on
//! revocation the partition's keys are dropped.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Event, FeatureValue};

use super::{
    KeyedError, RepartitionRecord, ResultRecord, STATE_GROUP_SUFFIX, StageConsumer,
    partition_count, repartition_of, replay, stage_consumer,
};
use crate::app::{WorkerState, send_with_retry};
use crate::stream::{ClockConfig, OffsetTracker, PartitionClock};

/// The input watermark of one repartition partition: the minimum over the source partitions of
/// the latest watermark each published; idle sources do not count until they publish again.
#[derive(Debug, Clone)]
pub struct InputWatermark {
    /// Per source partition: highest watermark seen, idle flag.
    marks: Vec<(i64, bool)>,
}

impl InputWatermark {
    /// `sources`: the partition count of the events topic (every source must be heard from).
    pub fn new(sources: usize) -> Self {
        Self {
            marks: vec![(i64::MIN, false); sources],
        }
    }

    pub fn observe(&mut self, src_partition: i32, watermark_ms: i64, idle: bool) {
        let Ok(i) = usize::try_from(src_partition) else {
            return;
        };
        if i >= self.marks.len() {
            // The events topic grew: the new source holds the watermark until heard from.
            self.marks.resize(i + 1, (i64::MIN, false));
        }
        let m = &mut self.marks[i];
        m.0 = m.0.max(watermark_ms);
        m.1 = idle;
    }

    /// `i64::MIN` while a non-idle source was never heard from; `i64::MAX` when all are idle.
    pub fn value_ms(&self) -> i64 {
        self.marks
            .iter()
            .filter(|(_, idle)| !idle)
            .map(|(w, _)| *w)
            .min()
            .unwrap_or(i64::MAX)
    }
}

/// What [`Dedup::admit`] did with an envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Already received (a router re-sent it after a rebalance): ignore.
    Duplicate,
    /// New: process it now.
    Fresh(T),
}

/// Duplicate detection of one repartition partition: per source partition, the highest
/// (source offset, group) received.
#[derive(Debug, Default)]
pub struct Dedup {
    received: HashMap<i32, (i64, u32)>,
}

impl Dedup {
    pub fn admit<T>(
        &mut self,
        src_partition: i32,
        src_offset: i64,
        group: u32,
        item: T,
    ) -> Arrival<T> {
        let pos = (src_offset, group);
        match self.received.get(&src_partition) {
            Some(&last) if pos <= last => Arrival::Duplicate,
            _ => {
                self.received.insert(src_partition, pos);
                Arrival::Fresh(item)
            }
        }
    }
}

/// One buffered envelope.
struct Item {
    event: Box<Event>,
    group: u32,
    offset: i64,
}

struct Partition {
    watermark: InputWatermark,
    dedup: Dedup,
    /// The reorder wait (`worker.reorder_wait`) of live envelopes; its lateness is unused.
    reorder: PartitionClock<Item>,
    tracker: OffsetTracker,
}

type Acked = Pin<Box<dyn std::future::Future<Output = (i32, i64)> + Send>>;

struct StateStage {
    state: WorkerState,
    consumer: Arc<StageConsumer>,
    producer: FutureProducer,
    group_id: String,
    source_partitions: usize,
    repartition_partitions: i32,
    parts: HashMap<i32, Partition>,
    restored: HashSet<i32>,
    in_flight: FuturesUnordered<Acked>,
    values: Vec<FeatureValue>,
    /// Cancelled at shutdown (stops a replay in progress).
    stop: CancellationToken,
}

pub(crate) async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let cfg = state.config.clone();
    let topics = &cfg.kafka.topics;
    let group_id = format!("{}{STATE_GROUP_SUFFIX}", cfg.worker.group_id);
    let source_partitions =
        usize::try_from(partition_count(&cfg.kafka, &topics.events).await?).unwrap_or(1);
    let repartition_partitions = partition_count(&cfg.kafka, &topics.repartition).await?;
    let consumer = Arc::new(stage_consumer(
        &cfg.kafka,
        &group_id,
        &topics.repartition,
        false,
        state.metrics.lag_reporter("state"),
    )?);
    let mut stage = StateStage {
        state,
        consumer: consumer.clone(),
        producer,
        group_id,
        source_partitions,
        repartition_partitions,
        parts: HashMap::new(),
        restored: HashSet::new(),
        in_flight: FuturesUnordered::new(),
        values: Vec::new(),
        stop: shutdown.clone(),
    };
    stage.run(shutdown).await;
    drop(stage);
    riskstream_common::kafka::commit_and_close(consumer, super::CLOSE_TIMEOUT).await;
    Ok(())
}

impl StateStage {
    async fn run(&mut self, shutdown: CancellationToken) {
        let max_in_flight = self.state.config.worker.max_in_flight;
        let consumer = self.consumer.clone();
        loop {
            self.handle_revocations();
            let reading = self.in_flight.len() < max_in_flight;
            let deadline = self
                .parts
                .values()
                .filter_map(|p| p.reorder.next_deadline())
                .min();
            let wait_over = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((q, o)) = self.in_flight.next(), if !self.in_flight.is_empty() => self.acknowledged(q, o),
                m = consumer.recv(), if reading => match m {
                    Ok(m) => {
                        // Revocations served inside this recv() precede the message.
                        self.handle_revocations();
                        self.on_message(&m).await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error (state)");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = wait_over => self.release_due(Instant::now(), false),
            }
        }
        // What still waits is processed now (its partials are produced and committed).
        self.release_due(Instant::now(), true);
        let deadline = Instant::now() + self.state.config.worker.shutdown_timeout;
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.in_flight.next()).await {
                Ok(Some((q, o))) => self.acknowledged(q, o),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(in_flight = self.in_flight.len(), "state drain timed out");
                    break;
                }
            }
        }
    }

    fn handle_revocations(&mut self) {
        let revoked = self.consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
        let n = self.repartition_partitions;
        let gone: HashSet<i32> = revoked.iter().copied().collect();
        for q in &gone {
            self.parts.remove(q);
            self.restored.remove(q);
        }
        let dropped = self.state.engine.drop_keys(|gi, key| {
            gone.contains(&repartition_of(
                u32::try_from(gi).unwrap_or(u32::MAX),
                key,
                n,
            ))
        });
        tracing::info!(partitions = ?revoked, dropped_keys = dropped, "state of revoked partitions dropped");
    }

    /// Processes the envelopes whose reorder wait is over (`all`: every waiting one).
    fn release_due(&mut self, now: Instant, all: bool) {
        let qs: Vec<i32> = self.parts.keys().copied().collect();
        for q in qs {
            let ready = match self.parts.get_mut(&q) {
                Some(part) if all => part.reorder.release_all(),
                Some(part) => part.reorder.release(now),
                None => continue,
            };
            for (item, _) in ready {
                self.process(q, item, true);
            }
        }
    }

    fn new_partition(&self) -> Partition {
        Partition {
            watermark: InputWatermark::new(self.source_partitions),
            dedup: Dedup::default(),
            reorder: PartitionClock::new(ClockConfig {
                out_of_orderness_ms: 0,
                allowed_lateness_ms: 0,
                reorder_wait: self.state.config.worker.reorder_wait,
            }),
            tracker: OffsetTracker::default(),
        }
    }

    /// Rebuilds the state of `q` from its records before `first_offset` (nothing emitted).
    async fn restore(&mut self, q: i32, first_offset: i64) {
        let part = self.new_partition();
        self.parts.insert(q, part);
        let kafka = self.state.config.kafka.clone();
        let group_id = self.group_id.clone();
        let started = Instant::now();
        let stop = self.stop.clone();
        let replayed = replay(
            &kafka,
            &group_id,
            &kafka.topics.repartition,
            q,
            first_offset,
            &stop,
            |m| self.apply(q, m.payload().unwrap_or_default(), m.offset(), false),
        )
        .await;
        match replayed {
            Ok(n) => tracing::info!(
                partition = q,
                first_offset,
                replayed = n,
                keys = self.state.engine.entry_count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "feature state restored"
            ),
            Err(e) => {
                tracing::error!(partition = q, error = %e, "feature state replay failed")
            }
        }
        self.restored.insert(q);
    }

    async fn on_message(&mut self, m: &BorrowedMessage<'_>) {
        let (q, offset) = (m.partition(), m.offset());
        if !self.consumer.context().is_assigned(q) {
            return;
        }
        if !self.restored.contains(&q) {
            self.restore(q, offset).await;
            if self.stop.is_cancelled() {
                // The replay was cut short by shutdown: emit nothing from a partial state.
                return;
            }
        }
        if let Some(part) = self.parts.get_mut(&q) {
            part.tracker.begin(offset);
        }
        self.apply(q, m.payload().unwrap_or_default(), offset, true);
    }

    /// Handles one repartition record; `live`: emit partials and track the offset (false while
    /// restoring).
    fn apply(&mut self, q: i32, payload: &[u8], offset: i64, live: bool) {
        let record: RepartitionRecord = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = q, offset, error = %e, "undecodable repartition record skipped");
                self.done_now(q, offset, live);
                return;
            }
        };
        let Some(part) = self.parts.get_mut(&q) else {
            return;
        };
        let mut fresh = None;
        match record {
            RepartitionRecord::Marker {
                src_partition,
                watermark_ms,
                idle,
            } => {
                part.watermark.observe(src_partition, watermark_ms, idle);
                self.done_now(q, offset, live);
            }
            RepartitionRecord::Event {
                event,
                group,
                src_partition,
                src_offset,
                watermark_ms,
                ..
            } => {
                part.watermark.observe(src_partition, watermark_ms, false);
                let item = Item {
                    event,
                    group,
                    offset,
                };
                match part.dedup.admit(src_partition, src_offset, group, item) {
                    Arrival::Fresh(item) => fresh = Some(item),
                    Arrival::Duplicate => self.done_now(q, offset, live),
                }
            }
        }
        let Some(item) = fresh else {
            return;
        };
        if !live {
            // Restoring: in partition order (the live reorder wait only ever swapped events
            // less than `reorder_wait` apart in arrival; the state it leaves is the same but
            // for the order of equal-time `last` entries).
            self.process(q, item, false);
            return;
        }
        let now = Instant::now();
        let ready = match self.parts.get_mut(&q) {
            Some(part) => {
                let (t, id) = (item.event.event_time_ms, item.event.event_id);
                part.reorder.admit(t, id, item, now);
                part.reorder.release(now)
            }
            None => Vec::new(),
        };
        for (item, _) in ready {
            self.process(q, item, true);
        }
    }

    fn done_now(&mut self, q: i32, offset: i64, live: bool) {
        if live {
            self.acknowledged(q, offset);
        }
    }

    /// Adds one envelope to its key's state and (live) emits the group's values.
    fn process(&mut self, q: i32, item: Item, live: bool) {
        let Item {
            event,
            group,
            offset,
        } = item;
        let gi = usize::try_from(group).unwrap_or(usize::MAX);
        let engine = &self.state.engine;
        self.values.clear();
        let key = engine
            .feature_set()
            .groups()
            .get(gi)
            .and_then(|g| g.key_of(&event));
        let result = match &key {
            Some(key) => engine.process_into(gi, key, &event, &mut self.values),
            None => engine
                .empty_values_into(gi, &mut self.values)
                .map(|()| Default::default()),
        };
        let beyond_retention = match result {
            Ok(outcome) => outcome.beyond_retention,
            Err(e) => {
                tracing::warn!(partition = q, offset, group, error = %e, "envelope for an unknown feature group");
                self.values.clear();
                false
            }
        };
        if !live {
            return;
        }
        let partial = ResultRecord::Partial {
            event_id: event.event_id,
            group,
            values: std::mem::take(&mut self.values),
            beyond_retention,
        };
        let payload = serde_json::to_vec(&partial).unwrap_or_default();
        let key = event.event_id.to_string();
        let producer = self.producer.clone();
        let topic = self.state.config.kafka.topics.feature_results.clone();
        self.in_flight.push(Box::pin(async move {
            send_with_retry(
                &producer,
                &topic,
                Some(key.as_bytes()),
                &payload,
                OwnedHeaders::new(),
            )
            .await;
            (q, offset)
        }));
    }

    fn acknowledged(&mut self, q: i32, offset: i64) {
        let Some(part) = self.parts.get_mut(&q) else {
            return;
        };
        part.tracker.done(offset);
        if let Some(next) = part.tracker.committable() {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(
                    &self.state.config.kafka.topics.repartition,
                    q,
                    Offset::Offset(next),
                )
                .is_ok()
                && let Err(e) = self.consumer.store_offsets(&tpl)
            {
                tracing::debug!(partition = q, error = %e, "store offset (state)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_watermark_is_the_minimum_of_active_sources() {
        let mut w = InputWatermark::new(3);
        assert_eq!(w.value_ms(), i64::MIN, "nothing heard from any source");
        w.observe(0, 100, false);
        w.observe(1, 50, false);
        assert_eq!(w.value_ms(), i64::MIN, "source 2 not heard from");
        w.observe(2, 70, false);
        assert_eq!(w.value_ms(), 50);
        // A lower marker (a re-started router) never moves a source back.
        w.observe(1, 10, false);
        assert_eq!(w.value_ms(), 50);
        w.observe(1, 50, true);
        assert_eq!(w.value_ms(), 70, "idle source excluded");
        w.observe(0, 100, true);
        w.observe(2, 70, true);
        assert_eq!(w.value_ms(), i64::MAX, "all idle: release everything");
        w.observe(4, 5, false);
        assert_eq!(
            w.value_ms(),
            i64::MIN,
            "the events topic grew: source 3 unheard"
        );
        w.observe(3, 9, false);
        assert_eq!(w.value_ms(), 5, "a new source partition counts");
    }

    #[test]
    fn resent_envelopes_are_duplicates_and_everything_else_is_fresh() {
        let mut d = Dedup::default();
        assert_eq!(d.admit(1, 10, 0, 'a'), Arrival::Fresh('a'));
        assert_eq!(d.admit(1, 10, 2, 'b'), Arrival::Fresh('b'));
        // A new router replays offsets 10..: every copy is recognised.
        assert_eq!(d.admit(1, 10, 0, 'x'), Arrival::Duplicate);
        assert_eq!(d.admit(1, 10, 2, 'x'), Arrival::Duplicate);
        // Another source's offsets are independent; event time plays no part.
        assert_eq!(d.admit(2, 3, 0, 'c'), Arrival::Fresh('c'));
        assert_eq!(d.admit(1, 11, 0, 'd'), Arrival::Fresh('d'));
    }
}
