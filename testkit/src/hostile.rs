//! Malformed records for the soak tests of every consumer: random bytes, truncated and
//! mistyped JSON, invalid UTF-8, records of another format. Each is bad by construction (the
//! tests do not ask the code under test which ones are bad), and carries what a dead letter of
//! it must say.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use rand::{Rng, RngCore};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use riskstream_common::kafka::{DLQ_MAX_PAYLOAD_BYTES, KafkaConfig, header};
use serde_json::Value;

use crate::kafka::read_records;

/// One malformed record and what its dead letter must carry.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// What kind of garbage it is (for failure messages).
    pub kind: &'static str,
    pub payload: Vec<u8>,
    /// The dead-letter codes that are right for it (any of them).
    pub codes: &'static [&'static str],
    /// Text the reason must contain (a field name), if any.
    pub reason_contains: Option<String>,
}

impl Malformed {
    pub fn new(kind: &'static str, payload: Vec<u8>, codes: &'static [&'static str]) -> Self {
        Self {
            kind,
            payload,
            codes,
            reason_contains: None,
        }
    }

    pub fn naming(mut self, text: impl Into<String>) -> Self {
        self.reason_contains = Some(text.into());
        self
    }
}

/// `1..=max_len` random bytes after `first`, a byte that cannot start the topic's format (e.g.
/// `0xff`: neither UTF-8 nor JSON; `0x0f`: a protobuf tag of wire type 7, which does not exist).
pub fn random_bytes(rng: &mut impl RngCore, first: u8, max_len: usize) -> Vec<u8> {
    let n = rng.random_range(1..=max_len.max(1));
    let mut out = vec![0; n];
    rng.fill_bytes(&mut out);
    out[0] = first;
    out
}

/// A strict prefix (at least one byte, at most all but one) of `valid`.
pub fn truncated(rng: &mut impl RngCore, valid: &[u8]) -> Vec<u8> {
    assert!(valid.len() >= 2, "too short to truncate");
    let cut = rng.random_range(1..valid.len());
    valid[..cut].to_vec()
}

/// A value of another JSON type than `v`.
pub fn other_type(rng: &mut impl RngCore, v: &Value) -> Value {
    let choices: [Value; 5] = [
        Value::Bool(true),
        Value::from(17),
        Value::from("seventeen"),
        Value::Array(vec![Value::from(1)]),
        serde_json::json!({"nested": {}}),
    ];
    let same = |c: &Value| std::mem::discriminant(c) == std::mem::discriminant(v);
    let others: Vec<&Value> = choices.iter().filter(|c| !same(c)).collect();
    others[rng.random_range(0..others.len())].clone()
}

/// `valid` with the string value at JSON pointer `pointer` replaced by invalid UTF-8 (a lone
/// continuation byte inside the quotes).
pub fn invalid_utf8(valid: &Value, pointer: &str) -> Vec<u8> {
    let marker = "\u{1}INVALID\u{1}";
    let mut v = valid.clone();
    *v.pointer_mut(pointer).expect("the pointer names a value") = Value::from(marker);
    let text = serde_json::to_string(&v).expect("json");
    let escaped = serde_json::to_string(marker).expect("json");
    let at = text.find(&escaped).expect("marker present");
    let mut out = text.as_bytes()[..at].to_vec();
    out.extend_from_slice(b"\"a\x80\xffb\"");
    out.extend_from_slice(&text.as_bytes()[at + escaped.len()..]);
    out
}

/// `valid` with the value at `pointer` replaced by `value` (or added, in an object).
pub fn with_value(valid: &Value, pointer: &str, value: Value) -> Value {
    let mut v = valid.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a json pointer");
    match v.pointer_mut(parent).expect("the pointer's parent exists") {
        Value::Object(m) => {
            m.insert(key.to_string(), value);
        }
        other => {
            *other
                .pointer_mut(&format!("/{key}"))
                .expect("the pointer names a value") = value
        }
    }
    v
}

/// Shuffles `good` and `bad` records into one sequence (both keep their own order), from a
/// seeded generator: `true` marks a bad one.
pub fn interleave<T>(rng: &mut impl RngCore, good: Vec<T>, bad: Vec<T>) -> Vec<(bool, T)> {
    let (mut g, mut b) = (good.into_iter(), bad.into_iter());
    let mut out = Vec::new();
    loop {
        let (gl, bl) = (g.len(), b.len());
        if gl + bl == 0 {
            return out;
        }
        if rng.random_range(0..gl + bl) < bl {
            out.push((true, b.next().expect("bad left")));
        } else {
            out.push((false, g.next().expect("good left")));
        }
    }
}

/// Where a record landed: (topic, partition, offset).
pub type At = (String, i32, i64);

/// A record to produce: its key (if any) and payload.
pub type KeyedPayload = (Option<String>, Vec<u8>);

/// A producer that may send records larger than the broker's limit uncompressed (they are
/// compressed in the batch), so huge records reach the topics as a hostile client's would.
pub fn hostile_producer(kafka: &KafkaConfig) -> FutureProducer {
    let mut c = kafka.producer_config();
    c.set("message.max.bytes", "10000000")
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    c.create().expect("producer")
}

/// Produces `records` (key, payload) to `topic` concurrently, in order per partition; returns
/// where each landed.
pub async fn send_all(producer: &FutureProducer, topic: &str, records: &[KeyedPayload]) -> Vec<At> {
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(2_000) {
        let sends = chunk.iter().map(|(key, payload)| {
            let mut r = FutureRecord::<str, [u8]>::to(topic).payload(payload.as_slice());
            if let Some(k) = key {
                r = r.key(k.as_str());
            }
            producer.send(r, Timeout::After(Duration::from_secs(30)))
        });
        for r in join_all(sends).await {
            let (partition, offset) = match r {
                Ok(d) => (d.partition, d.offset),
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            };
            out.push((topic.to_string(), partition, offset));
        }
    }
    out
}

/// Mixes `bad` (keyed `bad-N`) into `good` and produces them to `topic`; returns the bad ones
/// by where they landed.
pub async fn send_mixed(
    producer: &FutureProducer,
    rng: &mut impl RngCore,
    topic: &str,
    good: Vec<KeyedPayload>,
    bad: Vec<Malformed>,
) -> HashMap<At, Malformed> {
    let good: Vec<(Option<String>, Vec<u8>, Option<Malformed>)> =
        good.into_iter().map(|(k, p)| (k, p, None)).collect();
    let bad: Vec<(Option<String>, Vec<u8>, Option<Malformed>)> = bad
        .into_iter()
        .enumerate()
        .map(|(i, m)| (Some(format!("bad-{i}")), m.payload.clone(), Some(m)))
        .collect();
    let mixed = interleave(rng, good, bad);
    let records: Vec<KeyedPayload> = mixed
        .iter()
        .map(|(_, (k, p, _))| (k.clone(), p.clone()))
        .collect();
    let landed = send_all(producer, topic, &records).await;
    mixed
        .into_iter()
        .zip(landed)
        .filter_map(|((_, (_, _, m)), at)| m.map(|m| (at, m)))
        .collect()
}

/// Produces every one of `bad` to `topic` (no key); returns them by where they landed.
pub async fn send_bad(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    bad: Vec<Malformed>,
) -> HashMap<At, Malformed> {
    let records: Vec<KeyedPayload> = bad
        .iter()
        .map(|m| (key.map(str::to_string), m.payload.clone()))
        .collect();
    send_all(producer, topic, &records)
        .await
        .into_iter()
        .zip(bad)
        .collect()
}

fn kinds(expected: &HashMap<At, Malformed>) -> HashMap<(String, &'static str), usize> {
    let mut kinds = HashMap::new();
    for ((topic, _, _), m) in expected {
        *kinds.entry((topic.clone(), m.kind)).or_default() += 1;
    }
    kinds
}

/// Every malformed record of `expected` is in `dlq_topic` exactly once, found
/// by its source headers, with one of its codes and a reason naming its problem, and nothing
/// else is there. `payload_ok` judges a dead letter's payload (after the cut of a huge one,
/// which must carry the original size).
pub async fn check_dead_letters(
    kafka: &KafkaConfig,
    dlq_topic: &str,
    mut expected: HashMap<At, Malformed>,
    timeout: Duration,
    payload_ok: impl Fn(&Malformed, &[u8]) -> bool,
) {
    let n = expected.len();
    let dlq = read_records(kafka, dlq_topic, n, timeout).await;
    for r in &dlq {
        let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
        let at: At = (
            h(header::DLQ_SOURCE_TOPIC),
            h(header::DLQ_SOURCE_PARTITION).parse().unwrap_or(-1),
            h(header::DLQ_SOURCE_OFFSET).parse().unwrap_or(-1),
        );
        let m = expected.remove(&at).unwrap_or_else(|| {
            panic!("dead letter of {at:?} is not one of the malformed records (or came twice)")
        });
        let (code, reason) = (h(header::DLQ_ERROR_CODE), h(header::DLQ_REASON));
        let what = format!("{} on {} (code {code:?}, reason {reason:?})", m.kind, at.0);
        assert!(m.codes.contains(&code.as_str()), "{what}: unexpected code");
        assert!(!reason.is_empty(), "{what}: no reason");
        if let Some(want) = &m.reason_contains {
            assert!(
                reason.contains(want.as_str()),
                "{what}: the reason does not name {want:?}"
            );
        }
        let payload = r.value.as_deref().unwrap_or_default();
        match r.headers.get(header::DLQ_TRUNCATED_FROM) {
            None => assert!(payload_ok(&m, payload), "{what}: wrong payload"),
            Some(size) => {
                assert_eq!(size.parse::<usize>().ok(), Some(m.payload.len()), "{what}");
                assert!(
                    payload.len() == DLQ_MAX_PAYLOAD_BYTES && m.payload.starts_with(payload),
                    "{what}: a cut payload is the record's first DLQ_MAX_PAYLOAD_BYTES"
                );
            }
        }
    }
    assert!(
        expected.is_empty(),
        "{} of {n} malformed records not dead-lettered: {:?}",
        expected.len(),
        kinds(&expected)
    );
    let client: BaseConsumer = kafka.client_config().create().expect("client");
    let md = client
        .fetch_metadata(Some(dlq_topic), Duration::from_secs(10))
        .expect("metadata");
    let held: i64 = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = client
                .fetch_watermarks(dlq_topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum();
    assert_eq!(
        usize::try_from(held).ok(),
        Some(n),
        "the dead-letter topic holds exactly the malformed records"
    );
}
