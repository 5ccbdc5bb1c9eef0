//! Failures of keyed mode.

use rdkafka::error::KafkaError;

/// Failures of keyed mode's stages.
#[derive(Debug, thiserror::Error)]
pub enum KeyedError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    /// The changelog topic is missing, not compacted or not co-partitioned.
    #[error("changelog topic: {0}")]
    Changelog(String),
    /// A stage's task panicked or was cancelled (logged where it is caught, so the message
    /// carries it).
    #[error("{stage} task failed: {error}")]
    Task {
        stage: &'static str,
        error: tokio::task::JoinError,
    },
}
