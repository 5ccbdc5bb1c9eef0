//! The worker's async shell: a Kafka consumer-group loop around the synchronous core
//! (event-time clock and reorder buffer, feature engine, scorer), the decision producer, the
//! dead-letter and late topics, offset bookkeeping, and the admin HTTP server.
//!
//! Delivery: at-least-once with idempotent outcomes. An offset is stored for commit only when
//! every output of that event and of every earlier event of its partition was acknowledged by
//! Kafka; outputs are retried with backoff until acknowledged or shutdown.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use riskstream_common::kafka::{header, header_str};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::telemetry::link_span;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Decision, Event, EventDecoder, FeatureValue, now_ms};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::features::{FeatureEngine, FeatureSet};
use crate::metrics::WorkerMetrics;
use crate::scoring::{DecideContext, FeatureCatalog, FeatureKind, Scorer};
use crate::stream::{ClockConfig, Lateness, OffsetTracker, PartitionClock};

/// Start-up and run-time failures of the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("feature definitions: {0}")]
    Features(String),
    #[error("scoring setup: {0}")]
    Scoring(String),
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("admin http server: {0}")]
    Serve(std::io::Error),
    #[error("keyed mode: {0}")]
    Keyed(#[from] crate::keyed::KeyedError),
}

/// What the admin server and the loop share.
#[derive(Clone)]
pub struct WorkerState {
    pub engine: Arc<FeatureEngine>,
    pub scorer: Arc<Scorer>,
    pub metrics: WorkerMetrics,
    pub config: Arc<Config>,
    /// Rule and list updates (file watcher, control topics): see [`crate::control`].
    pub control: Arc<crate::control::ControlState>,
}

/// The feature names and kinds the scorer validates rules and models against.
pub fn catalog_of(set: &FeatureSet) -> FeatureCatalog {
    use crate::features::Aggregation;
    FeatureCatalog::new(set.features().map(|f| {
        let text =
            f.aggregation() == Aggregation::Last && f.field().is_some_and(|fl| !fl.is_numeric());
        (
            f.name().to_string(),
            if text {
                FeatureKind::Text
            } else {
                FeatureKind::Number
            },
        )
    }))
}

/// Revocations noticed by the consumer's rebalance callback, handled by the loop; lag from
/// the consumer's statistics.
pub struct WorkerContext {
    revoked: Mutex<Vec<i32>>,
    lag: riskstream_common::lag::LagReporter,
}

impl WorkerContext {
    pub fn new(lag: riskstream_common::lag::LagReporter) -> Self {
        Self {
            revoked: Mutex::default(),
            lag,
        }
    }
}

impl ClientContext for WorkerContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        riskstream_common::kafka::log_client_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.lag.report(&statistics);
    }
}

impl ConsumerContext for WorkerContext {
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
            // Commit what is done before the partitions move; what is not done is read again
            // by the next owner (at-least-once).
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions revoked");
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(parts);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
        }
    }
}

type Consumer_ = StreamConsumer<WorkerContext>;

/// A built worker: consumer subscribed, engine and scorer loaded, admin port bound.
pub struct App {
    state: WorkerState,
    consumer: Arc<Consumer_>,
    producer: FutureProducer,
    listener: TcpListener,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, WorkerError> {
        let set = FeatureSet::from_file(&config.worker.features_path).map_err(|e| {
            WorkerError::Features(format!("{}: {e}", config.worker.features_path.display()))
        })?;
        let catalog = catalog_of(&set);
        let scorer = Scorer::from_config(&config.worker.scoring, catalog)
            .map_err(|e| WorkerError::Scoring(e.to_string()))?;
        // The rules file as the scorer just loaded it: the watcher applies only later changes.
        let control = Arc::new(crate::control::ControlState::with_rules_file(
            &config.worker.scoring.rules_path,
        ));
        let engine = FeatureEngine::new(set, config.worker.state.clone());
        let metrics = WorkerMetrics::new();
        let mut consumer_config = config.kafka.consumer_config(&config.worker.group_id);
        riskstream_common::lag::LagReporter::enable(&mut consumer_config);
        let consumer: Consumer_ = consumer_config
            .create_with_context(WorkerContext::new(metrics.lag_reporter("local")))?;
        if config.worker.mode == crate::config::WorkerMode::Local {
            // Keyed mode reads through its own per-stage consumers (crate::keyed).
            consumer.subscribe(&[config.kafka.topics.events.as_str()])?;
        }
        let producer = config.kafka.producer()?;
        let listener = TcpListener::bind(&config.worker.listen)
            .await
            .map_err(|e| WorkerError::Bind(config.worker.listen.clone(), e))?;
        Ok(Self {
            state: WorkerState {
                engine: Arc::new(engine),
                scorer: Arc::new(scorer),
                metrics,
                config: Arc::new(config),
                control,
            },
            consumer: Arc::new(consumer),
            producer,
            listener,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn state(&self) -> &WorkerState {
        &self.state
    }

    /// Runs the admin server and the processing loop until shutdown, then drains.
    pub async fn run_until_stopped(self) -> Result<(), WorkerError> {
        let App {
            state,
            consumer,
            producer,
            listener,
            shutdown,
        } = self;
        let admin = {
            let router = crate::admin::router(state.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            })
        };
        let maintenance = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => {
                            let engine = state.engine.clone();
                            let _ = tokio::task::spawn_blocking(move || engine.run_pending_tasks()).await;
                            state.metrics.observe_state(&state.engine);
                        }
                    }
                }
            })
        };
        let control = {
            let w = &state.config.worker;
            let cfg = crate::control::ControlConfig {
                kafka: state.config.kafka.clone(),
                group_id: w.group_id.clone(),
                rules_path: w.scoring.rules_path.clone(),
                rules_poll_interval: w.rules_poll_interval,
            };
            tokio::spawn(crate::control::run(
                cfg,
                state.scorer.clone(),
                state.control.clone(),
                shutdown.clone(),
            ))
        };
        // Decide with the fleet's latest rule set from the first event on (bounded wait).
        state
            .control
            .wait_caught_up(state.config.worker.control_catch_up_timeout)
            .await;
        let mut result = Ok(());
        match state.config.worker.mode {
            crate::config::WorkerMode::Local => {
                let mut lp = Loop::new(state.clone(), consumer.clone(), producer.clone());
                lp.run(shutdown.clone()).await;
                drop(lp);
            }
            crate::config::WorkerMode::Keyed => {
                result = crate::keyed::run(state.clone(), producer.clone(), shutdown.clone())
                    .await
                    .map_err(WorkerError::from);
                // A failed stage stops the whole worker.
                shutdown.cancel();
            }
        }
        let _ = maintenance.await;
        let _ = control.await;
        let _ = admin.await;
        riskstream_common::kafka::commit_and_close(consumer, Duration::from_secs(10)).await;
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        tracing::info!("worker stopped");
        result
    }
}

/// One event read from Kafka, waiting for its turn in the reorder buffer.
struct Pending {
    event: Event,
    /// The `traceparent` the event arrived with (the producer's span), if valid.
    parent: Option<TraceParent>,
    partition: i32,
    offset: i64,
    read_at: Instant,
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
}

type OutputFuture = Pin<Box<dyn std::future::Future<Output = (i32, i64)> + Send>>;

struct Loop {
    state: WorkerState,
    consumer: Arc<Consumer_>,
    producer: FutureProducer,
    decoder: EventDecoder,
    clock_cfg: ClockConfig,
    clocks: HashMap<i32, PartitionClock<Pending>>,
    trackers: HashMap<i32, OffsetTracker>,
    in_flight: FuturesUnordered<OutputFuture>,
}

impl Loop {
    fn new(state: WorkerState, consumer: Arc<Consumer_>, producer: FutureProducer) -> Self {
        let w = &state.config.worker;
        let clock_cfg = ClockConfig {
            out_of_orderness_ms: w.out_of_orderness.as_millis() as i64,
            allowed_lateness_ms: w.state.allowed_lateness.as_millis() as i64,
            reorder_wait: w.reorder_wait,
        };
        // Events already on the topic were validated by whoever wrote them; here the decoder
        // only guards against poison (no partition-key or skew rule applies).
        let decoder = EventDecoder::new(riskstream_common::DecodeLimits {
            max_event_size_bytes: 1024 * 1024,
            max_future_skew_ms: i64::MAX / 4,
            required_key: None,
        });
        Self {
            state,
            consumer,
            producer,
            decoder,
            clock_cfg,
            clocks: HashMap::new(),
            trackers: HashMap::new(),
            in_flight: FuturesUnordered::new(),
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) {
        let max_in_flight = self.state.config.worker.max_in_flight;
        let consumer = self.consumer.clone();
        loop {
            self.handle_revocations();
            let reading = self.in_flight.len() < max_in_flight;
            // The end of the oldest reorder wait (none with `reorder_wait = 0`).
            let deadline = self
                .clocks
                .values()
                .filter_map(PartitionClock::next_deadline)
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
                Some((p, o)) = self.in_flight.next(), if !self.in_flight.is_empty() => self.acknowledged(p, o),
                m = consumer.recv(), if reading => match m {
                    Ok(m) => {
                        // Revocations served inside this recv() precede the message.
                        self.handle_revocations();
                        self.on_message(&m)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = wait_over => self.release_all(Instant::now()),
            }
        }
        // Drain: decide what is buffered, then wait (bounded) for every acknowledgement.
        let deadline = Instant::now() + self.state.config.worker.shutdown_timeout;
        let parts: Vec<i32> = self.clocks.keys().copied().collect();
        for p in parts {
            if let Some(clock) = self.clocks.get_mut(&p) {
                for (pending, lateness) in clock.release_all() {
                    self.decide(pending, lateness);
                }
            }
        }
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.in_flight.next()).await {
                Ok(Some((p, o))) => self.acknowledged(p, o),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.in_flight.len(),
                        "drain timed out; unacknowledged events will be read again"
                    );
                    break;
                }
            }
        }
    }

    fn handle_revocations(&mut self) {
        let revoked: Vec<i32> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for p in revoked {
            // Buffered events were not acknowledged: the next owner reads them again.
            self.clocks.remove(&p);
            self.trackers.remove(&p);
        }
    }

    fn tracker(&mut self, p: i32) -> &mut OffsetTracker {
        self.trackers.entry(p).or_default()
    }

    fn on_message(&mut self, m: &BorrowedMessage<'_>) {
        let read_at = Instant::now();
        let (p, offset) = (m.partition(), m.offset());
        self.tracker(p).begin(offset);
        let payload = m.payload().unwrap_or_default();
        let event = match self.decoder.decode_slice(payload, now_ms()) {
            Ok(e) => e,
            Err(err) => {
                self.state.metrics.event("dlq");
                let fut = dead_letter(
                    self.producer.clone(),
                    self.state.config.kafka.topics.events_dlq.clone(),
                    m,
                    err.to_string(),
                    err.code(),
                );
                self.push(p, offset, fut);
                return;
            }
        };
        let parent = header_str(m.headers(), header::TRACEPARENT).and_then(TraceParent::parse);
        let pending = Pending {
            event,
            parent,
            partition: p,
            offset,
            read_at,
            payload: payload.to_vec(),
            key: m.key().map(<[u8]>::to_vec),
        };
        let clock = self
            .clocks
            .entry(p)
            .or_insert_with(|| PartitionClock::new(self.clock_cfg));
        let (t, id) = (pending.event.event_time_ms, pending.event.event_id);
        clock.admit(t, id, pending, read_at);
        let ready = self
            .clocks
            .get_mut(&p)
            .map(|c| c.release(read_at))
            .unwrap_or_default();
        for (pending, lateness) in ready {
            self.decide(pending, lateness);
        }
    }

    fn release_all(&mut self, now: Instant) {
        let mut ready = Vec::new();
        for clock in self.clocks.values_mut() {
            ready.extend(clock.release(now));
        }
        for (pending, lateness) in ready {
            self.decide(pending, lateness);
        }
    }

    /// Computes features and the decision for one event (on time or late: features on event
    /// time either way) and sends its outputs.
    fn decide(&mut self, pending: Pending, lateness: Lateness) {
        let late = lateness.late();
        let span = tracing::info_span!(
            "process event",
            otel.name = "riskstream.worker.process",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.kafka.partition = pending.partition,
            messaging.kafka.offset = pending.offset,
            event_id = %pending.event.event_id,
            late,
        );
        let trace = link_span(&span, pending.parent.as_ref());
        let _entered = span.enter();
        let engine = &self.state.engine;
        let features_span =
            tracing::info_span!("features.update", otel.name = "riskstream.features.update");
        let (features, outcome) = features_span.in_scope(|| {
            let mut values = Vec::with_capacity(engine.feature_set().len());
            let outcome = engine.process_event_into(&pending.event, &mut values);
            let named: BTreeMap<String, FeatureValue> = engine
                .feature_set()
                .features()
                .map(|f| f.name().to_string())
                .zip(values)
                .collect();
            (named, outcome)
        });
        self.state
            .metrics
            .timeliness(timeliness_label(lateness, outcome.beyond_retention));
        let ctx = DecideContext {
            trace_id: trace.trace_id_hex(),
            late,
            lateness_ms: lateness.lateness_ms,
            beyond_retention: outcome.beyond_retention,
            features_incomplete: false,
            started: pending.read_at,
        };
        let decision = tracing::info_span!("score", otel.name = "riskstream.score")
            .in_scope(|| self.state.scorer.decide(&pending.event, &features, &ctx));
        self.state
            .metrics
            .decided(&decision, pending.read_at.elapsed());
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
        let (p, o) = (pending.partition, pending.offset);
        let late_copy = lateness.too_late.then(|| LateCopy {
            topic: topics.events_late.clone(),
            key: pending.key,
            payload: pending.payload,
        });
        let fut = send_decision(
            self.producer.clone(),
            topics.decisions.clone(),
            decision,
            late_copy,
            out_trace,
        );
        self.push(p, o, tracing::Instrument::instrument(fut, produce_span));
    }

    fn push(
        &mut self,
        p: i32,
        o: i64,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.in_flight.push(Box::pin(async move {
            fut.await;
            (p, o)
        }));
    }

    /// Every output of `(p, o)` is acknowledged: store the partition's committable offset.
    fn acknowledged(&mut self, p: i32, o: i64) {
        let Some(tracker) = self.trackers.get_mut(&p) else {
            return; // revoked meanwhile
        };
        tracker.done(o);
        if let Some(next) = tracker.committable() {
            let topic = self.state.config.kafka.topics.events.clone();
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&topic, p, Offset::Offset(next))
                .is_ok()
                && let Err(e) = self.consumer.store_offsets(&tpl)
            {
                tracing::debug!(partition = p, error = %e, "store offset");
            }
        }
    }
}

/// The metric label of an event's timeliness: `on_time`, `late` (behind the watermark within
/// the allowed lateness), `too_late` (beyond it: also copied to the late topic) or
/// `beyond_retention` (older than its key's state retention).
pub(crate) fn timeliness_label(lateness: Lateness, beyond_retention: bool) -> &'static str {
    if beyond_retention {
        "beyond_retention"
    } else if lateness.too_late {
        "too_late"
    } else if lateness.late() {
        "late"
    } else {
        "on_time"
    }
}

/// A late event's original record, copied to the late topic beside its decision.
pub(crate) struct LateCopy {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Sends the decision (and, for a late event, its copy to the late topic) with `trace` as
/// their `traceparent`, retrying until Kafka acknowledges. Shared by both worker modes.
pub(crate) async fn send_decision(
    producer: FutureProducer,
    decisions_topic: String,
    decision: Decision,
    late_copy: Option<LateCopy>,
    trace: TraceParent,
) {
    let child = trace.to_string();
    let value = serde_json::to_vec(&decision).unwrap_or_default();
    let key = decision.event_id.to_string();
    let headers = riskstream_common::kafka::headers([(header::TRACEPARENT, child.as_str())]);
    send_with_retry(
        &producer,
        &decisions_topic,
        Some(key.as_bytes()),
        &value,
        headers,
    )
    .await;
    if let Some(late) = late_copy {
        let headers = riskstream_common::kafka::headers([
            (header::TRACEPARENT, child.as_str()),
            (
                header::DLQ_REASON,
                "event behind the watermark by more than the allowed lateness (decided, with event-time features)",
            ),
        ]);
        send_with_retry(
            &producer,
            &late.topic,
            late.key.as_deref(),
            &late.payload,
            headers,
        )
        .await;
    }
}

/// Copies a poison record to the dead-letter topic with the reason in its headers.
pub(crate) fn dead_letter(
    producer: FutureProducer,
    topic: String,
    m: &BorrowedMessage<'_>,
    reason: String,
    code: &'static str,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let payload = m.payload().unwrap_or_default().to_vec();
    let key = m.key().map(<[u8]>::to_vec);
    let (src_topic, src_part, src_off) = (
        m.topic().to_string(),
        m.partition().to_string(),
        m.offset().to_string(),
    );
    let mut carried: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(h) = m.headers() {
        for h in h.iter() {
            carried.push((h.key.to_string(), h.value.unwrap_or_default().to_vec()));
        }
    }
    tracing::warn!(partition = m.partition(), offset = m.offset(), reason = %reason, "poison event sent to the dead-letter topic");
    async move {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &carried {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (k, v) in [
            (header::DLQ_REASON, reason.as_str()),
            (header::DLQ_ERROR_CODE, code),
            (header::DLQ_SOURCE_TOPIC, src_topic.as_str()),
            (header::DLQ_SOURCE_PARTITION, src_part.as_str()),
            (header::DLQ_SOURCE_OFFSET, src_off.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        send_with_retry(&producer, &topic, key.as_deref(), &payload, headers).await;
    }
}

/// Produces one record, retrying with backoff until Kafka acknowledges it.
pub(crate) async fn send_with_retry(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers.clone());
        if let Some(k) = key {
            record = record.key(k);
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(topic, error = %e, "output not acknowledged, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
