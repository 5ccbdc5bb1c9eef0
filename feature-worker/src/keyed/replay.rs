//! Reading keyed mode's topics outside the stage runner: a topic's partition count, and the
//! group-less replay of one partition up to an offset that the route and state stages rebuild
//! their state from when a partition is assigned.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::shutdown::CancellationToken;
use uuid::Uuid;

use super::error::KeyedError;
use crate::record::Record;

/// Suffix of the throwaway group of a replay reader (never commits).
const RESTORE_GROUP_SUFFIX: &str = ".restore";
/// A replay gives up when no record arrives for this long (the broker is gone).
const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Read errors a replay tolerates before it fails.
const REPLAY_MAX_ERRORS: u32 = 50;

/// Number of partitions of `topic` (from the broker's metadata).
pub async fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32, KeyedError> {
    let consumer: BaseConsumer = kafka.client_config().create()?;
    let name = topic.to_string();
    let n = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .map_or(0, |t| t.partitions().len())
            })
    })
    .await
    .map_err(|error| KeyedError::Task {
        stage: "metadata",
        error,
    })??;
    match i32::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(KeyedError::NoPartitions(topic.to_string())),
    }
}

/// Reads `topic`/`partition` from its beginning up to (excluding) `until_offset` with a
/// group-less reader, handing each record to `f`, until done or `stop`. Returns the number of
/// records replayed.
pub async fn replay(
    kafka: &KafkaConfig,
    group_base: &str,
    topic: &str,
    partition: i32,
    until_offset: i64,
    stop: &CancellationToken,
    mut f: impl FnMut(Record<'_>),
) -> Result<u64, KafkaError> {
    if until_offset <= 0 {
        return Ok(0);
    }
    let group = format!("{group_base}{RESTORE_GROUP_SUFFIX}.{}", Uuid::new_v4());
    let mut cfg = kafka.consumer_config(&group);
    cfg.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let reader: StreamConsumer<riskstream_common::kafka::EofReaderContext> =
        cfg.create_with_context(riskstream_common::kafka::EofReaderContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let mut n = 0u64;
    let mut errors = 0u32;
    loop {
        let next = tokio::select! {
            // Shutting down: the partition is given up anyway, its next owner replays it.
            _ = stop.cancelled() => break,
            next = tokio::time::timeout(REPLAY_IDLE_TIMEOUT, reader.recv()) => next,
        };
        match next {
            Ok(Ok(m)) => {
                if m.offset() >= until_offset {
                    break;
                }
                f(Record::from_message(&m));
                n += 1;
                if m.offset() + 1 >= until_offset {
                    break;
                }
            }
            Ok(Err(KafkaError::PartitionEOF(_))) => break,
            Ok(Err(e)) => {
                errors += 1;
                tracing::warn!(topic, partition, error = %e, "replay read error");
                if errors > REPLAY_MAX_ERRORS {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                tracing::warn!(
                    topic,
                    partition,
                    until_offset,
                    replayed = n,
                    "replay stopped: no record within the timeout"
                );
                break;
            }
        }
    }
    Ok(n)
}
