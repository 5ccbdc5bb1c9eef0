//! The risk decision: the contract between the worker (which writes it to the `decisions`
//! topic), the collector (which sinks it into ClickHouse), the api and ingest's synchronous
//! endpoint (which read it). See `docs/decisions.md`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the platform should do with the transaction, from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approve,
    Review,
    Challenge,
    Decline,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Approve,
        Outcome::Review,
        Outcome::Challenge,
        Outcome::Decline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approve => "approve",
            Outcome::Review => "review",
            Outcome::Challenge => "challenge",
            Outcome::Decline => "decline",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?} (approve, review, challenge, decline)"))
    }
}

/// A feature value as the worker computed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureValue {
    /// No value: an empty window for `min`/`max`/`avg`/`last`, or no earlier event.
    Null,
    Number(f64),
    Text(String),
}

impl FeatureValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Number(n) => Some(*n),
            _ => None,
        }
    }
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// `rule`, `feature`, `list`, `model` or `system`.
    pub kind: String,
    /// The rule's reason code, the feature's name, the list name, or a system code
    /// such as `scoring_error` or `late_event`.
    pub code: String,
    /// A human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Contribution to the score, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution: Option<f64>,
}

/// One model's score for this event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelScore {
    pub model: String,
    pub version: String,
    /// `champion`, `challenger` or `shadow`.
    pub role: String,
    pub score: f64,
    /// Whether this score decided the outcome (the champion, or the challenger for its share).
    pub acted_on: bool,
}

/// The decision for one event. Written to the `decisions` topic keyed by `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub event_id: Uuid,
    /// W3C trace id (32 lowercase hex digits) of the transaction's trace.
    pub trace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub event_time_ms: i64,
    /// When the worker decided, epoch milliseconds.
    pub decided_at_ms: i64,
    pub outcome: Outcome,
    /// The acted-on score in [0, 1] after rule adjustments.
    pub score: f64,
    pub reasons: Vec<Reason>,
    /// Every feature value used, by feature name.
    pub features: BTreeMap<String, FeatureValue>,
    pub models: Vec<ModelScore>,
    /// Version of the rule set that ran.
    #[serde(default)]
    pub rules_version: String,
    /// The event arrived behind its partition's watermark (`lateness_ms > 0`). It was still
    /// scored with event-time features (docs/features.md).
    pub late: bool,
    /// How far the event's time was behind its partition's watermark at arrival (0 if not).
    /// Written `lateness_ms`; `watermark_lag_ms` (its old name) is read too.
    #[serde(alias = "watermark_lag_ms")]
    pub lateness_ms: i64,
    /// Time from the worker reading the event to the decision being produced, microseconds.
    pub processing_latency_us: u64,
}
