//! Checks a rule set before it is used: names (features and event fields) by walking the
//! parsed AST, and types by evaluating every sub-expression against a typed sample input.

use std::collections::HashMap;

use cel::common::ast::{EntryExpr, Expr, operators};
use cel::common::value::CelVal;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, ExecutionError, IdedExpr, Value};
use riskstream_common::event::fields;

use super::problems::{ProblemKind, lowercase_first};
use super::{EVENT_STRING_FIELDS, EVENT_TIME_MS, RuleInput, VAR_EVENT, VAR_FEATURES};
use crate::catalog::{FeatureCatalog, FeatureKind};

/// Sample values the type check evaluates rules against.
const SAMPLE_NUMBER: f64 = 1.0;
const SAMPLE_TEXT: &str = "sample";
const SAMPLE_EVENT_TIME_MS: i64 = 1_700_000_000_000;

/// The names in `expr` that do not exist (features not in `catalog`, unknown event fields), each
/// with its kind and a message.
pub(super) fn unknown_names(
    catalog: &FeatureCatalog,
    expr: &IdedExpr,
) -> Vec<(ProblemKind, String)> {
    let mut walker = NameCheck {
        catalog,
        bound: Vec::new(),
        found: Vec::new(),
    };
    walker.walk(expr);
    walker.found
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

pub(super) fn is_event_field(name: &str) -> bool {
    EVENT_STRING_FIELDS.contains(&name)
        || name == EVENT_TIME_MS
        || name == fields::AMOUNT
        || name == fields::ATTRIBUTES
}

/// Evaluates the whole expression and every call in it (children first, outside macro
/// bodies) against the typed sample, so that a type error in a branch that `&&`/`||` would
/// skip is still found. Missing map keys (free-form `attributes`) are not type errors.
pub(super) fn type_check(
    root: &Context<'static>,
    sample: &RuleInput,
    expr: &IdedExpr,
) -> Vec<String> {
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

pub(super) fn collect_calls<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
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

pub(super) fn sample_input(catalog: &FeatureCatalog) -> RuleInput {
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
