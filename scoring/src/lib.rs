//! Rules, models, lists and the decision (synchronous, I/O-free apart from loading files).
//!
//! The worker builds one [`Scorer`] (e.g. [`Scorer::from_config`]) and calls
//! [`Scorer::decide`] per event with the event's feature values; it feeds rule updates to
//! [`Scorer::rules`] ([`RulesHandle::try_update`]), list updates to [`Scorer::lists`]
//! ([`Lists::apply_json`]), model changes to [`Scorer::replace_models`] /
//! [`Scorer::set_challenger_share`], and exports [`Scorer::stats`], [`Scorer::model_stats`]
//! and [`Scorer::rule_stats`]. See `docs/scoring.md`.

pub mod catalog;
pub mod config;
pub mod lists;
pub mod model_set;
pub mod models;
pub mod routing;
pub mod rules;
pub mod scorer;
pub mod stats;

pub use catalog::{FeatureCatalog, FeatureKind};
pub use config::{ScoringConfig, Thresholds};
pub use lists::{ListKind, ListUpdate, Lists, ListsError};
pub use model_set::{ModelSet, ModelSetError, Role};
pub use models::{
    Model, ModelError, ModelFormat, ModelInput, ModelKind, ModelLoadError, ModelOutput,
};
pub use routing::{Route, Router};
pub use rules::{RuleSet, RuleSetError, RulesHandle};
pub use scorer::{DecideContext, Scorer, ScoringError, ScoringSetupError};
