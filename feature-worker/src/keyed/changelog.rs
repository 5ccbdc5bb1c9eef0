//! The state stage's changelog (Kafka Streams style): a compacted topic co-partitioned with the
//! repartition topic (changelog partition = repartition partition) holding, per (feature group,
//! entity key), the newest exported state of the key ([`crate::features::FeatureEngine::export_key`]:
//! buckets and the per-source offsets it reflects), keyed `{group}|{key}` so compaction keeps
//! the newest; a tombstone when the key's state is gone (expired, evicted for size).
//!
//! What this module owns:
//! - [`Batch`]: per repartition partition, the records handled since its last flush, the
//!   acknowledgements of their partials and the keys they updated. A flush settles the records
//!   only when their partials *and then* the changelog records of their keys are acknowledged,
//!   so a committed offset always has its state in the changelog, and the changelog never
//!   reflects an update whose partial might be lost (a restored owner skips such updates).
//!   Flushes of one partition enqueue their records in order (each waits for the previous one).
//! - [`Fence`]: a revocation bumps the partition's epoch (inside the rebalance callback, then
//!   the producer is flushed), and a flush of an older epoch writes nothing: once a partition
//!   has moved, its old owner never writes to its changelog partition again.
//! - [`read_to_end`]: a partition's newest record per key, read by an assigned (group-less)
//!   reader from its beginning to the end it had when the read began; [`Prefetch`] starts the
//!   reads of all partitions of an assignment at once, in the assignment callback.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::kafka::{EofReaderContext, KafkaConfig};
use riskstream_common::shutdown::CancellationToken;
use tokio::sync::oneshot;

use super::error::KeyedError;
use super::records::repartition_key;
use crate::output::{OutRecord, produce};
use crate::stage::context::{AssignHook, RevokeHook};

/// Bound on flushing the producer inside a revocation.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a watermark (end offset) request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Suffix of the restore reader's group (assigned, never joined, never commits).
const RESTORE_GROUP_SUFFIX: &str = ".changelog-restore";
/// Fetch size of the restore reader (per partition and per request).
const RESTORE_FETCH_BYTES: &str = "16777216";
/// One poll of the restore reader.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// A restore gives up when no record arrives for this long (the broker is gone).
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read errors a restore tolerates before it fails.
const READ_MAX_ERRORS: u32 = 50;

/// An acknowledgement to wait for.
pub type Ack = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The changelog record key of `(group, key)`: the repartition key, `{group}|{key}`.
pub fn changelog_key(group: u32, key: &str) -> Vec<u8> {
    repartition_key(group, key).into_bytes()
}

/// `(group, key)` of a changelog record key; `None` for anything else.
pub fn parse_key(bytes: &[u8]) -> Option<(u32, &str)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (group, key) = text.split_once('|')?;
    Some((group.parse().ok()?, key))
}

/// What one repartition partition handled since its last flush.
#[derive(Default)]
pub struct Batch {
    /// Records (partition, offset) the next flush settles.
    records: Vec<(i32, i64)>,
    /// Acknowledgements of their outputs (the partials).
    acks: Vec<Ack>,
    /// Keys whose state changed (or went away): their changelog records go out at the flush.
    dirty: HashMap<u32, HashSet<Box<str>>>,
    /// Signalled once the previous flush of the partition enqueued its records (or gave up).
    previous: Option<oneshot::Receiver<()>>,
}

impl Batch {
    /// Record (`partition`, `offset`) is done once `ack` and the next flush are acknowledged.
    pub fn push(&mut self, partition: i32, offset: i64, ack: Ack) {
        self.records.push((partition, offset));
        self.acks.push(ack);
    }

    pub fn touch(&mut self, group: u32, key: &str) {
        let keys = self.dirty.entry(group).or_default();
        if !keys.contains(key) {
            keys.insert(key.into());
        }
    }

    /// Records waiting for the next flush.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dirty.is_empty()
    }

    /// Takes what the next flush writes and settles; `export(group, key)` gives each dirty
    /// key's changelog value (`None`: a tombstone). Returns the settled records and the
    /// future that acknowledges them.
    pub fn flush(
        &mut self,
        flush: FlushTo<'_>,
        mut export: impl FnMut(u32, &str) -> Option<Vec<u8>>,
    ) -> (Vec<(i32, i64)>, impl Future<Output = ()> + Send + 'static) {
        let FlushTo {
            producer,
            topic,
            partition,
            fence,
        } = flush;
        let mut dirty: Vec<(u32, Box<str>)> = self
            .dirty
            .drain()
            .flat_map(|(g, keys)| keys.into_iter().map(move |k| (g, k)))
            .collect();
        // A stable order (no semantic need: one record per key).
        dirty.sort_unstable();
        let records: Vec<OutRecord> = dirty
            .iter()
            .map(|(group, key)| {
                let value = export(*group, key);
                OutRecord {
                    partition: Some(partition),
                    tombstone: value.is_none(),
                    ..OutRecord::new(
                        topic,
                        Some(changelog_key(*group, key)),
                        value.unwrap_or_default(),
                    )
                }
            })
            .collect();
        let acks = std::mem::take(&mut self.acks);
        let previous = self.previous.take();
        let (enqueued, next) = oneshot::channel();
        self.previous = Some(next);
        let epoch = fence.epoch(partition);
        let (producer, fence) = (producer.clone(), Arc::clone(fence));
        let settled = std::mem::take(&mut self.records);
        let future = async move {
            for ack in acks {
                ack.await;
            }
            if let Some(previous) = previous {
                // Err: the previous flush was dropped (its partition moved): nothing to order.
                let _ = previous.await;
            }
            let deliveries = fence.enqueue_if(partition, epoch, || {
                records
                    .into_iter()
                    .map(|r| produce(&producer, r))
                    .collect::<Vec<_>>()
            });
            let _ = enqueued.send(());
            for d in deliveries.unwrap_or_default() {
                d.acknowledged().await;
            }
        };
        (settled, future)
    }
}

/// Where a flush writes.
pub struct FlushTo<'a> {
    pub producer: &'a FutureProducer,
    pub topic: &'a str,
    pub partition: i32,
    pub fence: &'a Arc<Fence>,
}

/// Per partition, the epoch of its ownership and whether it is owned: bumped when the stage
/// starts owning it ([`Fence::claim`]) and at every revocation.
#[derive(Debug, Default)]
pub struct Fence {
    epochs: Mutex<HashMap<i32, (u64, bool)>>,
}

impl Fence {
    pub fn epoch(&self, partition: i32) -> u64 {
        let epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        epochs.get(&partition).map_or(0, |e| e.0)
    }

    /// The stage owns `partition` from now on (a new epoch: earlier flushes stay fenced).
    pub fn claim(&self, partition: i32) {
        let mut epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        let e = epochs.entry(partition).or_default();
        *e = (e.0 + 1, true);
    }

    /// The partitions moved away: no flush writes for them until they are claimed again.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        for p in partitions {
            let e = epochs.entry(*p).or_default();
            *e = (e.0 + 1, false);
        }
    }

    /// Runs `enqueue` (under the lock, so no revocation interleaves) if `partition` is owned
    /// and still in `epoch`.
    pub fn enqueue_if<T>(
        &self,
        partition: i32,
        epoch: u64,
        enqueue: impl FnOnce() -> T,
    ) -> Option<T> {
        let epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        (epochs.get(&partition) == Some(&(epoch, true))).then(enqueue)
    }

    /// The stage consumer's revocation hook: fence the partitions, then wait (bounded) until
    /// what was already enqueued is delivered, so the next owner's restore reads it.
    pub fn hook(self: &Arc<Self>, producer: FutureProducer) -> RevokeHook {
        let fence = Arc::clone(self);
        Box::new(move |partitions: &[i32]| {
            fence.revoke(partitions);
            if let Err(e) = producer.flush(REVOKE_FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, ?partitions, "changelog not flushed within the revocation");
            }
        })
    }
}

/// A changelog partition read: its newest value per key (`None`: a tombstone) and its end.
pub type Read = (HashMap<Vec<u8>, Option<Vec<u8>>>, i64);

/// Changelog reads started when partitions are assigned (all of them at once, before their
/// first record arrives), taken by the restore of each.
pub struct Prefetch {
    runtime: tokio::runtime::Handle,
    kafka: KafkaConfig,
    group_base: String,
    stop: CancellationToken,
    reads: Mutex<HashMap<i32, tokio::task::JoinHandle<Result<Read, KeyedError>>>>,
}

impl Prefetch {
    /// Reads of `kafka.topics.changelog`, spawned on the current runtime.
    pub fn new(kafka: &KafkaConfig, group_base: &str, stop: &CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            runtime: tokio::runtime::Handle::current(),
            kafka: kafka.clone(),
            group_base: group_base.to_string(),
            stop: stop.clone(),
            reads: Mutex::default(),
        })
    }

    /// Starts reading `partitions` (their previous owners flushed their writes inside the
    /// revocation, before this assignment).
    pub fn start(&self, partitions: &[i32]) {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        for &q in partitions {
            let (kafka, group, stop) = (
                self.kafka.clone(),
                self.group_base.clone(),
                self.stop.clone(),
            );
            let read = self.runtime.spawn(async move {
                let topic = kafka.topics.changelog.clone();
                read_to_end(&kafka, &group, &topic, q, &stop).await
            });
            if let Some(old) = reads.insert(q, read) {
                old.abort();
            }
        }
    }

    /// Drops the reads of revoked partitions.
    pub fn cancel(&self, partitions: &[i32]) {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        for q in partitions {
            if let Some(read) = reads.remove(q) {
                read.abort();
            }
        }
    }

    /// The read of `q`: the one started at its assignment, else a new one.
    pub async fn take(&self, q: i32) -> Result<Read, KeyedError> {
        let started = self
            .reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&q);
        match started {
            Some(read) => read.await.map_err(|error| KeyedError::Task {
                stage: "changelog",
                error,
            })?,
            None => {
                let topic = self.kafka.topics.changelog.clone();
                read_to_end(&self.kafka, &self.group_base, &topic, q, &self.stop).await
            }
        }
    }

    /// The stage consumer's assignment hook.
    pub fn hook(self: &Arc<Self>) -> AssignHook {
        let prefetch = Arc::clone(self);
        Box::new(move |partitions: &[i32]| prefetch.start(partitions))
    }
}

/// The changelog partition's newest value per key (`None`: a tombstone) and its end offset,
/// read from its beginning to the end it had when called, on a blocking thread (a tight poll
/// loop over large fetches: a restore reads every record of the uncompacted tail).
pub async fn read_to_end(
    kafka: &KafkaConfig,
    group_base: &str,
    topic: &str,
    partition: i32,
    stop: &CancellationToken,
) -> Result<Read, KeyedError> {
    let end = end_offset(kafka, topic, partition).await?;
    if end <= 0 {
        return Ok((HashMap::new(), end));
    }
    let mut cfg = kafka.consumer_config(&format!("{group_base}{RESTORE_GROUP_SUFFIX}"));
    cfg.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("max.partition.fetch.bytes", RESTORE_FETCH_BYTES)
        .set("fetch.max.bytes", RESTORE_FETCH_BYTES);
    let reader: BaseConsumer<EofReaderContext> = cfg.create_with_context(EofReaderContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let (topic, stop) = (topic.to_string(), stop.clone());
    tokio::task::spawn_blocking(move || {
        let mut newest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut idle_since = Instant::now();
        let mut errors = 0u32;
        while !stop.is_cancelled() {
            match reader.poll(POLL_TIMEOUT) {
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    if let Some(key) = m.key() {
                        newest.insert(key.to_vec(), m.payload().map(<[u8]>::to_vec));
                    }
                    if m.offset() + 1 >= end {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    errors += 1;
                    tracing::warn!(topic, partition, error = %e, "changelog read error");
                    if errors > READ_MAX_ERRORS {
                        return Err(KeyedError::Kafka(e));
                    }
                }
                None if idle_since.elapsed() > READ_IDLE_TIMEOUT => {
                    tracing::warn!(
                        topic,
                        partition,
                        end,
                        read = newest.len(),
                        "changelog read stopped: no record within the timeout"
                    );
                    break;
                }
                None => {}
            }
        }
        Ok((newest, end))
    })
    .await
    .map_err(|error| KeyedError::Task {
        stage: "changelog",
        error,
    })?
}

/// The high watermark (next offset to be written) of `topic`/`partition`.
async fn end_offset(kafka: &KafkaConfig, topic: &str, partition: i32) -> Result<i64, KeyedError> {
    let client: BaseConsumer = kafka.client_config().create()?;
    let topic = topic.to_string();
    let (_, high) = tokio::task::spawn_blocking(move || {
        client.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
    })
    .await
    .map_err(|error| KeyedError::Task {
        stage: "changelog",
        error,
    })??;
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        let k = changelog_key(3, "acc-1|card|x");
        assert_eq!(parse_key(&k), Some((3, "acc-1|card|x")));
        assert_eq!(parse_key(b"route|2"), None);
        assert_eq!(parse_key(b"\xff|a"), None);
        assert_eq!(parse_key(b"7"), None);
    }

    #[test]
    fn a_revoked_epoch_writes_nothing_and_a_new_one_does() {
        let fence = Fence::default();
        assert_eq!(fence.enqueue_if(1, fence.epoch(1), || 5), None, "not owned");
        fence.claim(1);
        let e0 = fence.epoch(1);
        assert_eq!(fence.enqueue_if(1, e0, || 5), Some(5));
        fence.revoke(&[1]);
        assert_eq!(
            fence.enqueue_if(1, e0, || 5),
            None,
            "fenced after the revocation"
        );
        // A flush made after the revocation but before the stage saw it writes nothing either.
        let between = fence.epoch(1);
        assert_eq!(fence.enqueue_if(1, between, || 5), None);
        fence.claim(1);
        assert_eq!(
            fence.enqueue_if(1, between, || 5),
            None,
            "an older epoch stays fenced"
        );
        assert_eq!(
            fence.enqueue_if(1, fence.epoch(1), || 6),
            Some(6),
            "owned again"
        );
        fence.claim(2);
        assert_eq!(
            fence.enqueue_if(2, fence.epoch(2), || 7),
            Some(7),
            "other partitions unaffected"
        );
    }

    #[test]
    fn a_batch_counts_its_records_and_keys() {
        let mut b = Batch::default();
        assert!(b.is_empty());
        b.touch(0, "a");
        b.touch(0, "a");
        b.touch(1, "a");
        assert!(!b.is_empty());
        assert_eq!(
            b.dirty.values().map(HashSet::len).sum::<usize>(),
            2,
            "one changelog record per key and group"
        );
        b.push(4, 10, Box::pin(async {}));
        assert_eq!(b.len(), 1);
    }
}
