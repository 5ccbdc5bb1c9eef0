//! `POST /v1/events`: the body (JSON object, array or NDJSON; each event validated, errors naming
//! the field) and the produce path (one Kafka record per event with its trace context, answered
//! only after Kafka acknowledged). [`crate::decide`] shares both.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use riskstream_common::kafka::{header as kheader, headers, is_retryable};
use riskstream_common::telemetry::link_span;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Event, EventError, now_ms};
use serde::Serialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// Content type of newline-delimited JSON bodies.
pub const NDJSON: &str = "application/x-ndjson";

/// What happened to one event of a request.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventResult {
    /// Acknowledged by Kafka.
    Accepted {
        index: usize,
        event_id: String,
        trace_id: String,
        partition: i32,
        offset: i64,
    },
    /// Refused for what it is: fix it before sending again.
    Rejected {
        index: usize,
        errors: Vec<riskstream_common::FieldError>,
    },
    /// Valid, but Kafka did not acknowledge it: send it again later (same `event_id`).
    Failed {
        index: usize,
        event_id: String,
        error: String,
    },
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Serialize)]
pub struct BatchResult {
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    /// Whether any event was not accepted.
    pub errors: bool,
    pub results: Vec<EventResult>,
}

/// Splits the body into JSON values by content type. Syntax errors refuse the whole request.
pub fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ctype.as_deref() {
        Some("application/json") => {
            let v: Value = serde_json::from_slice(body).map_err(|e| malformed(&e, None))?;
            match v {
                Value::Array(items) => Ok(items),
                obj @ Value::Object(_) => Ok(vec![obj]),
                other => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!(
                        "body must be one json object or an array of them, got {}",
                        match other {
                            Value::Null => "null",
                            Value::Bool(_) => "a boolean",
                            Value::Number(_) => "a number",
                            _ => "a string",
                        }
                    ),
                )),
            }
        }
        Some(NDJSON) | Some("application/ndjson") | Some("application/jsonl") => body
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| serde_json::from_slice(line).map_err(|e| malformed(&e, Some(i + 1))))
            .collect(),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content-type must be application/json or {NDJSON}, got {}",
                other.unwrap_or("none")
            ),
        )),
    }
}

fn malformed(e: &serde_json::Error, ndjson_line: Option<usize>) -> ApiError {
    let line = ndjson_line.unwrap_or(e.line());
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!("malformed json at line {line} column {}: {e}", e.column()),
    )
    .with_data(json!({"line": line, "column": e.column()}))
}

pub(crate) fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            format!("request body too large: {}", r.body_text()),
        )
    } else {
        ApiError::new(status, "invalid_body", r.body_text())
    }
}

#[utoipa::path(post, path = "/v1/events", tag = "events",
    params(("traceparent" = Option<String>, Header, description = "W3C trace context of the caller")),
    request_body(content = Object, content_type = "application/json", description = "One event (a JSON object), a JSON array of events, or NDJSON (`application/x-ndjson`); fields in docs/events.md"),
    responses((status = 202, description = "At least one event acknowledged by Kafka (acks=all), none failed: `{accepted, rejected, failed, errors, results}`, one result per event (accepted ones with event_id, trace_id, partition, offset; rejected ones name their fields)"),
              (status = 400, description = "Malformed JSON (line and column), not an object or array, or no event"),
              (status = 413, description = "Body over max_body_bytes or more than max_batch_events events"),
              (status = 415, description = "Not application/json or application/x-ndjson"),
              (status = 422, description = "Every event invalid; `data` holds the per-event results"),
              (status = 503, description = "Kafka did not acknowledge some event within produce_timeout (`Retry-After`); only acknowledged events are reported accepted")))]
pub(crate) async fn post_events(
    State(state): State<AppState>,
    headers_in: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = headers_in
        .get(kheader::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = tracing::info_span!(
        "POST /v1/events",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/events",
    );
    let request_trace = link_span(&span, caller.as_ref());
    tracing::Instrument::instrument(
        post_events_in_span(state, headers_in, body, request_trace),
        span,
    )
    .await
}

async fn post_events_in_span(
    state: AppState,
    headers_in: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_trace: TraceParent,
) -> Result<Response, ApiError> {
    let inner = &state.inner;
    let cfg = &inner.config;
    // Content type first: a wrong one is 415 whatever the body.
    let values = match body {
        Ok(body) => parse_body(&headers_in, &body)?,
        Err(r) => {
            parse_body(&headers_in, b"{}")?;
            return Err(body_error(r));
        }
    };
    if values.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_events",
            "the body holds no event",
        ));
    }
    if values.len() > cfg.ingest.max_batch_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "{} events in one request, more than max_batch_events {}",
                values.len(),
                cfg.ingest.max_batch_events
            ),
        ));
    }
    let now = now_ms();
    let decoded: Vec<Result<(Event, Vec<u8>), EventError>> = values
        .into_iter()
        .map(|v| inner.decoder.decode_value_encoded(v, now))
        .collect();

    let results = produce_all(&state, decoded, &request_trace).await;
    let mut out = BatchResult {
        accepted: 0,
        rejected: 0,
        failed: 0,
        errors: false,
        results,
    };
    let mut retryable_failure = false;
    for r in &out.results {
        match r {
            EventResult::Accepted { .. } => out.accepted += 1,
            EventResult::Rejected { .. } => out.rejected += 1,
            EventResult::Failed { .. } => {
                out.failed += 1;
                retryable_failure = true;
            }
        }
    }
    out.errors = out.rejected + out.failed > 0;
    if retryable_failure {
        let data = serde_json::to_value(&out).unwrap_or(Value::Null);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!(
                "kafka did not acknowledge {} event(s); {} accepted: retry the failed ones",
                out.failed, out.accepted
            ),
        )
        .with_data(data)
        .retry_after(cfg.ingest.retry_after_secs));
    }
    if out.accepted == 0 {
        let data = serde_json::to_value(&out).unwrap_or(Value::Null);
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_events",
            format!("all {} event(s) were invalid", out.rejected),
        )
        .with_data(data));
    }
    // The common case is serialized straight to bytes, without an intermediate Value.
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

/// Produces every valid event concurrently and waits for every acknowledgement.
async fn produce_all(
    state: &AppState,
    decoded: Vec<Result<(Event, Vec<u8>), EventError>>,
    request_trace: &TraceParent,
) -> Vec<EventResult> {
    let inner = &state.inner;
    let futures = decoded
        .into_iter()
        .enumerate()
        .map(|(index, d)| async move {
            let (event, payload) = match d {
                Ok(e) => e,
                Err(err) => {
                    inner.metrics.reject(err.code());
                    return EventResult::Rejected {
                        index,
                        errors: err.errors,
                    };
                }
            };
            let trace = *request_trace;
            match produce_event(inner, &event, &payload, &trace).await {
                Ok((partition, offset)) => {
                    inner.metrics.events_accepted.inc();
                    EventResult::Accepted {
                        index,
                        event_id: event.event_id.to_string(),
                        trace_id: trace.trace_id_hex(),
                        partition,
                        offset,
                    }
                }
                Err(e) => produce_failed(inner, index, &event, &e),
            }
        });
    join_all(futures).await
}

/// Produces one valid event to the events topic (key = the configured partition key, the
/// event time as timestamp) in a `kafka.produce` span that is a child of `trace`, whose
/// context becomes the record's `traceparent` header, and waits for the broker's
/// acknowledgement, bounded by `produce_timeout`. Returns the partition and offset.
pub(crate) async fn produce_event(
    inner: &crate::Inner,
    event: &Event,
    payload: &[u8],
    trace: &TraceParent,
) -> Result<(i32, i64), KafkaError> {
    let topic = inner.config.kafka.topics.events.as_str();
    let key = event
        .field_str(inner.config.ingest.partition_key.as_str())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "kafka.produce",
        otel.name = "riskstream.ingest.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.destination.name = topic,
        event_id = %event.event_id,
    );
    // The header carries this span's context, so the worker's span is its child.
    let traceparent = link_span(&span, Some(trace)).to_string();
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .timestamp(event.event_time_ms)
        .headers(headers([(kheader::TRACEPARENT, traceparent.as_str())]));
    let started = Instant::now();
    let res = tracing::Instrument::instrument(
        inner
            .producer
            .send(record, Timeout::After(inner.config.ingest.produce_timeout)),
        span,
    )
    .await;
    inner
        .metrics
        .produce_latency
        .observe(started.elapsed().as_secs_f64());
    res.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e)
}

fn produce_failed(
    inner: &crate::Inner,
    index: usize,
    event: &Event,
    e: &KafkaError,
) -> EventResult {
    if is_retryable(e) {
        inner.metrics.reject("kafka_unavailable");
        tracing::warn!(error = %e, event_id = %event.event_id, "kafka did not acknowledge an event");
        EventResult::Failed {
            index,
            event_id: event.event_id.to_string(),
            error: e.to_string(),
        }
    } else {
        inner.metrics.reject("kafka_rejected");
        EventResult::Rejected {
            index,
            errors: vec![riskstream_common::FieldError::new(
                "$",
                "kafka_rejected",
                format!("kafka refused the record: {e}"),
            )],
        }
    }
}
