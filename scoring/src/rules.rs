//! Rules in CEL (the Common Expression Language, through the `cel` crate): the rule-set file
//! format, validation of a whole set before use (syntax with positions, unknown feature and
//! event-field names by walking the parsed AST, types by evaluating every sub-expression
//! against a typed sample), run-time evaluation that isolates each rule's errors, and
//! [`RulesHandle`], the atomically swapped current set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cel::common::ast::{EntryExpr, Expr, operators};
use cel::common::value::CelVal;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, ExecutionError, IdedExpr, Program, Value};
use riskstream_common::event::fields;
use riskstream_common::{Event, FeatureValue, Outcome};
use serde::{Deserialize, Serialize};

use super::catalog::{FeatureCatalog, FeatureKind};

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

/// Sample values the type check evaluates rules against.
const SAMPLE_NUMBER: f64 = 1.0;
const SAMPLE_TEXT: &str = "sample";
const SAMPLE_EVENT_TIME_MS: i64 = 1_700_000_000_000;

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

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// What kind of problem a rule set has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The file is not valid TOML of the rule-set shape (position in the file).
    Toml,
    /// A rule's fields are wrong (missing reason, both or neither of outcome and score, ...).
    Definition,
    /// The expression does not parse (position in the expression).
    Syntax,
    /// `features.<name>` names no known feature.
    UnknownFeature,
    /// `event.<name>` names no event field.
    UnknownEventField,
    /// An identifier other than `event`, `features` or a macro's variable.
    UnknownVariable,
    /// Evaluating against a typed sample failed (e.g. a number compared with a string), or the
    /// expression does not give a bool.
    Type,
    /// The set's version is already running with different rules.
    Version,
}

impl ProblemKind {
    fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Toml => "invalid file",
            ProblemKind::Definition => "invalid definition",
            ProblemKind::Syntax => "syntax error",
            ProblemKind::UnknownFeature => "unknown feature",
            ProblemKind::UnknownEventField => "unknown event field",
            ProblemKind::UnknownVariable => "unknown variable",
            ProblemKind::Type => "type error",
            ProblemKind::Version => "version conflict",
        }
    }
}

/// One problem found while validating a rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleProblem {
    /// The rule's name, when the problem belongs to one rule.
    pub rule: Option<String>,
    pub kind: ProblemKind,
    /// Where, when known: in the file for [`ProblemKind::Toml`], in the expression for
    /// [`ProblemKind::Syntax`].
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(rule) = &self.rule {
            write!(f, "rule {rule:?}: ")?;
        }
        f.write_str(self.kind.as_str())?;
        if let Some(p) = self.position {
            write!(f, " at line {}, column {}", p.line, p.column)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a rule set was rejected: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error(
    "rule set {} rejected with {} problem(s): {}",
    .version.as_deref().unwrap_or("(no version)"),
    .problems.len(),
    .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
)]
pub struct RuleSetError {
    pub version: Option<String>,
    pub problems: Vec<RuleProblem>,
}

impl RuleSetError {
    /// Whether some problem is of `kind` (and, if given, for rule `rule`).
    pub fn has(&self, kind: ProblemKind, rule: Option<&str>) -> bool {
        self.problems
            .iter()
            .any(|p| p.kind == kind && (rule.is_none() || p.rule.as_deref() == rule))
    }
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
                message: e.message().to_string(),
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
            let mut walker = NameCheck {
                catalog,
                bound: Vec::new(),
                found: Vec::new(),
            };
            walker.walk(program.expression());
            let names_ok = walker.found.is_empty();
            for (kind, message) in walker.found {
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

/// The CEL function `value_or(x, default)`: `x`, or `default` when `x` is null (an empty
/// window of an `avg` / `min` / `max` / `last` / `time_since_last` feature).
pub const FN_VALUE_OR: &str = "value_or";

fn value_or(
    cel::extractors::Arguments(args): cel::extractors::Arguments,
) -> Result<Value, ExecutionError> {
    match args.as_slice() {
        [Value::Null, default] => Ok(default.clone()),
        [v, _] => Ok(v.clone()),
        _ => Err(ExecutionError::function_error(
            FN_VALUE_OR,
            "takes two arguments: value_or(x, default)",
        )),
    }
}

/// The standard CEL functions and riskstream's null-safe helper.
fn root_context() -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_function(FN_VALUE_OR, value_or);
    ctx
}

/// Walks the parsed AST and reports names that do not exist.
struct NameCheck<'a> {
    catalog: &'a FeatureCatalog,
    /// Variables bound by macros (`exists(x, ...)`), innermost last.
    bound: Vec<String>,
    found: Vec<(ProblemKind, String)>,
}

impl NameCheck<'_> {
    fn is_bound(&self, name: &str) -> bool {
        self.bound.iter().any(|b| b == name)
    }

    /// Whether `e` is the unshadowed variable `var`.
    fn is_var(&self, e: &IdedExpr, var: &str) -> bool {
        matches!(&e.expr, Expr::Ident(n) if n == var && !self.is_bound(n))
    }

    fn check_member(&mut self, root: &IdedExpr, name: &str) {
        if self.is_var(root, VAR_FEATURES) && !self.catalog.contains(name) {
            self.found.push((
                ProblemKind::UnknownFeature,
                format!("features.{name} is not a known feature"),
            ));
        } else if self.is_var(root, VAR_EVENT) && !is_event_field(name) {
            self.found.push((
                ProblemKind::UnknownEventField,
                format!("event.{name} is not an event field"),
            ));
        }
    }

    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Select(s) => {
                self.check_member(&s.operand, &s.field);
                self.walk(&s.operand);
            }
            Expr::Call(c) => {
                if (c.func_name == operators::INDEX || c.func_name == operators::OPT_INDEX)
                    && c.args.len() == 2
                    && (self.is_var(&c.args[0], VAR_FEATURES) || self.is_var(&c.args[0], VAR_EVENT))
                {
                    match &c.args[1].expr {
                        Expr::Literal(CelVal::String(name)) => self.check_member(&c.args[0], name),
                        _ => self.found.push((
                            ProblemKind::UnknownFeature,
                            "features and event must be indexed by a literal name".into(),
                        )),
                    }
                }
                if let Some(t) = &c.target {
                    self.walk(t);
                }
                for a in &c.args {
                    self.walk(a);
                }
            }
            Expr::Ident(name) => {
                if !self.is_bound(name) && name != VAR_EVENT && name != VAR_FEATURES {
                    self.found.push((
                        ProblemKind::UnknownVariable,
                        format!("{name} is not defined (use event or features)"),
                    ));
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let depth = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                self.bound.push(c.accu_var.clone());
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(depth);
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.walk(x)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.walk(&me.key);
                            self.walk(&me.value);
                        }
                        EntryExpr::StructField(sf) => self.walk(&sf.value),
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.walk(&me.key);
                            self.walk(&me.value);
                        }
                        EntryExpr::StructField(sf) => self.walk(&sf.value),
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

fn is_event_field(name: &str) -> bool {
    EVENT_STRING_FIELDS.contains(&name)
        || name == EVENT_TIME_MS
        || name == fields::AMOUNT
        || name == fields::ATTRIBUTES
}

/// Evaluates the whole expression and every call in it (children first, outside macro
/// bodies) against the typed sample, so that a type error in a branch that `&&`/`||` would
/// skip is still found. Missing map keys (free-form `attributes`) are not type errors.
fn type_check(root: &Context<'static>, sample: &RuleInput, expr: &IdedExpr) -> Vec<String> {
    let mut ctx = root.new_inner_scope();
    ctx.add_variable_from_value(VAR_EVENT, sample.event.clone());
    ctx.add_variable_from_value(VAR_FEATURES, sample.features.clone());
    let mut calls = Vec::new();
    collect_calls(expr, &mut calls);
    let mut messages: Vec<String> = Vec::new();
    let mut push = |m: String| {
        if !messages.contains(&m) {
            messages.push(m);
        }
    };
    for call in calls {
        if let Err(e) = ctx.resolve(call)
            && !matches!(e, ExecutionError::NoSuchKey(_))
        {
            push(lowercase_first(&e.to_string()));
        }
    }
    match ctx.resolve(expr) {
        Ok(Value::Bool(_)) => {}
        Ok(other) => push(format!(
            "the expression gives a {}; a rule must give a bool",
            other.type_of()
        )),
        Err(ExecutionError::NoSuchKey(_)) => {}
        Err(e) => push(lowercase_first(&e.to_string())),
    }
    messages
}

fn collect_calls<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                collect_calls(t, out);
            }
            for a in &c.args {
                collect_calls(a, out);
            }
            out.push(e);
        }
        Expr::Select(s) => collect_calls(&s.operand, out),
        Expr::List(l) => l.elements.iter().for_each(|x| collect_calls(x, out)),
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    collect_calls(&me.key, out);
                    collect_calls(&me.value, out);
                }
            }
        }
        // A macro's body refers to its own variables: it is checked as a whole, with the
        // expression it belongs to.
        Expr::Comprehension(c) => collect_calls(&c.iter_range, out),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => {}
    }
}

fn sample_input(catalog: &FeatureCatalog) -> RuleInput {
    let mut features: HashMap<Key, Value> = HashMap::with_capacity(catalog.len());
    for (name, kind) in catalog.iter() {
        let v = match kind {
            FeatureKind::Number => Value::Float(SAMPLE_NUMBER),
            FeatureKind::Text => Value::from(SAMPLE_TEXT),
        };
        features.insert(Key::from(name), v);
    }
    let mut event: HashMap<Key, Value> = HashMap::with_capacity(16);
    for f in EVENT_STRING_FIELDS {
        event.insert(Key::from(f), Value::from(SAMPLE_TEXT));
    }
    event.insert(Key::from(EVENT_TIME_MS), Value::Int(SAMPLE_EVENT_TIME_MS));
    event.insert(Key::from(fields::AMOUNT), Value::Float(SAMPLE_NUMBER));
    event.insert(
        Key::from(fields::ATTRIBUTES),
        Value::Map(CelMap::from(HashMap::<Key, Value>::new())),
    );
    RuleInput {
        event: Value::Map(CelMap::from(event)),
        features: Value::Map(CelMap::from(features)),
    }
}

/// The CEL `event` map: strings, `amount` (double), `event_time_ms` (int), `attributes`
/// (map). Absent optional fields are absent (test with `has(event.amount)`).
fn event_value(e: &Event) -> Value {
    let mut m: HashMap<Key, Value> = HashMap::with_capacity(16);
    m.insert(
        Key::from(fields::EVENT_ID),
        Value::from(e.event_id.to_string()),
    );
    m.insert(Key::from(EVENT_TIME_MS), Value::Int(e.event_time_ms));
    for f in EVENT_STRING_FIELDS {
        if f == fields::EVENT_ID {
            continue;
        }
        if let Some(v) = e.field_str(f) {
            m.insert(Key::from(f), Value::from(v));
        }
    }
    if let Some(a) = e.amount {
        m.insert(Key::from(fields::AMOUNT), Value::Float(a));
    }
    let attributes: HashMap<Key, Value> = e
        .attributes
        .iter()
        .map(|(k, v)| (Key::from(k.as_str()), json_value(v)))
        .collect();
    m.insert(
        Key::from(fields::ATTRIBUTES),
        Value::Map(CelMap::from(attributes)),
    );
    Value::Map(CelMap::from(m))
}

/// The CEL `features` map: numbers as double, text as string, no value as null.
fn features_value(features: &BTreeMap<String, FeatureValue>) -> Value {
    let m: HashMap<Key, Value> = features
        .iter()
        .map(|(k, v)| {
            let v = match v {
                FeatureValue::Null => Value::Null,
                FeatureValue::Number(n) => Value::Float(*n),
                FeatureValue::Text(s) => Value::from(s.as_str()),
            };
            (Key::from(k.as_str()), v)
        })
        .collect();
    Value::Map(CelMap::from(m))
}

fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_value).collect())),
        serde_json::Value::Object(o) => {
            let m: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::from(k.as_str()), json_value(v)))
                .collect();
            Value::Map(CelMap::from(m))
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn position_of(text: &str, offset: usize) -> Position {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Position {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    }
}

/// The crate's messages start with a capital; ours are lowercase.
fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(
            RuleSet::compile(&one_rule("features[\"card_count_10m\"] > 1.0"), &catalog()).is_ok()
        );
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
        let err =
            RuleSet::compile(&one_rule("features.card_count_10m + 1.0"), &catalog()).unwrap_err();
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
        let err =
            RuleSet::compile("version = \"x\"\n[[rules]]\nname = 3\n", &catalog()).unwrap_err();
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
}
