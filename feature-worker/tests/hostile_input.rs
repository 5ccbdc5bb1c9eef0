//! The worker under hostile input, on a real Kafka broker: 10 000 malformed records (random
//! bytes, truncated JSON, wrong types, huge values, invalid UTF-8, protobuf where JSON belongs,
//! records naming impossible feature groups or partitions, invalid rule sets and list updates)
//! mixed with valid ones into every topic the worker consumes: `events` and the `rules` and
//! `lists` control topics (local mode), `events` and the internal repartition and results
//! topics (keyed mode). No crash and no stall: every valid event after the garbage is decided
//! and a valid rule set after it is applied. Every malformed record is in the dead-letter topic
//! exactly once, found by its source topic, partition and offset, with a code that is right
//! for it and a reason naming the problem; nothing else is.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::{Decision, now_ms};
use riskstream_feature_worker::control::RULES_KEY;
use riskstream_feature_worker::features::FeatureSet;
use riskstream_feature_worker::{Config, WorkerMode};
use riskstream_testkit::hostile::{
    self, At, KeyedPayload, Malformed, hostile_producer, invalid_utf8, other_type, random_bytes,
    send_all, send_bad, send_mixed, truncated, with_value,
};
use riskstream_testkit::kafka::TestKafka;
use serde_json::{Value, json};
use uuid::Uuid;

mod support;

use support::worker::{TestWorker, repo};

/// Generous bound for what happens asynchronously; never a performance assertion.
const EVENTUALLY: Duration = Duration::from_secs(90);
/// A poison event larger than the worker's 1 MiB event limit and than a dead letter carries
/// whole (`DLQ_MAX_PAYLOAD_BYTES`).
const HUGE_EVENT_BYTES: usize = 1_200_000;

fn worker_config(broker: &TestKafka, topics: &Topics, mode: WorkerMode) -> Config {
    let mut config = support::worker::config(broker, topics);
    let w = &mut config.worker;
    w.out_of_orderness = Duration::from_millis(5);
    w.idle_timeout = Duration::from_millis(50);
    w.reorder_wait = Duration::ZERO;
    w.mode = mode;
    // Local mode cannot compute the shipped window outputs (a start-up error otherwise).
    w.window_outputs = mode == WorkerMode::Keyed;
    config
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
        "attributes": {"mcc": "5411"},
    })
}

/// A wrong type is `invalid_type`, or `invalid_value` for text where a time or number is parsed.
const EVENT_FIELD_CODES: &[&str] = &["invalid_type", "invalid_value"];
const JSON_CODES: &[&str] = &["malformed_json"];

/// Malformed records of the `events` topic.
fn bad_events(rng: &mut ChaCha8Rng, n: usize) -> Vec<Malformed> {
    let valid = event("acc-bad", now_ms() - 1_000);
    let fields: Vec<String> = valid.as_object().expect("object").keys().cloned().collect();
    (0..n)
        .map(|i| match i % 9 {
            0 => Malformed::new("random bytes", random_bytes(rng, 0xff, 300), JSON_CODES),
            1 => Malformed::new(
                "truncated json",
                truncated(rng, valid.to_string().as_bytes()),
                JSON_CODES,
            ),
            2 => {
                let f = &fields[rng.random_range(0..fields.len())];
                let v = with_value(
                    &valid,
                    &format!("/{f}"),
                    other_type(rng, &valid[f.as_str()]),
                );
                Malformed::new("wrong type", v.to_string().into_bytes(), EVENT_FIELD_CODES)
                    .naming(f.clone())
            }
            3 if i % 450 == 3 => {
                let blob = "x".repeat(HUGE_EVENT_BYTES);
                let v = with_value(&valid, "/attributes/blob", Value::from(blob));
                Malformed::new("huge event", v.to_string().into_bytes(), &["too_large"])
            }
            3 => {
                let v = with_value(&valid, "/amount", json!(-1e308));
                Malformed::new(
                    "negative amount",
                    v.to_string().into_bytes(),
                    &["invalid_value"],
                )
                .naming("amount")
            }
            4 => Malformed::new(
                "invalid utf-8",
                invalid_utf8(&valid, "/card_id"),
                JSON_CODES,
            ),
            5 => Malformed::new(
                "otlp protobuf",
                b"\n\x8c\x01\n\x1e\n\x1c\n\x0cservice.name\x12\x0c\n\nriskstream".to_vec(),
                JSON_CODES,
            ),
            6 => {
                let not_objects: [&[u8]; 4] = [b"[]", b"42", b"null", b"\"event\""];
                Malformed::new(
                    "not an object",
                    not_objects[i % 4].to_vec(),
                    &["invalid_type"],
                )
            }
            7 => {
                let v = with_value(&valid, "/event_time", json!("yesterday"));
                Malformed::new("bad time", v.to_string().into_bytes(), &["invalid_value"])
                    .naming("event_time")
            }
            _ => {
                let mut v = valid.clone();
                v["surprise"] = json!(1);
                Malformed::new(
                    "unknown field",
                    v.to_string().into_bytes(),
                    &["unknown_field"],
                )
                .naming("surprise")
            }
        })
        .collect()
}

/// The shipped rules under another version (a valid update).
fn rules_version(version: &str) -> String {
    let text = std::fs::read_to_string(repo("config/rules.toml")).expect("rules");
    let running = text
        .lines()
        .find(|l| l.starts_with("version = "))
        .expect("a version line")
        .to_string();
    text.replace(&running, &format!("version = \"{version}\""))
}

const RULE_CODES: &[&str] = &["invalid_rule_set"];

/// Malformed records of the `rules` topic.
fn bad_rules(rng: &mut ChaCha8Rng, n: usize) -> Vec<Malformed> {
    let valid = rules_version("soak-valid");
    (0..n)
        .map(|i| {
            let version = format!("soak-bad-{i}");
            let text = rules_version(&version);
            match i % 7 {
                0 => Malformed::new("random bytes", random_bytes(rng, 0xff, 300), &["not_utf8"]),
                1 => {
                    // Cut inside the version string: never a valid file.
                    let at = valid.find("soak-valid").expect("version") + 2;
                    Malformed::new("truncated toml", valid.as_bytes()[..at].to_vec(), RULE_CODES)
                }
                2 => Malformed::new(
                    "wrong type",
                    text.replace(&format!("version = \"{version}\""), "version = 17")
                        .into_bytes(),
                    RULE_CODES,
                )
                .naming("line"),
                3 => Malformed::new(
                    "unknown feature",
                    text.replace("features.ip_count_5m", "features.no_such_feature")
                        .into_bytes(),
                    RULE_CODES,
                )
                .naming("no_such_feature"),
                4 => Malformed::new(
                    "cel syntax error",
                    format!(
                        "{text}\n[[rules]]\nname = \"broken\"\nexpression = '1 +* 2'\nscore = 0.1\nreason = \"r\"\n"
                    )
                    .into_bytes(),
                    RULE_CODES,
                )
                .naming("broken"),
                5 => Malformed::new(
                    "approve on error",
                    format!("on_rule_error = \"approve\"\n{text}").into_bytes(),
                    RULE_CODES,
                )
                .naming("on_rule_error"),
                _ => Malformed::new(
                    "json, not toml",
                    json!({"version": version, "rules": []}).to_string().into_bytes(),
                    RULE_CODES,
                ),
            }
        })
        .collect()
}

const LIST_CODES: &[&str] = &["invalid_list_update"];

/// Malformed records of the `lists` topic.
fn bad_lists(rng: &mut ChaCha8Rng, n: usize) -> Vec<Malformed> {
    let valid =
        json!({"op": "upsert", "entity": "card_id", "value": "c-1", "list": "block", "ttl": "1h"});
    let fields = ["op", "entity", "value", "list", "ttl"];
    (0..n)
        .map(|i| match i % 6 {
            0 => Malformed::new("random bytes", random_bytes(rng, 0xff, 200), LIST_CODES),
            1 => Malformed::new(
                "truncated json",
                truncated(rng, valid.to_string().as_bytes()),
                LIST_CODES,
            ),
            2 => {
                let f = fields[rng.random_range(0..fields.len())];
                let v = with_value(&valid, &format!("/{f}"), other_type(rng, &valid[f]));
                Malformed::new("wrong type", v.to_string().into_bytes(), LIST_CODES)
            }
            3 => Malformed::new(
                "unknown entity",
                with_value(&valid, "/entity", json!("password"))
                    .to_string()
                    .into_bytes(),
                LIST_CODES,
            )
            .naming("password"),
            4 => Malformed::new("invalid utf-8", invalid_utf8(&valid, "/value"), LIST_CODES),
            _ => Malformed::new(
                "huge ttl",
                with_value(&valid, "/ttl", json!("99999999999999999999999y"))
                    .to_string()
                    .into_bytes(),
                LIST_CODES,
            )
            .naming("expected a duration"),
        })
        .collect()
}

/// Malformed records of the repartition topic (keyed mode).
fn bad_repartition(rng: &mut ChaCha8Rng, n: usize, groups: usize) -> Vec<Malformed> {
    let e = event("acc-bad", now_ms() - 1_000);
    let valid = json!({"event": {"event": e, "group": 0, "src_partition": 0, "src_offset": 1, "watermark_ms": 0}});
    let marker = json!({"marker": {"src_partition": 0, "watermark_ms": 0, "idle": false}});
    (0..n)
        .map(|i| match i % 7 {
            0 => Malformed::new(
                "random bytes",
                random_bytes(rng, 0xff, 300),
                &["undecodable"],
            ),
            1 => Malformed::new(
                "truncated json",
                truncated(rng, valid.to_string().as_bytes()),
                &["undecodable"],
            ),
            2 => Malformed::new(
                "wrong type",
                with_value(&valid, "/event/group", json!("0"))
                    .to_string()
                    .into_bytes(),
                &["undecodable"],
            ),
            3 => Malformed::new(
                "huge source partition",
                with_value(&marker, "/marker/src_partition", json!(i32::MAX))
                    .to_string()
                    .into_bytes(),
                &["invalid_source_partition"],
            )
            .naming(i32::MAX.to_string()),
            4 => Malformed::new(
                "unknown group",
                with_value(&valid, "/event/group", json!(groups + i))
                    .to_string()
                    .into_bytes(),
                &["unknown_group"],
            )
            .naming((groups + i).to_string()),
            5 => Malformed::new(
                "invalid utf-8",
                invalid_utf8(&valid, "/event/event/card_id"),
                &["undecodable"],
            ),
            _ => Malformed::new(
                "unknown record",
                json!({"checkpoint": {"at": 1}}).to_string().into_bytes(),
                &["undecodable"],
            ),
        })
        .collect()
}

/// Malformed records of the results topic (keyed mode).
fn bad_results(rng: &mut ChaCha8Rng, n: usize, set: &FeatureSet) -> Vec<Malformed> {
    let groups = set.groups().len();
    let width = set.groups()[0].features().len();
    let valid = json!({"partial": {"event_id": Uuid::now_v7(), "group": 0, "values": vec![Value::Null; width]}});
    (0..n)
        .map(|i| match i % 6 {
            0 => Malformed::new(
                "random bytes",
                random_bytes(rng, 0xff, 300),
                &["undecodable"],
            ),
            1 => Malformed::new(
                "truncated json",
                truncated(rng, valid.to_string().as_bytes()),
                &["undecodable"],
            ),
            2 => Malformed::new(
                "wrong type",
                with_value(&valid, "/partial/values", json!({"a": 1}))
                    .to_string()
                    .into_bytes(),
                &["undecodable"],
            ),
            3 => Malformed::new(
                "wrong value count",
                with_value(
                    &valid,
                    "/partial/values",
                    json!(vec![1.0; width + 1 + i % 5]),
                )
                .to_string()
                .into_bytes(),
                &["wrong_value_count"],
            ),
            4 => Malformed::new(
                "unknown group",
                with_value(&valid, "/partial/group", json!(groups + i))
                    .to_string()
                    .into_bytes(),
                &["unknown_group"],
            ),
            _ => Malformed::new(
                "invalid utf-8",
                invalid_utf8(&valid, "/partial/event_id"),
                &["undecodable"],
            ),
        })
        .collect()
}

/// `n` valid events, keyed by account.
fn valid_events(tag: &str, n: usize) -> (HashSet<Uuid>, Vec<KeyedPayload>) {
    let mut ids = HashSet::new();
    let records = (0..n)
        .map(|i| {
            let account = format!("{tag}-{}", i % 17);
            let e = event(&account, now_ms() - 1_000);
            ids.insert(
                e["event_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("id"),
            );
            (Some(account), e.to_string().into_bytes())
        })
        .collect();
    (ids, records)
}

/// Reads the decisions topic until every id in `ids` has one.
async fn await_decisions(kafka: &KafkaConfig, ids: &HashSet<Uuid>) {
    let consumer: StreamConsumer = kafka
        .consumer(&riskstream_testkit::unique("reader"))
        .expect("consumer");
    consumer
        .subscribe(&[kafka.topics.decisions.as_str()])
        .expect("subscribe");
    let deadline = Instant::now() + EVENTUALLY;
    let mut seen = HashSet::new();
    while !ids.iter().all(|id| seen.contains(id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} valid events were decided",
                    seen.len(),
                    ids.len()
                )
            })
            .expect("consume decisions");
        let d: Decision =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("decision json");
        if ids.contains(&d.event_id) {
            seen.insert(d.event_id);
        }
    }
}

/// Every malformed record is in the dead-letter topic exactly once, its payload copied.
async fn check_dead_letters(kafka: &KafkaConfig, expected: HashMap<At, Malformed>) {
    hostile::check_dead_letters(
        kafka,
        &kafka.topics.events_dlq,
        expected,
        EVENTUALLY,
        |m, p| p == m.payload.as_slice(),
    )
    .await;
}

/// Sum of the samples of `name` whose labels contain every one of `labels`.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_dead_letters_malformed_events_rules_and_lists_and_keeps_deciding() {
    const { assert!(HUGE_EVENT_BYTES > riskstream_common::kafka::DLQ_MAX_PAYLOAD_BYTES) };
    let topics = Topics::with_suffix(&riskstream_testkit::unique("hostile"));
    let broker = TestKafka::with_topics(2, &topics);
    let config = worker_config(&broker, &topics, WorkerMode::Local);
    let kafka = config.kafka.clone();
    let worker = TestWorker::spawn(config).await;
    eventually("the control topics are assigned", || async {
        (worker.rules().await["control_caught_up"] == true).then_some(())
    })
    .await;
    let producer = hostile_producer(&kafka);
    let mut rng = ChaCha8Rng::seed_from_u64(13);

    let (ids, good) = valid_events("local", 400);
    let bad = bad_events(&mut rng, 6_000);
    let mut expected = send_mixed(&producer, &mut rng, &topics.events, good, bad).await;
    let rules = bad_rules(&mut rng, 300);
    let lists = bad_lists(&mut rng, 700);
    expected.extend(send_bad(&producer, &topics.rules, Some(RULES_KEY), rules).await);
    expected.extend(send_bad(&producer, &topics.lists, Some("lists"), lists).await);
    assert_eq!(expected.len(), 7_000);

    // After the garbage: valid events are decided, a valid rule set is applied.
    let (after, records) = valid_events("after", 50);
    send_all(&producer, &topics.events, &records).await;
    let update = (
        Some(RULES_KEY.to_string()),
        rules_version("soak-after").into_bytes(),
    );
    send_all(&producer, &topics.rules, &[update]).await;
    let all: HashSet<Uuid> = ids.union(&after).copied().collect();
    await_decisions(&kafka, &all).await;
    eventually(
        "the valid rule set after the garbage is applied",
        || async { (worker.rules().await["version"] == "soak-after").then_some(()) },
    )
    .await;

    let by_topic = |t: &str| expected.keys().filter(|(topic, _, _)| topic == t).count() as f64;
    let (n_events, n_rules, n_lists) = (
        by_topic(&topics.events),
        by_topic(&topics.rules),
        by_topic(&topics.lists),
    );
    check_dead_letters(&kafka, expected).await;
    let m = worker.metrics().await;
    let dl = "riskstream_worker_dead_letters_total";
    assert_eq!(metric(&m, dl, &["source=\"events\""]), n_events, "{m}");
    assert_eq!(
        metric(&m, "riskstream_worker_events_total", &["result=\"dlq\""]),
        n_events
    );
    assert_eq!(
        metric(
            &m,
            "riskstream_worker_rule_updates_total",
            &["result=\"rejected\""]
        ),
        n_rules
    );
    assert_eq!(
        metric(
            &m,
            "riskstream_worker_list_updates_total",
            &["result=\"rejected\""]
        ),
        n_lists
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_mode_dead_letters_malformed_internal_records_and_keeps_deciding() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("hostile-keyed"));
    let broker = TestKafka::with_topics(2, &topics);
    let config = worker_config(&broker, &topics, WorkerMode::Keyed);
    let set = FeatureSet::from_file(&config.worker.features_path).expect("features");
    let kafka = config.kafka.clone();
    let worker = TestWorker::spawn(config).await;
    let producer = hostile_producer(&kafka);
    let mut rng = ChaCha8Rng::seed_from_u64(31);

    let (ids, good) = valid_events("keyed", 200);
    let bad = bad_events(&mut rng, 1_000);
    let mut expected = send_mixed(&producer, &mut rng, &topics.events, good, bad).await;
    let repartition = bad_repartition(&mut rng, 1_000, set.groups().len());
    let results = bad_results(&mut rng, 1_000, &set);
    expected.extend(send_bad(&producer, &topics.repartition, None, repartition).await);
    expected.extend(send_bad(&producer, &topics.feature_results, None, results).await);
    assert_eq!(expected.len(), 3_000);

    let (after, records) = valid_events("keyed-after", 50);
    send_all(&producer, &topics.events, &records).await;
    let all: HashSet<Uuid> = ids.union(&after).copied().collect();
    await_decisions(&kafka, &all).await;

    let by_topic = |t: &str| expected.keys().filter(|(topic, _, _)| topic == t).count() as f64;
    let counts = [
        ("events", by_topic(&topics.events)),
        ("repartition", by_topic(&topics.repartition)),
        ("results", by_topic(&topics.feature_results)),
    ];
    check_dead_letters(&kafka, expected).await;
    let m = worker.metrics().await;
    for (source, n) in counts {
        assert_eq!(
            metric(
                &m,
                "riskstream_worker_dead_letters_total",
                &[&format!("source=\"{source}\"")]
            ),
            n,
            "{source}: {m}"
        );
    }
    worker.stop().await;
}
