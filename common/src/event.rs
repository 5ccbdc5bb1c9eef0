//! The transaction event: its JSON contract, the validating decoder and the canonical encoding.
//!
//! Everything that enters riskstream (HTTP, `produce`, the `events` topic) goes through
//! [`EventDecoder::decode_value`], which never panics and names every bad field with a
//! machine-readable code and a human reason. See `docs/events.md` for the contract.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Field names of the event, as they appear in JSON.
pub mod fields {
    pub const EVENT_ID: &str = "event_id";
    pub const EVENT_TIME: &str = "event_time";
    pub const ACCOUNT_ID: &str = "account_id";
    pub const CARD_ID: &str = "card_id";
    pub const DEVICE_ID: &str = "device_id";
    pub const IP: &str = "ip";
    pub const MERCHANT_ID: &str = "merchant_id";
    pub const EMAIL: &str = "email";
    pub const AMOUNT: &str = "amount";
    pub const CURRENCY: &str = "currency";
    pub const COUNTRY: &str = "country";
    pub const CHANNEL: &str = "channel";
    pub const TYPE: &str = "type";
    pub const ATTRIBUTES: &str = "attributes";

    /// The entity fields an event can be keyed (partitioned, grouped) by.
    pub const ENTITY_FIELDS: [&str; 6] = [ACCOUNT_ID, CARD_ID, DEVICE_ID, IP, MERCHANT_ID, EMAIL];
}

/// Longest accepted string for an entity id, `channel` or `type`.
pub const MAX_ID_LEN: usize = 256;

/// A validated transaction event.
///
/// Serialized (the canonical form on Kafka), `event_time` is RFC 3339 UTC with milliseconds and
/// absent optional fields are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: Uuid,
    /// Event time, milliseconds since the Unix epoch (UTC).
    #[serde(rename = "event_time", with = "event_time_serde")]
    pub event_time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

impl Event {
    /// The value of a top-level field as a string, for keying and filtering
    /// (`amount` as its decimal text; `attributes` is not addressable this way).
    pub fn field_str(&self, field: &str) -> Option<&str> {
        match field {
            fields::ACCOUNT_ID => self.account_id.as_deref(),
            fields::CARD_ID => self.card_id.as_deref(),
            fields::DEVICE_ID => self.device_id.as_deref(),
            fields::IP => self.ip.as_deref(),
            fields::MERCHANT_ID => self.merchant_id.as_deref(),
            fields::EMAIL => self.email.as_deref(),
            fields::CURRENCY => self.currency.as_deref(),
            fields::COUNTRY => self.country.as_deref(),
            fields::CHANNEL => self.channel.as_deref(),
            fields::TYPE => self.event_type.as_deref(),
            _ => None,
        }
    }

    /// `event_time` as RFC 3339 UTC with milliseconds.
    pub fn event_time_rfc3339(&self) -> String {
        format_rfc3339_ms(self.event_time_ms)
    }

    /// The canonical JSON encoding (what lands on the `events` topic).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and a JSON map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

mod event_time_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        super::parse_event_time(&v).map_err(|e| D::Error::custom(e.reason))
    }
}

/// One problem with one field of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field's JSON path, e.g. `amount` or `attributes`.
    pub field: String,
    /// A stable, low-cardinality code (`required`, `invalid_type`, `invalid_value`,
    /// `unknown_field`, `too_large`, `in_future`).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why an event was refused: every field error found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("invalid event: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct EventError {
    pub errors: Vec<FieldError>,
}

impl EventError {
    fn one(e: FieldError) -> Self {
        Self { errors: vec![e] }
    }

    /// The code of the first error: the low-cardinality label for metrics.
    pub fn code(&self) -> &'static str {
        self.errors.first().map_or("invalid_value", |e| e.code)
    }
}

/// Limits the decoder enforces.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Largest accepted event, measured as its canonical JSON encoding.
    pub max_event_size_bytes: usize,
    /// How far past `now` an `event_time` may be.
    pub max_future_skew_ms: i64,
    /// A field that must be present (the partition key), if any.
    pub required_key: Option<String>,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_event_size_bytes: 64 * 1024,
            max_future_skew_ms: 5 * 60 * 1000,
            required_key: Some(fields::ACCOUNT_ID.to_string()),
        }
    }
}

/// The validating decoder. Cheap to clone; holds only limits.
#[derive(Debug, Clone, Default)]
pub struct EventDecoder {
    pub limits: DecodeLimits,
}

impl EventDecoder {
    pub fn new(limits: DecodeLimits) -> Self {
        Self { limits }
    }

    /// Decodes raw bytes (one JSON object).
    pub fn decode_slice(&self, bytes: &[u8], now_ms: i64) -> Result<Event, EventError> {
        if bytes.len() > self.limits.max_event_size_bytes.saturating_mul(4) {
            return Err(self.too_large(bytes.len()));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            EventError::one(FieldError::new(
                "$",
                "malformed_json",
                format!(
                    "malformed json at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            ))
        })?;
        self.decode_value(value, now_ms)
    }

    fn too_large(&self, size: usize) -> EventError {
        EventError::one(FieldError::new(
            "$",
            "too_large",
            format!(
                "event is {size} bytes, larger than max_event_size {} bytes",
                self.limits.max_event_size_bytes
            ),
        ))
    }

    /// Decodes and validates one JSON value. Never panics; collects every field error.
    pub fn decode_value(&self, value: Value, now_ms: i64) -> Result<Event, EventError> {
        self.decode_value_encoded(value, now_ms).map(|(e, _)| e)
    }

    /// [`Self::decode_value`], also returning the event's canonical JSON (which the size check
    /// computes anyway), so a producer need not encode it again.
    pub fn decode_value_encoded(
        &self,
        value: Value,
        now_ms: i64,
    ) -> Result<(Event, Vec<u8>), EventError> {
        let Value::Object(mut obj) = value else {
            return Err(EventError::one(FieldError::new(
                "$",
                "invalid_type",
                format!("an event must be a json object, got {}", json_type(&value)),
            )));
        };
        let mut errors = Vec::new();

        let event_id = match obj.remove(fields::EVENT_ID) {
            None | Some(Value::Null) => Uuid::now_v7(),
            Some(Value::String(s)) => match Uuid::parse_str(&s) {
                Ok(u) => u,
                Err(_) => {
                    errors.push(FieldError::new(
                        fields::EVENT_ID,
                        "invalid_value",
                        "must be a uuid such as 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6071",
                    ));
                    Uuid::nil()
                }
            },
            Some(other) => {
                errors.push(type_error(fields::EVENT_ID, "a uuid string", &other));
                Uuid::nil()
            }
        };

        let event_time_ms = match obj.remove(fields::EVENT_TIME) {
            None | Some(Value::Null) => {
                errors.push(FieldError::new(
                    fields::EVENT_TIME,
                    "required",
                    "is required (rfc 3339 text or epoch milliseconds)",
                ));
                0
            }
            Some(v) => match parse_event_time(&v) {
                Ok(ms) => {
                    if ms > now_ms.saturating_add(self.limits.max_future_skew_ms) {
                        errors.push(FieldError::new(
                            fields::EVENT_TIME,
                            "in_future",
                            format!(
                                "{} is more than {} ms in the future",
                                format_rfc3339_ms(ms),
                                self.limits.max_future_skew_ms
                            ),
                        ));
                    }
                    ms
                }
                Err(e) => {
                    errors.push(e);
                    0
                }
            },
        };

        let mut take_id = |name: &'static str, errors: &mut Vec<FieldError>| -> Option<String> {
            take_string(&mut obj, name, errors, |s| {
                if s.is_empty() {
                    Some("must not be empty".into())
                } else if s.len() > MAX_ID_LEN {
                    Some(format!("must be at most {MAX_ID_LEN} bytes"))
                } else {
                    None
                }
            })
        };
        let account_id = take_id(fields::ACCOUNT_ID, &mut errors);
        let card_id = take_id(fields::CARD_ID, &mut errors);
        let device_id = take_id(fields::DEVICE_ID, &mut errors);
        let merchant_id = take_id(fields::MERCHANT_ID, &mut errors);
        let channel = take_id(fields::CHANNEL, &mut errors);
        let event_type = take_id(fields::TYPE, &mut errors);
        let ip = take_string(&mut obj, fields::IP, &mut errors, |s| {
            s.parse::<IpAddr>()
                .err()
                .map(|_| "must be an ipv4 or ipv6 address".into())
        });
        let email = take_string(&mut obj, fields::EMAIL, &mut errors, |s| {
            let ok = s.len() <= MAX_ID_LEN
                && s.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
            (!ok).then(|| "must be an email address (local@domain)".into())
        });
        let currency = take_string(&mut obj, fields::CURRENCY, &mut errors, |s| {
            (!is_iso_4217(s)).then(|| {
                "must be an iso 4217 currency code (three capital letters, e.g. EUR)".into()
            })
        });
        let country = take_string(&mut obj, fields::COUNTRY, &mut errors, |s| {
            let ok = s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase());
            (!ok).then(|| "must be an iso 3166-1 alpha-2 country code (e.g. DE)".into())
        });

        let amount = match obj.remove(fields::AMOUNT) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(a) if a.is_finite() && a >= 0.0 => Some(a),
                _ => {
                    errors.push(FieldError::new(
                        fields::AMOUNT,
                        "invalid_value",
                        "must be a finite, non-negative number",
                    ));
                    None
                }
            },
            Some(other) => {
                errors.push(type_error(fields::AMOUNT, "a number", &other));
                None
            }
        };
        if amount.is_some()
            && currency.is_none()
            && !errors.iter().any(|e| e.field == fields::CURRENCY)
        {
            errors.push(FieldError::new(
                fields::CURRENCY,
                "required",
                "is required when amount is present",
            ));
        }

        let attributes = match obj.remove(fields::ATTRIBUTES) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                errors.push(type_error(fields::ATTRIBUTES, "a json object", &other));
                Map::new()
            }
        };

        let mut unknown: Vec<&String> = obj.keys().collect();
        unknown.sort();
        for k in unknown {
            // An empty name is shown quoted, so the error still names the field.
            let field = if k.is_empty() { "\"\"" } else { k.as_str() };
            errors.push(FieldError::new(
                field,
                "unknown_field",
                "is not an event field (put free data under attributes)",
            ));
        }

        let event = Event {
            event_id,
            event_time_ms,
            account_id,
            card_id,
            device_id,
            ip,
            merchant_id,
            email,
            amount,
            currency,
            country,
            channel,
            event_type,
            attributes,
        };

        if let Some(key) = &self.limits.required_key
            && event.field_str(key).is_none()
            && !errors.iter().any(|e| &e.field == key)
        {
            errors.push(FieldError::new(
                key.as_str(),
                "required",
                "is required: it is the partition key",
            ));
        }

        if !errors.is_empty() {
            return Err(EventError { errors });
        }
        let bytes = event.to_json_bytes();
        if bytes.len() > self.limits.max_event_size_bytes {
            return Err(self.too_large(bytes.len()));
        }
        Ok((event, bytes))
    }
}

fn take_string(
    obj: &mut Map<String, Value>,
    name: &'static str,
    errors: &mut Vec<FieldError>,
    check: impl FnOnce(&str) -> Option<String>,
) -> Option<String> {
    match obj.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match check(&s) {
            None => Some(s),
            Some(reason) => {
                errors.push(FieldError::new(name, "invalid_value", reason));
                None
            }
        },
        Some(other) => {
            errors.push(type_error(name, "a string", &other));
            None
        }
    }
}

fn type_error(field: &str, expected: &str, got: &Value) -> FieldError {
    FieldError::new(
        field,
        "invalid_type",
        format!("must be {expected}, got {}", json_type(got)),
    )
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Earliest and latest accepted event times: years 1970 to 9999.
const MIN_EVENT_TIME_MS: i64 = 0;
const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Parses an `event_time`: RFC 3339 text, or an integer of epoch milliseconds.
pub fn parse_event_time(v: &Value) -> Result<i64, FieldError> {
    let ms = match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                FieldError::new(
                    fields::EVENT_TIME,
                    "invalid_value",
                    format!("must be rfc 3339 (e.g. 2026-11-24T10:15:30.250Z): {e}"),
                )
            })?,
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            FieldError::new(
                fields::EVENT_TIME,
                "invalid_value",
                "epoch milliseconds must be an integer",
            )
        })?,
        other => {
            return Err(type_error(
                fields::EVENT_TIME,
                "rfc 3339 text or epoch milliseconds",
                other,
            ));
        }
    };
    if !(MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ms) {
        return Err(FieldError::new(
            fields::EVENT_TIME,
            "invalid_value",
            "must be between 1970-01-01 and 9999-12-31",
        ));
    }
    Ok(ms)
}

/// Active ISO 4217 alphabetic codes (2024 list, funds and precious metals included).
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL \
BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN \
ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES \
KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN \
MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG \
SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI \
UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XTS XUA XXX \
YER ZAR ZMW ZWG ZWL";

/// Whether `code` is an ISO 4217 alphabetic currency code.
pub fn is_iso_4217(code: &str) -> bool {
    code.len() == 3
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && ISO_4217.split_ascii_whitespace().any(|c| c == code)
}

/// Counts of field errors by code, for summaries.
pub fn count_by_code<'a>(
    errors: impl IntoIterator<Item = &'a EventError>,
) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for e in errors {
        *m.entry(e.code()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_790_000_000_000;

    fn dec() -> EventDecoder {
        EventDecoder::default()
    }

    fn good() -> Value {
        json!({
            "event_time": "2026-09-21T12:00:00.250Z",
            "account_id": "acc-1", "card_id": "card-1", "device_id": "dev-1",
            "ip": "203.0.113.7", "merchant_id": "m-1", "email": "a@example.com",
            "amount": 12.5, "currency": "EUR", "country": "DE", "channel": "web",
            "type": "payment", "attributes": {"mcc": "5411"}
        })
    }

    #[test]
    fn decodes_a_full_event_and_assigns_a_v7_id() {
        let e = dec().decode_value(good(), NOW).unwrap();
        assert_eq!(e.event_id.get_version_num(), 7);
        assert_eq!(e.event_time_ms, 1_789_992_000_250);
        assert_eq!(e.event_time_rfc3339(), "2026-09-21T12:00:00.250Z");
        assert_eq!(e.amount, Some(12.5));
        assert_eq!(e.attributes["mcc"], "5411");
    }

    #[test]
    fn canonical_json_round_trips() {
        let e = dec().decode_value(good(), NOW).unwrap();
        let bytes = e.to_json_bytes();
        let back: Event = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, e);
        let again = dec().decode_slice(&bytes, NOW).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn epoch_millis_and_offsets_are_accepted() {
        let mut v = good();
        v["event_time"] = json!(1_700_000_000_123_i64);
        assert_eq!(
            dec().decode_value(v, NOW).unwrap().event_time_ms,
            1_700_000_000_123
        );
        let mut v = good();
        v["event_time"] = json!("2023-11-14T23:13:20.123+01:00");
        assert_eq!(
            dec().decode_value(v, NOW).unwrap().event_time_ms,
            1_700_000_000_123
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let v = json!({
            "event_id": "nope", "event_time": "yesterday", "amount": -1, "currency": "EURO",
            "ip": "1.2.3", "email": "x", "country": "Germany", "attributes": [1], "colour": "red"
        });
        let err = dec().decode_value(v, NOW).unwrap_err();
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "event_id",
            "event_time",
            "amount",
            "currency",
            "ip",
            "email",
            "country",
            "attributes",
            "colour",
            "account_id",
        ] {
            assert!(fields.contains(&f), "{f} not named in {fields:?}");
        }
    }

    #[test]
    fn future_event_time_beyond_skew_is_rejected() {
        let mut v = good();
        v["event_time"] = json!(NOW + 10 * 60 * 1000);
        let err = dec().decode_value(v, NOW).unwrap_err();
        assert_eq!(err.errors[0].code, "in_future");
        let mut v = good();
        v["event_time"] = json!(NOW + 60 * 1000);
        assert!(dec().decode_value(v, NOW).is_ok());
    }

    #[test]
    fn oversized_event_is_rejected_not_truncated() {
        let mut v = good();
        v["attributes"] = json!({"blob": "x".repeat(70_000)});
        let err = dec().decode_value(v, NOW).unwrap_err();
        assert_eq!(err.code(), "too_large");
    }

    #[test]
    fn amount_requires_currency_and_partition_key_is_required() {
        let err = dec()
            .decode_value(json!({"event_time": NOW, "amount": 1.0}), NOW)
            .unwrap_err();
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["currency", "account_id"]);
    }

    #[test]
    fn currency_must_be_a_real_code() {
        assert!(is_iso_4217("EUR") && is_iso_4217("JPY"));
        assert!(!is_iso_4217("ABC") && !is_iso_4217("eur") && !is_iso_4217("EU"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::String),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("event_id".to_string()),
                        Just("event_time".to_string()),
                        Just("account_id".to_string()),
                        Just("amount".to_string()),
                        Just("currency".to_string()),
                        Just("ip".to_string()),
                        Just("email".to_string()),
                        Just("attributes".to_string()),
                        Just("country".to_string()),
                        Just("type".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..10
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn an_unknown_field_with_an_empty_name_is_still_named() {
        // Found by the event_decoder fuzz target: `{"": 0}` gave a field error whose field
        // was empty.
        let err = dec()
            .decode_slice(br#"{"event_time": 0, "account_id": "a", "": 0}"#, NOW)
            .unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert_eq!(err.errors[0].field, "\"\"");
        assert_eq!(err.errors[0].code, "unknown_field");
    }

    #[test]
    fn a_long_decimal_amount_survives_the_canonical_form_exactly() {
        // Found by the event_decoder fuzz target: serde_json's default float parser is not
        // correctly rounded for long decimals, so this amount decoded to 5.555555555555515e45
        // and its canonical form to 5.5555555555555154e45 (a different amount). The workspace
        // enables serde_json's `float_roundtrip`.
        let body = format!(
            r#"{{"event_time": {NOW}, "account_id": "acc-2", "amount": 5555555555555515555555555555555555555555555555.00, "currency": "USD"}}"#
        );
        let e = dec().decode_slice(body.as_bytes(), NOW).unwrap();
        let again = dec().decode_slice(&e.to_json_bytes(), NOW).unwrap();
        assert_eq!(again.amount, e.amount);
        assert_eq!(e.amount, Some(5.555_555_555_555_515_5e45));
    }

    proptest! {
        #[test]
        fn any_json_gives_an_event_or_named_field_errors(v in arb_json()) {
            match dec().decode_value(v.clone(), NOW) {
                Ok(e) => {
                    // A valid event re-decodes to itself from its canonical form.
                    let again = dec().decode_slice(&e.to_json_bytes(), NOW).unwrap();
                    prop_assert_eq!(again, e);
                }
                Err(err) => {
                    prop_assert!(!err.errors.is_empty());
                    for fe in &err.errors {
                        prop_assert!(!fe.field.is_empty());
                        prop_assert!(!fe.reason.is_empty());
                    }
                }
            }
        }

        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = dec().decode_slice(&bytes, NOW);
        }
    }
}
