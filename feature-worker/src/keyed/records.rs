//! The records of keyed mode's two internal topics and where they go: the repartition topic's
//! envelopes and watermark markers, the results topic's base records and partials, the
//! partition that owns an entity and the repartition record key.

use riskstream_common::{Event, FeatureValue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A record of the repartition topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"event": {..}}`): decoded in one pass, unlike an internal tag.
#[serde(rename_all = "snake_case")]
pub enum RepartitionRecord {
    /// One event for one feature group, sent to the partition of (group, entity key).
    Event {
        event: Box<Event>,
        group: u32,
        src_partition: i32,
        src_offset: i64,
        /// The source partition's watermark right after this event (piggybacked marker).
        watermark_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A source partition's watermark, sent to every repartition partition.
    Marker {
        src_partition: i32,
        watermark_ms: i64,
        /// The source is idle (read to its end and quiet for `idle_timeout`): it does not hold
        /// the input watermark back until it produces again.
        idle: bool,
    },
}

/// A record of the results topic, keyed by event id so all parts of one event meet on one
/// join worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"event": {..}}`): decoded in one pass, unlike an internal tag.
#[serde(rename_all = "snake_case")]
pub enum ResultRecord {
    /// The event itself, from the router: which groups' partials to wait for.
    Base {
        event: Box<Event>,
        /// Indices of the feature groups whose key the event has (one partial each).
        groups: Vec<u32>,
        /// Behind its source partition's watermark (still scored on event time).
        late: bool,
        #[serde(alias = "watermark_lag_ms")]
        lateness_ms: i64,
        /// When the router read the event (wall clock): the decision's latency starts here.
        read_at_unix_us: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// Events later than the allowed lateness only: the source record's key and bytes,
        /// copied to the late topic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_payload: Option<String>,
    },
    /// The values of one group's features for one event, in group order.
    Partial {
        event_id: Uuid,
        group: u32,
        values: Vec<FeatureValue>,
        /// The event was beyond its key's state retention in this group.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        beyond_retention: bool,
    },
}

/// The repartition partition that owns `(group, key)`: every record of an entity goes there.
/// The router sets it explicitly and the state stage uses it to drop revoked keys.
pub fn repartition_of(group: u32, key: &str, partitions: i32) -> i32 {
    let h = twox_hash::XxHash3_64::oneshot_with_seed(u64::from(group), key.as_bytes());
    let n = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(h % n).unwrap_or(0)
}

/// The record key on the repartition topic: `{group}|{entity key}`.
pub fn repartition_key(group: u32, key: &str) -> String {
    format!("{group}|{key}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn one_entity_always_maps_to_one_partition_and_keys_spread() {
        let mut seen = HashSet::new();
        for i in 0..200 {
            let key = format!("card-{i}");
            let q = repartition_of(0, &key, 6);
            assert_eq!(q, repartition_of(0, &key, 6));
            assert!((0..6).contains(&q));
            seen.insert(q);
        }
        assert_eq!(seen.len(), 6, "keys spread over every partition");
        assert_eq!(repartition_of(3, "x", 1), 0);
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = ResultRecord::Partial {
            event_id: Uuid::from_u128(7),
            group: 2,
            values: vec![
                FeatureValue::Null,
                FeatureValue::Number(0.1 + 0.2),
                FeatureValue::Text("DE".into()),
            ],
            beyond_retention: true,
        };
        let back: ResultRecord =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap_or_default()).unwrap();
        assert_eq!(back, r);
        let m = RepartitionRecord::Marker {
            src_partition: 1,
            watermark_ms: i64::MIN,
            idle: true,
        };
        let back: RepartitionRecord =
            serde_json::from_slice(&serde_json::to_vec(&m).unwrap_or_default()).unwrap();
        assert_eq!(back, m);
    }
}
