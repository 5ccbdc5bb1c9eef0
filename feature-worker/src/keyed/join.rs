//! The join stage of keyed mode: reads the results topic (group `G.join`; keyed by event id, so
//! the base record and every partial of one event meet here), gathers one partial per expected
//! feature group, then scores exactly as local mode does (same spans, same outputs: the
//! decision keyed by event id with its traceparent, late copies). Incomplete joins wait in a
//! bounded moka cache with a time-to-live; duplicates from at-least-once redelivery are
//! idempotent (a decided event id is remembered for a while). An offset is stored only when the
//! decision of its event is acknowledged (or its join expired).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::telemetry::link_span;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Event, FeatureValue};
use uuid::Uuid;

use super::{JOIN_GROUP_SUFFIX, KeyedError, ResultRecord, StageConsumer, stage_consumer};
use crate::app::{LateCopy, WorkerState, send_decision};
use crate::scoring::DecideContext;
use crate::stream::OffsetTracker;

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
type Acked = Pin<Box<dyn std::future::Future<Output = Vec<(i32, i64)>> + Send>>;

struct Joiner {
    state: WorkerState,
    consumer: Arc<StageConsumer>,
    producer: FutureProducer,
    pending: Cache<Uuid, Entry>,
    decided: Cache<Uuid, ()>,
    /// Offsets of joins that expired or were evicted (filled by the cache's listener).
    expired: Expired,
    trackers: HashMap<i32, OffsetTracker>,
    in_flight: FuturesUnordered<Acked>,
}

pub(crate) async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let cfg = state.config.clone();
    let group_id = format!("{}{JOIN_GROUP_SUFFIX}", cfg.worker.group_id);
    let consumer = Arc::new(stage_consumer(
        &cfg.kafka,
        &group_id,
        &cfg.kafka.topics.feature_results,
        false,
        state.metrics.lag_reporter("join"),
    )?);
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
        consumer: consumer.clone(),
        producer,
        pending,
        decided,
        expired,
        trackers: HashMap::new(),
        in_flight: FuturesUnordered::new(),
    };
    j.run(shutdown).await;
    drop(j);
    riskstream_common::kafka::commit_and_close(consumer, super::CLOSE_TIMEOUT).await;
    Ok(())
}

impl Joiner {
    async fn run(&mut self, shutdown: CancellationToken) {
        let max_in_flight = self.state.config.worker.max_in_flight;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            self.handle_revocations();
            let reading = self.in_flight.len() < max_in_flight;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(offsets) = self.in_flight.next(), if !self.in_flight.is_empty() => self.acknowledged(&offsets),
                m = consumer.recv(), if reading => match m {
                    Ok(m) => {
                        // Revocations served inside this recv() precede the message.
                        self.handle_revocations();
                        self.on_message(&m)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error (join)");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = tick.tick() => self.sweep(),
            }
        }
        let deadline = Instant::now() + self.state.config.worker.shutdown_timeout;
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.in_flight.next()).await {
                Ok(Some(offsets)) => self.acknowledged(&offsets),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(in_flight = self.in_flight.len(), "join drain timed out");
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
        for p in &revoked {
            self.trackers.remove(p);
        }
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

    fn sweep(&mut self) {
        self.pending.run_pending_tasks();
        let expired =
            std::mem::take(&mut *self.expired.lock().unwrap_or_else(PoisonError::into_inner));
        for (id, pending) in expired {
            self.state.metrics.event("join_expired");
            if pending.base.is_some() {
                // Nothing is lost: decided with the missing groups' features null (at least
                // `review`, reason `features_incomplete`).
                self.decided.insert(id, ());
                self.decide(pending);
            } else {
                // Only partials: the event itself never reached this join (its base record
                // is on the results topic; a redelivery decides it).
                tracing::error!(event_id = %id, partials = pending.partials.len(), "feature join without its event given up");
                self.acknowledged(&pending.offsets);
            }
        }
    }

    fn on_message(&mut self, m: &BorrowedMessage<'_>) {
        let (p, offset) = (m.partition(), m.offset());
        if !self.consumer.context().is_assigned(p) {
            return;
        }
        self.trackers.entry(p).or_default().begin(offset);
        let record: ResultRecord = match serde_json::from_slice(m.payload().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = p, offset, error = %e, "undecodable result record skipped");
                self.acknowledged(&[(p, offset)]);
                return;
            }
        };
        let id = match &record {
            ResultRecord::Base { event, .. } => event.event_id,
            ResultRecord::Partial { event_id, .. } => *event_id,
        };
        if self.decided.contains_key(&id) {
            // A redelivered part of an event already decided.
            self.acknowledged(&[(p, offset)]);
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
            self.decide(done);
        }
    }

    /// Scores a complete event and sends its outputs (as local mode does).
    fn decide(&mut self, pending: Pending) {
        let Pending {
            base,
            partials,
            offsets,
        } = pending;
        let Some(base) = base else {
            return;
        };
        let (p, o) = offsets.first().copied().unwrap_or((-1, -1));
        let parent = base.traceparent.as_deref().and_then(TraceParent::parse);
        let span = tracing::info_span!(
            "process event",
            otel.name = "riskstream.worker.process",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.kafka.partition = p,
            messaging.kafka.offset = o,
            event_id = %base.event.event_id,
            late = base.late,
        );
        let trace = link_span(&span, parent.as_ref());
        let _entered = span.enter();
        let engine = &self.state.engine;
        let features: BTreeMap<String, FeatureValue> =
            tracing::info_span!("features.update", otel.name = "riskstream.features.update")
                .in_scope(|| {
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
                    out
                });
        let now_us = riskstream_common::now_ms().saturating_mul(1000);
        let waited = Duration::from_micros(
            u64::try_from(now_us.saturating_sub(base.read_at_unix_us)).unwrap_or(0),
        );
        let started = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        let beyond_retention = partials.values().any(|(_, b)| *b);
        let lateness = crate::stream::Lateness {
            lateness_ms: base.lateness_ms,
            too_late: base.source_payload.is_some(),
        };
        self.state
            .metrics
            .timeliness(crate::app::timeliness_label(lateness, beyond_retention));
        let ctx = DecideContext {
            trace_id: trace.trace_id_hex(),
            late: base.late,
            lateness_ms: base.lateness_ms,
            beyond_retention,
            features_incomplete: base.groups.iter().any(|g| !partials.contains_key(g)),
            started,
        };
        let decision = tracing::info_span!("score", otel.name = "riskstream.score")
            .in_scope(|| self.state.scorer.decide(&base.event, &features, &ctx));
        self.state.metrics.decided(&decision, started.elapsed());
        let topics = &self.state.config.kafka.topics;
        let produce_span = tracing::info_span!(
            "kafka.produce",
            otel.name = "riskstream.decision.produce",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %topics.decisions,
            outcome = decision.outcome.as_str(),
        );
        let out_trace = link_span(&produce_span, Some(&trace));
        let late_copy = base.source_payload.map(|payload| LateCopy {
            topic: topics.events_late.clone(),
            key: base.source_key.map(String::into_bytes),
            payload: payload.into_bytes(),
        });
        let fut = send_decision(
            self.producer.clone(),
            topics.decisions.clone(),
            decision,
            late_copy,
            out_trace,
        );
        let fut = tracing::Instrument::instrument(fut, produce_span);
        self.in_flight.push(Box::pin(async move {
            fut.await;
            offsets
        }));
    }

    fn acknowledged(&mut self, offsets: &[(i32, i64)]) {
        let topic = self.state.config.kafka.topics.feature_results.clone();
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            let Some(tracker) = self.trackers.get_mut(&p) else {
                continue; // revoked meanwhile
            };
            tracker.done(o);
            if let Some(next) = tracker.committable() {
                let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(next));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.store_offsets(&tpl)
        {
            tracing::debug!(error = %e, "store offset (join)");
        }
    }
}
