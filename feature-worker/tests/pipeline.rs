//! The worker end to end over a real Kafka-protocol broker: poison records go to the
//! dead-letter topic with their reason headers, late events get a `late` decision and a copy on
//! the late topic, the admin `/metrics` counts them; rule-set updates from the `rules` control
//! topic and the watched rules file are validated, a bad one is rejected while the running set
//! keeps deciding, and a good one reaches every worker (and a worker started later replays it).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use riskstream_common::kafka::{KafkaConfig, Topics, header};
use riskstream_common::{Decision, now_ms};
use riskstream_feature_worker::control::RULES_KEY;
use riskstream_feature_worker::{Config, WorkerMode};
use riskstream_testkit::kafka::{TestKafka, read_records};
use serde_json::{Value, json};
use uuid::Uuid;

mod support;

use support::worker::{TestWorker, repo};

const SHIPPED_RULES_VERSION: &str = "2026-11-24.1";
/// Generous bound for things that happen asynchronously (group joins, polling); never a
/// performance assertion.
const EVENTUALLY: Duration = Duration::from_secs(60);

/// A worker of the shipped configuration in consumer group `group`, with short timings.
fn worker_config(broker: &TestKafka, topics: &Topics, group: &str) -> Config {
    let mut config = support::worker::config(broker, topics);
    let w = &mut config.worker;
    w.group_id = group.into();
    w.out_of_orderness = Duration::from_millis(5);
    w.idle_timeout = Duration::from_millis(5);
    w.rules_poll_interval = Duration::from_millis(20);
    config
}

/// Sum of the samples of `name` whose labels contain every one of `labels` (`key="value"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Polls `f` until it gives `Some`, up to [`EVENTUALLY`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn event(account: &str, time_ms: i64) -> Value {
    json!({
        "event_id": Uuid::now_v7(),
        "event_time": time_ms,
        "account_id": account,
        "card_id": format!("card-{account}"),
        "device_id": format!("dev-{account}"),
        "ip": "10.0.0.1",
        "amount": 42.5,
        "currency": "EUR",
        "country": "DE",
        "channel": "web",
        "type": "payment",
    })
}

fn id_of(e: &Value) -> Uuid {
    e["event_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .expect("event id")
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("produce");
}

async fn produce_events(producer: &FutureProducer, topic: &str, events: &[Value]) {
    for e in events {
        let key = e["account_id"].as_str().unwrap_or_default().to_string();
        produce(producer, topic, &key, e.to_string().as_bytes()).await;
    }
}

/// Reads the decisions topic from the beginning until every id in `ids` has a decision.
async fn decisions_for(kafka: &KafkaConfig, ids: &HashSet<Uuid>) -> HashMap<Uuid, Decision> {
    let consumer: StreamConsumer = kafka
        .consumer(&riskstream_testkit::unique("reader"))
        .expect("consumer");
    consumer
        .subscribe(&[kafka.topics.decisions.as_str()])
        .expect("subscribe");
    let deadline = Instant::now() + EVENTUALLY;
    let mut out = HashMap::new();
    while out.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} decisions arrived", out.len(), ids.len()))
            .expect("consume decisions");
        let d: Decision =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("decision json");
        assert_eq!(
            m.key(),
            Some(d.event_id.to_string().as_bytes()),
            "decisions are keyed by event id"
        );
        if ids.contains(&d.event_id) {
            out.insert(d.event_id, d);
        }
    }
    out
}

fn shipped_rules() -> String {
    std::fs::read_to_string(repo("config/rules.toml")).expect("shipped rules")
}

/// The shipped rules under another version, plus a rule that fires on every event (so its
/// reason marks decisions made with this set).
fn rules_with_marker(version: &str, marker: &str) -> String {
    let text = shipped_rules().replace(
        &format!("version = \"{SHIPPED_RULES_VERSION}\""),
        &format!("version = \"{version}\""),
    );
    assert!(text.contains(version));
    format!(
        "{text}\n[[rules]]\nname = \"{marker}\"\nexpression = 'true'\nscore = 0.0\nreason = \"{marker}\"\n"
    )
}

/// A rule set with an unknown feature and a syntax error.
fn bad_rules(version: &str) -> String {
    rules_with_marker(version, "bad_marker")
        .replace(
            "features.ip_count_5m > 20.0",
            "features.no_such_feature > 20.0",
        )
        .replace(
            "features.device_distinct_cards_1h >= 4.0",
            "features.device_distinct_cards_1h >= (4.0",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_and_late_events_are_flagged_copied_and_counted() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("pipe"));
    let broker = TestKafka::with_topics(1, &topics);
    let config = worker_config(&broker, &topics, &riskstream_testkit::unique("workers"));
    let kafka = config.kafka.clone();
    let worker = TestWorker::spawn(config).await;
    let producer: FutureProducer = kafka.producer().expect("producer");

    let now = now_ms();
    let on_time = event("acc-1", now - 1_000);
    let poison: &[u8] = b"{\"event_id\": 17, not json";
    // An hour behind the watermark the first event set (beyond the allowed lateness).
    let late = event("acc-1", now - 3_600_000);
    produce_events(&producer, &topics.events, std::slice::from_ref(&on_time)).await;
    produce(&producer, &topics.events, "acc-1", poison).await;
    produce_events(&producer, &topics.events, std::slice::from_ref(&late)).await;

    // Poison: the same bytes on the dead-letter topic, with why and where from.
    let dlq = read_records(&kafka, &topics.events_dlq, 1, EVENTUALLY).await;
    assert_eq!(dlq.len(), 1, "one dead-lettered record");
    let rec = &dlq[0];
    assert_eq!(rec.value.as_deref(), Some(poison));
    assert_eq!(rec.key_str(), Some("acc-1"));
    assert!(!rec.headers[header::DLQ_REASON].is_empty());
    assert!(!rec.headers[header::DLQ_ERROR_CODE].is_empty());
    assert_eq!(rec.headers[header::DLQ_SOURCE_TOPIC], topics.events);
    assert_eq!(rec.headers[header::DLQ_SOURCE_PARTITION], "0");
    assert_eq!(rec.headers[header::DLQ_SOURCE_OFFSET], "1");

    // Both valid events are decided; the late one is flagged with its reason and scored with
    // real features (its own payment counts).
    let ids: HashSet<Uuid> = [id_of(&on_time), id_of(&late)].into();
    let decisions = decisions_for(&kafka, &ids).await;
    let d_on_time = &decisions[&id_of(&on_time)];
    assert!(!d_on_time.late);
    assert!(!d_on_time.reasons.iter().any(|r| r.code == "late_event"));
    let d_late = &decisions[&id_of(&late)];
    assert!(d_late.late, "the hour-old event is late");
    assert!(
        d_late.lateness_ms >= 3_000_000,
        "lag {}",
        d_late.lateness_ms
    );
    assert!(
        d_late
            .reasons
            .iter()
            .any(|r| r.kind == "system" && r.code == "late_event"),
        "reasons {:?}",
        d_late.reasons
    );
    assert_eq!(d_late.rules_version, SHIPPED_RULES_VERSION);
    assert_eq!(
        d_late.features["card_count_10m"],
        riskstream_common::FeatureValue::Number(1.0),
        "{:?}",
        d_late.features
    );
    assert!(!d_late.reasons.iter().any(|r| r.code == "rule_error"));

    // A copy of the late event on the late topic.
    let late_copies = read_records(&kafka, &topics.events_late, 1, EVENTUALLY).await;
    assert_eq!(late_copies.len(), 1);
    assert_eq!(late_copies[0].json()["event_id"], late["event_id"]);
    assert!(late_copies[0].headers.contains_key(header::TRACEPARENT));

    // The counts (incremented before the outputs are produced, so final by now).
    let m = worker.metrics().await;
    let events = "riskstream_worker_events_total";
    assert_eq!(metric(&m, events, &["result=\"dlq\""]), 1.0, "{m}");
    assert_eq!(metric(&m, events, &["result=\"decided\""]), 2.0, "{m}");
    let timeliness = "riskstream_worker_event_timeliness_total";
    assert_eq!(
        metric(&m, timeliness, &["timeliness=\"on_time\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, timeliness, &["timeliness=\"too_late\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "riskstream_worker_decisions_total", &[]),
        2.0,
        "{m}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_update_is_rejected_and_a_good_one_reaches_every_worker() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("rules"));
    let broker = TestKafka::with_topics(2, &topics);
    let group = riskstream_testkit::unique("workers");
    let config = worker_config(&broker, &topics, &group);
    let kafka = config.kafka.clone();
    let producer: FutureProducer = kafka.producer().expect("producer");
    let w1 = TestWorker::spawn(config.clone()).await;
    let w2 = TestWorker::spawn(config.clone()).await;
    for w in [&w1, &w2] {
        let r = eventually("the control topics are assigned", || async {
            let r = w.rules().await;
            (r["control_caught_up"] == true).then_some(r)
        })
        .await;
        assert_eq!(r["version"], SHIPPED_RULES_VERSION);
        assert!(r["last_rejected"].is_null());
    }

    // Warm up until both workers own a partition of the events topic and decide.
    let mut round = 0;
    eventually("both workers decide events", || {
        round += 1;
        let batch: Vec<Value> = (0..8)
            .map(|i| event(&format!("warm-{round}-{i}"), now_ms() - 1_000))
            .collect();
        let (producer, topic, w1, w2) = (&producer, &topics.events, &w1, &w2);
        async move {
            produce_events(producer, topic, &batch).await;
            let decided = |m: String| {
                metric(
                    &m,
                    "riskstream_worker_events_total",
                    &["result=\"decided\""],
                )
            };
            (decided(w1.metrics().await) > 0.0 && decided(w2.metrics().await) > 0.0).then_some(())
        }
    })
    .await;

    // A bad set: rejected by both, with every problem; the running set keeps deciding.
    produce(
        &producer,
        &topics.rules,
        RULES_KEY,
        bad_rules("bad-1").as_bytes(),
    )
    .await;
    for w in [&w1, &w2] {
        let m = eventually("the bad set is rejected", || async {
            let m = w.metrics().await;
            (metric(
                &m,
                "riskstream_worker_rule_updates_total",
                &["source=\"topic\"", "result=\"rejected\""],
            ) == 1.0)
                .then_some(m)
        })
        .await;
        assert_eq!(
            metric(
                &m,
                "riskstream_worker_rule_updates_total",
                &["result=\"applied\""]
            ),
            0.0
        );
        let r = w.rules().await;
        assert_eq!(
            r["version"], SHIPPED_RULES_VERSION,
            "the running set is kept"
        );
        let rej = &r["last_rejected"];
        assert_eq!(rej["version"], "bad-1");
        assert_eq!(rej["source"], "topic");
        let kinds: Vec<&str> = rej["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["kind"].as_str())
            .collect();
        assert!(kinds.contains(&"unknown_feature"), "{rej}");
        assert!(kinds.contains(&"syntax"), "{rej}");
    }
    let before: Vec<Value> = (0..16)
        .map(|i| event(&format!("before-{i}"), now_ms() - 1_000))
        .collect();
    produce_events(&producer, &topics.events, &before).await;
    let ids: HashSet<Uuid> = before.iter().map(id_of).collect();
    for d in decisions_for(&kafka, &ids).await.values() {
        assert_eq!(d.rules_version, SHIPPED_RULES_VERSION);
        assert!(!d.reasons.iter().any(|r| r.code == "bad_marker"));
    }

    // A good set: every worker switches to it, and decisions carry it.
    produce(
        &producer,
        &topics.rules,
        RULES_KEY,
        rules_with_marker("test-2", "marker_v2").as_bytes(),
    )
    .await;
    for w in [&w1, &w2] {
        eventually("the good set is applied", || async {
            (w.rules().await["version"] == "test-2").then_some(())
        })
        .await;
        let m = w.metrics().await;
        assert_eq!(
            metric(
                &m,
                "riskstream_worker_rule_updates_total",
                &["source=\"topic\"", "result=\"applied\""]
            ),
            1.0
        );
    }
    let decided_before: Vec<f64> = vec![
        metric(
            &w1.metrics().await,
            "riskstream_worker_events_total",
            &["result=\"decided\""],
        ),
        metric(
            &w2.metrics().await,
            "riskstream_worker_events_total",
            &["result=\"decided\""],
        ),
    ];
    let after: Vec<Value> = (0..32)
        .map(|i| event(&format!("after-{i}"), now_ms() - 1_000))
        .collect();
    produce_events(&producer, &topics.events, &after).await;
    let ids: HashSet<Uuid> = after.iter().map(id_of).collect();
    let decisions = decisions_for(&kafka, &ids).await;
    for d in decisions.values() {
        assert_eq!(d.rules_version, "test-2", "event {}", d.event_id);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.kind == "rule" && r.code == "marker_v2")
        );
    }
    // Both workers decided some of them (each owns one of the two partitions).
    for (w, before) in [&w1, &w2].into_iter().zip(decided_before) {
        let now = metric(
            &w.metrics().await,
            "riskstream_worker_events_total",
            &["result=\"decided\""],
        );
        assert!(now > before, "every worker decided events after the update");
    }

    // A worker started later replays the rules topic from the beginning before deciding:
    // it rejects the bad set, applies the good one and reports the same version. (It reads
    // its own events topic, so it does not take partitions from the group above; in local mode,
    // since keyed mode's stages fail at start on an events topic that does not exist.)
    let mut late_cfg = worker_config(&broker, &topics, &riskstream_testkit::unique("late"));
    late_cfg.kafka.topics.events = format!("{}-other", topics.events);
    late_cfg.worker.mode = WorkerMode::Local;
    late_cfg.worker.window_outputs = false;
    let w3 = TestWorker::spawn(late_cfg).await;
    let r = eventually("the late worker catches up", || async {
        let r = w3.rules().await;
        (r["control_caught_up"] == true).then_some(r)
    })
    .await;
    assert_eq!(r["version"], "test-2");
    let m = w3.metrics().await;
    assert_eq!(
        metric(
            &m,
            "riskstream_worker_rule_updates_total",
            &["result=\"rejected\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "riskstream_worker_rule_updates_total",
            &["result=\"applied\""]
        ),
        1.0
    );

    for w in [w1, w2, w3] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_file_is_watched_and_a_bad_edit_keeps_the_running_set() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("rfile"));
    let broker = TestKafka::with_topics(1, &topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, shipped_rules()).expect("write rules");
    let mut config = worker_config(&broker, &topics, &riskstream_testkit::unique("workers"));
    config.worker.scoring.rules_path = path.clone();
    let kafka = config.kafka.clone();
    let worker = TestWorker::spawn(config).await;
    assert_eq!(worker.rules().await["version"], SHIPPED_RULES_VERSION);

    // A bad edit: rejected, counted, the running set kept.
    std::fs::write(&path, bad_rules("bad-file")).expect("write rules");
    let m = eventually("the bad file is rejected", || async {
        let m = worker.metrics().await;
        (metric(
            &m,
            "riskstream_worker_rule_updates_total",
            &["source=\"file\"", "result=\"rejected\""],
        ) >= 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        metric(
            &m,
            "riskstream_worker_rule_updates_total",
            &["result=\"applied\""]
        ),
        0.0
    );
    let r = worker.rules().await;
    assert_eq!(r["version"], SHIPPED_RULES_VERSION);
    assert_eq!(r["last_rejected"]["source"], "file");

    // A good edit takes effect for the next decisions.
    std::fs::write(&path, rules_with_marker("file-2", "marker_file")).expect("write rules");
    eventually("the file's set is applied", || async {
        (worker.rules().await["version"] == "file-2").then_some(())
    })
    .await;
    let e = event("acc-file", now_ms() - 1_000);
    let producer: FutureProducer = kafka.producer().expect("producer");
    produce_events(&producer, &topics.events, std::slice::from_ref(&e)).await;
    let decisions = decisions_for(&kafka, &[id_of(&e)].into()).await;
    let d = &decisions[&id_of(&e)];
    assert_eq!(d.rules_version, "file-2");
    assert!(d.reasons.iter().any(|r| r.code == "marker_file"));
    worker.stop().await;
}
