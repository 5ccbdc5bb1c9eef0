//! A stage's Kafka consumer: the client context that sees rebalances (commit what is done on
//! revoke, remember which partitions are assigned and which were revoked for the runner, log
//! client errors, report consumer lag from the statistics) and [`KafkaInput`], the consumer as
//! the runner's [`Input`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::lag::LagReporter;

use super::Input;
use crate::record::Record;

/// Bound on committing and closing a stage's consumer at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs inside a revocation, on the consumer's thread, before the partitions move to another
/// member: a stage that writes on behalf of its partitions (the state stage's changelog)
/// fences those writes and flushes what is on its way here.
pub type RevokeHook = Box<dyn Fn(&[i32]) + Send + Sync>;

/// Runs right after partitions are assigned, on the consumer's thread (it must not block): a
/// stage that restores state for its partitions starts reading it here, before their first
/// record arrives.
pub type AssignHook = Box<dyn Fn(&[i32]) + Send + Sync>;

/// What a stage runs inside its consumer's rebalances ([`KafkaInput::subscribe_with`]).
#[derive(Default)]
pub struct RebalanceHooks {
    pub on_revoke: Option<RevokeHook>,
    pub on_assign: Option<AssignHook>,
}

/// Partition assignment as the rebalance callbacks see it, handled by the stage runner.
pub struct StageContext {
    /// The stage's name in logs (`local`, `route`, `state`, `join`, `windows`).
    stage: &'static str,
    assigned: Mutex<HashSet<i32>>,
    revoked: Mutex<Vec<i32>>,
    lag: LagReporter,
    hooks: RebalanceHooks,
}

impl StageContext {
    pub fn new(stage: &'static str, lag: LagReporter) -> Self {
        Self {
            stage,
            assigned: Mutex::default(),
            revoked: Mutex::default(),
            lag,
            hooks: RebalanceHooks::default(),
        }
    }

    fn is_assigned(&self, p: i32) -> bool {
        self.assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&p)
    }

    fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for StageContext {
    fn error(&self, error: KafkaError, reason: &str) {
        riskstream_common::kafka::log_client_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.lag.report(&statistics);
    }
}

impl ConsumerContext for StageContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        riskstream_common::kafka::eager_rebalance(self, consumer, err, tpl);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if let Some(hook) = &self.hooks.on_revoke {
                hook(&parts);
            }
            // Commit what is done before the partitions move; what is not done is read (and,
            // in keyed mode, restored) again by the next owner (at-least-once).
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
            tracing::info!(stage = self.stage, partitions = ?parts, "partitions revoked");
            let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
            for p in &parts {
                assigned.remove(p);
            }
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(parts);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(stage = self.stage, partitions = ?parts, "partitions assigned");
            if let Some(hook) = &self.hooks.on_assign {
                hook(&parts);
            }
            self.assigned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(parts);
        }
    }
}

pub type StageConsumer = StreamConsumer<StageContext>;

/// A stage's group consumer subscribed to one topic, as the runner reads it.
pub struct KafkaInput {
    consumer: Arc<StageConsumer>,
    topic: String,
}

impl KafkaInput {
    /// Creates the consumer of `group_id` for `stage` (statistics on for the lag gauge;
    /// end-of-partition events with `partition_eof`) and subscribes it to `topic`.
    pub fn subscribe(
        kafka: &KafkaConfig,
        group_id: &str,
        topic: &str,
        partition_eof: bool,
        stage: &'static str,
        lag: LagReporter,
    ) -> Result<Self, KafkaError> {
        Self::subscribe_with(
            kafka,
            group_id,
            topic,
            partition_eof,
            stage,
            lag,
            RebalanceHooks::default(),
        )
    }

    /// [`KafkaInput::subscribe`] with hooks run inside every rebalance.
    pub fn subscribe_with(
        kafka: &KafkaConfig,
        group_id: &str,
        topic: &str,
        partition_eof: bool,
        stage: &'static str,
        lag: LagReporter,
        hooks: RebalanceHooks,
    ) -> Result<Self, KafkaError> {
        let mut cfg = kafka.consumer_config(group_id);
        if partition_eof {
            cfg.set("enable.partition.eof", "true");
        }
        LagReporter::enable(&mut cfg);
        let context = StageContext {
            hooks,
            ..StageContext::new(stage, lag)
        };
        let consumer: StageConsumer = cfg.create_with_context(context)?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
        })
    }
}

impl Input for KafkaInput {
    type Message<'a> = BorrowedMessage<'a>;

    async fn recv(&self) -> Result<BorrowedMessage<'_>, KafkaError> {
        self.consumer.recv().await
    }

    fn record<'m>(m: &'m BorrowedMessage<'_>) -> Record<'m> {
        Record::from_message(m)
    }

    fn take_revoked(&self) -> Vec<i32> {
        self.consumer.context().take_revoked()
    }

    fn is_assigned(&self, partition: i32) -> bool {
        self.consumer.context().is_assigned(partition)
    }

    fn store_offsets(&self, next: &[(i32, i64)], checkpoints: &HashMap<i32, String>) {
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in next {
            let mut e = tpl.add_partition(&self.topic, p);
            if let Err(err) = e.set_offset(Offset::Offset(o)) {
                tracing::debug!(partition = p, error = %err, "offset to store");
            }
            if let Some(m) = checkpoints.get(&p) {
                e.set_metadata(m.as_str());
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(topic = %self.topic, error = %e, "store offsets");
        }
    }

    async fn close(self) {
        riskstream_common::kafka::commit_and_close(self.consumer, CLOSE_TIMEOUT).await;
    }
}
