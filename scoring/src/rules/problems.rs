//! Problems found in a rule set: where (line and column in its file), what kind, and the
//! error that carries them all.

use std::fmt;

use serde::Serialize;

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

/// 1-based line and column of byte `offset` in `text`.
pub(super) fn position_of(text: &str, offset: usize) -> Position {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Position {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    }
}

/// The crate's messages start with a capital; ours are lowercase.
pub(super) fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
