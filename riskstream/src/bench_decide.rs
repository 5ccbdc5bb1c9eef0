//! `riskstream bench decide`: open-loop load at fixed rates on `POST /v1/decisions` through
//! the broker and an in-process worker, beside a raw two-hop Kafka round trip (produce ->
//! consume -> produce -> consume of the same bytes with the same client settings) at the same
//! rate in the same run: the floor the broker sets.
//!
//! Open loop: request `i` is sent at `start + i / rate` whatever the earlier ones are doing,
//! and its latency runs from that scheduled time (so a stall is charged to every request it
//! delays: no coordinated omission). Figures go to `docs/benchmarks.md`; nothing is asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::BenchBroker;
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Event, now_ms};
use tokio::sync::mpsc;

/// Header carrying a raw round-trip record's scheduled send time (ns since the bench epoch).
const SCHEDULED_HEADER: &str = "bench-scheduled-ns";
/// Names of the two topics of the raw round trip (plus the run's suffix).
const HOP1_PREFIX: &str = "bench.hop1";
const HOP2_PREFIX: &str = "bench.hop2";

#[derive(Debug, Args)]
pub struct DecideBench {
    /// Kafka bootstrap servers (default: an embedded mock broker in this process).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Request rates to run, requests per second, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 5_000, 20_000])]
    pub rates: Vec<u64>,
    /// Measured seconds per rate and path.
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// `fetch.wait.max.ms` of every consumer (default: the shipped setting on Kafka, which
    /// answers a fetch as soon as data arrives; the mock's on the mock, which does not, so
    /// there it bounds each consume hop).
    #[arg(long)]
    pub fetch_wait_max_ms: Option<u64>,
    /// `linger.ms` of every producer.
    #[arg(long, default_value_t = 2)]
    pub linger_ms: u64,
    /// The worker's bounded out-of-orderness (drives the watermark: lateness, state expiry).
    #[arg(long, default_value_t = 1)]
    pub out_of_orderness_ms: u64,
    /// The worker's idle timeout (a quiet partition stops holding the watermark back).
    #[arg(long, default_value_t = 2)]
    pub idle_timeout_ms: u64,
    /// The worker's reorder wait (`worker.reorder_wait`: how long an event may wait for
    /// earlier-timed ones before it is decided; default: the shipped setting).
    #[arg(long)]
    pub reorder_wait_ms: Option<u64>,
    /// The worker's mode: `keyed` (as shipped: events -> route -> repartition -> state ->
    /// results -> join -> decisions, four Kafka hops from ingest back to ingest) or `local`
    /// (events -> worker -> decisions: two hops, as many as the raw round trip).
    #[arg(long, default_value = "keyed")]
    pub mode: String,
    /// The per-request deadline (`?timeout_ms=`); past it the answer is 202 (counted as an error).
    #[arg(long, default_value_t = 1_000)]
    pub timeout_ms: u64,
    /// Directory holding features.toml, rules.toml, models/ and lists/.
    #[arg(long, default_value = "config")]
    pub config_dir: std::path::PathBuf,
}

/// What one path at one rate gave.
struct Run {
    path: &'static str,
    rate: u64,
    sent: u64,
    ok: u64,
    /// 202 past the deadline.
    pending: u64,
    /// Transport errors and other statuses.
    failed: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Run {
    fn error_rate(&self) -> f64 {
        (self.sent - self.ok) as f64 / (self.sent.max(1)) as f64
    }
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
}

/// Outcome of one request or record, sent to the collector.
enum Sample {
    Ok(u64),
    Pending,
    Failed,
}

/// Runs `send(i, scheduled)` at `rate` per second for `duration`, open loop; returns how
/// many were sent.
async fn open_loop(rate: u64, duration: Duration, mut send: impl FnMut(u64, Instant)) -> u64 {
    let total = rate.saturating_mul(duration.as_secs()).max(1);
    let interval_ns = 1_000_000_000 / rate.max(1);
    let start = Instant::now() + Duration::from_millis(5);
    let mut i = 0;
    while i < total {
        let due = start + Duration::from_nanos(i * interval_ns);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let now = Instant::now();
        while i < total {
            let scheduled = start + Duration::from_nanos(i * interval_ns);
            if scheduled > now {
                break;
            }
            send(i, scheduled);
            i += 1;
        }
    }
    total
}

async fn collect(
    mut rx: mpsc::UnboundedReceiver<Sample>,
    expected: u64,
    grace: Duration,
) -> (Histogram<u64>, u64, u64, u64) {
    let mut h = histogram();
    let (mut ok, mut pending, mut failed) = (0, 0, 0);
    while ok + pending + failed < expected {
        match tokio::time::timeout(grace, rx.recv()).await {
            Ok(Some(Sample::Ok(us))) => {
                let _ = h.record(us.max(1));
                ok += 1;
            }
            Ok(Some(Sample::Pending)) => pending += 1,
            Ok(Some(Sample::Failed)) => failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let missing = expected.saturating_sub(ok + pending + failed);
    (h, ok, pending, failed + missing)
}

pub async fn run(a: DecideBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rates.iter().all(|r| *r > 0),
        "every rate must be positive"
    );
    anyhow::ensure!(a.duration_secs > 0, "duration must be positive");
    let mode = match a.mode.as_str() {
        "keyed" => riskstream_feature_worker::WorkerMode::Keyed,
        "local" => riskstream_feature_worker::WorkerMode::Local,
        other => anyhow::bail!("--mode must be local or keyed, not {other}"),
    };
    let suffix = format!("bench{}", now_ms());
    let topics = Topics::with_suffix(&suffix);
    let hop1 = format!("{HOP1_PREFIX}-{suffix}");
    let hop2 = format!("{HOP2_PREFIX}-{suffix}");
    let mut all: Vec<&str> = topics.all();
    all.extend([hop1.as_str(), hop2.as_str()]);
    let broker = BenchBroker::new(a.brokers.as_deref(), a.partitions, &all).await?;
    let kafka = KafkaConfig {
        linger: Duration::from_millis(a.linger_ms),
        ..broker.kafka(&topics, a.fetch_wait_max_ms)
    };
    let fetch_wait_max_ms = kafka.fetch_wait_max.as_millis() as u64;
    println!(
        "bench decide: rates {:?}/s, {} s each, {} partitions, {}",
        a.rates,
        a.duration_secs,
        a.partitions,
        broker.describe()
    );
    println!(
        "client settings (both paths): fetch.wait.max.ms={} linger.ms={} compression={} acks=all idempotent; worker mode={mode:?} out_of_orderness={} ms idle_timeout={} ms reorder_wait={}; request deadline {} ms",
        fetch_wait_max_ms,
        a.linger_ms,
        kafka.compression,
        a.out_of_orderness_ms,
        a.idle_timeout_ms,
        a.reorder_wait_ms
            .map_or_else(|| "shipped".to_string(), |ms| format!("{ms} ms")),
        a.timeout_ms
    );

    let shutdown = CancellationToken::new();
    let worker_addr = start_worker(&a, mode, &kafka, &shutdown).await?;
    let ingest = riskstream_ingest::App::build(
        riskstream_ingest::Config {
            kafka: kafka.clone(),
            ingest: riskstream_ingest::IngestConfig {
                listen: "127.0.0.1:0".into(),
                max_decision_timeout: Duration::from_millis(a.timeout_ms.max(1)),
                decision_timeout: Duration::from_millis(a.timeout_ms.clamp(1, 200)),
                ..Default::default()
            },
        },
        shutdown.clone(),
    )
    .await?;
    let url = format!(
        "http://{}/v1/decisions?timeout_ms={}",
        ingest.local_addr(),
        a.timeout_ms
    );
    let ingest_task = tokio::spawn(ingest.run_until_stopped());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_millis(a.timeout_ms + 10_000))
        .build()?;
    let raw = RawRoundTrip::start(&kafka, &hop1, &hop2, &shutdown).await?;

    let mut generator = Generator::new(GeneratorConfig {
        seed: 4242,
        start_time_ms: now_ms() - 60_000,
        fraud_share: 0.02,
        ..GeneratorConfig::default()
    });
    warm_up(&http, &url, &mut generator).await?;
    println!("worker {worker_addr} and ingest ready; raw round trip ready");

    let mut runs = Vec::new();
    for &rate in &a.rates {
        let duration = Duration::from_secs(a.duration_secs);
        let n = rate * a.duration_secs;
        let payloads: Vec<Vec<u8>> = generator
            .by_ref()
            .take(n as usize)
            .map(|e| e.to_json_bytes())
            .collect();
        runs.push(raw.run(rate, duration, payloads).await);
        let events: Vec<Event> = generator.by_ref().take(n as usize).collect();
        runs.push(decide_run(&http, &url, rate, duration, events, a.timeout_ms).await);
        // Let the pipeline drain before the next rate.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    print_runs(&runs, fetch_wait_max_ms);
    println!(
        "scoring core alone (criterion, docs/benchmarks.md \"Scoring core\"): ~12 µs per decide on one core"
    );
    shutdown.cancel();
    let _ = ingest_task.await;
    drop(broker);
    Ok(())
}

async fn start_worker(
    a: &DecideBench,
    mode: riskstream_feature_worker::WorkerMode,
    kafka: &KafkaConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    use riskstream_feature_worker::{App, Config, WorkerConfig, WorkerMode};
    let dir = &a.config_dir;
    let mut worker = WorkerConfig {
        listen: "127.0.0.1:0".into(),
        group_id: format!("bench-workers-{}", now_ms()),
        features_path: dir.join("features.toml"),
        out_of_orderness: Duration::from_millis(a.out_of_orderness_ms),
        idle_timeout: Duration::from_millis(a.idle_timeout_ms.max(1)),
        mode,
        // Local mode cannot compute the `[[window_output]]`s (keyed mode's windows stage).
        window_outputs: mode == WorkerMode::Keyed,
        ..WorkerConfig::default()
    };
    if let Some(ms) = a.reorder_wait_ms {
        worker.reorder_wait = Duration::from_millis(ms);
    }
    worker.scoring.rules_path = dir.join("rules.toml");
    worker.scoring.models_dir = dir.join("models");
    worker.scoring.lists_path = Some(dir.join("lists").join("lists.csv"));
    let app = App::build(
        Config {
            kafka: kafka.clone(),
            worker,
        },
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("worker with the configuration in {}", dir.display()))?;
    let addr = app.local_addr();
    tokio::spawn(async move {
        if let Err(e) = app.run_until_stopped().await {
            tracing::error!(error = %e, "bench worker failed");
        }
    });
    Ok(addr)
}

/// Sends requests until one is decided within its deadline (the worker joined its group).
async fn warm_up(
    http: &reqwest::Client,
    url: &str,
    generator: &mut Generator,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut e = generator.next_event();
        e.event_time_ms = now_ms();
        let status = http
            .post(url)
            .header("content-type", "application/json")
            .body(e.to_json_bytes())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 {
            // A few more, so connections and caches are warm.
            for _ in 0..200 {
                let mut e = generator.next_event();
                e.event_time_ms = now_ms();
                let _ = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(e.to_json_bytes())
                    .send()
                    .await;
            }
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no decision within 60 s of warm-up (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn decide_run(
    http: &reqwest::Client,
    url: &str,
    rate: u64,
    duration: Duration,
    events: Vec<Event>,
    timeout_ms: u64,
) -> Run {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = Arc::new(std::sync::Mutex::new(events.into_iter()));
    let started = Instant::now();
    let sent = open_loop(rate, duration, |_, scheduled| {
        let next = events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next();
        let Some(mut e) = next else {
            let _ = tx.send(Sample::Failed);
            return;
        };
        // Event time is the send time, so the worker's watermark follows the wall clock.
        e.event_time_ms = now_ms();
        let (http, url, tx) = (http.clone(), url.to_string(), tx.clone());
        tokio::spawn(async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(e.to_json_bytes())
                .send()
                .await;
            let sample = match r.map(|r| r.status().as_u16()) {
                Ok(200) => Sample::Ok(scheduled.elapsed().as_micros() as u64),
                Ok(202) => Sample::Pending,
                _ => Sample::Failed,
            };
            let _ = tx.send(sample);
        });
    })
    .await;
    drop(tx);
    let (latency_us, ok, pending, failed) =
        collect(rx, sent, Duration::from_millis(timeout_ms + 15_000)).await;
    Run {
        path: "POST /v1/decisions",
        rate,
        sent,
        ok,
        pending,
        failed,
        elapsed: started.elapsed(),
        latency_us,
    }
}

/// The floor: produce -> consume -> produce -> consume of the same bytes, with the pipeline's
/// producer and consumer settings (a relay stands for the worker, a collector for ingest's
/// decisions consumer).
struct RawRoundTrip {
    producer: FutureProducer,
    hop1: String,
    epoch: Instant,
    results: tokio::sync::Mutex<mpsc::UnboundedReceiver<Sample>>,
}

fn scheduled_ns(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<u64> {
    m.headers()?
        .iter()
        .find(|h| h.key == SCHEDULED_HEADER)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

impl RawRoundTrip {
    async fn start(
        kafka: &KafkaConfig,
        hop1: &str,
        hop2: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let epoch = Instant::now();
        let producer: FutureProducer = kafka.producer()?;
        let relay: StreamConsumer = kafka.consumer(&format!("bench-relay-{}", now_ms()))?;
        relay.subscribe(&[hop1])?;
        let collector: StreamConsumer = kafka.consumer(&format!("bench-collector-{}", now_ms()))?;
        collector.subscribe(&[hop2])?;
        // The relay: consume hop 1, produce the same key, bytes and headers to hop 2 (without
        // waiting for the acknowledgement before reading on, like the worker).
        {
            let (producer, hop2, shutdown) = (producer.clone(), hop2.to_string(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let m = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        m = relay.recv() => m,
                    };
                    let Ok(m) = m else { continue };
                    let mut headers = OwnedHeaders::new();
                    if let Some(h) = m.headers() {
                        for h in h.iter() {
                            headers = headers.insert(Header {
                                key: h.key,
                                value: h.value,
                            });
                        }
                    }
                    let mut record = FutureRecord::<[u8], [u8]>::to(&hop2)
                        .payload(m.payload().unwrap_or_default())
                        .headers(headers);
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    if let Err((e, _)) = producer.send_result(record) {
                        tracing::warn!(error = %e, "relay produce");
                    }
                }
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let m = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        m = collector.recv() => m,
                    };
                    let Ok(m) = m else { continue };
                    let sample = match scheduled_ns(&m) {
                        Some(ns) => {
                            let now_ns = epoch.elapsed().as_nanos() as u64;
                            Sample::Ok(now_ns.saturating_sub(ns) / 1000)
                        }
                        None => Sample::Failed,
                    };
                    if tx.send(sample).is_err() {
                        break;
                    }
                }
            });
        }
        let me = Self {
            producer,
            hop1: hop1.to_string(),
            epoch,
            results: tokio::sync::Mutex::new(rx),
        };
        // Wait until a record makes the whole trip (both consumers joined their groups).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            me.send(b"warm-up", Instant::now());
            let got =
                tokio::time::timeout(Duration::from_millis(500), me.results.lock().await.recv())
                    .await;
            if let Ok(Some(Sample::Ok(_))) = got {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the raw round trip did not complete within 60 s"
            );
        }
        // Drain what the warm-up left in flight.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while me.results.lock().await.try_recv().is_ok() {}
        Ok(me)
    }

    fn send(&self, payload: &[u8], scheduled: Instant) {
        let ns = scheduled
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: SCHEDULED_HEADER,
            value: Some(ns.as_str()),
        });
        let record = FutureRecord::<str, [u8]>::to(&self.hop1)
            .key(&ns)
            .payload(payload)
            .headers(headers);
        if let Err((e, _)) = self.producer.send_result(record) {
            tracing::warn!(error = %e, "raw round-trip produce");
        }
    }

    async fn run(&self, rate: u64, duration: Duration, payloads: Vec<Vec<u8>>) -> Run {
        let started = Instant::now();
        let sent = open_loop(rate, duration, |i, scheduled| {
            let payload = payloads.get(i as usize).map_or(&b"{}"[..], Vec::as_slice);
            self.send(payload, scheduled);
        })
        .await;
        let mut rx = self.results.lock().await;
        let mut h = histogram();
        let mut ok = 0;
        while ok < sent {
            match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                Ok(Some(Sample::Ok(us))) => {
                    let _ = h.record(us.max(1));
                    ok += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        Run {
            path: "raw kafka round trip (2 hops)",
            rate,
            sent,
            ok,
            pending: 0,
            failed: sent - ok,
            elapsed: started.elapsed(),
            latency_us: h,
        }
    }
}

fn print_runs(runs: &[Run], fetch_wait_max_ms: u64) {
    println!(
        "\ndecisions end to end, open loop (latency from the scheduled send time), fetch.wait.max.ms={fetch_wait_max_ms}"
    );
    println!(
        "{:>7} {:<30} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "rate/s",
        "path",
        "sent",
        "ok",
        "202",
        "failed",
        "err %",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms"
    );
    for r in runs {
        println!(
            "{:>7} {:<30} {:>8} {:>8} {:>8} {:>7} {:>8.3} {:>8.2} {:>8.2} {:>9.2} {:>8.2}",
            r.rate,
            r.path,
            r.sent,
            r.ok,
            r.pending,
            r.failed,
            r.error_rate() * 100.0,
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            r.latency_us.max() as f64 / 1000.0,
        );
    }
    println!();
    for pair in runs.chunks(2) {
        if let [raw, decide] = pair {
            println!(
                "{:>7}/s: decide p99 / raw p99 = {:.2} (p50 ratio {:.2}); measured over {:.1} s + {:.1} s",
                decide.rate,
                decide.ms(0.99) / raw.ms(0.99).max(1e-3),
                decide.ms(0.5) / raw.ms(0.5).max(1e-3),
                raw.elapsed.as_secs_f64(),
                decide.elapsed.as_secs_f64()
            );
        }
    }
}
