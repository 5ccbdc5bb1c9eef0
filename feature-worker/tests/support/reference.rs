//! The brute-force feature reference shared by the property tests and the Kafka tests:
//! every feature recomputed from the full event list (in processing order) straight from the
//! definitions in docs/features.md: entity key, filter, window bounds at bucket granularity,
//! aggregation and per-key retention. No buckets, no cache.

use std::collections::HashSet;
use std::time::Duration;

use riskstream_common::{Event, FeatureValue};
use riskstream_feature_worker::features::{
    Aggregation, Feature, Predicate, Scalar, StateConfig, WindowDef,
};

// ---------------------------------------------------------------------------------------------
// The reference.

pub fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Earliest included event time for an event at `t`, straight from the window definition.
fn window_start(w: &WindowDef, t: i64) -> i64 {
    match *w {
        WindowDef::Tumbling { size } => t.div_euclid(ms(size)) * ms(size),
        WindowDef::Hopping { size, slide } => {
            let slide = ms(slide);
            t.div_euclid(slide) * slide + slide - ms(size)
        }
        WindowDef::Sliding { size, granularity } => {
            let g = granularity.map_or(1_000, ms);
            t.div_euclid(g) * g + g - ms(size)
        }
    }
}

/// Granularity of the window's buckets (the upper edge of an event's window is the end of
/// its bucket: events processed before it with a later time in the same bucket count).
fn granularity(w: &WindowDef) -> i64 {
    match *w {
        WindowDef::Tumbling { size } => ms(size),
        WindowDef::Hopping { slide, .. } => ms(slide),
        WindowDef::Sliding { granularity, .. } => granularity.map_or(1_000, ms),
    }
}

fn bucket_of(w: &WindowDef, t: i64) -> i64 {
    let g = granularity(w);
    t.div_euclid(g) * g
}

fn field_value(e: &Event, field: &str) -> Option<FeatureValue> {
    if field == "amount" {
        e.amount.map(FeatureValue::Number)
    } else {
        e.field_str(field)
            .map(|s| FeatureValue::Text(s.to_string()))
    }
}

fn scalar_eq(v: &FeatureValue, s: &Scalar) -> bool {
    match (v, s) {
        (FeatureValue::Number(a), Scalar::Number(b)) => a == b,
        (FeatureValue::Text(a), Scalar::Text(b)) => a == b,
        _ => false,
    }
}

fn predicate_holds(e: &Event, p: &Predicate) -> bool {
    let v = field_value(e, &p.field);
    let num = v.as_ref().and_then(FeatureValue::as_f64);
    if let Some(s) = &p.equals {
        return v.is_some_and(|v| scalar_eq(&v, s));
    }
    if let Some(s) = &p.not_equals {
        return v.is_none_or(|v| !scalar_eq(&v, s));
    }
    if let Some(list) = &p.in_list {
        return v.is_some_and(|v| list.iter().any(|s| scalar_eq(&v, s)));
    }
    if let Some(list) = &p.not_in {
        return v.is_none_or(|v| list.iter().all(|s| !scalar_eq(&v, s)));
    }
    if let Some(x) = p.lt {
        return num.is_some_and(|n| n < x);
    }
    if let Some(x) = p.le {
        return num.is_some_and(|n| n <= x);
    }
    if let Some(x) = p.gt {
        return num.is_some_and(|n| n > x);
    }
    if let Some(x) = p.ge {
        return num.is_some_and(|n| n >= x);
    }
    if let Some(present) = p.present {
        return v.is_some() == present;
    }
    unreachable!("validated predicates have an operator")
}

fn passes(e: &Event, f: &Feature) -> bool {
    f.def()
        .filter
        .as_ref()
        .is_none_or(|fl| fl.predicates().iter().all(|p| predicate_holds(e, p)))
}

/// The entity key as the tuple of its field values (`None`: a field is missing).
fn key_tuple(e: &Event, f: &Feature) -> Option<Vec<String>> {
    f.def()
        .entity
        .split('+')
        .map(|name| e.field_str(name.trim()).map(str::to_string))
        .collect()
}

/// The value of feature `f` for `events[i]`, `events` being in processing order, with a
/// per-key retention of `retention_ms` (docs/features.md, "Time, disorder and lateness"):
/// - the key's newest time `M` is the largest event time of the key among `events[..=i]`;
/// - an earlier event `j` of the key is retained if its bucket starts at or after the window
///   start of time `M - retention_ms`;
/// - the window of `events[i]` is every retained event (and itself) whose bucket lies in
///   `[window_start(t), bucket_of(t)]`;
/// - `last` / `time_since_last` look at the retained event with the greatest
///   `(time, processing position)` at or before `t`, if its time is in the window.
fn reference_value(r: &Reference<'_>, i: usize, fi: usize) -> FeatureValue {
    let (events, f, retention_ms) = (r.events, &r.features[fi], r.retention_ms[fi]);
    let keys = &r.keys[fi];
    let cur = &events[i];
    let agg = f.aggregation();
    let Some(key) = keys[i].as_ref() else {
        return if agg.zero_when_empty() {
            FeatureValue::Number(0.0)
        } else {
            FeatureValue::Null
        };
    };
    let def = f.def();
    let w = def.window.as_ref().expect("validated");
    let t = cur.event_time_ms;
    let lo = window_start(w, t);
    let hi = bucket_of(w, t);
    let same_key = |j: usize| keys[j].as_ref() == Some(key);
    let newest = (0..=i)
        .filter(|&j| same_key(j))
        .map(|j| events[j].event_time_ms)
        .max()
        .unwrap_or(t);
    let keep = window_start(w, newest - retention_ms);
    let retained =
        |j: usize| j == i || (same_key(j) && bucket_of(w, events[j].event_time_ms) >= keep);
    let field = f.field().map(|fl| fl.name());
    // Events of the key in the window, passing the filter.
    let in_window = |j: usize| {
        let e = &events[j];
        let b = bucket_of(w, e.event_time_ms);
        retained(j) && b >= lo && b <= hi && same_key(j) && passes(e, f)
    };
    let set: Vec<&Event> = (0..=i)
        .filter(|&j| in_window(j))
        .map(|j| &events[j])
        .collect();
    let nums: Vec<f64> = set
        .iter()
        .filter_map(|e| {
            field
                .and_then(|fl| field_value(e, fl))
                .and_then(|v| v.as_f64())
        })
        .collect();
    // The previous event: retained, passing, at or before t, greatest (time, position).
    let previous = |with_value: bool| {
        (0..i)
            .filter(|&j| retained(j) && same_key(j) && passes(&events[j], f))
            .filter(|&j| events[j].event_time_ms <= t)
            .filter(|&j| !with_value || field.and_then(|fl| field_value(&events[j], fl)).is_some())
            .max_by_key(|&j| (events[j].event_time_ms, j))
            .filter(|&j| events[j].event_time_ms >= lo)
    };
    match agg {
        Aggregation::Count => FeatureValue::Number(set.len() as f64),
        Aggregation::Sum => FeatureValue::Number(nums.iter().sum()),
        Aggregation::Avg if nums.is_empty() => FeatureValue::Null,
        Aggregation::Avg => FeatureValue::Number(nums.iter().sum::<f64>() / nums.len() as f64),
        Aggregation::Min => nums
            .iter()
            .copied()
            .reduce(f64::min)
            .map_or(FeatureValue::Null, FeatureValue::Number),
        Aggregation::Max => nums
            .iter()
            .copied()
            .reduce(f64::max)
            .map_or(FeatureValue::Null, FeatureValue::Number),
        Aggregation::DistinctCount => {
            let fl = field.expect("validated");
            let distinct: HashSet<String> = set
                .iter()
                .filter_map(|e| field_value(e, fl))
                .map(|v| format!("{v:?}"))
                .collect();
            FeatureValue::Number(distinct.len() as f64)
        }
        Aggregation::Last => {
            let fl = field.expect("validated");
            previous(true)
                .and_then(|j| field_value(&events[j], fl))
                .unwrap_or(FeatureValue::Null)
        }
        Aggregation::TimeSinceLast => previous(false).map_or(FeatureValue::Null, |j| {
            FeatureValue::Number((t - events[j].event_time_ms) as f64)
        }),
    }
}

/// The brute-force reference over `events` in processing order.
pub struct Reference<'a> {
    events: &'a [Event],
    features: &'a [Feature],
    /// Per feature, per event: the entity key.
    keys: Vec<Vec<Option<Vec<String>>>>,
    /// Per feature: the retention of its entity's keys, the larger of the configured one and
    /// the entity's longest window plus the allowed lateness.
    retention_ms: Vec<i64>,
}

impl<'a> Reference<'a> {
    pub fn new(events: &'a [Event], features: &'a [Feature], config: &StateConfig) -> Self {
        let size_ms = |f: &Feature| match *f.def().window.as_ref().expect("validated") {
            WindowDef::Tumbling { size }
            | WindowDef::Hopping { size, .. }
            | WindowDef::Sliding { size, .. } => ms(size),
        };
        let retention_ms = features
            .iter()
            .map(|f| {
                let longest = features
                    .iter()
                    .filter(|g| g.def().entity == f.def().entity)
                    .map(size_ms)
                    .max()
                    .unwrap_or(0);
                (longest + ms(config.allowed_lateness)).max(ms(config.retention))
            })
            .collect();
        let keys = features
            .iter()
            .map(|f| events.iter().map(|e| key_tuple(e, f)).collect())
            .collect();
        Self {
            events,
            features,
            keys,
            retention_ms,
        }
    }

    /// The value of feature `features[fi]` for `events[i]`.
    pub fn value(&self, i: usize, fi: usize) -> FeatureValue {
        reference_value(self, i, fi)
    }

    /// Whether `events[i]` is older than its key's newest earlier event by more than the
    /// retention, for some feature's key.
    pub fn beyond_retention(&self, i: usize) -> bool {
        let t = self.events[i].event_time_ms;
        (0..self.features.len()).any(|fi| {
            let keys = &self.keys[fi];
            let Some(key) = keys[i].as_ref() else {
                return false;
            };
            (0..i).any(|j| {
                keys[j].as_ref() == Some(key)
                    && t < self.events[j].event_time_ms - self.retention_ms[fi]
            })
        })
    }
}

pub fn close(a: &FeatureValue, b: &FeatureValue) -> bool {
    match (a, b) {
        (FeatureValue::Number(x), FeatureValue::Number(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}
