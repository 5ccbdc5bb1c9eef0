//! Apache Kafka for tests: the run's shared broker (started by `scripts/test` through
//! `scripts/kafka`), or a private broker a test may stop, pause and resume; topics created with
//! random names through the admin API, so tests run in parallel; and helpers to read back what a
//! test produced.
//!
//! The shared broker is found, in order: `RISKSTREAM_TEST_KAFKA_BOOTSTRAP`; the broker a
//! developer started with `scripts/kafka start` (its `target/kafka/bootstrap`); else one broker
//! started for this test binary (stopped by a watchdog when the test process is gone).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::topics::{Provision, TopicRole, TopicSpec, create_topics};

/// Environment variable naming the shared broker (`host:port`).
pub const BOOTSTRAP_ENV: &str = "RISKSTREAM_TEST_KAFKA_BOOTSTRAP";
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

/// A Kafka broker process started through `scripts/kafka` in a state dir of its own.
pub struct KafkaProcess {
    bootstrap: String,
    state: tempfile::TempDir,
    watchdog: Mutex<Option<Child>>,
}

impl KafkaProcess {
    /// Starts a new broker on free ports (a few seconds) and waits until it answers metadata.
    pub fn start() -> KafkaProcess {
        let state = tempfile::Builder::new()
            .prefix("riskstream-kafka-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let bootstrap = run_script(&["start"], state.path());
        let p = KafkaProcess {
            bootstrap,
            state,
            watchdog: Mutex::new(None),
        };
        p.arm_watchdog();
        p
    }

    /// The watchdog stops the broker once the test process is gone (a panic, a kill).
    fn arm_watchdog(&self) {
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             RISKSTREAM_KAFKA_STATE={state} {kafka} stop >/dev/null 2>&1",
            parent = std::process::id(),
            state = self.state.path().display(),
            kafka = repo_root().join("scripts/kafka").display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state.path().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Stops the broker (SIGTERM, then SIGKILL) and removes its data.
    pub fn stop(&self) {
        run_script(&["stop"], self.state.path());
    }

    /// Ends the broker process as `how` says and waits until it is gone, keeping its data,
    /// ports and configuration for [`Self::restart`] (`scripts/kafka halt`).
    pub fn halt(&self, how: Halt) {
        let mut args = vec!["halt"];
        if how == Halt::Kill {
            args.push("--kill");
        }
        run_script(&args, self.state.path());
    }

    /// Starts a halted broker again: the same node on the same port with its data (topics,
    /// records, committed offsets, producer state); returns once it answers metadata
    /// (`scripts/kafka restart`). After [`Halt::Kill`] that takes a few seconds more: the
    /// controller keeps the dead incarnation registered until `broker.session.timeout.ms`
    /// (9 s) passes.
    pub fn restart(&self) {
        let bootstrap = run_script(&["restart"], self.state.path());
        assert_eq!(
            bootstrap, self.bootstrap,
            "a restarted broker keeps its address"
        );
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Drop for KafkaProcess {
    fn drop(&mut self) {
        self.resume();
        self.stop();
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// How [`KafkaProcess::halt`] ends the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// SIGTERM: a clean shutdown (logs flushed, leadership and the registration given up).
    Term,
    /// SIGKILL: a crash (the restart recovers its logs and waits out the old registration).
    Kill,
}

/// Runs `scripts/kafka ARGS` for the instance in `state`; returns the bootstrap it printed.
fn run_script(args: &[&str], state: &Path) -> String {
    let cmd = args.join(" ");
    let mut c = Command::new(repo_root().join("scripts/kafka"));
    c.args(args)
        .env("RISKSTREAM_KAFKA_STATE", state)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/kafka {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "scripts/kafka {cmd} failed ({}); Apache Kafka is needed by this test (Java 17+ and Maven)",
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("bootstrap="))
        .unwrap_or_default()
        .to_string()
}

/// The bootstrap of the run's shared broker.
pub fn shared_bootstrap() -> &'static str {
    static SHARED: OnceLock<(String, Option<KafkaProcess>)> = OnceLock::new();
    &SHARED
        .get_or_init(|| {
            if let Ok(b) = std::env::var(BOOTSTRAP_ENV)
                && !b.trim().is_empty()
            {
                return (b.trim().to_string(), None);
            }
            let dev = repo_root().join("target/kafka");
            if let Ok(b) = std::fs::read_to_string(dev.join("bootstrap"))
                && let Some(pid) = std::fs::read_to_string(dev.join("pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                return (b.trim().to_string(), None);
            }
            let p = KafkaProcess::start();
            (p.bootstrap().to_string(), Some(p))
        })
        .0
}

/// A test's view of Kafka: the shared broker (or a private one) with the test's own topics.
pub struct TestKafka {
    pub bootstrap: String,
    private: Option<KafkaProcess>,
}

impl TestKafka {
    /// The shared broker, with `topics` created (`partitions` each).
    pub fn start(partitions: i32, topics: &[&str]) -> TestKafka {
        let t = TestKafka {
            bootstrap: shared_bootstrap().to_string(),
            private: None,
        };
        t.create_topics(partitions, topics);
        t
    }

    /// The shared broker with every topic of `topics` created.
    pub fn with_topics(partitions: i32, topics: &Topics) -> TestKafka {
        Self::start(partitions, &topics.all())
    }

    /// A broker of this test's own (it may stop or pause it), with every topic of `topics`.
    pub fn private_with_topics(partitions: i32, topics: &Topics) -> TestKafka {
        let p = KafkaProcess::start();
        let t = TestKafka {
            bootstrap: p.bootstrap().to_string(),
            private: Some(p),
        };
        t.create_topics(partitions, &topics.all());
        t
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topics(partitions, &[name]);
    }

    /// Creates `names` through the admin API (as `riskstream topics create` does) and waits
    /// until every partition has a leader.
    pub fn create_topics(&self, partitions: i32, names: &[&str]) {
        let kafka = KafkaConfig {
            brokers: self.bootstrap.clone(),
            ..KafkaConfig::default()
        };
        let provision = Provision {
            partitions,
            replication_factor: 1,
            ..Provision::default()
        };
        // The keyed changelog as provisioned (compacted); every other topic as a data topic.
        let changelog = riskstream_common::kafka::topic::CHANGELOG;
        let specs: Vec<TopicSpec> = names
            .iter()
            .map(|n| {
                let role = if n.starts_with(changelog) {
                    TopicRole::Changelog
                } else {
                    TopicRole::Data
                };
                TopicSpec::for_role(n, role, &provision)
            })
            .collect();
        let k = kafka.clone();
        std::thread::spawn(move || {
            futures::executor::block_on(create_topics(&k, &specs, ADMIN_TIMEOUT))
        })
        .join()
        .expect("topic creation thread")
        .unwrap_or_else(|e| panic!("creating test topics on {}: {e}", self.bootstrap));
        wait_for_leaders(&kafka, names, partitions);
    }

    /// Kafka settings for tests: the shipped defaults (delivery timeout included: a loaded CI
    /// machine can take seconds to deliver to a topic created a moment ago), with the fastest
    /// session timeout Kafka accepts (`group.min.session.timeout.ms`, 6 s).
    pub fn kafka_config(&self, topics: &Topics) -> KafkaConfig {
        let mut k = KafkaConfig {
            brokers: self.bootstrap.clone(),
            topics: topics.clone(),
            session_timeout: Duration::from_millis(6000),
            heartbeat_interval: Duration::from_millis(500),
            ..KafkaConfig::default()
        };
        k.client_id = "riskstream-test".into();
        k
    }

    /// The private broker (panics for the shared one: a test never stops the shared broker).
    pub fn process(&self) -> &KafkaProcess {
        self.private
            .as_ref()
            .expect("only a private broker (TestKafka::private_with_topics) can be controlled")
    }

    /// Stops the private broker (clients see it as down).
    pub fn stop(&mut self) {
        self.process().stop();
    }
}

fn wait_for_leaders(kafka: &KafkaConfig, names: &[&str], partitions: i32) {
    let client: BaseConsumer = kafka.client_config().create().expect("metadata client");
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    for name in names {
        loop {
            let ready = client
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().first().map(|t| {
                        t.error().is_none()
                            && t.partitions().len() as i32 == partitions
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name} has no leaders after {ADMIN_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or(b"null"))
            .expect("record value is json")
    }
}

/// Reads records from `topic` (from the beginning, a fresh group) until `n` arrived or `timeout`
/// passed; returns what arrived.
pub async fn read_records(
    kafka: &KafkaConfig,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Record> {
    let group = crate::unique("reader");
    let consumer: StreamConsumer = kafka.consumer(&group).expect("test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(Record {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp_ms: m.timestamp().to_millis(),
            }),
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The high watermark (the next offset to be written) of every partition of `topic`.
pub fn end_offsets(kafka: &KafkaConfig, topic: &str) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = kafka.client_config().create().expect("metadata client");
    let md = client
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) = client
                .fetch_watermarks(topic, p, ADMIN_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            (p, high)
        })
        .collect()
}

/// The offsets `group` committed on the partitions of `topic` (as the group coordinator has
/// them; partitions without a commit are left out), read without joining the group.
pub fn committed_offsets(kafka: &KafkaConfig, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = kafka
        .consumer_config(group)
        .create()
        .expect("offsets client");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in end_offsets(kafka, topic).keys() {
        tpl.add_partition(topic, *p);
    }
    consumer
        .committed_offsets(tpl, ADMIN_TIMEOUT)
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"))
        .elements()
        .iter()
        .filter_map(|e| Some((e.partition(), e.offset().to_raw()?)))
        .filter(|(_, o)| *o >= 0)
        .collect()
}

/// Every record of `topic` written so far (up to the high watermarks when called), read by a
/// fresh group; panics if they do not all arrive within `timeout`.
pub async fn read_all(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Vec<Record> {
    let (k, t) = (kafka.clone(), topic.to_string());
    let n: i64 = tokio::task::spawn_blocking(move || end_offsets(&k, &t).values().sum())
        .await
        .expect("watermarks thread");
    let n = usize::try_from(n).unwrap_or(0);
    let records = read_records(kafka, topic, n, timeout).await;
    assert!(
        records.len() >= n,
        "read {} of the {n} records of {topic} within {timeout:?}",
        records.len()
    );
    records
}
