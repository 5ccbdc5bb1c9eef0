//! Worker crash and restart in keyed mode on the real Kafka broker, with real worker processes
//! (`riskstream worker`): two workers, static members (`kafka.group_instance_id`), share 4
//! partitions while 200k events stream in; worker processes are SIGKILLed several times and
//! restarted at once with the same instance id. Then every event has a decision, every
//! decision's features equal those of a crash-free run of the feature engine over the same
//! events in the same order (duplicates only if identical), every restarted worker restored its
//! state from the changelog (no replay of the repartition topic), and no restart made the other
//! worker give up a partition (no rebalance).
//!
//! Printed (measured, not asserted): per restart, the restore time of each partition from the
//! changelog, the time from the restart to the first decision of the restarted process, and
//! to caught-up lag (every event produced before the restart decided). By default all events
//! are produced at once (the workers run flat out through a backlog, so caught-up lag is the
//! end of the run); `RISKSTREAM_CRASH_RATE` (events/s) paces them instead, which is how the
//! figures of docs/benchmarks.md are taken. `RISKSTREAM_CRASH_EVENTS` changes the run's size.
//!
//! Processing order: every feature's entity includes `account_id`, the events' partition key,
//! so each entity's events are processed in production order, which the reference reproduces.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::{Event, FeatureValue};
use riskstream_feature_worker::features::{FeatureEngine, FeatureSet, StateConfig};
use riskstream_feature_worker::keyed::repartition_of;
use riskstream_testkit::kafka::shared_bootstrap;
use uuid::Uuid;

mod support;

use support::{Proc, create_topics, repo, spawn_with_stderr, topics_env};

const PARTITIONS: i32 = 4;
const WORKERS: usize = 2;
const KILLS: usize = 3;
/// No new decision for this long is a stall.
const STALL_AFTER: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shipped feature definitions with every entity prefixed by `account_id` (the events'
/// partition key), written to `dir`.
fn account_partitioned_features(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("config/features.toml")).expect("features");
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("entity = \"") {
            Some(rest) if !rest.starts_with("account_id\"") => {
                format!("entity = \"account_id+{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let path = dir.join("features.toml");
    std::fs::write(&path, text).expect("write features");
    path
}

/// The source partition of an account (FNV-1a), so an account's events keep their order.
fn partition_of(e: &Event) -> i32 {
    let h = e
        .account_id
        .as_deref()
        .unwrap_or_default()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    (h % PARTITIONS as u64) as i32
}

/// The features of every event as a crash-free run computes them: the engine over the events
/// in production order (as the worker reads them back from `events`), by feature name.
fn reference(events: &[Event], features: &Path) -> Vec<Vec<(String, FeatureValue)>> {
    let engine = FeatureEngine::new(
        FeatureSet::from_file(features).expect("features"),
        StateConfig::default(),
    );
    let decoder = riskstream_feature_worker::worker::events_decoder();
    events
        .iter()
        .map(|e| {
            // The wire form (amounts in cents precision) is what the worker computes from.
            let read = decoder
                .decode_slice(&e.to_json_bytes(), riskstream_common::now_ms())
                .expect("event decodes");
            engine.process_all(&read).into_iter().collect()
        })
        .collect()
}

/// One worker process and where its logs go.
struct Worker {
    proc: Proc,
    admin: String,
    log: PathBuf,
}

fn start_worker(env: &[(String, String)], dir: &Path, instance: &str, run: usize) -> Worker {
    let log = dir.join(format!("{instance}-{run}.log"));
    let mut env = env.to_vec();
    env.push((
        "RISKSTREAM__KAFKA__GROUP_INSTANCE_ID".into(),
        instance.to_string(),
    ));
    let (proc, admin) = spawn_with_stderr(
        &[
            "worker",
            "--brokers",
            shared_bootstrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
        "listening",
        Stdio::from(File::create(&log).expect("log file")),
    );
    Worker { proc, admin, log }
}

/// The restores a worker logged: (restored keys, replayed records, restore ms) per partition.
fn restores(log: &Path) -> Vec<(u64, u64, u64)> {
    let Ok(f) = File::open(log) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["fields"]["message"] == "feature state restored")
        .map(|v| {
            let n = |k: &str| v["fields"][k].as_u64().unwrap_or(0);
            (n("restored_keys"), n("replayed"), n("restore_ms"))
        })
        .collect()
}

/// The state stage's first assignment in a worker's log, as a bit mask of partitions.
fn state_partitions(log: &Path) -> u32 {
    let Ok(f) = File::open(log) else {
        return 0;
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| {
            v["fields"]["message"] == "partitions assigned" && v["fields"]["stage"] == "state"
        })
        .and_then(|v| v["fields"]["partitions"].as_str().map(str::to_string))
        .map_or(0, |list| {
            list.trim_matches(['[', ']'])
                .split(',')
                .filter_map(|p| p.trim().parse::<u32>().ok())
                .fold(0, |m, p| m | (1 << p))
        })
}

/// How many times a worker's stages lost partitions (a rebalance) after `since`.
fn revocations_since(log: &Path, since: chrono::DateTime<chrono::Utc>) -> usize {
    let Ok(f) = File::open(log) else {
        return 0;
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["fields"]["message"] == "partitions revoked")
        .filter_map(|v| chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok())
        .filter(|t| *t >= since)
        .count()
}

/// Decisions the process at `admin` produced (its `/metrics`).
async fn decisions_of(http: &reqwest::Client, admin: &str) -> u64 {
    let Ok(r) = http.get(format!("http://{admin}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("riskstream_worker_decisions_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until `target` events are decided. A stall (no new decision for [`STALL_AFTER`]; not
/// a slow machine: the debug build under a backlog may take minutes) fails the test with every
/// worker's metrics.
async fn await_decisions(
    seen: &Mutex<Seen>,
    target: usize,
    workers: &[Worker],
    http: &reqwest::Client,
    what: &str,
) {
    let decided = || seen.lock().unwrap().decided;
    let (mut last, mut last_at) = (decided(), Instant::now());
    while decided() < target {
        let now = decided();
        if now > last {
            (last, last_at) = (now, Instant::now());
        } else if last_at.elapsed() >= STALL_AFTER {
            for w in workers {
                eprintln!("{}", stage_metrics(http, &w.admin).await);
            }
            panic!("stalled at {now} of {target} decisions {what}: none new for {STALL_AFTER:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker's metrics without the histograms, for a report on a stall.
async fn stage_metrics(http: &reqwest::Client, admin: &str) -> String {
    let text = match http.get(format!("http://{admin}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return format!("{admin}: {e}"),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .collect();
    format!("worker {admin}:\n{}", kept.join("\n"))
}

/// The part of a decision the test compares (the rest is not decoded).
#[derive(serde::Deserialize)]
struct DecisionFeatures {
    event_id: Uuid,
    features: std::collections::BTreeMap<String, FeatureValue>,
}

/// Equal values; numbers to within a few units in the last place: values cross the results
/// and decisions topics as JSON, and serde_json's default float parsing may be off by one ULP.
fn close(a: &FeatureValue, b: &FeatureValue) -> bool {
    match (a, b) {
        (FeatureValue::Number(x), FeatureValue::Number(y)) => {
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// One SIGKILL and restart.
struct Restart {
    instance: String,
    at_decisions: usize,
    restarted_at: Instant,
    /// Events produced when the worker was restarted.
    backlog: usize,
    /// Events produced when it was killed: later ones needing its state partitions can only
    /// be decided once they are restored.
    produced_at_kill: usize,
    first_decision: Duration,
    log: PathBuf,
    restarted_wall: chrono::DateTime<chrono::Utc>,
    /// The log of the worker that kept running.
    survivor_log: PathBuf,
}

/// What the decision reader saw.
#[derive(Default)]
struct Seen {
    /// Per event (production index): its first decision's features.
    first: Vec<Option<Vec<(String, FeatureValue)>>>,
    decided: usize,
    duplicates: usize,
    /// Smallest production index without a decision.
    prefix: usize,
    /// Per event: when its first decision was read.
    decided_at: Vec<Option<Instant>>,
    strays: usize,
}

fn read_decisions(
    kafka: &KafkaConfig,
    topic: &str,
    index: HashMap<Uuid, usize>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    let consumer: StreamConsumer = kafka
        .consumer(&riskstream_testkit::unique("crash-reader"))
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    tokio::spawn(async move {
        loop {
            let m = consumer.recv().await.expect("consume decisions");
            let d: DecisionFeatures =
                serde_json::from_slice(m.payload().expect("payload")).expect("decision json");
            let mut s = seen.lock().unwrap();
            let Some(&i) = index.get(&d.event_id) else {
                s.strays += 1;
                continue;
            };
            let features: Vec<(String, FeatureValue)> = d.features.into_iter().collect();
            match &s.first[i] {
                Some(first) => {
                    assert_eq!(first, &features, "a duplicate decision is identical");
                    s.duplicates += 1;
                }
                None => {
                    s.first[i] = Some(features);
                    s.decided_at[i] = Some(Instant::now());
                    s.decided += 1;
                    while s.prefix < s.first.len() && s.first[s.prefix].is_some() {
                        s.prefix += 1;
                    }
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_restart_from_the_changelog_and_every_decision_matches_a_crash_free_run()
{
    let n = env_or("RISKSTREAM_CRASH_EVENTS", 200_000);
    let rate = env_or("RISKSTREAM_CRASH_RATE", 0);
    // The workers' logs are kept with RISKSTREAM_CRASH_KEEP_LOGS=1.
    let dir = tempfile::Builder::new()
        .prefix("worker-crash-")
        .disable_cleanup(std::env::var_os("RISKSTREAM_CRASH_KEEP_LOGS").is_some())
        .tempdir()
        .expect("temp dir");
    println!("worker logs in {}", dir.path().display());
    let topics = Topics::with_suffix(&riskstream_testkit::unique("crash"));
    let b = shared_bootstrap();
    // Provisioned as in production: the changelog compacted.
    create_topics(b, &topics, PARTITIONS as u32);
    let features = account_partitioned_features(dir.path());
    let mut env = topics_env(&topics);
    for (k, v) in [
        ("WORKER__GROUP_ID", riskstream_testkit::unique("crash")),
        ("WORKER__MODE", "keyed".into()),
        ("WORKER__FEATURES_PATH", features.display().to_string()),
        // Decide on arrival: each entity's processing order is its partition's order.
        ("WORKER__REORDER_WAIT", "0s".into()),
        ("WORKER__IDLE_TIMEOUT", "3s".into()),
        // A restart within the session timeout takes the member's partitions back without a
        // rebalance (the shipped default, with room for a slow start on a loaded machine).
        ("KAFKA__SESSION_TIMEOUT", "10s".into()),
        ("TELEMETRY__LOG_FORMAT", "json".into()),
    ] {
        env.push((format!("RISKSTREAM__{k}"), v));
    }
    let kafka = KafkaConfig {
        brokers: b.to_string(),
        topics: topics.clone(),
        ..KafkaConfig::default()
    };

    let events: Vec<Event> = Generator::new(GeneratorConfig {
        seed: 13,
        start_time_ms: riskstream_common::now_ms() - 2 * 3_600_000,
        events_per_sec: 50.0,
        accounts: 3_000,
        merchants: 500,
        fraud_share: 0.05,
    })
    .take(n)
    .collect();
    let index: HashMap<Uuid, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id, i))
        .collect();
    let events = Arc::new(events);
    let reference = {
        let (events, features) = (Arc::clone(&events), features.clone());
        tokio::task::spawn_blocking(move || reference(&events, &features))
    };

    let seen = Arc::new(Mutex::new(Seen {
        first: vec![None; n],
        decided_at: vec![None; n],
        ..Seen::default()
    }));
    // Per event: the repartition (state) partitions its feature groups live on.
    let needs: Vec<u32> = {
        let set = FeatureSet::from_file(&features).expect("features");
        events
            .iter()
            .map(|e| {
                set.groups()
                    .iter()
                    .enumerate()
                    .filter_map(|(gi, g)| {
                        let key = g.key_of(e)?;
                        Some(1u32 << repartition_of(gi as u32, &key, PARTITIONS))
                    })
                    .fold(0, |a, b| a | b)
            })
            .collect()
    };
    let reader = read_decisions(&kafka, &topics.decisions, index, Arc::clone(&seen));
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|w| start_worker(&env, dir.path(), &format!("w{w}"), 0))
        .collect();

    // Events stream in at `rate` per second.
    let produced = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let feeder = {
        let (producer, topic): (FutureProducer, String) =
            (kafka.producer().unwrap(), topics.events.clone());
        let (events, produced) = (Arc::clone(&events), Arc::clone(&produced));
        tokio::spawn(async move {
            let tick = Duration::from_millis(50);
            // Unpaced: chunks as fast as the broker acknowledges them.
            let per_tick = if rate == 0 { 5_000 } else { (rate / 20).max(1) };
            let mut next = Instant::now();
            for chunk in events.chunks(per_tick) {
                let mut sends = Vec::with_capacity(chunk.len());
                for e in chunk {
                    let payload = e.to_json_bytes();
                    let key = e.account_id.clone().unwrap_or_default();
                    let record = FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&payload)
                        .partition(partition_of(e));
                    // Enqueued in order (copied by librdkafka).
                    sends.push(
                        producer
                            .send_result(record)
                            .map_err(|(e, _)| e)
                            .expect("enqueue"),
                    );
                }
                // Acknowledged before the count moves.
                for s in futures::future::join_all(sends).await {
                    s.expect("delivery report").expect("produce");
                }
                produced.fetch_add(chunk.len(), Ordering::SeqCst);
                if rate > 0 {
                    next += tick;
                    tokio::time::sleep_until(next.into()).await;
                }
            }
        })
    };

    let http = reqwest::Client::new();
    // When each prefix of the events was decided (sampled), for the caught-up figures.
    let progress: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let sampler = {
        let (seen, progress) = (Arc::clone(&seen), Arc::clone(&progress));
        tokio::spawn(async move {
            loop {
                let prefix = seen.lock().unwrap().prefix;
                progress.lock().unwrap().push((Instant::now(), prefix));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut figures = Vec::new();
    for k in 0..KILLS {
        let due = n * (k + 1) / (KILLS + 1);
        await_decisions(&seen, due, &workers, &http, &format!("before kill {k}")).await;
        let w = k % WORKERS;
        let instance = format!("w{w}");
        let produced_at_kill = produced.load(Ordering::SeqCst);
        // SIGKILL: no drain, no commit, no leave.
        let _ = workers[w].proc.0.kill();
        let _ = workers[w].proc.0.wait();
        let restarted_at = Instant::now();
        let restarted_wall = chrono::Utc::now();
        let backlog = produced.load(Ordering::SeqCst);
        workers[w] = start_worker(&env, dir.path(), &instance, k + 1);
        let admin = workers[w].admin.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        while decisions_of(&http, &admin).await == 0 {
            assert!(
                Instant::now() < deadline,
                "the worker restarted after kill {k} decides nothing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first_decision = restarted_at.elapsed();
        figures.push(Restart {
            instance,
            at_decisions: due,
            restarted_at,
            backlog,
            produced_at_kill,
            first_decision,
            log: workers[w].log.clone(),
            restarted_wall,
            survivor_log: workers[(w + 1) % WORKERS].log.clone(),
        });
    }

    feeder.await.expect("feeder");
    await_decisions(&seen, n, &workers, &http, "after the last restart").await;
    println!(
        "{n} events at {rate}/s with {KILLS} kills: all decided after {:?}",
        started.elapsed()
    );
    // Late duplicates have a moment to arrive and be checked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    sampler.abort();
    for (k, r) in figures.iter().enumerate() {
        let caught_up = progress
            .lock()
            .unwrap()
            .iter()
            .find(|(t, prefix)| *t >= r.restarted_at && *prefix >= r.backlog)
            .map(|(t, _)| *t - r.restarted_at);
        // The first decision of an event produced after the kill that needs a state partition
        // of the restarted worker (none while it is down; unpaced runs produce nothing after).
        let mask = state_partitions(&r.log);
        let first_new = {
            let s = seen.lock().unwrap();
            s.decided_at[r.produced_at_kill..]
                .iter()
                .zip(&needs[r.produced_at_kill..])
                .filter(|(_, need)| *need & mask != 0)
                .filter_map(|(at, _)| *at)
                .min()
                .map(|t| t.saturating_duration_since(r.restarted_at))
        };
        println!(
            "kill {k} of {} at {} decisions, restarted: first decision of the process after {:?}, first decision of a later event needing its state partitions ({mask:#06b}) after {first_new:?}, every event produced before the restart ({}) decided after {caught_up:?}; restores (keys, replayed, ms) {:?}",
            r.instance,
            r.at_decisions,
            r.first_decision,
            r.backlog,
            restores(&r.log)
        );
    }
    let reference = reference.await.expect("reference");
    let s = seen.lock().unwrap();
    assert_eq!(s.strays, 0, "no decision for an event never produced");
    let mut mismatches = 0;
    for (i, want) in reference.iter().enumerate() {
        let got = s.first[i].as_ref().expect("every event has a decision");
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| g.0 == w.0 && close(&g.1, &w.1));
        if !same && mismatches < 5 {
            let differ: Vec<_> = got
                .iter()
                .zip(want)
                .filter(|(g, w)| !close(&g.1, &w.1))
                .map(|(g, w)| format!("{}: worker {:?} reference {:?}", g.0, g.1, w.1))
                .collect();
            eprintln!("event #{i} {}: {differ:?}", events[i].event_id);
        }
        mismatches += usize::from(!same);
    }
    assert_eq!(
        mismatches, 0,
        "decisions whose features differ from the crash-free run"
    );
    println!("{} duplicate decisions, all identical", s.duplicates);
    // Every restart took its partitions back without a rebalance (static membership): the
    // other worker never lost a partition after it.
    for r in &figures {
        assert_eq!(
            revocations_since(&r.survivor_log, r.restarted_wall),
            0,
            "the restart of {} made the other worker give up partitions",
            r.instance
        );
    }
    // Every restart restored state from the changelog, and never replayed the repartition
    // topic.
    for Restart { instance, log, .. } in &figures {
        let r = restores(log);
        assert!(
            !r.is_empty(),
            "{instance} restored partitions after its restart"
        );
        assert!(
            r.iter().any(|(keys, _, _)| *keys > 0),
            "{instance} restored keys from the changelog: {r:?}"
        );
        assert!(
            r.iter().all(|(_, replayed, _)| *replayed == 0),
            "{instance} replayed the repartition topic: {r:?}"
        );
    }
    drop(workers);
}

/// A keyed worker refuses to start (exit code 2, naming the topic and the fix) on a changelog
/// topic that is not compacted: it would lose the state of keys not updated within its
/// retention.
#[test]
fn a_keyed_worker_refuses_a_changelog_that_is_not_compacted() {
    let mut topics = Topics::with_suffix(&riskstream_testkit::unique("badlog"));
    // Not the changelog's name: the test kit creates it as a data topic (cleanup.policy=delete).
    topics.changelog = riskstream_testkit::unique("deleting-changelog");
    let broker = riskstream_testkit::kafka::TestKafka::with_topics(2, &topics);
    let mut env = topics_env(&topics);
    env.push((
        "RISKSTREAM__WORKER__GROUP_ID".into(),
        riskstream_testkit::unique("badlog"),
    ));
    let out = support::command(
        &[
            "worker",
            "--brokers",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
    )
    .output()
    .expect("run riskstream worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&topics.changelog) && stderr.contains("cleanup.policy=delete"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cleanup.policy=compact"),
        "says the fix: {stderr}"
    );
}
