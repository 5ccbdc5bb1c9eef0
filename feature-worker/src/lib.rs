//! The feature worker: Flink-style event-time windowed features per entity on Kafka consumer
//! groups, scoring with rules and models, decisions back to Kafka.

pub mod features;
pub mod scoring;
