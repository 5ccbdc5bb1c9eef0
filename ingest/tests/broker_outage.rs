//! ingest under broker trouble, on a private Apache Kafka broker with 4 clients posting all the
//! while: the broker frozen (SIGSTOP, then SIGCONT), stopped cleanly (SIGTERM) and crashed
//! (SIGKILL), the last two restarted as the same node on the same port with their data. Every
//! answer is 202 or 503 with `Retry-After`; no request made while the broker is down is answered
//! 202; 202s come back once it is up; every event answered 202 is on the topic exactly once and
//! no event is there twice (the idempotent producer's retries do not duplicate). A 503'd event
//! may still be on the topic (once): the caller retries it with the same event id
//! (docs/ingest.md, "Broker outages").

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riskstream_common::shutdown::CancellationToken;
use riskstream_ingest::IngestConfig;
use riskstream_testkit::kafka::{Halt, TestKafka, read_all};
use serde_json::json;

mod support;

use support::{TestApp, event, spawn_app, topics};

/// How long the broker stays down (frozen, or stopped before its restart starts).
const DOWN: Duration = Duration::from_secs(5);
/// Bound on waiting for 202s, before the outage and after it (not a performance claim).
const EVENTUALLY: Duration = Duration::from_secs(60);

enum Outage {
    /// SIGSTOP, then SIGCONT: connections stay open and nothing answers.
    Freeze,
    /// The process ended (SIGTERM or SIGKILL), then the node restarted with its data.
    Restart(Halt),
}

/// One request's answer: its status, the event ids it reports accepted, and when it was sent
/// and answered.
struct Answer {
    status: u16,
    accepted: Vec<String>,
    sent: Instant,
    answered: Instant,
}

type Answers = Arc<Mutex<Vec<Answer>>>;

/// Posts one event per request until `stop`, recording every answer.
async fn client(app: Arc<TestApp>, n: usize, answers: Answers, stop: CancellationToken) {
    let mut i = 0u64;
    while !stop.is_cancelled() {
        i += 1;
        let body = json!([event(&format!("acc-{n}-{i}"), 1.0)]).to_string();
        let sent = Instant::now();
        let (status, body, headers) = app.post("application/json", body).await;
        let answered = Instant::now();
        if status == 503 {
            assert!(headers.contains_key("retry-after"), "{body}");
            assert_eq!(body["code"], "kafka_unavailable", "{body}");
        }
        // 202: `{results}`; 503: `{code, message, data: {results}}`.
        let results = if status == 202 {
            &body["results"]
        } else {
            &body["data"]["results"]
        };
        let accepted = results
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["status"] == "accepted")
            .filter_map(|r| r["event_id"].as_str().map(String::from))
            .collect();
        answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Answer {
                status,
                accepted,
                sent,
                answered,
            });
    }
}

fn count_202(answers: &Answers) -> usize {
    answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|a| a.status == 202)
        .count()
}

fn first_202_after(answers: &Answers, t: Instant) -> Option<Instant> {
    answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|a| a.status == 202 && a.sent >= t)
        .map(|a| a.answered)
        .min()
}

async fn outage_under_load(outage: Outage) {
    let topics = topics();
    let broker = TestKafka::private_with_topics(2, &topics);
    let app = spawn_app(
        &broker,
        &topics,
        IngestConfig {
            produce_timeout: Duration::from_millis(1000),
            ..IngestConfig::default()
        },
    )
    .await;
    let app = Arc::new(app);
    let answers: Answers = Arc::default();
    let stop = CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for n in 0..4 {
        load.spawn(client(app.clone(), n, answers.clone(), stop.clone()));
    }
    // The outage strikes a working pipeline: some events acknowledged (a loaded machine can
    // take more than `produce_timeout` for the first ones to a new broker).
    let deadline = Instant::now() + EVENTUALLY;
    while count_202(&answers) < 100 {
        assert!(
            Instant::now() < deadline,
            "fewer than 100 requests answered 202 within {EVENTUALLY:?} of the start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Down: from the moment the process is frozen or gone until its comeback starts.
    let halting = Instant::now();
    match outage {
        Outage::Freeze => broker.process().pause(),
        Outage::Restart(how) => broker.process().halt(how),
    }
    let down = Instant::now();
    tokio::time::sleep(DOWN).await;
    let coming_back = Instant::now();
    match outage {
        Outage::Freeze => broker.process().resume(),
        Outage::Restart(_) => broker.process().restart(),
    }
    let up = Instant::now();
    let deadline = up + EVENTUALLY;
    let recovered = loop {
        if let Some(t) = first_202_after(&answers, up) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no request sent after the broker came back was answered 202 within {EVENTUALLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Some more load on the recovered broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    while let Some(r) = load.join_next().await {
        r.expect("client task");
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|e| e.into_inner()));

    let statuses: BTreeSet<u16> = answers.iter().map(|a| a.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "only 202 or 503: {statuses:?}"
    );
    let while_down: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= down && a.answered <= coming_back)
        .collect();
    assert!(
        !while_down.is_empty(),
        "requests were made and answered while the broker was down"
    );
    assert!(
        while_down.iter().all(|a| a.status == 503),
        "a request made while the broker was down was answered 202"
    );
    let last_202_before = answers
        .iter()
        .filter(|a| a.status == 202 && a.answered <= halting)
        .map(|a| a.answered)
        .max()
        .unwrap_or(halting);
    let slowest_503 = answers
        .iter()
        .filter(|a| a.status == 503)
        .map(|a| a.answered.duration_since(a.sent))
        .max()
        .unwrap_or_default();
    // Figures for docs/ingest.md (measured, not asserted).
    eprintln!(
        "broker down {:.1} s, its comeback took {:.1} s; first 202 {:.1} s after it answered \
         again; clients saw no 202 for {:.1} s; {} requests, {} answered 503, the slowest in \
         {:.1} s",
        coming_back.duration_since(down).as_secs_f64(),
        up.duration_since(coming_back).as_secs_f64(),
        recovered.saturating_duration_since(up).as_secs_f64(),
        recovered.duration_since(last_202_before).as_secs_f64(),
        answers.len(),
        answers.iter().filter(|a| a.status == 503).count(),
        slowest_503.as_secs_f64(),
    );

    let accepted: Vec<&String> = answers.iter().flat_map(|a| &a.accepted).collect();
    assert!(accepted.len() > 100, "load ran: {}", accepted.len());
    let records = read_all(&app.kafka, &topics.events, Duration::from_secs(30)).await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let id = r.json()["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *copies.entry(id).or_default() += 1;
    }
    for id in &accepted {
        assert_eq!(copies.get(*id), Some(&1), "event {id} answered 202");
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events on the topic twice: {twice:?}");
    app.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_under_load_gets_503s_and_every_202_is_on_the_topic_once() {
    outage_under_load(Outage::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_and_restarted_under_load_gets_503s_and_every_202_is_on_the_topic_once() {
    outage_under_load(Outage::Restart(Halt::Term)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_under_load_gets_503s_and_every_202_is_on_the_topic_once() {
    outage_under_load(Outage::Restart(Halt::Kill)).await;
}
