//! The browser pages: `GET /ui/` lists recent decisions (outcome, score, reasons, latency) and
//! recent traces; `GET /ui/traces/{trace_id}` draws a trace as a waterfall (services, spans,
//! timings, attributes) with the decisions it led to. Rendered on the server with `maud`
//! (every value escaped), self-contained: inline CSS, no script, no external asset.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use riskstream_common::Decision;
use riskstream_store::DecisionRow;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;
use crate::native::{SpanNode, TraceTree, tree};
use crate::params;

/// Where the pages live.
pub const UI_ROUTE: &str = "/ui/";
pub const UI_TRACE_ROUTE: &str = "/ui/traces/{trace_id}";

/// How far back `/ui/` looks.
const RECENT_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Rows per table on `/ui/` by default, and at most.
const DEFAULT_ROWS: u32 = 50;
const MAX_ROWS: u32 = 500;
/// Decisions looked up for one trace (a batch POST may carry many events).
const MAX_TRACE_DECISIONS: usize = 50;
/// The span attribute that names the event a span processed.
const EVENT_ID_ATTRIBUTE: &str = "event_id";

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px 20px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:4px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,monospace}
.outcome{padding:1px 6px;border-radius:3px;color:#fff;font-size:12px}
.approve{background:#2f8f46}.challenge{background:#c08a00}.review{background:#d26a00}.decline{background:#c62828}
.muted{color:#6b7280}.meta span{margin-right:18px}
.wf{background:#fff;border:1px solid #e3e6ea}.wf .row{display:flex;align-items:center;border-bottom:1px solid #f0f1f3;min-height:24px}
.wf .label{width:38%;padding:2px 8px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.wf .lane{position:relative;flex:1;height:18px;margin-right:8px}
.wf .bar{position:absolute;top:3px;height:12px;border-radius:2px;min-width:2px}
.wf .dur{width:90px;text-align:right;padding-right:8px;font-variant-numeric:tabular-nums}
.wf details{width:100%}.wf summary{display:flex;align-items:center;cursor:pointer;list-style:none}
.wf .attrs{margin:2px 0 6px 40px;width:auto}.wf .attrs td{border:0;padding:1px 8px}
.svc{font-size:12px;padding:0 5px;border-radius:3px;color:#fff;margin-right:6px}
.error{color:#c62828;font-weight:600}
"#;

/// Colours for services, picked by a stable hash of the name.
const PALETTE: [&str; 8] = [
    "#3b6fd8", "#2f8f46", "#8e44ad", "#d26a00", "#00838f", "#c2185b", "#5d6d7e", "#7c6a00",
];

fn colour(service: &str) -> &'static str {
    let h = service
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PALETTE[h as usize % PALETTE.len()]
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · riskstream" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { a href=(UI_ROUTE) { "riskstream" } span.muted { " · traces and decisions" } }
                main { (body) }
            }
        }
    }
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn format_ns(ns: u64) -> String {
    format_ms(i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX))
}

fn format_duration_ns(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{:.2} s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.1} µs", n as f64 / 1e3),
    }
}

fn outcome_badge(outcome: &str) -> Markup {
    html! { span class={ "outcome " (outcome) } { (outcome) } }
}

fn reasons_text(d: &Decision) -> String {
    d.reasons
        .iter()
        .map(|r| format!("{}:{}", r.kind, r.code))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decisions_table(decisions: &[Decision]) -> Markup {
    html! {
        table #decisions {
            tr { th { "event time" } th { "event" } th { "account" } th { "outcome" } th { "score" }
                 th { "reasons" } th { "latency" } th { "trace" } }
            @for d in decisions {
                tr.decision data-event-id=(d.event_id) {
                    td { (format_ms(d.event_time_ms)) @if d.late { " " span.muted { "(late)" } } }
                    td { a href={ "/v1/decisions/" (d.event_id) } { code { (d.event_id) } } }
                    td { (d.account_id.as_deref().unwrap_or("-")) }
                    td { (outcome_badge(d.outcome.as_str())) }
                    td.num { (format!("{:.3}", d.score)) }
                    td { (reasons_text(d)) }
                    td.num { (format!("{:.2} ms", d.processing_latency_us as f64 / 1000.0)) }
                    td { @if d.trace_id.is_empty() { "-" } @else {
                        a href={ "/ui/traces/" (d.trace_id) } { code { (d.trace_id) } } } }
                }
            }
        }
    }
}

fn to_decisions(rows: Vec<DecisionRow>) -> Result<Vec<Decision>, ApiError> {
    rows.into_iter()
        .map(Decision::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Query of `/ui/`.
#[derive(Debug, Deserialize)]
pub struct IndexParams {
    pub limit: Option<String>,
}

fn rows_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    match raw {
        None | Some("") => Ok(DEFAULT_ROWS),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|l| *l > 0)
            .map(|l| l.min(MAX_ROWS))
            .ok_or_else(|| {
                ApiError::bad_param(
                    "limit",
                    format!("limit must be a positive integer, got {v:?}"),
                )
            }),
    }
}

fn html_error(e: ApiError) -> Response {
    let status = e.status();
    let body = page(
        "error",
        html! { h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) } p.error { (e.to_string()) } },
    );
    (status, body).into_response()
}

/// `GET /ui/`: recent decisions and traces.
#[utoipa::path(get, path = "/ui/", tag = "ui",
    params(("limit" = Option<u64>, Query, minimum = 1, maximum = 4294967295.0, description = "Rows per table (default 50; above 500 means 500)")),
    responses((status = 200, description = "HTML: recent decisions and traces", content_type = "text/html"), (status = 400, description = "A malformed parameter"), (status = 503, description = "The trace store is unavailable")))]
pub async fn index(State(state): State<AppState>, Query(p): Query<IndexParams>) -> Response {
    match render_index(&state, p).await {
        Ok(m) => m.into_response(),
        Err(e) => html_error(e),
    }
}

async fn render_index(state: &AppState, p: IndexParams) -> Result<Markup, ApiError> {
    let limit = rows_limit(p.limit.as_deref())?;
    let now_ms = riskstream_common::now_ms();
    let since_ms = now_ms - RECENT_WINDOW_MS;
    let decisions = to_decisions(state.store.recent_decisions(since_ms, limit).await?)?;
    let since_ns = u64::try_from(since_ms).unwrap_or(0) * 1_000_000;
    let traces = state.store.recent_traces(since_ns, limit).await?;
    let mut by_outcome = std::collections::BTreeMap::<&str, usize>::new();
    for d in &decisions {
        *by_outcome.entry(d.outcome.as_str()).or_default() += 1;
    }
    Ok(page(
        "recent decisions",
        html! {
            h1 { "Recent decisions" }
            p.meta {
                span { (decisions.len()) " shown (last 24 h, newest first)" }
                @for (o, n) in &by_outcome { span { (outcome_badge(o)) " " (n) } }
                span.muted { "store: " (state.store.kind()) }
            }
            (decisions_table(&decisions))
            h2 { "Recent traces" }
            table #traces {
                tr { th { "trace" } th { "latest span" } }
                @for t in &traces {
                    tr.trace { td { a href={ "/ui/traces/" (t.trace_id) } { code { (t.trace_id) } } }
                               td { (format_ns(t.last_start_unix_nano)) } }
                }
            }
            p.muted { "JSON: " a href="/api/services" { "/api/services" } " (Jaeger API), "
                a href="/openapi.json" { "/openapi.json" } }
        },
    ))
}

/// Spans in tree order (depth-first, children by start) with their depth.
fn flatten<'a>(nodes: &'a [SpanNode], depth: usize, out: &mut Vec<(usize, &'a SpanNode)>) {
    let mut sorted: Vec<&SpanNode> = nodes.iter().collect();
    sorted.sort_by_key(|n| (n.start_time_unix_nano, n.span_id.clone()));
    for n in sorted {
        out.push((depth, n));
        flatten(&n.children, depth + 1, out);
    }
}

fn attribute_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn waterfall(t: &TraceTree, rows: &[(usize, &SpanNode)]) -> Markup {
    let total = t.duration_ns.max(1) as f64;
    html! {
        div.wf #waterfall {
            @for &(depth, s) in rows {
                @let left = s.offset_ns as f64 / total * 100.0;
                @let width = (s.duration_ns as f64 / total * 100.0).max(0.2);
                div.row.span data-span-id=(s.span_id) data-service=(s.service) {
                    details {
                        summary {
                            div.label style={ "padding-left:" (8 + depth * 16) "px" } title=(s.name) {
                                span.svc style={ "background:" (colour(&s.service)) } { (s.service) }
                                span.name { (s.name) }
                                @if s.status_code == 2 { " " span.error { "error" } }
                            }
                            div.lane {
                                div.bar style={ "left:" (format!("{left:.3}")) "%;width:" (format!("{width:.3}")) "%;background:" (colour(&s.service)) } {}
                            }
                            div.dur { (format_duration_ns(s.duration_ns)) }
                        }
                        table.attrs {
                            tr { td.muted { "span id" } td { code { (s.span_id) } } }
                            tr { td.muted { "kind" } td { (s.kind) } }
                            tr { td.muted { "start" } td { (format_ns(s.start_time_unix_nano)) " (+" (format_duration_ns(s.offset_ns)) ")" } }
                            @if !s.status_message.is_empty() { tr { td.muted { "status" } td { (s.status_message) } } }
                            @for a in &s.attributes {
                                tr { td.muted { (attribute_text(&a["key"])) } td { (attribute_text(&a["value"])) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The event ids named by the trace's spans, in span order, without repeats.
fn event_ids(rows: &[(usize, &SpanNode)]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for (_, s) in rows {
        for a in &s.attributes {
            if a["key"] == EVENT_ID_ATTRIBUTE
                && let Some(id) = a["value"].as_str()
                && !ids.iter().any(|i| i == id)
            {
                ids.push(id.to_string());
            }
        }
    }
    ids.truncate(MAX_TRACE_DECISIONS);
    ids
}

/// `GET /ui/traces/{trace_id}`: the waterfall of one trace and its decisions.
#[utoipa::path(get, path = "/ui/traces/{trace_id}", tag = "ui",
    params(("trace_id" = String, Path, description = "Trace ID, 32 hex digits, not all zero", min_length = 32, max_length = 32, pattern = "^0*[1-9a-fA-F][0-9a-fA-F]*$")),
    responses((status = 200, description = "HTML: the trace's waterfall and the decisions it led to", content_type = "text/html"), (status = 404, description = "No span of this trace"), (status = 400, description = "A malformed trace id"), (status = 503, description = "The trace store is unavailable")))]
pub async fn trace_page(State(state): State<AppState>, Path(raw): Path<String>) -> Response {
    match render_trace(&state, &raw).await {
        Ok(m) => m.into_response(),
        Err(e) => html_error(e),
    }
}

async fn render_trace(state: &AppState, raw: &str) -> Result<Markup, ApiError> {
    let id = params::trace_id(raw)?;
    let spans = state.store.trace(&id).await?;
    if spans.is_empty() {
        return Err(ApiError::NotFound(format!("trace {id} not found")));
    }
    let t = tree(&id, &spans);
    let mut rows = Vec::new();
    flatten(&t.roots, 0, &mut rows);
    let mut decisions = Vec::new();
    for event_id in event_ids(&rows) {
        if let Some(row) = state.store.decision(&event_id).await? {
            decisions.extend(to_decisions(vec![row])?);
        }
    }
    Ok(page(
        &format!("trace {id}"),
        html! {
            h1 { "Trace " code #trace-id { (id) } }
            p.meta {
                span { (t.span_count) " spans" }
                span { (format_duration_ns(t.duration_ns)) }
                span { "started " (format_ns(t.start_time_unix_nano)) }
                span { "services: "
                    @for s in &t.services { span.svc style={ "background:" (colour(s)) } { (s) } } }
            }
            (waterfall(&t, &rows))
            h2 { "Decisions" }
            @if decisions.is_empty() { p.muted { "No decision recorded for this trace (yet)." } }
            @else {
                (decisions_table(&decisions))
                @for d in &decisions {
                    details.features {
                        summary { "features of " code { (d.event_id) } }
                        table.attrs {
                            @for (k, v) in &d.features {
                                tr { td.muted { (k) } td { (serde_json::to_string(v).unwrap_or_default()) } }
                            }
                        }
                    }
                }
            }
            p.muted { "JSON: " a href={ "/v1/traces/" (id) } { "/v1/traces/" (id) } ", "
                a href={ "/api/traces/" (id) } { "/api/traces/" (id) } " (Jaeger)" }
        },
    ))
}
