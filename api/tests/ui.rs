//! The browser pages on both stores: `/ui/` lists the stored decisions and traces, and
//! `/ui/traces/{id}` shows every span of the trace, its services and the decision its spans
//! name; values are HTML-escaped; malformed and unknown ids are 400 and 404 pages.
//! (The headless-Chromium test of the same pages on a real run is `riskstream/tests/demo.rs`.)

use std::sync::Arc;

use axum::http::StatusCode;
use riskstream_common::Outcome;
use riskstream_store::TraceStore;
use riskstream_store::schema::{DecisionRow, attr_type};

mod support;
use support::*;

on_both_stores!(pages_show_decisions_traces_and_a_waterfall: pages_on_clickhouse, pages_in_memory);

async fn pages_show_decisions_traces_and_a_waterfall(store: Arc<dyn TraceStore>) {
    let now_ms = riskstream_common::now_ms();
    let now_ns = u64::try_from(now_ms).expect("time") * 1_000_000;
    let mut declined = decision("acc-ui", now_ms - 1000, Outcome::Decline);
    declined.trace_id = A.into();
    let approved = decision("acc-ui", now_ms - 500, Outcome::Approve);
    let event_id = declined.event_id.to_string();
    insert_spans(
        &store,
        &[
            row(
                A,
                "00000000000000a1",
                "",
                "riskstream-ingest",
                "POST /v1/events",
                now_ns - 2_000_000,
                1_500_000,
                &[],
            ),
            row(
                A,
                "00000000000000a2",
                "00000000000000a1",
                "riskstream-worker",
                "riskstream.worker.process",
                now_ns - 1_000_000,
                400_000,
                &[("event_id", &event_id, attr_type::STRING)],
            ),
            row(
                A,
                "00000000000000a3",
                "00000000000000a2",
                "riskstream-worker",
                "<script>alert(1)</script>",
                now_ns - 900_000,
                100_000,
                &[],
            ),
        ],
    )
    .await;
    let rows: Vec<DecisionRow> = [&declined, &approved]
        .into_iter()
        .map(DecisionRow::from)
        .collect();
    insert_decisions(&store, &rows).await;
    let router = api_on(&store);

    let (status, html) = get_text(&router, "/ui/").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    for d in [&declined, &approved] {
        assert!(
            html.contains(&format!("data-event-id=\"{}\"", d.event_id)),
            "{html}"
        );
    }
    assert!(html.contains("class=\"outcome decline\""), "{html}");
    assert!(html.contains(&format!("href=\"/ui/traces/{A}\"")), "{html}");
    // Newest decision first.
    let pos = |id: &str| html.find(&format!("data-event-id=\"{id}\"")).expect("row");
    assert!(pos(&approved.event_id.to_string()) < pos(&event_id));
    assert!(!html.contains("src=\"http"), "no external assets: {html}");

    let (status, html) = get_text(&router, &format!("/ui/traces/{A}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    for span in ["00000000000000a1", "00000000000000a2", "00000000000000a3"] {
        assert!(
            html.contains(&format!("data-span-id=\"{span}\"")),
            "{span}: {html}"
        );
    }
    assert!(html.contains("riskstream-ingest") && html.contains("riskstream-worker"));
    assert!(html.contains("riskstream.worker.process"));
    // The decision the worker span names, with its outcome.
    assert!(
        html.contains(&format!("data-event-id=\"{event_id}\"")),
        "{html}"
    );
    assert!(html.contains("class=\"outcome decline\""));
    // Span names are escaped, never markup.
    assert!(!html.contains("<script>alert(1)</script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    let (status, html) = get_text(&router, "/ui/traces/not-hex").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        html.contains("trace_id") || html.contains("trace id"),
        "{html}"
    );
    let (status, _) = get_text(&router, &format!("/ui/traces/{D}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_text(&router, "/ui/?limit=zero").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get_text(&router, "/ui").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
}
