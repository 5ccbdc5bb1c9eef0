//! At-least-once delivery stores some rows twice (an insert retried after its answer was lost,
//! a replay after a crash): on a real ClickHouse, the same spans and decisions inserted twice
//! are one row each once merged, and every read answers as if they were stored once.

use std::time::Duration;

use riskstream_common::{Decision, Outcome};
use riskstream_store::schema::{DecisionRow, SpanRow, table};
use riskstream_store::{ClickHouseConfig, ClickHouseStore, TraceStore};
use riskstream_testkit::clickhouse::server;
use riskstream_testkit::unique;

fn span(trace: &str, id: &str, start: u64) -> SpanRow {
    SpanRow {
        trace_id: trace.into(),
        span_id: id.into(),
        service_name: "dedup".into(),
        span_name: "op".into(),
        span_kind: 2,
        start_time_unix_nano: start,
        duration_ns: 5,
        ..SpanRow::default()
    }
}

fn decision(i: i64) -> DecisionRow {
    DecisionRow::from(&Decision {
        event_id: uuid::Uuid::new_v4(),
        trace_id: String::new(),
        account_id: Some("acc-dedup".into()),
        event_time_ms: 1_700_000_000_000 + i,
        decided_at_ms: 1_700_000_000_005 + i,
        outcome: Outcome::Approve,
        score: 0.1,
        reasons: vec![],
        features: Default::default(),
        models: vec![],
        rules_version: "r".into(),
        late: false,
        lateness_ms: 0,
        processing_latency_us: 1,
    })
}

async fn count(store: &ClickHouseStore, t: &str) -> u64 {
    store
        .client()
        .query(&format!("SELECT count() FROM {t}"))
        .fetch_one::<u64>()
        .await
        .expect("count")
}

#[tokio::test]
async fn rows_inserted_twice_are_stored_once() {
    let store = ClickHouseStore::new(&ClickHouseConfig {
        url: server().url().into(),
        database: unique("dedup"),
        ..Default::default()
    });
    store.migrate(Duration::ZERO).await.expect("migrate");
    let trace = "0000000000000000000000000000d0d0";
    let spans: Vec<SpanRow> = (0..50u64)
        .map(|i| span(trace, &format!("{i:016x}"), 1_700_000_000_000_000_000 + i))
        .collect();
    let decisions: Vec<DecisionRow> = (0..20).map(decision).collect();
    // The first insert, then its retry (the same rows again).
    for _ in 0..2 {
        store.insert_spans(&[&spans]).await.expect("spans");
        store
            .insert_decisions(&[&decisions])
            .await
            .expect("decisions");
    }
    // Reads never show the duplicates, merged or not.
    assert_eq!(store.trace(trace).await.expect("trace").len(), 50);
    assert_eq!(
        store
            .decisions("acc-dedup", 0, i64::MAX, 1000)
            .await
            .expect("decisions")
            .len(),
        20
    );
    for t in [table::SPANS, table::DECISIONS, table::DECISIONS_BY_EVENT] {
        store
            .client()
            .query(&format!("OPTIMIZE TABLE {t} FINAL"))
            .execute()
            .await
            .expect("optimize");
        let expected = if t == table::SPANS { 50 } else { 20 };
        assert_eq!(
            count(&store, t).await,
            expected,
            "{t}: one row per span or decision"
        );
    }
}
