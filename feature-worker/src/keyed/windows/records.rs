//! The windows stage's outgoing records: one [`WindowRecord`] per emission of a window to
//! `kafka.topics.window_outputs`, one [`TooLateRecord`] per event too late for a window output to
//! `kafka.topics.window_outputs_late`; both keyed by the entity key.
//!
//! Idempotence for consumers: an emission is identified by `(output, key, start_ms, count)`.
//! Every emission of a window adds one event, so its count grows by one with each update, and
//! a record seen again with the same identity (re-emitted after a restart or rebalance) has the
//! same content. Per `(output, key, start_ms)` the record with the highest count is the latest.
//! A too-late record is identified by `(output, event_id)`.

use riskstream_common::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::features::window_output::WindowResult;

/// One emission of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// The `[[window_output]]` name.
    pub output: String,
    /// The entity key (as a feature's: composite keys joined by `|`).
    pub key: String,
    /// The window, `[start_ms, end_ms)`.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Events counted (the emission's version: an update has one more than the one before).
    pub count: u64,
    /// Sum of the field over them (absent values count as 0).
    pub sum: f64,
    /// A re-emission after a late event (the window was emitted before with count - 1).
    pub update: bool,
}

impl WindowRecord {
    pub fn of(output: &str, r: WindowResult) -> Self {
        Self {
            output: output.to_string(),
            key: r.key,
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            count: r.count,
            sum: r.sum,
            update: r.update,
        }
    }
}

/// An event all of whose windows of one output were final (purged) when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TooLateRecord {
    pub output: String,
    pub key: String,
    pub event_id: Uuid,
    pub event_time_ms: i64,
    /// The windows' watermark it was too late for (every window of the event ended at or
    /// before `watermark_ms - allowed_lateness`).
    pub watermark_ms: i64,
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_flat_json_with_named_fields() {
        let r = WindowRecord::of(
            "card_1m",
            WindowResult {
                key: "card-1".into(),
                start_ms: 60_000,
                end_ms: 120_000,
                count: 3,
                sum: 12.5,
                update: true,
            },
        );
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({
                "output": "card_1m", "key": "card-1", "start_ms": 60_000, "end_ms": 120_000,
                "count": 3, "sum": 12.5, "update": true
            })
        );
        let back: WindowRecord = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
    }
}
