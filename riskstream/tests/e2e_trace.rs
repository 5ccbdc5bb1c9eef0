//! The whole pipeline as separate processes (ingest, worker, collector, api) on the run's Apache
//! Kafka broker and ClickHouse server: one event posted to ingest is one trace, with spans from ingest and the
//! worker linked parent to child, readable by Trace ID from the Jaeger-compatible api; its
//! decision is stored and readable by event id with the same trace id.

mod support;

use std::time::{Duration, Instant};

use riskstream_common::kafka::Topics;
use riskstream_testkit::kafka::shared_bootstrap;
use serde_json::{Value, json};
use support::{create_topics, spawn, topics_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_across_ingest_and_worker_and_its_decision_is_stored() {
    let ch = riskstream_testkit::clickhouse::server();
    let db = riskstream_testkit::unique("e2e");
    let topics = Topics::with_suffix(&riskstream_testkit::unique("e2e"));
    let b = shared_bootstrap();
    create_topics(b, &topics, 2);
    let mut env = topics_env(&topics);
    env.push(("RISKSTREAM__CLICKHOUSE__DATABASE".into(), db.clone()));
    env.push((
        "RISKSTREAM__WORKER__GROUP_ID".into(),
        riskstream_testkit::unique("g"),
    ));
    env.push((
        "RISKSTREAM__COLLECTOR__GROUP_ID".into(),
        riskstream_testkit::unique("c"),
    ));
    let (_collector, _) = spawn(
        &[
            "collector",
            "--brokers",
            b,
            "--clickhouse-url",
            ch.url(),
            "--listen",
            "127.0.0.1:0",
            "--otlp-grpc-listen",
            "127.0.0.1:0",
        ],
        &env,
        "listening",
    );
    let (_api, api) = spawn(
        &[
            "api",
            "--brokers",
            b,
            "--clickhouse-url",
            ch.url(),
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
        "listening",
    );
    let (_worker, _) = spawn(
        &["worker", "--brokers", b, "--listen", "127.0.0.1:0"],
        &env,
        "listening",
    );
    let (_ingest, ingest) = spawn(
        &["ingest", "--brokers", b, "--listen", "127.0.0.1:0"],
        &env,
        "listening",
    );

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let http = reqwest::Client::new();
    let event = json!({
        "event_time": riskstream_common::now_ms(), "account_id": "acc-e2e", "card_id": "card-e2e",
        "device_id": "dev-e2e", "ip": "192.0.2.10", "amount": 42.0, "currency": "EUR", "country": "DE",
        "type": "payment"
    });
    let r = http
        .post(format!("http://{ingest}/v1/events"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    let event_id = body["results"][0]["event_id"].as_str().unwrap().to_string();
    assert_eq!(body["results"][0]["trace_id"], trace_id);

    // Poll the Jaeger API until both services' spans of the trace are stored.
    let trace =
        support::wait_for_pipeline_trace(&http, &api, trace_id, Duration::from_secs(90)).await;
    let spans = trace["spans"].as_array().unwrap();
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s["operationName"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
    };
    let parent_of = |s: &Value| -> String {
        s["references"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
            .map(|r| r["spanID"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    for s in spans {
        assert_eq!(
            s["traceID"], trace_id,
            "every span is in the caller's trace"
        );
    }
    let produce = by_name("riskstream.ingest.produce");
    let process = by_name("riskstream.worker.process");
    let score = by_name("riskstream.score");
    let decision = by_name("riskstream.decision.produce");
    // ingest's produce span is the parent of the worker's processing, through the Kafka header.
    assert_eq!(parent_of(process), produce["spanID"].as_str().unwrap());
    assert_eq!(parent_of(score), process["spanID"].as_str().unwrap());
    assert_eq!(parent_of(decision), process["spanID"].as_str().unwrap());
    // The feature work is in the trace too: computed in place (local mode) or gathered from the
    // keyed state stage (keyed mode).
    let features = spans
        .iter()
        .find(|s| {
            s["operationName"] == "riskstream.features.update"
                || s["operationName"] == "riskstream.features.join"
        })
        .unwrap_or_else(|| panic!("no feature span in {spans:?}"));
    assert_eq!(parent_of(features), process["spanID"].as_str().unwrap());
    // The request span continues the caller's span.
    let request = by_name("POST /v1/events");
    assert_eq!(parent_of(request), "b7ad6b7169203331");
    assert_eq!(parent_of(produce), request["spanID"].as_str().unwrap());
    assert!(process["duration"].as_u64().is_some());

    // The decision is stored with the same trace id.
    let deadline = Instant::now() + Duration::from_secs(60);
    let decision = loop {
        let r = http
            .get(format!("http://{api}/v1/decisions/{event_id}"))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "decision {event_id} not stored in time"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(decision["trace_id"], trace_id, "{decision}");
    assert_eq!(decision["event_id"], event_id.as_str());
}
