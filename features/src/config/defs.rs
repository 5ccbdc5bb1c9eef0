//! The TOML-facing definition types: one `[[feature]]` table as written ([`FeatureDef`]) and
//! its parts ([`Aggregation`], [`WindowDef`], [`FilterDef`], [`Predicate`], [`Scalar`]), and the
//! parsing of one raw table ([`parse_def`]: unknown keys reported, the rest deserialized).
//! Nothing here validates values: that is [`super::compile`]'s job.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::FeatureProblem;

/// Name of the TOML array of feature tables.
pub const FEATURE_TABLE: &str = "feature";

const FEATURE_KEYS: [&str; 9] = [
    "name",
    "description",
    "entity",
    "aggregation",
    "field",
    "window",
    "filter",
    "distinct_exact_limit",
    "hll_precision",
];

/// One feature as written in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureDef {
    /// Unique name, `[a-z][a-z0-9_]*`; the key of the value in decisions.
    pub name: String,
    /// Free text for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The entity key: one event field (`card_id`) or several joined by `+`
    /// (`card_id+merchant_id`).
    pub entity: String,
    pub aggregation: Option<Aggregation>,
    /// The aggregated field (`sum`/`avg`/`min`/`max`: numeric, default `amount`;
    /// `distinct_count`, `last`: required; `count`, `time_since_last`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub window: Option<WindowDef>,
    /// One predicate or a list of predicates that must all hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterDef>,
    /// `distinct_count` only: exact up to this many distinct values per key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_exact_limit: Option<u32>,
    /// `distinct_count` only: HyperLogLog precision beyond the exact limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hll_precision: Option<u8>,
}

/// How a feature reduces the events in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    DistinctCount,
    Last,
    TimeSinceLast,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::DistinctCount => "distinct_count",
            Aggregation::Last => "last",
            Aggregation::TimeSinceLast => "time_since_last",
        }
    }

    /// Whether the value over an empty window is `0` (`count`, `sum`, `distinct_count`)
    /// rather than `Null`.
    pub fn zero_when_empty(self) -> bool {
        matches!(
            self,
            Aggregation::Count | Aggregation::Sum | Aggregation::DistinctCount
        )
    }
}

/// A window as written in TOML (`window = { kind = "sliding", size = "10m" }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowDef {
    /// Fixed, non-overlapping windows `[k*size, (k+1)*size)`.
    Tumbling {
        #[serde(with = "humantime_serde")]
        size: Duration,
    },
    /// Overlapping windows of `size` starting every `slide`.
    Hopping {
        #[serde(with = "humantime_serde")]
        size: Duration,
        #[serde(with = "humantime_serde")]
        slide: Duration,
    },
    /// "The last `size` ending at this event", quantised to `granularity` (default 1s).
    Sliding {
        #[serde(with = "humantime_serde")]
        size: Duration,
        #[serde(default, with = "humantime_serde::option")]
        granularity: Option<Duration>,
    },
}

/// A filter: one predicate or a list that must all hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FilterDef {
    One(Predicate),
    All(Vec<Predicate>),
}

impl FilterDef {
    pub fn predicates(&self) -> &[Predicate] {
        match self {
            FilterDef::One(p) => std::slice::from_ref(p),
            FilterDef::All(v) => v,
        }
    }
}

/// A scalar in a filter: text for string fields, a number for `amount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Number(f64),
    Text(String),
}

/// One condition on one event field. Exactly one operator must be set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Predicate {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Scalar>,
    #[serde(rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_list: Option<Vec<Scalar>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<Scalar>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub le: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ge: Option<f64>,
    /// `true`: the field is present; `false`: it is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// How problems name a feature: its name, or `feature #n` (1-based) if it has none.
pub(super) fn label(i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("feature #{}", i + 1)
    } else {
        name.to_string()
    }
}

/// Checks one raw `[[feature]]` table: reports every unknown key, then deserializes the rest.
pub(super) fn parse_def(
    i: usize,
    raw: toml::Value,
    problems: &mut Vec<FeatureProblem>,
) -> Option<FeatureDef> {
    let toml::Value::Table(mut table) = raw else {
        problems.push(FeatureProblem::new(
            format!("feature #{}", i + 1),
            "must be a table ([[feature]])",
        ));
        return None;
    };
    let name = label(
        i,
        table
            .get("name")
            .and_then(toml::Value::as_str)
            .unwrap_or(""),
    );
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !FEATURE_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    for k in &unknown {
        problems.push(FeatureProblem::new(
            &name,
            format!(
                "unknown key `{k}` (expected one of: {})",
                FEATURE_KEYS.join(", ")
            ),
        ));
        table.remove(k);
    }
    match toml::Value::Table(table).try_into::<FeatureDef>() {
        Ok(def) => Some(def),
        Err(e) => {
            problems.push(FeatureProblem::new(&name, e.to_string().trim_end()));
            None
        }
    }
}
