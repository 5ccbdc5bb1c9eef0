//! Topic provisioning: what every riskstream topic looks like in production (partitions,
//! retention, cleanup policy), its creation through the Kafka admin API (idempotent), and the
//! start-up check each service runs on the topics it reads and writes.
//!
//! The specification is data ([`TopicSpec`], built from [`Topics`] and [`Provision`]); the
//! admin calls are a thin layer over it, so `riskstream topics create`, the compose init step
//! and the test kit all create the same topics.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use crate::kafka::{KafkaConfig, Topics};

/// How topics are provisioned: `[kafka.provision]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Provision {
    /// Partitions of the data topics (events, decisions, spans, window outputs) and of the
    /// internal keyBy topics: the most workers (per stage) that can share the load.
    pub partitions: i32,
    /// Replication factor; `-1` takes the broker's `default.replication.factor`.
    pub replication_factor: i32,
    /// Retention of events, decisions, spans and window outputs.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Retention of the internal keyBy topics (repartition, partials). Keyed state is restored
    /// from the compacted changelog; the repartition topic is replayed only as a fallback
    /// (state written for other feature definitions), which is exact when this covers the
    /// longest window plus allowed lateness (of features and of window outputs, whose stage
    /// restores from the repartition topic).
    #[serde(with = "humantime_serde")]
    pub internal_retention: Duration,
    /// Retention of the dead-letter and late side outputs.
    #[serde(with = "humantime_serde")]
    pub side_output_retention: Duration,
}

impl Default for Provision {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication_factor: -1,
            retention: Duration::from_secs(7 * 24 * 3600),
            internal_retention: Duration::from_secs(24 * 3600),
            side_output_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What a topic is for; decides its partition count, retention and cleanup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicRole {
    /// Events, decisions, spans, window outputs: partitioned for parallelism, retained for
    /// replay.
    Data,
    /// keyBy repartition and partial results: partitioned like data, shorter retention.
    Internal,
    /// Dead letters and late side outputs: one partition, kept long for inspection.
    SideOutput,
    /// Rules and lists: one partition (one total order), kept forever (replayed at start).
    Control,
    /// The keyed state changelog: partitioned like the repartition topic, compacted (the
    /// newest record per key is kept forever; tombstones for a day).
    Changelog,
}

/// Segment size of changelog topics: compaction never touches the active segment, and a
/// restore reads every record of it, so it is kept small.
pub const CHANGELOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// A changelog segment is closed (and becomes compactable) after this long at the latest.
pub const CHANGELOG_SEGMENT_MS: u64 = 10 * 60 * 1000;

/// One topic as it should exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub role: TopicRole,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs (`cleanup.policy`, `retention.ms`, ...).
    pub configs: BTreeMap<String, String>,
}

fn retention_ms(d: Duration) -> String {
    d.as_millis().to_string()
}

impl TopicSpec {
    /// The spec of a topic named `name` in `role`.
    pub fn for_role(name: &str, role: TopicRole, p: &Provision) -> Self {
        let (partitions, retention) = match role {
            TopicRole::Data => (p.partitions, retention_ms(p.retention)),
            TopicRole::Internal => (p.partitions, retention_ms(p.internal_retention)),
            TopicRole::SideOutput => (1, retention_ms(p.side_output_retention)),
            TopicRole::Control => (1, "-1".to_string()),
            TopicRole::Changelog => (p.partitions, "-1".to_string()),
        };
        let mut configs = BTreeMap::new();
        if role == TopicRole::Changelog {
            configs.insert("cleanup.policy".to_string(), "compact".to_string());
            configs.insert(
                "segment.bytes".to_string(),
                CHANGELOG_SEGMENT_BYTES.to_string(),
            );
            configs.insert("segment.ms".to_string(), CHANGELOG_SEGMENT_MS.to_string());
            configs.insert("min.cleanable.dirty.ratio".to_string(), "0.3".to_string());
        } else {
            configs.insert("cleanup.policy".to_string(), "delete".to_string());
        }
        configs.insert("retention.ms".to_string(), retention);
        // Event time travels as the record timestamp; keep the producer's.
        configs.insert(
            "message.timestamp.type".to_string(),
            "CreateTime".to_string(),
        );
        Self {
            name: name.to_string(),
            role,
            partitions,
            replication_factor: p.replication_factor,
            configs,
        }
    }
}

impl Topics {
    /// Every topic riskstream uses, as it should be provisioned.
    pub fn specs(&self, p: &Provision) -> Vec<TopicSpec> {
        use TopicRole::*;
        [
            (&self.events, Data),
            (&self.decisions, Data),
            (&self.otlp_spans, Data),
            (&self.window_outputs, Data),
            (&self.repartition, Internal),
            (&self.feature_results, Internal),
            (&self.changelog, Changelog),
            (&self.events_dlq, SideOutput),
            (&self.events_late, SideOutput),
            (&self.window_outputs_late, SideOutput),
            (&self.spans_dlq, SideOutput),
            (&self.rules, Control),
            (&self.lists, Control),
        ]
        .into_iter()
        .map(|(name, role)| TopicSpec::for_role(name, role, p))
        .collect()
    }
}

/// Why provisioning or the start-up check failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka admin client: {0}")]
    Client(#[source] KafkaError),
    #[error("creating topics on {brokers}: {source}")]
    Create {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("reading topic metadata from {brokers}: {source}")]
    Metadata {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "topics missing or misconfigured on {brokers}:\n{}\ncreate them with `riskstream topics create` (same --brokers and configuration)",
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Check {
        brokers: String,
        problems: Vec<String>,
    },
}

/// What happened to one topic in [`create_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    /// It existed already; left as it is (its partition count is reported).
    Existed {
        partitions: i32,
    },
}

/// Creates every topic of `specs` that does not exist; existing topics are left alone.
/// Idempotent: run it at every deploy.
pub async fn create_topics(
    kafka: &KafkaConfig,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, Created)>, TopicError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(TopicError::Client)?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|source| TopicError::Create {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    let mut existed = Vec::new();
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, Created::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existed.push(name),
            Err((topic, code)) => return Err(TopicError::CreateTopic { topic, code }),
        }
    }
    if !existed.is_empty() {
        let parts = partition_counts(kafka, timeout)?;
        for name in existed {
            let partitions = parts.get(&name).copied().unwrap_or(0);
            out.push((name, Created::Existed { partitions }));
        }
    }
    Ok(out)
}

/// Partition count of every topic on the cluster.
pub fn partition_counts(
    kafka: &KafkaConfig,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, TopicError> {
    let client: BaseConsumer = kafka.client_config().create().map_err(TopicError::Client)?;
    let md = client
        .fetch_metadata(None, timeout)
        .map_err(|source| TopicError::Metadata {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// The value of config `name` of `topic` as the cluster has it (`None`: not reported).
pub async fn topic_config(
    kafka: &KafkaConfig,
    topic: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<String>, TopicError> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(TopicError::Client)?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await
        .map_err(|source| TopicError::Metadata {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    let resource = match results.into_iter().next() {
        Some(Ok(resource)) => resource,
        Some(Err(code)) => {
            return Err(TopicError::Metadata {
                brokers: kafka.brokers.clone(),
                source: KafkaError::AdminOp(code),
            });
        }
        None => {
            return Err(TopicError::Metadata {
                brokers: kafka.brokers.clone(),
                source: KafkaError::AdminOpCreation(format!("no configuration of `{topic}`")),
            });
        }
    };
    Ok(resource.get(name).and_then(|e| e.value.clone()))
}

/// Fails unless `topic` is compacted (`cleanup.policy` includes `compact`): a changelog on a
/// deleting topic would lose the state of every key not updated within its retention.
pub async fn require_compacted(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<(), TopicError> {
    let policy = topic_config(kafka, topic, "cleanup.policy", timeout).await?;
    if policy.as_deref().is_some_and(is_compacting) {
        return Ok(());
    }
    Err(TopicError::Check {
        brokers: kafka.brokers.clone(),
        problems: vec![format!(
            "topic `{topic}` has cleanup.policy={} but it must be compacted (cleanup.policy=compact)",
            policy.as_deref().unwrap_or("?")
        )],
    })
}

fn is_compacting(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

/// A service's requirement on one topic, checked at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement<'a> {
    pub topic: &'a str,
    /// Topics whose partition counts must equal this one's (co-partitioning, e.g. the keyBy
    /// topics with each other).
    pub same_partitions_as: Option<&'a str>,
}

impl<'a> Requirement<'a> {
    pub fn exists(topic: &'a str) -> Self {
        Self {
            topic,
            same_partitions_as: None,
        }
    }
    pub fn co_partitioned(topic: &'a str, with: &'a str) -> Self {
        Self {
            topic,
            same_partitions_as: Some(with),
        }
    }
}

/// Checks that every required topic exists (and co-partitioned topics agree), listing every
/// problem at once. The mock broker auto-creates topics on metadata requests, so this check
/// is meant for real clusters; it still passes there once topics were created.
pub fn check_topics(
    kafka: &KafkaConfig,
    required: &[Requirement<'_>],
    timeout: Duration,
) -> Result<(), TopicError> {
    let parts = partition_counts(kafka, timeout)?;
    let problems = problems(&parts, required);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TopicError::Check {
            brokers: kafka.brokers.clone(),
            problems,
        })
    }
}

/// The pure part of [`check_topics`].
fn problems(parts: &BTreeMap<String, i32>, required: &[Requirement<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for r in required {
        let Some(&n) = parts.get(r.topic) else {
            out.push(format!("topic `{}` does not exist", r.topic));
            continue;
        };
        if let Some(other) = r.same_partitions_as
            && let Some(&m) = parts.get(other)
            && m != n
        {
            out.push(format!(
                "topic `{}` has {n} partitions but `{other}` has {m}: they must be equal",
                r.topic
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_cover_every_topic_with_role_policies() {
        let t = Topics::default();
        let p = Provision::default();
        let specs = t.specs(&p);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut all = t.all();
        all.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, all, "every topic is provisioned exactly once");
        let by = |n: &str| specs.iter().find(|s| s.name == n).unwrap();
        assert_eq!(by(&t.events).partitions, 6);
        assert_eq!(by(&t.repartition).partitions, 6);
        assert_eq!(by(&t.events_dlq).partitions, 1);
        assert_eq!(by(&t.window_outputs).partitions, 6);
        assert_eq!(by(&t.window_outputs).role, TopicRole::Data);
        assert_eq!(by(&t.window_outputs_late).partitions, 1);
        assert_eq!(by(&t.window_outputs_late).role, TopicRole::SideOutput);
        assert_eq!(by(&t.rules).partitions, 1);
        assert_eq!(by(&t.rules).configs["retention.ms"], "-1");
        assert_eq!(
            by(&t.events).configs["retention.ms"],
            (7 * 24 * 3600 * 1000u64).to_string()
        );
        assert_eq!(by(&t.decisions).configs["cleanup.policy"], "delete");
        let changelog = by(&t.changelog);
        assert_eq!(changelog.configs["cleanup.policy"], "compact");
        assert_eq!(changelog.configs["retention.ms"], "-1");
        assert_eq!(
            changelog.partitions,
            by(&t.repartition).partitions,
            "co-partitioned with the repartition topic"
        );
        assert!(is_compacting("compact") && is_compacting("delete, compact"));
        assert!(!is_compacting("delete"));
    }

    #[test]
    fn problems_name_missing_and_mismatched_topics() {
        let parts: BTreeMap<String, i32> = [("a".to_string(), 6), ("b".to_string(), 3)]
            .into_iter()
            .collect();
        let p = problems(
            &parts,
            &[
                Requirement::exists("a"),
                Requirement::co_partitioned("b", "a"),
                Requirement::exists("c"),
            ],
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("`b` has 3 partitions but `a` has 6"), "{p:?}");
        assert!(p[1].contains("`c` does not exist"), "{p:?}");
        assert!(problems(&parts, &[Requirement::co_partitioned("a", "a")]).is_empty());
    }
}
