//! Unit tests of the rule core.

use super::*;
use crate::catalog::FeatureKind;
use riskstream_common::EventDecoder;
use serde_json::json;

fn catalog() -> FeatureCatalog {
    let mut c = FeatureCatalog::numeric(["card_count_10m", "avg_amount"]);
    c.insert("last_country", FeatureKind::Text);
    c
}

fn one_rule(expr: &str) -> String {
    format!(
        "version = \"t1\"\n[[rules]]\nname = \"r\"\nexpression = '''{expr}'''\noutcome = \"decline\"\nreason = \"code\"\n"
    )
}

fn event(v: serde_json::Value) -> Event {
    EventDecoder::default()
        .decode_value(v, 1_800_000_000_000)
        .expect("test event is valid")
}

#[test]
fn member_and_index_forms_are_both_name_checked() {
    let err = RuleSet::compile(
        &one_rule("features.nope > 1.0 || features[\"nope2\"] > 1.0"),
        &catalog(),
    )
    .unwrap_err();
    let msgs: Vec<_> = err.problems.iter().map(|p| p.message.clone()).collect();
    assert_eq!(err.problems.len(), 2, "{msgs:?}");
    assert!(msgs[0].contains("features.nope "), "{msgs:?}");
    assert!(msgs[1].contains("features.nope2"), "{msgs:?}");
    assert!(RuleSet::compile(&one_rule("features[\"card_count_10m\"] > 1.0"), &catalog()).is_ok());
}

#[test]
fn macro_variables_are_in_scope_and_other_identifiers_are_not() {
    let ok = RuleSet::compile(
        &one_rule("[1.0, 2.0].exists(x, x > features.avg_amount)"),
        &catalog(),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let err = RuleSet::compile(&one_rule("amount > 1.0"), &catalog()).unwrap_err();
    assert!(err.has(ProblemKind::UnknownVariable, Some("r")), "{err}");
    let err = RuleSet::compile(&one_rule("event.colour == \"red\""), &catalog()).unwrap_err();
    assert!(err.has(ProblemKind::UnknownEventField, Some("r")), "{err}");
}

#[test]
fn type_error_in_a_short_circuited_branch_is_found() {
    // With the sample, `false && ...` would skip the right side: the walk still checks it.
    let err = RuleSet::compile(
        &one_rule("features.card_count_10m > 100.0 && features.last_country > 3.0"),
        &catalog(),
    )
    .unwrap_err();
    assert!(err.has(ProblemKind::Type, Some("r")), "{err}");
    let err = RuleSet::compile(&one_rule("features.card_count_10m + 1.0"), &catalog()).unwrap_err();
    assert!(err.problems[0].message.contains("bool"), "{err}");
}

#[test]
fn attributes_are_free_form_and_event_fields_typed() {
    let set = RuleSet::compile(
        &one_rule(
            "has(event.attributes.mcc) && event.attributes.mcc == \"7995\" && event.event_time_ms > 0 && event.amount >= 2",
        ),
        &catalog(),
    )
    .unwrap();
    let e = event(
        json!({"event_time": 1_700_000_000_000_i64, "account_id": "a", "amount": 5.0,
        "currency": "EUR", "attributes": {"mcc": "7995"}}),
    );
    let out = set.evaluate(&RuleInput::new(&e, &BTreeMap::new()));
    assert_eq!(out.fired.len(), 1, "{:?}", out.errors);
}

#[test]
fn toml_errors_carry_the_file_position() {
    let err = RuleSet::compile("version = \"x\"\n[[rules]]\nname = 3\n", &catalog()).unwrap_err();
    assert_eq!(err.problems[0].kind, ProblemKind::Toml);
    assert_eq!(err.problems[0].position.map(|p| p.line), Some(3));
}

#[test]
fn null_feature_comparison_is_a_runtime_error_not_a_panic() {
    let set = RuleSet::compile(&one_rule("features.avg_amount > 1.0"), &catalog()).unwrap();
    let e = event(json!({"event_time": 1_700_000_000_000_i64, "account_id": "a"}));
    let f = BTreeMap::from([("avg_amount".to_string(), FeatureValue::Null)]);
    let out = set.evaluate(&RuleInput::new(&e, &f));
    assert!(out.fired.is_empty());
    assert_eq!(out.errors.len(), 1);
    assert_eq!(set.stats()[0].errors, 1);
}

#[test]
fn positions_are_one_based() {
    assert_eq!(position_of("ab\ncd", 4), Position { line: 2, column: 2 });
    assert_eq!(position_of("ab", 0), Position { line: 1, column: 1 });
}

#[test]
fn a_toml_error_always_has_a_message() {
    // Found by the rule_set fuzz target: a NUL byte in a comment gave a problem whose message
    // was empty (the toml crate's `message()` is empty for some errors).
    let err = RuleSet::compile(
        "# a comment with \u{0} inside\nversion = \"v\"\n",
        &catalog(),
    )
    .unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].kind, ProblemKind::Toml);
    assert_eq!(
        err.problems[0].message, "unexpected character '\\0'",
        "{err}"
    );
}
