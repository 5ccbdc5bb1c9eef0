//! What the api's integration tests share: the two stores (a migrated ClickHouse database of
//! their own, and memory), the router over either, rows, and one GET helper.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use riskstream_api::{AppState, Config as ApiConfig, router};
use riskstream_common::{Decision, Outcome};
use riskstream_store::schema::{DecisionRow, SpanRow, attr_type};
use riskstream_store::{ClickHouseConfig, ClickHouseStore, MemoryStore, TraceStore};
use riskstream_testkit::clickhouse::server;
use riskstream_testkit::unique;
use serde_json::Value;
use tower::ServiceExt as _;

pub const A: &str = "000000000000000000000000000000aa";
pub const B: &str = "000000000000000000000000000000bb";
pub const C: &str = "000000000000000000000000000000cc";
pub const D: &str = "000000000000000000000000000000dd";

pub const T0_NS: u64 = 1_700_000_000_000_000_000;

pub fn clickhouse_config() -> ClickHouseConfig {
    ClickHouseConfig {
        url: server().url().into(),
        database: unique("t"),
        ..Default::default()
    }
}

pub fn api(ch: &ClickHouseConfig) -> Router {
    router(AppState::new(&ApiConfig {
        clickhouse: ch.clone(),
        ..Default::default()
    }))
}

/// The api over `store` (whatever the configured ClickHouse).
pub fn api_on(store: &Arc<dyn TraceStore>) -> Router {
    router(AppState::with_store(&ApiConfig::default(), store.clone()))
}

/// A migrated ClickHouse database of its own, as a store.
pub async fn clickhouse_store() -> Arc<dyn TraceStore> {
    let store = ClickHouseStore::new(&clickhouse_config());
    store.migrate(Duration::ZERO).await.expect("migrate");
    Arc::new(store)
}

pub fn memory_store() -> Arc<dyn TraceStore> {
    Arc::new(MemoryStore::default())
}

/// Each read test runs on ClickHouse and on the in-memory store: the api answers the same.
#[macro_export]
macro_rules! on_both_stores {
    ($body:ident: $clickhouse:ident, $memory:ident) => {
        #[tokio::test]
        async fn $clickhouse() {
            $body(clickhouse_store().await).await;
        }
        #[tokio::test]
        async fn $memory() {
            $body(memory_store()).await;
        }
    };
}

pub async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, text) = get_text(router, uri).await;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// GET `uri`; the status and the body as text.
pub async fn get_text(router: &Router, uri: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[allow(clippy::too_many_arguments)]
pub fn row(
    trace: &str,
    span: &str,
    parent: &str,
    service: &str,
    op: &str,
    start_ns: u64,
    dur_ns: u64,
    attrs: &[(&str, &str, u8)],
) -> SpanRow {
    SpanRow {
        trace_id: trace.into(),
        span_id: span.into(),
        parent_span_id: parent.into(),
        trace_state: String::new(),
        service_name: service.into(),
        span_name: op.into(),
        span_kind: 2,
        start_time_unix_nano: start_ns,
        duration_ns: dur_ns,
        status_code: 0,
        status_message: String::new(),
        scope_name: String::new(),
        scope_version: String::new(),
        resource_attr_keys: vec!["service.name".into(), "host.name".into()],
        resource_attr_values: vec![service.into(), "h1".into()],
        resource_attr_types: vec![attr_type::STRING, attr_type::STRING],
        span_attr_keys: attrs.iter().map(|a| a.0.to_string()).collect(),
        span_attr_values: attrs.iter().map(|a| a.1.to_string()).collect(),
        span_attr_types: attrs.iter().map(|a| a.2).collect(),
        event_times_unix_nano: vec![start_ns + 1000],
        event_names: vec!["retry".into()],
        event_attributes: vec![r#"{"attempt":2}"#.into()],
        link_trace_ids: Vec::new(),
        link_span_ids: Vec::new(),
        link_trace_states: Vec::new(),
        link_attributes: Vec::new(),
    }
}

pub async fn insert_spans(store: &Arc<dyn TraceStore>, rows: &[SpanRow]) {
    store.insert_spans(&[rows]).await.expect("insert spans");
}

pub async fn insert_decisions(store: &Arc<dyn TraceStore>, rows: &[DecisionRow]) {
    store
        .insert_decisions(&[rows])
        .await
        .expect("insert decisions");
}

pub fn decision(account: &str, event_time_ms: i64, outcome: Outcome) -> Decision {
    Decision {
        event_id: uuid::Uuid::new_v4(),
        trace_id: A.into(),
        account_id: Some(account.into()),
        event_time_ms,
        decided_at_ms: event_time_ms + 3,
        outcome,
        score: 0.5,
        reasons: Vec::new(),
        features: [(
            "n".to_string(),
            riskstream_common::FeatureValue::Number(1.0),
        )]
        .into_iter()
        .collect(),
        models: Vec::new(),
        rules_version: "r1".into(),
        late: false,
        lateness_ms: 0,
        processing_latency_us: 10,
    }
}
