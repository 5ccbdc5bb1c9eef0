//! The join stage of keyed mode: reads the results topic (group `G.join`; keyed by event id, so
//! the base record and every partial of one event meet here), gathers one partial per expected
//! feature group, then scores exactly as local mode does (same spans, same outputs: the
//! decision keyed by event id with its traceparent, late copies). Incomplete joins wait in a
//! bounded moka cache with a time-to-live; duplicates from at-least-once redelivery are
//! idempotent (a decided event id is remembered for a while). An offset is stored only when the
//! decision of its event is acknowledged (or its join expired).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use rdkafka::producer::FutureProducer;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Event, FeatureValue};
use uuid::Uuid;

use super::error::KeyedError;
use super::records::ResultRecord;
use crate::decision::{Features, ToDecide, decide};
use crate::output::LateCopy;
use crate::stage::{self, KafkaInput, Limits, Outputs, Record, Stage, Ticker};
use crate::stream::Lateness;
use crate::worker::WorkerState;

/// Suffix of the stage's consumer group (`{worker.group_id}.join`).
pub const GROUP_SUFFIX: &str = ".join";
/// The lag gauge's and the logs' name of the stage.
pub const STAGE: &str = "join";
/// How often expired joins are collected.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// The base record's fields.
struct Base {
    event: Box<Event>,
    groups: Vec<u32>,
    late: bool,
    lateness_ms: i64,
    read_at_unix_us: i64,
    traceparent: Option<String>,
    source_key: Option<String>,
    source_payload: Option<String>,
}

/// An event whose parts are still arriving.
#[derive(Default)]
struct Pending {
    base: Option<Base>,
    partials: HashMap<u32, (Vec<FeatureValue>, bool)>,
    /// Every record of the event read so far: done when the decision is acknowledged.
    offsets: Vec<(i32, i64)>,
}

impl Pending {
    fn complete(&self) -> bool {
        self.base
            .as_ref()
            .is_some_and(|b| b.groups.iter().all(|g| self.partials.contains_key(g)))
    }
}

type Entry = Arc<Mutex<Pending>>;
/// Joins that expired or were evicted incomplete (taken out of their cache entries).
type Expired = Arc<Mutex<Vec<(Uuid, Pending)>>>;

struct Joiner {
    state: WorkerState,
    producer: FutureProducer,
    pending: Cache<Uuid, Entry>,
    decided: Cache<Uuid, ()>,
    /// Offsets of joins that expired or were evicted (filled by the cache's listener).
    expired: Expired,
    sweep_tick: Ticker,
}

pub(crate) async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let cfg = state.config.clone();
    let group_id = format!("{}{GROUP_SUFFIX}", cfg.worker.group_id);
    let input = KafkaInput::subscribe(
        &cfg.kafka,
        &group_id,
        &cfg.kafka.topics.feature_results,
        false,
        STAGE,
        state.metrics.lag_reporter(STAGE),
    )?;
    let expired: Expired = Arc::default();
    let sink = expired.clone();
    let pending = Cache::builder()
        .max_capacity(cfg.worker.join_max_pending)
        .time_to_live(cfg.worker.join_timeout)
        .eviction_listener(move |id: Arc<Uuid>, entry: Entry, cause| {
            if matches!(cause, RemovalCause::Expired | RemovalCause::Size) {
                let mut p = entry.lock().unwrap_or_else(PoisonError::into_inner);
                tracing::warn!(event_id = %id, cause = ?cause, has_base = p.base.is_some(), partials = p.partials.len(), "feature join incomplete at its timeout");
                let taken = std::mem::take(&mut *p);
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((*id, taken));
            }
        })
        .build();
    let decided = Cache::builder()
        .max_capacity(cfg.worker.join_max_pending.saturating_mul(4))
        .time_to_live(cfg.worker.join_timeout.saturating_mul(2))
        .build();
    let mut j = Joiner {
        state,
        producer,
        pending,
        decided,
        expired,
        sweep_tick: Ticker::new(SWEEP_INTERVAL),
    };
    stage::run(input, &mut j, Limits::of(&cfg.worker), &shutdown).await;
    Ok(())
}

impl Stage for Joiner {
    const NAME: &'static str = STAGE;

    async fn on_record(&mut self, m: Record<'_>, out: &mut Outputs) {
        self.on_message(m, out);
    }

    fn on_revoked(&mut self, revoked: &[i32]) {
        // Their records are read again by the next owner.
        let doomed: Vec<Arc<Uuid>> = self
            .pending
            .iter()
            .filter(|(_, e)| {
                e.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .offsets
                    .first()
                    .is_some_and(|(p, _)| revoked.contains(p))
            })
            .map(|(k, _)| k)
            .collect();
        for id in doomed {
            self.pending.invalidate(&*id);
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        Some(self.sweep_tick.due_at())
    }

    async fn on_wake(&mut self, now: Instant, out: &mut Outputs) {
        self.sweep_tick.fired(now);
        self.sweep(out);
    }
}

impl Joiner {
    fn sweep(&mut self, out: &mut Outputs) {
        self.pending.run_pending_tasks();
        let expired =
            std::mem::take(&mut *self.expired.lock().unwrap_or_else(PoisonError::into_inner));
        for (id, pending) in expired {
            self.state.metrics.event("join_expired");
            if pending.base.is_some() {
                // Nothing is lost: decided with the missing groups' features null (at least
                // `review`, reason `features_incomplete`).
                self.decided.insert(id, ());
                self.decide(pending, out);
            } else {
                // Only partials: the event itself never reached this join (its base record
                // is on the results topic; a redelivery decides it).
                tracing::error!(event_id = %id, partials = pending.partials.len(), "feature join without its event given up");
                out.done_all(&pending.offsets);
            }
        }
    }

    fn on_message(&mut self, m: Record<'_>, out: &mut Outputs) {
        let (p, offset) = (m.partition, m.offset);
        let record = match ResultRecord::decode(m.payload, self.state.engine.feature_set()) {
            Ok(r) => r,
            Err(e) => {
                self.state
                    .dead_letter(&self.producer, m, &e.reason, e.code, out);
                return;
            }
        };
        let id = match &record {
            ResultRecord::Base { event, .. } => event.event_id,
            ResultRecord::Partial { event_id, .. } => *event_id,
        };
        if self.decided.contains_key(&id) {
            // A redelivered part of an event already decided.
            out.done(p, offset);
            return;
        }
        let entry = self.pending.get_with(id, Entry::default);
        let ready = {
            let mut e = entry.lock().unwrap_or_else(PoisonError::into_inner);
            e.offsets.push((p, offset));
            match record {
                ResultRecord::Base {
                    event,
                    groups,
                    late,
                    lateness_ms,
                    read_at_unix_us,
                    traceparent,
                    source_key,
                    source_payload,
                } => {
                    if e.base.is_none() {
                        e.base = Some(Base {
                            event,
                            groups,
                            late,
                            lateness_ms,
                            read_at_unix_us,
                            traceparent,
                            source_key,
                            source_payload,
                        });
                    }
                }
                ResultRecord::Partial {
                    group,
                    values,
                    beyond_retention,
                    ..
                } => {
                    e.partials
                        .entry(group)
                        .or_insert((values, beyond_retention));
                }
            }
            if e.complete() {
                Some(std::mem::take(&mut *e))
            } else {
                None
            }
        };
        if let Some(done) = ready {
            self.pending.invalidate(&id);
            self.decided.insert(id, ());
            self.decide(done, out);
        }
    }

    /// Scores a complete event and sends its outputs (as local mode does).
    fn decide(&mut self, pending: Pending, out: &mut Outputs) {
        let Pending {
            base,
            partials,
            offsets,
        } = pending;
        let Some(mut base) = base else {
            return;
        };
        let late_copy = base.source_payload.take().map(|payload| LateCopy {
            key: base.source_key.take().map(String::into_bytes),
            payload: payload.into_bytes(),
        });
        let (p, o) = offsets.first().copied().unwrap_or((-1, -1));
        let parent = base.traceparent.as_deref().and_then(TraceParent::parse);
        let engine = &self.state.engine;
        let features = || -> Features {
            let mut out = BTreeMap::new();
            let mut values = Vec::new();
            for (gi, g) in engine.feature_set().groups().iter().enumerate() {
                values.clear();
                let group = u32::try_from(gi).unwrap_or(u32::MAX);
                match partials.get(&group) {
                    Some((v, _)) => values.extend(v.iter().cloned()),
                    // Expected but never arrived (an expired join): unknown.
                    None if base.groups.contains(&group) => {
                        values.extend(g.features().iter().map(|_| FeatureValue::Null));
                    }
                    // The event has no key for this group: its empty aggregates.
                    None => {
                        let _ = engine.empty_values_into(gi, &mut values);
                    }
                }
                for (f, v) in g.features().iter().zip(values.drain(..)) {
                    out.insert(f.name().to_string(), v);
                }
            }
            (out, partials.values().any(|(_, b)| *b))
        };
        let now_us = riskstream_common::now_ms().saturating_mul(1000);
        let waited = Duration::from_micros(
            u64::try_from(now_us.saturating_sub(base.read_at_unix_us)).unwrap_or(0),
        );
        let started = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        let e = ToDecide {
            event: &base.event,
            parent: parent.as_ref(),
            partition: p,
            offset: o,
            late: base.late,
            lateness: Lateness {
                lateness_ms: base.lateness_ms,
                too_late: late_copy.is_some(),
            },
            features_incomplete: base.groups.iter().any(|g| !partials.contains_key(g)),
            started,
            late_copy,
        };
        let sent = decide(&self.state, &self.producer, e, &features);
        out.push_settling(offsets, sent);
    }
}
