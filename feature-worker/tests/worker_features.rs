//! The worker process loop against a real Kafka-protocol broker: every event read from `events`
//! gets exactly one decision whose feature values equal a reference engine fed the same events
//! in event-time order, when they arrive out of order by less than the reorder wait (here
//! longer than the gap between the arrivals of two swapped neighbours; disorder beyond it is
//! covered by tests/keyed.rs and tests/features_reference.rs).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::Topics;
use riskstream_common::{Decision, Event, FeatureValue};
use riskstream_feature_worker::Config;
use riskstream_feature_worker::features::{FeatureEngine, FeatureSet};
use riskstream_testkit::kafka::{TestKafka, read_records};

mod support;

use support::worker::{TestWorker, repo};

fn worker_config(broker: &TestKafka, topics: &Topics) -> Config {
    let mut config = support::worker::config(broker, topics);
    let w = &mut config.worker;
    w.out_of_orderness = Duration::from_millis(200);
    w.idle_timeout = Duration::from_millis(800);
    w.reorder_wait = Duration::from_millis(500);
    config
}

fn close(a: &FeatureValue, b: &FeatureValue) -> bool {
    match (a, b) {
        (FeatureValue::Number(x), FeatureValue::Number(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_gets_one_decision_with_the_reference_feature_values() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("wf"));
    let broker = TestKafka::with_topics(1, &topics);
    let config = worker_config(&broker, &topics);

    // Generated traffic with fraud patterns, slightly shuffled: neighbours swapped, so events
    // arrive out of order by a few milliseconds (inside the 200 ms bound).
    let n = 2500;
    let mut events: Vec<Event> = Generator::new(GeneratorConfig {
        seed: 11,
        start_time_ms: riskstream_common::now_ms() - 3_600_000,
        fraud_share: 0.05,
        accounts: 300,
        ..GeneratorConfig::default()
    })
    .take(n)
    .collect();
    for i in (0..n - 1).step_by(7) {
        events.swap(i, i + 1);
    }

    let producer: FutureProducer = config.kafka.producer().unwrap();
    for e in &events {
        let payload = e.to_json_bytes();
        let key = e.account_id.clone().unwrap_or_default();
        producer
            .send(
                FutureRecord::to(&topics.events).key(&key).payload(&payload),
                Timeout::Never,
            )
            .await
            .expect("produce");
    }

    let worker = TestWorker::spawn(config.clone()).await;
    let admin = worker.admin();

    let records = read_records(&config.kafka, &topics.decisions, n, Duration::from_secs(60)).await;
    assert_eq!(records.len(), n, "one decision per event");
    let decisions: HashMap<String, Decision> = records
        .iter()
        .map(|r| {
            let d: Decision =
                serde_json::from_slice(r.value.as_deref().unwrap()).expect("decision json");
            assert_eq!(
                r.key_str(),
                Some(d.event_id.to_string().as_str()),
                "keyed by event id"
            );
            (d.event_id.to_string(), d)
        })
        .collect();
    assert_eq!(decisions.len(), n, "no event decided twice");

    // The reference: the same definitions fed in (event_time, event_id) order.
    let set = FeatureSet::from_file(repo("config/features.toml")).unwrap();
    let reference = FeatureEngine::new(set, config.worker.state.clone());
    let mut ordered = events.clone();
    ordered.sort_by_key(|e| (e.event_time_ms, e.event_id));
    let mut checked = 0;
    for e in &ordered {
        let expected: BTreeMap<String, FeatureValue> = reference.process_all(e);
        let d = &decisions[&e.event_id.to_string()];
        assert!(!d.late, "nothing is late within the bound");
        for (name, want) in &expected {
            let got = d
                .features
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing from decision"));
            assert!(
                close(got, want),
                "event {} feature {name}: worker {got:?} reference {want:?}",
                e.event_id
            );
            checked += 1;
        }
    }
    assert!(checked >= n * 15);

    // The live window values of a key are served by the admin port.
    let card = ordered.last().unwrap().card_id.clone().unwrap();
    let body: serde_json::Value = reqwest::get(format!(
        "http://{admin}/v1/features/card_id/{card}?at_ms={}",
        ordered.last().unwrap().event_time_ms
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        body["features"]["card_count_10m"].as_f64().unwrap() >= 1.0,
        "{body}"
    );
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains(&format!(
            "riskstream_worker_events_total{{result=\"decided\"}} {n}"
        )),
        "{metrics}"
    );

    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_need_an_admin_token_health_and_metrics_do_not() {
    use riskstream_auth::Scope;
    use riskstream_testkit::auth::{GuardedRoute, TestTokens, exercise_guard, send};
    let topics = Topics::with_suffix(&riskstream_testkit::unique("wa"));
    let broker = TestKafka::with_topics(1, &topics);
    let mut config = worker_config(&broker, &topics);
    let mut tokens = TestTokens::new(&[]);
    config.worker.access = tokens.access();
    let max_header_bytes = config.worker.access.http.max_header_bytes;
    let worker = TestWorker::spawn(config).await;
    let admin = worker.admin();
    let http = reqwest::Client::new();
    let make = |a: Option<&str>| {
        let r = http.get(format!("http://{admin}/v1/rules"));
        riskstream_testkit::auth::authorized(r, a)
    };
    let refusals = exercise_guard(
        &mut tokens,
        GuardedRoute {
            make: &make,
            scope: Scope::Admin,
            other_scope: Scope::MetricsRead,
            ok_status: 200,
            max_header_bytes,
        },
    )
    .await;
    assert_eq!(refusals.missing.body["code"], "unauthorized");
    assert_eq!(refusals.forbidden.body["data"]["required_scope"], "admin");
    let features = send(http.get(format!("http://{admin}/v1/features/card_id/c1"))).await;
    assert_eq!(features.status, 401);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let a = send(http.get(format!("http://{admin}{open}"))).await;
        assert_eq!(a.status, 200, "{open}: {a:?}");
    }
    worker.stop().await;
}
