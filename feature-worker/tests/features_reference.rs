//! The feature engine against a brute-force reference: for every event, every feature is
//! recomputed from the full event list straight from the definitions in `docs/features.md`
//! (entity key, filter, window bounds, aggregation; no buckets, no cache), and the engine must
//! agree for every event and every feature (property test on random streams and feature sets,
//! plus the shipped `config/features.toml` on a generated stream).

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use riskstream_common::{Event, FeatureValue};
use riskstream_feature_worker::features::{
    Aggregation, Feature, FeatureEngine, FeatureSet, Predicate, Scalar, StateConfig, WindowDef,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The reference.

fn ms(d: Duration) -> i64 {
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

/// The value of feature `f` for `events[i]`, `events` being in processing order.
fn reference_value(events: &[Event], i: usize, f: &Feature) -> FeatureValue {
    let cur = &events[i];
    let agg = f.aggregation();
    let Some(key) = key_tuple(cur, f) else {
        return if agg.zero_when_empty() {
            FeatureValue::Number(0.0)
        } else {
            FeatureValue::Null
        };
    };
    let def = f.def();
    let lo = window_start(def.window.as_ref().expect("validated"), cur.event_time_ms);
    let field = f.field().map(|fl| fl.name());
    // Events of the key in the window up to and including the current one, passing the filter.
    let in_window = |j: usize| {
        let e = &events[j];
        e.event_time_ms >= lo && key_tuple(e, f).as_ref() == Some(&key) && passes(e, f)
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
    let previous = || (0..i).rev().find(|&j| in_window(j)).map(|j| &events[j]);
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
            (0..i)
                .rev()
                .filter(|&j| in_window(j))
                .find_map(|j| field_value(&events[j], fl))
                .unwrap_or(FeatureValue::Null)
        }
        Aggregation::TimeSinceLast => previous().map_or(FeatureValue::Null, |p| {
            FeatureValue::Number((cur.event_time_ms - p.event_time_ms) as f64)
        }),
    }
}

fn close(a: &FeatureValue, b: &FeatureValue) -> bool {
    match (a, b) {
        (FeatureValue::Number(x), FeatureValue::Number(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// Sorts into processing order, runs the engine and compares every value with the reference.
fn check(set: FeatureSet, mut events: Vec<Event>) -> Result<(), TestCaseError> {
    events.sort_by_key(|e| (e.event_time_ms, e.event_id));
    let features: Vec<Feature> = set.features().cloned().collect();
    let engine = FeatureEngine::new(set, StateConfig::default());
    let mut values = Vec::new();
    for (i, e) in events.iter().enumerate() {
        values.clear();
        engine.process_event_into(e, &mut values);
        prop_assert_eq!(values.len(), features.len());
        for (f, got) in features.iter().zip(&values) {
            let want = reference_value(&events, i, f);
            prop_assert!(
                close(got, &want),
                "event #{} ({:?} t={}) feature {}: engine {:?}, reference {:?}",
                i,
                e.event_id,
                e.event_time_ms,
                f.name(),
                got,
                want
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Random streams and feature sets.

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        4 => prop::sample::select(options).prop_map(|s| Some(s.to_string())),
    ]
}

prop_compose! {
    fn arb_event()(
        slot in 0i64..240,
        jitter in prop_oneof![Just(0i64), 0i64..250],
        id in any::<u128>(),
        account in pick(&["a1", "a2"]),
        card in pick(&["c1", "c2", "c3"]),
        merchant in pick(&["m1", "m2"]),
        device in pick(&["d1", "d2"]),
        country in pick(&["DE", "FR", "US"]),
        event_type in pick(&["payment", "refund"]),
        amount in prop_oneof![1 => Just(None), 4 => (0u32..500).prop_map(|c| Some(f64::from(c) / 100.0))],
    ) -> Event {
        Event {
            event_id: Uuid::from_u128(id),
            // Coarse slots make ties (same millisecond) common.
            event_time_ms: slot * 250 + jitter,
            account_id: account,
            card_id: card,
            device_id: device,
            ip: None,
            merchant_id: merchant,
            email: None,
            currency: amount.map(|_| "EUR".to_string()),
            amount,
            country,
            channel: None,
            event_type,
            attributes: Default::default(),
        }
    }
}

fn arb_window() -> impl Strategy<Value = String> {
    (
        0usize..3,
        prop::sample::select(vec![250i64, 1_000, 2_000, 5_000]),
        1i64..6,
    )
        .prop_map(|(kind, g, k)| match kind {
            0 => format!("{{ kind = \"tumbling\", size = \"{}ms\" }}", g * k),
            1 => format!(
                "{{ kind = \"hopping\", size = \"{}ms\", slide = \"{g}ms\" }}",
                g * k
            ),
            _ => format!(
                "{{ kind = \"sliding\", size = \"{}ms\", granularity = \"{g}ms\" }}",
                g * k
            ),
        })
}

fn arb_filter() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "filter = { field = \"type\", equals = \"payment\" }",
        "filter = { field = \"amount\", lt = 2.0 }",
        "filter = { field = \"amount\", ge = 1.5 }",
        "filter = { field = \"country\", in = [\"DE\", \"US\"] }",
        "filter = { field = \"country\", not_equals = \"DE\" }",
        "filter = { field = \"merchant_id\", present = true }",
        "filter = [{ field = \"type\", equals = \"payment\" }, { field = \"amount\", le = 3.0 }]",
    ])
    .prop_map(str::to_string)
}

fn arb_feature() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            ("count", ""),
            ("sum", "field = \"amount\""),
            ("avg", "field = \"amount\""),
            ("min", "field = \"amount\""),
            ("max", "field = \"amount\""),
            ("distinct_count", "field = \"card_id\"\ndistinct_exact_limit = 4096"),
            ("distinct_count", "field = \"amount\"\ndistinct_exact_limit = 4096"),
            ("last", "field = \"country\""),
            ("last", "field = \"amount\""),
            ("time_since_last", ""),
        ]),
        prop::sample::select(vec!["account_id", "card_id", "device_id", "card_id+merchant_id"]),
        arb_window(),
        arb_filter(),
    )
        .prop_map(|((agg, field), entity, window, filter)| {
            format!(
                "aggregation = \"{agg}\"\n{field}\nentity = \"{entity}\"\nwindow = {window}\n{filter}\n"
            )
        })
}

fn arb_feature_set() -> impl Strategy<Value = FeatureSet> {
    prop::collection::vec(arb_feature(), 1..8).prop_map(|fs| {
        let toml: String = fs
            .iter()
            .enumerate()
            .map(|(i, body)| format!("[[feature]]\nname = \"f{i}\"\n{body}\n"))
            .collect();
        FeatureSet::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_equals_the_reference_on_random_streams(
        set in arb_feature_set(),
        events in prop::collection::vec(arb_event(), 1..120),
    ) {
        check(set, events)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped feature set on a generated day of traffic.

fn generated_events(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start_ms = 1_790_000_000_000_i64;
    let mut t = start_ms;
    (0..n)
        .map(|_| {
            // Bursts and gaps: mostly seconds apart, sometimes hours.
            t += if rng.random_bool(0.02) {
                rng.random_range(0..4 * 3_600_000)
            } else {
                rng.random_range(0..3_000)
            };
            let account = rng.random_range(0..20);
            let small = rng.random_bool(0.2);
            let amount = rng.random_bool(0.9).then(|| {
                if small {
                    f64::from(rng.random_range(1..200u32)) / 100.0
                } else {
                    f64::from(rng.random_range(100..50_000u32)) / 100.0
                }
            });
            Event {
                event_id: Uuid::from_u128(rng.random()),
                event_time_ms: t,
                account_id: Some(format!("acc-{account}")),
                card_id: rng
                    .random_bool(0.95)
                    .then(|| format!("card-{}-{}", account, rng.random_range(0..2))),
                device_id: Some(format!("dev-{}", rng.random_range(0..15))),
                ip: Some(format!("10.0.0.{}", rng.random_range(0..10))),
                merchant_id: Some(format!("m-{}", rng.random_range(0..8))),
                email: None,
                currency: amount.map(|_| "EUR".to_string()),
                amount,
                country: rng
                    .random_bool(0.9)
                    .then(|| ["DE", "FR", "NL"][rng.random_range(0..3)].to_string()),
                channel: Some("web".into()),
                event_type: Some(
                    if rng.random_bool(0.9) {
                        "payment"
                    } else {
                        "refund"
                    }
                    .into(),
                ),
                attributes: Default::default(),
            }
        })
        .collect()
}

#[test]
fn shipped_feature_set_equals_the_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/features.toml");
    let set = FeatureSet::from_file(path).unwrap_or_else(|e| panic!("{e}"));
    assert!((12..=20).contains(&set.len()), "{} features", set.len());
    check(set, generated_events(1_500, 7)).unwrap();
}
