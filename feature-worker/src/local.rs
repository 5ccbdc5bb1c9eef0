//! Local mode's stage: every feature group computed by the worker that reads the event. Per
//! source partition the event-time clock and reorder wait ([`PartitionClock`]) hand events to
//! the feature engine in `(event_time_ms, event_id)` order; each is decided and its outputs
//! (decision, late copy) produced; poison records go to the dead-letter topic.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rdkafka::producer::FutureProducer;
use riskstream_common::kafka::{header, header_str};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Event, EventDecoder, FeatureValue};

use crate::decision::{Features, ToDecide, decide};
use crate::output::LateCopy;
use crate::stage::{self, KafkaInput, Limits, Outputs, Record, Stage};
use crate::stream::{ClockConfig, Lateness, PartitionClock};
use crate::worker::{WorkerState, events_decoder};

/// The lag gauge's and the logs' name of the stage.
pub const STAGE: &str = "local";

/// One event read from Kafka, waiting for its turn in the reorder buffer.
struct Pending {
    event: Event,
    parent: Option<TraceParent>,
    partition: i32,
    offset: i64,
    read_at: Instant,
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
}

struct LocalStage {
    state: WorkerState,
    producer: FutureProducer,
    decoder: EventDecoder,
    clock_cfg: ClockConfig,
    clocks: HashMap<i32, PartitionClock<Pending>>,
}

/// Runs local mode on `input` (the worker group's consumer of `events`) until shutdown.
pub async fn run(
    state: WorkerState,
    input: KafkaInput,
    producer: FutureProducer,
    shutdown: CancellationToken,
) {
    let limits = Limits::of(&state.config.worker);
    let mut stage = LocalStage {
        clock_cfg: state.config.worker.clock(),
        state,
        producer,
        decoder: events_decoder(),
        clocks: HashMap::new(),
    };
    stage::run(input, &mut stage, limits, &shutdown).await;
}

impl Stage for LocalStage {
    const NAME: &'static str = STAGE;

    async fn on_record(&mut self, m: Record<'_>, out: &mut Outputs) {
        let read_at = Instant::now();
        let (p, offset) = (m.partition, m.offset);
        let Some(event) = self
            .state
            .decode_event(&self.decoder, &self.producer, m, out)
        else {
            return;
        };
        let parent = header_str(m.headers, header::TRACEPARENT).and_then(TraceParent::parse);
        let pending = Pending {
            event,
            parent,
            partition: p,
            offset,
            read_at,
            payload: m.payload.to_vec(),
            key: m.key.map(<[u8]>::to_vec),
        };
        let clock = self
            .clocks
            .entry(p)
            .or_insert_with(|| PartitionClock::new(self.clock_cfg));
        let (t, id) = (pending.event.event_time_ms, pending.event.event_id);
        clock.admit(t, id, pending, read_at);
        for (pending, lateness) in clock.release(read_at) {
            self.decide(pending, lateness, out);
        }
    }

    fn on_revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            // Buffered events were not acknowledged: the next owner reads them again.
            self.clocks.remove(p);
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        // The end of the oldest reorder wait (none with `reorder_wait = 0`).
        self.clocks
            .values()
            .filter_map(PartitionClock::next_deadline)
            .min()
    }

    async fn on_wake(&mut self, now: Instant, out: &mut Outputs) {
        let mut ready = Vec::new();
        for clock in self.clocks.values_mut() {
            ready.extend(clock.release(now));
        }
        for (pending, lateness) in ready {
            self.decide(pending, lateness, out);
        }
    }

    fn drain(&mut self, out: &mut Outputs) {
        let mut ready = Vec::new();
        for clock in self.clocks.values_mut() {
            ready.extend(clock.release_all());
        }
        for (pending, lateness) in ready {
            self.decide(pending, lateness, out);
        }
    }
}

impl LocalStage {
    /// Computes features and the decision for one event (on time or late: features on event
    /// time either way) and sends its outputs.
    fn decide(&mut self, pending: Pending, lateness: Lateness, out: &mut Outputs) {
        let Pending {
            event,
            parent,
            partition,
            offset,
            read_at,
            payload,
            key,
        } = pending;
        let engine = &self.state.engine;
        let features = || -> Features {
            let mut values = Vec::with_capacity(engine.feature_set().len());
            let outcome = engine.process_event_into(&event, &mut values);
            let named: BTreeMap<String, FeatureValue> = engine
                .feature_set()
                .features()
                .map(|f| f.name().to_string())
                .zip(values)
                .collect();
            (named, outcome.beyond_retention)
        };
        let e = ToDecide {
            event: &event,
            parent: parent.as_ref(),
            partition,
            offset,
            late: lateness.late(),
            lateness,
            features_incomplete: false,
            started: read_at,
            late_copy: lateness.too_late.then_some(LateCopy { key, payload }),
        };
        let sent = decide(&self.state, &self.producer, e, &features);
        out.push(partition, offset, sent);
    }
}
