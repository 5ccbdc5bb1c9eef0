//! The worker's configuration: the `[worker]` section plus the shared `[kafka]` one.

use std::path::PathBuf;
use std::time::Duration;

use riskstream_common::config::Validate;
use riskstream_common::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

use crate::features::StateConfig;
use crate::scoring::ScoringConfig;
use crate::stream::ClockConfig;

/// Where the shipped feature definitions live.
pub const DEFAULT_FEATURES_PATH: &str = "config/features.toml";

/// How the worker distributes feature state (see docs/features.md, "Distributed mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    /// Every feature group computed by the worker that reads the event: exact only for
    /// features keyed by the `events` partition key.
    Local,
    /// keyBy through the repartition topic: each entity's state on exactly one worker, exact
    /// with any number of workers and through rebalances.
    #[default]
    Keyed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Admin HTTP (`/v1/features/{entity}/{key}`, `/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
    /// Kafka consumer group of the workers.
    pub group_id: String,
    /// Feature definitions (TOML).
    pub features_path: PathBuf,
    /// Bounded out-of-orderness: the watermark is the newest event time seen minus this.
    #[serde(with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// Keyed mode: a source partition with no new event for this long is marked idle so it
    /// does not hold the input watermark back (watermarks drive only lateness flags, state
    /// expiry and window outputs; no decision waits for them).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wall time an event waits for earlier-timed events of its partition before it is
    /// decided (disorder within it is undone before features are computed). Every decision
    /// can be this much later; `0s` decides on arrival.
    #[serde(with = "humantime_serde")]
    pub reorder_wait: Duration,
    /// Most events read but not yet acknowledged downstream (backpressure beyond it).
    pub max_in_flight: usize,
    /// Bound on draining at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Window state: memory bound, allowed lateness, expiry.
    pub state: StateConfig,
    pub scoring: ScoringConfig,
    /// How often the rules file (`scoring.rules_path`) is checked for changes.
    #[serde(with = "humantime_serde")]
    pub rules_poll_interval: Duration,
    /// Longest wait at start for the control topics (`rules`, `lists`) to be replayed before
    /// events are processed.
    #[serde(with = "humantime_serde")]
    pub control_catch_up_timeout: Duration,
    /// `keyed` (distributed, exact) or `local` (single-stage).
    pub mode: WorkerMode,
    /// Keyed mode: the shortest gap between two watermark markers of one source partition.
    #[serde(with = "humantime_serde")]
    pub watermark_interval: Duration,
    /// Keyed mode: how long an incomplete feature join waits for its missing parts.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Keyed mode: most incomplete feature joins held (the oldest are given up beyond it).
    pub join_max_pending: u64,
    /// Emit the `[[window_output]]` definitions of the features file (keyed mode: the windows stage, group `G.windows`). Local mode cannot compute them: set `false` there if the file defines any (start-up error otherwise).
    pub window_outputs: bool,
    /// Keyed mode: how often the state stage writes the state of the keys it updated to the
    /// changelog topic (once per key per flush); input offsets are committed only after. A
    /// longer interval writes hot keys less often and commits later.
    #[serde(with = "humantime_serde")]
    pub changelog_flush_interval: Duration,
    /// Bearer tokens and HTTP limits of the admin listener: the root `[auth]` and `[http]`
    /// sections, which the riskstream binary copies here (not a key of `[worker]`).
    /// Default: open.
    #[serde(skip)]
    pub access: riskstream_auth::AccessConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            group_id: "riskstream-worker".into(),
            features_path: DEFAULT_FEATURES_PATH.into(),
            out_of_orderness: Duration::from_millis(10),
            idle_timeout: Duration::from_millis(10),
            reorder_wait: Duration::from_millis(2),
            max_in_flight: 20_000,
            shutdown_timeout: Duration::from_secs(15),
            state: StateConfig::default(),
            scoring: ScoringConfig::default(),
            rules_poll_interval: Duration::from_secs(1),
            control_catch_up_timeout: Duration::from_secs(10),
            mode: WorkerMode::default(),
            watermark_interval: Duration::from_millis(20),
            join_timeout: Duration::from_secs(120),
            join_max_pending: 1_000_000,
            window_outputs: true,
            changelog_flush_interval: Duration::from_millis(100),
            access: riskstream_auth::AccessConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// The event-time clock settings (watermark, lateness, reorder wait) of every stage.
    pub fn clock(&self) -> ClockConfig {
        ClockConfig {
            out_of_orderness_ms: i64::try_from(self.out_of_orderness.as_millis())
                .unwrap_or(i64::MAX),
            allowed_lateness_ms: i64::try_from(self.state.allowed_lateness.as_millis())
                .unwrap_or(i64::MAX),
            reorder_wait: self.reorder_wait,
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.max_in_flight == 0 {
            v.push("worker.max_in_flight must be positive".into());
        }
        if self.idle_timeout.is_zero() {
            v.push("worker.idle_timeout must be positive".into());
        }
        if self.rules_poll_interval.is_zero() {
            v.push("worker.rules_poll_interval must be positive".into());
        }
        if self.watermark_interval.is_zero() {
            v.push("worker.watermark_interval must be positive".into());
        }
        if self.changelog_flush_interval.is_zero() {
            v.push("worker.changelog_flush_interval must be positive".into());
        }
        if self.join_timeout.is_zero() || self.join_max_pending == 0 {
            v.push("worker.join_timeout and worker.join_max_pending must be positive".into());
        }
        if self.group_id.trim().is_empty() {
            v.push("worker.group_id must not be empty".into());
        }
        v
    }
}

/// Everything the worker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub worker: WorkerConfig,
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        self.worker.problems()
    }
}
