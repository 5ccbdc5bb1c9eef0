//! Rule-set validation (syntax with rule name and position, unknown features, type errors, all
//! problems at once), atomic updates that keep the running set on error, and the shipped set.

use std::collections::BTreeMap;
use std::sync::Arc;

use riskstream_common::{Event, EventDecoder, FeatureValue, Outcome};
use riskstream_scoring::rules::{ProblemKind, RuleInput};
use riskstream_scoring::{FeatureCatalog, FeatureKind, RuleSet, RulesHandle};
use serde_json::json;

fn catalog() -> FeatureCatalog {
    let mut c = FeatureCatalog::numeric([
        "card_count_10m",
        "card_small_count_10m",
        "account_avg_amount_24h",
    ]);
    c.insert("card_last_country", FeatureKind::Text);
    c
}

fn event(amount: f64) -> Event {
    EventDecoder::default()
        .decode_value(
            json!({"event_time": 1_700_000_000_000_i64, "account_id": "acc-1", "card_id": "card-1",
                   "amount": amount, "currency": "EUR", "country": "DE"}),
            1_800_000_000_000,
        )
        .expect("valid test event")
}

fn rules(version: &str, body: &[(&str, &str, &str)]) -> String {
    let mut s = format!("version = \"{version}\"\n");
    for (name, expr, effect) in body {
        s.push_str(&format!(
            "\n[[rules]]\nname = \"{name}\"\nexpression = '''{expr}'''\n{effect}\nreason = \"{name}\"\n"
        ));
    }
    s
}

const DECLINE: &str = "outcome = \"decline\"";

#[test]
fn syntax_error_names_the_rule_and_position() {
    let text = rules(
        "v1",
        &[
            ("ok", "features.card_count_10m > 1.0", DECLINE),
            ("broken", "event.amount > > 2.0", DECLINE),
        ],
    );
    let err = RuleSet::compile(&text, &catalog()).unwrap_err();
    assert_eq!(err.version.as_deref(), Some("v1"));
    let p = err
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::Syntax)
        .expect("a syntax problem");
    assert_eq!(p.rule.as_deref(), Some("broken"));
    let pos = p.position.expect("the parser gives a position");
    assert_eq!(pos.line, 1);
    assert_eq!(pos.column, 16, "the second > is at column 16: {err}");
    assert!(
        err.to_string()
            .contains("rule \"broken\": syntax error at line 1"),
        "{err}"
    );
}

#[test]
fn unknown_feature_is_reported() {
    let text = rules(
        "v1",
        &[("velocity", "features.card_count_1h > 3.0", DECLINE)],
    );
    let err = RuleSet::compile(&text, &catalog()).unwrap_err();
    assert!(
        err.has(ProblemKind::UnknownFeature, Some("velocity")),
        "{err}"
    );
    assert!(err.to_string().contains("card_count_1h"), "{err}");
}

#[test]
fn type_error_is_caught_by_the_typed_sample() {
    let text = rules("v1", &[("cmp", "features.card_count_10m > \"x\"", DECLINE)]);
    let err = RuleSet::compile(&text, &catalog()).unwrap_err();
    assert!(err.has(ProblemKind::Type, Some("cmp")), "{err}");
    // A text feature compared as text is fine; compared with a number it is not.
    let ok = rules(
        "v1",
        &[(
            "travel",
            "features.card_last_country != event.country",
            DECLINE,
        )],
    );
    assert!(RuleSet::compile(&ok, &catalog()).is_ok());
    let bad = rules(
        "v1",
        &[("travel", "features.card_last_country > 2.0", DECLINE)],
    );
    assert!(
        RuleSet::compile(&bad, &catalog())
            .unwrap_err()
            .has(ProblemKind::Type, Some("travel"))
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = rules(
        "v1",
        &[
            ("syntax", "features.card_count_10m >", DECLINE),
            ("unknown", "features.nope > 1.0", DECLINE),
            ("types", "event.amount + \"x\" > 1.0", DECLINE),
            ("no_effect", "true", ""),
            ("fine", "features.card_count_10m > 1.0", DECLINE),
        ],
    );
    let err = RuleSet::compile(&text, &catalog()).unwrap_err();
    let by_rule: Vec<(&str, ProblemKind)> = err
        .problems
        .iter()
        .map(|p| (p.rule.as_deref().unwrap_or(""), p.kind))
        .collect();
    assert!(
        by_rule.contains(&("syntax", ProblemKind::Syntax)),
        "{by_rule:?}"
    );
    assert!(
        by_rule.contains(&("unknown", ProblemKind::UnknownFeature)),
        "{by_rule:?}"
    );
    assert!(
        by_rule.contains(&("types", ProblemKind::Type)),
        "{by_rule:?}"
    );
    assert!(
        by_rule.contains(&("no_effect", ProblemKind::Definition)),
        "{by_rule:?}"
    );
    assert!(!by_rule.iter().any(|(r, _)| *r == "fine"), "{by_rule:?}");
}

#[test]
fn duplicate_names_and_double_effects_are_definition_errors() {
    let text = rules(
        "v1",
        &[
            ("a", "true", DECLINE),
            ("a", "true", DECLINE),
            ("b", "true", "outcome = \"review\"\nscore = 0.1"),
        ],
    );
    let err = RuleSet::compile(&text, &catalog()).unwrap_err();
    assert!(err.has(ProblemKind::Definition, Some("a")));
    assert!(err.has(ProblemKind::Definition, Some("b")));
}

#[test]
fn bad_update_is_rejected_and_the_running_set_keeps_deciding() {
    let handle = RulesHandle::from_text(
        &rules(
            "v1",
            &[(
                "card_testing",
                "features.card_small_count_10m >= 5.0 && event.amount < 2.0",
                DECLINE,
            )],
        ),
        Arc::new(catalog()),
    )
    .unwrap();
    let f = BTreeMap::from([(
        "card_small_count_10m".to_string(),
        FeatureValue::Number(6.0),
    )]);
    let input = RuleInput::new(&event(1.0), &f);
    let fired = |h: &RulesHandle| {
        let set = h.current();
        set.evaluate(&input)
            .fired
            .iter()
            .map(|f| f.rule.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(fired(&handle), ["card_testing"]);

    let held = handle.current();
    let err = handle
        .try_update(&rules(
            "v2",
            &[("broken", "features.card_small_count_10m >= ", DECLINE)],
        ))
        .unwrap_err();
    assert!(err.has(ProblemKind::Syntax, Some("broken")));
    assert_eq!(handle.version(), "v1");
    assert_eq!(fired(&handle), ["card_testing"]);

    // Same version, different rules: refused.
    let err = handle
        .try_update(&rules(
            "v1",
            &[("other", "features.card_count_10m > 1.0", DECLINE)],
        ))
        .unwrap_err();
    assert!(err.has(ProblemKind::Version, None));

    // A good update takes effect; a set already handed out stays usable.
    let v = handle
        .try_update(&rules(
            "v2",
            &[("tiny", "event.amount < 5.0", "outcome = \"review\"")],
        ))
        .unwrap();
    assert_eq!(v, "v2");
    let set = handle.current();
    let out = set.evaluate(&input);
    assert_eq!(out.fired[0].rule.name, "tiny");
    assert_eq!(out.forced_outcome(), Some(Outcome::Review));
    assert_eq!(held.evaluate(&input).fired[0].rule.name, "card_testing");
}

#[test]
fn runtime_error_in_one_rule_does_not_stop_the_others() {
    let set = RuleSet::compile(
        &rules(
            "v1",
            &[
                (
                    "needs_avg",
                    "event.amount > 5.0 * features.account_avg_amount_24h",
                    DECLINE,
                ),
                ("small", "event.amount < 2.0", "score = 0.3"),
            ],
        ),
        &catalog(),
    )
    .unwrap();
    let f = BTreeMap::from([("account_avg_amount_24h".to_string(), FeatureValue::Null)]);
    let out = set.evaluate(&RuleInput::new(&event(1.0), &f));
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].rule.name, "needs_avg");
    assert_eq!(out.fired.len(), 1);
    assert_eq!(out.fired[0].rule.name, "small");
    assert!((out.score_adjustment() - 0.3).abs() < 1e-12);
}

#[test]
fn disabled_rules_are_validated_but_do_not_run() {
    let text = "version = \"v1\"\n[[rules]]\nname = \"off\"\nexpression = \"true\"\noutcome = \"decline\"\nreason = \"off\"\nenabled = false\n";
    let set = RuleSet::compile(text, &catalog()).unwrap();
    assert!(
        set.evaluate(&RuleInput::new(&event(1.0), &BTreeMap::new()))
            .fired
            .is_empty()
    );
    let bad = text.replace("expression = \"true\"", "expression = \"features.nope\"");
    assert!(RuleSet::compile(&bad, &catalog()).is_err());
}

fn shipped_rules() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.toml")).unwrap()
}

#[test]
fn shipped_rules_validate_against_the_features_they_name() {
    let mut c = FeatureCatalog::numeric([
        "card_small_count_10m",
        "account_avg_amount_24h",
        "device_distinct_cards_1h",
        "card_time_since_last_ms",
        "ip_count_5m",
    ]);
    c.insert("card_last_country", FeatureKind::Text);
    let set = RuleSet::compile(&shipped_rules(), &c).unwrap();
    let names: Vec<&str> = set.rules().map(|r| r.name.as_str()).collect();
    for n in [
        "card_testing",
        "amount_spike",
        "device_many_cards",
        "impossible_travel",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    // Without the travel feature, the set is refused and the rule named.
    let mut without = FeatureCatalog::numeric([
        "card_small_count_10m",
        "account_avg_amount_24h",
        "device_distinct_cards_1h",
        "ip_count_5m",
    ]);
    without.insert("card_last_country", FeatureKind::Text);
    let err = RuleSet::compile(&shipped_rules(), &without).unwrap_err();
    assert!(
        err.has(ProblemKind::UnknownFeature, Some("impossible_travel")),
        "{err}"
    );
}
