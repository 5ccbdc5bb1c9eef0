//! Synchronous decisions: `POST /v1/decisions` produces one event exactly like `/v1/events`
//! and waits for its decision on the `decisions` topic; `GET /v1/decisions/{event_id}` serves
//! the decisions this replica saw recently.
//!
//! Owns the request-reply plumbing: the [`DecisionHub`] (a consumer of the whole decisions
//! topic per replica, by manual assignment of every partition at its end offset, so any number
//! of ingest replicas each see every decision), the bounded waiter map `event_id -> oneshot`
//! (a waiter is registered before the event is produced and removed when its request ends,
//! answered or not), the recent-decisions cache (moka, bounded by bytes, with a TTL) and the
//! metrics of the synchronous path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::kafka::{KafkaConfig, header as kheader, is_retryable};
use riskstream_common::metrics::{Counter, Family, Gauge, Histogram, Registry, latency_histogram};
use riskstream_common::now_ms;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::trace_context::TraceParent;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::AppState;
use crate::config::IngestConfig;
use crate::error::ApiError;
use crate::events::{body_error, parse_body, produce_event};

/// `POST` one event and wait for its decision.
pub const DECISIONS_ROUTE: &str = "/v1/decisions";
/// `GET` a recently seen decision.
pub const DECISION_ROUTE: &str = "/v1/decisions/{event_id}";
/// The `Location` of a pending decision is this prefix and the event id.
pub const DECISION_LOCATION_PREFIX: &str = "/v1/decisions/";

/// Results of `POST /v1/decisions` in the `sync_decisions` metric.
pub mod result {
    /// The decision arrived within the deadline (200).
    pub const DECIDED: &str = "decided";
    /// The deadline passed first (202 + `Location`).
    pub const PENDING: &str = "pending";
    /// The event id's decision was already in the recent cache; nothing produced (200).
    pub const CACHED: &str = "cached";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Metrics of the synchronous path (prefix `riskstream_ingest`, served with the others at
/// `GET /metrics`).
#[derive(Clone)]
pub struct DecideMetrics {
    pub registry: Arc<Registry>,
    /// `POST /v1/decisions` answers by result (`decided`, `pending`, `cached`).
    pub sync_decisions: Family<ResultLabel, Counter>,
    /// From producing the event to its decision arriving (answered requests only).
    pub decision_wait: Histogram,
    /// Requests waiting for a decision now.
    pub waiters: Gauge,
    /// Records read from the decisions topic.
    pub decisions_seen: Counter,
    /// Records of the decisions topic without a readable event id.
    pub decisions_unreadable: Counter,
}

impl DecideMetrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("riskstream_ingest");
        let sync_decisions = Family::<ResultLabel, Counter>::default();
        let decision_wait = latency_histogram();
        let waiters = Gauge::default();
        let decisions_seen = Counter::default();
        let decisions_unreadable = Counter::default();
        r.register(
            "sync_decisions",
            "POST /v1/decisions answers by result (decided, pending, cached)",
            sync_decisions.clone(),
        );
        r.register(
            "decision_wait_seconds",
            "From producing an event to its decision arriving on the decisions topic",
            decision_wait.clone(),
        );
        r.register(
            "decision_waiters",
            "Requests waiting for their decision",
            waiters.clone(),
        );
        r.register(
            "decisions_seen",
            "Records read from the decisions topic",
            decisions_seen.clone(),
        );
        r.register(
            "decisions_unreadable",
            "Records of the decisions topic without a readable event id",
            decisions_unreadable.clone(),
        );
        Self {
            registry: Arc::new(r),
            sync_decisions,
            decision_wait,
            waiters,
            decisions_seen,
            decisions_unreadable,
        }
    }

    fn count(&self, result: &str) {
        self.sync_decisions
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }
}

/// Why a waiter could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("too many requests are waiting for decisions")]
    Full,
    #[error("another request is already waiting for this event id")]
    Duplicate,
}

type Waiters = HashMap<Uuid, (u64, oneshot::Sender<Bytes>)>;

/// Request-reply over the decisions topic for one ingest replica.
pub struct DecisionHub {
    consumer: Arc<StreamConsumer>,
    topic: String,
    waiters: Mutex<Waiters>,
    next_waiter: AtomicU64,
    max_waiters: usize,
    recent: moka::sync::Cache<Uuid, Bytes>,
    assigned: AtomicBool,
    stop: CancellationToken,
    pub metrics: DecideMetrics,
}

impl std::fmt::Debug for DecisionHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionHub")
            .field("topic", &self.topic)
            .field("assigned", &self.assigned.load(Ordering::Relaxed))
            .field("recent", &self.recent.entry_count())
            .finish_non_exhaustive()
    }
}

/// The part of a decision read when a record has no usable key.
#[derive(Deserialize)]
struct EventIdOnly {
    event_id: Uuid,
}

impl DecisionHub {
    /// Creates the consumer (no network yet). Its group id is unique to this process and
    /// never joins a group: partitions are assigned by [`DecisionHub::start`].
    pub fn new(kafka: &KafkaConfig, ingest: &IngestConfig) -> Result<Self, KafkaError> {
        let group = format!(
            "{}-ingest-decisions-{}",
            kafka.client_id,
            Uuid::new_v4().simple()
        );
        let mut cc = kafka.consumer_config(&group);
        // Nothing to commit: every replica starts at the end of the topic.
        cc.set("enable.auto.commit", "false");
        let consumer: StreamConsumer = cc.create()?;
        let max_bytes = ingest.recent_decisions_max_bytes;
        let recent = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Uuid, v: &Bytes| u32::try_from(v.len() + 16).unwrap_or(u32::MAX))
            .time_to_live(ingest.recent_decisions_ttl)
            .build();
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: kafka.topics.decisions.clone(),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(1),
            max_waiters: ingest.max_pending_decisions,
            recent,
            assigned: AtomicBool::new(false),
            stop: CancellationToken::new(),
            metrics: DecideMetrics::new(),
        })
    }

    /// Assigns every partition of the decisions topic at its current end (one attempt,
    /// bounded by `timeout`), then spawns the consumer task, which retries the assignment
    /// in the background if this attempt failed. A decision produced after a successful
    /// return is seen by this replica.
    pub async fn start(self: &Arc<Self>, timeout: Duration) {
        if let Err(e) = self.assign_at_end(timeout).await {
            tracing::warn!(topic = %self.topic, error = %e, "decisions topic not assigned yet, retrying in the background");
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.run().await });
    }

    /// Stops the consumer task (after the HTTP server drained, so waiting requests are served).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether the decisions topic is assigned (the replica can answer synchronously).
    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::SeqCst)
    }

    async fn assign_at_end(&self, timeout: Duration) -> Result<usize, KafkaError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let n = tokio::task::spawn_blocking(move || -> Result<usize, KafkaError> {
            let md = consumer.fetch_metadata(Some(&topic), timeout)?;
            let parts: Vec<i32> = md
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if parts.is_empty() {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            let mut tpl = TopicPartitionList::new();
            for p in &parts {
                let (_low, high) = consumer.fetch_watermarks(&topic, *p, timeout)?;
                tpl.add_partition_offset(&topic, *p, Offset::Offset(high))?;
            }
            consumer.assign(&tpl)?;
            Ok(parts.len())
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        self.assigned.store(true, Ordering::SeqCst);
        tracing::info!(topic = %self.topic, partitions = n, "decisions topic assigned at its end");
        Ok(n)
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        while !self.is_assigned() {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            if let Err(e) = self.assign_at_end(Duration::from_secs(5)).await {
                tracing::warn!(topic = %self.topic, error = %e, "assigning the decisions topic failed");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                m = self.consumer.recv() => match m {
                    Ok(m) => self.on_record(m.key(), m.payload()),
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "decisions consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::debug!("decisions consumer stopped");
    }

    /// One record of the decisions topic: cache it and wake its waiter, if any.
    pub fn on_record(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(payload) = payload else { return };
        self.metrics.decisions_seen.inc();
        let id = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| Uuid::parse_str(k).ok())
            .or_else(|| {
                serde_json::from_slice::<EventIdOnly>(payload)
                    .ok()
                    .map(|d| d.event_id)
            });
        let Some(id) = id else {
            self.metrics.decisions_unreadable.inc();
            tracing::debug!("decision record without a readable event id");
            return;
        };
        let bytes = Bytes::copy_from_slice(payload);
        self.recent.insert(id, bytes.clone());
        let waiter = self.lock_waiters().remove(&id);
        if let Some((_, tx)) = waiter {
            let _ = tx.send(bytes);
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a waiter for `id` (before its event is produced). Dropping the [`Waiter`]
    /// removes it.
    pub fn register(&self, id: Uuid) -> Result<Waiter<'_>, WaitError> {
        let (tx, rx) = oneshot::channel();
        let seq = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        {
            let mut w = self.lock_waiters();
            if w.contains_key(&id) {
                return Err(WaitError::Duplicate);
            }
            if w.len() >= self.max_waiters {
                return Err(WaitError::Full);
            }
            w.insert(id, (seq, tx));
        }
        self.metrics.waiters.inc();
        Ok(Waiter {
            hub: self,
            id,
            seq,
            rx: Some(rx),
        })
    }

    /// A decision seen recently (within the TTL) by this replica.
    pub fn recent(&self, id: &Uuid) -> Option<Bytes> {
        self.recent.get(id)
    }

    /// How many requests wait for a decision.
    pub fn waiting(&self) -> usize {
        self.lock_waiters().len()
    }
}

/// A registered wait for one event's decision.
pub struct Waiter<'a> {
    hub: &'a DecisionHub,
    id: Uuid,
    seq: u64,
    rx: Option<oneshot::Receiver<Bytes>>,
}

impl Waiter<'_> {
    /// Waits at most `timeout` for the decision's bytes.
    pub async fn wait(&mut self, timeout: Duration) -> Option<Bytes> {
        let rx = self.rx.as_mut()?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(b)) => {
                self.rx = None;
                Some(b)
            }
            _ => None,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.hub.metrics.waiters.dec();
        let mut w = self.hub.lock_waiters();
        if w.get(&self.id).is_some_and(|(seq, _)| *seq == self.seq) {
            w.remove(&self.id);
        }
    }
}

/// Query of `POST /v1/decisions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideQuery {
    /// The deadline for this request, milliseconds (default `ingest.decision_timeout`, at most
    /// `ingest.max_decision_timeout`).
    pub timeout_ms: Option<u64>,
}

fn decision_response(bytes: Bytes, cached: bool) -> Response {
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if cached {
        h.insert("x-riskstream-decision", HeaderValue::from_static("cached"));
    }
    resp
}

/// Checks that bytes from the decisions topic are a JSON object whose `event_id` is `id` before
/// serving them. (Only the id is extracted: the worker wrote the rest as a `Decision`, and a
/// full parse per answer would cost more than the rest of the request's handling.)
fn checked(bytes: Bytes, id: Uuid) -> Result<Bytes, ApiError> {
    match serde_json::from_slice::<EventIdOnly>(&bytes) {
        Ok(d) if d.event_id == id => Ok(bytes),
        Ok(d) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "invalid_decision",
            format!("the decision record keyed {id} is for event {}", d.event_id),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "invalid_decision",
            format!("the decision record for {id} is not a decision: {e}"),
        )),
    }
}

/// `POST /v1/decisions[?timeout_ms=N]`: one event (a JSON object), validated like
/// `/v1/events`, produced, and answered with its decision (200) or, past the deadline, with
/// `202 {"event_id","trace_id","status":"pending"}` and `Location: /v1/decisions/{event_id}`.
#[utoipa::path(post, path = "/v1/decisions", tag = "decisions",
    params(("timeout_ms" = Option<u64>, Query, description = "Deadline for the decision (default ingest.decision_timeout, at most ingest.max_decision_timeout)"),
           ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller")),
    request_body(content = Object, content_type = "application/json", description = "One event (docs/events.md)"),
    responses((status = 200, description = "The decision: outcome, score, reasons, features, trace id"),
              (status = 202, description = "Past the deadline: `{event_id, trace_id, status: pending}` with `Location: /v1/decisions/{event_id}`"),
              (status = 400, description = "Malformed JSON, or a malformed timeout_ms"),
              (status = 409, description = "A request for this event id is already waiting for its decision"),
              (status = 413, description = "Body too large"),
              (status = 415, description = "Not application/json"),
              (status = 422, description = "Invalid event (the error names every bad field), or Kafka refused the record for good"),
              (status = 502, description = "The decisions topic held a record for this event id that is not its decision"),
              (status = 503, description = "Kafka did not acknowledge the event, or too many requests wait (`Retry-After`)")))]
pub async fn post_decision(
    State(state): State<AppState>,
    query: Result<Query<DecideQuery>, QueryRejection>,
    headers_in: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = headers_in
        .get(kheader::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = tracing::info_span!(
        "POST /v1/decisions",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = DECISIONS_ROUTE,
    );
    let request_trace = riskstream_common::telemetry::link_span(&span, caller.as_ref());
    tracing::Instrument::instrument(
        post_decision_in_span(state, query, headers_in, body, request_trace),
        span,
    )
    .await
}

async fn post_decision_in_span(
    state: AppState,
    query: Result<Query<DecideQuery>, QueryRejection>,
    headers_in: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_trace: TraceParent,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let inner = &state.inner;
    let cfg = &inner.config.ingest;
    let hub = &inner.decisions;
    let timeout = match query {
        Ok(Query(q)) => match q.timeout_ms {
            None => cfg.decision_timeout,
            Some(ms) if Duration::from_millis(ms) > cfg.max_decision_timeout => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_timeout",
                    format!(
                        "timeout_ms {ms} is above the maximum {}",
                        cfg.max_decision_timeout.as_millis()
                    ),
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        },
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("invalid query: {}", e.body_text()),
            ));
        }
    };
    let deadline = started + timeout;
    let values = match body {
        Ok(body) => parse_body(&headers_in, &body)?,
        Err(r) => {
            parse_body(&headers_in, b"{}")?;
            return Err(body_error(r));
        }
    };
    let value = match <[Value; 1]>::try_from(values) {
        Ok([v @ Value::Object(_)]) => v,
        Ok(_) | Err(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "one_event_expected",
                "the body must be exactly one json event object",
            ));
        }
    };
    let event = match inner.decoder.decode_value(value, now_ms()) {
        Ok(e) => e,
        Err(err) => {
            inner.metrics.reject(err.code());
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_event",
                format!("the event is invalid: {err}"),
            )
            .with_data(json!({"errors": err.errors})));
        }
    };
    let id = event.event_id;
    // A retry of an event this replica already saw decided: answer without producing again.
    if let Some(bytes) = hub.recent(&id) {
        let bytes = checked(bytes, id)?;
        hub.metrics.count(result::CACHED);
        return Ok(decision_response(bytes, true));
    }
    let mut waiter = hub.register(id).map_err(|e| match e {
        WaitError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_waiting",
            e.to_string(),
        )
        .retry_after(cfg.retry_after_secs),
        WaitError::Duplicate => ApiError::new(
            StatusCode::CONFLICT,
            "already_waiting",
            format!("{e}: {id}"),
        ),
    })?;
    let trace = request_trace;
    let produced_at = Instant::now();
    let (partition, offset) =
        match produce_event(inner, &event, &event.to_json_bytes(), &trace).await {
            Ok(d) => {
                inner.metrics.events_accepted.inc();
                d
            }
            Err(e) if is_retryable(&e) => {
                inner.metrics.reject("kafka_unavailable");
                tracing::warn!(error = %e, event_id = %id, "kafka did not acknowledge an event");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kafka_unavailable",
                    format!("kafka did not acknowledge the event: {e}"),
                )
                .with_data(json!({"event_id": id}))
                .retry_after(cfg.retry_after_secs));
            }
            Err(e) => {
                inner.metrics.reject("kafka_rejected");
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "kafka_rejected",
                    format!("kafka refused the record: {e}"),
                ));
            }
        };
    let left = deadline.saturating_duration_since(Instant::now());
    if let Some(bytes) = waiter.wait(left).await {
        hub.metrics
            .decision_wait
            .observe(produced_at.elapsed().as_secs_f64());
        let bytes = checked(bytes, id)?;
        hub.metrics.count(result::DECIDED);
        return Ok(decision_response(bytes, false));
    }
    hub.metrics.count(result::PENDING);
    tracing::debug!(event_id = %id, timeout_ms = timeout.as_millis() as u64, "decision pending past the deadline");
    let location = format!("{DECISION_LOCATION_PREFIX}{id}");
    let body = json!({
        "event_id": id,
        "trace_id": trace.trace_id_hex(),
        "status": "pending",
        "partition": partition,
        "offset": offset,
    });
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/decisions/{event_id}`: the decision if this replica saw it within
/// `ingest.recent_decisions_ttl`, else 404 (stored decisions are served by the api).
#[utoipa::path(get, path = "/v1/decisions/{event_id}", tag = "decisions",
    params(("event_id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The event's UUID")),
    responses((status = 200, description = "The decision, if this replica saw it within ingest.recent_decisions_ttl"),
              (status = 400, description = "Not a UUID"),
              (status = 404, description = "Not seen here (stored decisions are served by the api)")))]
pub async fn get_decision(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let raw = id
        .map(|Path(s)| s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_event_id", e.body_text()))?;
    let id = Uuid::parse_str(&raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event_id",
            format!("event id {raw:?} is not a uuid: {e}"),
        )
    })?;
    match state.inner.decisions.recent(&id) {
        Some(bytes) => Ok(decision_response(checked(bytes, id)?, false)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "decision_not_found",
            format!(
                "no decision for event {id} seen recently by this replica; stored decisions are served by the api"
            ),
        )),
    }
}
