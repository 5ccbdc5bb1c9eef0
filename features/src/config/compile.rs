//! Compilation and validation of feature definitions: a [`FeatureDef`] becomes a [`Feature`]
//! (field defaults applied, window reduced to a [`WindowSpec`], filter compiled to
//! [`CompiledPredicate`]s) and its entity to a [`KeySpec`], every problem collected and named
//! by feature; compiled features are then grouped by key spec into [`FeatureGroup`]s. The
//! limits and defaults the validation applies live here too. The window-output compiler
//! (`crate::window_output::config`) reuses the entity, window and predicate compilers.

use std::borrow::Cow;
use std::time::Duration;

use riskstream_common::Event;

use super::defs::{Aggregation, FeatureDef, FilterDef, Predicate, Scalar, WindowDef, label};
use super::fields::{ENTITY_SPEC_SEPARATOR, EventField, KeySpec, MAX_KEY_PARTS, WindowSpec};
use crate::error::FeatureProblem;

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

/// Validates and compiles one definition (`i`: its index, for unnamed features): `None` if it
/// has any problem, each pushed to `problems`.
pub(super) fn compile(
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

/// Groups compiled features by entity key spec: groups in order of first appearance, the
/// features of a group in input order, each group's longest window the largest of its features'.
pub(super) fn group_by_key_spec(compiled: Vec<(KeySpec, Feature)>) -> Vec<FeatureGroup> {
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
    groups
}
