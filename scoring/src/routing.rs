//! Champion/challenger routing: a stable hash of one entity's value (default `account_id`)
//! puts a configured share of keys on the challenger. The hash is XXH64 with a fixed seed over
//! a configurable salt and the key, so a key routes the same way in every process and on every
//! run, and raising the share (0.1 -> 0.5 -> 1.0) only ever moves keys onto the challenger.

use std::hash::Hasher as _;

use serde::{Deserialize, Serialize};
use twox_hash::XxHash64;

/// Fixed XXH64 seed (never the randomly seeded std hasher).
const ROUTING_SEED: u64 = 0x7269_736b_7374_7265; // "riskstre"
/// 2^-53: maps the top 53 bits of the hash onto [0, 1).
const UNIT_SCALE: f64 = 1.0 / (1u64 << 53) as f64;

/// Where an event's acted-on score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Champion,
    Challenger,
}

/// Routes keys between champion and challenger.
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    entity: String,
    salt: String,
    share: f64,
}

impl Router {
    /// `share` is clamped into [0, 1] (NaN means 0).
    pub fn new(entity: impl Into<String>, salt: impl Into<String>, share: f64) -> Self {
        Self {
            entity: entity.into(),
            salt: salt.into(),
            share: if share.is_nan() {
                0.0
            } else {
                share.clamp(0.0, 1.0)
            },
        }
    }

    /// The event field whose value is hashed.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    pub fn with_share(&self, share: f64) -> Self {
        Self::new(self.entity.clone(), self.salt.clone(), share)
    }

    /// The key's position in [0, 1): stable for a salt and key.
    pub fn position(&self, key: &str) -> f64 {
        let mut h = XxHash64::with_seed(ROUTING_SEED);
        h.write(self.salt.as_bytes());
        h.write(&[0]);
        h.write(key.as_bytes());
        (h.finish() >> 11) as f64 * UNIT_SCALE
    }

    /// The route for a key; no key (the event lacks the entity) goes to the champion.
    pub fn route(&self, key: Option<&str>) -> Route {
        match key {
            Some(k) if self.share > 0.0 && self.position(k) < self.share => Route::Challenger,
            _ => Route::Champion,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_a_fixed_function_of_salt_and_key() {
        let r = Router::new("account_id", "s", 0.5);
        assert_eq!(
            r.position("acc-1"),
            Router::new("card_id", "s", 0.1).position("acc-1")
        );
        assert_ne!(
            r.position("acc-1"),
            Router::new("account_id", "t", 0.5).position("acc-1")
        );
        assert!((0.0..1.0).contains(&r.position("")));
    }

    #[test]
    fn share_edges() {
        assert_eq!(Router::new("a", "s", 0.0).route(Some("k")), Route::Champion);
        assert_eq!(
            Router::new("a", "s", 1.0).route(Some("k")),
            Route::Challenger
        );
        assert_eq!(Router::new("a", "s", 1.0).route(None), Route::Champion);
        assert_eq!(Router::new("a", "s", f64::NAN).share(), 0.0);
        assert_eq!(Router::new("a", "s", 7.0).share(), 1.0);
    }
}
