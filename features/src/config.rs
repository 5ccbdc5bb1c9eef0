//! Feature definitions: the TOML schema (`[[feature]]` tables), its validation (every problem
//! collected and named by feature) and the compiled [`FeatureSet`], grouped by entity key.
//! The file's `[[window_output]]` tables are validated by [`crate::window_output::config`] and
//! kept in the set.
//!
//! See `docs/features.md` for the language and the window and aggregation semantics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use riskstream_common::Event;
use riskstream_common::event::fields;
use serde::{Deserialize, Serialize};

use super::error::{FeatureConfigError, FeatureProblem};
use crate::window_output::{self, WindowOutput, WindowOutputDef};

/// Name of the TOML array of feature tables.
pub const FEATURE_TABLE: &str = "feature";
/// Separator of the fields of a composite entity spec (`card_id+merchant_id`).
pub const ENTITY_SPEC_SEPARATOR: char = '+';
/// Separator of the values of a composite entity key (`card-1|m-7`).
pub const KEY_SEPARATOR: char = '|';
/// Escapes [`KEY_SEPARATOR`] and itself inside composite key values.
pub const KEY_ESCAPE: char = '\\';
/// Most fields a composite entity key may have.
pub const MAX_KEY_PARTS: usize = 4;
/// Longest accepted window (400 days).
pub const MAX_WINDOW_MS: i64 = 400 * 24 * 3_600_000;
/// Most buckets one window may span (`size / granularity`).
pub const MAX_BUCKETS_PER_WINDOW: i64 = 100_000;
/// Default granularity of a `sliding` window.
pub const DEFAULT_SLIDING_GRANULARITY_MS: i64 = 1_000;
/// Default bound up to which `distinct_count` is exact.
pub const DEFAULT_DISTINCT_EXACT_LIMIT: u32 = 256;
/// Largest accepted `distinct_exact_limit`.
pub const MAX_DISTINCT_EXACT_LIMIT: u32 = 4_096;
/// Default HyperLogLog precision (4096 registers, ~1.6% standard error).
pub const DEFAULT_HLL_PRECISION: u8 = 12;
/// Accepted HyperLogLog precisions.
pub const HLL_PRECISION_RANGE: std::ops::RangeInclusive<u8> = 4..=16;
/// Longest feature name.
pub const MAX_NAME_LEN: usize = 64;

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

/// A top-level event field a feature can key on, aggregate or filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    AccountId,
    CardId,
    DeviceId,
    Ip,
    MerchantId,
    Email,
    Currency,
    Country,
    Channel,
    Type,
    Amount,
}

impl EventField {
    pub const ALL: [EventField; 11] = [
        EventField::AccountId,
        EventField::CardId,
        EventField::DeviceId,
        EventField::Ip,
        EventField::MerchantId,
        EventField::Email,
        EventField::Currency,
        EventField::Country,
        EventField::Channel,
        EventField::Type,
        EventField::Amount,
    ];

    /// The field's JSON name.
    pub fn name(self) -> &'static str {
        match self {
            EventField::AccountId => fields::ACCOUNT_ID,
            EventField::CardId => fields::CARD_ID,
            EventField::DeviceId => fields::DEVICE_ID,
            EventField::Ip => fields::IP,
            EventField::MerchantId => fields::MERCHANT_ID,
            EventField::Email => fields::EMAIL,
            EventField::Currency => fields::CURRENCY,
            EventField::Country => fields::COUNTRY,
            EventField::Channel => fields::CHANNEL,
            EventField::Type => fields::TYPE,
            EventField::Amount => fields::AMOUNT,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn is_numeric(self) -> bool {
        self == EventField::Amount
    }

    /// The value of a string field (`None` for `amount` and for absent fields).
    #[inline]
    pub fn str_of(self, e: &Event) -> Option<&str> {
        match self {
            EventField::AccountId => e.account_id.as_deref(),
            EventField::CardId => e.card_id.as_deref(),
            EventField::DeviceId => e.device_id.as_deref(),
            EventField::Ip => e.ip.as_deref(),
            EventField::MerchantId => e.merchant_id.as_deref(),
            EventField::Email => e.email.as_deref(),
            EventField::Currency => e.currency.as_deref(),
            EventField::Country => e.country.as_deref(),
            EventField::Channel => e.channel.as_deref(),
            EventField::Type => e.event_type.as_deref(),
            EventField::Amount => None,
        }
    }

    /// The value of a numeric field (`None` for string fields and absent values).
    #[inline]
    pub fn num_of(self, e: &Event) -> Option<f64> {
        match self {
            EventField::Amount => e.amount,
            _ => None,
        }
    }

    /// Whether the field is present on the event.
    #[inline]
    pub fn is_present(self, e: &Event) -> bool {
        match self {
            EventField::Amount => e.amount.is_some(),
            _ => self.str_of(e).is_some(),
        }
    }

    fn names_list(numeric: Option<bool>) -> String {
        Self::ALL
            .into_iter()
            .filter(|f| numeric.is_none_or(|n| f.is_numeric() == n))
            .map(EventField::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for EventField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The entity key of a feature group: one or more string fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    fields: Vec<EventField>,
}

impl KeySpec {
    /// The fields, in spec order.
    pub fn fields(&self) -> &[EventField] {
        &self.fields
    }

    /// The spec as written (`card_id+merchant_id`); also the `{entity}` of the HTTP API.
    pub fn name(&self) -> String {
        self.fields
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The entity key of an event: `None` if any key field is missing. A single-field key is
    /// the field's value; a composite key joins the values with `|`, escaping `|` and `\`
    /// with `\`, so distinct value tuples never give the same key.
    pub fn key_of(&self, e: &Event) -> Option<String> {
        self.key_ref(e).map(Cow::into_owned)
    }

    /// Like [`KeySpec::key_of`] but borrows a single-field key instead of allocating.
    #[inline]
    pub fn key_ref<'e>(&self, e: &'e Event) -> Option<Cow<'e, str>> {
        match self.fields.as_slice() {
            [one] => one.str_of(e).map(Cow::Borrowed),
            many => {
                let mut out = String::new();
                for (i, f) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(KEY_SEPARATOR);
                    }
                    push_escaped(&mut out, f.str_of(e)?);
                }
                Some(Cow::Owned(out))
            }
        }
    }

    /// Builds a key from its parts (in spec order), as [`KeySpec::key_of`] would; for
    /// callers that have the values but no event (the HTTP API).
    pub fn encode_parts(parts: &[&str]) -> String {
        match parts {
            [one] => (*one).to_string(),
            many => {
                let mut out = String::new();
                for (i, p) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(KEY_SEPARATOR);
                    }
                    push_escaped(&mut out, p);
                }
                out
            }
        }
    }
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        if c == KEY_SEPARATOR || c == KEY_ESCAPE {
            out.push(KEY_ESCAPE);
        }
        out.push(c);
    }
}

/// A window reduced to its bucket granularity and size (both in ms, size a multiple of
/// granularity). All three window kinds aggregate the events with time in
/// `[floor(t / g) * g + g - size, t]` for an event at `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub granularity_ms: i64,
    pub size_ms: i64,
}

impl WindowSpec {
    /// Start of the bucket holding time `t_ms`.
    #[inline]
    pub fn bucket_start(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.granularity_ms) * self.granularity_ms
    }

    /// Earliest event time (inclusive) in the window of an event at `t_ms`; always a
    /// multiple of the granularity.
    #[inline]
    pub fn lower_bound(&self, t_ms: i64) -> i64 {
        self.bucket_start(t_ms)
            .saturating_add(self.granularity_ms)
            .saturating_sub(self.size_ms)
    }
}

/// A compiled filter condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    TextIn(Vec<String>),
    TextNotIn(Vec<String>),
    NumIn(Vec<f64>),
    NumNotIn(Vec<f64>),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
    Present(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledPredicate {
    pub field: EventField,
    pub condition: Condition,
}

impl CompiledPredicate {
    #[inline]
    pub(crate) fn matches(&self, e: &Event) -> bool {
        let f = self.field;
        match &self.condition {
            Condition::TextIn(vs) => f.str_of(e).is_some_and(|v| vs.iter().any(|x| x == v)),
            // An absent field is "not equal" to every value.
            Condition::TextNotIn(vs) => f.str_of(e).is_none_or(|v| vs.iter().all(|x| x != v)),
            Condition::NumIn(vs) => f.num_of(e).is_some_and(|v| vs.contains(&v)),
            Condition::NumNotIn(vs) => f.num_of(e).is_none_or(|v| !vs.contains(&v)),
            Condition::Lt(x) => f.num_of(e).is_some_and(|v| v < *x),
            Condition::Le(x) => f.num_of(e).is_some_and(|v| v <= *x),
            Condition::Gt(x) => f.num_of(e).is_some_and(|v| v > *x),
            Condition::Ge(x) => f.num_of(e).is_some_and(|v| v >= *x),
            Condition::Present(p) => f.is_present(e) == *p,
        }
    }
}

/// A validated, compiled feature.
#[derive(Debug, Clone)]
pub struct Feature {
    def: FeatureDef,
    pub(crate) aggregation: Aggregation,
    pub(crate) field: Option<EventField>,
    pub(crate) window: WindowSpec,
    pub(crate) filter: Vec<CompiledPredicate>,
    pub(crate) distinct_exact_limit: u32,
    pub(crate) hll_precision: u8,
}

impl Feature {
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The definition as written (after validation).
    pub fn def(&self) -> &FeatureDef {
        &self.def
    }

    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// The aggregated field, if the aggregation takes one (defaults applied).
    pub fn field(&self) -> Option<EventField> {
        self.field
    }

    pub fn window(&self) -> WindowSpec {
        self.window
    }

    pub fn distinct_exact_limit(&self) -> u32 {
        self.distinct_exact_limit
    }

    /// Whether the event passes the feature's filter (no filter: always).
    #[inline]
    pub fn passes_filter(&self, e: &Event) -> bool {
        self.filter.iter().all(|p| p.matches(e))
    }

    /// The value over an empty window: `0` for `count`/`sum`/`distinct_count`, else `Null`.
    pub fn empty_value(&self) -> riskstream_common::FeatureValue {
        if self.aggregation.zero_when_empty() {
            riskstream_common::FeatureValue::Number(0.0)
        } else {
            riskstream_common::FeatureValue::Null
        }
    }
}

/// The features sharing one entity key spec: their state lives under one key.
#[derive(Debug, Clone)]
pub struct FeatureGroup {
    key_spec: KeySpec,
    features: Vec<Feature>,
    longest_window_ms: i64,
}

impl FeatureGroup {
    pub fn key_spec(&self) -> &KeySpec {
        &self.key_spec
    }

    /// The group's features, in file order.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The entity key of an event for this group (`None`: a key field is missing, the
    /// group skips the event).
    pub fn key_of(&self, e: &Event) -> Option<String> {
        self.key_spec.key_of(e)
    }

    /// Like [`FeatureGroup::key_of`], borrowing single-field keys.
    #[inline]
    pub fn key_ref<'e>(&self, e: &'e Event) -> Option<Cow<'e, str>> {
        self.key_spec.key_ref(e)
    }

    /// The longest window of the group's features.
    pub fn longest_window_ms(&self) -> i64 {
        self.longest_window_ms
    }
}

/// The validated feature definitions, grouped by entity key, and the window outputs over them.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    groups: Vec<FeatureGroup>,
    window_outputs: Vec<WindowOutput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    feature: Vec<toml::Value>,
    #[serde(default)]
    window_output: Vec<toml::Value>,
}

impl FeatureSet {
    /// Reads and validates a feature file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FeatureConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FeatureConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Parses and validates feature definitions; the error lists every problem found.
    pub fn from_toml_str(text: &str) -> Result<Self, FeatureConfigError> {
        let file: FileDef = toml::from_str(text).map_err(|e| FeatureConfigError::Toml {
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = Vec::new();
        let mut defs = Vec::new();
        for (i, raw) in file.feature.into_iter().enumerate() {
            if let Some(def) = parse_def(i, raw, &mut problems) {
                defs.push(def);
            }
        }
        if defs.is_empty() && problems.is_empty() {
            problems.push(FeatureProblem::new(
                "(file)",
                "no features defined: add [[feature]] tables",
            ));
        }
        let mut output_problems = Vec::new();
        let outputs = window_output::config::parse_defs(file.window_output, &mut output_problems);
        Self::from_defs_inner(defs, problems, outputs, output_problems)
    }

    /// Validates definitions built in code.
    pub fn from_defs(defs: Vec<FeatureDef>) -> Result<Self, FeatureConfigError> {
        Self::from_defs_inner(defs, Vec::new(), Vec::new(), Vec::new())
    }

    /// Validates feature and window-output definitions built in code.
    pub fn from_defs_with_outputs(
        defs: Vec<FeatureDef>,
        outputs: Vec<WindowOutputDef>,
    ) -> Result<Self, FeatureConfigError> {
        Self::from_defs_inner(defs, Vec::new(), outputs, Vec::new())
    }

    fn from_defs_inner(
        defs: Vec<FeatureDef>,
        mut problems: Vec<FeatureProblem>,
        outputs: Vec<WindowOutputDef>,
        output_problems: Vec<FeatureProblem>,
    ) -> Result<Self, FeatureConfigError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut compiled = Vec::new();
        for (i, def) in defs.into_iter().enumerate() {
            if !def.name.is_empty() {
                if let Some(first) = seen.get(&def.name) {
                    problems.push(FeatureProblem::new(
                        &def.name,
                        format!(
                            "duplicate feature name (first defined as feature #{})",
                            first + 1
                        ),
                    ));
                } else {
                    seen.insert(def.name.clone(), i);
                }
            }
            if let Some(c) = compile(i, def, &mut problems) {
                compiled.push(c);
            }
        }
        // The key specs of the groups, in group order (as grouped below), if every feature
        // compiled: window outputs name one of them.
        let mut specs: Vec<KeySpec> = Vec::new();
        for (spec, _) in &compiled {
            if !specs.contains(spec) {
                specs.push(spec.clone());
            }
        }
        let features_ok = problems.is_empty();
        problems.extend(output_problems);
        let window_outputs = window_output::config::compile_all(
            outputs,
            features_ok.then_some(specs.as_slice()),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(FeatureConfigError::Invalid { problems });
        }
        let mut groups: Vec<FeatureGroup> = Vec::new();
        for (spec, feature) in compiled {
            let gi = match groups.iter().position(|g| g.key_spec == spec) {
                Some(gi) => gi,
                None => {
                    groups.push(FeatureGroup {
                        key_spec: spec,
                        features: Vec::new(),
                        longest_window_ms: 0,
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[gi];
            g.longest_window_ms = g.longest_window_ms.max(feature.window.size_ms);
            g.features.push(feature);
        }
        Ok(FeatureSet {
            groups,
            window_outputs,
        })
    }

    pub fn groups(&self) -> &[FeatureGroup] {
        &self.groups
    }

    /// The `[[window_output]]` definitions, in file order.
    pub fn window_outputs(&self) -> &[WindowOutput] {
        &self.window_outputs
    }

    /// The index of the group with this key spec name (`card_id+merchant_id`).
    pub fn group_index(&self, key_spec_name: &str) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.key_spec.name() == key_spec_name)
    }

    /// Every feature, group by group (groups in order of first appearance in the file,
    /// features of a group in file order): the order of [`super::FeatureEngine::process_event_into`].
    pub fn features(&self) -> impl Iterator<Item = &Feature> {
        self.groups.iter().flat_map(|g| g.features.iter())
    }

    /// Feature names in [`FeatureSet::features`] order.
    pub fn feature_names(&self) -> Vec<String> {
        self.features().map(|f| f.name().to_string()).collect()
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.features.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn label(i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("feature #{}", i + 1)
    } else {
        name.to_string()
    }
}

/// Checks one raw `[[feature]]` table: reports every unknown key, then deserializes the rest.
fn parse_def(i: usize, raw: toml::Value, problems: &mut Vec<FeatureProblem>) -> Option<FeatureDef> {
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

pub(crate) fn duration_ms(
    what: &str,
    d: Duration,
    name: &str,
    problems: &mut Vec<FeatureProblem>,
) -> Option<i64> {
    if d.is_zero() {
        problems.push(FeatureProblem::new(
            name,
            format!("window {what} must be > 0"),
        ));
        return None;
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        problems.push(FeatureProblem::new(
            name,
            format!("window {what} must be a whole number of milliseconds"),
        ));
        return None;
    }
    match i64::try_from(d.as_millis()) {
        Ok(ms) if ms <= MAX_WINDOW_MS => Some(ms),
        _ => {
            problems.push(FeatureProblem::new(
                name,
                format!("window {what} must be at most 400d"),
            ));
            None
        }
    }
}

pub(crate) fn compile_window(
    w: &WindowDef,
    name: &str,
    problems: &mut Vec<FeatureProblem>,
) -> Option<WindowSpec> {
    let (size, gran, gran_what) = match *w {
        WindowDef::Tumbling { size } => (size, size, "size"),
        WindowDef::Hopping { size, slide } => (size, slide, "slide"),
        WindowDef::Sliding { size, granularity } => (
            size,
            granularity.unwrap_or(Duration::from_millis(
                DEFAULT_SLIDING_GRANULARITY_MS.unsigned_abs(),
            )),
            "granularity",
        ),
    };
    let size_ms = duration_ms("size", size, name, problems);
    let gran_ms = duration_ms(gran_what, gran, name, problems);
    let (size_ms, granularity_ms) = (size_ms?, gran_ms?);
    if size_ms % granularity_ms != 0 {
        problems.push(FeatureProblem::new(
            name,
            format!(
                "window size ({}) must be a multiple of its {gran_what} ({})",
                humantime_serde::re::humantime::format_duration(size),
                humantime_serde::re::humantime::format_duration(gran)
            ),
        ));
        return None;
    }
    if size_ms / granularity_ms > MAX_BUCKETS_PER_WINDOW {
        problems.push(FeatureProblem::new(
            name,
            format!(
                "window size / {gran_what} is {} buckets, more than {MAX_BUCKETS_PER_WINDOW}: use a coarser {gran_what}",
                size_ms / granularity_ms
            ),
        ));
        return None;
    }
    Some(WindowSpec {
        granularity_ms,
        size_ms,
    })
}

pub(crate) fn compile_entity(
    entity: &str,
    name: &str,
    problems: &mut Vec<FeatureProblem>,
) -> Option<KeySpec> {
    if entity.is_empty() {
        problems.push(FeatureProblem::new(
            name,
            "entity is required (e.g. \"card_id\" or \"card_id+merchant_id\")",
        ));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for part in entity.split(ENTITY_SPEC_SEPARATOR).map(str::trim) {
        match EventField::from_name(part) {
            Some(f) if !f.is_numeric() => {
                if out.contains(&f) {
                    problems.push(FeatureProblem::new(
                        name,
                        format!("entity names `{part}` twice"),
                    ));
                    ok = false;
                }
                out.push(f);
            }
            _ => {
                problems.push(FeatureProblem::new(
                    name,
                    format!(
                        "entity field `{part}` is not a string event field (one of: {})",
                        EventField::names_list(Some(false))
                    ),
                ));
                ok = false;
            }
        }
    }
    if out.len() > MAX_KEY_PARTS {
        problems.push(FeatureProblem::new(
            name,
            format!("entity has {} fields, at most {MAX_KEY_PARTS}", out.len()),
        ));
        ok = false;
    }
    ok.then_some(KeySpec { fields: out })
}

fn compile_field(
    def: &FeatureDef,
    agg: Aggregation,
    name: &str,
    problems: &mut Vec<FeatureProblem>,
) -> Result<Option<EventField>, ()> {
    let a = agg.as_str();
    let field = match &def.field {
        None => None,
        Some(f) => match EventField::from_name(f) {
            Some(ef) => Some(ef),
            None => {
                problems.push(FeatureProblem::new(
                    name,
                    format!(
                        "unknown field `{f}` (one of: {})",
                        EventField::names_list(None)
                    ),
                ));
                return Err(());
            }
        },
    };
    match agg {
        Aggregation::Count | Aggregation::TimeSinceLast => {
            if let Some(f) = field {
                problems.push(FeatureProblem::new(
                    name,
                    format!(
                        "{a} takes no field (got `{f}`); to count events with the field, filter on {{ field = \"{f}\", present = true }}"
                    ),
                ));
                return Err(());
            }
            Ok(None)
        }
        Aggregation::Sum | Aggregation::Avg | Aggregation::Min | Aggregation::Max => {
            let f = field.unwrap_or(EventField::Amount);
            if !f.is_numeric() {
                problems.push(FeatureProblem::new(
                    name,
                    format!(
                        "{a} needs a numeric field ({}), `{f}` is text",
                        EventField::names_list(Some(true))
                    ),
                ));
                return Err(());
            }
            Ok(Some(f))
        }
        Aggregation::DistinctCount | Aggregation::Last => match field {
            Some(f) => Ok(Some(f)),
            None => {
                problems.push(FeatureProblem::new(
                    name,
                    format!("{a} needs a field (e.g. field = \"card_id\")"),
                ));
                Err(())
            }
        },
    }
}

pub(crate) fn compile_predicate(
    p: &Predicate,
    name: &str,
    problems: &mut Vec<FeatureProblem>,
) -> Option<CompiledPredicate> {
    let Some(field) = EventField::from_name(&p.field) else {
        problems.push(FeatureProblem::new(
            name,
            if p.field.is_empty() {
                "filter predicate needs a field".to_string()
            } else {
                format!(
                    "filter on unknown field `{}` (one of: {})",
                    p.field,
                    EventField::names_list(None)
                )
            },
        ));
        return None;
    };
    let ops = [
        p.equals.is_some(),
        p.not_equals.is_some(),
        p.in_list.is_some(),
        p.not_in.is_some(),
        p.lt.is_some(),
        p.le.is_some(),
        p.gt.is_some(),
        p.ge.is_some(),
        p.present.is_some(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if ops != 1 {
        problems.push(FeatureProblem::new(
            name,
            format!(
                "filter on `{field}` must have exactly one operator (equals, not_equals, in, not_in, lt, le, gt, ge, present), found {ops}"
            ),
        ));
        return None;
    }
    let mut bad = false;
    let mut scalars = |values: &[Scalar], op: &str| -> (Vec<String>, Vec<f64>) {
        let mut texts = Vec::new();
        let mut nums = Vec::new();
        if values.is_empty() {
            problems.push(FeatureProblem::new(
                name,
                format!("filter `{op}` on `{field}` needs at least one value"),
            ));
            bad = true;
        }
        for v in values {
            match (v, field.is_numeric()) {
                (Scalar::Number(n), true) => nums.push(*n),
                (Scalar::Text(t), false) => texts.push(t.clone()),
                (Scalar::Number(n), false) => {
                    problems.push(FeatureProblem::new(
                        name,
                        format!("filter `{op}` on text field `{field}` needs text, got {n}"),
                    ));
                    bad = true;
                }
                (Scalar::Text(t), true) => {
                    problems.push(FeatureProblem::new(
                        name,
                        format!(
                            "filter `{op}` on numeric field `{field}` needs a number, got \"{t}\""
                        ),
                    ));
                    bad = true;
                }
            }
        }
        (texts, nums)
    };
    let condition = if let Some(v) = &p.equals {
        let (t, n) = scalars(std::slice::from_ref(v), "equals");
        if field.is_numeric() {
            Condition::NumIn(n)
        } else {
            Condition::TextIn(t)
        }
    } else if let Some(v) = &p.not_equals {
        let (t, n) = scalars(std::slice::from_ref(v), "not_equals");
        if field.is_numeric() {
            Condition::NumNotIn(n)
        } else {
            Condition::TextNotIn(t)
        }
    } else if let Some(v) = &p.in_list {
        let (t, n) = scalars(v, "in");
        if field.is_numeric() {
            Condition::NumIn(n)
        } else {
            Condition::TextIn(t)
        }
    } else if let Some(v) = &p.not_in {
        let (t, n) = scalars(v, "not_in");
        if field.is_numeric() {
            Condition::NumNotIn(n)
        } else {
            Condition::TextNotIn(t)
        }
    } else if let Some(present) = p.present {
        Condition::Present(present)
    } else {
        let (op, x, c): (&str, f64, fn(f64) -> Condition) = if let Some(x) = p.lt {
            ("lt", x, Condition::Lt)
        } else if let Some(x) = p.le {
            ("le", x, Condition::Le)
        } else if let Some(x) = p.gt {
            ("gt", x, Condition::Gt)
        } else {
            ("ge", p.ge.unwrap_or(f64::NAN), Condition::Ge)
        };
        if !field.is_numeric() {
            problems.push(FeatureProblem::new(
                name,
                format!("filter `{op}` needs a numeric field, `{field}` is text"),
            ));
            return None;
        }
        if !x.is_finite() {
            problems.push(FeatureProblem::new(
                name,
                format!("filter `{op}` on `{field}` needs a finite number"),
            ));
            return None;
        }
        c(x)
    };
    (!bad).then_some(CompiledPredicate { field, condition })
}

fn compile(
    i: usize,
    def: FeatureDef,
    problems: &mut Vec<FeatureProblem>,
) -> Option<(KeySpec, Feature)> {
    let name = label(i, &def.name);
    let before = problems.len();
    if def.name.is_empty() {
        problems.push(FeatureProblem::new(&name, "name is required"));
    } else if def.name.len() > MAX_NAME_LEN
        || !def.name.starts_with(|c: char| c.is_ascii_lowercase())
        || !def
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        problems.push(FeatureProblem::new(
            &name,
            format!("name must match [a-z][a-z0-9_]* and be at most {MAX_NAME_LEN} characters"),
        ));
    }
    let spec = compile_entity(&def.entity, &name, problems);
    let aggregation = def.aggregation;
    if aggregation.is_none() {
        problems.push(FeatureProblem::new(
            &name,
            "aggregation is required (count, sum, avg, min, max, distinct_count, last, time_since_last)",
        ));
    }
    let field = aggregation.and_then(|a| compile_field(&def, a, &name, problems).ok());
    let window = match &def.window {
        Some(w) => compile_window(w, &name, problems),
        None => {
            problems.push(FeatureProblem::new(
                &name,
                "window is required (e.g. window = { kind = \"sliding\", size = \"10m\" })",
            ));
            None
        }
    };
    let filter: Vec<Option<CompiledPredicate>> = def
        .filter
        .iter()
        .flat_map(FilterDef::predicates)
        .map(|p| compile_predicate(p, &name, problems))
        .collect();
    let is_distinct = aggregation == Some(Aggregation::DistinctCount);
    let distinct_exact_limit = def
        .distinct_exact_limit
        .unwrap_or(DEFAULT_DISTINCT_EXACT_LIMIT);
    let hll_precision = def.hll_precision.unwrap_or(DEFAULT_HLL_PRECISION);
    if !is_distinct && def.distinct_exact_limit.is_some() {
        problems.push(FeatureProblem::new(
            &name,
            "distinct_exact_limit applies to distinct_count only",
        ));
    }
    if !is_distinct && def.hll_precision.is_some() {
        problems.push(FeatureProblem::new(
            &name,
            "hll_precision applies to distinct_count only",
        ));
    }
    if !(1..=MAX_DISTINCT_EXACT_LIMIT).contains(&distinct_exact_limit) {
        problems.push(FeatureProblem::new(
            &name,
            format!("distinct_exact_limit must be in 1..={MAX_DISTINCT_EXACT_LIMIT}"),
        ));
    }
    if !HLL_PRECISION_RANGE.contains(&hll_precision) {
        problems.push(FeatureProblem::new(
            &name,
            format!(
                "hll_precision must be in {}..={}",
                HLL_PRECISION_RANGE.start(),
                HLL_PRECISION_RANGE.end()
            ),
        ));
    }
    if problems.len() != before {
        return None;
    }
    let (Some(spec), Some(aggregation), Some(window)) = (spec, aggregation, window) else {
        return None;
    };
    let filter = filter.into_iter().collect::<Option<Vec<_>>>()?;
    Some((
        spec,
        Feature {
            def,
            aggregation,
            field: field.flatten(),
            window,
            filter,
            distinct_exact_limit,
            hll_precision,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<FeatureProblem> {
        match FeatureSet::from_toml_str(text) {
            Err(FeatureConfigError::Invalid { problems }) => problems,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn has(problems: &[FeatureProblem], feature: &str, needle: &str) -> bool {
        problems
            .iter()
            .any(|p| p.feature == feature && p.message.contains(needle))
    }

    #[test]
    fn parses_windows_filters_and_groups_by_entity() {
        let set = FeatureSet::from_toml_str(
            r#"
            [[feature]]
            name = "card_count_10m"
            entity = "card_id"
            aggregation = "count"
            window = { kind = "sliding", size = "10m" }
            filter = { field = "type", equals = "payment" }

            [[feature]]
            name = "card_merchant_sum_1h"
            entity = "card_id + merchant_id"
            aggregation = "sum"
            window = { kind = "hopping", size = "1h", slide = "5m" }
            filter = [{ field = "amount", lt = 2 }, { field = "country", in = ["DE", "FR"] }]

            [[feature]]
            name = "card_max_1d"
            entity = "card_id"
            aggregation = "max"
            window = { kind = "tumbling", size = "1d" }
            "#,
        )
        .unwrap();
        assert_eq!(set.groups().len(), 2);
        assert_eq!(set.groups()[0].key_spec().name(), "card_id");
        assert_eq!(set.groups()[0].features().len(), 2);
        assert_eq!(set.groups()[1].key_spec().name(), "card_id+merchant_id");
        assert_eq!(
            set.feature_names(),
            ["card_count_10m", "card_max_1d", "card_merchant_sum_1h"]
        );
        let f = &set.groups()[0].features()[0];
        assert_eq!(
            f.window(),
            WindowSpec {
                granularity_ms: 1_000,
                size_ms: 600_000
            }
        );
        let g = &set.groups()[1].features()[0];
        assert_eq!(g.field(), Some(EventField::Amount));
        assert_eq!(g.window().granularity_ms, 300_000);
        assert_eq!(
            set.groups()[0].features()[1].window().granularity_ms,
            86_400_000
        );
        assert_eq!(set.groups()[0].longest_window_ms(), 86_400_000);
        assert_eq!(set.group_index("card_id+merchant_id"), Some(1));
    }

    #[test]
    fn every_problem_is_reported_with_the_feature_name() {
        let problems = problems_of(
            r#"
            [[feature]]
            name = "a"
            entity = "card_id"
            aggregation = "count"
            window = { kind = "hopping", size = "10m", slide = "3m" }
            colour = "red"
            shape = "round"

            [[feature]]
            name = "a"
            entity = "card_id+shoe_size"
            aggregation = "sum"
            field = "country"
            window = { kind = "sliding", size = "1h", granularity = "7m" }
            filter = [{ field = "amount", lt = 2, gt = 1 }, { field = "type", lt = 3 }, { field = "nope", equals = "x" }]

            [[feature]]
            name = "Bad-Name"
            entity = "device_id"
            aggregation = "distinct_count"
            window = { kind = "tumbling", size = "0s" }
            hll_precision = 30

            [[feature]]
            name = "no_window"
            entity = "ip"
            aggregation = "median"

            [[feature]]
            name = "count_with_field"
            entity = "ip"
            aggregation = "count"
            field = "amount"
            window = { kind = "sliding", size = "1m" }
            distinct_exact_limit = 5
            "#,
        );
        assert!(has(&problems, "a", "unknown key `colour`"), "{problems:#?}");
        assert!(has(&problems, "a", "unknown key `shape`"));
        assert!(has(&problems, "a", "multiple of its slide"));
        assert!(has(&problems, "a", "duplicate feature name"));
        assert!(has(&problems, "a", "entity field `shoe_size`"));
        assert!(has(&problems, "a", "needs a numeric field"));
        assert!(has(&problems, "a", "multiple of its granularity"));
        assert!(has(&problems, "a", "exactly one operator"));
        assert!(has(&problems, "a", "filter `lt` needs a numeric field"));
        assert!(has(&problems, "a", "filter on unknown field `nope`"));
        assert!(has(&problems, "Bad-Name", "name must match"));
        assert!(has(&problems, "Bad-Name", "needs a field"));
        assert!(has(&problems, "Bad-Name", "size must be > 0"));
        assert!(has(&problems, "Bad-Name", "hll_precision"));
        assert!(has(&problems, "no_window", "unknown variant `median`"));
        assert!(has(&problems, "count_with_field", "takes no field"));
        assert!(has(&problems, "count_with_field", "distinct_count only"));
        // The error's text names every feature with a problem.
        let text = FeatureSet::from_toml_str("[[feature]]\nname = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("x: entity is required"), "{text}");
        assert!(text.contains("x: aggregation is required"), "{text}");
        assert!(text.contains("x: window is required"), "{text}");
    }

    #[test]
    fn bad_toml_and_empty_files_are_errors() {
        assert!(matches!(
            FeatureSet::from_toml_str("[[feature]\n"),
            Err(FeatureConfigError::Toml { .. })
        ));
        assert!(matches!(
            FeatureSet::from_toml_str("features = 1"),
            Err(FeatureConfigError::Toml { .. })
        ));
        let p = problems_of("");
        assert!(has(&p, "(file)", "no features"));
        let p = problems_of(
            "[[feature]]\nname = \"w\"\nentity = \"ip\"\naggregation = \"count\"\nwindow = { kind = \"sliding\", size = \"1m\", slide = \"1s\" }\n",
        );
        assert!(has(&p, "w", "unknown field `slide`"), "{p:#?}");
    }

    #[test]
    fn composite_keys_are_unambiguous() {
        let spec = KeySpec {
            fields: vec![EventField::CardId, EventField::MerchantId],
        };
        let a = KeySpec::encode_parts(&["a|b", "c"]);
        let b = KeySpec::encode_parts(&["a", "b|c"]);
        let c = KeySpec::encode_parts(&["a\\", "|c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(KeySpec::encode_parts(&["card-1", "m-2"]), "card-1|m-2");
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "event_id": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6071",
            "event_time": 0, "card_id": "a|b", "merchant_id": "c"
        }))
        .unwrap();
        assert_eq!(spec.key_of(&e).as_deref(), Some(a.as_str()));
        e.merchant_id = None;
        assert_eq!(spec.key_of(&e), None);
    }

    #[test]
    fn window_bounds_follow_the_documented_formula() {
        let sliding = WindowSpec {
            granularity_ms: 1_000,
            size_ms: 10_000,
        };
        // [floor(t/g)*g + g - size, t]
        assert_eq!(sliding.lower_bound(25_400), 16_000);
        assert_eq!(sliding.lower_bound(25_000), 16_000);
        let tumbling = WindowSpec {
            granularity_ms: 10_000,
            size_ms: 10_000,
        };
        assert_eq!(tumbling.lower_bound(25_400), 20_000);
        let hopping = WindowSpec {
            granularity_ms: 5_000,
            size_ms: 15_000,
        };
        assert_eq!(hopping.lower_bound(25_400), 15_000);
        assert_eq!(hopping.bucket_start(25_400), 25_000);
    }
}
