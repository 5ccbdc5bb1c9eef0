//! Event fields and entity keys: [`EventField`] (a top-level event field a feature keys on,
//! aggregates or filters on), [`KeySpec`] (the entity key of a feature group, with the escaped
//! composite key encoding) and [`WindowSpec`] (a window reduced to bucket granularity and size).

use std::borrow::Cow;
use std::fmt;

use riskstream_common::Event;
use riskstream_common::event::fields;

/// Separator of the fields of a composite entity spec (`card_id+merchant_id`).
pub const ENTITY_SPEC_SEPARATOR: char = '+';
/// Separator of the values of a composite entity key (`card-1|m-7`).
pub const KEY_SEPARATOR: char = '|';
/// Escapes [`KEY_SEPARATOR`] and itself inside composite key values.
pub const KEY_ESCAPE: char = '\\';
/// Most fields a composite entity key may have.
pub const MAX_KEY_PARTS: usize = 4;

/// A top-level event field a feature can key on, aggregate or filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    AccountId,
    CardId,
    DeviceId,
    Ip,
    MerchantId,
    Email,
    Currency,
    Country,
    Channel,
    Type,
    Amount,
}

impl EventField {
    pub const ALL: [EventField; 11] = [
        EventField::AccountId,
        EventField::CardId,
        EventField::DeviceId,
        EventField::Ip,
        EventField::MerchantId,
        EventField::Email,
        EventField::Currency,
        EventField::Country,
        EventField::Channel,
        EventField::Type,
        EventField::Amount,
    ];

    /// The field's JSON name.
    pub fn name(self) -> &'static str {
        match self {
            EventField::AccountId => fields::ACCOUNT_ID,
            EventField::CardId => fields::CARD_ID,
            EventField::DeviceId => fields::DEVICE_ID,
            EventField::Ip => fields::IP,
            EventField::MerchantId => fields::MERCHANT_ID,
            EventField::Email => fields::EMAIL,
            EventField::Currency => fields::CURRENCY,
            EventField::Country => fields::COUNTRY,
            EventField::Channel => fields::CHANNEL,
            EventField::Type => fields::TYPE,
            EventField::Amount => fields::AMOUNT,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn is_numeric(self) -> bool {
        self == EventField::Amount
    }

    /// The value of a string field (`None` for `amount` and for absent fields).
    #[inline]
    pub fn str_of(self, e: &Event) -> Option<&str> {
        match self {
            EventField::AccountId => e.account_id.as_deref(),
            EventField::CardId => e.card_id.as_deref(),
            EventField::DeviceId => e.device_id.as_deref(),
            EventField::Ip => e.ip.as_deref(),
            EventField::MerchantId => e.merchant_id.as_deref(),
            EventField::Email => e.email.as_deref(),
            EventField::Currency => e.currency.as_deref(),
            EventField::Country => e.country.as_deref(),
            EventField::Channel => e.channel.as_deref(),
            EventField::Type => e.event_type.as_deref(),
            EventField::Amount => None,
        }
    }

    /// The value of a numeric field (`None` for string fields and absent values).
    #[inline]
    pub fn num_of(self, e: &Event) -> Option<f64> {
        match self {
            EventField::Amount => e.amount,
            _ => None,
        }
    }

    /// Whether the field is present on the event.
    #[inline]
    pub fn is_present(self, e: &Event) -> bool {
        match self {
            EventField::Amount => e.amount.is_some(),
            _ => self.str_of(e).is_some(),
        }
    }

    pub(super) fn names_list(numeric: Option<bool>) -> String {
        Self::ALL
            .into_iter()
            .filter(|f| numeric.is_none_or(|n| f.is_numeric() == n))
            .map(EventField::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for EventField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The entity key of a feature group: one or more string fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub(super) fields: Vec<EventField>,
}

impl KeySpec {
    /// The fields, in spec order.
    pub fn fields(&self) -> &[EventField] {
        &self.fields
    }

    /// The spec as written (`card_id+merchant_id`); also the `{entity}` of the HTTP API.
    pub fn name(&self) -> String {
        self.fields
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The entity key of an event: `None` if any key field is missing. A single-field key is
    /// the field's value; a composite key joins the values with `|`, escaping `|` and `\`
    /// with `\`, so distinct value tuples never give the same key.
    pub fn key_of(&self, e: &Event) -> Option<String> {
        self.key_ref(e).map(Cow::into_owned)
    }

    /// Like [`KeySpec::key_of`] but borrows a single-field key instead of allocating.
    #[inline]
    pub fn key_ref<'e>(&self, e: &'e Event) -> Option<Cow<'e, str>> {
        match self.fields.as_slice() {
            [one] => one.str_of(e).map(Cow::Borrowed),
            many => {
                let mut out = String::new();
                for (i, f) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(KEY_SEPARATOR);
                    }
                    push_escaped(&mut out, f.str_of(e)?);
                }
                Some(Cow::Owned(out))
            }
        }
    }

    /// Builds a key from its parts (in spec order), as [`KeySpec::key_of`] would; for
    /// callers that have the values but no event (the HTTP API).
    pub fn encode_parts(parts: &[&str]) -> String {
        match parts {
            [one] => (*one).to_string(),
            many => {
                let mut out = String::new();
                for (i, p) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(KEY_SEPARATOR);
                    }
                    push_escaped(&mut out, p);
                }
                out
            }
        }
    }
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        if c == KEY_SEPARATOR || c == KEY_ESCAPE {
            out.push(KEY_ESCAPE);
        }
        out.push(c);
    }
}

/// A window reduced to its bucket granularity and size (both in ms, size a multiple of
/// granularity). All three window kinds aggregate the events with time in
/// `[floor(t / g) * g + g - size, t]` for an event at `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub granularity_ms: i64,
    pub size_ms: i64,
}

impl WindowSpec {
    /// Start of the bucket holding time `t_ms`.
    #[inline]
    pub fn bucket_start(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.granularity_ms) * self.granularity_ms
    }

    /// Earliest event time (inclusive) in the window of an event at `t_ms`; always a
    /// multiple of the granularity.
    #[inline]
    pub fn lower_bound(&self, t_ms: i64) -> i64 {
        self.bucket_start(t_ms)
            .saturating_add(self.granularity_ms)
            .saturating_sub(self.size_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_keys_are_unambiguous() {
        let spec = KeySpec {
            fields: vec![EventField::CardId, EventField::MerchantId],
        };
        let a = KeySpec::encode_parts(&["a|b", "c"]);
        let b = KeySpec::encode_parts(&["a", "b|c"]);
        let c = KeySpec::encode_parts(&["a\\", "|c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(KeySpec::encode_parts(&["card-1", "m-2"]), "card-1|m-2");
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "event_id": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6071",
            "event_time": 0, "card_id": "a|b", "merchant_id": "c"
        }))
        .unwrap();
        assert_eq!(spec.key_of(&e).as_deref(), Some(a.as_str()));
        e.merchant_id = None;
        assert_eq!(spec.key_of(&e), None);
    }

    #[test]
    fn window_bounds_follow_the_documented_formula() {
        let sliding = WindowSpec {
            granularity_ms: 1_000,
            size_ms: 10_000,
        };
        // [floor(t/g)*g + g - size, t]
        assert_eq!(sliding.lower_bound(25_400), 16_000);
        assert_eq!(sliding.lower_bound(25_000), 16_000);
        let tumbling = WindowSpec {
            granularity_ms: 10_000,
            size_ms: 10_000,
        };
        assert_eq!(tumbling.lower_bound(25_400), 20_000);
        let hopping = WindowSpec {
            granularity_ms: 5_000,
            size_ms: 15_000,
        };
        assert_eq!(hopping.lower_bound(25_400), 15_000);
        assert_eq!(hopping.bucket_start(25_400), 25_000);
    }
}
