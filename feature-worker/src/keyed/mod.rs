//! Keyed (distributed) mode: each entity's window state lives on exactly one worker, so feature
//! values are the same whether one worker or many share the partitions, and through rebalances.
//!
//! Three stages run in every worker process, each its own consumer group derived from
//! `worker.group_id` (`G.route`, `G.state`, `G.join`), so any number of workers share all of them
//! (see docs/features.md, "Distributed mode"):
//! 1. [`route`]: `events` -> one envelope per feature group to the repartition topic (partition
//!    chosen from (group, entity key)), a base record per event to the results topic, and
//!    watermark markers to every repartition partition;
//! 2. [`state`]: per repartition partition, processes envelopes on arrival (on time or late,
//!    each into its own event-time buckets), updates the engine and emits one partial per
//!    (event, group), and writes each updated key's state to the compacted changelog topic
//!    before committing; on assignment it restores the partition's keys from the changelog
//!    ([`changelog`]);
//! 3. [`join`]: gathers base + partials per event id, scores and produces the decision;
//! 4. [`windows`] (when the feature file defines `[[window_output]]`s and
//!    `worker.window_outputs` is on, group `G.windows`): per repartition partition, the window
//!    outputs, emitted at window close and updated by late events, driven by the input
//!    watermark.
//!
//! Each stage is a [`crate::stage::Stage`] run by the stage runner. This module only starts the
//! stages and stops them together; [`records`] owns the wire formats of the two internal topics
//! and the partition function, [`replay`] the partition count and the replay reader,
//! [`watermark`] the input watermark and duplicate filter the state and windows stages keep.

pub mod changelog;
pub mod error;
pub mod join;
pub mod records;
pub mod replay;
pub mod route;
pub mod state;
pub mod watermark;
pub mod windows;

use rdkafka::producer::FutureProducer;
use riskstream_common::shutdown::CancellationToken;

pub use error::KeyedError;
pub use records::{RepartitionRecord, ResultRecord, repartition_key, repartition_of};

use crate::worker::WorkerState;

/// Suffixes of the per-stage consumer groups (`{worker.group_id}{suffix}`).
pub use join::GROUP_SUFFIX as JOIN_GROUP_SUFFIX;
pub use route::GROUP_SUFFIX as ROUTE_GROUP_SUFFIX;
pub use state::GROUP_SUFFIX as STATE_GROUP_SUFFIX;
pub use windows::GROUP_SUFFIX as WINDOWS_GROUP_SUFFIX;

/// Whether the windows stage runs: window outputs defined and `worker.window_outputs` on.
pub fn runs_windows(state: &WorkerState) -> bool {
    state.config.worker.window_outputs && !state.engine.feature_set().window_outputs().is_empty()
}

/// Runs the stages until shutdown; the first failing stage stops the others.
pub async fn run(
    state: WorkerState,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), KeyedError> {
    let stop = shutdown.child_token();
    let route = tokio::spawn(route::run(state.clone(), producer.clone(), stop.clone()));
    let st = tokio::spawn(state::run(state.clone(), producer.clone(), stop.clone()));
    let join = tokio::spawn(join::run(state.clone(), producer.clone(), stop.clone()));
    let mut stages = vec![("route", route), ("state", st), ("join", join)];
    if runs_windows(&state) {
        let windows = tokio::spawn(windows::run(state.clone(), producer.clone(), stop.clone()));
        stages.push((windows::STAGE, windows));
    }
    let mut first_error = None;
    for (name, handle) in stages {
        let result = match handle.await {
            Ok(r) => r,
            Err(error) => Err(KeyedError::Task { stage: name, error }),
        };
        if let Err(e) = result {
            tracing::error!(stage = name, error = %e, "keyed stage failed");
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
