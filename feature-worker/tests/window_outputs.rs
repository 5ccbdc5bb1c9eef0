//! Window outputs against a real Kafka broker, in keyed mode: a stream of card events with
//! bounded disorder and late bursts (within a window output's allowed lateness, beyond the
//! hopping one's only, and beyond both) on one source partition, through a worker that is
//! stopped mid-stream and replaced by a new one on the same group. Every emitted window, every
//! update and every too-late event equals a brute-force reference that applies the documented
//! semantics to the events in source order; every window the reference emits is there after
//! the restart (none lost), and every record seen twice is identical; the stopped worker left a
//! checkpoint in its commits, from which the new one restores (or, with the checkpoints taken
//! out of the commits, by replaying the repartition topic). The same holds when two workers share
//! the group and one of them stops (a rebalance).
//!
//! One source partition makes the input watermark exact per event: the windows stage handles an
//! event after its envelope's watermark (`max event time so far - out_of_orderness`), so the
//! reference can follow it event by event (docs/features.md, "Window outputs").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::Event;
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_feature_worker::features::FeatureSet;
use riskstream_feature_worker::features::window_output::WindowOutput;
use riskstream_feature_worker::keyed::WINDOWS_GROUP_SUFFIX;
use riskstream_feature_worker::keyed::windows::checkpoint::Checkpoint;
use riskstream_feature_worker::keyed::windows::records::{TooLateRecord, WindowRecord};
use riskstream_feature_worker::{Config, WorkerMode};
use riskstream_testkit::kafka::TestKafka;
use uuid::Uuid;

mod support;

use support::worker::{TestWorker, repo};

const OUT_OF_ORDERNESS_MS: i64 = 1_000;
/// A minute boundary: windows start here.
const T0_MS: i64 = 1_700_000_040_000;

/// The shipped feature file (its `card_activity_1m` output: tumbling 1m, 5m allowed
/// lateness) plus a hopping output over payments with a short allowed lateness.
fn features_file() -> PathBuf {
    let mut text = std::fs::read_to_string(repo("config/features.toml")).expect("features.toml");
    text.push_str(
        r#"
[[window_output]]
name = "card_payments_2m"
entity = "card_id"
window = { kind = "hopping", size = "2m", slide = "1m" }
allowed_lateness = "1m"
filter = { field = "type", equals = "payment" }
"#,
    );
    let path = std::env::temp_dir().join(format!(
        "{}.toml",
        riskstream_testkit::unique("features-windows")
    ));
    std::fs::write(&path, text).expect("write features");
    path
}

fn event(rng: &mut ChaCha8Rng, n: u128, t_ms: i64, card: Option<String>) -> Event {
    let mut v = serde_json::json!({
        "event_id": Uuid::from_u128(0x5eed_0000 + n).to_string(),
        "event_time": t_ms,
        "account_id": format!("acct-{}", rng.random_range(0..20)),
        "type": if rng.random_bool(0.8) { "payment" } else { "refund" },
        "currency": "EUR",
    });
    if let Some(c) = card {
        v["card_id"] = c.into();
    }
    if rng.random_bool(0.9) {
        v["amount"] = (f64::from(rng.random_range(1..50_000u32)) / 100.0).into();
    }
    serde_json::from_value(v).expect("event")
}

/// `n` on-time events 1.5 s apart (shuffled by up to 3 s), 6 cards and a few events without
/// a card; after every 30th, a burst of one event of each card behind the stream by 90 s,
/// 4 min or 8 min in turn. The last event is far ahead, so every window ends up final.
fn stream(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut id = 0u128;
    let lags = [90_000, 240_000, 480_000];
    for i in 0..n {
        let t = T0_MS + i as i64 * 1_500 - rng.random_range(0..=3_000);
        let card = rng
            .random_bool(0.95)
            .then(|| format!("card-{}", rng.random_range(0..6)));
        id += 1;
        out.push(event(&mut rng, id, t, card));
        if i % 30 == 29 {
            let lag = lags[(i / 30) % lags.len()];
            for k in 0..6 {
                id += 1;
                let card = format!("card-{k}");
                out.push(event(&mut rng, id, t - lag + k * 2_000, Some(card)));
            }
        }
    }
    id += 1;
    let end = out.iter().map(|e| e.event_time_ms).max().unwrap_or(T0_MS) + 3_600_000;
    out.push(event(&mut rng, id, end, Some("card-flush".into())));
    out
}

/// An emission's identity: (output, key, start, count).
type Identity = (String, String, i64, u64);

/// What the reference expects: every emission (by identity: end, sum, update) and every
/// too-late (output, event id).
#[derive(Debug, Default)]
struct Expected {
    emissions: BTreeMap<Identity, (i64, f64, bool)>,
    too_late: BTreeSet<(String, Uuid)>,
}

/// The documented semantics, brute force, for one source partition: event `j` is handled at
/// `W_j = max(t_0..=t_j) - out_of_orderness`; first every window (of an event already counted)
/// with end <= W_j not yet emitted is emitted; then `j` is counted in each of its windows with
/// `end + allowed_lateness > W_j`, which are emitted again at once if `end <= W_j`; with none,
/// it is too late.
fn reference(events: &[Event], outputs: &[WindowOutput]) -> Expected {
    let mut x = Expected::default();
    for o in outputs {
        let spec = o.spec();
        // (key, start) -> (count, sum, emitted)
        let mut windows: BTreeMap<(String, i64), (u64, f64, bool)> = BTreeMap::new();
        let mut max_t = i64::MIN;
        for e in events {
            max_t = max_t.max(e.event_time_ms);
            let w = max_t - OUT_OF_ORDERNESS_MS;
            for ((key, start), (count, sum, emitted)) in windows.iter_mut() {
                if !*emitted && *start + spec.size_ms <= w {
                    *emitted = true;
                    let id = (o.name().to_string(), key.clone(), *start, *count);
                    x.emissions.insert(id, (*start + spec.size_ms, *sum, false));
                }
            }
            let Some(card) = e.card_id.clone() else {
                continue;
            };
            if !o.counts(e) {
                continue;
            }
            let t = e.event_time_ms;
            let mut counted = false;
            let mut start = t.div_euclid(spec.slide_ms) * spec.slide_ms;
            while start + spec.size_ms > t {
                let end = start + spec.size_ms;
                if end + spec.allowed_lateness_ms > w {
                    counted = true;
                    let entry = windows
                        .entry((card.clone(), start))
                        .or_insert((0, 0.0, false));
                    entry.0 += 1;
                    entry.1 += e.amount.unwrap_or(0.0);
                    if end <= w {
                        let update = entry.2;
                        entry.2 = true;
                        let id = (o.name().to_string(), card.clone(), start, entry.0);
                        x.emissions.insert(id, (end, entry.1, update));
                    }
                }
                start -= spec.slide_ms;
            }
            if !counted {
                x.too_late.insert((o.name().to_string(), e.event_id));
            }
        }
    }
    x
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[Event]) {
    for e in events {
        let payload = e.to_json_bytes();
        let key = e.account_id.clone().unwrap_or_default();
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .partition(0),
                Timeout::Never,
            )
            .await
            .expect("produce");
    }
}

/// Everything read from the two output topics, duplicates checked as they come.
struct Outputs {
    windows: StreamConsumer,
    late: StreamConsumer,
    emissions: HashMap<Identity, WindowRecord>,
    too_late: HashMap<(String, Uuid), TooLateRecord>,
    duplicates: usize,
}

impl Outputs {
    fn new(kafka: &KafkaConfig, topics: &Topics) -> Self {
        let consumer = |topic: &str| {
            let c: StreamConsumer = kafka
                .consumer(&riskstream_testkit::unique("reader"))
                .expect("consumer");
            c.subscribe(&[topic]).expect("subscribe");
            c
        };
        Self {
            windows: consumer(&topics.window_outputs),
            late: consumer(&topics.window_outputs_late),
            emissions: HashMap::new(),
            too_late: HashMap::new(),
            duplicates: 0,
        }
    }

    /// Reads until `done` holds and then for `grace` more (late duplicates or extras), or
    /// until `timeout`.
    async fn read_until(
        &mut self,
        done: impl Fn(&Self) -> bool,
        grace: Duration,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        let mut until = deadline;
        loop {
            if until == deadline && done(self) {
                until = (Instant::now() + grace).min(deadline);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                m = self.windows.recv() => {
                    let m = m.expect("consume window outputs");
                    let r: WindowRecord =
                        serde_json::from_slice(m.payload().expect("payload")).expect("window json");
                    assert_eq!(m.key(), Some(r.key.as_bytes()), "keyed by entity key");
                    let id = (r.output.clone(), r.key.clone(), r.start_ms, r.count);
                    if let Some(first) = self.emissions.get(&id) {
                        self.duplicates += 1;
                        assert_eq!(first, &r, "a re-emission is identical");
                    } else {
                        self.emissions.insert(id, r);
                    }
                }
                m = self.late.recv() => {
                    let m = m.expect("consume late outputs");
                    let r: TooLateRecord =
                        serde_json::from_slice(m.payload().expect("payload")).expect("late json");
                    assert_eq!(m.key(), Some(r.key.as_bytes()), "keyed by entity key");
                    let id = (r.output.clone(), r.event_id);
                    if let Some(first) = self.too_late.get(&id) {
                        self.duplicates += 1;
                        assert_eq!(first, &r, "a re-sent too-late record is identical");
                    } else {
                        self.too_late.insert(id, r);
                    }
                }
                () = tokio::time::sleep(left) => break,
            }
        }
    }

    fn covers(&self, x: &Expected) -> bool {
        x.emissions.keys().all(|id| self.emissions.contains_key(id))
            && x.too_late.iter().all(|id| self.too_late.contains_key(id))
    }
}

/// A client of `group` that reads and writes its committed offsets (it never joins).
fn offsets_client(kafka: &KafkaConfig, group: &str) -> BaseConsumer {
    let mut cfg = kafka.client_config();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false");
    cfg.create().expect("offsets client")
}

/// The committed offsets and checkpoints of the windows stage's group, per repartition
/// partition that has an offset.
fn checkpoints(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
) -> Vec<(i32, i64, Option<Checkpoint>)> {
    let reader = offsets_client(kafka, group);
    let md = reader
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o, Checkpoint::decode(e.metadata()))),
            _ => None,
        })
        .collect()
}

/// Commits the windows group's offsets again without their checkpoints (as an older worker, or
/// one whose checkpoint did not fit the commit, would have left them).
fn strip_checkpoints(kafka: &KafkaConfig, group: &str, topic: &str) {
    let mut tpl = TopicPartitionList::new();
    for (p, offset, _) in checkpoints(kafka, group, topic) {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .expect("offset");
    }
    offsets_client(kafka, group)
        .commit(&tpl, CommitMode::Sync)
        .expect("commit without checkpoints");
}

fn worker_config(broker: &TestKafka, topics: &Topics, group: &str, features: &Path) -> Config {
    let mut config = support::worker::config(broker, topics);
    let w = &mut config.worker;
    w.group_id = group.to_string();
    w.features_path = features.to_path_buf();
    w.out_of_orderness = Duration::from_millis(OUT_OF_ORDERNESS_MS as u64);
    w.reorder_wait = Duration::ZERO;
    w.shutdown_timeout = Duration::from_secs(10);
    w.mode = WorkerMode::Keyed;
    config
}

/// How the second worker comes to own the first one's windows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// It starts after the first stopped and restores from the checkpoints it committed.
    Checkpoint,
    /// As `Checkpoint`, but the checkpoints are removed from the commits (offsets kept): it
    /// restores by replaying the repartition partitions from their beginning.
    Replay,
    /// Both share the group from the start; when the first stops, the second takes its
    /// partitions over in a rebalance (from the checkpoints committed at the revocation).
    Rebalance,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_emitted_updated_by_late_events_and_restored_from_the_checkpoint() {
    restart_scenario(Restore::Checkpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_checkpoint_the_windows_are_restored_by_replay() {
    restart_scenario(Restore::Replay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_windows_and_one_takes_over_when_the_other_stops() {
    restart_scenario(Restore::Rebalance).await;
}

async fn restart_scenario(restore: Restore) {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("windows"));
    let others: Vec<&str> = topics
        .all()
        .into_iter()
        .filter(|t| *t != topics.events)
        .collect();
    let broker = TestKafka::start(3, &others);
    broker.create_topic(&topics.events, 1);
    let features = features_file();
    let set = FeatureSet::from_file(&features).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.window_outputs().len(), 2);

    let events = stream(480, 10);
    let half = events.len() / 2;
    let first = reference(&events[..half], set.window_outputs());
    let all = reference(&events, set.window_outputs());
    // The stream exercises every case, before and after the restart.
    let updates = |x: &Expected| x.emissions.values().filter(|v| v.2).count();
    assert!(
        updates(&first) > 0 && updates(&all) > updates(&first),
        "updates in both halves"
    );
    assert!(
        !first.too_late.is_empty() && all.too_late.len() > first.too_late.len(),
        "too-late events in both halves"
    );
    assert!(
        all.too_late.iter().any(|(o, _)| o == "card_payments_2m")
            && all.too_late.iter().any(|(o, _)| o == "card_activity_1m"),
        "too late for each output"
    );
    let hopping_updates = all
        .emissions
        .iter()
        .filter(|(id, v)| id.0 == "card_payments_2m" && v.2)
        .count();
    assert!(hopping_updates > 0, "updates of the hopping output too");

    let group = riskstream_testkit::unique("windows");
    let kafka = broker.kafka_config(&topics);
    let producer: FutureProducer = kafka.producer().expect("producer");
    let mut seen = Outputs::new(&kafka, &topics);

    // The first worker takes the first half (with the second, when they share the group) and
    // is stopped with windows still open.
    let w1 = TestWorker::spawn(worker_config(&broker, &topics, &group, &features)).await;
    let sharing = if restore == Restore::Rebalance {
        Some(TestWorker::spawn(worker_config(&broker, &topics, &group, &features)).await)
    } else {
        None
    };
    produce(&producer, &topics.events, &events[..half]).await;
    seen.read_until(
        |s| s.covers(&first),
        Duration::ZERO,
        Duration::from_secs(90),
    )
    .await;
    assert!(
        seen.covers(&first),
        "first half: {} of {} emissions, {} of {} too-late",
        seen.emissions.len(),
        first.emissions.len(),
        seen.too_late.len(),
        first.too_late.len()
    );
    w1.stop().await;
    let windows_group = format!("{group}{WINDOWS_GROUP_SUFFIX}");
    let committed = checkpoints(&kafka, &windows_group, &topics.repartition);
    assert!(
        !committed.is_empty() && committed.iter().all(|(_, _, c)| c.is_some()),
        "every committed partition carries a checkpoint: {committed:?}"
    );
    assert!(
        committed
            .iter()
            .any(|(_, _, c)| c.as_ref().is_some_and(|c| c.x > 0)),
        "the first worker checkpointed past the start: {committed:?}"
    );
    if restore == Restore::Replay {
        strip_checkpoints(&kafka, &windows_group, &topics.repartition);
        let stripped = checkpoints(&kafka, &windows_group, &topics.repartition);
        assert_eq!(stripped.len(), committed.len(), "offsets kept");
        assert!(stripped.iter().all(|(_, _, c)| c.is_none()), "{stripped:?}");
    }

    // A new worker on the same group (or the one still running) restores the windows and
    // takes the rest.
    let w2 = match sharing {
        Some(w) => w,
        None => TestWorker::spawn(worker_config(&broker, &topics, &group, &features)).await,
    };
    produce(&producer, &topics.events, &events[half..]).await;
    seen.read_until(
        |s| s.covers(&all),
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await;
    let metrics = w2.metrics().await;
    w2.stop().await;

    // Nothing lost, nothing extra, every value as the reference says.
    let missing: Vec<&Identity> = all
        .emissions
        .keys()
        .filter(|id| !seen.emissions.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "windows lost: {missing:?}");
    let extra: Vec<&Identity> = seen
        .emissions
        .keys()
        .filter(|id| !all.emissions.contains_key(*id))
        .collect();
    assert!(
        extra.is_empty(),
        "emissions the reference does not have: {extra:?}"
    );
    for (id, (end, sum, update)) in &all.emissions {
        let r = &seen.emissions[id];
        assert_eq!((r.end_ms, r.update), (*end, *update), "{id:?}");
        assert!(
            (r.sum - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{id:?}: sum {} != {sum}",
            r.sum
        );
    }
    let late: BTreeSet<(String, Uuid)> = seen.too_late.keys().cloned().collect();
    assert_eq!(
        late, all.too_late,
        "the too-late events are the reference's"
    );
    for r in seen.too_late.values() {
        assert_eq!(Some(r.key.as_str()), r.event.card_id.as_deref());
        assert_eq!(r.event.event_id, r.event_id);
    }
    for kind in ["emitted", "updated", "too_late"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "riskstream_worker_window_outputs_total{{output=\"card_activity_1m\",kind=\"{kind}\"}}"
            ))),
            "{kind} counted:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("window_outputs"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test]
async fn local_mode_refuses_window_outputs_unless_they_are_switched_off() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("windows-local"));
    let broker = TestKafka::with_topics(1, &topics);
    let mut config = support::worker::config(&broker, &topics);
    config.worker.mode = WorkerMode::Local;
    let shutdown = riskstream_common::shutdown::CancellationToken::new();
    let err = match riskstream_feature_worker::App::build(config.clone(), shutdown.clone()).await {
        Ok(_) => panic!("local mode with window outputs must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("card_activity_1m") && err.contains("worker.window_outputs = false"),
        "{err}"
    );
    config.worker.window_outputs = false;
    assert!(
        riskstream_feature_worker::App::build(config, shutdown)
            .await
            .is_ok()
    );
}
