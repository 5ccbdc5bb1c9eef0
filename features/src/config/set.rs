//! [`FeatureSet`]: the validated feature definitions of one file (or built in code), grouped by
//! entity key, and the window outputs over them. Loading reads the file (`FileDef`: the
//! `[[feature]]` and `[[window_output]]` arrays), parses each raw table, checks for duplicate
//! names, compiles every definition and groups the result; the error lists every problem found.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::compile::{Feature, FeatureGroup, compile, group_by_key_spec};
use super::defs::{FeatureDef, parse_def};
use super::fields::KeySpec;
use crate::error::{FeatureConfigError, FeatureProblem};
use crate::window_output::{self, WindowOutput, WindowOutputDef};

/// The validated feature definitions, grouped by entity key, and the window outputs over them.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    groups: Vec<FeatureGroup>,
    window_outputs: Vec<WindowOutput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    feature: Vec<toml::Value>,
    #[serde(default)]
    window_output: Vec<toml::Value>,
}

impl FeatureSet {
    /// Reads and validates a feature file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FeatureConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FeatureConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Parses and validates feature definitions; the error lists every problem found.
    pub fn from_toml_str(text: &str) -> Result<Self, FeatureConfigError> {
        let file: FileDef = toml::from_str(text).map_err(|e| FeatureConfigError::Toml {
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = Vec::new();
        let mut defs = Vec::new();
        for (i, raw) in file.feature.into_iter().enumerate() {
            if let Some(def) = parse_def(i, raw, &mut problems) {
                defs.push(def);
            }
        }
        if defs.is_empty() && problems.is_empty() {
            problems.push(FeatureProblem::new(
                "(file)",
                "no features defined: add [[feature]] tables",
            ));
        }
        let mut output_problems = Vec::new();
        let outputs = window_output::config::parse_defs(file.window_output, &mut output_problems);
        Self::from_defs_inner(defs, problems, outputs, output_problems)
    }

    /// Validates definitions built in code.
    pub fn from_defs(defs: Vec<FeatureDef>) -> Result<Self, FeatureConfigError> {
        Self::from_defs_inner(defs, Vec::new(), Vec::new(), Vec::new())
    }

    /// Validates feature and window-output definitions built in code.
    pub fn from_defs_with_outputs(
        defs: Vec<FeatureDef>,
        outputs: Vec<WindowOutputDef>,
    ) -> Result<Self, FeatureConfigError> {
        Self::from_defs_inner(defs, Vec::new(), outputs, Vec::new())
    }

    fn from_defs_inner(
        defs: Vec<FeatureDef>,
        mut problems: Vec<FeatureProblem>,
        outputs: Vec<WindowOutputDef>,
        output_problems: Vec<FeatureProblem>,
    ) -> Result<Self, FeatureConfigError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut compiled = Vec::new();
        for (i, def) in defs.into_iter().enumerate() {
            if !def.name.is_empty() {
                if let Some(first) = seen.get(&def.name) {
                    problems.push(FeatureProblem::new(
                        &def.name,
                        format!(
                            "duplicate feature name (first defined as feature #{})",
                            first + 1
                        ),
                    ));
                } else {
                    seen.insert(def.name.clone(), i);
                }
            }
            if let Some(c) = compile(i, def, &mut problems) {
                compiled.push(c);
            }
        }
        // The key specs of the groups, in group order (as `group_by_key_spec` groups them
        // below), if every feature compiled: window outputs name one of them.
        let mut specs: Vec<KeySpec> = Vec::new();
        for (spec, _) in &compiled {
            if !specs.contains(spec) {
                specs.push(spec.clone());
            }
        }
        let features_ok = problems.is_empty();
        problems.extend(output_problems);
        let window_outputs = window_output::config::compile_all(
            outputs,
            features_ok.then_some(specs.as_slice()),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(FeatureConfigError::Invalid { problems });
        }
        let groups = group_by_key_spec(compiled);
        Ok(FeatureSet {
            groups,
            window_outputs,
        })
    }

    pub fn groups(&self) -> &[FeatureGroup] {
        &self.groups
    }

    /// The `[[window_output]]` definitions, in file order.
    pub fn window_outputs(&self) -> &[WindowOutput] {
        &self.window_outputs
    }

    /// The index of the group with this key spec name (`card_id+merchant_id`).
    pub fn group_index(&self, key_spec_name: &str) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.key_spec().name() == key_spec_name)
    }

    /// Every feature, group by group (groups in order of first appearance in the file,
    /// features of a group in file order): the order of [`crate::FeatureEngine::process_event_into`].
    pub fn features(&self) -> impl Iterator<Item = &Feature> {
        self.groups.iter().flat_map(|g| g.features().iter())
    }

    /// Feature names in [`FeatureSet::features`] order.
    pub fn feature_names(&self) -> Vec<String> {
        self.features().map(|f| f.name().to_string()).collect()
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.features().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EventField, WindowSpec};

    fn problems_of(text: &str) -> Vec<FeatureProblem> {
        match FeatureSet::from_toml_str(text) {
            Err(FeatureConfigError::Invalid { problems }) => problems,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn has(problems: &[FeatureProblem], feature: &str, needle: &str) -> bool {
        problems
            .iter()
            .any(|p| p.feature == feature && p.message.contains(needle))
    }

    #[test]
    fn parses_windows_filters_and_groups_by_entity() {
        let set = FeatureSet::from_toml_str(
            r#"
            [[feature]]
            name = "card_count_10m"
            entity = "card_id"
            aggregation = "count"
            window = { kind = "sliding", size = "10m" }
            filter = { field = "type", equals = "payment" }

            [[feature]]
            name = "card_merchant_sum_1h"
            entity = "card_id + merchant_id"
            aggregation = "sum"
            window = { kind = "hopping", size = "1h", slide = "5m" }
            filter = [{ field = "amount", lt = 2 }, { field = "country", in = ["DE", "FR"] }]

            [[feature]]
            name = "card_max_1d"
            entity = "card_id"
            aggregation = "max"
            window = { kind = "tumbling", size = "1d" }
            "#,
        )
        .unwrap();
        assert_eq!(set.groups().len(), 2);
        assert_eq!(set.groups()[0].key_spec().name(), "card_id");
        assert_eq!(set.groups()[0].features().len(), 2);
        assert_eq!(set.groups()[1].key_spec().name(), "card_id+merchant_id");
        assert_eq!(
            set.feature_names(),
            ["card_count_10m", "card_max_1d", "card_merchant_sum_1h"]
        );
        let f = &set.groups()[0].features()[0];
        assert_eq!(
            f.window(),
            WindowSpec {
                granularity_ms: 1_000,
                size_ms: 600_000
            }
        );
        let g = &set.groups()[1].features()[0];
        assert_eq!(g.field(), Some(EventField::Amount));
        assert_eq!(g.window().granularity_ms, 300_000);
        assert_eq!(
            set.groups()[0].features()[1].window().granularity_ms,
            86_400_000
        );
        assert_eq!(set.groups()[0].longest_window_ms(), 86_400_000);
        assert_eq!(set.group_index("card_id+merchant_id"), Some(1));
    }

    #[test]
    fn every_problem_is_reported_with_the_feature_name() {
        let problems = problems_of(
            r#"
            [[feature]]
            name = "a"
            entity = "card_id"
            aggregation = "count"
            window = { kind = "hopping", size = "10m", slide = "3m" }
            colour = "red"
            shape = "round"

            [[feature]]
            name = "a"
            entity = "card_id+shoe_size"
            aggregation = "sum"
            field = "country"
            window = { kind = "sliding", size = "1h", granularity = "7m" }
            filter = [{ field = "amount", lt = 2, gt = 1 }, { field = "type", lt = 3 }, { field = "nope", equals = "x" }]

            [[feature]]
            name = "Bad-Name"
            entity = "device_id"
            aggregation = "distinct_count"
            window = { kind = "tumbling", size = "0s" }
            hll_precision = 30

            [[feature]]
            name = "no_window"
            entity = "ip"
            aggregation = "median"

            [[feature]]
            name = "count_with_field"
            entity = "ip"
            aggregation = "count"
            field = "amount"
            window = { kind = "sliding", size = "1m" }
            distinct_exact_limit = 5
            "#,
        );
        assert!(has(&problems, "a", "unknown key `colour`"), "{problems:#?}");
        assert!(has(&problems, "a", "unknown key `shape`"));
        assert!(has(&problems, "a", "multiple of its slide"));
        assert!(has(&problems, "a", "duplicate feature name"));
        assert!(has(&problems, "a", "entity field `shoe_size`"));
        assert!(has(&problems, "a", "needs a numeric field"));
        assert!(has(&problems, "a", "multiple of its granularity"));
        assert!(has(&problems, "a", "exactly one operator"));
        assert!(has(&problems, "a", "filter `lt` needs a numeric field"));
        assert!(has(&problems, "a", "filter on unknown field `nope`"));
        assert!(has(&problems, "Bad-Name", "name must match"));
        assert!(has(&problems, "Bad-Name", "needs a field"));
        assert!(has(&problems, "Bad-Name", "size must be > 0"));
        assert!(has(&problems, "Bad-Name", "hll_precision"));
        assert!(has(&problems, "no_window", "unknown variant `median`"));
        assert!(has(&problems, "count_with_field", "takes no field"));
        assert!(has(&problems, "count_with_field", "distinct_count only"));
        // The error's text names every feature with a problem.
        let text = FeatureSet::from_toml_str("[[feature]]\nname = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("x: entity is required"), "{text}");
        assert!(text.contains("x: aggregation is required"), "{text}");
        assert!(text.contains("x: window is required"), "{text}");
    }

    #[test]
    fn bad_toml_and_empty_files_are_errors() {
        assert!(matches!(
            FeatureSet::from_toml_str("[[feature]\n"),
            Err(FeatureConfigError::Toml { .. })
        ));
        assert!(matches!(
            FeatureSet::from_toml_str("features = 1"),
            Err(FeatureConfigError::Toml { .. })
        ));
        let p = problems_of("");
        assert!(has(&p, "(file)", "no features"));
        let p = problems_of(
            "[[feature]]\nname = \"w\"\nentity = \"ip\"\naggregation = \"count\"\nwindow = { kind = \"sliding\", size = \"1m\", slide = \"1s\" }\n",
        );
        assert!(has(&p, "w", "unknown field `slide`"), "{p:#?}");
    }
}
