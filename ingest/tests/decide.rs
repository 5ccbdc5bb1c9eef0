//! Synchronous decisions end to end over a real Kafka-protocol broker: ingest (two replicas)
//! produces the event, an in-process worker decides it, and `POST /v1/decisions` answers with
//! the decision (200) or, past a tiny deadline, 202 + `Location`, after which
//! `GET /v1/decisions/{event_id}` serves it on every replica; a card-testing burst from the
//! generator ends in `decline` with the `card_testing` rule among its reasons.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use riskstream_common::generator::{Generator, GeneratorConfig, pattern};
use riskstream_common::kafka::Topics;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{Decision, Event, Outcome, now_ms};
use riskstream_feature_worker::WorkerConfig;
use riskstream_ingest::{App, Config, IngestConfig};
use riskstream_testkit::kafka::TestKafka;
use serde_json::{Value, json};
use uuid::Uuid;

const SHIPPED_RULES_VERSION: &str = "2026-11-24.1";
/// A deadline long enough for the first decision (the worker's group join included).
const LONG_WAIT_MS: u64 = 20_000;
/// Bound for polling; never a performance assertion.
const EVENTUALLY: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

struct Pipeline {
    _broker: TestKafka,
    ingest: Vec<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

impl Pipeline {
    /// A broker, one worker and `replicas` ingest replicas, all in this process.
    async fn start(replicas: usize) -> Pipeline {
        let topics = Topics::with_suffix(&riskstream_testkit::unique("decide"));
        let broker = TestKafka::with_topics(2, &topics);
        let kafka = broker.kafka_config(&topics);
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut worker = WorkerConfig {
            listen: "127.0.0.1:0".into(),
            group_id: riskstream_testkit::unique("workers"),
            features_path: repo("config/features.toml"),
            out_of_orderness: Duration::from_millis(5),
            idle_timeout: Duration::from_millis(5),
            ..WorkerConfig::default()
        };
        worker.scoring.rules_path = repo("config/rules.toml");
        worker.scoring.models_dir = repo("config/models");
        worker.scoring.lists_path = Some(repo("config/lists/lists.csv"));
        let w = riskstream_feature_worker::App::build(
            riskstream_feature_worker::Config {
                kafka: kafka.clone(),
                worker,
            },
            shutdown.clone(),
        )
        .await
        .expect("worker builds");
        tasks.push(tokio::spawn(async move {
            w.run_until_stopped().await.expect("worker runs");
        }));

        let mut ingest = Vec::new();
        for _ in 0..replicas {
            let config = Config {
                kafka: kafka.clone(),
                ingest: IngestConfig {
                    listen: "127.0.0.1:0".into(),
                    max_future_skew: Duration::from_secs(60),
                    ..IngestConfig::default()
                },
            };
            let app = App::build(config, shutdown.clone())
                .await
                .expect("ingest builds");
            ingest.push(app.local_addr());
            tasks.push(tokio::spawn(async move {
                app.run_until_stopped().await.expect("ingest runs");
            }));
        }
        Pipeline {
            _broker: broker,
            ingest,
            shutdown,
            tasks,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, replica: usize, path: &str) -> String {
        format!("http://{}{path}", self.ingest[replica])
    }

    /// `POST /v1/decisions` on `replica`: (status, headers, body).
    async fn decide(
        &self,
        replica: usize,
        query: &str,
        body: &Value,
        traceparent: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(self.url(replica, &format!("/v1/decisions{query}")))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, replica: usize, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(replica, path))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self, replica: usize) -> String {
        self.http
            .get(self.url(replica, "/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("metrics text")
    }

    /// Polls `GET path` on `replica` until 200.
    async fn get_eventually(&self, replica: usize, path: &str) -> Value {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            let (status, body) = self.get(replica, path).await;
            if status == 200 {
                return body;
            }
            assert_eq!(status, 404, "{body}");
            assert!(
                Instant::now() < deadline,
                "no decision at {path} on replica {replica}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn event(account: &str) -> Value {
    json!({
        "event_id": Uuid::now_v7(),
        "event_time": now_ms() - 1_000,
        "account_id": account,
        "card_id": format!("card-{account}"),
        "device_id": format!("dev-{account}"),
        "ip": "10.1.2.3",
        "amount": 31.4,
        "currency": "EUR",
        "country": "DE",
        "channel": "web",
        "type": "payment",
    })
}

fn decision(body: &Value) -> Decision {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("not a decision ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_event_gets_its_decision_and_a_pending_one_can_be_fetched_on_every_replica() {
    let p = Pipeline::start(2).await;

    // Decided within the deadline: 200 with the decision, the caller's trace carried through.
    let caller = TraceParent::new_root();
    let e1 = event("acc-sync-1");
    let id1 = e1["event_id"].as_str().unwrap().to_string();
    let (status, _, body) = p
        .decide(
            0,
            &format!("?timeout_ms={LONG_WAIT_MS}"),
            &e1,
            Some(&caller.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d1 = decision(&body);
    assert_eq!(d1.event_id.to_string(), id1);
    assert_eq!(d1.trace_id, caller.trace_id_hex());
    assert_eq!(d1.account_id.as_deref(), Some("acc-sync-1"));
    assert_eq!(d1.rules_version, SHIPPED_RULES_VERSION);
    assert!(!d1.models.is_empty() && !d1.features.is_empty());
    assert!(!d1.late);

    // The other replica consumed the whole decisions topic too.
    let other = decision(&p.get_eventually(1, &format!("/v1/decisions/{id1}")).await);
    assert_eq!(other, d1);

    // A retry of the same event is answered from the recent decisions, without a new one.
    let (status, headers, body) = p.decide(0, "", &e1, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers
            .get("x-riskstream-decision")
            .and_then(|v| v.to_str().ok()),
        Some("cached")
    );
    assert_eq!(decision(&body), d1);

    // Past a tiny deadline: 202 + Location; the decision arrives later and is served there,
    // by either replica.
    let e2 = event("acc-sync-2");
    let id2 = e2["event_id"].as_str().unwrap().to_string();
    let (status, headers, body) = p.decide(0, "?timeout_ms=0", &e2, None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["event_id"], id2.as_str());
    let trace2 = body["trace_id"].as_str().expect("trace id").to_string();
    assert_eq!(trace2.len(), 32);
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_string();
    assert_eq!(location, format!("/v1/decisions/{id2}"));
    let d2 = decision(&p.get_eventually(0, &location).await);
    assert_eq!(d2.event_id.to_string(), id2);
    assert_eq!(d2.trace_id, trace2);
    assert_eq!(decision(&p.get_eventually(1, &location).await), d2);

    // Unknown and malformed ids, bad requests: the error envelope with the documented codes.
    let (status, body) = p.get(0, &format!("/v1/decisions/{}", Uuid::now_v7())).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("decision_not_found"))
    );
    let (status, body) = p.get(0, "/v1/decisions/not-a-uuid").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_event_id"))
    );
    let (status, _, body) = p
        .decide(0, "", &json!([event("a"), event("b")]), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("one_event_expected"))
    );
    let mut bad = event("acc-bad");
    bad["amount"] = json!(-5);
    let (status, _, body) = p.decide(0, "", &bad, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_event")),
        "{body}"
    );
    assert!(
        body["data"]["errors"].to_string().contains("amount"),
        "{body}"
    );
    let (status, _, body) = p
        .decide(0, "?timeout_ms=99999999", &event("acc-t"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_timeout"))
    );
    let (status, _, body) = p.decide(0, "?timeout_ms=soon", &event("acc-t"), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let r = p
        .http
        .post(p.url(0, "/v1/decisions"))
        .header("content-type", "text/plain")
        .body(event("acc-ct").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);

    // Metrics: one decided, one pending, one cached; one wait observed.
    let m = p.metrics(0).await;
    assert_eq!(
        metric(
            &m,
            "riskstream_ingest_sync_decisions_total{result=\"decided\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "riskstream_ingest_sync_decisions_total{result=\"pending\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "riskstream_ingest_sync_decisions_total{result=\"cached\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "riskstream_ingest_decision_wait_seconds_count"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "riskstream_ingest_decision_waiters"), 0.0, "{m}");
    assert!(
        metric(&m, "riskstream_ingest_decisions_seen_total") >= 2.0,
        "{m}"
    );
    // The events endpoint's metrics are still served beside them.
    assert!(m.contains("riskstream_ingest_events_accepted_total"), "{m}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_testing_burst_from_the_generator_ends_in_decline() {
    let p = Pipeline::start(1).await;

    // The generator's traffic of the last hour; the first complete card-testing burst.
    let events: Vec<Event> = Generator::new(GeneratorConfig {
        seed: 7,
        start_time_ms: now_ms() - 3_600_000,
        events_per_sec: 20.0,
        accounts: 200,
        fraud_share: 0.1,
        ..GeneratorConfig::default()
    })
    .take(4_000)
    .collect();
    let is_card_testing = |e: &Event| {
        e.attributes
            .get("synthetic_pattern")
            .and_then(Value::as_str)
            == Some(pattern::CARD_TESTING)
    };
    let card = events
        .iter()
        .filter(|e| is_card_testing(e))
        .filter_map(|e| e.card_id.clone())
        .find(|c| {
            events
                .iter()
                .filter(|e| e.card_id.as_deref() == Some(c))
                .count()
                >= 8
        })
        .expect("a card-testing burst");
    let burst: Vec<&Event> = events
        .iter()
        .filter(|e| e.card_id.as_deref() == Some(card.as_str()))
        .collect();
    assert!(burst.iter().all(|e| is_card_testing(e)));

    let mut decisions = Vec::new();
    for e in &burst {
        let body: Value = serde_json::from_slice(&e.to_json_bytes()).expect("event json");
        let (status, _, body) = p
            .decide(0, &format!("?timeout_ms={LONG_WAIT_MS}"), &body, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let d = decision(&body);
        assert_eq!(d.event_id, e.event_id);
        decisions.push(d);
    }
    let has_rule = |d: &Decision| {
        d.reasons
            .iter()
            .any(|r| r.kind == "rule" && r.code == "card_testing")
    };
    // The first tiny payment alone is not card testing; by the end of the burst it is.
    assert!(!has_rule(&decisions[0]), "{:?}", decisions[0].reasons);
    let last = decisions.last().expect("decisions");
    assert_eq!(last.outcome, Outcome::Decline, "{last:?}");
    assert!(has_rule(last), "{:?}", last.reasons);
    assert!(
        last.features["card_small_count_10m"]
            .as_f64()
            .is_some_and(|n| n >= 5.0)
    );
    p.stop().await;
}
