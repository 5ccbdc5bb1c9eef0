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
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use riskstream_common::kafka::{header, header_str};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{EventDecoder, now_ms};

use super::error::KeyedError;
use super::records::{RepartitionRecord, ResultRecord, repartition_key, repartition_of};
use super::replay::{partition_count, replay};
use crate::output::{Delivery, OutRecord, produce_in_order};
use crate::stage::{self, KafkaInput, Limits, Outputs, Record, Stage, Ticker};
use crate::stream::Watermark;
use crate::worker::{WorkerState, events_decoder};

/// Suffix of the stage's consumer group (`{worker.group_id}.route`).
pub const GROUP_SUFFIX: &str = ".route";
/// The lag gauge's and the logs' name of the stage.
pub const STAGE: &str = "route";

/// Per source partition bookkeeping.
struct Source {
    clock: Watermark,
    /// Last watermark published in a marker, and when.
    published: Option<(i64, Instant)>,
    /// When the reader hit the end of the partition (cleared by a new record).
    eof_since: Option<Instant>,
    idle_sent: bool,
}

struct Router {
    state: WorkerState,
    producer: FutureProducer,
    decoder: EventDecoder,
    group_id: String,
    repartition_partitions: i32,
    sources: HashMap<i32, Source>,
    restored: HashSet<i32>,
    watermark_interval: Duration,
    tick: Ticker,
    /// Cancelled at shutdown (stops a replay in progress).
    stop: CancellationToken,
}

pub(crate) async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let cfg = state.config.clone();
    let group_id = format!("{}{GROUP_SUFFIX}", cfg.worker.group_id);
    let repartition_partitions = partition_count(&cfg.kafka, &cfg.kafka.topics.repartition).await?;
    let input = KafkaInput::subscribe(
        &cfg.kafka,
        &group_id,
        &cfg.kafka.topics.events,
        true,
        STAGE,
        state.metrics.lag_reporter(STAGE),
    )?;
    let watermark_interval = cfg.worker.watermark_interval.max(Duration::from_millis(1));
    let mut r = Router {
        state,
        producer,
        decoder: events_decoder(),
        group_id,
        repartition_partitions,
        sources: HashMap::new(),
        restored: HashSet::new(),
        watermark_interval,
        tick: Ticker::new(watermark_interval),
        stop: shutdown.clone(),
    };
    stage::run(input, &mut r, Limits::of(&cfg.worker), &shutdown).await;
    Ok(())
}

impl Stage for Router {
    const NAME: &'static str = STAGE;

    async fn on_record(&mut self, m: Record<'_>, out: &mut Outputs) {
        self.on_message(m, out).await;
    }

    fn on_revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            // In-flight records were not committed: the next owner routes them again (its
            // copies are dropped as duplicates by the state stage).
            self.sources.remove(p);
            self.restored.remove(p);
        }
    }

    fn on_partition_eof(&mut self, p: i32) {
        if let Some(s) = self.sources.get_mut(&p) {
            s.eof_since.get_or_insert_with(Instant::now);
        } else {
            let mut s = self.new_source();
            s.eof_since = Some(Instant::now());
            self.sources.insert(p, s);
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        Some(self.tick.due_at())
    }

    async fn on_wake(&mut self, now: Instant, _out: &mut Outputs) {
        self.tick.fired(now);
        self.on_tick().await;
    }
}

impl Router {
    fn new_source(&self) -> Source {
        Source {
            clock: Watermark::of(&self.state.config.worker.clock()),
            published: None,
            eof_since: None,
            idle_sent: false,
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
                if let Ok(e) = decoder.decode_slice(m.payload, now_ms()) {
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

    async fn on_message(&mut self, m: Record<'_>, out: &mut Outputs) {
        let read_at_unix_us = riskstream_common::now_ms().saturating_mul(1000);
        let (p, offset) = (m.partition, m.offset);
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
        source.eof_since = None;
        source.idle_sent = false;
        let payload = m.payload;
        let Some(event) = self
            .state
            .decode_event(&self.decoder, &self.producer, m, out)
        else {
            return;
        };
        let traceparent = header_str(m.headers, header::TRACEPARENT).map(str::to_string);
        let topics = &self.state.config.kafka.topics;
        let event_key = event.event_id.to_string();
        let mut deliveries: Vec<Delivery> = Vec::new();
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
            let rec = OutRecord {
                partition: Some(q),
                ..OutRecord::new(
                    topics.repartition.as_str(),
                    Some(repartition_key(group, &key).into_bytes()),
                    serde_json::to_vec(&record).unwrap_or_default(),
                )
            };
            deliveries.push(produce_in_order(&self.producer, rec).await);
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
                .then(|| m.key.map(|k| String::from_utf8_lossy(k).into_owned()))
                .flatten(),
            source_payload: too_late.then(|| String::from_utf8_lossy(payload).into_owned()),
        };
        let rec = OutRecord::new(
            topics.feature_results.as_str(),
            Some(event_key.into_bytes()),
            serde_json::to_vec(&base).unwrap_or_default(),
        );
        deliveries.push(produce_in_order(&self.producer, rec).await);
        out.push(p, offset, async move {
            for d in deliveries {
                d.acknowledged().await;
            }
        });
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
        let rec = OutRecord {
            partition: Some(q),
            ..OutRecord::new(topic, None, payload.clone())
        };
        // A lost marker is superseded by the next one: no delivery tracking.
        drop(produce_in_order(producer, rec).await);
    }
}
