//! The feature config loader: a feature-definition text (`[[feature]]` TOML tables) parsed and
//! validated as the worker does at start, then run: the engine built from an accepted set
//! processes events, and its catalog is what rule sets are checked against.
//!
//! Properties: no panic; a refusal names every problem with a message; an accepted set gives
//! one value per feature for any event, and its catalog holds every feature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riskstream_feature_worker::features::{
    FeatureConfigError, FeatureEngine, FeatureSet, StateConfig,
};
use riskstream_feature_worker::worker::catalog_of;
use riskstream_fuzz::sample_events;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set = match FeatureSet::from_toml_str(text) {
        Ok(set) => set,
        Err(FeatureConfigError::Invalid { problems }) => {
            assert!(!problems.is_empty(), "invalid without problems");
            for p in &problems {
                assert!(!p.to_string().is_empty(), "a problem without a message");
            }
            return;
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let catalog = catalog_of(&set);
    let features = set.features().count();
    assert_eq!(
        catalog.len(),
        features,
        "the catalog names every feature once"
    );
    let engine = FeatureEngine::new(set, StateConfig::default());
    for event in sample_events() {
        for _ in 0..2 {
            let values = engine.process_all(&event);
            assert_eq!(values.len(), features, "one value per feature");
        }
    }
});
