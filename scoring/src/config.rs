//! Configuration of the scoring core: where the rules, models and lists live, the score
//! thresholds of the outcomes, how many feature contributions a decision explains, and the
//! lists' capacity and default TTL.

use std::path::PathBuf;
use std::time::Duration;

use riskstream_common::Outcome;
use serde::{Deserialize, Serialize};

/// Default rule-set file.
pub const DEFAULT_RULES_PATH: &str = "config/rules.toml";
/// Default models directory (holding `manifest.toml`).
pub const DEFAULT_MODELS_DIR: &str = "config/models";
/// Default list file.
pub const DEFAULT_LISTS_PATH: &str = "config/lists/lists.csv";

/// Score thresholds: a score at or above a threshold gives that outcome (the most severe wins).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Score at or above which the outcome is `decline`.
    pub decline: f64,
    /// Score at or above which the outcome is `challenge` (e.g. 3-D Secure).
    pub challenge: f64,
    /// Score at or above which the outcome is `review` (a human looks).
    pub review: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            decline: 0.9,
            challenge: 0.7,
            review: 0.5,
        }
    }
}

impl Thresholds {
    /// Each threshold in [0, 1] and `review <= challenge <= decline`.
    pub fn validate(&self) -> Result<(), String> {
        let all = [self.review, self.challenge, self.decline];
        if all.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(format!("thresholds must be in [0, 1], got {all:?}"));
        }
        if !(self.review <= self.challenge && self.challenge <= self.decline) {
            return Err(format!(
                "thresholds must satisfy review <= challenge <= decline, got {} / {} / {}",
                self.review, self.challenge, self.decline
            ));
        }
        Ok(())
    }

    /// The outcome a score alone gives.
    pub fn outcome(&self, score: f64) -> Outcome {
        if score >= self.decline {
            Outcome::Decline
        } else if score >= self.challenge {
            Outcome::Challenge
        } else if score >= self.review {
            Outcome::Review
        } else {
            Outcome::Approve
        }
    }

    /// The threshold an outcome starts at (`0` for approve).
    pub fn threshold_of(&self, outcome: Outcome) -> f64 {
        match outcome {
            Outcome::Approve => 0.0,
            Outcome::Review => self.review,
            Outcome::Challenge => self.challenge,
            Outcome::Decline => self.decline,
        }
    }
}

/// The scoring core's configuration (the `[scoring]` section of the worker's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// The rule-set file (TOML).
    pub rules_path: PathBuf,
    /// The models directory, holding `manifest.toml`.
    pub models_dir: PathBuf,
    /// The list file loaded at start (`None`: start with empty lists).
    pub lists_path: Option<PathBuf>,
    pub thresholds: Thresholds,
    /// How many feature contributions of the acted-on model a decision names.
    pub top_k_contributions: usize,
    /// TTL of list entries that give none, e.g. "30d" (absent: until removed).
    #[serde(with = "humantime_serde")]
    pub list_default_ttl: Option<Duration>,
    /// Capacity of each of the allow and block lists.
    pub list_max_entries: u64,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            rules_path: DEFAULT_RULES_PATH.into(),
            models_dir: DEFAULT_MODELS_DIR.into(),
            lists_path: Some(DEFAULT_LISTS_PATH.into()),
            thresholds: Thresholds::default(),
            top_k_contributions: 3,
            list_default_ttl: None,
            list_max_entries: 1_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_map_scores_to_outcomes() {
        let t = Thresholds::default();
        assert_eq!(t.outcome(0.49), Outcome::Approve);
        assert_eq!(t.outcome(0.5), Outcome::Review);
        assert_eq!(t.outcome(0.7), Outcome::Challenge);
        assert_eq!(t.outcome(0.95), Outcome::Decline);
        assert!(t.validate().is_ok());
        let bad = Thresholds { review: 0.8, ..t };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn config_parses_with_defaults_and_durations() {
        let c: ScoringConfig =
            toml::from_str("list_default_ttl = \"30d\"\n[thresholds]\ndecline = 0.95\n").unwrap();
        assert_eq!(c.list_default_ttl, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.thresholds.decline, 0.95);
        assert_eq!(c.thresholds.review, 0.5);
        assert_eq!(c.rules_path, PathBuf::from(DEFAULT_RULES_PATH));
        assert!(toml::from_str::<ScoringConfig>("colour = 1").is_err());
    }
}
