//! Values for CEL: the event and the feature values converted to CEL maps, and the functions
//! rules may call besides the standard ones (`value_or`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::objects::{Key, Map as CelMap};
use cel::{Context, ExecutionError, Value};
use riskstream_common::event::fields;
use riskstream_common::{Event, FeatureValue};

use super::{EVENT_STRING_FIELDS, EVENT_TIME_MS};

/// The CEL function `value_or(x, default)`: `x`, or `default` when `x` is null (an empty
/// window of an `avg` / `min` / `max` / `last` / `time_since_last` feature).
pub const FN_VALUE_OR: &str = "value_or";

pub(super) fn value_or(
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
pub(super) fn root_context() -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_function(FN_VALUE_OR, value_or);
    ctx
}

/// The CEL `event` map: strings, `amount` (double), `event_time_ms` (int), `attributes`
/// (map). Absent optional fields are absent (test with `has(event.amount)`).
pub(super) fn event_value(e: &Event) -> Value {
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
pub(super) fn features_value(features: &BTreeMap<String, FeatureValue>) -> Value {
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

pub(super) fn json_value(v: &serde_json::Value) -> Value {
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
