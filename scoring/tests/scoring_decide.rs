//! The decision: thresholds and rule overrides, champion/challenger routing and shadows, lists
//! (precedence and TTL), scoring errors, late events, counters, and the shipped configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use riskstream_common::{Decision, Event, EventDecoder, FeatureValue, Outcome};
use riskstream_scoring::models::LogisticModel;
use riskstream_scoring::models::logistic::{LogisticInput, LogisticSpec};
use riskstream_scoring::{
    DecideContext, FeatureCatalog, FeatureKind, ListKind, ListUpdate, Lists, Model, ModelKind,
    ModelSet, Route, Router, RulesHandle, Scorer, ScoringConfig, Thresholds,
};
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn catalog() -> FeatureCatalog {
    let mut c = FeatureCatalog::numeric([
        "risk",
        "other",
        "card_small_count_10m",
        "account_avg_amount_24h",
    ]);
    c.insert("card_last_country", FeatureKind::Text);
    c
}

fn event_for(account: &str, card: &str, amount: f64) -> Event {
    EventDecoder::default()
        .decode_value(
            json!({"event_time": 1_700_000_000_000_i64, "account_id": account, "card_id": card,
                   "device_id": "dev-1", "amount": amount, "currency": "EUR", "country": "DE"}),
            1_800_000_000_000,
        )
        .expect("valid test event")
}

fn event(amount: f64) -> Event {
    event_for("acc-1", "card-1", amount)
}

/// `p = sigmoid(intercept + weight * input)`.
fn lr(name: &str, version: &str, intercept: f64, input: &str, weight: f64) -> Model {
    let spec = LogisticSpec {
        intercept,
        inputs: vec![LogisticInput {
            name: input.into(),
            weight,
            mean: None,
            std: None,
            missing: None,
        }],
    };
    Model::new(
        name,
        version,
        ModelKind::Logistic(LogisticModel::new(spec, &catalog()).unwrap()),
    )
}

const RULES: &str = r#"
version = "v1"

[[rules]]
name = "card_testing"
expression = "features.card_small_count_10m >= 5.0 && event.amount < 2.0"
outcome = "decline"
reason = "card_testing"

[[rules]]
name = "small_amount_bonus"
expression = "event.amount < 10.0 && event.amount >= 5.0"
score = 0.2
reason = "small_amount"
"#;

fn scorer_with(rules: &str, share: f64, lists: Lists) -> Scorer {
    let models = ModelSet::new(
        lr("champ", "1", 0.0, "risk", 1.0),
        Some(lr("chall", "2", 0.0, "risk", 2.0)),
        vec![lr("shadow", "3", -1.0, "other", 0.5)],
        Router::new("account_id", "test-salt", share),
    )
    .unwrap();
    let handle = RulesHandle::from_text(rules, Arc::new(catalog())).unwrap();
    Scorer::new(Arc::new(handle), models, lists, Thresholds::default(), 3).unwrap()
}

fn scorer() -> Scorer {
    scorer_with(RULES, 0.0, Lists::new(1_000, None))
}

fn feats(risk: f64) -> BTreeMap<String, FeatureValue> {
    BTreeMap::from([
        ("risk".to_string(), FeatureValue::Number(risk)),
        (
            "card_small_count_10m".to_string(),
            FeatureValue::Number(0.0),
        ),
    ])
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn has_reason(d: &Decision, kind: &str, code: &str) -> bool {
    d.reasons.iter().any(|r| r.kind == kind && r.code == code)
}

#[test]
fn score_thresholds_and_rule_score_adjustments() {
    let s = scorer();
    let ctx = DecideContext::new(TRACE_ID);
    // sigmoid(0.2) = 0.5498: review.
    let d = s.decide(&event(50.0), &feats(0.2), &ctx);
    assert_eq!(d.outcome, Outcome::Review);
    assert!((d.score - sigmoid(0.2)).abs() < 1e-12);
    assert!(has_reason(&d, "model", "champ"), "{:?}", d.reasons);
    let top = d
        .reasons
        .iter()
        .find(|r| r.kind == "feature")
        .expect("a contribution");
    assert_eq!((top.code.as_str(), top.contribution), ("risk", Some(0.2)));
    // The score rule adds 0.2: 0.7498, challenge.
    let d = s.decide(&event(7.0), &feats(0.2), &ctx);
    assert_eq!(d.outcome, Outcome::Challenge);
    assert!((d.score - (sigmoid(0.2) + 0.2)).abs() < 1e-12);
    assert!(has_reason(&d, "rule", "small_amount"));
    // Low score, nothing fires: approve, no model reason.
    let d = s.decide(&event(50.0), &feats(-3.0), &ctx);
    assert_eq!(d.outcome, Outcome::Approve);
    assert!(!has_reason(&d, "model", "champ"));
    assert_eq!(d.rules_version, "v1");
    assert_eq!(d.trace_id, TRACE_ID);
    assert_eq!(d.account_id.as_deref(), Some("acc-1"));
    assert_eq!(d.features.get("risk"), Some(&FeatureValue::Number(-3.0)));
}

#[test]
fn a_forcing_rule_beats_a_low_score() {
    let s = scorer();
    let mut f = feats(-4.0);
    f.insert("card_small_count_10m".into(), FeatureValue::Number(6.0));
    let d = s.decide(&event(1.0), &f, &DecideContext::new(TRACE_ID));
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(has_reason(&d, "rule", "card_testing"), "{:?}", d.reasons);
    assert!(
        d.score < 0.1,
        "the score is the model's, the outcome the rule's"
    );
}

#[test]
fn challenger_share_is_within_tolerance_and_every_key_is_stable() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("acc-{i}")).collect();
    let tenth = Router::new("account_id", "riskstream-challenger", 0.1);
    let half = tenth.with_share(0.5);
    let count = |r: &Router| {
        keys.iter()
            .filter(|k| r.route(Some(k)) == Route::Challenger)
            .count()
    };
    let (n10, n50) = (count(&tenth), count(&half));
    assert!(
        (800..=1_200).contains(&n10),
        "10% share took {n10} of 10000"
    );
    assert!(
        (4_700..=5_300).contains(&n50),
        "50% share took {n50} of 10000"
    );
    assert_eq!(count(&tenth.with_share(1.0)), keys.len());
    assert_eq!(count(&tenth.with_share(0.0)), 0);
    // Stable per key (a fresh router agrees), and raising the share only adds keys.
    let again = Router::new("account_id", "riskstream-challenger", 0.1);
    for k in &keys {
        assert_eq!(tenth.route(Some(k)), again.route(Some(k)), "{k}");
        if tenth.route(Some(k)) == Route::Challenger {
            assert_eq!(
                half.route(Some(k)),
                Route::Challenger,
                "{k} left the challenger at 50%"
            );
        }
    }
}

#[test]
fn decisions_follow_the_route_and_record_every_model() {
    let s = scorer_with(RULES, 0.5, Lists::new(100, None));
    let router = s.models().router().clone();
    let mut f = feats(0.5);
    f.insert("other".into(), FeatureValue::Number(2.0));
    let ctx = DecideContext::new(TRACE_ID);
    let mut on_challenger = 0;
    for i in 0..300 {
        let account = format!("acc-{i}");
        let d = s.decide(&event_for(&account, "card-1", 50.0), &f, &ctx);
        let by_role = |role: &str| {
            d.models
                .iter()
                .find(|m| m.role == role)
                .unwrap_or_else(|| panic!("{role} missing"))
        };
        let challenger = router.route(Some(&account)) == Route::Challenger;
        on_challenger += usize::from(challenger);
        assert_eq!(by_role("champion").acted_on, !challenger);
        assert_eq!(by_role("challenger").acted_on, challenger);
        assert!(!by_role("shadow").acted_on);
        assert_eq!(
            (
                by_role("shadow").model.as_str(),
                by_role("shadow").version.as_str()
            ),
            ("shadow", "3")
        );
        assert!((by_role("shadow").score - sigmoid(0.0)).abs() < 1e-12);
        let expected = if challenger {
            sigmoid(1.0)
        } else {
            sigmoid(0.5)
        };
        assert!((d.score - expected).abs() < 1e-12, "{account}");
        // The same key decides the same way again.
        let again = s.decide(&event_for(&account, "card-2", 50.0), &f, &ctx);
        assert_eq!(again.models, d.models);
    }
    assert!(
        (100..=200).contains(&on_challenger),
        "{on_challenger} of 300 at 50%"
    );

    let stats = s.model_stats();
    let champ = stats.iter().find(|m| m.role == "champion").unwrap();
    let chall = stats.iter().find(|m| m.role == "challenger").unwrap();
    let shadow = stats.iter().find(|m| m.role == "shadow").unwrap();
    assert_eq!((champ.scored, chall.scored, shadow.scored), (600, 600, 600));
    assert_eq!(champ.acted_on + chall.acted_on, 600);
    assert_eq!(chall.acted_on, 2 * on_challenger as u64);
    assert_eq!(shadow.acted_on, 0);
    assert_eq!(champ.scores.count, 600);
    assert_eq!(champ.latency_us.count, 600);

    s.set_challenger_share(1.0).unwrap();
    let d = s.decide(&event_for("acc-x", "c", 50.0), &f, &ctx);
    assert!(
        d.models
            .iter()
            .any(|m| m.role == "challenger" && m.acted_on)
    );
    assert_eq!(
        s.model_stats()
            .iter()
            .find(|m| m.role == "champion")
            .unwrap()
            .scored,
        601,
        "counters survive"
    );
    assert!(s.set_challenger_share(1.5).is_err());
}

#[test]
fn list_precedence_block_then_rules_then_allow_then_score() {
    let lists = Lists::new(100, None);
    for line in [
        "card_id,card-bad,block",
        "account_id,acc-vip,allow",
        "account_id,acc-both,allow",
        "card_id,card-both,block",
    ] {
        lists.apply(&ListUpdate::parse_line(line).unwrap()).unwrap();
    }
    let s = scorer_with(RULES, 0.0, lists);
    let ctx = DecideContext::new(TRACE_ID);
    // Block: decline even at a low score.
    let d = s.decide(&event_for("acc-1", "card-bad", 50.0), &feats(-5.0), &ctx);
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(has_reason(&d, "list", "block_list"), "{:?}", d.reasons);
    assert!(!d.models.is_empty(), "models are still scored and recorded");
    // Allow: approve even at a high score.
    let d = s.decide(&event_for("acc-vip", "card-1", 50.0), &feats(5.0), &ctx);
    assert_eq!(d.outcome, Outcome::Approve);
    assert!(has_reason(&d, "list", "allow_list"));
    // Allow, but a rule forces decline: the rule wins.
    let mut f = feats(5.0);
    f.insert("card_small_count_10m".into(), FeatureValue::Number(9.0));
    let d = s.decide(&event_for("acc-vip", "card-1", 1.0), &f, &ctx);
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(has_reason(&d, "rule", "card_testing"));
    // Both lists: block wins.
    let d = s.decide(
        &event_for("acc-both", "card-both", 50.0),
        &feats(-5.0),
        &ctx,
    );
    assert_eq!(d.outcome, Outcome::Decline);
    let st = s.stats();
    assert_eq!((st.list_block_hits, st.list_allow_hits), (2, 3));
}

#[test]
fn list_entries_expire_after_their_ttl() {
    // Default TTL 300 ms; one entry with its own long TTL.
    let lists = Lists::new(100, Some(Duration::from_millis(300)));
    lists
        .load_str("card_id,card-short,block\ncard_id,card-long,block,10m\n")
        .unwrap();
    lists
        .apply_json(br#"{"entity":"ip","value":"192.0.2.1","list":"allow","ttl":"300ms"}"#)
        .unwrap();
    assert!(lists.contains("card_id", "card-short", ListKind::Block));
    assert!(lists.contains("ip", "192.0.2.1", ListKind::Allow));
    let s = scorer_with(RULES, 0.0, lists.clone());
    let ctx = DecideContext::new(TRACE_ID);
    assert_eq!(
        s.decide(&event_for("a", "card-short", 50.0), &feats(-5.0), &ctx)
            .outcome,
        Outcome::Decline
    );

    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !lists.contains("card_id", "card-short", ListKind::Block),
        "default ttl expired"
    );
    assert!(
        !lists.contains("ip", "192.0.2.1", ListKind::Allow),
        "entry ttl expired"
    );
    assert!(
        lists.contains("card_id", "card-long", ListKind::Block),
        "10m entry still there"
    );
    assert_eq!(
        s.decide(&event_for("a", "card-short", 50.0), &feats(-5.0), &ctx)
            .outcome,
        Outcome::Approve
    );
    assert_eq!(
        s.decide(&event_for("a", "card-long", 50.0), &feats(-5.0), &ctx)
            .outcome,
        Outcome::Decline
    );
}

#[test]
fn scoring_errors_give_review_never_a_panic_or_no_decision() {
    let s = scorer();
    let ctx = DecideContext::new(TRACE_ID);
    // A non-finite feature value.
    let d = s.decide(&event(50.0), &feats(f64::NAN), &ctx);
    assert_eq!(d.outcome, Outcome::Review);
    assert!(has_reason(&d, "system", "scoring_error"), "{:?}", d.reasons);
    assert!(d.models.is_empty());
    assert_eq!(d.rules_version, "v1");
    // The acted-on model's input is text.
    let mut f = feats(0.0);
    f.insert("risk".into(), FeatureValue::Text("high".into()));
    let d = s.decide(&event(50.0), &f, &ctx);
    assert_eq!(d.outcome, Outcome::Review);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.code == "scoring_error" && r.detail.contains("champ")),
        "{:?}",
        d.reasons
    );
    assert_eq!(s.stats().scoring_errors, 2);
    // A shadow failing does not matter: it is left out and counted.
    let mut f = feats(-3.0);
    f.insert("other".into(), FeatureValue::Text("x".into()));
    let d = s.decide(&event(50.0), &f, &ctx);
    assert_eq!(d.outcome, Outcome::Approve);
    assert!(!d.models.iter().any(|m| m.role == "shadow"));
    assert_eq!(
        s.model_stats()
            .iter()
            .find(|m| m.role == "shadow")
            .unwrap()
            .errors,
        1
    );
}

#[test]
fn a_runtime_rule_error_is_a_reason_and_the_other_rules_still_run() {
    let rules = r#"
version = "v1"
[[rules]]
name = "spike"
expression = "event.amount > 5.0 * features.account_avg_amount_24h"
score = 0.3
reason = "amount_spike"
[[rules]]
name = "card_testing"
expression = "features.card_small_count_10m >= 5.0 && event.amount < 2.0"
outcome = "decline"
reason = "card_testing"
"#;
    let s = scorer_with(rules, 0.0, Lists::new(10, None));
    let mut f = feats(-3.0);
    f.insert("card_small_count_10m".into(), FeatureValue::Number(7.0));
    f.insert("account_avg_amount_24h".into(), FeatureValue::Null);
    let d = s.decide(&event(1.0), &f, &DecideContext::new(TRACE_ID));
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(has_reason(&d, "rule", "card_testing"));
    let err = d
        .reasons
        .iter()
        .find(|r| r.code == "rule_error")
        .expect("rule_error reason");
    assert!(err.detail.starts_with("rule spike:"), "{}", err.detail);
    assert_eq!(s.stats().rule_errors, 1);
    let (version, per_rule) = s.rule_stats();
    assert_eq!(version, "v1");
    assert_eq!((per_rule[0].errors, per_rule[1].fired), (1, 1));
}

#[test]
fn a_bad_rule_update_is_rejected_and_the_old_set_keeps_deciding() {
    let s = scorer();
    let mut f = feats(-3.0);
    f.insert("card_small_count_10m".into(), FeatureValue::Number(6.0));
    let ctx = DecideContext::new(TRACE_ID);
    assert_eq!(s.decide(&event(1.0), &f, &ctx).outcome, Outcome::Decline);

    let bad = RULES
        .replace("version = \"v1\"", "version = \"v2\"")
        .replace(">= 5.0", ">= \"five\"");
    assert!(s.rules().try_update(&bad).is_err());
    let d = s.decide(&event(1.0), &f, &ctx);
    assert_eq!(
        (d.outcome, d.rules_version.as_str()),
        (Outcome::Decline, "v1")
    );

    let good = "version = \"v2\"\n[[rules]]\nname = \"tiny\"\nexpression = \"event.amount < 0.5\"\noutcome = \"review\"\nreason = \"tiny\"\n";
    assert_eq!(s.rules().try_update(good).unwrap(), "v2");
    let d = s.decide(&event(1.0), &f, &ctx);
    assert_eq!(
        (d.outcome, d.rules_version.as_str()),
        (Outcome::Approve, "v2")
    );
}

#[test]
fn a_late_event_is_flagged_with_a_reason() {
    let s = scorer();
    let ctx = DecideContext {
        late: true,
        lateness_ms: 42_000,
        ..DecideContext::new(TRACE_ID)
    };
    let d = s.decide(&event(50.0), &feats(-3.0), &ctx);
    assert!(d.late);
    assert_eq!(d.lateness_ms, 42_000);
    assert!(has_reason(&d, "system", "late_event"));
    assert_eq!(
        d.outcome,
        Outcome::Approve,
        "lateness alone does not change the outcome"
    );
    let st = s.stats();
    assert_eq!(st.late_events, 1);
    assert_eq!(st.decisions.iter().map(|(_, n)| n).sum::<u64>(), 1);
}

#[test]
fn incomplete_features_never_approve_and_say_so() {
    let s = scorer();
    // The same event and features approve when complete (see the late test above)...
    let complete = s.decide(&event(50.0), &feats(-3.0), &DecideContext::new(TRACE_ID));
    assert_eq!(complete.outcome, Outcome::Approve);
    assert!(!has_reason(&complete, "system", "features_incomplete"));
    // ...and are at least reviewed when some feature groups never arrived.
    let ctx = DecideContext {
        features_incomplete: true,
        ..DecideContext::new(TRACE_ID)
    };
    let d = s.decide(&event(50.0), &feats(-3.0), &ctx);
    assert_eq!(d.outcome, Outcome::Review);
    assert!(has_reason(&d, "system", "features_incomplete"));
}

fn shipped_config() -> ScoringConfig {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    ScoringConfig {
        rules_path: root.join("config/rules.toml"),
        models_dir: root.join("config/models"),
        lists_path: Some(root.join("config/lists/lists.csv")),
        ..ScoringConfig::default()
    }
}

fn shipped_catalog() -> FeatureCatalog {
    let mut c = FeatureCatalog::numeric([
        "card_small_count_10m",
        "account_avg_amount_24h",
        "device_distinct_cards_1h",
        "account_time_since_last",
        "card_time_since_last_ms",
        "ip_count_5m",
    ]);
    c.insert("card_last_country", FeatureKind::Text);
    c
}

#[test]
fn shipped_configuration_declines_card_testing_and_approves_the_ordinary() {
    let s = Scorer::from_config(&shipped_config(), shipped_catalog()).unwrap();
    let models = s.models();
    assert_eq!(models.champion().model.version, "1");
    assert_eq!(
        models.challenger().map(|c| c.model.version.as_str()),
        Some("2")
    );
    assert_eq!(models.shadows().len(), 1);
    assert!((models.router().share() - 0.1).abs() < 1e-12);
    let ctx = DecideContext::new(TRACE_ID);

    let mut f: BTreeMap<String, FeatureValue> = [
        ("card_small_count_10m", FeatureValue::Number(0.0)),
        ("account_avg_amount_24h", FeatureValue::Number(60.0)),
        ("device_distinct_cards_1h", FeatureValue::Number(1.0)),
        (
            "account_time_since_last",
            FeatureValue::Number(86_400_000.0),
        ),
        (
            "card_time_since_last_ms",
            FeatureValue::Number(86_400_000.0),
        ),
        ("ip_count_5m", FeatureValue::Number(1.0)),
        ("card_last_country", FeatureValue::Text("DE".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let d = s.decide(&event_for("acc-42", "card-42", 45.0), &f, &ctx);
    assert_eq!(d.outcome, Outcome::Approve, "{d:?}");
    assert_eq!(d.models.len(), 3);

    f.insert("card_small_count_10m".into(), FeatureValue::Number(7.0));
    let d = s.decide(&event_for("acc-42", "card-42", 1.0), &f, &ctx);
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(has_reason(&d, "rule", "card_testing"), "{:?}", d.reasons);

    f.insert("card_small_count_10m".into(), FeatureValue::Number(0.0));
    f.insert("card_last_country".into(), FeatureValue::Text("FR".into()));
    f.insert(
        "card_time_since_last_ms".into(),
        FeatureValue::Number(600_000.0),
    );
    let d = s.decide(&event_for("acc-42", "card-42", 45.0), &f, &ctx);
    assert_eq!(d.outcome, Outcome::Challenge);
    assert!(
        has_reason(&d, "rule", "impossible_travel"),
        "{:?}",
        d.reasons
    );

    let d = s.decide(
        &event_for("acc-42", "card-blocked-example-1", 45.0),
        &f,
        &ctx,
    );
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(has_reason(&d, "list", "block_list"));
    // The decision serializes (it goes to the decisions topic as JSON).
    let back: Decision = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}
