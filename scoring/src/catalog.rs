//! The feature catalog: which feature names exist and what type their values have. Rule sets
//! and models are validated against it (unknown names, type errors) before they are used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The type of a feature's values (a feature may also be `null`: an empty window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A number (counts, sums, averages, durations in ms): a CEL `double`.
    Number,
    /// A string (e.g. `last` of `country`): a CEL `string`.
    Text,
}

/// The known features, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureCatalog {
    kinds: BTreeMap<String, FeatureKind>,
}

impl FeatureCatalog {
    /// A catalog from `(name, kind)` pairs.
    pub fn new<N: Into<String>>(features: impl IntoIterator<Item = (N, FeatureKind)>) -> Self {
        Self {
            kinds: features.into_iter().map(|(n, k)| (n.into(), k)).collect(),
        }
    }

    /// A catalog where every named feature is numeric.
    pub fn numeric<N: Into<String>>(names: impl IntoIterator<Item = N>) -> Self {
        Self::new(names.into_iter().map(|n| (n, FeatureKind::Number)))
    }

    /// Adds (or re-types) one feature.
    pub fn insert(&mut self, name: impl Into<String>, kind: FeatureKind) {
        self.kinds.insert(name.into(), kind);
    }

    pub fn kind(&self, name: &str) -> Option<FeatureKind> {
        self.kinds.get(name).copied()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Every `(name, kind)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, FeatureKind)> {
        self.kinds.iter().map(|(n, k)| (n.as_str(), *k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_kinds() {
        let mut c = FeatureCatalog::numeric(["a", "b"]);
        c.insert("last_country", FeatureKind::Text);
        assert_eq!(c.kind("a"), Some(FeatureKind::Number));
        assert_eq!(c.kind("last_country"), Some(FeatureKind::Text));
        assert!(!c.contains("z"));
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["a", "b", "last_country"]
        );
    }
}
