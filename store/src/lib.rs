//! The trace and decision store, in one place: the schema (rows, tables, migrations), the
//! [`TraceStore`] trait that the trace-collector writes through and the api reads through, and
//! its two implementations: [`ClickHouseStore`] (production, compose, tests) and the bounded
//! in-memory [`MemoryStore`] (the demo, no server to install).
//!
//! Both implementations answer every read the same way (the api's tests run on both), and both
//! hide the duplicates at-least-once delivery may store (same span id, same event id).

pub mod config;
pub mod schema;

mod clickhouse_store;
mod memory;

use std::time::Duration;

use async_trait::async_trait;

pub use clickhouse_store::{ClickHouseStore, is_transient};
pub use config::ClickHouseConfig;
pub use memory::{MemoryLimits, MemoryStore};
pub use schema::{DecisionRow, SpanRow};

/// A store failure, split the way a caller reacts to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded: retry later (503 to a reader).
    #[error("trace store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the rows or query for good: retrying cannot help.
    #[error("trace store rejected the request: {0}")]
    Rejected(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A trace search, as the Jaeger API takes it (already parsed and validated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceQuery {
    pub service: String,
    pub operation: Option<String>,
    /// Every pair must be on one span (span or resource attribute).
    pub tags: Vec<(String, String)>,
    pub min_duration_ns: Option<u64>,
    pub max_duration_ns: Option<u64>,
    pub start_time_min_unix_nano: Option<u64>,
    pub start_time_max_unix_nano: Option<u64>,
    pub limit: u32,
}

/// One operation of a service: span name and OTLP span kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, clickhouse::Row, serde::Deserialize)]
pub struct Operation {
    pub span_name: String,
    pub span_kind: u8,
}

/// A recently seen trace: its id and its latest span's start, for listings.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub last_start_unix_nano: u64,
}

/// Where spans and decisions are kept. Reads are by the tables' sort keys (a trace by id, a
/// decision by event id, an account's decisions by time), so both implementations stay cheap.
#[async_trait]
pub trait TraceStore: Send + Sync + 'static {
    /// `clickhouse` or `memory`, for logs and `/readyz`.
    fn kind(&self) -> &'static str;

    /// Every span of one trace (lowercase hex id), by start time, without duplicates.
    async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRow>, StoreError>;

    /// The spans of several traces, grouped per trace in the order of `trace_ids` (traces
    /// without spans left out).
    async fn traces(&self, trace_ids: &[String]) -> Result<Vec<Vec<SpanRow>>, StoreError>;

    /// The trace ids matching `query`, most recent first (by their latest matching span).
    async fn search(&self, query: &TraceQuery) -> Result<Vec<String>, StoreError>;

    /// The most recent traces of any service started at or after `since_unix_nano`.
    async fn recent_traces(
        &self,
        since_unix_nano: u64,
        limit: u32,
    ) -> Result<Vec<TraceSummary>, StoreError>;

    /// Every service that has stored spans, sorted.
    async fn services(&self) -> Result<Vec<String>, StoreError>;

    /// The operations of a service, optionally of one OTLP span kind, sorted.
    async fn operations(
        &self,
        service: &str,
        kind: Option<u8>,
    ) -> Result<Vec<Operation>, StoreError>;

    /// One decision by event id.
    async fn decision(&self, event_id: &str) -> Result<Option<DecisionRow>, StoreError>;

    /// An account's decisions with `from_ms <= event_time_ms < to_ms`, most recent first, one
    /// per event.
    async fn decisions(
        &self,
        account_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError>;

    /// The most recently decided decisions with event time at or after `since_ms`, one per
    /// event, newest first.
    async fn recent_decisions(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores spans (the chunks of one batch, written as one insert).
    async fn insert_spans(&self, chunks: &[&[SpanRow]]) -> Result<(), StoreError>;

    /// Stores decisions (the chunks of one batch, written as one insert).
    async fn insert_decisions(&self, chunks: &[&[DecisionRow]]) -> Result<(), StoreError>;

    /// Applies the retention where the store cannot do it itself (ClickHouse without TTL);
    /// returns how many partitions were dropped.
    async fn expire(&self, _retention: Duration, _now_unix_nano: u64) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// A row type with a table in the store: lets one batching writer serve every table.
pub trait StoredRow: Clone + Send + Sync + 'static {
    /// The table the rows go to (metrics label).
    const TABLE: &'static str;

    /// Inserts the chunks of one batch.
    fn insert<'a>(
        store: &'a dyn TraceStore,
        chunks: &'a [&'a [Self]],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>;
}

impl StoredRow for SpanRow {
    const TABLE: &'static str = schema::table::SPANS;

    fn insert<'a>(
        store: &'a dyn TraceStore,
        chunks: &'a [&'a [Self]],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>
    {
        store.insert_spans(chunks)
    }
}

impl StoredRow for DecisionRow {
    const TABLE: &'static str = schema::table::DECISIONS;

    fn insert<'a>(
        store: &'a dyn TraceStore,
        chunks: &'a [&'a [Self]],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>
    {
        store.insert_decisions(chunks)
    }
}

/// Removes the duplicates at-least-once delivery may store (same trace and span id), keeping
/// the first.
pub fn dedup_spans(mut spans: Vec<SpanRow>) -> Vec<SpanRow> {
    let mut seen = std::collections::HashSet::new();
    spans.retain(|s| seen.insert((s.trace_id.clone(), s.span_id.clone())));
    spans
}
