//! Late traffic end to end through the worker's synchronous core (reorder/lateness clock,
//! feature engine, scorer with the shipped configuration), and rules that never fail open:
//! - a card-testing burst that arrives an hour late is declined by the shipped rule, with
//!   real event-time features and the decision flagged `late` with its `lateness_ms`;
//! - a rule over a missing (null) feature gives `review` (or the rule set's `on_rule_error`)
//!   with a `rule_error` reason naming the rule, never `approve`;
//! - a rule set naming an unknown feature is rejected on load and the running set keeps
//!   deciding.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use riskstream_common::{Decision, Event, FeatureValue, Outcome};
use riskstream_feature_worker::config::WorkerConfig;
use riskstream_feature_worker::features::{FeatureEngine, FeatureSet};
use riskstream_feature_worker::scoring::rules::ProblemKind;
use riskstream_feature_worker::scoring::{
    DecideContext, FeatureCatalog, Lists, ModelSet, RulesHandle, Scorer, ScoringConfig, Thresholds,
};
use riskstream_feature_worker::stream::{ClockConfig, PartitionClock};
use riskstream_feature_worker::worker::catalog_of;
use uuid::Uuid;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn shipped_set() -> FeatureSet {
    FeatureSet::from_file(root().join("config/features.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn shipped_scorer(set: &FeatureSet) -> Scorer {
    let cfg = ScoringConfig {
        rules_path: root().join("config/rules.toml"),
        models_dir: root().join("config/models"),
        lists_path: Some(root().join("config/lists/lists.csv")),
        ..ScoringConfig::default()
    };
    Scorer::from_config(&cfg, catalog_of(set)).unwrap_or_else(|e| panic!("{e}"))
}

fn payment(n: u128, t_ms: i64, account: &str, card: &str, amount: f64) -> Event {
    Event {
        event_id: Uuid::from_u128(n),
        event_time_ms: t_ms,
        account_id: Some(account.into()),
        card_id: Some(card.into()),
        device_id: Some(format!("dev-{account}")),
        ip: Some(format!("10.1.{}.{}", n % 200, n % 7)),
        merchant_id: Some("m-1".into()),
        email: None,
        amount: Some(amount),
        currency: Some("EUR".into()),
        country: Some("DE".into()),
        channel: Some("web".into()),
        event_type: Some("payment".into()),
        attributes: Default::default(),
    }
}

fn has_reason(d: &Decision, kind: &str, code: &str) -> bool {
    d.reasons.iter().any(|r| r.kind == kind && r.code == code)
}

/// Runs arrivals through the clock (shipped worker defaults), the engine and the scorer, as
/// the worker's loop does; returns the decisions by event id.
fn run_worker_core(set: FeatureSet, arrivals: Vec<Event>) -> BTreeMap<Uuid, Decision> {
    let w = WorkerConfig::default();
    let scorer = shipped_scorer(&set);
    let engine = FeatureEngine::new(set, w.state.clone());
    let mut clock = PartitionClock::new(ClockConfig {
        out_of_orderness_ms: w.out_of_orderness.as_millis() as i64,
        allowed_lateness_ms: w.state.allowed_lateness.as_millis() as i64,
        reorder_wait: w.reorder_wait,
    });
    let t0 = Instant::now();
    let mut out = BTreeMap::new();
    let mut decide = |ready: Vec<(Event, riskstream_feature_worker::stream::Lateness)>| {
        for (e, lateness) in ready {
            let mut values = Vec::new();
            let outcome = engine.process_event_into(&e, &mut values);
            let features: BTreeMap<String, FeatureValue> = engine
                .feature_set()
                .features()
                .map(|f| f.name().to_string())
                .zip(values)
                .collect();
            let ctx = DecideContext {
                late: lateness.late(),
                lateness_ms: lateness.lateness_ms,
                beyond_retention: outcome.beyond_retention,
                features_incomplete: false,
                ..DecideContext::new("4bf92f3577b34da6a3ce929d0e0e4736")
            };
            out.insert(e.event_id, scorer.decide(&e, &features, &ctx));
        }
    };
    for (i, e) in arrivals.into_iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        clock.admit(e.event_time_ms, e.event_id, e, now);
        decide(clock.release(now));
    }
    decide(clock.release_all());
    out
}

#[test]
fn a_card_burst_arriving_an_hour_late_is_declined_by_the_shipped_card_testing_rule() {
    let set = shipped_set();
    let start_ms = 1_790_000_000_000_i64;
    let hour_ms = 3_600_000;
    // Two hours of ordinary on-time traffic, one payment every 10 s across 50 accounts.
    let mut arrivals: Vec<Event> = (0..720u128)
        .map(|i| {
            let a = format!("acc-{}", i % 50);
            payment(
                i,
                start_ms + i as i64 * 10_000,
                &a,
                &format!("card-{a}"),
                40.0 + (i % 9) as f64,
            )
        })
        .collect();
    // An offline terminal uploads its queue after reconnecting: eight 1.00 payments by one
    // card, 20 s apart, made an hour before the traffic they arrive among, in order, one
    // every few on-time events.
    let burst_start_ms = start_ms + 2 * hour_ms - hour_ms - 5 * 60_000;
    let burst: Vec<Event> = (0..8u128)
        .map(|k| {
            payment(
                10_000 + k,
                burst_start_ms + k as i64 * 20_000,
                "acc-x",
                "card-x",
                1.0,
            )
        })
        .collect();
    for (k, e) in burst.iter().enumerate() {
        arrivals.insert(700 + 3 * k, e.clone());
    }
    let decisions = run_worker_core(set, arrivals);
    for (k, e) in burst.iter().enumerate() {
        let d = &decisions[&e.event_id];
        assert!(d.late, "burst event {k} is late: {d:?}");
        assert!(
            d.lateness_ms > 50 * 60_000,
            "burst event {k}: lateness {}",
            d.lateness_ms
        );
        assert!(has_reason(d, "system", "late_event"));
        // Real features: the burst's own count so far, nothing null that has history.
        assert_eq!(
            d.features["card_small_count_10m"],
            FeatureValue::Number((k + 1) as f64),
            "burst event {k}"
        );
        if k > 0 {
            assert_eq!(
                d.features["card_time_since_last_ms"],
                FeatureValue::Number(20_000.0)
            );
            assert_eq!(
                d.features["card_last_country"],
                FeatureValue::Text("DE".into())
            );
        }
        if k + 1 >= 5 {
            assert_eq!(d.outcome, Outcome::Decline, "burst event {k}: {d:?}");
            assert!(has_reason(d, "rule", "card_testing"), "{:?}", d.reasons);
        } else {
            assert!(!has_reason(d, "rule", "card_testing"), "burst event {k}");
        }
        assert!(!has_reason(d, "system", "rule_error"), "{:?}", d.reasons);
    }
    // The on-time traffic is not affected, and is never late.
    let on_time: Vec<&Decision> = decisions
        .values()
        .filter(|d| d.account_id.as_deref() != Some("acc-x"))
        .collect();
    assert_eq!(on_time.len(), 720);
    assert!(on_time.iter().all(|d| !d.late && d.lateness_ms == 0));
    assert!(
        on_time
            .iter()
            .all(|d| !has_reason(d, "rule", "card_testing"))
    );
}

fn catalog() -> FeatureCatalog {
    FeatureCatalog::numeric(["account_avg_amount_24h", "card_small_count_10m"])
}

fn scorer_with_rules(rules: &str) -> Scorer {
    let cfg = ScoringConfig {
        models_dir: root().join("config/models"),
        ..ScoringConfig::default()
    };
    let models = ModelSet::load_dir(&cfg.models_dir, &catalog_of(&shipped_set()))
        .unwrap_or_else(|e| panic!("{e}"));
    let handle =
        RulesHandle::from_text(rules, Arc::new(catalog())).unwrap_or_else(|e| panic!("{e}"));
    Scorer::new(
        Arc::new(handle),
        models,
        Lists::new(1_000, None),
        Thresholds::default(),
        3,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

const UNGUARDED: &str = r#"
version = "v1"

[[rules]]
name = "big_vs_average"
expression = "event.amount > 3.0 * features.account_avg_amount_24h"
outcome = "challenge"
reason = "big_vs_average"
"#;

fn quiet_features(avg: FeatureValue) -> BTreeMap<String, FeatureValue> {
    let set = shipped_set();
    let mut f: BTreeMap<String, FeatureValue> = set
        .features()
        .map(|f| (f.name().to_string(), f.empty_value()))
        .collect();
    f.insert("account_avg_amount_24h".into(), avg);
    f
}

#[test]
fn a_rule_over_a_missing_feature_gives_review_with_a_rule_error_naming_the_rule() {
    let s = scorer_with_rules(UNGUARDED);
    let ctx = DecideContext::new("4bf92f3577b34da6a3ce929d0e0e4736");
    let e = payment(1, 1_790_000_000_000, "acc-new", "card-new", 20.0);
    // A first-seen account: no average, the rule cannot be evaluated.
    let d = s.decide(&e, &quiet_features(FeatureValue::Null), &ctx);
    assert_eq!(d.outcome, Outcome::Review, "{d:?}");
    let err = d
        .reasons
        .iter()
        .find(|r| r.code == "rule_error")
        .expect("a rule_error reason");
    assert!(err.detail.contains("big_vs_average"), "{}", err.detail);
    // With a value the rule runs normally.
    let d = s.decide(&e, &quiet_features(FeatureValue::Number(5.0)), &ctx);
    assert_eq!(d.outcome, Outcome::Challenge);
    assert!(!has_reason(&d, "system", "rule_error"));

    // The outcome on a rule error is set per rule set; approve is refused.
    let declining = UNGUARDED.replace(
        "version = \"v1\"",
        "version = \"v2\"\non_rule_error = \"decline\"",
    );
    let s = scorer_with_rules(&declining);
    let d = s.decide(&e, &quiet_features(FeatureValue::Null), &ctx);
    assert_eq!(d.outcome, Outcome::Decline);
    let approving = UNGUARDED.replace(
        "version = \"v1\"",
        "version = \"v3\"\non_rule_error = \"approve\"",
    );
    let err = RulesHandle::from_text(&approving, Arc::new(catalog())).unwrap_err();
    assert!(err.has(ProblemKind::Definition, None), "{err}");

    // The null-safe helper: value_or gives a default for an empty window.
    let guarded = UNGUARDED.replace(
        "3.0 * features.account_avg_amount_24h",
        "3.0 * value_or(features.account_avg_amount_24h, 1000000.0)",
    );
    let s = scorer_with_rules(&guarded);
    let d = s.decide(&e, &quiet_features(FeatureValue::Null), &ctx);
    assert!(!has_reason(&d, "system", "rule_error"), "{:?}", d.reasons);
    assert!(!has_reason(&d, "rule", "big_vs_average"));
    let d = s.decide(&e, &quiet_features(FeatureValue::Number(5.0)), &ctx);
    assert_eq!(d.outcome, Outcome::Challenge);
}

#[test]
fn a_rule_set_with_an_unknown_feature_is_rejected_and_the_old_one_keeps_deciding() {
    let s = scorer_with_rules(UNGUARDED);
    let bad = r#"
version = "v9"

[[rules]]
name = "typo"
expression = "features.acount_avg_amount_24h > 1.0"
outcome = "decline"
reason = "typo"
"#;
    let err = s.rules().try_update(bad).unwrap_err();
    assert!(err.has(ProblemKind::UnknownFeature, Some("typo")), "{err}");
    let mistyped = bad.replace(
        "features.acount_avg_amount_24h > 1.0",
        "features.account_avg_amount_24h > 'x'",
    );
    let err = s.rules().try_update(&mistyped).unwrap_err();
    assert!(err.has(ProblemKind::Type, Some("typo")), "{err}");
    assert_eq!(s.rules().version(), "v1");
    let ctx = DecideContext::new("4bf92f3577b34da6a3ce929d0e0e4736");
    let e = payment(1, 1_790_000_000_000, "acc-1", "card-1", 20.0);
    let d = s.decide(&e, &quiet_features(FeatureValue::Number(5.0)), &ctx);
    assert_eq!(d.rules_version, "v1");
    assert!(
        has_reason(&d, "rule", "big_vs_average"),
        "the old set still decides"
    );
}
