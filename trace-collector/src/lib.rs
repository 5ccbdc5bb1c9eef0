//! The trace-collector: receives OpenTelemetry spans (Kafka `otlp_spans` topic as OTLP protobuf,
//! OTLP/HTTP protobuf and JSON, OTLP/gRPC) and decisions (Kafka `decisions` topic), and stores
//! them in the trace store (ClickHouse, or memory in the demo) in batches, at least once, with
//! bounded memory. See `docs/tracing.md`.
//!
//! Entry points: [`Config`], [`App::build`] (ClickHouse) or [`App::build_with_store`],
//! [`App::run_until_stopped`]; the store (schema, rows, the `TraceStore` trait) is the
//! `riskstream-store` crate, which the api reads through.
//!
//! The collector does not trace its own writes: it opens no spans around inserts or Kafka
//! reads, and the process's OpenTelemetry layer should filter out the `clickhouse` and
//! `rdkafka` targets (whose client spans would otherwise loop back into the collector).

pub mod app;
pub mod bench;
pub mod config;
pub mod convert;
pub mod kafka;
pub mod metrics;
pub mod otlp;
pub mod sink;

pub use app::{App, CollectorError};
pub use config::{ClickHouseConfig, CollectorSection, Config};
