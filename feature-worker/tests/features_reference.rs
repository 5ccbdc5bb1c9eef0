//! The feature engine against a brute-force reference: for every event, every feature is
//! recomputed from the full event list straight from the definitions in `docs/features.md`
//! (entity key, filter, window bounds, aggregation, per-key retention; no buckets, no cache),
//! and the engine must agree for every event and every feature: property tests on random
//! streams and feature sets, in order and with bounded disorder plus late bursts (minutes to
//! an hour behind, in order among themselves, interleaved), through the worker's reorder core,
//! plus the shipped `config/features.toml` on a generated stream.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use riskstream_common::{Event, FeatureValue};
use riskstream_feature_worker::features::{Feature, FeatureEngine, FeatureSet, StateConfig};
use riskstream_feature_worker::stream::{ClockConfig, PartitionClock};
use support::reference::{Reference, close};
use uuid::Uuid;

/// The state settings of the disorder tests: retention short enough that the longest late
/// bursts go beyond it.
fn test_state_config() -> StateConfig {
    StateConfig {
        allowed_lateness: Duration::from_secs(60),
        retention: Duration::from_secs(20 * 60),
        ..StateConfig::default()
    }
}

/// Runs the engine over `events` in the given (processing) order and compares every value,
/// and the beyond-retention flag, with the reference.
fn check_in_order(
    set: FeatureSet,
    events: &[Event],
    config: StateConfig,
) -> Result<(), TestCaseError> {
    let features: Vec<Feature> = set.features().cloned().collect();
    let engine = FeatureEngine::new(set, config.clone());
    let reference = Reference::new(events, &features, &config);
    let mut values = Vec::new();
    for (i, e) in events.iter().enumerate() {
        values.clear();
        let outcome = engine.process_event_into(e, &mut values);
        prop_assert_eq!(values.len(), features.len());
        prop_assert_eq!(
            outcome.beyond_retention,
            reference.beyond_retention(i),
            "event #{} t={}: beyond-retention flag",
            i,
            e.event_time_ms
        );
        for (fi, (f, got)) in features.iter().zip(&values).enumerate() {
            let want = reference.value(i, fi);
            prop_assert!(
                !(*got == FeatureValue::Null && want != FeatureValue::Null),
                "event #{} t={} feature {}: null where the reference has {:?}",
                i,
                e.event_time_ms,
                f.name(),
                want
            );
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

/// Sorts into event-time order, runs the engine and compares every value with the reference.
fn check(set: FeatureSet, mut events: Vec<Event>) -> Result<(), TestCaseError> {
    events.sort_by_key(|e| (e.event_time_ms, e.event_id));
    check_in_order(set, &events, StateConfig::default())
}

/// Feeds `arrivals` (in arrival order, one per millisecond of simulated wall time) through the
/// worker's reorder core with `reorder_wait_ms`, and returns the order the events are handed
/// to the feature engine.
fn processing_order(arrivals: Vec<Event>, reorder_wait_ms: u64) -> Vec<Event> {
    let t0 = std::time::Instant::now();
    let mut clock = PartitionClock::new(ClockConfig {
        out_of_orderness_ms: 10,
        allowed_lateness_ms: 60_000,
        reorder_wait: Duration::from_millis(reorder_wait_ms),
    });
    let mut out = Vec::with_capacity(arrivals.len());
    for (n, e) in arrivals.into_iter().enumerate() {
        let now = t0 + Duration::from_millis(n as u64);
        clock.admit(e.event_time_ms, e.event_id, e, now);
        out.extend(clock.release(now).into_iter().map(|(e, _)| e));
    }
    out.extend(clock.release_all().into_iter().map(|(e, _)| e));
    out
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

/// A stream in arrival order: an on-time stream (event times a few hundred ms apart, spread
/// over about an hour and a half) shuffled by up to `disorder_ms`, with late bursts
/// interleaved: each burst is a run of events of one card, in order among themselves, 5 to 60
/// minutes behind the point of the stream where it arrives.
fn disordered_stream(seed: u64, n: usize, disorder_ms: i64, bursts: usize) -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let template = |rng: &mut ChaCha8Rng, t: i64, card: Option<String>| {
        let amount = rng
            .random_bool(0.9)
            .then(|| f64::from(rng.random_range(1..500u32)) / 100.0);
        Event {
            event_id: Uuid::from_u128(rng.random()),
            event_time_ms: t,
            account_id: Some(["a1", "a2"][rng.random_range(0..2)].into()),
            card_id: card.or_else(|| {
                rng.random_bool(0.9)
                    .then(|| format!("c{}", rng.random_range(0..4)))
            }),
            device_id: Some(["d1", "d2"][rng.random_range(0..2)].into()),
            ip: None,
            merchant_id: rng
                .random_bool(0.8)
                .then(|| ["m1", "m2"][rng.random_range(0..2)].into()),
            email: None,
            currency: amount.map(|_| "EUR".to_string()),
            amount,
            country: rng
                .random_bool(0.9)
                .then(|| ["DE", "FR", "US"][rng.random_range(0..3)].into()),
            channel: None,
            event_type: Some(
                if rng.random_bool(0.85) {
                    "payment"
                } else {
                    "refund"
                }
                .into(),
            ),
            attributes: Default::default(),
        }
    };
    let mut t = 10_000_000i64;
    let mut on_time: Vec<(i64, Event)> = (0..n)
        .map(|_| {
            // Mostly sub-second gaps, now and then minutes (so an hour and more is covered).
            t += if rng.random_bool(0.03) {
                rng.random_range(60_000..600_000)
            } else {
                rng.random_range(0..1_500)
            };
            let e = template(&mut rng, t, None);
            (t + rng.random_range(0..=disorder_ms), e)
        })
        .collect();
    // Shuffled by up to `disorder_ms`: arrival order is by (time + delay).
    on_time.sort_by_key(|(arrival, e)| (*arrival, e.event_id));
    let mut arrivals: Vec<Event> = on_time.into_iter().map(|(_, e)| e).collect();
    for _ in 0..bursts {
        let at = rng.random_range(0..=arrivals.len());
        let front_ms = arrivals[..at]
            .iter()
            .map(|e| e.event_time_ms)
            .max()
            .unwrap_or(t);
        let behind_ms = rng.random_range(5 * 60_000..=3_600_000);
        let card = Some(format!("c{}", rng.random_range(0..4)));
        let mut bt = front_ms - behind_ms;
        let burst: Vec<Event> = (0..rng.random_range(3..12))
            .map(|_| {
                bt += rng.random_range(0..2_000);
                template(&mut rng, bt, card.clone())
            })
            .collect();
        // Interleave: the burst's events arrive in order, mixed with the on-time stream.
        let mut pos = at;
        for e in burst {
            pos = (pos + rng.random_range(0..3)).min(arrivals.len());
            arrivals.insert(pos, e);
            pos += 1;
        }
    }
    arrivals
}

/// Windows from sub-second to ten minutes.
fn arb_long_window() -> impl Strategy<Value = String> {
    prop_oneof![
        arb_window(),
        (0usize..3, 1i64..11).prop_map(|(kind, k)| match kind {
            0 => format!("{{ kind = \"tumbling\", size = \"{k}m\" }}"),
            1 => format!("{{ kind = \"hopping\", size = \"{k}m\", slide = \"1m\" }}"),
            _ => format!("{{ kind = \"sliding\", size = \"{k}m\", granularity = \"10s\" }}"),
        }),
    ]
}

fn arb_disorder_feature_set() -> impl Strategy<Value = FeatureSet> {
    prop::collection::vec((arb_feature(), arb_long_window()), 1..8).prop_map(|fs| {
        let toml: String = fs
            .iter()
            .enumerate()
            .map(|(i, (body, window))| {
                // Half the features get a window of up to ten minutes instead.
                let body = if i % 2 == 0 {
                    body.lines()
                        .map(|l| {
                            if l.starts_with("window = ") {
                                format!("window = {window}")
                            } else {
                                l.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    body.clone()
                };
                format!("[[feature]]\nname = \"f{i}\"\n{body}\n")
            })
            .collect();
        FeatureSet::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Bounded disorder (up to 3 s) and late bursts (5 to 60 minutes behind), through the
    /// reorder core with and without a reorder wait: every value equals the reference applied
    /// in processing order, and no value is null where the reference has one.
    #[test]
    fn engine_equals_the_reference_on_disordered_streams_with_late_bursts(
        set in arb_disorder_feature_set(),
        seed in any::<u64>(),
        n in 20usize..200,
        disorder_ms in prop_oneof![Just(0i64), 1i64..3_000],
        bursts in 0usize..5,
        reorder_wait_ms in prop_oneof![Just(0u64), 1u64..5],
    ) {
        let arrivals = disordered_stream(seed, n, disorder_ms, bursts);
        let order = processing_order(arrivals.clone(), reorder_wait_ms);
        prop_assert_eq!(order.len(), arrivals.len());
        check_in_order(set, &order, test_state_config())?;
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
