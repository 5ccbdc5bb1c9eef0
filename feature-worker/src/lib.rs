//! The feature worker: Flink-style event-time windowed features per entity on Kafka consumer
//! groups, scoring with rules and models, decisions back to Kafka.
//!
//! The synchronous, I/O-free core lives in [`features`] (window state), [`scoring`] (rules,
//! models, lists, the decision) and [`stream`] (watermarks, reorder buffer, offsets). Around it:
//! [`stage`] is the one consumer loop every stage runs, [`local`] and [`keyed`] the stages of
//! the two modes, [`decision`] and [`output`] what they send and how, [`worker`] the state
//! they share with [`admin`] and [`control`]; [`app`] only builds and wires them. See
//! docs/architecture.md, "The worker's modules".

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod decision;
pub mod keyed;
pub mod local;
pub mod metrics;
pub mod output;
pub mod record;
pub mod stage;
pub mod stream;
pub mod worker;

/// The feature core, its own crate (`features/`), under its old path.
pub use riskstream_features as features;
/// The scoring core, its own crate (`scoring/`), under its old path.
pub use riskstream_scoring as scoring;

pub use app::{App, WorkerError};
pub use config::{Config, WorkerConfig, WorkerMode};
pub use worker::WorkerState;
