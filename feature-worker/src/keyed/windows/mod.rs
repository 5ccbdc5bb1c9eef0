//! The windows stage of keyed mode: the `[[window_output]]` definitions of the feature file,
//! Flink-style tumbling and hopping aggregates emitted when the watermark passes a window's
//! end, updated by late events within the allowed lateness, and a side output for the events
//! after it (docs/features.md, "Window outputs").
//!
//! It reads the repartition topic with its own group (`G.windows`): the topic is partitioned
//! by (feature group, entity key), so every event of one window-output key meets on one
//! partition, and it carries the source watermarks (in envelopes and markers). Per partition
//! the stage keeps the input watermark (as the state stage does, idle sources excluded), the
//! duplicate filter and one [`WindowOutputs`] per definition, and handles records in partition
//! order: the watermark of a record first (emitting the windows it closes), then its event.
//! Each emission goes to `kafka.topics.window_outputs`, each too-late event to
//! `kafka.topics.window_outputs_late` ([`records`]).
//!
//! Nothing is lost across restarts: a record is settled (committable) only once every window it
//! counts in is purged and the emissions up to a later record are acknowledged, and the commit
//! carries a [`checkpoint`] from which the next owner restores the windows exactly and goes on
//! emitting what the previous owner would have.

pub mod checkpoint;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use riskstream_common::Event;
use riskstream_common::kafka::Topics;
use riskstream_common::shutdown::CancellationToken;

use self::checkpoint::{Checkpoint, Progress};
use self::records::{TooLateRecord, WindowRecord};
use super::error::KeyedError;
use super::records::RepartitionRecord;
use super::replay::{partition_count, replay};
use super::watermark::{Arrival, Dedup, InputWatermark};
use crate::features::FeatureSet;
use crate::features::window_output::{Added, WindowOutputs, WindowResult};
use crate::output::{Delivery, OutRecord, produce};
use crate::stage::{self, KafkaInput, Limits, Outputs, Record, Stage, Ticker};
use crate::worker::WorkerState;

/// Suffix of the stage's consumer group (`{worker.group_id}.windows`).
pub const GROUP_SUFFIX: &str = ".windows";
/// The lag gauge's and the logs' name of the stage.
pub const STAGE: &str = "windows";
/// How soon the stage looks again at a commit waiting for acknowledgements.
const ACK_POLL: Duration = Duration::from_millis(5);
/// How often the open-windows gauge is refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on reading a partition's committed offset and checkpoint.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

/// Emissions in flight per position (the offset of the record that made them).
type Unacked = Arc<Mutex<BTreeMap<i64, usize>>>;

/// How a partition handles its records.
enum Mode {
    /// Restoring from a checkpoint: the records up to `until` are counted again into the
    /// windows kept then, nothing emitted; after it, `dedup` (the checkpoint's) takes over.
    Restore {
        until: i64,
        dedup: Dedup,
    },
    Live,
}

struct Partition {
    watermark: InputWatermark,
    dedup: Dedup,
    /// One per definition, in file order.
    outputs: Vec<WindowOutputs>,
    progress: Progress,
    unacked: Unacked,
    mode: Mode,
}

impl Partition {
    /// The windows' watermark (all definitions advance together).
    fn windows_watermark_ms(&self) -> i64 {
        self.outputs
            .first()
            .map_or(i64::MIN, WindowOutputs::watermark_ms)
    }

    /// The oldest record still counted in a kept window.
    fn oldest_position(&self) -> Option<i64> {
        self.outputs
            .iter()
            .filter_map(WindowOutputs::oldest_position)
            .min()
    }

    fn unacked_from(&self) -> Option<i64> {
        self.unacked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .next()
            .copied()
    }
}

/// What one record emits, and its metric counts per definition.
#[derive(Default)]
struct Emissions {
    records: Vec<OutRecord>,
    /// (definition, emitted, updated, too late).
    counts: Vec<(usize, u64, u64, u64)>,
}

impl Emissions {
    fn count(&mut self, def: usize, emitted: u64, updated: u64, too_late: u64) {
        match self.counts.iter_mut().find(|c| c.0 == def) {
            Some(c) => {
                c.1 += emitted;
                c.2 += updated;
                c.3 += too_late;
            }
            None => self.counts.push((def, emitted, updated, too_late)),
        }
    }
}

struct WindowsStage {
    state: WorkerState,
    producer: FutureProducer,
    group_id: String,
    source_partitions: usize,
    /// Definition indices by feature group index.
    by_group: HashMap<u32, Vec<usize>>,
    parts: HashMap<i32, Partition>,
    /// Reads the group's committed offsets and checkpoints (never joins the group).
    committed: Arc<BaseConsumer>,
    poll_at: Option<Instant>,
    gauge: Ticker,
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
    let mut by_group: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, o) in state
        .engine
        .feature_set()
        .window_outputs()
        .iter()
        .enumerate()
    {
        let g = u32::try_from(o.group_index()).unwrap_or(u32::MAX);
        by_group.entry(g).or_default().push(i);
    }
    let mut reader = cfg.kafka.client_config();
    reader
        .set("group.id", &group_id)
        .set("enable.auto.commit", "false");
    let committed: BaseConsumer = reader.create()?;
    let input = KafkaInput::subscribe(
        &cfg.kafka,
        &group_id,
        &topics.repartition,
        false,
        STAGE,
        state.metrics.lag_reporter(STAGE),
    )?;
    let mut stage = WindowsStage {
        state,
        producer,
        group_id,
        source_partitions,
        by_group,
        parts: HashMap::new(),
        committed: Arc::new(committed),
        poll_at: None,
        gauge: Ticker::new(GAUGE_INTERVAL),
        stop: shutdown.clone(),
    };
    stage::run(input, &mut stage, Limits::of(&cfg.worker), &shutdown).await;
    Ok(())
}

impl Stage for WindowsStage {
    const NAME: &'static str = STAGE;

    async fn on_record(&mut self, m: Record<'_>, out: &mut Outputs) {
        let (q, offset) = (m.partition, m.offset);
        if !self.parts.contains_key(&q) {
            self.assign(q, offset).await;
            if self.stop.is_cancelled() {
                // The replay was cut short by shutdown: emit nothing from a partial state.
                return;
            }
        }
        self.apply(q, m.payload, offset, Some(out));
        if let Some(part) = self.parts.get_mut(&q) {
            let opened = part.outputs.iter().any(|o| o.holds(offset));
            if part.progress.settles_at_once(offset, opened) {
                out.done(q, offset);
            } else {
                part.progress.read(offset);
            }
        }
        self.propose(q, offset);
        self.settle(q, out);
    }

    fn on_revoked(&mut self, revoked: &[i32]) {
        for q in revoked {
            // Its records not settled are read again (and its windows restored) by the next
            // owner; acknowledgements still to come are ignored.
            self.parts.remove(q);
        }
        tracing::info!(partitions = ?revoked, "window outputs of revoked partitions dropped");
    }

    fn wake_at(&self) -> Option<Instant> {
        Some(match self.poll_at {
            Some(at) => at.min(self.gauge.due_at()),
            None => self.gauge.due_at(),
        })
    }

    async fn on_wake(&mut self, now: Instant, out: &mut Outputs) {
        self.poll_at = None;
        let qs: Vec<i32> = self.parts.keys().copied().collect();
        for q in qs {
            self.settle(q, out);
        }
        if now >= self.gauge.due_at() {
            self.gauge.fired(now);
            let open: usize = self
                .parts
                .values()
                .flat_map(|p| p.outputs.iter())
                .map(WindowOutputs::open_windows)
                .sum();
            self.state
                .metrics
                .window_outputs_open
                .set(i64::try_from(open).unwrap_or(i64::MAX));
        }
    }
}

impl WindowsStage {
    fn new_partition(&self) -> Partition {
        Partition {
            watermark: InputWatermark::new(self.source_partitions),
            dedup: Dedup::default(),
            outputs: self
                .state
                .engine
                .feature_set()
                .window_outputs()
                .iter()
                .map(|o| WindowOutputs::new(o.spec()))
                .collect(),
            progress: Progress::default(),
            unacked: Unacked::default(),
            mode: Mode::Live,
        }
    }

    /// The committed offset and checkpoint of `q` (`None` for either if unknown).
    async fn committed(&self, q: i32) -> (Option<i64>, Option<Checkpoint>) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.state.config.kafka.topics.repartition, q);
        let reader = self.committed.clone();
        let fetched =
            tokio::task::spawn_blocking(move || reader.committed_offsets(tpl, COMMITTED_TIMEOUT))
                .await;
        match fetched {
            Ok(Ok(tpl)) => match tpl.elements().first() {
                Some(e) => (
                    match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    },
                    Checkpoint::decode(e.metadata()),
                ),
                None => (None, None),
            },
            Ok(Err(e)) => {
                tracing::warn!(partition = q, error = %e, "committed offset not readable");
                (None, None)
            }
            Err(e) => {
                tracing::warn!(partition = q, error = %e, "committed offset task failed");
                (None, None)
            }
        }
    }

    /// Rebuilds the windows of `q`, whose first record read is `first_offset`: from the
    /// committed checkpoint (the records from `first_offset` up to its `x` are restored as
    /// they come), else by replaying the partition from its beginning up to `first_offset`.
    async fn assign(&mut self, q: i32, first_offset: i64) {
        let mut part = self.new_partition();
        let (committed, checkpoint) = self.committed(q).await;
        if let Some(c) = checkpoint {
            if committed != Some(first_offset) {
                tracing::warn!(
                    partition = q,
                    first_offset,
                    committed,
                    "window outputs: reading does not start at the committed offset (records deleted by retention?): windows may miss events"
                );
            }
            tracing::info!(
                partition = q,
                first_offset,
                restore_until = c.x,
                "window outputs restored from the committed checkpoint"
            );
            part.watermark = c.watermark;
            for o in &mut part.outputs {
                o.advance(c.windows_watermark_ms);
            }
            part.mode = Mode::Restore {
                until: c.x,
                dedup: c.dedup,
            };
            self.parts.insert(q, part);
            return;
        }
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
            |m| self.apply(q, m.payload, m.offset, None),
        )
        .await;
        match replayed {
            Ok(n) => tracing::info!(
                partition = q,
                first_offset,
                replayed = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "window outputs restored by replay (no checkpoint)"
            ),
            Err(e) => tracing::error!(partition = q, error = %e, "window outputs replay failed"),
        }
    }

    /// Handles one repartition record of `q`. With `out` (live) its emissions are produced;
    /// without (a replay) they were the previous owner's.
    fn apply(&mut self, q: i32, payload: &[u8], offset: i64, out: Option<&mut Outputs>) {
        let record = match RepartitionRecord::decode(payload, self.state.engine.feature_set()) {
            Ok(r) => r,
            Err(e) => {
                if out.is_some() {
                    tracing::warn!(partition = q, offset, error = %e, "undecodable repartition record skipped");
                }
                return;
            }
        };
        let Some(part) = self.parts.get_mut(&q) else {
            return;
        };
        if let Mode::Restore { until, dedup } = &mut part.mode
            && offset > *until
        {
            part.dedup = std::mem::take(dedup);
            part.mode = Mode::Live;
        }
        let restoring = matches!(part.mode, Mode::Restore { .. });
        let mut emissions = Emissions::default();
        let ctx = Ctx {
            set: self.state.engine.feature_set(),
            topics: &self.state.config.kafka.topics,
        };
        match record {
            RepartitionRecord::Marker {
                src_partition,
                watermark_ms,
                idle,
            } => {
                if !restoring {
                    part.watermark.observe(src_partition, watermark_ms, idle);
                    advance(part, &mut emissions, &ctx);
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
                if !restoring {
                    part.watermark.observe(src_partition, watermark_ms, false);
                    advance(part, &mut emissions, &ctx);
                }
                let fresh = part.dedup.admit(src_partition, src_offset, group, ());
                if let (Arrival::Fresh(()), Some(defs)) = (fresh, self.by_group.get(&group)) {
                    add(part, defs, &event, offset, restoring, &mut emissions, &ctx);
                }
            }
        }
        self.emit(q, offset, emissions, out);
    }

    /// Produces one record's emissions (live), tracked in the partition's in-flight
    /// acknowledgements at the record's position.
    fn emit(&mut self, q: i32, offset: i64, emissions: Emissions, out: Option<&mut Outputs>) {
        let Some(out) = out else {
            return;
        };
        let set = self.state.engine.feature_set();
        for &(def, emitted, updated, too_late) in &emissions.counts {
            let name = set.window_outputs()[def].name();
            self.state.metrics.window_output(name, "emitted", emitted);
            self.state.metrics.window_output(name, "updated", updated);
            self.state.metrics.window_output(name, "too_late", too_late);
        }
        if emissions.records.is_empty() {
            return;
        }
        let Some(part) = self.parts.get(&q) else {
            return;
        };
        let deliveries: Vec<Delivery> = emissions
            .records
            .into_iter()
            .map(|r| produce(&self.producer, r))
            .collect();
        let unacked = part.unacked.clone();
        *unacked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(offset)
            .or_default() += 1;
        out.push_settling(Vec::new(), async move {
            for d in deliveries {
                d.acknowledged().await;
            }
            let mut u = unacked.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = u.get_mut(&offset) {
                *n -= 1;
                if *n == 0 {
                    u.remove(&offset);
                }
            }
        });
    }

    /// After live record `x` of `q`: proposes a commit if the oldest record still counted in
    /// a kept window moved on.
    fn propose(&mut self, q: i32, x: i64) {
        let Some(part) = self.parts.get_mut(&q) else {
            return;
        };
        if matches!(part.mode, Mode::Restore { .. }) {
            // Restored windows are the checkpoint's, not a state of their own position.
            return;
        }
        let bound = part.oldest_position().unwrap_or(x + 1).min(x + 1);
        if !part.progress.would_advance(bound) {
            return;
        }
        let checkpoint =
            Checkpoint::new(x, part.windows_watermark_ms(), &part.watermark, &part.dedup).encode();
        if checkpoint.is_none() {
            tracing::warn!(
                partition = q,
                "window outputs checkpoint too long for the commit metadata: committed without (a restart replays the partition)"
            );
        }
        part.progress.propose(x, bound, checkpoint);
    }

    /// Settles what `q` may commit now; polls again soon while a commit waits.
    fn settle(&mut self, q: i32, out: &mut Outputs) {
        let Some(part) = self.parts.get_mut(&q) else {
            return;
        };
        let unacked_from = part.unacked_from();
        if let Some(ready) = part.progress.take_ready(unacked_from) {
            out.checkpoint(q, ready.checkpoint.unwrap_or_default());
            let records: Vec<(i32, i64)> = ready.records.into_iter().map(|o| (q, o)).collect();
            out.done_all(&records);
        }
        if part.progress.waiting() && self.poll_at.is_none() {
            self.poll_at = Some(Instant::now() + ACK_POLL);
        }
    }
}

/// What the emissions of a record are built from.
struct Ctx<'a> {
    set: &'a FeatureSet,
    topics: &'a Topics,
}

impl Ctx<'_> {
    fn window(&self, def: usize, r: WindowResult) -> OutRecord {
        let record = WindowRecord::of(self.set.window_outputs()[def].name(), r);
        OutRecord::new(
            self.topics.window_outputs.as_str(),
            Some(record.key.clone().into_bytes()),
            serde_json::to_vec(&record).unwrap_or_default(),
        )
    }

    fn too_late(&self, late: &TooLateRecord) -> OutRecord {
        OutRecord::new(
            self.topics.window_outputs_late.as_str(),
            Some(late.key.clone().into_bytes()),
            serde_json::to_vec(late).unwrap_or_default(),
        )
    }
}

/// Advances every definition's windows to the partition's input watermark.
fn advance(part: &mut Partition, emissions: &mut Emissions, ctx: &Ctx<'_>) {
    let w = part.watermark.value_ms();
    if w <= part.windows_watermark_ms() {
        return;
    }
    for (def, windows) in part.outputs.iter_mut().enumerate() {
        let fired = windows.advance(w);
        if fired.is_empty() {
            continue;
        }
        emissions.count(def, fired.len() as u64, 0, 0);
        for r in fired {
            emissions.records.push(ctx.window(def, r));
        }
    }
}

/// Adds one fresh event to the windows of the definitions `defs` over its group.
fn add(
    part: &mut Partition,
    defs: &[usize],
    event: &Event,
    offset: i64,
    restoring: bool,
    emissions: &mut Emissions,
    ctx: &Ctx<'_>,
) {
    let set = ctx.set;
    for &def in defs {
        let o = &set.window_outputs()[def];
        if !o.counts(event) {
            continue;
        }
        let Some(key) = set
            .groups()
            .get(o.group_index())
            .and_then(|g| g.key_ref(event))
        else {
            continue;
        };
        let (t, value) = (event.event_time_ms, o.value_of(event));
        let windows = &mut part.outputs[def];
        if restoring {
            windows.restore(&key, t, value, offset);
            continue;
        }
        let (added, fired) = windows.add(&key, t, value, offset);
        let updated = fired.iter().filter(|r| r.update).count() as u64;
        emissions.count(def, fired.len() as u64 - updated, updated, 0);
        for r in fired {
            emissions.records.push(ctx.window(def, r));
        }
        if added == Added::TooLate {
            emissions.count(def, 0, 0, 1);
            let late = TooLateRecord {
                output: o.name().to_string(),
                key: key.to_string(),
                event_id: event.event_id,
                event_time_ms: t,
                watermark_ms: windows.watermark_ms(),
                event: event.clone(),
            };
            emissions.records.push(ctx.too_late(&late));
        }
    }
}
