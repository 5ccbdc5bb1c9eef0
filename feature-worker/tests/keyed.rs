//! Keyed mode against a real Kafka-protocol broker: with 3 workers sharing 6-partition topics,
//! one of them stopped and a new one started while events stream in, every event gets exactly one
//! decision (duplicates, if any, identical) and every feature value equals a reference engine fed
//! all events in `(event_time_ms, event_id)` order; one worker alone gives the same values.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Decision, Event, FeatureValue};
use riskstream_feature_worker::features::{FeatureEngine, FeatureSet};
use riskstream_feature_worker::{App, Config, WorkerConfig, WorkerMode};
use riskstream_testkit::kafka::TestKafka;
use tokio::task::JoinHandle;
use uuid::Uuid;

const PARTITIONS: i32 = 6;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

fn worker_config(broker: &TestKafka, topics: &Topics) -> Config {
    let mut worker = WorkerConfig {
        listen: "127.0.0.1:0".into(),
        group_id: riskstream_testkit::unique("keyed"),
        features_path: repo("config/features.toml"),
        out_of_orderness: Duration::from_millis(200),
        // Longer than any gap in the test's production, so no source goes idle mid-stream.
        idle_timeout: Duration::from_millis(3000),
        shutdown_timeout: Duration::from_secs(10),
        mode: WorkerMode::Keyed,
        ..WorkerConfig::default()
    };
    worker.scoring.rules_path = repo("config/rules.toml");
    worker.scoring.models_dir = repo("config/models");
    worker.scoring.lists_path = Some(repo("config/lists/lists.csv"));
    Config {
        kafka: broker.kafka_config(topics),
        worker,
    }
}

fn close(a: &FeatureValue, b: &FeatureValue) -> bool {
    match (a, b) {
        (FeatureValue::Number(x), FeatureValue::Number(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// Generated traffic with fraud patterns, neighbours swapped (disorder of a few ms, inside the
/// 200 ms bound).
fn events(n: usize, seed: u64) -> Vec<Event> {
    let mut events: Vec<Event> = Generator::new(GeneratorConfig {
        seed,
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
    events
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[Event]) {
    for e in events {
        let payload = e.to_json_bytes();
        let key = e.account_id.clone().unwrap_or_default();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Timeout::Never,
            )
            .await
            .expect("produce");
    }
}

async fn start_worker(config: &Config) -> (CancellationToken, JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let app = App::build(config.clone(), shutdown.clone())
        .await
        .expect("worker builds");
    let handle = tokio::spawn(async move {
        app.run_until_stopped().await.expect("worker runs");
    });
    (shutdown, handle)
}

/// Reads decisions until every event id of `want` has one or `timeout` passed; checks that
/// duplicates are identical.
struct DecisionReader {
    consumer: StreamConsumer,
    decisions: HashMap<Uuid, Decision>,
    duplicates: usize,
}

impl DecisionReader {
    fn new(kafka: &KafkaConfig, topic: &str) -> Self {
        let consumer: StreamConsumer = kafka
            .consumer(&riskstream_testkit::unique("reader"))
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        Self {
            consumer,
            decisions: HashMap::new(),
            duplicates: 0,
        }
    }

    async fn read_until(&mut self, unique: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.decisions.len() < unique {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Ok(m) = tokio::time::timeout(left, self.consumer.recv()).await else {
                break;
            };
            let m = m.expect("consume decisions");
            let d: Decision =
                serde_json::from_slice(m.payload().expect("payload")).expect("decision json");
            assert_eq!(
                m.key(),
                Some(d.event_id.to_string().as_bytes()),
                "keyed by event id"
            );
            if let Some(first) = self.decisions.get(&d.event_id) {
                self.duplicates += 1;
                assert_eq!(
                    first.features, d.features,
                    "a duplicate decision is identical"
                );
                assert_eq!(first.outcome, d.outcome);
            } else {
                self.decisions.insert(d.event_id, d);
            }
        }
    }
}

/// The reference values: one engine fed every event in (event_time_ms, event_id) order.
fn check_against_reference(events: &[Event], decisions: &HashMap<Uuid, Decision>, config: &Config) {
    let set = FeatureSet::from_file(repo("config/features.toml")).unwrap();
    let reference = FeatureEngine::new(set, config.worker.state.clone());
    let mut ordered = events.to_vec();
    ordered.sort_by_key(|e| (e.event_time_ms, e.event_id));
    let mut checked = 0;
    for e in &ordered {
        let expected: BTreeMap<String, FeatureValue> = reference.process_all(e);
        let d = decisions
            .get(&e.event_id)
            .unwrap_or_else(|| panic!("no decision for {}", e.event_id));
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
    assert!(checked >= events.len() * 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_a_rebalance_give_the_reference_values_for_every_event() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("keyed3"));
    let broker = TestKafka::start(PARTITIONS, &topics.all());
    let config = worker_config(&broker, &topics);
    let n = 3000;
    let events = events(n, 21);
    let producer: FutureProducer = config.kafka.producer().unwrap();
    // A first part before the workers start, the rest streamed while they run.
    let head = 600;
    produce(&producer, &topics.events, &events[..head]).await;
    let feeder = {
        let (producer, topic, rest) = (
            producer.clone(),
            topics.events.clone(),
            events[head..].to_vec(),
        );
        tokio::spawn(async move {
            for chunk in rest.chunks(60) {
                produce(&producer, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start_worker(&config).await);
    }
    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(400, Duration::from_secs(90)).await;
    assert!(
        reader.decisions.len() >= 400,
        "decisions flow before the rebalance ({} so far)",
        reader.decisions.len()
    );

    // One worker leaves, a new one joins: every stage rebalances and restores.
    let (stop, handle) = workers.remove(0);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("worker drains in time")
        .expect("worker task");
    workers.push(start_worker(&config).await);

    feeder.await.expect("feeder");
    reader.read_until(n, Duration::from_secs(120)).await;
    assert_eq!(reader.decisions.len(), n, "every event gets a decision");
    check_against_reference(&events, &reader.decisions, &config);
    // Nothing more than the events (no stray decisions).
    let ids: std::collections::HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert!(reader.decisions.keys().all(|id| ids.contains(id)));

    for (stop, _) in &workers {
        stop.cancel();
    }
    for (_, handle) in workers {
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("worker drains in time")
            .expect("worker task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keyed_worker_gives_the_reference_values() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("keyed1"));
    let broker = TestKafka::start(PARTITIONS, &topics.all());
    let config = worker_config(&broker, &topics);
    let n = 1500;
    let events = events(n, 5);
    let producer: FutureProducer = config.kafka.producer().unwrap();
    produce(&producer, &topics.events, &events).await;
    let (stop, handle) = start_worker(&config).await;
    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(n, Duration::from_secs(90)).await;
    assert_eq!(reader.decisions.len(), n, "every event gets a decision");
    assert_eq!(reader.duplicates, 0, "no rebalance, no duplicate");
    check_against_reference(&events, &reader.decisions, &config);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("worker drains in time")
        .expect("worker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_still_gives_the_reference_values_on_one_partition() {
    // Local mode is exact when every feature's key lives on the one partition there is.
    let topics = Topics::with_suffix(&riskstream_testkit::unique("local1"));
    let broker = TestKafka::start(1, &topics.all());
    let mut config = worker_config(&broker, &topics);
    config.worker.mode = WorkerMode::Local;
    config.worker.idle_timeout = Duration::from_millis(800);
    let n = 1500;
    let events = events(n, 9);
    let producer: FutureProducer = config.kafka.producer().unwrap();
    produce(&producer, &topics.events, &events).await;
    let (stop, handle) = start_worker(&config).await;
    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(n, Duration::from_secs(60)).await;
    assert_eq!(reader.decisions.len(), n, "every event gets a decision");
    check_against_reference(&events, &reader.decisions, &config);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("worker drains in time")
        .expect("worker task");
}
