//! The stage runner: the one consumer loop of every worker stage (local mode, and keyed mode's
//! route, state, join and windows stages), around a small [`Stage`] handler that says what a
//! record, a revocation and a wake-up do.
//!
//! The runner owns, for every stage alike:
//! - reading, with backpressure: no record is read while `max_in_flight` outputs wait for
//!   their acknowledgement;
//! - assignment and revocation: revocations are handled before every read and again right
//!   after `recv()` returns (librdkafka serves revoke + assign inside `recv()`, so a record
//!   received after a rebalance is never handled against revoked state), and records of
//!   partitions no longer assigned are dropped (the next owner reads them);
//! - per-partition order and commits: records reach the handler one at a time in the order
//!   read; an offset is stored for commit only when the outputs of its record and of every
//!   earlier record of its partition were acknowledged by Kafka
//!   ([`crate::stream::OffsetTracker`]), with the partition's latest checkpoint
//!   ([`Outputs::checkpoint`]) as its commit metadata;
//! - the handler's timer ([`Stage::wake_at`]) and, at shutdown, a drain bounded by
//!   `shutdown_timeout`, then the commit and close of its input.
//!
//! [`context`] is the Kafka side: the consumer context that records rebalances and lag, and
//! [`KafkaInput`]; tests drive the runner with an input of their own.

pub mod context;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::error::KafkaError;
use riskstream_common::shutdown::CancellationToken;

pub use crate::record::Record;
pub use context::{KafkaInput, StageContext};

use crate::config::WorkerConfig;
use crate::output::{AckedOutput, Settles, acked};
use crate::stream::OffsetTracker;

/// How long to wait after a consume error before reading again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Where a stage's records come from: a subscribed group consumer ([`KafkaInput`]) or, in
/// tests, a scripted one.
pub trait Input: Send + Sync {
    type Message<'a>: Send
    where
        Self: 'a;
    /// The next record, after any rebalance served meanwhile.
    fn recv(&self) -> impl Future<Output = Result<Self::Message<'_>, KafkaError>> + Send;
    fn record<'m>(m: &'m Self::Message<'_>) -> Record<'m>;
    /// Partitions revoked since the last call.
    fn take_revoked(&self) -> Vec<i32>;
    fn is_assigned(&self, partition: i32) -> bool;
    /// Stores, per partition, the next offset to read (committed by the consumer), with the
    /// partition's checkpoint, if it has one, as the commit metadata.
    fn store_offsets(&self, next: &[(i32, i64)], checkpoints: &HashMap<i32, String>);
    /// Commits what is stored and closes (bounded).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// What one stage does with its records; the runner calls it from one task, one call at a
/// time. Every record handed over must end up settled: by an output pushed to [`Outputs`], or
/// done at once with [`Outputs::done`] (until then its partition's commit stays before it).
pub trait Stage: Send {
    /// The stage's name in logs (`local`, `route`, `state`, `join`, `windows`).
    const NAME: &'static str;

    /// One record of an assigned partition, in the partition's order.
    fn on_record(
        &mut self,
        record: Record<'_>,
        out: &mut Outputs,
    ) -> impl Future<Output = ()> + Send;

    /// Partitions were revoked: drop what is held for them (their records are read again by the
    /// next owner; acknowledgements still to come for them are ignored).
    fn on_revoked(&mut self, partitions: &[i32]);

    /// The reader reached the end of an assigned partition (inputs with end-of-partition
    /// events only).
    fn on_partition_eof(&mut self, _partition: i32) {}

    /// When [`Stage::on_wake`] is due next (`None`: not at all).
    fn wake_at(&self) -> Option<Instant> {
        None
    }

    fn on_wake(&mut self, _now: Instant, _out: &mut Outputs) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Shutdown: hand out whatever is buffered (its outputs are drained like the others).
    fn drain(&mut self, _out: &mut Outputs) {}
}

/// The outputs of the records handed to a stage, until acknowledged.
#[derive(Default)]
pub struct Outputs {
    in_flight: FuturesUnordered<AckedOutput>,
    done: Vec<(i32, i64)>,
    checkpoints: Vec<(i32, String)>,
}

impl Outputs {
    /// The outputs of record (`partition`, `offset`): it is done when `outputs` resolves.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        outputs: impl Future<Output = ()> + Send + 'static,
    ) {
        self.in_flight
            .push(acked(Settles::One((partition, offset)), outputs));
    }

    /// Outputs that settle several records at once.
    pub fn push_settling(
        &mut self,
        records: Vec<(i32, i64)>,
        outputs: impl Future<Output = ()> + Send + 'static,
    ) {
        self.in_flight.push(acked(Settles::Many(records), outputs));
    }

    /// A record with no output to wait for: done now.
    pub fn done(&mut self, partition: i32, offset: i64) {
        self.done.push((partition, offset));
    }

    pub fn done_all(&mut self, records: &[(i32, i64)]) {
        self.done.extend_from_slice(records);
    }

    /// Sets the checkpoint of `partition`: stored as the commit metadata with every offset of
    /// the partition stored from now on (the ones this call's records make committable
    /// included), until replaced or the partition is revoked. For a stage whose restart needs
    /// more than the committed offset (the windows stage); it must hold for every offset the
    /// partition's records settle until the next checkpoint.
    pub fn checkpoint(&mut self, partition: i32, metadata: String) {
        self.checkpoints.push((partition, metadata));
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// The runner's bounds (from the worker's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most outputs waiting for acknowledgement before reading pauses.
    pub max_in_flight: usize,
    /// Bound on waiting for acknowledgements at shutdown.
    pub shutdown_timeout: Duration,
}

impl Limits {
    pub fn of(w: &WorkerConfig) -> Self {
        Self {
            max_in_flight: w.max_in_flight,
            shutdown_timeout: w.shutdown_timeout,
        }
    }
}

/// A fixed-period [`Stage::wake_at`]: due at once, then a period after each firing.
#[derive(Debug, Clone, Copy)]
pub struct Ticker {
    period: Duration,
    next: Instant,
}

impl Ticker {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            next: Instant::now(),
        }
    }

    pub fn due_at(&self) -> Instant {
        self.next
    }

    pub fn fired(&mut self, now: Instant) {
        self.next = now + self.period;
    }
}

/// Offsets read and not yet committable, per partition.
struct Commits {
    trackers: HashMap<i32, OffsetTracker>,
    next: Vec<(i32, i64)>,
    /// The latest checkpoint of each partition that has one.
    checkpoints: HashMap<i32, String>,
}

impl Commits {
    fn revocations<I: Input, S: Stage>(&mut self, input: &I, stage: &mut S) {
        let revoked = input.take_revoked();
        if revoked.is_empty() {
            return;
        }
        for p in &revoked {
            self.trackers.remove(p);
            self.checkpoints.remove(p);
        }
        stage.on_revoked(&revoked);
    }

    /// Marks records done and stores the offsets that became committable.
    fn settle<I: Input>(&mut self, input: &I, records: &[(i32, i64)]) {
        self.next.clear();
        for &(p, o) in records {
            let Some(tracker) = self.trackers.get_mut(&p) else {
                continue; // revoked meanwhile
            };
            tracker.done(o);
            if let Some(next) = tracker.committable() {
                match self.next.iter_mut().find(|(q, _)| *q == p) {
                    Some(entry) => entry.1 = next,
                    None => self.next.push((p, next)),
                }
            }
        }
        if !self.next.is_empty() {
            input.store_offsets(&self.next, &self.checkpoints);
        }
    }

    fn settle_done<I: Input>(&mut self, input: &I, out: &mut Outputs) {
        for (p, metadata) in out.checkpoints.drain(..) {
            if self.trackers.contains_key(&p) {
                self.checkpoints.insert(p, metadata);
            }
        }
        if !out.done.is_empty() {
            let done = std::mem::take(&mut out.done);
            self.settle(input, &done);
            out.done = done;
            out.done.clear();
        }
    }
}

/// Runs `stage` on `input` until `shutdown`, drains it (bounded), then commits and closes the
/// input.
pub async fn run<I: Input, S: Stage>(
    input: I,
    stage: &mut S,
    limits: Limits,
    shutdown: &CancellationToken,
) {
    let mut commits = Commits {
        trackers: HashMap::new(),
        next: Vec::new(),
        checkpoints: HashMap::new(),
    };
    let mut out = Outputs::default();
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        commits.revocations(&input, stage);
        let reading = out.in_flight.len() < limits.max_in_flight;
        let wake = stage.wake_at();
        if let Some(at) = wake
            && armed != Some(at)
        {
            sleep.as_mut().reset(at.into());
            armed = Some(at);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(settled) = out.in_flight.next(), if !out.in_flight.is_empty() => {
                commits.settle(&input, settled.offsets());
            }
            m = input.recv(), if reading => match m {
                Ok(m) => {
                    // Revocations served inside this recv() precede the record.
                    commits.revocations(&input, stage);
                    let record = I::record(&m);
                    if input.is_assigned(record.partition) {
                        commits
                            .trackers
                            .entry(record.partition)
                            .or_default()
                            .begin(record.offset);
                        stage.on_record(record, &mut out).await;
                        commits.settle_done(&input, &mut out);
                    }
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    commits.revocations(&input, stage);
                    if input.is_assigned(p) {
                        stage.on_partition_eof(p);
                    }
                }
                Err(e) => {
                    tracing::warn!(stage = S::NAME, error = %e, "kafka consume error");
                    tokio::time::sleep(CONSUME_ERROR_PAUSE).await;
                }
            },
            () = &mut sleep, if wake.is_some() => {
                armed = None;
                stage.on_wake(Instant::now(), &mut out).await;
                commits.settle_done(&input, &mut out);
            }
        }
    }
    // Drain: hand out what is buffered, then wait (bounded) for every acknowledgement.
    stage.drain(&mut out);
    commits.settle_done(&input, &mut out);
    let deadline = Instant::now() + limits.shutdown_timeout;
    while !out.in_flight.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, out.in_flight.next()).await {
            Ok(Some(settled)) => commits.settle(&input, settled.offsets()),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    stage = S::NAME,
                    in_flight = out.in_flight.len(),
                    "drain timed out; unacknowledged records will be read again"
                );
                break;
            }
        }
    }
    drop(out);
    input.close().await;
}

#[cfg(test)]
mod tests;
