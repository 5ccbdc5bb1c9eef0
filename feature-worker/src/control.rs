//! Control updates of a running worker: rule sets from the watched rules file and the `rules`
//! control topic, list entries from the `lists` topic.
//!
//! Owns the control plane's I/O around the scoring core: the file poller (mtime and length,
//! then an xxh3 hash of the content, every `worker.rules_poll_interval`), the control-topic
//! consumer (its own unique group id per worker, every partition of both topics assigned from
//! the beginning, like Flink's broadcast state: every worker replays the same updates in the
//! same order and so converges on the same latest rule set), the catch-up signal the
//! processing loop waits for at start, and the `rule_updates` / `list_updates` metrics.
//!
//! A rejected rule set is logged with every problem, counted, remembered for `GET /v1/rules`,
//! and the running set is kept. A control record that is rejected when read live (not while
//! replaying the backlog at start, which earlier workers already judged) is also copied to the
//! dead-letter topic with its reason: one copy per running worker, since every worker reads
//! every control record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::metrics::{Counter, Family, Registry};
use riskstream_common::now_ms;
use riskstream_common::shutdown::CancellationToken;
use serde::Serialize;
use tokio::sync::Notify;
use twox_hash::XxHash3_64;

use crate::output::dead_letter;
use crate::record::Record;
use crate::scoring::rules::RuleProblem;
use crate::scoring::{ListsError, RuleSetError, Scorer};

/// The key to produce rule sets with: one key keeps every update on one partition, in order.
pub const RULES_KEY: &str = "rules";

/// Dead-letter codes of control records.
pub mod code {
    /// A `rules` record whose rule set was rejected (problems in the reason).
    pub const INVALID_RULE_SET: &str = "invalid_rule_set";
    /// A `rules` record that is not UTF-8 text.
    pub const NOT_UTF8: &str = "not_utf8";
    /// A `lists` record that is not a valid list update.
    pub const INVALID_LIST_UPDATE: &str = "invalid_list_update";
}

/// Where an update came from (the `source` label).
pub mod source {
    pub const FILE: &str = "file";
    pub const TOPIC: &str = "topic";
}

/// What became of an update (the `result` label).
pub mod result {
    /// Validated and swapped in.
    pub const APPLIED: &str = "applied";
    /// Refused; the running set is kept.
    pub const REJECTED: &str = "rejected";
    /// The running version with the same text: nothing to do.
    pub const UNCHANGED: &str = "unchanged";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    pub source: String,
    pub result: String,
}

/// Metrics of the control plane (prefix `riskstream_worker`, served at the admin `/metrics`).
#[derive(Clone)]
pub struct ControlMetrics {
    pub registry: Arc<Registry>,
    /// `riskstream_worker_rule_updates_total{source, result}`.
    pub rule_updates: Family<UpdateLabels, Counter>,
    /// `riskstream_worker_list_updates_total{source, result}`.
    pub list_updates: Family<UpdateLabels, Counter>,
}

impl ControlMetrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("riskstream_worker");
        let rule_updates = Family::<UpdateLabels, Counter>::default();
        let list_updates = Family::<UpdateLabels, Counter>::default();
        r.register(
            "rule_updates",
            "Rule-set updates by source (file, topic) and result (applied, rejected, unchanged)",
            rule_updates.clone(),
        );
        r.register(
            "list_updates",
            "List updates by source and result (applied, rejected)",
            list_updates.clone(),
        );
        Self {
            registry: Arc::new(r),
            rule_updates,
            list_updates,
        }
    }

    fn count(family: &Family<UpdateLabels, Counter>, source: &str, result: &str) {
        family
            .get_or_create(&UpdateLabels {
                source: source.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
}

/// The last rule-set update that was refused, as `GET /v1/rules` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub source: String,
    /// The refused set's version, when it could be read.
    pub version: Option<String>,
    pub at_ms: i64,
    pub problems: Vec<RuleProblem>,
}

/// Errors of the control plane's setup.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control topics: {0}")]
    Kafka(#[from] KafkaError),
}

/// The control plane's shared state: metrics, the last rejection and the catch-up signal.
pub struct ControlState {
    pub metrics: ControlMetrics,
    last_rejection: Mutex<Option<Rejection>>,
    caught_up: AtomicBool,
    caught_up_notify: Notify,
    /// The rules file as the scorer loaded it (stamp and content hash): the watcher's baseline.
    rules_file_baseline: Option<(Option<FileStamp>, u64)>,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("caught_up", &self.is_caught_up())
            .finish_non_exhaustive()
    }
}

impl Default for ControlState {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlState {
    pub fn new() -> Self {
        Self {
            metrics: ControlMetrics::new(),
            last_rejection: Mutex::new(None),
            caught_up: AtomicBool::new(false),
            caught_up_notify: Notify::new(),
            rules_file_baseline: None,
        }
    }

    /// Like [`ControlState::new`], remembering the rules file as it is now: call it right after
    /// the scorer loaded the file, so the watcher applies only later changes.
    pub fn with_rules_file(path: &Path) -> Self {
        let stamp = std::fs::metadata(path).ok().map(|md| FileStamp {
            modified: md.modified().ok(),
            len: md.len(),
        });
        let baseline = std::fs::read_to_string(path)
            .ok()
            .map(|t| (stamp, hash(&t)));
        Self {
            rules_file_baseline: baseline,
            ..Self::new()
        }
    }

    /// Validates a whole rule-set text and swaps it in; a bad one is logged with every
    /// problem, counted and remembered, and the running set is kept.
    pub fn apply_rules(
        &self,
        scorer: &Scorer,
        text: &str,
        source: &str,
    ) -> Result<String, RuleSetError> {
        let running = scorer.rules().version();
        match scorer.rules().try_update(text) {
            Ok(version) => {
                let result = if version == running {
                    result::UNCHANGED
                } else {
                    result::APPLIED
                };
                ControlMetrics::count(&self.metrics.rule_updates, source, result);
                if result == result::APPLIED {
                    tracing::info!(source, from = %running, to = %version, "rule set applied");
                }
                Ok(version)
            }
            Err(e) => {
                ControlMetrics::count(&self.metrics.rule_updates, source, result::REJECTED);
                for p in &e.problems {
                    tracing::warn!(
                        source,
                        version = e.version.as_deref().unwrap_or(""),
                        running = %running,
                        rule = p.rule.as_deref().unwrap_or(""),
                        problem = %p,
                        "rule set update problem"
                    );
                }
                *self
                    .last_rejection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Rejection {
                    source: source.to_string(),
                    version: e.version.clone(),
                    at_ms: now_ms(),
                    problems: e.problems.clone(),
                });
                Err(e)
            }
        }
    }

    /// Applies one list update (the `lists` topic's JSON).
    pub fn apply_list(
        &self,
        scorer: &Scorer,
        bytes: &[u8],
        source: &str,
    ) -> Result<(), ListsError> {
        match scorer.lists().apply_json(bytes) {
            Ok(()) => {
                ControlMetrics::count(&self.metrics.list_updates, source, result::APPLIED);
                Ok(())
            }
            Err(e) => {
                ControlMetrics::count(&self.metrics.list_updates, source, result::REJECTED);
                tracing::warn!(source, error = %e, "list update rejected");
                Err(e)
            }
        }
    }

    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the control topics were replayed up to where they stood at start.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    fn set_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::SeqCst) {
            tracing::info!("control topics caught up");
        }
        self.caught_up_notify.notify_waiters();
    }

    /// Waits until the control topics are replayed (so the first decisions already use the
    /// fleet's latest rule set), at most `timeout`. Returns whether they were.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.caught_up_notify.notified();
                if self.is_caught_up() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(timeout = ?timeout, "control topics not caught up in time, deciding with the current rule set");
        }
        self.is_caught_up()
    }
}

/// Settings of the control plane (taken from the worker's config).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub kafka: KafkaConfig,
    /// The worker's group id; the control consumer's group is derived from it, unique per process.
    pub group_id: String,
    pub rules_path: PathBuf,
    pub rules_poll_interval: Duration,
}

/// Runs the file poller and the control-topic consumer until shutdown.
pub async fn run(
    cfg: ControlConfig,
    scorer: Arc<Scorer>,
    state: Arc<ControlState>,
    shutdown: CancellationToken,
) {
    let file = {
        let (scorer, state, shutdown) = (scorer.clone(), state.clone(), shutdown.clone());
        let (path, interval) = (cfg.rules_path.clone(), cfg.rules_poll_interval);
        tokio::spawn(async move { watch_rules_file(path, interval, scorer, state, shutdown).await })
    };
    consume_topics(&cfg, &scorer, &state, &shutdown).await;
    let _ = file.await;
}

/// What the poller knows about the rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

async fn stamp(path: &Path) -> Option<FileStamp> {
    let md = tokio::fs::metadata(path).await.ok()?;
    Some(FileStamp {
        modified: md.modified().ok(),
        len: md.len(),
    })
}

fn hash(text: &str) -> u64 {
    XxHash3_64::oneshot(text.as_bytes())
}

/// Polls the rules file: a changed mtime or length leads to reading it, and a changed content
/// hash to an update (so touching the file or rewriting the same text does nothing).
async fn watch_rules_file(
    path: PathBuf,
    interval: Duration,
    scorer: Arc<Scorer>,
    state: Arc<ControlState>,
    shutdown: CancellationToken,
) {
    // The scorer loaded the file at start: that content is the baseline.
    let (mut last_stamp, mut last_hash) = match state.rules_file_baseline {
        Some((s, h)) => (s, Some(h)),
        None => (None, None),
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = stamp(&path).await;
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the rules file, keeping the running set");
                continue;
            }
        };
        let h = hash(&text);
        if Some(h) == last_hash {
            continue;
        }
        last_hash = Some(h);
        let _ = state.apply_rules(&scorer, &text, source::FILE);
    }
}

/// Applies one control record; the reason and code when it was rejected (a record without a
/// payload, a compaction tombstone, is no update and ignored).
fn apply_record(
    scorer: &Scorer,
    state: &ControlState,
    m: &rdkafka::message::BorrowedMessage<'_>,
    rules_topic: &str,
    lists_topic: &str,
) -> Option<(String, &'static str)> {
    let payload = m.payload()?;
    if m.topic() == rules_topic {
        match std::str::from_utf8(payload) {
            Ok(text) => state
                .apply_rules(scorer, text, source::TOPIC)
                .err()
                .map(|e| (e.to_string(), code::INVALID_RULE_SET)),
            Err(e) => {
                ControlMetrics::count(&state.metrics.rule_updates, source::TOPIC, result::REJECTED);
                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "rule set record is not utf-8, rejected");
                Some((format!("rule set record is not utf-8: {e}"), code::NOT_UTF8))
            }
        }
    } else if m.topic() == lists_topic {
        state
            .apply_list(scorer, payload, source::TOPIC)
            .err()
            .map(|e| (e.to_string(), code::INVALID_LIST_UPDATE))
    } else {
        None
    }
}

/// Where the replay must reach before the worker counts as caught up: per (topic, partition),
/// the high watermark at assignment.
type Targets = HashMap<(String, i32), i64>;

/// Assigns every partition of `topics` from the beginning; returns the catch-up targets.
fn assign_from_beginning(
    consumer: &StreamConsumer,
    topics: &[&str],
    timeout: Duration,
) -> Result<Targets, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let mut targets = Targets::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let parts: Vec<i32> = md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if parts.is_empty() {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        for p in parts {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            if high > low {
                targets.insert(((*topic).to_string(), p), high);
            }
        }
    }
    consumer.assign(&tpl)?;
    Ok(targets)
}

fn control_consumer(cfg: &ControlConfig) -> Result<StreamConsumer, KafkaError> {
    let group = format!("{}-control-{}", cfg.group_id, uuid::Uuid::new_v4().simple());
    let mut cc = cfg.kafka.consumer_config(&group);
    cc.set("enable.auto.commit", "false");
    cc.create()
}

async fn consume_topics(
    cfg: &ControlConfig,
    scorer: &Arc<Scorer>,
    state: &Arc<ControlState>,
    shutdown: &CancellationToken,
) {
    let rules_topic = cfg.kafka.topics.rules.clone();
    let lists_topic = cfg.kafka.topics.lists.clone();
    let mut backoff = Duration::from_millis(100);
    let (consumer, producer, mut targets) = loop {
        let attempt = {
            let cfg = cfg.clone();
            let (rules_topic, lists_topic) = (rules_topic.clone(), lists_topic.clone());
            tokio::task::spawn_blocking(
                move || -> Result<(StreamConsumer, FutureProducer, Targets), KafkaError> {
                    let consumer = control_consumer(&cfg)?;
                    let producer = cfg.kafka.producer()?;
                    let targets = assign_from_beginning(
                        &consumer,
                        &[&rules_topic, &lists_topic],
                        Duration::from_secs(5),
                    )?;
                    Ok((consumer, producer, targets))
                },
            )
            .await
            .map_err(|_| KafkaError::Canceled)
            .and_then(|r| r)
        };
        match attempt {
            Ok(ok) => break ok,
            Err(e) => {
                tracing::warn!(error = %e, "cannot assign the control topics, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::info!(rules = %rules_topic, lists = %lists_topic, backlog_partitions = targets.len(), "control topics assigned from the beginning");
    if targets.is_empty() {
        state.set_caught_up();
    }
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "control topic consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let key = (m.topic().to_string(), m.partition());
        // Records of the backlog at start were judged (and dead-lettered) by the workers that
        // read them live.
        let live = targets.get(&key).is_none_or(|high| m.offset() >= *high);
        let rejection = apply_record(scorer, state, &m, &rules_topic, &lists_topic);
        if let (Some((reason, code)), true) = (rejection, live) {
            let record = Record::from_message(&m);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = dead_letter(&producer, &cfg.kafka.topics.events_dlq, record, &reason, code) => {}
            }
        }
        if targets
            .get(&key)
            .is_some_and(|high| m.offset() + 1 >= *high)
        {
            targets.remove(&key);
            if targets.is_empty() {
                state.set_caught_up();
            }
        }
    }
}
