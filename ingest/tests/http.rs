//! ingest over HTTP against a real Apache Kafka broker: what is acknowledged is on the topic with
//! the right key, value, partition and traceparent; bad input gets the documented 4xx; a stopped
//! broker gets 503 and nothing claimed (broker trouble under load: tests/broker_outage.rs).

use std::time::Duration;

use riskstream_common::trace_context::TraceParent;
use riskstream_ingest::IngestConfig;
use riskstream_testkit::kafka::{TestKafka, read_records};
use serde_json::{Value, json};

mod support;

use support::{event, spawn_app, topics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_on_the_topic_with_key_partition_and_traceparent() {
    let topics = topics();
    let broker = TestKafka::with_topics(3, &topics);
    let app = spawn_app(&broker, &topics, IngestConfig::default()).await;

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let batch = json!([
        event("acc-1", 10.0),
        event("acc-2", 20.5),
        event("acc-1", 3.25)
    ]);
    let r = app
        .http
        .post(app.url("/v1/events"))
        .header("content-type", "application/json")
        .header("traceparent", caller)
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 3);
    assert_eq!(body["errors"], false);
    let results = body["results"].as_array().unwrap();

    let records = read_records(&app.kafka, &topics.events, 3, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 3);
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["status"], "accepted");
        assert_eq!(res["index"], i);
        assert_eq!(res["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        let rec = records
            .iter()
            .find(|r| {
                r.partition == res["partition"].as_i64().unwrap() as i32
                    && r.offset == res["offset"].as_i64().unwrap()
            })
            .unwrap_or_else(|| panic!("record for result {res} not on the topic"));
        let sent = &batch[i];
        assert_eq!(rec.key_str(), sent["account_id"].as_str());
        let value = rec.json();
        assert_eq!(value["event_id"], res["event_id"]);
        assert_eq!(value["amount"], sent["amount"]);
        assert_eq!(value["attributes"]["note"], "hello");
        assert_eq!(
            rec.timestamp_ms,
            value["event_time"].as_str().map(|t| { chrono_ms(t) })
        );
        let tp = TraceParent::parse(&rec.headers["traceparent"]).expect("valid traceparent header");
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            format!("{:016x}", tp.span_id),
            "00f067aa0ba902b7",
            "a child span, not the caller's"
        );
    }
    // The same key always lands on the same partition.
    let p = |i: usize| results[i]["partition"].as_i64().unwrap();
    assert_eq!(p(0), p(2));

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("riskstream_ingest_events_accepted_total 3"),
        "{metrics}"
    );
    app.shutdown.cancel();
    app.handle.await.unwrap();
}

fn chrono_ms(rfc3339: &str) -> i64 {
    riskstream_common::event::parse_event_time(&Value::String(rfc3339.into())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_good_and_bad_events_accepts_the_good_and_lists_the_bad() {
    let topics = topics();
    let broker = TestKafka::with_topics(2, &topics);
    let app = spawn_app(&broker, &topics, IngestConfig::default()).await;

    let mut bad = event("acc-3", -5.0);
    bad["colour"] = json!("red");
    let ndjson = format!(
        "{}\n{}\n\n{}\n",
        event("acc-1", 1.0),
        bad,
        event("acc-2", 2.0)
    );
    let (status, body, _) = app.post("application/x-ndjson", ndjson).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["errors"], true);
    let rejected = &body["results"][1];
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["index"], 1);
    let fields: Vec<&str> = rejected["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"amount") && fields.contains(&"colour"),
        "{fields:?}"
    );

    let records = read_records(&app.kafka, &topics.events, 3, Duration::from_secs(8)).await;
    assert_eq!(records.len(), 2, "only the valid events are produced");

    // All invalid: 422 with the same listing.
    let (status, body, _) = app
        .post("application/json", json!([{"amount": "x"}]).to_string())
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "invalid_events");
    assert_eq!(
        body["data"]["results"][0]["errors"][0]["field"],
        "event_time"
    );

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("riskstream_ingest_events_rejected_total{reason=\"invalid_value\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("riskstream_ingest_events_rejected_total{reason=\"required\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_wrongly_typed_bodies_get_the_documented_4xx() {
    let topics = topics();
    let broker = TestKafka::with_topics(1, &topics);
    let app = spawn_app(
        &broker,
        &topics,
        IngestConfig {
            max_body_bytes: 4096,
            max_event_size_bytes: 1024,
            ..IngestConfig::default()
        },
    )
    .await;

    let big = Value::Array(vec![event("a", 1.0); 100]).to_string();
    let (status, body, _) = app.post("application/json", big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large");

    let mut fat = event("a", 1.0);
    fat["attributes"] = json!({"blob": "x".repeat(2000)});
    let (status, body, _) = app.post("application/json", fat.to_string()).await;
    assert_eq!(status, 422);
    assert_eq!(body["data"]["results"][0]["errors"][0]["code"], "too_large");

    let (status, body, _) = app
        .post(
            "application/json",
            "{\"account_id\": \"a\",\n \"amount\": }",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "malformed_json");
    assert_eq!(body["data"]["line"], 2);
    assert!(body["data"]["column"].as_u64().unwrap() > 0);

    let ndjson = format!("{}\nnot json\n", event("a", 1.0));
    let (status, body, _) = app.post("application/x-ndjson", ndjson).await;
    assert_eq!(status, 400);
    assert_eq!(body["data"]["line"], 2);

    let (status, body, _) = app.post("text/plain", event("a", 1.0).to_string()).await;
    assert_eq!(status, 415);
    assert_eq!(body["code"], "unsupported_media_type");

    let (status, _, _) = app.post("application/json", "42").await;
    assert_eq!(status, 400);
    let (status, _, _) = app.post("application/json", "[]").await;
    assert_eq!(status, 400);

    // Nothing of the above reached Kafka.
    let records = read_records(&app.kafka, &topics.events, 1, Duration::from_secs(3)).await;
    assert!(records.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_gives_503_with_retry_after_and_claims_nothing() {
    let topics = topics();
    let mut broker = TestKafka::private_with_topics(1, &topics);
    let app = spawn_app(
        &broker,
        &topics,
        IngestConfig {
            produce_timeout: Duration::from_millis(1500),
            ..IngestConfig::default()
        },
    )
    .await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let (status, _, _) = app
        .post("application/json", event("acc-1", 1.0).to_string())
        .await;
    assert_eq!(status, 202);

    broker.stop();
    let (status, body, headers) = app
        .post(
            "application/json",
            json!([event("acc-1", 1.0), event("acc-2", 2.0)]).to_string(),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["code"], "kafka_unavailable");
    assert_eq!(body["data"]["accepted"], 0);
    assert_eq!(body["data"]["failed"], 2);
    for r in body["data"]["results"].as_array().unwrap() {
        assert_eq!(r["status"], "failed");
        assert!(
            r["event_id"].as_str().is_some(),
            "the caller can retry with the same id"
        );
    }
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_stops_accepting() {
    let topics = topics();
    let broker = TestKafka::with_topics(1, &topics);
    let app = spawn_app(&broker, &topics, IngestConfig::default()).await;
    let (status, _, _) = app
        .post("application/json", event("acc-1", 1.0).to_string())
        .await;
    assert_eq!(status, 202);
    app.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), app.handle)
        .await
        .expect("ingest stops within its shutdown timeout")
        .unwrap();
    let after = reqwest::Client::new()
        .post(format!("http://{}/v1/events", app.addr))
        .header("content-type", "application/json")
        .body(event("acc-1", 1.0).to_string())
        .send()
        .await;
    assert!(after.is_err(), "no longer accepting connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_scopes_limits_and_reload_guard_every_route() {
    use riskstream_auth::Scope;
    use riskstream_testkit::auth::{GuardedRoute, TestTokens, exercise_guard, send};
    let topics = topics();
    let broker = TestKafka::with_topics(1, &topics);
    let mut tokens = TestTokens::new(&[("decider", &[Scope::Decide])]);
    let access = tokens.access();
    let max_header_bytes = access.http.max_header_bytes;
    let app = spawn_app(
        &broker,
        &topics,
        IngestConfig {
            max_body_bytes: 4096,
            access,
            ..IngestConfig::default()
        },
    )
    .await;
    let body = event("acc-1", 1.0).to_string();
    let post = |path: &str, authorization: Option<&str>, body: String| {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body);
        riskstream_testkit::auth::authorized(r, authorization)
    };
    let make = |a: Option<&str>| post("/v1/events", a, body.clone());
    let refusals = exercise_guard(
        &mut tokens,
        GuardedRoute {
            make: &make,
            scope: Scope::EventsWrite,
            other_scope: Scope::Decide,
            ok_status: 202,
            max_header_bytes,
        },
    )
    .await;
    // ingest's error shape.
    assert_eq!(refusals.missing.body["code"], "unauthorized");
    assert_eq!(refusals.forbidden.body["code"], "forbidden");
    assert_eq!(
        refusals.forbidden.body["data"]["required_scope"],
        "events:write"
    );
    assert_eq!(refusals.limited.body["code"], "rate_limited");

    // The synchronous decision needs `decide`, not `events:write`.
    let writer = tokens.add("writer", &[Scope::EventsWrite]);
    let writer = format!("Bearer {writer}");
    let a = riskstream_testkit::auth::until_status(
        &|a| post("/v1/decisions", a, body.clone()),
        Some(&writer),
        403,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(a.body["data"]["required_scope"], "decide");

    // 413 over max_body_bytes, with a valid token.
    let big = send(post("/v1/events", Some(&writer), "x".repeat(5000))).await;
    assert_eq!(big.status, 413, "{big:?}");

    // Health and metrics stay open; refusals are counted by status.
    assert_eq!(send(app.http.get(app.url("/healthz"))).await.status, 200);
    assert_ne!(send(app.http.get(app.url("/readyz"))).await.status, 401);
    assert_eq!(
        send(app.http.get(app.url("/openapi.json"))).await.status,
        200
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("status=\"401\""), "{metrics}");
    assert!(metrics.contains("status=\"403\""), "{metrics}");
    // An unknown route reveals nothing to a stranger, and is a 404 for a caller.
    let nowhere = || app.http.get(app.url("/v1/nowhere"));
    assert_eq!(send(nowhere()).await.status, 401);
    let known = send(nowhere().header("authorization", tokens.bearer("decider"))).await;
    assert_eq!(known.status, 404);
    app.shutdown.cancel();
    let _ = app.handle.await;
}
