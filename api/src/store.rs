//! The ClickHouse queries behind the api. Every value is bound with the clickhouse crate's `?`
//! (never spliced into SQL); lists are bound as one `?` per element. Each query reads by a
//! table's sort key: spans by `trace_id`, searches by `service_name` + time, decisions by
//! `event_id` or `account_id` + event time.

use clickhouse::Client;
use riskstream_trace_collector::schema::{DecisionRow, SpanRow, table};
use serde::Deserialize;

use crate::error::ApiError;

/// A trace search, as the Jaeger API takes it (already parsed).
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

#[derive(Debug, clickhouse::Row, Deserialize)]
struct TraceHit {
    trace_id: String,
    #[allow(dead_code)]
    last_start_unix_nano: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Name {
    name: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct Operation {
    pub span_name: String,
    pub span_kind: u8,
}

/// Read access to the stored spans and decisions.
#[derive(Clone)]
pub struct Store {
    client: Client,
}

/// Removes the duplicates at-least-once delivery may store (same span id).
fn dedup_spans(mut spans: Vec<SpanRow>) -> Vec<SpanRow> {
    let mut seen = std::collections::HashSet::new();
    spans.retain(|s| seen.insert((s.trace_id.clone(), s.span_id.clone())));
    spans
}

impl Store {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every span of one trace (lowercase hex id), by start time.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRow>, ApiError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE trace_id = ? ORDER BY start_time_unix_nano, span_id",
            table::SPANS
        );
        let spans = self
            .client
            .query(&sql)
            .bind(trace_id)
            .fetch_all::<SpanRow>()
            .await?;
        Ok(dedup_spans(spans))
    }

    /// The spans of several traces, grouped per trace in the order of `trace_ids`.
    pub async fn traces(&self, trace_ids: &[String]) -> Result<Vec<Vec<SpanRow>>, ApiError> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; trace_ids.len()].join(", ");
        let sql = format!(
            "SELECT ?fields FROM {} WHERE trace_id IN ({placeholders}) \
             ORDER BY trace_id, start_time_unix_nano, span_id",
            table::SPANS
        );
        let mut q = self.client.query(&sql);
        for id in trace_ids {
            q = q.bind(id.as_str());
        }
        let spans = dedup_spans(q.fetch_all::<SpanRow>().await?);
        let mut by_trace: std::collections::HashMap<String, Vec<SpanRow>> =
            std::collections::HashMap::new();
        for s in spans {
            by_trace.entry(s.trace_id.clone()).or_default().push(s);
        }
        Ok(trace_ids
            .iter()
            .filter_map(|id| by_trace.remove(id))
            .collect())
    }

    /// The trace ids matching `query`, most recent first (by their latest matching span).
    pub async fn search(&self, query: &TraceQuery) -> Result<Vec<String>, ApiError> {
        let mut sql = format!(
            "SELECT trace_id, max(start_time_unix_nano) AS last_start_unix_nano FROM {} \
             WHERE service_name = ? AND start_time_unix_nano >= ? AND start_time_unix_nano <= ?",
            table::SPAN_SEARCH
        );
        if query.operation.is_some() {
            sql.push_str(" AND span_name = ?");
        }
        if query.min_duration_ns.is_some() {
            sql.push_str(" AND duration_ns >= ?");
        }
        if query.max_duration_ns.is_some() {
            sql.push_str(" AND duration_ns <= ?");
        }
        for _ in &query.tags {
            sql.push_str(" AND arrayExists((k, v) -> k = ? AND v = ?, tag_keys, tag_values)");
        }
        sql.push_str(" GROUP BY trace_id ORDER BY last_start_unix_nano DESC, trace_id LIMIT ?");
        let mut q = self
            .client
            .query(&sql)
            .bind(query.service.as_str())
            .bind(query.start_time_min_unix_nano.unwrap_or(0))
            .bind(query.start_time_max_unix_nano.unwrap_or(u64::MAX));
        if let Some(op) = &query.operation {
            q = q.bind(op.as_str());
        }
        if let Some(d) = query.min_duration_ns {
            q = q.bind(d);
        }
        if let Some(d) = query.max_duration_ns {
            q = q.bind(d);
        }
        for (k, v) in &query.tags {
            q = q.bind(k.as_str()).bind(v.as_str());
        }
        q = q.bind(query.limit);
        let hits = q.fetch_all::<TraceHit>().await?;
        Ok(hits.into_iter().map(|h| h.trace_id).collect())
    }

    /// Every service that has stored spans.
    pub async fn services(&self) -> Result<Vec<String>, ApiError> {
        let sql = format!(
            "SELECT DISTINCT service_name AS name FROM {} ORDER BY name",
            table::SPAN_OPERATIONS
        );
        let rows = self.client.query(&sql).fetch_all::<Name>().await?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    /// The operations of a service, optionally of one OTLP span kind.
    pub async fn operations(
        &self,
        service: &str,
        kind: Option<u8>,
    ) -> Result<Vec<Operation>, ApiError> {
        let mut sql = format!(
            "SELECT DISTINCT span_name, span_kind FROM {} WHERE service_name = ?",
            table::SPAN_OPERATIONS
        );
        if kind.is_some() {
            sql.push_str(" AND span_kind = ?");
        }
        sql.push_str(" ORDER BY span_name, span_kind");
        let mut q = self.client.query(&sql).bind(service);
        if let Some(k) = kind {
            q = q.bind(k);
        }
        Ok(q.fetch_all::<Operation>().await?)
    }

    /// One decision by event id.
    pub async fn decision(&self, event_id: &str) -> Result<Option<DecisionRow>, ApiError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE event_id = ? LIMIT 1",
            table::DECISIONS_BY_EVENT
        );
        Ok(self
            .client
            .query(&sql)
            .bind(event_id)
            .fetch_optional::<DecisionRow>()
            .await?)
    }

    /// An account's decisions with `from_ms <= event_time_ms < to_ms`, most recent first.
    pub async fn decisions(
        &self,
        account_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, ApiError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE account_id = ? AND event_time_ms >= ? AND event_time_ms < ? \
             ORDER BY event_time_ms DESC, event_id LIMIT 1 BY event_id LIMIT ?",
            table::DECISIONS
        );
        Ok(self
            .client
            .query(&sql)
            .bind(account_id)
            .bind(from_ms)
            .bind(to_ms)
            .bind(limit)
            .fetch_all::<DecisionRow>()
            .await?)
    }

    /// Whether ClickHouse answers.
    pub async fn ping(&self) -> Result<(), ApiError> {
        self.client.query("SELECT 1").fetch_one::<u8>().await?;
        Ok(())
    }
}
