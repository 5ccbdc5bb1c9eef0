//! Model evaluation: hand-computed logistic and 2-tree ensemble scores, and a real XGBoost model
//! (tests/fixtures, made by make_xgb_fixture.py) against XGBoost's own predictions.

use std::collections::BTreeMap;

use riskstream_common::{Event, EventDecoder, FeatureValue};
use riskstream_scoring::models::logistic::{LogisticInput, LogisticSpec};
use riskstream_scoring::models::{LogisticModel, XgboostModel};
use riskstream_scoring::{FeatureCatalog, FeatureKind, ModelError, ModelInput};
use serde_json::{Value, json};

const NOW_MS: i64 = 1_800_000_000_000;

fn event(amount: Option<f64>) -> Event {
    let mut v = json!({"event_time": 1_700_000_000_000_i64, "account_id": "acc-1"});
    if let Some(a) = amount {
        v["amount"] = json!(a);
        v["currency"] = json!("EUR");
    }
    EventDecoder::default()
        .decode_value(v, NOW_MS)
        .expect("valid test event")
}

fn features(pairs: &[(&str, FeatureValue)]) -> BTreeMap<String, FeatureValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn logistic() -> LogisticModel {
    let input = |name: &str, weight, mean, std, missing| LogisticInput {
        name: name.into(),
        weight,
        mean,
        std,
        missing,
    };
    let spec = LogisticSpec {
        intercept: -2.0,
        inputs: vec![
            input("a", 0.5, Some(2.0), Some(2.0), None),
            input("b", -1.0, None, None, None),
            input("amount", 0.01, None, None, None),
        ],
    };
    LogisticModel::new(spec, &FeatureCatalog::numeric(["a", "b"])).unwrap()
}

#[test]
fn logistic_scores_match_hand_computation() {
    let m = logistic();
    // z_a = (6 - 2) / 2 = 2 -> 1.0; b missing -> 0; amount 50 -> 0.5; margin -0.5.
    let e = event(Some(50.0));
    let f = features(&[("a", FeatureValue::Number(6.0)), ("b", FeatureValue::Null)]);
    let out = m
        .score(&ModelInput {
            event: &e,
            features: &f,
        })
        .unwrap();
    assert!(close(out.margin, -0.5, 1e-12), "{out:?}");
    assert!(close(out.score, 0.3775406687981454, 1e-12), "{out:?}");
    assert_eq!(out.contributions, vec![1.0, 0.0, 0.5]);

    // a missing -> its mean (no contribution); b = 1.5 -> -1.5; no amount -> 0; margin -3.5.
    let e = event(None);
    let f = features(&[("b", FeatureValue::Number(1.5))]);
    let out = m
        .score(&ModelInput {
            event: &e,
            features: &f,
        })
        .unwrap();
    assert!(close(out.score, 0.02931223075135632, 1e-12), "{out:?}");
    assert_eq!(out.contributions, vec![0.0, -1.5, 0.0]);

    let f = features(&[("b", FeatureValue::Text("x".into()))]);
    assert_eq!(
        m.score(&ModelInput {
            event: &e,
            features: &f
        })
        .unwrap_err(),
        ModelError::NotNumeric { name: "b".into() }
    );
}

#[test]
fn logistic_rejects_bad_specs() {
    let catalog = FeatureCatalog::new([("a", FeatureKind::Number), ("country", FeatureKind::Text)]);
    let spec = |name: &str, std: Option<f64>| LogisticSpec {
        intercept: 0.0,
        inputs: vec![LogisticInput {
            name: name.into(),
            weight: 1.0,
            mean: std.map(|_| 0.0),
            std,
            missing: None,
        }],
    };
    assert!(LogisticModel::new(spec("nope", None), &catalog).is_err());
    assert!(
        LogisticModel::new(spec("country", None), &catalog).is_err(),
        "text features cannot feed a model"
    );
    assert!(LogisticModel::new(spec("a", Some(0.0)), &catalog).is_err());
    assert!(LogisticModel::new(spec("a", Some(2.0)), &catalog).is_ok());
    let toml = "intercept = 1.0\n[[inputs]]\nname = \"a\"\nweight = 2.0\nmissing = 3.0\n";
    let m = LogisticModel::new(LogisticSpec::from_toml(toml).unwrap(), &catalog).unwrap();
    let e = event(None);
    let out = m
        .score(&ModelInput {
            event: &e,
            features: &BTreeMap::new(),
        })
        .unwrap();
    assert!(
        close(out.margin, 7.0, 1e-12),
        "missing default 3.0 * 2.0 + 1.0"
    );
}

/// Two trees in XGBoost's save_model layout, base_score 0.5 (margin 0):
/// tree 0: x0 < 3 ? leaf -0.4 (cover 60) : leaf 0.8 (cover 40); missing -> right.
/// tree 1: x1 < 2 ? (x0 < 5 ? leaf 0.1 (10) : leaf 0.6 (10); missing -> left) : leaf -0.2 (80);
///         x1 missing -> left.
fn two_trees(base_score: &str) -> String {
    json!({
        "version": [3, 2, 0],
        "learner": {
            "feature_names": ["count", "amount"],
            "feature_types": ["float", "float"],
            "learner_model_param": {"base_score": base_score, "num_class": "0", "num_feature": "2", "num_target": "1"},
            "objective": {"name": "binary:logistic"},
            "gradient_booster": {"name": "gbtree", "model": {"trees": [
                {"left_children": [1, -1, -1], "right_children": [2, -1, -1],
                 "split_indices": [0, 0, 0], "split_conditions": [3.0, -0.4, 0.8],
                 "default_left": [0, 0, 0], "sum_hessian": [100.0, 60.0, 40.0], "split_type": [0, 0, 0]},
                {"left_children": [1, 3, -1, -1, -1], "right_children": [2, 4, -1, -1, -1],
                 "split_indices": [1, 0, 0, 0, 0], "split_conditions": [2.0, 5.0, -0.2, 0.1, 0.6],
                 "default_left": [1, 1, 0, 0, 0], "sum_hessian": [100.0, 20.0, 80.0, 10.0, 10.0],
                 "split_type": [0, 0, 0, 0, 0]}
            ]}}
        }
    })
    .to_string()
}

#[test]
fn two_tree_ensemble_matches_hand_computation() {
    let catalog = FeatureCatalog::numeric(["count"]);
    let m = XgboostModel::from_json(&two_trees("[5E-1]"), &catalog).unwrap();
    assert_eq!(m.num_trees(), 2);
    let score = |count: Option<f64>, amount: Option<f64>| {
        let e = event(amount);
        let f = features(&[(
            "count",
            count.map_or(FeatureValue::Null, FeatureValue::Number),
        )]);
        m.score(&ModelInput {
            event: &e,
            features: &f,
        })
        .unwrap()
    };
    // 6 >= 3 -> 0.8; 1 < 2 -> 6 >= 5 -> 0.6: margin 1.4.
    let out = score(Some(6.0), Some(1.0));
    assert!(close(out.margin, 1.4, 1e-6), "{out:?}");
    assert!(close(out.score, 0.8021838885585817, 1e-6));
    // Saabas: tree means 0.08 and -0.09; count: (0.8 - 0.08) + (0.6 - 0.35) = 0.97;
    // amount: 0.35 - (-0.09) = 0.44; bias -0.01.
    assert!(close(out.contributions[0], 0.97, 1e-6), "{out:?}");
    assert!(close(out.contributions[1], 0.44, 1e-6), "{out:?}");
    // All missing: tree 0 right (0.8), tree 1 left, left (0.1): margin 0.9.
    let out = score(None, None);
    assert!(close(out.score, 0.7109495026250039, 1e-6), "{out:?}");
    // 1 < 3 -> -0.4; 10 >= 2 -> -0.2: margin -0.6.
    assert!(close(
        score(Some(1.0), Some(10.0)).score,
        0.35434369377420455,
        1e-6
    ));
    // Equal to the split condition goes right: 0.8 + -0.2.
    assert!(close(
        score(Some(3.0), Some(2.0)).score,
        0.6456563062257954,
        1e-6
    ));

    // The 1.x/2.x base_score layout, 0.2 -> margin ln(0.25).
    let m = XgboostModel::from_json(&two_trees("2E-1"), &catalog).unwrap();
    assert!(close(m.base_margin(), 0.25f64.ln(), 1e-7));
}

#[test]
fn unsupported_or_broken_xgboost_models_are_rejected() {
    let catalog = FeatureCatalog::numeric(["count"]);
    let mut v: Value = serde_json::from_str(&two_trees("[5E-1]")).unwrap();
    v["learner"]["objective"]["name"] = json!("multi:softprob");
    assert!(XgboostModel::from_json(&v.to_string(), &catalog).is_err());

    let mut v: Value = serde_json::from_str(&two_trees("[5E-1]")).unwrap();
    v["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"] = json!([0, -1, -1]);
    let err = XgboostModel::from_json(&v.to_string(), &catalog).unwrap_err();
    assert!(err.to_string().contains("tree 0"), "{err}");

    let mut v: Value = serde_json::from_str(&two_trees("[5E-1]")).unwrap();
    v["learner"]["gradient_booster"]["model"]["trees"][1]["split_indices"] = json!([7, 0, 0, 0, 0]);
    assert!(XgboostModel::from_json(&v.to_string(), &catalog).is_err());

    assert!(
        XgboostModel::from_json(&two_trees("[5E-1]"), &FeatureCatalog::default()).is_err(),
        "count is not a known feature"
    );
    assert!(XgboostModel::from_json("{\"learner\": 1}", &catalog).is_err());
}

#[test]
fn real_xgboost_model_matches_xgboost_predictions() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let model_json = std::fs::read_to_string(format!("{dir}/xgb_card_testing.json")).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/xgb_card_testing_expected.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<String> = expected["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let catalog = FeatureCatalog::numeric(names.iter().filter(|n| *n != "amount"));
    let m = XgboostModel::from_json(&model_json, &catalog).unwrap();
    assert_eq!(m.num_trees(), 20);
    assert_eq!(m.input_names(), names.as_slice());

    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    let mut missing_seen = 0;
    for (i, case) in cases.iter().enumerate() {
        let mut f = BTreeMap::new();
        let mut amount = None;
        for (name, v) in case["features"].as_object().unwrap() {
            let value = v.as_f64();
            missing_seen += usize::from(value.is_none());
            if name == "amount" {
                amount = value;
            } else {
                f.insert(
                    name.clone(),
                    value.map_or(FeatureValue::Null, FeatureValue::Number),
                );
            }
        }
        let e = event(amount);
        let out = m
            .score(&ModelInput {
                event: &e,
                features: &f,
            })
            .unwrap();
        let p = case["probability"].as_f64().unwrap();
        assert!(
            close(out.score, p, 1e-5),
            "case {i}: ours {} xgboost {p}",
            out.score
        );
        let margin = case["margin"].as_f64().unwrap();
        assert!(
            close(out.margin, margin, 1e-4),
            "case {i}: margin {} vs {margin}",
            out.margin
        );
        // Saabas contributions equal XGBoost's approx_contribs, and with the bias sum to the margin.
        let contribs = &case["contributions"];
        for (j, name) in names.iter().enumerate() {
            let want = contribs[name].as_f64().unwrap();
            assert!(
                close(out.contributions[j], want, 1e-4),
                "case {i} {name}: {} vs {want}",
                out.contributions[j]
            );
        }
        let bias = out.margin - out.contributions.iter().sum::<f64>();
        assert!(
            close(bias, contribs["bias"].as_f64().unwrap(), 1e-4),
            "case {i}: bias {bias}"
        );
    }
    assert!(missing_seen > 5, "the fixture exercises missing values");
}
