//! Test support shared by the crates' integration tests: a real Kafka-protocol broker
//! (librdkafka's mock cluster) and a real ClickHouse server, started on free ports, and
//! tokens files for the auth tests.

pub mod auth;
pub mod clickhouse;
pub mod hostile;
pub mod kafka;

/// A short random suffix for topic, group and table names, so tests run in parallel.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
