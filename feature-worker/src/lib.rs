//! The feature worker: Flink-style event-time windowed features per entity on Kafka consumer
//! groups, scoring with rules and models, decisions back to Kafka.
//!
//! The synchronous, I/O-free core lives in [`features`] (window state), [`scoring`] (rules,
//! models, lists, the decision) and [`stream`] (watermarks, reorder buffer, offsets); [`app`]
//! is the thin async loop around them.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod features;
pub mod keyed;
pub mod metrics;
pub mod scoring;
pub mod stream;

pub use app::{App, WorkerError, WorkerState};
pub use config::{Config, WorkerConfig, WorkerMode};
