//! The native routes: a trace as a parent/child tree with timings (`GET /v1/traces/{trace_id}`)
//! and decisions by event id or by account and time range.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use riskstream_common::Decision;
use riskstream_store::schema::SpanRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;
use crate::jaeger::{kind_name, tag};
use crate::params;

/// One span in the tree.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SpanNode {
    pub span_id: String,
    pub parent_span_id: String,
    pub service: String,
    pub name: String,
    pub kind: String,
    pub start_time_unix_nano: u64,
    pub duration_ns: u64,
    /// Start relative to the trace's first span.
    pub offset_ns: u64,
    pub status_code: u8,
    pub status_message: String,
    pub attributes: Vec<Value>,
    pub children: Vec<SpanNode>,
}

/// A whole trace.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TraceTree {
    pub trace_id: String,
    pub span_count: usize,
    pub services: Vec<String>,
    pub start_time_unix_nano: u64,
    /// From the first span's start to the last span's end.
    pub duration_ns: u64,
    /// Spans without a parent in the trace (the root, and orphans whose parent is missing).
    pub roots: Vec<SpanNode>,
}

/// Builds the tree of `spans` (one trace).
pub fn tree(trace_id: &str, spans: &[SpanRow]) -> TraceTree {
    let start = spans
        .iter()
        .map(|s| s.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_time_unix_nano.saturating_add(s.duration_ns))
        .max()
        .unwrap_or(start);
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRow>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if !s.parent_span_id.is_empty()
            && ids.contains(s.parent_span_id.as_str())
            && s.parent_span_id != s.span_id
        {
            children
                .entry(s.parent_span_id.as_str())
                .or_default()
                .push(s);
        } else {
            roots.push(s);
        }
    }
    fn node(
        s: &SpanRow,
        start: u64,
        children: &HashMap<&str, Vec<&SpanRow>>,
        depth: usize,
    ) -> SpanNode {
        let kids = if depth > 256 {
            Vec::new()
        } else {
            children
                .get(s.span_id.as_str())
                .map(|v| {
                    v.iter()
                        .map(|c| node(c, start, children, depth + 1))
                        .collect()
                })
                .unwrap_or_default()
        };
        SpanNode {
            span_id: s.span_id.clone(),
            parent_span_id: s.parent_span_id.clone(),
            service: s.service_name.clone(),
            name: s.span_name.clone(),
            kind: kind_name(s.span_kind).to_string(),
            start_time_unix_nano: s.start_time_unix_nano,
            duration_ns: s.duration_ns,
            offset_ns: s.start_time_unix_nano.saturating_sub(start),
            status_code: s.status_code,
            status_message: s.status_message.clone(),
            attributes: s
                .span_attr_keys
                .iter()
                .zip(&s.span_attr_values)
                .enumerate()
                .map(|(i, (k, v))| tag(k, v, s.span_attr_types.get(i).copied().unwrap_or(0)))
                .collect(),
            children: kids,
        }
    }
    let mut services: Vec<String> = spans.iter().map(|s| s.service_name.clone()).collect();
    services.sort();
    services.dedup();
    TraceTree {
        trace_id: trace_id.to_string(),
        span_count: spans.len(),
        services,
        start_time_unix_nano: start,
        duration_ns: end - start,
        roots: roots
            .into_iter()
            .map(|r| node(r, start, &children, 0))
            .collect(),
    }
}

/// `GET /v1/traces/{trace_id}`.
#[utoipa::path(get, path = "/v1/traces/{trace_id}", tag = "riskstream",
    params(("trace_id" = String, Path, description = "Trace ID, 32 hex digits, not all zero", min_length = 32, max_length = 32, pattern = "^0*[1-9a-fA-F][0-9a-fA-F]*$")),
    responses((status = 200, description = "The trace as a tree of spans with the decision it led to"), (status = 404, description = "No span of this trace"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn get_trace(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TraceTree>, ApiError> {
    let id = params::trace_id(&raw)?;
    let spans = state.store.trace(&id).await?;
    if spans.is_empty() {
        return Err(ApiError::NotFound(format!("trace {id} not found")));
    }
    Ok(Json(tree(&id, &spans)))
}

/// `GET /v1/decisions/{event_id}`.
#[utoipa::path(get, path = "/v1/decisions/{event_id}", tag = "riskstream",
    params(("event_id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The event's UUID")),
    responses((status = 200, description = "The decision: outcome, score, reasons, features, models, trace id"), (status = 404, description = "No decision for this event"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn get_decision(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Decision>, ApiError> {
    let id: uuid::Uuid = raw.parse().map_err(|_| {
        ApiError::bad_param(
            "event_id",
            format!("malformed event id {raw:?}: expected a uuid"),
        )
    })?;
    let row = state
        .store
        .decision(&id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no decision for event {id}")))?;
    Decision::try_from(row)
        .map(Json)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(Debug, Deserialize)]
pub struct DecisionsParams {
    pub account_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<String>,
}

/// The answer of `GET /v1/decisions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DecisionList {
    pub account_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub decisions: Vec<Decision>,
}

/// `GET /v1/decisions?account_id=&from=&to=&limit=`: most recent first; `from` inclusive,
/// `to` exclusive (RFC 3339 or epoch milliseconds; default: everything up to now).
#[utoipa::path(get, path = "/v1/decisions", tag = "riskstream",
    params(("account_id" = String, Query, min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9._:/@-]+$", description = "Account (required; letters, digits and ._-:/@, 1 to 256)"),
           ("from" = Option<String>, Query, description = "RFC 3339 time or unix milliseconds (empty: no bound)"),
           ("to" = Option<String>, Query, description = "RFC 3339 time or unix milliseconds (empty: no bound)"),
           ("limit" = Option<u64>, Query, minimum = 1, maximum = 4294967295.0, description = "Most decisions returned (at least 1; above api.max_limit means api.max_limit)")),
    responses((status = 200, description = "`{account_id, from_ms, to_ms, decisions: [...]}`"), (status = 400, description = "A malformed parameter (the error names it)"), (status = 503, description = "The trace store is unavailable")))]
pub async fn list_decisions(
    State(state): State<AppState>,
    Query(p): Query<DecisionsParams>,
) -> Result<Json<DecisionList>, ApiError> {
    let account_id = p
        .account_id
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::bad_param("account_id", "parameter 'account_id' is required"))?;
    let account_id = params::name("account_id", &account_id)?;
    // An empty bound is no bound (as an empty limit is the default).
    let from_ms = p
        .from
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(|v| params::time_ms("from", v))
        .transpose()?
        .unwrap_or(0);
    let to_ms =
        p.to.as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| params::time_ms("to", v))
            .transpose()?
            .unwrap_or(i64::MAX);
    if from_ms > to_ms {
        return Err(ApiError::bad_param("to", "'to' must not be before 'from'"));
    }
    let limit = match p.limit.as_deref() {
        None | Some("") => 100,
        Some(v) => v.parse::<u32>().ok().filter(|l| *l > 0).ok_or_else(|| {
            ApiError::bad_param(
                "limit",
                format!("limit must be a positive integer, got {v:?}"),
            )
        })?,
    }
    .min(state.max_limit);
    let rows = state
        .store
        .decisions(&account_id, from_ms, to_ms, limit)
        .await?;
    let decisions = rows
        .into_iter()
        .map(Decision::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(DecisionList {
        account_id,
        from_ms,
        to_ms,
        decisions,
    }))
}
