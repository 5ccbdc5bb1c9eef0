//! [`MemoryStore`]: the [`TraceStore`] in memory, for the demo and for anyone who wants traces
//! without a server. Bounded: past `max_spans` the oldest traces are dropped whole, past
//! `max_decisions` the oldest decisions; nothing persists. Answers every read as
//! [`crate::ClickHouseStore`] does (the conformance test runs both).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::schema::{DecisionRow, SpanRow};
use crate::{Operation, StoreError, TraceQuery, TraceStore, TraceSummary};

/// How much a [`MemoryStore`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Spans kept; past it the oldest traces (by first arrival) are dropped whole.
    pub max_spans: usize,
    /// Decisions kept; past it the oldest (by arrival) are dropped.
    pub max_decisions: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self {
            max_spans: 500_000,
            max_decisions: 200_000,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Spans per trace, in arrival order.
    traces: HashMap<String, Vec<SpanRow>>,
    /// Traces by first arrival, for eviction.
    trace_order: VecDeque<String>,
    span_count: usize,
    /// Operations per service: (span name, kind).
    operations: BTreeMap<String, BTreeSet<(String, u8)>>,
    decisions: HashMap<String, DecisionRow>,
    decision_order: VecDeque<String>,
}

/// Spans and decisions in memory, bounded by [`MemoryLimits`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    limits: MemoryLimits,
}

impl MemoryStore {
    pub fn new(limits: MemoryLimits) -> Self {
        Self {
            inner: Mutex::default(),
            limits,
        }
    }

    /// Spans and decisions held now.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.span_count, inner.decisions.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether one span matches every condition of a search (tags on span or resource).
fn matches(span: &SpanRow, q: &TraceQuery) -> bool {
    let in_time = span.start_time_unix_nano >= q.start_time_min_unix_nano.unwrap_or(0)
        && span.start_time_unix_nano <= q.start_time_max_unix_nano.unwrap_or(u64::MAX);
    let has_tag = |k: &str, v: &str| {
        let span_tags = span.span_attr_keys.iter().zip(&span.span_attr_values);
        let resource_tags = span
            .resource_attr_keys
            .iter()
            .zip(&span.resource_attr_values);
        span_tags
            .chain(resource_tags)
            .any(|(sk, sv)| sk == k && sv == v)
    };
    span.service_name == q.service
        && in_time
        && q.operation.as_ref().is_none_or(|op| &span.span_name == op)
        && q.min_duration_ns.is_none_or(|d| span.duration_ns >= d)
        && q.max_duration_ns.is_none_or(|d| span.duration_ns <= d)
        && q.tags.iter().all(|(k, v)| has_tag(k, v))
}

fn sorted(mut spans: Vec<SpanRow>) -> Vec<SpanRow> {
    spans.sort_by(|a, b| {
        (a.start_time_unix_nano, &a.span_id).cmp(&(b.start_time_unix_nano, &b.span_id))
    });
    spans
}

/// The decisions `keep` accepts, newest first by `time` (then by event id), `limit` of them.
fn newest_decisions(
    inner: &Inner,
    keep: impl Fn(&DecisionRow) -> bool,
    time: fn(&DecisionRow) -> i64,
    limit: u32,
) -> Vec<DecisionRow> {
    let mut rows: Vec<DecisionRow> = inner
        .decisions
        .values()
        .filter(|d| keep(d))
        .cloned()
        .collect();
    rows.sort_by(|a, b| {
        time(b)
            .cmp(&time(a))
            .then_with(|| a.event_id.cmp(&b.event_id))
    });
    rows.truncate(limit as usize);
    rows
}

/// Most recent first, then by trace id; `limit` of them.
fn newest(mut hits: Vec<TraceSummary>, limit: u32) -> Vec<TraceSummary> {
    hits.sort_by(|a, b| {
        b.last_start_unix_nano
            .cmp(&a.last_start_unix_nano)
            .then_with(|| a.trace_id.cmp(&b.trace_id))
    });
    hits.truncate(limit as usize);
    hits
}

#[async_trait]
impl TraceStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRow>, StoreError> {
        let spans = self
            .lock()
            .traces
            .get(trace_id)
            .cloned()
            .unwrap_or_default();
        Ok(sorted(spans))
    }

    async fn traces(&self, trace_ids: &[String]) -> Result<Vec<Vec<SpanRow>>, StoreError> {
        let inner = self.lock();
        let mut seen = BTreeSet::new();
        Ok(trace_ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .filter_map(|id| inner.traces.get(id).cloned().map(sorted))
            .collect())
    }

    async fn search(&self, query: &TraceQuery) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let hits = inner
            .traces
            .iter()
            .filter_map(|(id, spans)| {
                let last = spans
                    .iter()
                    .filter(|s| matches(s, query))
                    .map(|s| s.start_time_unix_nano)
                    .max()?;
                Some(TraceSummary {
                    trace_id: id.clone(),
                    last_start_unix_nano: last,
                })
            })
            .collect();
        Ok(newest(hits, query.limit)
            .into_iter()
            .map(|h| h.trace_id)
            .collect())
    }

    async fn recent_traces(
        &self,
        since_unix_nano: u64,
        limit: u32,
    ) -> Result<Vec<TraceSummary>, StoreError> {
        let inner = self.lock();
        let hits = inner
            .traces
            .iter()
            .filter_map(|(id, spans)| {
                let last = spans
                    .iter()
                    .map(|s| s.start_time_unix_nano)
                    .filter(|t| *t >= since_unix_nano)
                    .max()?;
                Some(TraceSummary {
                    trace_id: id.clone(),
                    last_start_unix_nano: last,
                })
            })
            .collect();
        Ok(newest(hits, limit))
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().operations.keys().cloned().collect())
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<u8>,
    ) -> Result<Vec<Operation>, StoreError> {
        let inner = self.lock();
        let mut ops: Vec<Operation> = inner
            .operations
            .get(service)
            .into_iter()
            .flatten()
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .map(|(name, k)| Operation {
                span_name: name.clone(),
                span_kind: *k,
            })
            .collect();
        ops.sort();
        Ok(ops)
    }

    async fn decision(&self, event_id: &str) -> Result<Option<DecisionRow>, StoreError> {
        Ok(self.lock().decisions.get(event_id).cloned())
    }

    async fn decisions(
        &self,
        account_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        let keep = |d: &DecisionRow| {
            d.account_id == account_id && d.event_time_ms >= from_ms && d.event_time_ms < to_ms
        };
        Ok(newest_decisions(
            &self.lock(),
            keep,
            |d| d.event_time_ms,
            limit,
        ))
    }

    async fn recent_decisions(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        let keep = |d: &DecisionRow| d.event_time_ms >= since_ms;
        Ok(newest_decisions(
            &self.lock(),
            keep,
            |d| d.decided_at_ms,
            limit,
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert_spans(&self, chunks: &[&[SpanRow]]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for span in chunks.iter().flat_map(|c| c.iter()) {
            let trace = match inner.traces.get_mut(&span.trace_id) {
                Some(t) => t,
                None => {
                    inner.trace_order.push_back(span.trace_id.clone());
                    inner.traces.entry(span.trace_id.clone()).or_default()
                }
            };
            // At-least-once delivery may bring a span twice: keep the first.
            if trace.iter().any(|s| s.span_id == span.span_id) {
                continue;
            }
            trace.push(span.clone());
            inner.span_count += 1;
            inner
                .operations
                .entry(span.service_name.clone())
                .or_default()
                .insert((span.span_name.clone(), span.span_kind));
        }
        while inner.span_count > self.limits.max_spans {
            let Some(oldest) = inner.trace_order.pop_front() else {
                break;
            };
            if let Some(spans) = inner.traces.remove(&oldest) {
                inner.span_count -= spans.len();
            }
        }
        Ok(())
    }

    async fn insert_decisions(&self, chunks: &[&[DecisionRow]]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for d in chunks.iter().flat_map(|c| c.iter()) {
            if inner.decisions.contains_key(&d.event_id) {
                continue;
            }
            inner.decisions.insert(d.event_id.clone(), d.clone());
            inner.decision_order.push_back(d.event_id.clone());
        }
        while inner.decisions.len() > self.limits.max_decisions {
            let Some(oldest) = inner.decision_order.pop_front() else {
                break;
            };
            inner.decisions.remove(&oldest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str, service: &str, name: &str, start: u64) -> SpanRow {
        SpanRow {
            trace_id: trace.into(),
            span_id: id.into(),
            service_name: service.into(),
            span_name: name.into(),
            span_kind: 2,
            start_time_unix_nano: start,
            duration_ns: 10,
            resource_attr_keys: vec!["host".into()],
            resource_attr_values: vec!["a".into()],
            resource_attr_types: vec![0],
            span_attr_keys: vec!["k".into()],
            span_attr_values: vec![id.into()],
            span_attr_types: vec![0],
            ..SpanRow::default()
        }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn duplicates_are_stored_once_and_spans_come_back_by_start() {
        let store = MemoryStore::default();
        let a = span("t1", "s2", "svc", "op", 20);
        let b = span("t1", "s1", "svc", "op", 10);
        block(store.insert_spans(&[&[a.clone(), b.clone()], std::slice::from_ref(&a)]))
            .expect("insert");
        let got = block(store.trace("t1")).expect("trace");
        assert_eq!(got, vec![b, a]);
        assert_eq!(store.len().0, 2);
    }

    #[test]
    fn the_oldest_traces_go_first_when_the_span_bound_is_reached() {
        let store = MemoryStore::new(MemoryLimits {
            max_spans: 3,
            max_decisions: 1,
        });
        block(store.insert_spans(&[&[
            span("t1", "a", "svc", "op", 1),
            span("t1", "b", "svc", "op", 2),
        ]]))
        .expect("insert");
        block(store.insert_spans(&[&[
            span("t2", "c", "svc", "op", 3),
            span("t2", "d", "svc", "op", 4),
        ]]))
        .expect("insert");
        assert!(block(store.trace("t1")).expect("trace").is_empty());
        assert_eq!(block(store.trace("t2")).expect("trace").len(), 2);
        assert_eq!(store.len().0, 2);
    }

    #[test]
    fn search_needs_every_tag_on_one_span_of_the_service() {
        let store = MemoryStore::default();
        block(store.insert_spans(&[&[
            span("t1", "a", "svc", "op", 1),
            span("t2", "b", "svc", "other", 5),
            span("t3", "c", "elsewhere", "op", 9),
        ]]))
        .expect("insert");
        let q = |tags: Vec<(&str, &str)>, op: Option<&str>| TraceQuery {
            service: "svc".into(),
            operation: op.map(String::from),
            tags: tags
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limit: 10,
            ..TraceQuery::default()
        };
        assert_eq!(
            block(store.search(&q(vec![], None))).expect("search"),
            ["t2", "t1"]
        );
        assert_eq!(
            block(store.search(&q(vec![("k", "a"), ("host", "a")], None))).expect("search"),
            ["t1"]
        );
        assert!(
            block(store.search(&q(vec![("k", "a")], Some("other"))))
                .expect("search")
                .is_empty()
        );
        assert_eq!(
            block(store.services()).expect("services"),
            ["elsewhere", "svc"]
        );
    }
}
