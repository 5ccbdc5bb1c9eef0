//! [`ClickHouseStore`]: the [`TraceStore`] on ClickHouse. Every value is bound with the
//! clickhouse crate's `?` (never spliced into SQL); lists are bound as one `?` per element.
//! Each query reads by a table's sort key: spans by `trace_id`, searches by `service_name` +
//! time, decisions by `event_id` or `account_id` + event time (see [`crate::schema`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use clickhouse::{Client, RowOwned, RowWrite};

use crate::config::ClickHouseConfig;
use crate::schema::{self, DecisionRow, SchemaError, ServerVersion, SpanRow, table};
use crate::{Operation, StoreError, TraceQuery, TraceStore, TraceSummary, dedup_spans};

/// Whether a ClickHouse error is worth retrying (server down, overloaded, timing out) rather
/// than a refusal of the data or query itself.
pub fn is_transient(err: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match err {
        E::Network(_) | E::TimedOut => true,
        // Data errors: cannot parse input, type mismatch, missing column, too large.
        E::BadResponse(msg) => ![
            "Code: 27,",
            "Code: 33,",
            "Code: 53,",
            "Code: 16,",
            "Code: 62,",
        ]
        .iter()
        .any(|code| msg.contains(code)),
        _ => false,
    }
}

fn store_error(e: clickhouse::error::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Rejected(e.to_string())
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TraceHit {
    trace_id: String,
    #[allow(dead_code)]
    last_start_unix_nano: u64,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Name {
    name: String,
}

/// Spans and decisions in ClickHouse.
#[derive(Clone)]
pub struct ClickHouseStore {
    client: Client,
    database: String,
    insert_timeout: Duration,
    /// Learnt by [`ClickHouseStore::migrate`].
    version: Arc<OnceLock<ServerVersion>>,
}

impl ClickHouseStore {
    /// A store on the server and database of `config`. Nothing is contacted yet.
    pub fn new(config: &ClickHouseConfig) -> Self {
        Self {
            client: config.client(),
            database: config.database.clone(),
            insert_timeout: config.request_timeout,
            version: Arc::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the database, tables and views if missing and applies `retention` (idempotent);
    /// returns the server's version.
    pub async fn migrate(&self, retention: Duration) -> Result<ServerVersion, SchemaError> {
        let version = schema::migrate(&self.client, &self.database, retention).await?;
        let _ = self.version.set(version);
        Ok(version)
    }

    /// The server's version, once [`ClickHouseStore::migrate`] has run.
    pub fn server_version(&self) -> Option<ServerVersion> {
        self.version.get().copied()
    }

    async fn insert<R: RowOwned + RowWrite + Send + Sync + 'static>(
        &self,
        table: &str,
        chunks: &[&[R]],
    ) -> Result<(), clickhouse::error::Error> {
        let timeout = Some(self.insert_timeout);
        let mut insert = self
            .client
            .insert::<R>(table)
            .await?
            .with_timeouts(timeout, timeout);
        for chunk in chunks {
            for row in *chunk {
                insert.write(row).await?;
            }
        }
        insert.end().await
    }
}

#[async_trait]
impl TraceStore for ClickHouseStore {
    fn kind(&self) -> &'static str {
        "clickhouse"
    }

    async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRow>, StoreError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE trace_id = ? ORDER BY start_time_unix_nano, span_id",
            table::SPANS
        );
        let spans = self
            .client
            .query(&sql)
            .bind(trace_id)
            .fetch_all::<SpanRow>()
            .await
            .map_err(store_error)?;
        Ok(dedup_spans(spans))
    }

    async fn traces(&self, trace_ids: &[String]) -> Result<Vec<Vec<SpanRow>>, StoreError> {
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
        let spans = dedup_spans(q.fetch_all::<SpanRow>().await.map_err(store_error)?);
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

    async fn search(&self, query: &TraceQuery) -> Result<Vec<String>, StoreError> {
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
        let hits = q.fetch_all::<TraceHit>().await.map_err(store_error)?;
        Ok(hits.into_iter().map(|h| h.trace_id).collect())
    }

    async fn recent_traces(
        &self,
        since_unix_nano: u64,
        limit: u32,
    ) -> Result<Vec<TraceSummary>, StoreError> {
        let sql = format!(
            "SELECT trace_id, max(start_time_unix_nano) AS last_start_unix_nano FROM {} \
             WHERE start_time_unix_nano >= ? GROUP BY trace_id \
             ORDER BY last_start_unix_nano DESC, trace_id LIMIT ?",
            table::SPAN_SEARCH
        );
        self.client
            .query(&sql)
            .bind(since_unix_nano)
            .bind(limit)
            .fetch_all::<TraceSummary>()
            .await
            .map_err(store_error)
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT DISTINCT service_name AS name FROM {} ORDER BY name",
            table::SPAN_OPERATIONS
        );
        let rows = self
            .client
            .query(&sql)
            .fetch_all::<Name>()
            .await
            .map_err(store_error)?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<u8>,
    ) -> Result<Vec<Operation>, StoreError> {
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
        q.fetch_all::<Operation>().await.map_err(store_error)
    }

    async fn decision(&self, event_id: &str) -> Result<Option<DecisionRow>, StoreError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE event_id = ? LIMIT 1",
            table::DECISIONS_BY_EVENT
        );
        self.client
            .query(&sql)
            .bind(event_id)
            .fetch_optional::<DecisionRow>()
            .await
            .map_err(store_error)
    }

    async fn decisions(
        &self,
        account_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE account_id = ? AND event_time_ms >= ? AND event_time_ms < ? \
             ORDER BY event_time_ms DESC, event_id LIMIT 1 BY event_id LIMIT ?",
            table::DECISIONS
        );
        self.client
            .query(&sql)
            .bind(account_id)
            .bind(from_ms)
            .bind(to_ms)
            .bind(limit)
            .fetch_all::<DecisionRow>()
            .await
            .map_err(store_error)
    }

    async fn recent_decisions(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE event_time_ms >= ? \
             ORDER BY decided_at_ms DESC, event_id LIMIT 1 BY event_id LIMIT ?",
            table::DECISIONS
        );
        self.client
            .query(&sql)
            .bind(since_ms)
            .bind(limit)
            .fetch_all::<DecisionRow>()
            .await
            .map_err(store_error)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn insert_spans(&self, chunks: &[&[SpanRow]]) -> Result<(), StoreError> {
        self.insert(table::SPANS, chunks).await.map_err(store_error)
    }

    async fn insert_decisions(&self, chunks: &[&[DecisionRow]]) -> Result<(), StoreError> {
        self.insert(table::DECISIONS, chunks)
            .await
            .map_err(store_error)
    }

    /// Drops expired daily partitions, on servers without table TTL (before 19.6) only: newer
    /// servers expire rows themselves (set up by [`ClickHouseStore::migrate`]).
    async fn expire(&self, retention: Duration, now_unix_nano: u64) -> Result<usize, StoreError> {
        if retention.is_zero() || self.server_version().is_none_or(|v| v.supports_ttl()) {
            return Ok(0);
        }
        schema::drop_expired_partitions(&self.client, &self.database, retention, now_unix_nano)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}
