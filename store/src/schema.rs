//! The ClickHouse schema of spans and decisions: table and column names, the row types written
//! and read, and the idempotent migrations run at start-up (plus retention). The same schema runs
//! on ClickHouse 18.16 (Debian) and current releases; see `docs/tracing.md`.
//!
//! Duplicates: delivery is at least once (a retried insert whose first answer was lost, a
//! replay after a crash), so the tables that hold spans and decisions are `ReplacingMergeTree`:
//! rows with the same sort key (the same span, the same decision) are merged into one in the
//! background, and every read also removes the duplicates not merged yet. Neither insert
//! deduplication tokens nor non-replicated deduplication exist on 18.16; the engine does.
//!
//! Layout:
//! - `spans`: one row per span, `ORDER BY (trace_id, start_time_unix_nano, span_id)`, so a trace
//!   by id is a primary-key range read, never a scan.
//! - `span_search`: search columns only, `ORDER BY (service_name, start_time_unix_nano)`, kept by
//!   the materialized view `span_search_mv`: Jaeger's search (service + time range first).
//! - `span_operations`: distinct (service, kind, name), kept by `span_operations_mv`.
//! - `decisions`: `ORDER BY (account_id, event_time_ms, event_id)`; `decisions_by_event`: the
//!   same rows `ORDER BY event_id`, kept by `decisions_by_event_mv`.

use std::time::Duration;

use clickhouse::Client;
use riskstream_common::Decision;
use serde::{Deserialize, Serialize};

/// Table names.
pub mod table {
    pub const SPANS: &str = "spans";
    pub const SPAN_SEARCH: &str = "span_search";
    pub const SPAN_SEARCH_MV: &str = "span_search_mv";
    pub const SPAN_OPERATIONS: &str = "span_operations";
    pub const SPAN_OPERATIONS_MV: &str = "span_operations_mv";
    pub const DECISIONS: &str = "decisions";
    pub const DECISIONS_BY_EVENT: &str = "decisions_by_event";
    pub const DECISIONS_BY_EVENT_MV: &str = "decisions_by_event_mv";
}

/// Column names used in queries.
pub mod column {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const SERVICE_NAME: &str = "service_name";
    pub const SPAN_NAME: &str = "span_name";
    pub const SPAN_KIND: &str = "span_kind";
    pub const START_TIME_UNIX_NANO: &str = "start_time_unix_nano";
    pub const DURATION_NS: &str = "duration_ns";
    pub const TAG_KEYS: &str = "tag_keys";
    pub const TAG_VALUES: &str = "tag_values";
    pub const EVENT_ID: &str = "event_id";
    pub const ACCOUNT_ID: &str = "account_id";
    pub const EVENT_TIME_MS: &str = "event_time_ms";
}

/// The type of an attribute value, stored next to its text form (`*_attr_types`).
pub mod attr_type {
    pub const STRING: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const INT: u8 = 2;
    pub const DOUBLE: u8 = 3;
    /// Bytes, stored base64.
    pub const BYTES: u8 = 4;
    /// Arrays and key/value lists, stored as JSON.
    pub const JSON: u8 = 5;
}

/// Nanoseconds in a day: spans are partitioned by day of their start.
pub const NANOS_PER_DAY: u64 = 86_400_000_000_000;
/// Milliseconds in a day: decisions are partitioned by day of their event time.
pub const MILLIS_PER_DAY: i64 = 86_400_000;

/// One span. Ids are lowercase hex (32/16 digits); the parent id is empty for a root span.
/// Event and link attributes are JSON objects (one string per event or link).
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct SpanRow {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub trace_state: String,
    pub service_name: String,
    pub span_name: String,
    /// OTLP `SpanKind` number (0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub span_kind: u8,
    pub start_time_unix_nano: u64,
    pub duration_ns: u64,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: u8,
    pub status_message: String,
    pub scope_name: String,
    pub scope_version: String,
    pub resource_attr_keys: Vec<String>,
    pub resource_attr_values: Vec<String>,
    pub resource_attr_types: Vec<u8>,
    pub span_attr_keys: Vec<String>,
    pub span_attr_values: Vec<String>,
    pub span_attr_types: Vec<u8>,
    pub event_times_unix_nano: Vec<u64>,
    pub event_names: Vec<String>,
    pub event_attributes: Vec<String>,
    pub link_trace_ids: Vec<String>,
    pub link_span_ids: Vec<String>,
    pub link_trace_states: Vec<String>,
    pub link_attributes: Vec<String>,
}

/// One decision, as stored in both `decisions` and `decisions_by_event`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct DecisionRow {
    pub event_id: String,
    pub trace_id: String,
    pub account_id: String,
    pub event_time_ms: i64,
    pub decided_at_ms: i64,
    pub outcome: String,
    pub score: f64,
    pub reasons_json: String,
    pub features_json: String,
    pub models_json: String,
    pub rules_version: String,
    pub late: bool,
    pub watermark_lag_ms: i64,
    pub processing_latency_us: u64,
}

/// A stored row that does not read back as a [`Decision`].
#[derive(Debug, thiserror::Error)]
#[error("stored decision {event_id} is malformed: {reason}")]
pub struct MalformedRow {
    pub event_id: String,
    pub reason: String,
}

impl From<&Decision> for DecisionRow {
    fn from(d: &Decision) -> Self {
        let json = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "null".into());
        Self {
            event_id: d.event_id.to_string(),
            trace_id: d.trace_id.clone(),
            account_id: d.account_id.clone().unwrap_or_default(),
            event_time_ms: d.event_time_ms,
            decided_at_ms: d.decided_at_ms,
            outcome: d.outcome.as_str().to_string(),
            score: d.score,
            reasons_json: json(serde_json::to_string(&d.reasons)),
            features_json: json(serde_json::to_string(&d.features)),
            models_json: json(serde_json::to_string(&d.models)),
            rules_version: d.rules_version.clone(),
            late: d.late,
            watermark_lag_ms: d.lateness_ms,
            processing_latency_us: d.processing_latency_us,
        }
    }
}

impl TryFrom<DecisionRow> for Decision {
    type Error = MalformedRow;

    fn try_from(r: DecisionRow) -> Result<Self, Self::Error> {
        let bad = |reason: String| MalformedRow {
            event_id: r.event_id.clone(),
            reason,
        };
        Ok(Decision {
            event_id: r
                .event_id
                .parse()
                .map_err(|e| bad(format!("event_id: {e}")))?,
            trace_id: r.trace_id.clone(),
            account_id: (!r.account_id.is_empty()).then(|| r.account_id.clone()),
            event_time_ms: r.event_time_ms,
            decided_at_ms: r.decided_at_ms,
            outcome: r.outcome.parse().map_err(bad)?,
            score: r.score,
            reasons: serde_json::from_str(&r.reasons_json)
                .map_err(|e| bad(format!("reasons: {e}")))?,
            features: serde_json::from_str(&r.features_json)
                .map_err(|e| bad(format!("features: {e}")))?,
            models: serde_json::from_str(&r.models_json)
                .map_err(|e| bad(format!("models: {e}")))?,
            rules_version: r.rules_version.clone(),
            late: r.late,
            lateness_ms: r.watermark_lag_ms,
            processing_latency_us: r.processing_latency_us,
        })
    }
}

/// Schema set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid database name {0:?}: use letters, digits and '_'")]
    InvalidDatabase(String),
    #[error("clickhouse statement failed: {statement}: {source}")]
    Statement {
        statement: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("cannot read the clickhouse version: {0}")]
    Version(#[source] clickhouse::error::Error),
}

/// Whether `name` can be used as a database name without quoting.
pub fn valid_database_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const SPAN_COLUMNS: &str = "
    trace_id String,
    span_id String,
    parent_span_id String,
    trace_state String,
    service_name String,
    span_name String,
    span_kind UInt8,
    start_time_unix_nano UInt64,
    duration_ns UInt64,
    status_code UInt8,
    status_message String,
    scope_name String,
    scope_version String,
    resource_attr_keys Array(String),
    resource_attr_values Array(String),
    resource_attr_types Array(UInt8),
    span_attr_keys Array(String),
    span_attr_values Array(String),
    span_attr_types Array(UInt8),
    event_times_unix_nano Array(UInt64),
    event_names Array(String),
    event_attributes Array(String),
    link_trace_ids Array(String),
    link_span_ids Array(String),
    link_trace_states Array(String),
    link_attributes Array(String)";

const DECISION_COLUMNS: &str = "
    event_id String,
    trace_id String,
    account_id String,
    event_time_ms Int64,
    decided_at_ms Int64,
    outcome String,
    score Float64,
    reasons_json String,
    features_json String,
    models_json String,
    rules_version String,
    late UInt8,
    watermark_lag_ms Int64,
    processing_latency_us UInt64";

/// The DDL statements, in order. Every one is `IF NOT EXISTS`, so running them again is a no-op.
pub fn migrations(database: &str) -> Vec<String> {
    let db = database;
    let t = |name: &str| format!("{db}.{name}");
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {spans} ({SPAN_COLUMNS}) ENGINE = ReplacingMergeTree() \
             PARTITION BY intDiv(start_time_unix_nano, {NANOS_PER_DAY}) \
             ORDER BY (trace_id, start_time_unix_nano, span_id)",
            spans = t(table::SPANS)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {search} (service_name String, start_time_unix_nano UInt64, \
             trace_id String, span_name String, span_kind UInt8, duration_ns UInt64, \
             tag_keys Array(String), tag_values Array(String)) ENGINE = MergeTree() \
             PARTITION BY intDiv(start_time_unix_nano, {NANOS_PER_DAY}) \
             ORDER BY (service_name, start_time_unix_nano)",
            search = t(table::SPAN_SEARCH)
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {mv} TO {search} AS SELECT service_name, \
             start_time_unix_nano, trace_id, span_name, span_kind, duration_ns, \
             arrayConcat(span_attr_keys, resource_attr_keys) AS tag_keys, \
             arrayConcat(span_attr_values, resource_attr_values) AS tag_values FROM {spans}",
            mv = t(table::SPAN_SEARCH_MV),
            search = t(table::SPAN_SEARCH),
            spans = t(table::SPANS)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ops} (service_name String, span_kind UInt8, span_name String) \
             ENGINE = ReplacingMergeTree() ORDER BY (service_name, span_kind, span_name)",
            ops = t(table::SPAN_OPERATIONS)
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {mv} TO {ops} AS SELECT service_name, span_kind, \
             span_name FROM {spans} GROUP BY service_name, span_kind, span_name",
            mv = t(table::SPAN_OPERATIONS_MV),
            ops = t(table::SPAN_OPERATIONS),
            spans = t(table::SPANS)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {d} ({DECISION_COLUMNS}) ENGINE = ReplacingMergeTree() \
             PARTITION BY intDiv(event_time_ms, {MILLIS_PER_DAY}) \
             ORDER BY (account_id, event_time_ms, event_id)",
            d = t(table::DECISIONS)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {d} ({DECISION_COLUMNS}) ENGINE = ReplacingMergeTree() \
             PARTITION BY intDiv(event_time_ms, {MILLIS_PER_DAY}) ORDER BY event_id",
            d = t(table::DECISIONS_BY_EVENT)
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {mv} TO {by_event} AS SELECT * FROM {d}",
            mv = t(table::DECISIONS_BY_EVENT_MV),
            by_event = t(table::DECISIONS_BY_EVENT),
            d = t(table::DECISIONS)
        ),
    ]
}

/// A ClickHouse server version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `18.16.1` / `24.3.2.23`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// Table TTL arrived in 19.6.
    pub fn supports_ttl(self) -> bool {
        self >= Self {
            major: 19,
            minor: 6,
        }
    }
}

/// The server's version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, SchemaError> {
    let v: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(SchemaError::Version)?;
    ServerVersion::parse(&v).ok_or_else(|| {
        SchemaError::Version(clickhouse::error::Error::Custom(format!(
            "unparsable version {v:?}"
        )))
    })
}

/// A client without a default database (the database may not exist yet).
fn root_client(client: &Client) -> Client {
    client.clone().with_database("default")
}

/// Creates the database, tables and views if missing, and applies the retention. Idempotent.
pub async fn migrate(
    client: &Client,
    database: &str,
    retention: Duration,
) -> Result<ServerVersion, SchemaError> {
    if !valid_database_name(database) {
        return Err(SchemaError::InvalidDatabase(database.to_string()));
    }
    let root = root_client(client);
    for statement in migrations(database) {
        run(&root, &statement).await?;
    }
    let version = server_version(&root).await?;
    if !retention.is_zero() && version.supports_ttl() {
        for statement in ttl_statements(database, retention) {
            run(&root, &statement).await?;
        }
    }
    tracing::info!(
        database,
        major = version.major,
        minor = version.minor,
        "clickhouse schema ready"
    );
    Ok(version)
}

async fn run(client: &Client, statement: &str) -> Result<(), SchemaError> {
    client
        .query(statement)
        .execute()
        .await
        .map_err(|source| SchemaError::Statement {
            statement: statement.to_string(),
            source,
        })
}

/// `ALTER TABLE ... MODIFY TTL` for servers that have TTL (19.6+).
pub fn ttl_statements(database: &str, retention: Duration) -> Vec<String> {
    let secs = retention.as_secs().max(1);
    let span_ttl =
        format!("toDateTime(intDiv(start_time_unix_nano, 1000000000)) + INTERVAL {secs} SECOND");
    let decision_ttl = format!("toDateTime(intDiv(event_time_ms, 1000)) + INTERVAL {secs} SECOND");
    [
        (table::SPANS, &span_ttl),
        (table::SPAN_SEARCH, &span_ttl),
        (table::DECISIONS, &decision_ttl),
        (table::DECISIONS_BY_EVENT, &decision_ttl),
    ]
    .into_iter()
    .map(|(t, ttl)| format!("ALTER TABLE {database}.{t} MODIFY TTL {ttl}"))
    .collect()
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct PartitionRow {
    partition: String,
}

/// Retention for servers without TTL: drops the daily partitions that ended before
/// `now - retention`. Returns how many partitions were dropped.
pub async fn drop_expired_partitions(
    client: &Client,
    database: &str,
    retention: Duration,
    now_unix_nano: u64,
) -> Result<usize, SchemaError> {
    if !valid_database_name(database) {
        return Err(SchemaError::InvalidDatabase(database.to_string()));
    }
    let root = root_client(client);
    let cutoff_nano =
        now_unix_nano.saturating_sub(u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX));
    // A partition is a day number; day d ends at (d + 1) * day.
    let last_expired_day = (cutoff_nano / NANOS_PER_DAY).checked_sub(1);
    let Some(last_expired_day) = last_expired_day else {
        return Ok(0);
    };
    let mut dropped = 0;
    for t in [
        table::SPANS,
        table::SPAN_SEARCH,
        table::DECISIONS,
        table::DECISIONS_BY_EVENT,
    ] {
        let parts: Vec<PartitionRow> = root
            .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active")
            .bind(database)
            .bind(t)
            .fetch_all()
            .await
            .map_err(|source| SchemaError::Statement {
                statement: "select partitions".into(),
                source,
            })?;
        for p in parts {
            let Ok(day) = p.partition.trim_matches('\'').parse::<u64>() else {
                continue;
            };
            if day <= last_expired_day {
                run(
                    &root,
                    &format!("ALTER TABLE {database}.{t} DROP PARTITION {day}"),
                )
                .await?;
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}
