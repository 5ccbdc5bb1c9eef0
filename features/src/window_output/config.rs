//! Window-output definitions: the `[[window_output]]` tables of the feature file, their
//! validation (every problem collected, named `window_output NAME`) and the compiled
//! [`WindowOutput`] the windows stage runs.
//!
//! A window output counts the events of one feature group's entity (its key spec must be the
//! entity of at least one feature: the windows stage reads the events the router sends for that
//! group) and sums one numeric field, per tumbling or hopping window. See docs/features.md,
//! "Window outputs".

use std::collections::HashSet;
use std::time::Duration;

use riskstream_common::Event;
use serde::{Deserialize, Serialize};

use super::WindowOutputSpec;
use crate::config::{
    CompiledPredicate, EventField, FilterDef, KeySpec, MAX_NAME_LEN, MAX_WINDOW_MS, WindowDef,
    compile_entity, compile_predicate, compile_window, duration_ms,
};
use crate::error::FeatureProblem;

/// Name of the TOML array of window-output tables.
pub const WINDOW_OUTPUT_TABLE: &str = "window_output";
/// Default allowed lateness of a window output (the state's default allowed lateness).
pub const DEFAULT_WINDOW_ALLOWED_LATENESS: Duration = Duration::from_secs(5 * 60);
/// Most windows one event can fall in (`size / slide` of a hopping window): each is updated.
pub const MAX_WINDOWS_PER_EVENT: i64 = 100;

const WINDOW_OUTPUT_KEYS: [&str; 7] = [
    "name",
    "description",
    "entity",
    "window",
    "allowed_lateness",
    "field",
    "filter",
];

/// One window output as written in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowOutputDef {
    /// Unique among window outputs, `[a-z][a-z0-9_]*`; the `output` of every emitted record.
    pub name: String,
    /// Free text for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The entity key, as a feature's (`card_id`, `card_id+merchant_id`); some feature must
    /// have the same entity.
    pub entity: String,
    /// `{ kind = "tumbling", size }` or `{ kind = "hopping", size, slide }`.
    pub window: Option<WindowDef>,
    /// How long after a window's end (on the watermark) late events still update it (default
    /// 5m).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_lateness: Option<Duration>,
    /// The summed numeric field (default `amount`); the count counts every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// One predicate or a list that must all hold (as a feature's): other events are not
    /// counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterDef>,
}

/// A validated window output.
#[derive(Debug, Clone)]
pub struct WindowOutput {
    def: WindowOutputDef,
    key_spec: KeySpec,
    /// Index of the feature group with the same key spec.
    group: usize,
    spec: WindowOutputSpec,
    field: EventField,
    filter: Vec<CompiledPredicate>,
}

impl WindowOutput {
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The definition as written (after validation).
    pub fn def(&self) -> &WindowOutputDef {
        &self.def
    }

    pub fn key_spec(&self) -> &KeySpec {
        &self.key_spec
    }

    /// The feature group whose events it counts (its index in `FeatureSet::groups`).
    pub fn group_index(&self) -> usize {
        self.group
    }

    pub fn spec(&self) -> WindowOutputSpec {
        self.spec
    }

    /// The summed field.
    pub fn field(&self) -> EventField {
        self.field
    }

    /// Whether the event is counted (its filter holds; no filter: always).
    pub fn counts(&self, e: &Event) -> bool {
        self.filter.iter().all(|p| p.matches(e))
    }

    /// The summed value of an event (`None`: the field is absent; the event still counts).
    pub fn value_of(&self, e: &Event) -> Option<f64> {
        self.field.num_of(e)
    }
}

fn label(i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{WINDOW_OUTPUT_TABLE} #{}", i + 1)
    } else {
        format!("{WINDOW_OUTPUT_TABLE} {name}")
    }
}

/// Checks the raw `[[window_output]]` tables: reports every unknown key, then deserializes
/// the rest.
pub(crate) fn parse_defs(
    raw: Vec<toml::Value>,
    problems: &mut Vec<FeatureProblem>,
) -> Vec<WindowOutputDef> {
    let mut defs = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let toml::Value::Table(mut table) = value else {
            problems.push(FeatureProblem::new(
                label(i, ""),
                "must be a table ([[window_output]])",
            ));
            continue;
        };
        let name = label(
            i,
            table
                .get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or(""),
        );
        let unknown: Vec<String> = table
            .keys()
            .filter(|k| !WINDOW_OUTPUT_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in &unknown {
            problems.push(FeatureProblem::new(
                &name,
                format!(
                    "unknown key `{k}` (expected one of: {})",
                    WINDOW_OUTPUT_KEYS.join(", ")
                ),
            ));
            table.remove(k);
        }
        match toml::Value::Table(table).try_into::<WindowOutputDef>() {
            Ok(def) => defs.push(def),
            Err(e) => problems.push(FeatureProblem::new(&name, e.to_string().trim_end())),
        }
    }
    defs
}

/// Validates window outputs against the feature groups' key specs (`groups`, in group order;
/// `None`: the features had problems, so the entity check is skipped).
pub(crate) fn compile_all(
    defs: Vec<WindowOutputDef>,
    groups: Option<&[KeySpec]>,
    problems: &mut Vec<FeatureProblem>,
) -> Vec<WindowOutput> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, def) in defs.into_iter().enumerate() {
        let name = label(i, &def.name);
        if !def.name.is_empty() && !seen.insert(def.name.clone()) {
            problems.push(FeatureProblem::new(&name, "duplicate window output name"));
        }
        if let Some(o) = compile(&name, def, groups, problems) {
            out.push(o);
        }
    }
    out
}

fn compile(
    name: &str,
    def: WindowOutputDef,
    groups: Option<&[KeySpec]>,
    problems: &mut Vec<FeatureProblem>,
) -> Option<WindowOutput> {
    let before = problems.len();
    let valid_name = def.name.len() <= MAX_NAME_LEN
        && def.name.starts_with(|c: char| c.is_ascii_lowercase())
        && def
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if def.name.is_empty() {
        problems.push(FeatureProblem::new(name, "name is required"));
    } else if !valid_name {
        problems.push(FeatureProblem::new(
            name,
            format!("name must match [a-z][a-z0-9_]* and be at most {MAX_NAME_LEN} characters"),
        ));
    }
    let key_spec = compile_entity(&def.entity, name, problems);
    let group = match (&key_spec, groups) {
        (Some(k), Some(groups)) => {
            let found = groups.iter().position(|g| g == k);
            if found.is_none() {
                let entities: Vec<String> = groups.iter().map(KeySpec::name).collect();
                problems.push(FeatureProblem::new(
                    name,
                    format!(
                        "entity `{}` is not the entity of any feature (a window output counts the events routed for a feature group; entities with features: {})",
                        k.name(),
                        entities.join(", ")
                    ),
                ));
            }
            found
        }
        _ => None,
    };
    let spec = compile_spec(&def, name, problems);
    let field = match def.field.as_deref() {
        None => Some(EventField::Amount),
        Some(f) => match EventField::from_name(f) {
            Some(ef) if ef.is_numeric() => Some(ef),
            Some(ef) => {
                problems.push(FeatureProblem::new(
                    name,
                    format!("field `{ef}` is text: the summed field must be numeric (amount)"),
                ));
                None
            }
            None => {
                problems.push(FeatureProblem::new(
                    name,
                    format!("unknown field `{f}` (the summed field must be numeric: amount)"),
                ));
                None
            }
        },
    };
    let filter: Vec<Option<CompiledPredicate>> = def
        .filter
        .iter()
        .flat_map(FilterDef::predicates)
        .map(|p| compile_predicate(p, name, problems))
        .collect();
    if problems.len() != before {
        return None;
    }
    let filter = filter.into_iter().collect::<Option<Vec<_>>>()?;
    Some(WindowOutput {
        key_spec: key_spec?,
        group: group?,
        spec: spec?,
        field: field?,
        filter,
        def,
    })
}

fn compile_spec(
    def: &WindowOutputDef,
    name: &str,
    problems: &mut Vec<FeatureProblem>,
) -> Option<WindowOutputSpec> {
    let window = match &def.window {
        None => {
            problems.push(FeatureProblem::new(
                name,
                "window is required (e.g. window = { kind = \"tumbling\", size = \"1m\" })",
            ));
            return None;
        }
        Some(WindowDef::Sliding { .. }) => {
            problems.push(FeatureProblem::new(
                name,
                "window must be tumbling or hopping (a sliding window ends at every event: it has no close to emit at)",
            ));
            return None;
        }
        Some(w) => compile_window(w, name, problems),
    };
    let lateness = def
        .allowed_lateness
        .unwrap_or(DEFAULT_WINDOW_ALLOWED_LATENESS);
    let allowed_lateness_ms = if lateness.is_zero() {
        Some(0)
    } else {
        duration_ms("allowed_lateness", lateness, name, problems)
    };
    let window = window?;
    let windows_per_event = window.size_ms / window.granularity_ms;
    if windows_per_event > MAX_WINDOWS_PER_EVENT {
        problems.push(FeatureProblem::new(
            name,
            format!(
                "window size / slide is {windows_per_event}: every event updates that many windows, at most {MAX_WINDOWS_PER_EVENT}"
            ),
        ));
        return None;
    }
    let allowed_lateness_ms = allowed_lateness_ms?;
    debug_assert!(allowed_lateness_ms <= MAX_WINDOW_MS);
    Some(WindowOutputSpec {
        size_ms: window.size_ms,
        slide_ms: window.granularity_ms,
        allowed_lateness_ms,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::FeatureSet;
    use crate::error::{FeatureConfigError, FeatureProblem};

    const CARD_FEATURE: &str = r#"
        [[feature]]
        name = "card_count_10m"
        entity = "card_id"
        aggregation = "count"
        window = { kind = "sliding", size = "10m" }

        [[feature]]
        name = "card_merchant_count_1h"
        entity = "card_id+merchant_id"
        aggregation = "count"
        window = { kind = "sliding", size = "1h", granularity = "1m" }
    "#;

    fn problems_of(text: &str) -> Vec<FeatureProblem> {
        match FeatureSet::from_toml_str(&format!("{CARD_FEATURE}\n{text}")) {
            Err(FeatureConfigError::Invalid { problems }) => problems,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn has(problems: &[FeatureProblem], who: &str, needle: &str) -> bool {
        problems
            .iter()
            .any(|p| p.feature == who && p.message.contains(needle))
    }

    #[test]
    fn window_outputs_compile_against_the_feature_groups() {
        let set = FeatureSet::from_toml_str(&format!(
            r#"{CARD_FEATURE}
            [[window_output]]
            name = "card_1m"
            entity = "card_id"
            window = {{ kind = "tumbling", size = "1m" }}

            [[window_output]]
            name = "card_merchant_payments_10m"
            description = "hopping, payments only"
            entity = "card_id + merchant_id"
            window = {{ kind = "hopping", size = "10m", slide = "1m" }}
            allowed_lateness = "0s"
            field = "amount"
            filter = {{ field = "type", equals = "payment" }}
            "#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let outs = set.window_outputs();
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[0].name(), "card_1m");
        assert_eq!(outs[0].group_index(), 0);
        assert_eq!(outs[0].spec().size_ms, 60_000);
        assert_eq!(outs[0].spec().slide_ms, 60_000);
        assert_eq!(outs[0].spec().allowed_lateness_ms, 300_000, "default 5m");
        assert_eq!(outs[1].group_index(), 1);
        assert_eq!(outs[1].key_spec().name(), "card_id+merchant_id");
        assert_eq!(outs[1].spec().slide_ms, 60_000);
        assert_eq!(outs[1].spec().allowed_lateness_ms, 0);
        let payment: riskstream_common::Event = serde_json::from_value(serde_json::json!({
            "event_id": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6071",
            "event_time": 0, "card_id": "c", "type": "payment", "amount": 2.5
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut refund = payment.clone();
        refund.event_type = Some("refund".into());
        refund.amount = None;
        assert!(outs[1].counts(&payment));
        assert!(!outs[1].counts(&refund));
        assert!(outs[0].counts(&refund), "no filter: every event counts");
        assert_eq!(outs[0].value_of(&payment), Some(2.5));
        assert_eq!(outs[0].value_of(&refund), None);
        // No window outputs is fine.
        assert!(
            FeatureSet::from_toml_str(CARD_FEATURE)
                .unwrap_or_else(|e| panic!("{e}"))
                .window_outputs()
                .is_empty()
        );
    }

    #[test]
    fn every_window_output_problem_is_reported_with_its_name() {
        let problems = problems_of(
            r#"
            [[window_output]]
            name = "a"
            entity = "ip"
            window = { kind = "sliding", size = "1m" }
            colour = "red"

            [[window_output]]
            name = "a"
            entity = "card_id"
            window = { kind = "hopping", size = "10m", slide = "3m" }
            field = "country"
            allowed_lateness = "1500us"

            [[window_output]]
            entity = "card_id"
            window = { kind = "hopping", size = "1h", slide = "1s" }
            field = "shoe_size"
            filter = { field = "amount", equals = "x" }

            [[window_output]]
            name = "Bad"
            entity = "card_id"
            window = { kind = "tumbling", size = "0s" }
            allowed_lateness = "500d"

            [[window_output]]
            name = "no_window"
            entity = "amount"
            "#,
        );
        let w = |n: &str| format!("window_output {n}");
        assert!(
            has(&problems, &w("a"), "unknown key `colour`"),
            "{problems:#?}"
        );
        assert!(has(
            &problems,
            &w("a"),
            "entity `ip` is not the entity of any feature"
        ));
        assert!(has(&problems, &w("a"), "card_id, card_id+merchant_id"));
        assert!(has(&problems, &w("a"), "tumbling or hopping"));
        assert!(has(&problems, &w("a"), "duplicate window output name"));
        assert!(has(&problems, &w("a"), "multiple of its slide"));
        assert!(has(&problems, &w("a"), "field `country` is text"));
        assert!(has(
            &problems,
            &w("a"),
            "allowed_lateness must be a whole number"
        ));
        assert!(has(&problems, "window_output #3", "name is required"));
        assert!(has(
            &problems,
            "window_output #3",
            "every event updates that many windows"
        ));
        assert!(has(
            &problems,
            "window_output #3",
            "unknown field `shoe_size`"
        ));
        assert!(has(&problems, "window_output #3", "needs a number"));
        assert!(has(&problems, &w("Bad"), "name must match"));
        assert!(has(&problems, &w("Bad"), "size must be > 0"));
        assert!(has(
            &problems,
            &w("Bad"),
            "allowed_lateness must be at most 400d"
        ));
        assert!(has(&problems, &w("no_window"), "window is required"));
        assert!(has(&problems, &w("no_window"), "not a string event field"));
        // A bad type names the table too.
        let p = problems_of("[[window_output]]\nname = \"t\"\nentity = \"card_id\"\nwindow = 3\n");
        assert!(has(&p, &w("t"), "invalid type"), "{p:#?}");
    }
}
