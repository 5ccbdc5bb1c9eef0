//! `kafka.group_instance_id` makes the worker a static member of its consumer group on a real
//! Kafka broker (the broker names static members `{group.instance.id}-{uuid}`), and leaves it a
//! dynamic member without it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_feature_worker::WorkerMode;
use riskstream_testkit::kafka::TestKafka;

mod support;

use support::worker::TestWorker;

/// The member ids of `group` once it has `n` members.
fn members(kafka: &KafkaConfig, group: &str, n: usize) -> Vec<String> {
    let client: BaseConsumer = kafka.client_config().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<String> = client
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .map(|l| {
                l.groups()
                    .iter()
                    .flat_map(|g| g.members().iter().map(|m| m.id().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() == n {
            return ids;
        }
        assert!(Instant::now() < deadline, "group {group}: members {ids:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn run_worker(broker: &TestKafka, topics: &Topics, instance: &str) -> (String, Vec<String>) {
    let mut config = support::worker::config(broker, topics);
    config.kafka.group_instance_id = instance.to_string();
    let group = riskstream_testkit::unique("static");
    config.worker.group_id = group.clone();
    config.worker.mode = WorkerMode::Local;
    config.worker.window_outputs = false;
    let worker = TestWorker::spawn(config).await;
    let (k, g) = (broker.kafka_config(topics), group.clone());
    let ids = tokio::task::spawn_blocking(move || members(&k, &g, 1))
        .await
        .unwrap();
    worker.stop().await;
    (group, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_instance_id_makes_the_worker_a_static_member() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("static"));
    let broker = TestKafka::with_topics(2, &topics);
    let instance = riskstream_testkit::unique("worker-0");
    let (_, ids) = run_worker(&broker, &topics, &instance).await;
    assert!(
        ids[0].starts_with(&format!("{instance}-")),
        "static member id {ids:?}"
    );
    let (_, ids) = run_worker(&broker, &topics, "").await;
    let client_id = broker.kafka_config(&topics).client_id;
    assert!(
        ids[0].starts_with(&format!("{client_id}-")),
        "dynamic member id (from the client id) {ids:?}"
    );
}
