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
use std::time::Instant;

use rdkafka::producer::FutureProducer;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Event, FeatureValue};

use super::error::KeyedError;
use super::records::{RepartitionRecord, ResultRecord, repartition_of};
use super::replay::{partition_count, replay};
use crate::output::{OutRecord, produce};
use crate::stage::{self, KafkaInput, Limits, Outputs, Record, Stage};
use crate::stream::{ClockConfig, PartitionClock};
use crate::worker::WorkerState;

/// Suffix of the stage's consumer group (`{worker.group_id}.state`).
pub const GROUP_SUFFIX: &str = ".state";
/// The lag gauge's and the logs' name of the stage.
pub const STAGE: &str = "state";

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
    let input = KafkaInput::subscribe(
        &cfg.kafka,
        &group_id,
        &topics.repartition,
        false,
        STAGE,
        state.metrics.lag_reporter(STAGE),
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
    }

    fn on_revoked(&mut self, revoked: &[i32]) {
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

    fn wake_at(&self) -> Option<Instant> {
        self.parts
            .values()
            .filter_map(|p| p.reorder.next_deadline())
            .min()
    }

    async fn on_wake(&mut self, now: Instant, out: &mut Outputs) {
        self.release_due(now, false, out);
    }

    fn drain(&mut self, out: &mut Outputs) {
        // What still waits is processed now (its partials are produced and committed).
        self.release_due(Instant::now(), true, out);
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
            |m| self.apply(m, None),
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
                let item = Item {
                    event,
                    group,
                    offset,
                };
                match part.dedup.admit(src_partition, src_offset, group, item) {
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

    /// Adds one envelope to its key's state and (live) emits the group's values.
    fn process(&mut self, q: i32, item: Item, out: Option<&mut Outputs>) {
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
        out.push(q, offset, produce(&self.producer, rec).acknowledged());
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
