//! Keyed (distributed) mode: each entity's window state lives on exactly one worker, so feature
//! values are the same whether one worker or many share the partitions, and through rebalances.
//!
//! Three stages run in every worker process, each its own consumer group derived from
//! `worker.group_id` (`G.route`, `G.state`, `G.join`), so any number of workers share all of them
//! (see docs/features.md, "Distributed mode"):
//! 1. [`route`]: `events` -> one envelope per feature group to the repartition topic (partition
//!    chosen from (group, entity key)), a base record per event to the results topic, and
//!    watermark markers to every repartition partition;
//! 2. [`state`]: per repartition partition, processes envelopes on arrival (on time or late,
//!    each into its own event-time buckets), updates the engine and emits one partial per
//!    (event, group); on assignment it replays the partition below its committed offset to
//!    rebuild the state exactly;
//! 3. [`join`]: gathers base + partials per event id, scores and produces the decision.
//!
//! This module owns the wire formats of the two internal topics, the partition function, the
//! rebalance-tracking consumer context and the replay reader shared by the stages.

pub mod join;
pub mod route;
pub mod state;

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Event, FeatureValue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::WorkerState;

/// Suffixes of the per-stage consumer groups (`{worker.group_id}{suffix}`).
pub const ROUTE_GROUP_SUFFIX: &str = ".route";
pub const STATE_GROUP_SUFFIX: &str = ".state";
pub const JOIN_GROUP_SUFFIX: &str = ".join";
/// Suffix of the throwaway group of a replay reader (never commits).
const RESTORE_GROUP_SUFFIX: &str = ".restore";
/// A replay gives up when no record arrives for this long (the broker is gone).
const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on committing and closing a stage's consumer at shutdown.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of keyed mode.
#[derive(Debug, thiserror::Error)]
pub enum KeyedError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    #[error("{0} stage task failed: {1}")]
    Task(&'static str, String),
}

/// A record of the repartition topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"event": {..}}`): decoded in one pass, unlike an internal tag.
#[serde(rename_all = "snake_case")]
pub enum RepartitionRecord {
    /// One event for one feature group, sent to the partition of (group, entity key).
    Event {
        event: Box<Event>,
        group: u32,
        src_partition: i32,
        src_offset: i64,
        /// The source partition's watermark right after this event (piggybacked marker).
        watermark_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A source partition's watermark, sent to every repartition partition.
    Marker {
        src_partition: i32,
        watermark_ms: i64,
        /// The source is idle (read to its end and quiet for `idle_timeout`): it does not hold
        /// the input watermark back until it produces again.
        idle: bool,
    },
}

/// A record of the results topic, keyed by event id so all parts of one event meet on one
/// join worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"event": {..}}`): decoded in one pass, unlike an internal tag.
#[serde(rename_all = "snake_case")]
pub enum ResultRecord {
    /// The event itself, from the router: which groups' partials to wait for.
    Base {
        event: Box<Event>,
        /// Indices of the feature groups whose key the event has (one partial each).
        groups: Vec<u32>,
        /// Behind its source partition's watermark (still scored on event time).
        late: bool,
        #[serde(alias = "watermark_lag_ms")]
        lateness_ms: i64,
        /// When the router read the event (wall clock): the decision's latency starts here.
        read_at_unix_us: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// Events later than the allowed lateness only: the source record's key and bytes,
        /// copied to the late topic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_payload: Option<String>,
    },
    /// The values of one group's features for one event, in group order.
    Partial {
        event_id: Uuid,
        group: u32,
        values: Vec<FeatureValue>,
        /// The event was beyond its key's state retention in this group.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        beyond_retention: bool,
    },
}

/// The repartition partition that owns `(group, key)`: every record of an entity goes there.
/// The router sets it explicitly and the state stage uses it to drop revoked keys.
pub fn repartition_of(group: u32, key: &str, partitions: i32) -> i32 {
    let h = twox_hash::XxHash3_64::oneshot_with_seed(u64::from(group), key.as_bytes());
    let n = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(h % n).unwrap_or(0)
}

/// The record key on the repartition topic: `{group}|{entity key}`.
pub fn repartition_key(group: u32, key: &str) -> String {
    format!("{group}|{key}")
}

/// Partition assignment as seen by the rebalance callbacks, handled by the stage loop.
#[derive(Default)]
pub struct StageContext {
    assigned: Mutex<HashSet<i32>>,
    revoked: Mutex<Vec<i32>>,
    lag: Option<riskstream_common::lag::LagReporter>,
}

impl StageContext {
    fn is_assigned(&self, p: i32) -> bool {
        self.assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&p)
    }

    fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for StageContext {
    fn error(&self, error: KafkaError, reason: &str) {
        riskstream_common::kafka::log_client_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(lag) = &self.lag {
            lag.report(&statistics);
        }
    }
}

impl ConsumerContext for StageContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        riskstream_common::kafka::eager_rebalance(self, consumer, err, tpl);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is done; what is not is read (and restored) by the next owner.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "keyed stage partitions revoked");
            let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
            for p in &parts {
                assigned.remove(p);
            }
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(parts);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "keyed stage partitions assigned");
            self.assigned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(parts);
        }
    }
}

pub(crate) type StageConsumer = StreamConsumer<StageContext>;

/// A stage's group consumer subscribed to `topic`.
pub(crate) fn stage_consumer(
    kafka: &KafkaConfig,
    group_id: &str,
    topic: &str,
    partition_eof: bool,
    lag: riskstream_common::lag::LagReporter,
) -> Result<StageConsumer, KafkaError> {
    let mut cfg = kafka.consumer_config(group_id);
    if partition_eof {
        cfg.set("enable.partition.eof", "true");
    }
    riskstream_common::lag::LagReporter::enable(&mut cfg);
    let consumer: StageConsumer = cfg.create_with_context(StageContext {
        lag: Some(lag),
        ..StageContext::default()
    })?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Number of partitions of `topic` (from the broker's metadata).
pub(crate) async fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32, KeyedError> {
    let consumer: BaseConsumer = kafka.client_config().create()?;
    let name = topic.to_string();
    let n = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .map_or(0, |t| t.partitions().len())
            })
    })
    .await
    .map_err(|e| KeyedError::Task("metadata", e.to_string()))??;
    match i32::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(KeyedError::NoPartitions(topic.to_string())),
    }
}

/// Reads `topic`/`partition` from its beginning up to (excluding) `until_offset` with a
/// group-less reader, handing each record to `f`, until done or `stop`. Returns the number of
/// records replayed.
pub(crate) async fn replay(
    kafka: &KafkaConfig,
    group_base: &str,
    topic: &str,
    partition: i32,
    until_offset: i64,
    stop: &CancellationToken,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, KafkaError> {
    if until_offset <= 0 {
        return Ok(0);
    }
    let group = format!("{group_base}{RESTORE_GROUP_SUFFIX}.{}", Uuid::new_v4());
    let mut cfg = kafka.consumer_config(&group);
    cfg.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let reader: StreamConsumer<riskstream_common::kafka::EofReaderContext> =
        cfg.create_with_context(riskstream_common::kafka::EofReaderContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let mut n = 0u64;
    let mut errors = 0u32;
    loop {
        let next = tokio::select! {
            // Shutting down: the partition is given up anyway, its next owner replays it.
            _ = stop.cancelled() => break,
            next = tokio::time::timeout(REPLAY_IDLE_TIMEOUT, reader.recv()) => next,
        };
        match next {
            Ok(Ok(m)) => {
                if m.offset() >= until_offset {
                    break;
                }
                f(&m);
                n += 1;
                if m.offset() + 1 >= until_offset {
                    break;
                }
            }
            Ok(Err(KafkaError::PartitionEOF(_))) => break,
            Ok(Err(e)) => {
                errors += 1;
                tracing::warn!(topic, partition, error = %e, "replay read error");
                if errors > 50 {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                tracing::warn!(
                    topic,
                    partition,
                    until_offset,
                    replayed = n,
                    "replay stopped: no record within the timeout"
                );
                break;
            }
        }
    }
    Ok(n)
}

/// Enqueues a record now (so records to one partition keep the call order), waiting while the
/// producer's queue is full. `None`: the record cannot be produced (logged).
pub(crate) async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Option<DeliveryFuture> {
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(q) = partition {
            record = record.partition(q);
        }
        if let Some(h) = headers.clone() {
            record = record.headers(h);
        }
        match producer.send_result(record) {
            Ok(f) => return Some(f),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                _,
            )) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                tracing::warn!(topic, error = %e, "record cannot be enqueued");
                return None;
            }
        }
    }
}

/// Whether a delivery future reported success.
pub(crate) async fn delivered(f: DeliveryFuture) -> bool {
    matches!(f.await, Ok(Ok(_)))
}

/// Runs the three stages until shutdown; the first failing stage stops the others.
pub async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let stop = shutdown.child_token();
    let route = tokio::spawn(route::run(state.clone(), producer.clone(), stop.clone()));
    let st = tokio::spawn(state::run(state.clone(), producer.clone(), stop.clone()));
    let join = tokio::spawn(join::run(state.clone(), producer.clone(), stop.clone()));
    let mut first_error = None;
    for (name, handle) in [("route", route), ("state", st), ("join", join)] {
        let result = match handle.await {
            Ok(r) => r,
            Err(e) => Err(KeyedError::Task(name, e.to_string())),
        };
        if let Err(e) = result {
            tracing::error!(stage = name, error = %e, "keyed stage failed");
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entity_always_maps_to_one_partition_and_keys_spread() {
        let mut seen = HashSet::new();
        for i in 0..200 {
            let key = format!("card-{i}");
            let q = repartition_of(0, &key, 6);
            assert_eq!(q, repartition_of(0, &key, 6));
            assert!((0..6).contains(&q));
            seen.insert(q);
        }
        assert_eq!(seen.len(), 6, "keys spread over every partition");
        assert_eq!(repartition_of(3, "x", 1), 0);
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = ResultRecord::Partial {
            event_id: Uuid::from_u128(7),
            group: 2,
            values: vec![
                FeatureValue::Null,
                FeatureValue::Number(0.1 + 0.2),
                FeatureValue::Text("DE".into()),
            ],
            beyond_retention: true,
        };
        let back: ResultRecord =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap_or_default()).unwrap();
        assert_eq!(back, r);
        let m = RepartitionRecord::Marker {
            src_partition: 1,
            watermark_ms: i64::MIN,
            idle: true,
        };
        let back: RepartitionRecord =
            serde_json::from_slice(&serde_json::to_vec(&m).unwrap_or_default()).unwrap();
        assert_eq!(back, m);
    }
}
