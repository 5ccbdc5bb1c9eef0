//! The trace-collector: receives OpenTelemetry spans (Kafka `otlp_spans` topic as OTLP protobuf,
//! OTLP/HTTP protobuf and JSON, OTLP/gRPC) and decisions (Kafka `decisions` topic), and stores
//! them in ClickHouse in batches, at least once, with bounded memory. See `docs/tracing.md`.
//!
//! Entry points: [`Config`], [`App::build`], [`App::run_until_stopped`]; the schema (tables,
//! columns, row types, migrations) is [`schema`], shared with the api.
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
pub mod schema;
pub mod sink;

pub use app::{App, CollectorError};
pub use config::{ClickHouseConfig, CollectorSection, Config};
