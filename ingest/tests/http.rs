//! ingest over HTTP against a real Kafka-protocol broker (librdkafka's mock cluster on real TCP
//! ports): what is acknowledged is on the topic with the right key, value, partition and
//! traceparent; bad input gets the documented 4xx; a stopped broker gets 503 and nothing claimed.

use std::net::SocketAddr;
use std::time::Duration;

use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::trace_context::TraceParent;
use riskstream_ingest::{App, Config, IngestConfig};
use riskstream_testkit::kafka::{TestKafka, read_records};
use serde_json::{Value, json};

struct TestApp {
    addr: SocketAddr,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(
        &self,
        ctype: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(self.url("/v1/events"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

async fn spawn_app(broker: &TestKafka, topics: &Topics, ingest: IngestConfig) -> TestApp {
    let kafka = broker.kafka_config(topics);
    let config = Config {
        kafka: kafka.clone(),
        ingest: IngestConfig {
            listen: "127.0.0.1:0".into(),
            ..ingest
        },
    };
    let shutdown = CancellationToken::new();
    let app = App::build(config, shutdown.clone())
        .await
        .expect("build ingest");
    let addr = app.local_addr();
    let handle = tokio::spawn(async move {
        app.run_until_stopped().await.expect("ingest run");
    });
    TestApp {
        addr,
        kafka,
        shutdown,
        handle,
        http: reqwest::Client::new(),
    }
}

fn topics() -> Topics {
    Topics::with_suffix(&riskstream_testkit::unique("ingest"))
}

fn event(account: &str, amount: f64) -> Value {
    json!({
        "event_time": riskstream_common::now_ms() - 1000,
        "account_id": account, "card_id": format!("card-{account}"),
        "amount": amount, "currency": "EUR", "country": "DE", "type": "payment",
        "attributes": {"note": "hello"}
    })
}

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

/// The broker frozen (SIGSTOP) under load, then thawed: every request gets 202 or 503 (with
/// `Retry-After`), at least one gets 503 while it is frozen, and every event answered 202 is on
/// the topic exactly once (the idempotent producer retries without duplicating). A 503'd event
/// may still land once the broker thaws: the caller retries it with the same event id, and
/// consumers see at most that one extra copy (documented in docs/ingest.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_under_load_gets_503s_and_every_202_is_on_the_topic_once() {
    let topics = topics();
    let broker = TestKafka::private_with_topics(2, &topics);
    let app = spawn_app(
        &broker,
        &topics,
        IngestConfig {
            produce_timeout: Duration::from_millis(1000),
            ..IngestConfig::default()
        },
    )
    .await;
    let app = std::sync::Arc::new(app);
    let stop = CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for client in 0..4 {
        let (app, stop) = (app.clone(), stop.clone());
        load.spawn(async move {
            let mut answers: Vec<(u16, Vec<String>)> = Vec::new();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                i += 1;
                let body = json!([event(&format!("acc-{client}-{i}"), 1.0)]).to_string();
                let (status, body, headers) = app.post("application/json", body).await;
                if status == 503 {
                    assert!(headers.contains_key("retry-after"), "{body}");
                }
                // 202: `{results}`; 503: `{code, message, data: {results}}`.
                let results = if status == 202 {
                    &body["results"]
                } else {
                    &body["data"]["results"]
                };
                let ids = results
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["status"] == "accepted")
                    .filter_map(|r| r["event_id"].as_str().map(String::from))
                    .collect();
                answers.push((status, ids));
            }
            answers
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.process().pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    broker.process().resume();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    let mut answers = Vec::new();
    while let Some(a) = load.join_next().await {
        answers.extend(a.expect("load task"));
    }
    let statuses: std::collections::BTreeSet<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "only 202 or 503: {statuses:?}"
    );
    assert!(statuses.contains(&503), "the frozen broker was noticed");
    let accepted: Vec<&String> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .flat_map(|(_, ids)| ids)
        .collect();
    assert!(accepted.len() > 100, "load ran: {}", accepted.len());
    let records = read_records(
        &app.kafka,
        &topics.events,
        answers.len(),
        Duration::from_secs(10),
    )
    .await;
    let mut copies: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &records {
        let id = r.json()["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *copies.entry(id).or_default() += 1;
    }
    for id in &accepted {
        assert_eq!(copies.get(*id), Some(&1), "event {id} answered 202");
    }
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
