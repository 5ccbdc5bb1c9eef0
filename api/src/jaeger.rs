//! The Jaeger-compatible query API (what the Jaeger UI and Grafana's Jaeger data source read):
//! stored spans as Jaeger JSON (`traceID`/`spanID` hex, `references`, microsecond
//! `startTime`/`duration`, typed `tags`, `logs`, `processes`), in Jaeger's
//! `{"data","total","limit","offset","errors"}` envelope.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use riskstream_store::schema::{SpanRow, attr_type};
use serde::Serialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, JaegerError};
use crate::params;
use riskstream_store::TraceQuery;

/// OTLP span kind numbers and their Jaeger names.
pub const SPAN_KINDS: [(u8, &str); 6] = [
    (0, "unspecified"),
    (1, "internal"),
    (2, "server"),
    (3, "client"),
    (4, "producer"),
    (5, "consumer"),
];

pub fn kind_name(kind: u8) -> &'static str {
    SPAN_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("unspecified", |(_, n)| n)
}

pub fn kind_number(name: &str) -> Option<u8> {
    SPAN_KINDS
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(k, _)| *k)
}

/// Jaeger's response envelope.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub data: T,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    pub errors: Option<Vec<Value>>,
}

fn envelope<T: Serialize>(data: Vec<T>) -> Json<Envelope<Vec<T>>> {
    Json(Envelope {
        total: data.len(),
        data,
        limit: 0,
        offset: 0,
        errors: None,
    })
}

/// A Jaeger key/value with its type.
pub fn tag(key: &str, value: &str, ty: u8) -> Value {
    let (t, v) = match ty {
        attr_type::BOOL => ("bool", Value::Bool(value == "true")),
        attr_type::INT => match value.parse::<i64>() {
            Ok(i) => ("int64", json!(i)),
            Err(_) => ("string", json!(value)),
        },
        attr_type::DOUBLE => match value.parse::<f64>() {
            Ok(f) => ("float64", json!(f)),
            Err(_) => ("string", json!(value)),
        },
        attr_type::BYTES => ("binary", json!(value)),
        _ => ("string", json!(value)),
    };
    json!({ "key": key, "type": t, "value": v })
}

fn json_tag(key: &str, value: &Value) -> Value {
    match value {
        Value::Bool(b) => json!({"key": key, "type": "bool", "value": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            json!({"key": key, "type": "int64", "value": n})
        }
        Value::Number(n) => json!({"key": key, "type": "float64", "value": n}),
        Value::String(s) => json!({"key": key, "type": "string", "value": s}),
        other => json!({"key": key, "type": "string", "value": other.to_string()}),
    }
}

fn json_object_tags(json_object: &str) -> Vec<Value> {
    match serde_json::from_str::<serde_json::Map<String, Value>>(json_object) {
        Ok(map) => map.iter().map(|(k, v)| json_tag(k, v)).collect(),
        Err(_) => Vec::new(),
    }
}

fn zip_tags(keys: &[String], values: &[String], types: &[u8]) -> Vec<Value> {
    keys.iter()
        .zip(values)
        .enumerate()
        .map(|(i, (k, v))| tag(k, v, types.get(i).copied().unwrap_or(attr_type::STRING)))
        .collect()
}

fn micros(ns: u64) -> u64 {
    ns / 1000
}

/// One trace in Jaeger JSON. `spans` must belong to one trace.
pub fn trace_json(spans: &[SpanRow]) -> Value {
    // One process per distinct (service, resource attributes).
    let mut process_ids: BTreeMap<(String, Vec<String>, Vec<String>), String> = BTreeMap::new();
    let mut processes = serde_json::Map::new();
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let key = (
            s.service_name.clone(),
            s.resource_attr_keys.clone(),
            s.resource_attr_values.clone(),
        );
        let next = format!("p{}", process_ids.len() + 1);
        let pid = process_ids
            .entry(key)
            .or_insert_with(|| next.clone())
            .clone();
        if pid == next {
            let tags: Vec<Value> = zip_tags(
                &s.resource_attr_keys,
                &s.resource_attr_values,
                &s.resource_attr_types,
            )
            .into_iter()
            .filter(|t| t["key"] != "service.name")
            .collect();
            processes.insert(
                pid.clone(),
                json!({ "serviceName": s.service_name, "tags": tags }),
            );
        }
        let mut references = Vec::new();
        if !s.parent_span_id.is_empty() {
            references.push(
                json!({"refType": "CHILD_OF", "traceID": s.trace_id, "spanID": s.parent_span_id}),
            );
        }
        for (t, sp) in s.link_trace_ids.iter().zip(&s.link_span_ids) {
            references.push(json!({"refType": "FOLLOWS_FROM", "traceID": t, "spanID": sp}));
        }
        let mut tags = zip_tags(&s.span_attr_keys, &s.span_attr_values, &s.span_attr_types);
        if s.span_kind != 0 {
            tags.push(tag("span.kind", kind_name(s.span_kind), attr_type::STRING));
        }
        match s.status_code {
            1 => tags.push(tag("otel.status_code", "OK", attr_type::STRING)),
            2 => {
                tags.push(tag("otel.status_code", "ERROR", attr_type::STRING));
                tags.push(tag("error", "true", attr_type::BOOL));
            }
            _ => {}
        }
        if !s.status_message.is_empty() {
            tags.push(tag(
                "otel.status_description",
                &s.status_message,
                attr_type::STRING,
            ));
        }
        if !s.scope_name.is_empty() {
            tags.push(tag("otel.scope.name", &s.scope_name, attr_type::STRING));
        }
        if !s.scope_version.is_empty() {
            tags.push(tag(
                "otel.scope.version",
                &s.scope_version,
                attr_type::STRING,
            ));
        }
        let logs: Vec<Value> = s
            .event_times_unix_nano
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut fields = vec![tag(
                    "event",
                    s.event_names.get(i).map_or("", String::as_str),
                    attr_type::STRING,
                )];
                fields.extend(json_object_tags(
                    s.event_attributes.get(i).map_or("{}", String::as_str),
                ));
                json!({ "timestamp": micros(*t), "fields": fields })
            })
            .collect();
        out.push(json!({
            "traceID": s.trace_id,
            "spanID": s.span_id,
            "operationName": s.span_name,
            "references": references,
            "startTime": micros(s.start_time_unix_nano),
            "duration": micros(s.duration_ns),
            "tags": tags,
            "logs": logs,
            "processID": pid,
            "warnings": null,
            "flags": 1,
        }));
    }
    json!({
        "traceID": spans.first().map(|s| s.trace_id.as_str()).unwrap_or_default(),
        "spans": out,
        "processes": processes,
        "warnings": null,
    })
}

/// `GET /api/traces/{traceID}`.
#[utoipa::path(get, path = "/api/traces/{trace_id}", tag = "jaeger",
    params(("trace_id" = String, Path, description = "Trace ID, 32 hex digits, not all zero", min_length = 32, max_length = 32, pattern = "^0*[1-9a-fA-F][0-9a-fA-F]*$")),
    responses((status = 200, description = "Jaeger `{data: [trace]}` with spans and processes"), (status = 404, description = "No span of this trace"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn get_trace(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
) -> Result<Json<Envelope<Vec<Value>>>, JaegerError> {
    let id = params::trace_id(&trace_id)?;
    let spans = state.store.trace(&id).await?;
    if spans.is_empty() {
        return Err(ApiError::NotFound("trace not found".into()).into());
    }
    Ok(envelope(vec![trace_json(&spans)]))
}

/// `GET /api/services`.
#[utoipa::path(get, path = "/api/services", tag = "jaeger",
    responses((status = 200, description = "Jaeger `{data: [service names]}`"), (status = 503, description = "The trace store is unavailable")))]
pub async fn services(
    State(state): State<AppState>,
) -> Result<Json<Envelope<Vec<String>>>, JaegerError> {
    Ok(envelope(state.store.services().await?))
}

/// `GET /api/services/{service}/operations`: operation names.
#[utoipa::path(get, path = "/api/services/{service}/operations", tag = "jaeger",
    params(("service" = String, Path, min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9._:/@-]+$", description = "Service name (letters, digits and ._-:/@, 1 to 256)")),
    responses((status = 200, description = "Jaeger `{data: [operation names]}`"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn service_operations(
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<Envelope<Vec<String>>>, JaegerError> {
    let service = params::name("service", &service)?;
    let mut names: Vec<String> = state
        .store
        .operations(&service, None)
        .await?
        .into_iter()
        .map(|o| o.span_name)
        .collect();
    names.dedup();
    Ok(envelope(names))
}

#[derive(Debug, serde::Deserialize)]
pub struct OperationsParams {
    pub service: Option<String>,
    #[serde(rename = "spanKind")]
    pub span_kind: Option<String>,
}

/// `GET /api/operations?service=&spanKind=`: `[{"name","spanKind"}]`.
#[utoipa::path(get, path = "/api/operations", tag = "jaeger",
    params(("service" = String, Query, min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9._:/@-]+$", description = "Service name (required; letters, digits and ._-:/@, 1 to 256)"),
           ("spanKind" = Option<String>, Query, pattern = "^(unspecified|internal|server|client|producer|consumer)?$", description = "server, client, producer, consumer, internal or unspecified (any case)")),
    responses((status = 200, description = "Jaeger `{data: [{name, spanKind}]}`"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn operations(
    State(state): State<AppState>,
    Query(p): Query<OperationsParams>,
) -> Result<Json<Envelope<Vec<Value>>>, JaegerError> {
    let service = p
        .service
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_param("service", "parameter 'service' is required"))?;
    let service = params::name("service", &service)?;
    let kind =
        match p.span_kind.as_deref().filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(kind_number(k).ok_or_else(|| {
                ApiError::bad_param("spanKind", format!("unknown span kind {k:?}"))
            })?),
        };
    let ops = state.store.operations(&service, kind).await?;
    Ok(envelope(
        ops.into_iter()
            .map(|o| {
                let kind = if o.span_kind == 0 {
                    ""
                } else {
                    kind_name(o.span_kind)
                };
                json!({"name": o.span_name, "spanKind": kind})
            })
            .collect(),
    ))
}

/// `GET /api/traces?service=&operation=&tags=&minDuration=&maxDuration=&start=&end=&limit=`.
#[utoipa::path(get, path = "/api/traces", tag = "jaeger",
    params(("service" = String, Query, min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9._:/@-]+$", description = "Service name (required; letters, digits and ._-:/@, 1 to 256)"),
           ("operation" = Option<String>, Query, description = "Operation (span name)"),
           ("tags" = Option<String>, Query, description = "JSON object of tag filters, e.g. {\"outcome\":\"decline\"}"),
           ("start" = Option<u64>, Query, description = "Earliest span start, unix microseconds"),
           ("end" = Option<u64>, Query, description = "Latest span start, unix microseconds"),
           ("minDuration" = Option<String>, Query, pattern = "^ *(0|([0-9]+(\\.[0-9]*)?(ns|us|ms|s|m|h))+)? *$", description = "A Go duration, e.g. 10ms, 1.5s, 2m30s"),
           ("maxDuration" = Option<String>, Query, pattern = "^ *(0|([0-9]+(\\.[0-9]*)?(ns|us|ms|s|m|h))+)? *$", description = "A Go duration, e.g. 10ms, 1.5s, 2m30s"),
           ("limit" = Option<u64>, Query, maximum = 4294967295.0, description = "Most traces returned (0: the default; above api.max_limit means api.max_limit)")),
    responses((status = 200, description = "Jaeger `{data: [trace]}`"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn search(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Envelope<Vec<Value>>>, JaegerError> {
    let query: TraceQuery =
        params::trace_query(&pairs, state.default_search_limit, state.max_limit)?;
    let ids = state.store.search(&query).await?;
    let traces = state.store.traces(&ids).await?;
    Ok(envelope(
        traces.iter().map(|spans| trace_json(spans)).collect(),
    ))
}
