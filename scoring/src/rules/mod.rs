//! Rules in CEL (the Common Expression Language, through the `cel` crate): the rule-set file
//! format, validation of a whole set before use (syntax with positions, unknown feature and
//! event-field names by walking the parsed AST, types by evaluating every sub-expression
//! against a typed sample), run-time evaluation that isolates each rule's errors, and
//! [`RulesHandle`], the atomically swapped current set.
//!
//! By role: this module holds the file format, the compiled set, its evaluation and the
//! handle; [`check`] validates a set before use, [`values`] converts to CEL values and holds the
//! extra functions, [`problems`] the errors.

mod check;
mod problems;
#[cfg(test)]
mod tests;
mod values;

use check::{sample_input, type_check, unknown_names};
pub use problems::{Position, ProblemKind, RuleProblem, RuleSetError};
use problems::{lowercase_first, position_of};
pub use values::FN_VALUE_OR;
use values::{event_value, features_value, root_context};

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cel::{Context, Program, Value};
use riskstream_common::event::fields;
use riskstream_common::{Event, FeatureValue, Outcome};
use serde::{Deserialize, Serialize};

use super::catalog::FeatureCatalog;

/// The CEL variable holding the event's fields.
pub const VAR_EVENT: &str = "event";
/// The CEL variable holding the feature values.
pub const VAR_FEATURES: &str = "features";
/// The event's time in the CEL `event` map (an `int` of epoch milliseconds).
pub const EVENT_TIME_MS: &str = "event_time_ms";

/// Event fields visible to rules as CEL strings (absent fields are absent from the map).
pub const EVENT_STRING_FIELDS: [&str; 11] = [
    fields::EVENT_ID,
    fields::ACCOUNT_ID,
    fields::CARD_ID,
    fields::DEVICE_ID,
    fields::IP,
    fields::MERCHANT_ID,
    fields::EMAIL,
    fields::CURRENCY,
    fields::COUNTRY,
    fields::CHANNEL,
    fields::TYPE,
];

/// One rule as written in the rule-set file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique within the set; named in errors and in decision reasons' detail.
    pub name: String,
    /// A CEL expression over `event` and `features` that gives a bool.
    pub expression: String,
    /// The outcome the rule forces (at least) when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// What the rule adds to the acted-on model's score when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The reason code written into the decision when the rule fires.
    pub reason: String,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn enabled_default() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    version: String,
    /// The least outcome of an event for which any rule failed at run time (`review` by
    /// default; `approve` is rejected: a rule error never lets an event through).
    #[serde(default = "on_rule_error_default")]
    on_rule_error: Outcome,
    #[serde(default)]
    rules: Vec<Rule>,
}

fn on_rule_error_default() -> Outcome {
    Outcome::Review
}

struct CompiledRule {
    rule: Rule,
    program: Program,
    fired: AtomicU64,
    errors: AtomicU64,
}

/// A validated, compiled rule set. Immutable; swapped as a whole through [`RulesHandle`].
pub struct RuleSet {
    version: String,
    on_rule_error: Outcome,
    source: String,
    rules: Vec<CompiledRule>,
    /// The root CEL context with the standard functions, built once; each evaluation adds
    /// `event` and `features` in a child scope.
    root: Context<'static>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("version", &self.version)
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.rule.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The variables one event gives its rules, converted to CEL values once per event.
#[derive(Debug, Clone)]
pub struct RuleInput {
    event: Value,
    features: Value,
}

impl RuleInput {
    pub fn new(event: &Event, features: &BTreeMap<String, FeatureValue>) -> Self {
        Self {
            event: event_value(event),
            features: features_value(features),
        }
    }
}

/// A rule that fired.
#[derive(Debug, Clone, Copy)]
pub struct FiredRule<'a> {
    pub rule: &'a Rule,
}

/// A rule that failed at run time (the other rules still ran).
#[derive(Debug, Clone)]
pub struct RuleRuntimeError<'a> {
    pub rule: &'a Rule,
    pub message: String,
}

/// What one event's rules gave.
#[derive(Debug, Clone, Default)]
pub struct RuleEvaluation<'a> {
    pub fired: Vec<FiredRule<'a>>,
    pub errors: Vec<RuleRuntimeError<'a>>,
}

impl RuleEvaluation<'_> {
    /// The most severe outcome a fired rule forces, if any.
    pub fn forced_outcome(&self) -> Option<Outcome> {
        self.fired.iter().filter_map(|f| f.rule.outcome).max()
    }

    /// The sum of the fired rules' scores.
    pub fn score_adjustment(&self) -> f64 {
        self.fired.iter().filter_map(|f| f.rule.score).sum()
    }
}

/// Counters of one rule (per rule-set version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleStatsSnapshot {
    pub name: String,
    pub fired: u64,
    pub errors: u64,
}

impl RuleSet {
    /// Parses and validates a whole rule set (TOML). Every problem of every rule is reported.
    pub fn compile(text: &str, catalog: &FeatureCatalog) -> Result<RuleSet, RuleSetError> {
        let file: RuleFile = toml::from_str(text).map_err(|e| RuleSetError {
            version: None,
            problems: vec![RuleProblem {
                rule: None,
                kind: ProblemKind::Toml,
                position: e.span().map(|s| position_of(text, s.start)),
                message: toml_message(&e, text),
            }],
        })?;
        let mut problems = Vec::new();
        if file.version.trim().is_empty() {
            problems.push(RuleProblem {
                rule: None,
                kind: ProblemKind::Definition,
                position: None,
                message: "version must not be empty".into(),
            });
        }
        if file.on_rule_error == Outcome::Approve {
            problems.push(RuleProblem {
                rule: None,
                kind: ProblemKind::Definition,
                position: None,
                message: "on_rule_error must be review, challenge or decline: a rule that fails never approves".into(),
            });
        }
        let root = root_context();
        let sample = sample_input(catalog);
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for rule in file.rules {
            let mut problem = |kind, position, message: String| {
                problems.push(RuleProblem {
                    rule: Some(rule.name.clone()),
                    kind,
                    position,
                    message,
                })
            };
            if rule.name.trim().is_empty() {
                problem(
                    ProblemKind::Definition,
                    None,
                    "name must not be empty".into(),
                );
            } else if !names.insert(rule.name.clone()) {
                problem(
                    ProblemKind::Definition,
                    None,
                    "name is used by more than one rule".into(),
                );
            }
            if rule.reason.trim().is_empty() {
                problem(
                    ProblemKind::Definition,
                    None,
                    "reason must not be empty".into(),
                );
            }
            match (rule.outcome, rule.score) {
                (Some(_), Some(_)) => problem(
                    ProblemKind::Definition,
                    None,
                    "give either outcome or score, not both".into(),
                ),
                (None, None) => problem(
                    ProblemKind::Definition,
                    None,
                    "give an outcome to force or a score to add".into(),
                ),
                (None, Some(s)) if !s.is_finite() => problem(
                    ProblemKind::Definition,
                    None,
                    "score must be a finite number".into(),
                ),
                _ => {}
            }
            let program = match Program::compile(&rule.expression) {
                Ok(p) => p,
                Err(errs) => {
                    for e in errs.errors {
                        // The crate's positions are 1-based line and column.
                        let position = (e.pos.0 > 0).then(|| Position {
                            line: u32::try_from(e.pos.0).unwrap_or(u32::MAX),
                            column: u32::try_from(e.pos.1).unwrap_or(1).max(1),
                        });
                        let msg = e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg);
                        problem(ProblemKind::Syntax, position, lowercase_first(msg));
                    }
                    continue;
                }
            };
            let unknown = unknown_names(catalog, program.expression());
            let names_ok = unknown.is_empty();
            for (kind, message) in unknown {
                problem(kind, None, message);
            }
            if names_ok {
                for message in type_check(&root, &sample, program.expression()) {
                    problem(ProblemKind::Type, None, message);
                }
            }
            rules.push(CompiledRule {
                rule,
                program,
                fired: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            });
        }
        if !problems.is_empty() {
            return Err(RuleSetError {
                version: Some(file.version),
                problems,
            });
        }
        Ok(RuleSet {
            version: file.version,
            on_rule_error: file.on_rule_error,
            source: text.to_string(),
            rules,
            root,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The least outcome of an event for which a rule failed at run time.
    pub fn on_rule_error(&self) -> Outcome {
        self.on_rule_error
    }

    /// Every rule, enabled or not, in file order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// Runs every enabled rule. Never panics; a rule that fails is reported in `errors` and
    /// the others still run.
    pub fn evaluate<'a>(&'a self, input: &RuleInput) -> RuleEvaluation<'a> {
        let mut ctx = self.root.new_inner_scope();
        ctx.add_variable_from_value(VAR_EVENT, input.event.clone());
        ctx.add_variable_from_value(VAR_FEATURES, input.features.clone());
        let mut out = RuleEvaluation::default();
        for r in self.rules.iter().filter(|r| r.rule.enabled) {
            match r.program.execute(&ctx) {
                Ok(Value::Bool(true)) => {
                    r.fired.fetch_add(1, Ordering::Relaxed);
                    out.fired.push(FiredRule { rule: &r.rule });
                }
                Ok(Value::Bool(false)) => {}
                Ok(other) => {
                    r.errors.fetch_add(1, Ordering::Relaxed);
                    out.errors.push(RuleRuntimeError {
                        rule: &r.rule,
                        message: format!("gave a {}, not a bool", other.type_of()),
                    });
                }
                Err(e) => {
                    r.errors.fetch_add(1, Ordering::Relaxed);
                    out.errors.push(RuleRuntimeError {
                        rule: &r.rule,
                        message: lowercase_first(&e.to_string()),
                    });
                }
            }
        }
        out
    }

    /// Fired and error counters of every rule of this version.
    pub fn stats(&self) -> Vec<RuleStatsSnapshot> {
        self.rules
            .iter()
            .map(|r| RuleStatsSnapshot {
                name: r.rule.name.clone(),
                fired: r.fired.load(Ordering::Relaxed),
                errors: r.errors.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// What is wrong with a rule-set file that is not TOML: the toml crate's message, or (it is
/// empty for some errors, e.g. a control character in a comment) the character it stopped at.
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    match e.message().trim() {
        "" => e
            .span()
            .and_then(|s| text.get(s.start..))
            .and_then(|rest| rest.chars().next())
            .map_or_else(
                || "not a valid TOML file".to_string(),
                |c| format!("unexpected character {c:?}"),
            ),
        m => m.to_string(),
    }
}

/// The running rule set, swapped atomically. Share it (`Arc<RulesHandle>`) between the
/// scorer, the file watcher and the `rules` control-topic consumer.
#[derive(Debug)]
pub struct RulesHandle {
    current: ArcSwap<RuleSet>,
    catalog: Arc<FeatureCatalog>,
}

impl RulesHandle {
    pub fn new(initial: RuleSet, catalog: Arc<FeatureCatalog>) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            catalog,
        }
    }

    /// Compiles `text` and, if valid, makes it the first running set.
    pub fn from_text(text: &str, catalog: Arc<FeatureCatalog>) -> Result<Self, RuleSetError> {
        let set = RuleSet::compile(text, &catalog)?;
        Ok(Self::new(set, catalog))
    }

    /// The running set (cheap: one atomic load and an `Arc` clone).
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    pub fn version(&self) -> String {
        self.current.load().version.clone()
    }

    pub fn catalog(&self) -> &Arc<FeatureCatalog> {
        &self.catalog
    }

    /// Validates `text` as a whole and swaps it in; on any problem the running set is kept.
    /// The same version with the same text is a no-op; the same version with different text
    /// is rejected (a version names one rule set, so every worker runs the same rules).
    pub fn try_update(&self, text: &str) -> Result<String, RuleSetError> {
        let new = match RuleSet::compile(text, &self.catalog) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(
                    version = e.version.as_deref().unwrap_or(""),
                    running = %self.version(),
                    problems = e.problems.len(),
                    error = %e,
                    "rule set update rejected, keeping the running set"
                );
                return Err(e);
            }
        };
        let running = self.current.load();
        if running.version == new.version {
            if running.source == new.source {
                return Ok(new.version);
            }
            let e = RuleSetError {
                version: Some(new.version.clone()),
                problems: vec![RuleProblem {
                    rule: None,
                    kind: ProblemKind::Version,
                    position: None,
                    message: format!(
                        "version {:?} is already running with different rules; give the new set a new version",
                        new.version
                    ),
                }],
            };
            tracing::warn!(version = %new.version, "rule set update rejected: version conflict");
            return Err(e);
        }
        let version = new.version.clone();
        tracing::info!(
            from = %running.version,
            to = %version,
            rules = new.rules.len(),
            "rule set updated"
        );
        self.current.store(Arc::new(new));
        Ok(version)
    }
}
