//! The rule loader: a rule-set text (TOML with CEL expressions) compiled and validated against
//! the shipped feature catalog, as the worker does at start, on a rules-file change and for
//! every record of the `rules` control topic.
//!
//! Properties: no panic, in validation or in evaluating an accepted set; a refusal lists at
//! least one problem, each with a message; an accepted set compiles again to the same version
//! and is accepted by a running handle.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use riskstream_feature_worker::scoring::RulesHandle;
use riskstream_feature_worker::scoring::rules::{RuleInput, RuleSet};
use riskstream_fuzz::{sample_events, sample_features, shipped_catalog};

/// The rules a handle runs before the fuzzed update arrives.
const RUNNING: &str = "version = \"running\"\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = shipped_catalog();
    let set = match RuleSet::compile(text, catalog) {
        Ok(set) => set,
        Err(e) => {
            assert!(!e.problems.is_empty(), "a refusal without problems");
            for p in &e.problems {
                assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
            }
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(!set.version().trim().is_empty());
    for event in sample_events() {
        for features in sample_features(catalog) {
            let input = RuleInput::new(&event, &features);
            let evaluation = set.evaluate(&input);
            assert!(evaluation.fired.len() + evaluation.errors.len() <= set.rules().count());
        }
    }
    let again = RuleSet::compile(text, catalog).expect("an accepted set compiles again");
    assert_eq!(again.version(), set.version());
    let handle = RulesHandle::from_text(RUNNING, Arc::new(catalog.clone())).expect("running set");
    if set.version() != "running" {
        let version = handle
            .try_update(text)
            .expect("an accepted set is accepted by a handle");
        assert_eq!(version, set.version());
        assert_eq!(
            handle.try_update(text).expect("the same text again"),
            version
        );
    }
});
