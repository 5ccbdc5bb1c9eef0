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
//! Exactly-once state through rebalances and crashes: every updated key's state goes to the
//! changelog ([`super::changelog`]) at each flush, before the offsets it reflects are
//! committed; on assignment the partition's keys are restored from the changelog partition
//! (read to its end), then reading continues from the committed offset. Envelopes are
//! recognised as already applied by their (source partition, source offset, group): per
//! repartition partition for the copies a new router re-sends, per key (the positions the
//! key's state carries, restored with it) for the envelopes after the committed offset that
//! the previous owner had applied before it stopped. The repartition partition is replayed
//! from its beginning (state updated, nothing emitted) only as a fallback: for groups whose
//! changelog state was written for other definitions, or when the changelog partition was
//! never written but the partition has committed progress (a worker of a version before the
//! changelog). On revocation the partition's keys are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::producer::FutureProducer;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Event, FeatureValue};

use super::changelog::{Batch, Fence, FlushTo, Prefetch, parse_key};
use super::error::KeyedError;
use super::records::{RepartitionRecord, ResultRecord, repartition_of};
use super::replay::{partition_count, replay};
use super::watermark::{Arrival, Dedup, InputWatermark};
use crate::output::{OutRecord, produce};
use crate::stage::context::RebalanceHooks;
use crate::stage::{self, KafkaInput, Limits, Outputs, Record, Stage, Ticker};
use crate::stream::{ClockConfig, PartitionClock};
use crate::worker::WorkerState;

/// Suffix of the stage's consumer group (`{worker.group_id}.state`).
pub const GROUP_SUFFIX: &str = ".state";
/// The lag gauge's and the logs' name of the stage.
pub const STAGE: &str = "state";

/// One buffered envelope.
struct Item {
    event: Box<Event>,
    group: u32,
    /// The entity key in its group (`None`: the event has none, or the group is unknown).
    key: Option<String>,
    /// Where it came from: (source partition, source offset).
    src: (i32, i64),
    offset: i64,
}

struct Partition {
    watermark: InputWatermark,
    dedup: Dedup,
    /// The reorder wait (`worker.reorder_wait`) of live envelopes; its lateness is unused.
    reorder: PartitionClock<Item>,
}

struct StateStage {
    state: WorkerState,
    producer: FutureProducer,
    group_id: String,
    source_partitions: usize,
    repartition_partitions: i32,
    parts: HashMap<i32, Partition>,
    restored: HashSet<i32>,
    values: Vec<FeatureValue>,
    /// Per partition: what the next changelog flush writes and settles.
    batches: HashMap<i32, Batch>,
    fence: Arc<Fence>,
    prefetch: Arc<Prefetch>,
    flush_tick: Ticker,
    /// A partition's batch is flushed early once it holds this many records.
    flush_max_records: usize,
    /// Groups to rebuild by a replay of the partition (the fallback), while restoring.
    replay_groups: Option<HashSet<u32>>,
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
    let group_id = format!("{}{GROUP_SUFFIX}", cfg.worker.group_id);
    let source_partitions =
        usize::try_from(partition_count(&cfg.kafka, &topics.events).await?).unwrap_or(1);
    let repartition_partitions = partition_count(&cfg.kafka, &topics.repartition).await?;
    let changelog_partitions = partition_count(&cfg.kafka, &topics.changelog).await?;
    if changelog_partitions != repartition_partitions {
        return Err(KeyedError::Changelog(format!(
            "topic `{}` has {changelog_partitions} partitions but `{}` has {repartition_partitions}: they must be equal",
            topics.changelog, topics.repartition
        )));
    }
    state.engine.log_removals();
    let fence = Arc::new(Fence::default());
    let prefetch = Prefetch::new(&cfg.kafka, &group_id, &shutdown);
    let input = KafkaInput::subscribe_with(
        &cfg.kafka,
        &group_id,
        &topics.repartition,
        false,
        STAGE,
        state.metrics.lag_reporter(STAGE),
        RebalanceHooks {
            on_revoke: Some(fence.hook(producer.clone())),
            on_assign: Some(prefetch.hook()),
        },
    )?;
    let mut stage = StateStage {
        state,
        producer,
        group_id,
        source_partitions,
        repartition_partitions,
        parts: HashMap::new(),
        restored: HashSet::new(),
        values: Vec::new(),
        batches: HashMap::new(),
        fence,
        prefetch,
        flush_tick: Ticker::new(cfg.worker.changelog_flush_interval),
        flush_max_records: cfg.worker.max_in_flight.max(1),
        replay_groups: None,
        stop: shutdown.clone(),
    };
    stage::run(input, &mut stage, Limits::of(&cfg.worker), &shutdown).await;
    Ok(())
}

impl Stage for StateStage {
    const NAME: &'static str = STAGE;

    async fn on_record(&mut self, m: Record<'_>, out: &mut Outputs) {
        let (q, offset) = (m.partition, m.offset);
        if !self.restored.contains(&q) {
            self.restore(q, offset).await;
            if self.stop.is_cancelled() {
                // The replay was cut short by shutdown: emit nothing from a partial state.
                return;
            }
        }
        self.apply(m, Some(out));
        // Under a backlog a record is always ready and the runner's timer waits: the flush is
        // checked here too.
        let now = Instant::now();
        if now >= self.flush_tick.due_at() {
            self.flush_tick.fired(now);
            self.flush_all(out);
        }
    }

    fn on_revoked(&mut self, revoked: &[i32]) {
        let n = self.repartition_partitions;
        let gone: HashSet<i32> = revoked.iter().copied().collect();
        // Their changelog is written by the next owner from now on (the revocation hook
        // fenced this stage's flushes of them).
        self.fence.revoke(revoked);
        self.prefetch.cancel(revoked);
        for q in &gone {
            self.parts.remove(q);
            self.restored.remove(q);
            self.batches.remove(q);
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

    fn wake_at(&self) -> Option<Instant> {
        let reorder = self
            .parts
            .values()
            .filter_map(|p| p.reorder.next_deadline())
            .min();
        let flush = self.flush_tick.due_at();
        Some(reorder.map_or(flush, |r| r.min(flush)))
    }

    async fn on_wake(&mut self, now: Instant, out: &mut Outputs) {
        self.release_due(now, false, out);
        if now >= self.flush_tick.due_at() {
            self.flush_tick.fired(now);
            self.flush_all(out);
        }
    }

    fn drain(&mut self, out: &mut Outputs) {
        // What still waits is processed now (its partials are produced and committed).
        self.release_due(Instant::now(), true, out);
        self.flush_all(out);
    }
}

impl StateStage {
    /// Processes the envelopes whose reorder wait is over (`all`: every waiting one).
    fn release_due(&mut self, now: Instant, all: bool, out: &mut Outputs) {
        let qs: Vec<i32> = self.parts.keys().copied().collect();
        for q in qs {
            let ready = match self.parts.get_mut(&q) {
                Some(part) if all => part.reorder.release_all(),
                Some(part) => part.reorder.release(now),
                None => continue,
            };
            for (item, _) in ready {
                self.process(q, item, Some(out));
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
        }
    }

    /// Restores the keys of `q` from its changelog partition; replays the partition's records
    /// before `first_offset` for what the changelog cannot give (nothing emitted).
    async fn restore(&mut self, q: i32, first_offset: i64) {
        let part = self.new_partition();
        self.parts.insert(q, part);
        self.fence.claim(q);
        let started = Instant::now();
        let kafka = self.state.config.kafka.clone();
        let stop = self.stop.clone();
        let (keys, end) = match self.prefetch.take(q).await {
            Ok(read) => read,
            Err(e) => {
                // Nothing restored: the fallback below rebuilds every group.
                tracing::error!(partition = q, error = %e, "changelog read failed; replaying the partition");
                (HashMap::new(), 0)
            }
        };
        let engine = &self.state.engine;
        let (mut restored, mut unreadable) = (0u64, 0u64);
        let mut stale: HashSet<u32> = HashSet::new();
        for (k, v) in &keys {
            let (Some((group, key)), Some(bytes)) = (parse_key(k), v) else {
                continue;
            };
            match engine.import_key(group as usize, key, bytes) {
                Ok(()) => restored += 1,
                Err(crate::features::FeatureEngineError::Import {
                    source: crate::features::ImportError::Incompatible { .. },
                    ..
                }) => {
                    stale.insert(group);
                }
                Err(e) => {
                    unreadable += 1;
                    tracing::error!(partition = q, group, key, error = %e, "changelog state unreadable: the key restarts empty");
                }
            }
        }
        let restore_ms = started.elapsed().as_millis() as u64;
        // The fallback: groups of other definitions, or a changelog never written although
        // the partition has committed progress.
        let groups = if end == 0 && first_offset > 0 {
            Some(HashSet::new())
        } else if !stale.is_empty() {
            Some(stale)
        } else {
            None
        };
        let mut replayed = 0;
        if let Some(groups) = groups {
            tracing::warn!(partition = q, first_offset, changelog_end = end, groups = ?groups, "replaying the repartition partition (empty: every group) for state the changelog does not have");
            // Stale groups' keys restart from the replay.
            if !groups.is_empty() {
                let n = self.repartition_partitions;
                engine.drop_keys(|gi, key| {
                    let g = u32::try_from(gi).unwrap_or(u32::MAX);
                    groups.contains(&g) && repartition_of(g, key, n) == q
                });
            }
            self.replay_groups = Some(groups);
            let topic = kafka.topics.repartition.clone();
            let group_id = self.group_id.clone();
            let result = replay(&kafka, &group_id, &topic, q, first_offset, &stop, |m| {
                self.apply(m, None)
            })
            .await;
            self.replay_groups = None;
            match result {
                Ok(n) => replayed = n,
                Err(e) => tracing::error!(partition = q, error = %e, "feature state replay failed"),
            }
        }
        tracing::info!(
            partition = q,
            first_offset,
            changelog_records = keys.len(),
            changelog_end = end,
            restored_keys = restored,
            unreadable_keys = unreadable,
            replayed,
            restore_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "feature state restored"
        );
        self.restored.insert(q);
    }

    /// Writes the changelog of every partition with updated keys (and tombstones for keys
    /// the cache dropped on its own), settling their records once acknowledged.
    fn flush_all(&mut self, out: &mut Outputs) {
        let n = self.repartition_partitions;
        for (group, key) in self.state.engine.take_removed() {
            let q = repartition_of(group, &key, n);
            if self.parts.contains_key(&q) {
                self.batches.entry(q).or_default().touch(group, &key);
            }
        }
        let qs: Vec<i32> = self.batches.keys().copied().collect();
        for q in qs {
            self.flush(q, out);
        }
    }

    /// Writes the changelog of the keys `q` updated since its last flush (their state now,
    /// envelopes still in the reorder wait marked as not applied).
    fn flush(&mut self, q: i32, out: &mut Outputs) {
        let Some(batch) = self.batches.get_mut(&q) else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        let mut waiting: HashMap<(u32, &str), Vec<(i32, i64)>> = HashMap::new();
        if let Some(part) = self.parts.get(&q) {
            for item in part.reorder.waiting() {
                if let Some(key) = &item.key {
                    waiting.entry((item.group, key)).or_default().push(item.src);
                }
            }
        }
        let engine = &self.state.engine;
        let (settled, written) = batch.flush(
            FlushTo {
                producer: &self.producer,
                topic: &self.state.config.kafka.topics.changelog,
                partition: q,
                fence: &self.fence,
            },
            |group, key| {
                let w = waiting.get(&(group, key)).cloned().unwrap_or_default();
                engine.export_key(group as usize, key, w).ok().flatten()
            },
        );
        out.push_settling(settled, written);
    }

    /// Handles one repartition record; with `out`, emits partials and settles the offset there
    /// (`None` while restoring: a record that cannot be used was dead-lettered when read live).
    fn apply(&mut self, m: Record<'_>, mut out: Option<&mut Outputs>) {
        let (q, offset) = (m.partition, m.offset);
        let record = match RepartitionRecord::decode(m.payload, self.state.engine.feature_set()) {
            Ok(r) => r,
            Err(e) => {
                if let Some(out) = out {
                    self.state
                        .dead_letter(&self.producer, m, &e.reason, e.code, out);
                }
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
                if let Some(out) = out.as_deref_mut() {
                    out.done(q, offset);
                }
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
                let replaying_other = self
                    .replay_groups
                    .as_ref()
                    .is_some_and(|gs| !gs.is_empty() && !gs.contains(&group));
                let engine = &self.state.engine;
                let gi = usize::try_from(group).unwrap_or(usize::MAX);
                let key = engine
                    .feature_set()
                    .groups()
                    .get(gi)
                    .and_then(|g| g.key_of(&event));
                let item = Item {
                    event,
                    group,
                    key,
                    src: (src_partition, src_offset),
                    offset,
                };
                let arrival = match part.dedup.admit(src_partition, src_offset, group, item) {
                    // Applied before the key's state was restored (by the previous owner).
                    Arrival::Fresh(item)
                        if replaying_other
                            || item.key.as_deref().is_some_and(|k| {
                                !engine.admit(gi, k, src_partition, src_offset)
                            }) =>
                    {
                        Arrival::Duplicate
                    }
                    other => other,
                };
                match arrival {
                    Arrival::Fresh(item) => fresh = Some(item),
                    Arrival::Duplicate => {
                        if let Some(out) = out.as_deref_mut() {
                            out.done(q, offset);
                        }
                    }
                }
            }
        }
        let Some(item) = fresh else {
            return;
        };
        let Some(out) = out else {
            // Restoring: in partition order (the live reorder wait only ever swapped events
            // less than `reorder_wait` apart in arrival; the state it leaves is the same but
            // for the order of equal-time `last` entries).
            self.process(q, item, None);
            return;
        };
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
            self.process(q, item, Some(&mut *out));
        }
    }

    /// Adds one envelope to its key's state (recording where it came from) and, live, emits
    /// the group's values; the record is settled by the partition's next changelog flush.
    fn process(&mut self, q: i32, item: Item, out: Option<&mut Outputs>) {
        let Item {
            event,
            group,
            key,
            src,
            offset,
        } = item;
        let gi = usize::try_from(group).unwrap_or(usize::MAX);
        let engine = &self.state.engine;
        self.values.clear();
        let result = match &key {
            Some(key) => engine.process_at_into(gi, key, &event, Some(src), &mut self.values),
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
        let batch = self.batches.entry(q).or_default();
        if let Some(key) = &key {
            batch.touch(group, key);
        }
        let Some(out) = out else {
            return;
        };
        let partial = ResultRecord::Partial {
            event_id: event.event_id,
            group,
            values: std::mem::take(&mut self.values),
            beyond_retention,
        };
        let rec = OutRecord::new(
            self.state.config.kafka.topics.feature_results.as_str(),
            Some(event.event_id.to_string().into_bytes()),
            serde_json::to_vec(&partial).unwrap_or_default(),
        );
        batch.push(
            q,
            offset,
            Box::pin(produce(&self.producer, rec).acknowledged()),
        );
        if batch.len() >= self.flush_max_records {
            self.flush(q, out);
        }
    }
}
