//! The feature-worker's synchronous, I/O-free feature core: feature definitions (TOML,
//! validated), per-(group, entity key) bucketed window state in `moka`, and the engine that
//! updates and reads every feature of an event in one step. The Kafka loop, repartitioning
//! and the admin port build on this. Semantics: `docs/features.md`.

pub mod applied;
pub mod config;
pub mod engine;
pub mod error;
pub mod export;
mod state;
pub mod window_output;

pub use applied::Applied;
pub use config::{
    Aggregation, EventField, Feature, FeatureDef, FeatureGroup, FeatureSet, FilterDef, KeySpec,
    Predicate, Scalar, WindowDef, WindowSpec,
};
pub use engine::{FeatureEngine, StateConfig, StateStats, StateStatsSnapshot, retention_ms_of};
pub use error::{FeatureConfigError, FeatureEngineError, FeatureProblem};
pub use export::ImportError;
pub use state::UpdateOutcome;
pub use window_output::{WindowOutput, WindowOutputDef, WindowOutputSpec, WindowOutputs};
