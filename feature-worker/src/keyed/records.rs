//! The records of keyed mode's two internal topics and where they go: the repartition topic's
//! envelopes and watermark markers, the results topic's base records and partials, their
//! decoding and validation against the feature set (what cannot be used goes to the
//! dead-letter topic with a [`BadRecord`] reason), the partition that owns an entity and the
//! repartition record key.

use riskstream_common::{Event, FeatureValue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::features::FeatureSet;

/// Highest source partition a record may name: the events topic never has more partitions (a
/// marker naming partition 2^31 would otherwise size the state stage's watermarks to 32 GiB).
pub const MAX_SOURCE_PARTITION: i32 = 65_535;

/// Dead-letter codes of internal records.
pub mod code {
    /// Not JSON, or not a record of the topic.
    pub const UNDECODABLE: &str = "undecodable";
    /// A feature group the running feature set does not have.
    pub const UNKNOWN_GROUP: &str = "unknown_group";
    /// A partial whose value count is not its group's feature count.
    pub const WRONG_VALUE_COUNT: &str = "wrong_value_count";
    /// A negative or impossible source partition.
    pub const INVALID_SOURCE_PARTITION: &str = "invalid_source_partition";
}

/// Why a record of an internal topic cannot be used: its dead-letter code and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadRecord {
    /// One of [`code`].
    pub code: &'static str,
    pub reason: String,
}

impl BadRecord {
    fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    fn undecodable(topic: &str, e: &serde_json::Error) -> Self {
        Self::new(code::UNDECODABLE, format!("not a {topic} record: {e}"))
    }
}

fn check_group(group: u32, set: &FeatureSet) -> Result<usize, BadRecord> {
    let groups = set.groups().len();
    usize::try_from(group)
        .ok()
        .filter(|g| *g < groups)
        .ok_or_else(|| {
            BadRecord::new(
                code::UNKNOWN_GROUP,
                format!("feature group {group} does not exist (the feature set has {groups})"),
            )
        })
}

fn check_source_partition(p: i32) -> Result<(), BadRecord> {
    if (0..=MAX_SOURCE_PARTITION).contains(&p) {
        Ok(())
    } else {
        Err(BadRecord::new(
            code::INVALID_SOURCE_PARTITION,
            format!("src_partition {p} is not between 0 and {MAX_SOURCE_PARTITION}"),
        ))
    }
}

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

impl RepartitionRecord {
    /// Decodes a repartition record and checks it against `set` (its group exists, its source
    /// partition is possible).
    pub fn decode(payload: &[u8], set: &FeatureSet) -> Result<Self, BadRecord> {
        let r: Self = serde_json::from_slice(payload)
            .map_err(|e| BadRecord::undecodable("repartition", &e))?;
        match &r {
            Self::Event {
                group,
                src_partition,
                ..
            } => {
                check_group(*group, set)?;
                check_source_partition(*src_partition)?;
            }
            Self::Marker { src_partition, .. } => check_source_partition(*src_partition)?,
        }
        Ok(r)
    }
}

impl ResultRecord {
    /// Decodes a results record and checks it against `set` (every group it names exists; a
    /// partial has one value per feature of its group).
    pub fn decode(payload: &[u8], set: &FeatureSet) -> Result<Self, BadRecord> {
        let r: Self =
            serde_json::from_slice(payload).map_err(|e| BadRecord::undecodable("results", &e))?;
        match &r {
            Self::Base { groups, .. } => {
                for g in groups {
                    check_group(*g, set)?;
                }
            }
            Self::Partial { group, values, .. } => {
                let gi = check_group(*group, set)?;
                let want = set.groups()[gi].features().len();
                if values.len() != want {
                    return Err(BadRecord::new(
                        code::WRONG_VALUE_COUNT,
                        format!(
                            "partial of group {group} has {} value(s), the group has {want} feature(s)",
                            values.len()
                        ),
                    ));
                }
            }
        }
        Ok(r)
    }
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

    fn shipped() -> FeatureSet {
        FeatureSet::from_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/features.toml"
        ))
        .expect("shipped features")
    }

    #[test]
    fn hostile_internal_records_are_refused_with_their_reason() {
        let set = shipped();
        let groups = set.groups().len();
        let code_of = |r: Result<RepartitionRecord, BadRecord>| r.map(|_| ()).unwrap_err().code;
        let marker = |p: i64| {
            format!(r#"{{"marker":{{"src_partition":{p},"watermark_ms":0,"idle":false}}}}"#)
        };
        assert!(RepartitionRecord::decode(marker(3).as_bytes(), &set).is_ok());
        // A marker naming partition 2^31 - 1 made the state stage size its watermarks to
        // 32 GiB (InputWatermark::observe): refused instead.
        assert_eq!(
            code_of(RepartitionRecord::decode(
                marker(i64::from(i32::MAX)).as_bytes(),
                &set
            )),
            code::INVALID_SOURCE_PARTITION
        );
        assert_eq!(
            code_of(RepartitionRecord::decode(marker(-1).as_bytes(), &set)),
            code::INVALID_SOURCE_PARTITION
        );
        for bad in [
            &b"\xff\xfe"[..],
            b"{}",
            b"{\"marker\":{\"src_partition\":\"0\"}}",
            b"null",
        ] {
            assert_eq!(
                code_of(RepartitionRecord::decode(bad, &set)),
                code::UNDECODABLE
            );
        }
        let event = riskstream_common::EventDecoder::default()
            .decode_slice(br#"{"event_time":0,"account_id":"a"}"#, 0)
            .unwrap();
        let envelope = |group: u32| RepartitionRecord::Event {
            event: Box::new(event.clone()),
            group,
            src_partition: 0,
            src_offset: 0,
            watermark_ms: 0,
            traceparent: None,
        };
        let bytes = |r: &RepartitionRecord| serde_json::to_vec(r).unwrap_or_default();
        assert!(RepartitionRecord::decode(&bytes(&envelope(0)), &set).is_ok());
        let unknown = u32::try_from(groups).unwrap();
        assert_eq!(
            code_of(RepartitionRecord::decode(&bytes(&envelope(unknown)), &set)),
            code::UNKNOWN_GROUP
        );

        let partial = |group: u32, n: usize| ResultRecord::Partial {
            event_id: Uuid::from_u128(1),
            group,
            values: vec![FeatureValue::Null; n],
            beyond_retention: false,
        };
        let decode = |r: &ResultRecord| {
            ResultRecord::decode(&serde_json::to_vec(r).unwrap_or_default(), &set)
        };
        let n0 = set.groups()[0].features().len();
        assert!(decode(&partial(0, n0)).is_ok());
        assert_eq!(
            decode(&partial(0, n0 + 1)).unwrap_err().code,
            code::WRONG_VALUE_COUNT
        );
        assert_eq!(
            decode(&partial(unknown, 0)).unwrap_err().code,
            code::UNKNOWN_GROUP
        );
        let base = ResultRecord::Base {
            event: Box::new(event),
            groups: vec![0, unknown],
            late: false,
            lateness_ms: 0,
            read_at_unix_us: 0,
            traceparent: None,
            source_key: None,
            source_payload: None,
        };
        let e = decode(&base).unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_GROUP);
        assert!(e.reason.contains(&unknown.to_string()), "{e}");
        assert_eq!(
            ResultRecord::decode(b"[1,2", &set).unwrap_err().code,
            code::UNDECODABLE
        );
    }
}
