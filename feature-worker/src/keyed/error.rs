//! Failures of keyed mode.

use rdkafka::error::KafkaError;

/// Failures of keyed mode's stages.
#[derive(Debug, thiserror::Error)]
pub enum KeyedError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    #[error("{stage} task failed: {source}")]
    Task {
        stage: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}
