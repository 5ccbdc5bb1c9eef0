//! One key's state as bytes and back: what the keyed worker writes to its changelog topic and
//! restores a partition from. Importing what was exported gives a state that computes exactly
//! the same feature values as the original, for any later events.
//!
//! Format (CBOR, [`FORMAT_VERSION`] 1): an array of the version, the group's definitions
//! [`fingerprint`], the key's newest event time, one entry per feature in group order (its
//! buckets or entries with times delta-encoded: small integers instead of epoch milliseconds)
//! and the [`Applied`] positions. Derived fields (text bytes, distinct counts, oldest buckets)
//! are recomputed on import. State exported for other definitions of the group (a feature
//! added, a window changed) is refused, never reinterpreted.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use super::applied::Applied;
use super::config::{Aggregation, Feature, FeatureDef, FeatureGroup};
use super::state::{
    DistinctState, FeatureState, Hll, KeyState, LastValue, distinct_hashes, text_len,
};

/// Version of the exported layout (first element of every export).
pub const FORMAT_VERSION: u8 = 1;

/// Why exported state could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error(
        "exported for other definitions of the group (fingerprint {found:016x}, now {expected:016x})"
    )]
    Incompatible { expected: u64, found: u64 },
    #[error("not readable: {0}")]
    Unreadable(String),
}

/// Fingerprint of a group's definitions (key fields; every feature's aggregation, field,
/// window, filter and limits, in order; names and descriptions excluded): exported state is
/// only valid for the same fingerprint.
pub fn fingerprint(g: &FeatureGroup) -> u64 {
    let defs: Vec<FeatureDef> = g
        .features()
        .iter()
        .map(|f| FeatureDef {
            name: String::new(),
            description: None,
            ..f.def().clone()
        })
        .collect();
    let text = serde_json::to_vec(&(g.key_spec().name(), defs)).unwrap_or_default();
    XxHash3_64::oneshot(&text)
}

/// The exported layout (a CBOR array).
#[derive(Serialize, Deserialize)]
struct Wire(
    u8,
    u64,
    i64,
    Vec<WireFeature>,
    Vec<(i32, i64)>,
    Vec<(i32, i64)>,
);

/// One feature's state; times are deltas from the previous entry (the first from 0).
#[derive(Serialize, Deserialize)]
enum WireFeature {
    #[serde(rename = "c")]
    Count(Vec<(i64, u32)>),
    #[serde(rename = "n")]
    Numeric(Vec<(i64, u32, f64)>),
    #[serde(rename = "x")]
    Extreme(Vec<(i64, f64)>),
    /// Exact (value hash, key's newest time - bucket start) pairs; sketches per bucket.
    #[serde(rename = "d")]
    Distinct(Vec<(u64, i64)>, Vec<(i64, Hll)>),
    #[serde(rename = "l")]
    Last(Vec<(i64, WireValue)>),
    #[serde(rename = "s")]
    Since(Vec<i64>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireValue {
    Num(f64),
    Text(String),
}

fn deltas<'a, T: 'a, U>(
    items: impl IntoIterator<Item = &'a (i64, T)>,
    f: impl Fn(&T) -> U,
) -> Vec<(i64, U)> {
    let mut prev = 0i64;
    items
        .into_iter()
        .map(|(t, v)| {
            let d = t.wrapping_sub(prev);
            prev = *t;
            (d, f(v))
        })
        .collect()
}

/// Undoes [`deltas`]; `strict`: times strictly increase (bucket starts), else never decrease.
fn absolute<T>(items: Vec<(i64, T)>, strict: bool) -> Result<VecDeque<(i64, T)>, ImportError> {
    let mut prev = 0i64;
    let mut out = VecDeque::with_capacity(items.len());
    for (i, (d, v)) in items.into_iter().enumerate() {
        if i > 0 && (d < 0 || (strict && d == 0)) {
            return Err(ImportError::Unreadable("times out of order".into()));
        }
        prev = prev.wrapping_add(d);
        out.push_back((prev, v));
    }
    Ok(out)
}

impl KeyState {
    /// The state as bytes, with `applied` as its positions (see [`Applied::exported`]).
    pub(crate) fn export(&self, fingerprint: u64, applied: &Applied) -> Vec<u8> {
        let features = self.features.iter().map(|s| s.to_wire(self.max_time_ms));
        let wire = Wire(
            FORMAT_VERSION,
            fingerprint,
            self.max_time_ms,
            features.collect(),
            applied.highest().to_vec(),
            applied.skipped().to_vec(),
        );
        let mut out = Vec::new();
        // Writing to a Vec cannot fail and every value serializes.
        let _ = ciborium::into_writer(&wire, &mut out);
        out
    }

    /// The state exported by [`KeyState::export`] for a group with `fingerprint` and
    /// `features`.
    pub(crate) fn import(
        bytes: &[u8],
        fingerprint: u64,
        features: &[Feature],
    ) -> Result<Self, ImportError> {
        let Wire(version, found, max_time_ms, wire, highest, skipped) =
            ciborium::from_reader(bytes).map_err(|e| ImportError::Unreadable(e.to_string()))?;
        if version != FORMAT_VERSION {
            return Err(ImportError::Unreadable(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        if found != fingerprint {
            return Err(ImportError::Incompatible {
                expected: fingerprint,
                found,
            });
        }
        if wire.len() != features.len() {
            return Err(ImportError::Unreadable(format!(
                "{} features, the group has {}",
                wire.len(),
                features.len()
            )));
        }
        let features = features
            .iter()
            .zip(wire)
            .map(|(f, w)| FeatureState::from_wire(f, w, max_time_ms))
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(Self {
            max_time_ms,
            features,
            applied: Applied::from_parts(highest, skipped),
        })
    }
}

impl FeatureState {
    fn to_wire(&self, max_time_ms: i64) -> WireFeature {
        match self {
            FeatureState::Count(b) => WireFeature::Count(deltas(b, |n| *n)),
            FeatureState::Numeric(b) => WireFeature::Numeric(
                deltas(b, |x| *x)
                    .into_iter()
                    .map(|(d, (n, s))| (d, n, s))
                    .collect(),
            ),
            FeatureState::Extreme(b) => WireFeature::Extreme(deltas(b, |v| *v)),
            FeatureState::Distinct(d) => WireFeature::Distinct(
                d.exact
                    .iter()
                    .map(|(h, b)| (*h, max_time_ms.wrapping_sub(*b)))
                    .collect(),
                deltas(&d.sketch, Clone::clone),
            ),
            FeatureState::Last { entries, .. } => WireFeature::Last(deltas(entries, |v| match v {
                LastValue::Num(n) => WireValue::Num(*n),
                LastValue::Text(t) => WireValue::Text(t.to_string()),
            })),
            FeatureState::Since(times) => {
                let mut prev = 0i64;
                WireFeature::Since(
                    times
                        .iter()
                        .map(|t| {
                            let d = t.wrapping_sub(prev);
                            prev = *t;
                            d
                        })
                        .collect(),
                )
            }
        }
    }

    fn from_wire(f: &Feature, w: WireFeature, max_time_ms: i64) -> Result<Self, ImportError> {
        use Aggregation::*;
        let mismatch = || {
            ImportError::Unreadable(format!(
                "feature {} ({}) has state of another kind",
                f.name(),
                f.aggregation().as_str()
            ))
        };
        Ok(match (f.aggregation(), w) {
            (Count, WireFeature::Count(b)) => FeatureState::Count(absolute(b, true)?),
            (Sum | Avg, WireFeature::Numeric(b)) => FeatureState::Numeric(absolute(
                b.into_iter().map(|(d, n, s)| (d, (n, s))).collect(),
                true,
            )?),
            (Min | Max, WireFeature::Extreme(b)) => FeatureState::Extreme(absolute(b, true)?),
            (DistinctCount, WireFeature::Distinct(exact, sketch)) => {
                let mut exact: Vec<(u64, i64)> = exact
                    .into_iter()
                    .map(|(h, back)| (h, max_time_ms.wrapping_sub(back)))
                    .collect();
                exact.sort_unstable();
                exact.dedup();
                FeatureState::Distinct(Box::new(DistinctState {
                    exact_values: distinct_hashes(exact.iter().map(|x| x.0)),
                    exact_oldest_ms: exact.iter().map(|x| x.1).min().unwrap_or(i64::MAX),
                    exact,
                    sketch: absolute(sketch, true)?,
                    precision: f.hll_precision,
                }))
            }
            (Last, WireFeature::Last(entries)) => {
                let entries = absolute(entries, false)?;
                let entries: VecDeque<(i64, LastValue)> = entries
                    .into_iter()
                    .map(|(t, v)| {
                        let v = match v {
                            WireValue::Num(n) => LastValue::Num(n),
                            WireValue::Text(s) => LastValue::Text(s.into()),
                        };
                        (t, v)
                    })
                    .collect();
                let text_bytes = entries.iter().map(|(_, v)| text_len(v)).sum();
                FeatureState::Last {
                    entries,
                    text_bytes,
                }
            }
            (TimeSinceLast, WireFeature::Since(times)) => FeatureState::Since(
                absolute(times.into_iter().map(|d| (d, ())).collect(), false)?
                    .into_iter()
                    .map(|(t, ())| t)
                    .collect(),
            ),
            _ => return Err(mismatch()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use riskstream_common::Event;
    use riskstream_common::generator::{Generator, GeneratorConfig};

    use super::*;
    use crate::{FeatureEngine, FeatureEngineError, FeatureSet, StateConfig};

    /// The shipped definitions plus a distinct count that goes to sketches after 3 values and
    /// text `last` values, so every kind of state is exported.
    fn set() -> FeatureSet {
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/features.toml"
        ))
        .expect("shipped features");
        let extra = r#"
[[feature]]
name = "acct_merchants_sketch_1h"
entity = "account_id"
aggregation = "distinct_count"
field = "merchant_id"
window = { kind = "sliding", size = "1h", granularity = "1m" }
distinct_exact_limit = 3

[[feature]]
name = "acct_last_country_1h"
entity = "account_id"
aggregation = "last"
field = "country"
window = { kind = "sliding", size = "1h", granularity = "1m" }
"#;
        FeatureSet::from_toml_str(&format!("{shipped}\n{extra}")).expect("valid features")
    }

    fn events(n: usize) -> Vec<Event> {
        Generator::new(GeneratorConfig {
            seed: 7,
            events_per_sec: 2.0,
            accounts: 40,
            merchants: 30,
            fraud_share: 0.1,
            ..GeneratorConfig::default()
        })
        .take(n)
        .collect()
    }

    /// Every (group, key) with state after `events`.
    fn keys(set: &FeatureSet, events: &[Event]) -> HashSet<(usize, String)> {
        events
            .iter()
            .flat_map(|e| {
                set.groups()
                    .iter()
                    .enumerate()
                    .filter_map(|(gi, g)| g.key_of(e).map(|k| (gi, k)))
            })
            .collect()
    }

    fn values(engine: &FeatureEngine, events: &[Event]) -> Vec<Vec<FeatureValue>> {
        events
            .iter()
            .map(|e| {
                let mut out = Vec::new();
                engine.process_event_into(e, &mut out);
                out
            })
            .collect()
    }

    use riskstream_common::FeatureValue;

    #[test]
    fn export_then_import_gives_identical_feature_values() {
        let events = events(3_000);
        let (head, tail) = events.split_at(2_000);
        let original = FeatureEngine::new(set(), StateConfig::default());
        values(&original, head);
        let copy = FeatureEngine::new(set(), StateConfig::default());
        let mut bytes = 0usize;
        let keys = keys(original.feature_set(), head);
        for (gi, key) in &keys {
            let exported = original.export_key(*gi, key, []).unwrap().expect("state");
            bytes += exported.len();
            copy.import_key(*gi, key, &exported).unwrap();
            // Exporting the import gives as many bytes (nothing lost; a sketch's scratch set
            // may come out in another order).
            let again = copy
                .export_key(*gi, key, [])
                .unwrap()
                .expect("imported state");
            assert_eq!(again.len(), exported.len());
        }
        assert!(
            bytes / keys.len() < 2_000,
            "compact: {} bytes per key",
            bytes / keys.len()
        );
        // Bit-identical values for every later event, sketches and text values included.
        let want = values(&original, tail);
        let got = values(&copy, tail);
        assert_eq!(got, want);
        let names: Vec<&str> = copy.feature_set().features().map(|f| f.name()).collect();
        let sketch = names
            .iter()
            .position(|n| *n == "acct_merchants_sketch_1h")
            .unwrap();
        assert!(
            want.iter()
                .any(|v| v[sketch].as_f64().is_some_and(|n| n > 3.0)),
            "the sketch feature went past its exact limit"
        );
        let text = names
            .iter()
            .position(|n| *n == "acct_last_country_1h")
            .unwrap();
        assert!(
            want.iter()
                .any(|v| matches!(v[text], FeatureValue::Text(_)))
        );
    }

    #[test]
    fn applied_positions_travel_with_the_state() {
        let events = events(50);
        let e = &events[0];
        let original = FeatureEngine::new(set(), StateConfig::default());
        let gi = 0;
        let key = original.feature_set().groups()[gi].key_of(e).unwrap();
        let mut out = Vec::new();
        original
            .process_at_into(gi, &key, e, Some((2, 100)), &mut out)
            .unwrap();
        out.clear();
        original
            .process_at_into(gi, &key, &events[1], Some((2, 102)), &mut out)
            .unwrap();
        assert!(!original.admit(gi, &key, 2, 100), "applied here");
        assert!(original.admit(gi, &key, 2, 103));
        // Exported while (2, 101) waits at the caller.
        let bytes = original.export_key(gi, &key, [(2, 101)]).unwrap().unwrap();
        let copy = FeatureEngine::new(set(), StateConfig::default());
        assert!(copy.admit(gi, &key, 2, 100), "no state: everything is new");
        copy.import_key(gi, &key, &bytes).unwrap();
        assert!(!copy.admit(gi, &key, 2, 100) && !copy.admit(gi, &key, 2, 102));
        assert!(copy.admit(gi, &key, 2, 101), "it was waiting, not applied");
        assert!(copy.admit(gi, &key, 2, 103) && copy.admit(gi, &key, 1, 0));
    }

    #[test]
    fn state_of_other_definitions_or_garbage_is_refused() {
        let events = events(20);
        let e = &events[0];
        let original = FeatureEngine::new(set(), StateConfig::default());
        original.process_all(e);
        let key = original.feature_set().groups()[0].key_of(e).unwrap();
        let bytes = original.export_key(0, &key, []).unwrap().unwrap();
        // The same group with one window changed.
        let changed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/features.toml"
        ))
        .unwrap()
        .replacen("size = \"10m\"", "size = \"11m\"", 1);
        let other = FeatureEngine::new(
            FeatureSet::from_toml_str(&changed).unwrap(),
            StateConfig::default(),
        );
        assert!(matches!(
            other.import_key(0, &key, &bytes),
            Err(FeatureEngineError::Import {
                source: ImportError::Incompatible { .. },
                ..
            })
        ));
        let copy = FeatureEngine::new(set(), StateConfig::default());
        for garbage in [
            &b""[..],
            b"\x00\x01",
            &bytes[..bytes.len() / 2],
            b"{\"a\":1}",
        ] {
            assert!(matches!(
                copy.import_key(0, &key, garbage),
                Err(FeatureEngineError::Import {
                    source: ImportError::Unreadable(_),
                    ..
                })
            ));
        }
        // Another group's state is refused too (another fingerprint).
        assert!(copy.import_key(1, &key, &bytes).is_err());
        assert!(!copy.contains_key(0, &key));
    }

    #[test]
    fn keys_the_cache_drops_on_its_own_are_logged_explicit_removals_not() {
        let set = set();
        let engine = FeatureEngine::new(
            set,
            StateConfig {
                max_memory_bytes: 16 * 1024,
                ..StateConfig::default()
            },
        );
        engine.log_removals();
        for e in events(2_000) {
            engine.process_all(&e);
        }
        engine.run_pending_tasks();
        let evicted = engine.stats().snapshot().evicted_size;
        let removed = engine.take_removed();
        assert!(evicted > 0);
        assert_eq!(
            removed.len() as u64,
            evicted,
            "every size eviction is logged"
        );
        assert!(engine.take_removed().is_empty(), "taken once");
        let (gi, key) = &removed[0];
        assert!(!engine.contains_key(*gi as usize, key));
        engine.clear();
        assert!(
            engine.take_removed().is_empty(),
            "explicit removals are not logged"
        );
    }
}
