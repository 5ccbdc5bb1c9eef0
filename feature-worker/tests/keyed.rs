//! Keyed mode against a real Kafka-protocol broker, on streams with bounded disorder (events
//! shuffled by up to 3 s) and late bursts (runs of events 5 to 60 minutes behind, in order
//! among themselves, interleaved with the on-time stream): with 3 workers sharing 6-partition
//! topics, one of them stopped and a new one started while events stream in, every event gets
//! exactly one decision (duplicates, if any, identical), every feature value equals the
//! brute-force reference (tests/support/reference.rs) applied in processing order, no feature
//! is null where the reference has a value, and every decision's `late` / `lateness_ms` is its
//! source partition's; one worker alone gives the same values.
//!
//! Processing order: every feature's entity includes `account_id`, the events' partition key,
//! so all events of one entity come from one source partition and are processed in its order
//! (docs/features.md, "Distributed mode"). The shipped definitions are used with each entity
//! prefixed by `account_id`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::{Decision, Event, FeatureValue};
use riskstream_feature_worker::features::{Feature, FeatureSet};
use riskstream_feature_worker::{Config, WorkerMode};
use riskstream_testkit::kafka::TestKafka;
use uuid::Uuid;

mod support;

use support::reference::{Reference, close};
use support::worker::{TestWorker, repo};

const PARTITIONS: i32 = 6;
const OUT_OF_ORDERNESS_MS: i64 = 200;

/// The shipped feature definitions with every entity prefixed by `account_id` (same names,
/// windows and filters), written to a temporary file.
fn account_partitioned_features() -> PathBuf {
    let text = std::fs::read_to_string(repo("config/features.toml")).expect("features.toml");
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("entity = \"") {
            Some(rest) if !rest.starts_with("account_id\"") => {
                format!("entity = \"account_id+{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "{}.toml",
        riskstream_testkit::unique("features-by-account")
    ));
    std::fs::write(&path, text).expect("write features");
    path
}

fn worker_config(broker: &TestKafka, topics: &Topics) -> Config {
    let mut config = support::worker::config(broker, topics);
    let w = &mut config.worker;
    w.group_id = riskstream_testkit::unique("keyed");
    w.features_path = account_partitioned_features();
    w.out_of_orderness = Duration::from_millis(OUT_OF_ORDERNESS_MS as u64);
    // Longer than any gap in the test's production, so no source goes idle mid-stream.
    w.idle_timeout = Duration::from_millis(3000);
    // Decide on arrival: every entity's processing order is its partition's order, which
    // the reference reproduces (a reorder wait would make it depend on wall-clock timing).
    w.reorder_wait = Duration::ZERO;
    w.shutdown_timeout = Duration::from_secs(10);
    w.mode = WorkerMode::Keyed;
    config
}

/// Generated traffic with fraud patterns (about 0.3 events per second of event time, so an
/// hour and a half of it), in arrival order: shuffled by up to 3 s, with 4 late bursts (12
/// consecutive events each, moved 5 to 60 minutes later in arrival, in order among
/// themselves, one every other on-time event).
fn events(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let generated: Vec<Event> = Generator::new(GeneratorConfig {
        seed,
        start_time_ms: riskstream_common::now_ms() - 3 * 3_600_000,
        events_per_sec: 0.3,
        fraud_share: 0.05,
        accounts: 300,
        ..GeneratorConfig::default()
    })
    .take(n)
    .collect();
    let mut bursts: Vec<Vec<Event>> = Vec::new();
    let mut on_time: Vec<(i64, Event)> = Vec::new();
    let starts: Vec<usize> = (0..4).map(|b| n / 10 + b * n / 6).collect();
    for (i, e) in generated.into_iter().enumerate() {
        if let Some(b) = starts.iter().position(|&s| (s..s + 12).contains(&i)) {
            if bursts.len() <= b {
                bursts.resize(b + 1, Vec::new());
            }
            bursts[b].push(e);
        } else {
            let arrival = e.event_time_ms + rng.random_range(0..=3_000);
            on_time.push((arrival, e));
        }
    }
    on_time.sort_by_key(|(arrival, e)| (*arrival, e.event_id));
    let mut arrivals: Vec<Event> = on_time.into_iter().map(|(_, e)| e).collect();
    for burst in bursts.into_iter().filter(|b| !b.is_empty()) {
        let behind_ms = rng.random_range(5 * 60_000..=3_600_000);
        let due = burst[0].event_time_ms + behind_ms;
        let mut pos = arrivals
            .iter()
            .position(|e| e.event_time_ms > due)
            .unwrap_or(arrivals.len());
        for e in burst {
            arrivals.insert(pos.min(arrivals.len()), e);
            pos += 2;
        }
    }
    arrivals
}

/// The source partition of an account (the test chooses it, so the lateness is known).
fn partition_of(e: &Event) -> i32 {
    let key = e.account_id.as_deref().unwrap_or_default();
    (twox_hash::XxHash3_64::oneshot(key.as_bytes()) % PARTITIONS as u64) as i32
}

async fn produce_to(producer: &FutureProducer, topic: &str, events: &[Event], partitions: i32) {
    for e in events {
        let payload = e.to_json_bytes();
        let key = e.account_id.clone().unwrap_or_default();
        let p = if partitions == 1 { 0 } else { partition_of(e) };
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .partition(p),
                Timeout::Never,
            )
            .await
            .expect("produce");
    }
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[Event]) {
    produce_to(producer, topic, events, PARTITIONS).await;
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

/// Checks every decision against the brute-force reference over the events in production
/// order (the processing order of every entity, see the module docs), and its lateness
/// against its source partition's watermark.
fn check_against_reference(
    events: &[Event],
    decisions: &HashMap<Uuid, Decision>,
    config: &Config,
    partitions: i32,
) {
    let set = FeatureSet::from_file(&config.worker.features_path).unwrap();
    let features: Vec<Feature> = set.features().cloned().collect();
    let reference = Reference::new(events, &features, &config.worker.state);
    let mut newest: HashMap<i32, i64> = HashMap::new();
    let (mut checked, mut late, mut valued) = (0, 0, 0);
    for (i, e) in events.iter().enumerate() {
        let d = decisions
            .get(&e.event_id)
            .unwrap_or_else(|| panic!("no decision for {}", e.event_id));
        let p = if partitions == 1 { 0 } else { partition_of(e) };
        let watermark = newest.get(&p).map_or(i64::MIN, |m| m - OUT_OF_ORDERNESS_MS);
        let lateness_ms = watermark.saturating_sub(e.event_time_ms).max(0);
        newest
            .entry(p)
            .and_modify(|m| *m = (*m).max(e.event_time_ms))
            .or_insert(e.event_time_ms);
        assert_eq!(
            (d.late, d.lateness_ms),
            (lateness_ms > 0, lateness_ms),
            "event #{i} {}",
            e.event_id
        );
        late += usize::from(lateness_ms > 60_000);
        for (fi, f) in features.iter().enumerate() {
            let want = reference.value(i, fi);
            let got = d
                .features
                .get(f.name())
                .unwrap_or_else(|| panic!("{} missing from decision", f.name()));
            assert!(
                !(*got == FeatureValue::Null && want != FeatureValue::Null),
                "event #{i} {} feature {}: null where the reference has {want:?}",
                e.event_id,
                f.name()
            );
            assert!(
                close(got, &want),
                "event #{i} {} (t={}, {lateness_ms} ms late) feature {}: worker {got:?} reference {want:?}",
                e.event_id,
                e.event_time_ms,
                f.name()
            );
            valued += usize::from(want != FeatureValue::Null && lateness_ms > 60_000);
            checked += 1;
        }
    }
    assert!(checked >= events.len() * 15);
    assert!(
        late >= 20,
        "the stream has late bursts ({late} events over a minute late)"
    );
    assert!(valued > late, "late events have real values ({valued})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_a_rebalance_give_the_reference_values_for_every_event() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("keyed3"));
    let broker = TestKafka::start(PARTITIONS, &topics.all());
    let config = worker_config(&broker, &topics);
    let n = 2000;
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
        workers.push(TestWorker::spawn(config.clone()).await);
    }
    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(400, Duration::from_secs(90)).await;
    assert!(
        reader.decisions.len() >= 400,
        "decisions flow before the rebalance ({} so far)",
        reader.decisions.len()
    );

    // One worker leaves, a new one joins: every stage rebalances and restores.
    workers.remove(0).stop().await;
    workers.push(TestWorker::spawn(config.clone()).await);

    feeder.await.expect("feeder");
    reader.read_until(n, Duration::from_secs(120)).await;
    assert_eq!(reader.decisions.len(), n, "every event gets a decision");
    check_against_reference(&events, &reader.decisions, &config, PARTITIONS);
    // Nothing more than the events (no stray decisions).
    let ids: std::collections::HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert!(reader.decisions.keys().all(|id| ids.contains(id)));

    for w in workers {
        w.stop().await;
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
    let worker = TestWorker::spawn(config.clone()).await;
    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(n, Duration::from_secs(90)).await;
    assert_eq!(reader.decisions.len(), n, "every event gets a decision");
    assert_eq!(reader.duplicates, 0, "no rebalance, no duplicate");
    check_against_reference(&events, &reader.decisions, &config, PARTITIONS);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_still_gives_the_reference_values_on_one_partition() {
    // Local mode is exact when every feature's key lives on the one partition there is.
    let topics = Topics::with_suffix(&riskstream_testkit::unique("local1"));
    let broker = TestKafka::start(1, &topics.all());
    let mut config = worker_config(&broker, &topics);
    config.worker.mode = WorkerMode::Local;
    config.worker.window_outputs = false;
    config.worker.idle_timeout = Duration::from_millis(800);
    // The shipped definitions as they are, decided on arrival (processing order = the
    // partition's order).
    config.worker.features_path = repo("config/features.toml");
    config.worker.reorder_wait = Duration::ZERO;
    let n = 1500;
    let events = events(n, 9);
    let producer: FutureProducer = config.kafka.producer().unwrap();
    produce_to(&producer, &topics.events, &events, 1).await;
    let worker = TestWorker::spawn(config.clone()).await;
    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(n, Duration::from_secs(60)).await;
    assert_eq!(reader.decisions.len(), n, "every event gets a decision");
    check_against_reference(&events, &reader.decisions, &config, 1);
    worker.stop().await;
}

/// A join whose partials never come (here: a base record for two feature groups, one partial,
/// written straight to the results topic) is still decided at `join_timeout`, never approved:
/// the missing group's features are null, the outcome is at least `review`, and the reason
/// says the features are incomplete. Nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_join_is_decided_at_its_timeout_with_null_features_and_review() {
    use riskstream_feature_worker::keyed::ResultRecord;
    let topics = Topics::with_suffix(&riskstream_testkit::unique("keyed-expiry"));
    let broker = TestKafka::with_topics(PARTITIONS, &topics);
    let mut config = worker_config(&broker, &topics);
    config.worker.join_timeout = Duration::from_secs(1);
    let set = FeatureSet::from_file(&config.worker.features_path).expect("features");
    assert!(
        set.groups().len() >= 2,
        "the shipped features have several groups"
    );
    let (first, second) = (&set.groups()[0], &set.groups()[1]);
    let worker = TestWorker::spawn(config.clone()).await;

    let event = events(1, 3).remove(0);
    let base = ResultRecord::Base {
        event: Box::new(event.clone()),
        groups: vec![0, 1],
        late: false,
        lateness_ms: 0,
        read_at_unix_us: riskstream_common::now_ms() * 1000,
        traceparent: None,
        source_key: None,
        source_payload: None,
    };
    let partial = ResultRecord::Partial {
        event_id: event.event_id,
        group: 0,
        values: first
            .features()
            .iter()
            .map(|_| FeatureValue::Number(1.0))
            .collect(),
        beyond_retention: false,
    };
    let producer: FutureProducer = config.kafka.producer().expect("producer");
    let key = event.event_id.to_string();
    for record in [&base, &partial] {
        let payload = serde_json::to_vec(record).unwrap();
        producer
            .send(
                FutureRecord::to(&topics.feature_results)
                    .key(&key)
                    .payload(&payload),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .expect("produce");
    }

    let mut reader = DecisionReader::new(&config.kafka, &topics.decisions);
    reader.read_until(1, Duration::from_secs(60)).await;
    let d = reader
        .decisions
        .get(&event.event_id)
        .expect("the incomplete join was decided");
    assert!(
        d.outcome >= riskstream_common::Outcome::Review,
        "never approve: {:?}",
        d.outcome
    );
    assert!(
        d.reasons.iter().any(|r| r.code == "features_incomplete"),
        "{:?}",
        d.reasons
    );
    for f in second.features() {
        assert_eq!(
            d.features.get(f.name()),
            Some(&FeatureValue::Null),
            "{} of the missing group is null",
            f.name()
        );
    }
    for f in first.features() {
        assert_eq!(d.features.get(f.name()), Some(&FeatureValue::Number(1.0)));
    }
    worker.stop().await;
}
