//! Shared building blocks of riskstream: the event and decision contracts, configuration
//! loading, Kafka client builders and topic names, W3C trace context, telemetry setup,
//! metrics plumbing, the synthetic traffic generator and shutdown.

pub mod broker;
pub mod config;
pub mod decision;
pub mod event;
pub mod generator;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod topics;
pub mod trace_context;

pub use decision::{Decision, FeatureValue, Outcome};
pub use event::{DecodeLimits, Event, EventDecoder, EventError, FieldError};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
