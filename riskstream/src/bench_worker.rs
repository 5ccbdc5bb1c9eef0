//! `riskstream bench worker`: the feature worker end to end through the embedded broker
//! (`events` -> worker(s) -> `decisions`), in local and keyed mode, beside a raw passthrough
//! (consume -> produce the same bytes, no work) measured in the same run.
//!
//! Closed loop: the producer keeps at most `--window` events produced but not yet output (the
//! mock broker keeps only ~100k batches per partition, so it must not run far ahead). Latency
//! is event produced -> its output read back, so under this saturating load it includes the
//! queueing of up to `--window` events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::telemetry::{self, TelemetryConfig, TelemetryGuard};
use riskstream_feature_worker::{App, Config, WorkerConfig, WorkerMode};

use crate::bench::{BenchBroker, Phase, histogram, print_phases};

#[derive(Debug, Args)]
pub struct WorkerBench {
    /// Kafka bootstrap servers (default: an embedded mock broker in this process).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Events per phase (after a warm-up of 2,000).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Worker processes (tasks with their own consumers) per phase.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// `local`, `keyed` or `both`.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Most events produced and not yet output.
    #[arg(long, default_value_t = 20_000)]
    pub window: usize,
    /// Producer `linger.ms` of every client (bigger batches: fewer fetches from the mock).
    #[arg(long, default_value_t = 2)]
    pub linger_ms: u64,
    /// Consumer `fetch.wait.max.ms` (default: the shipped setting on Kafka, the mock's on the
    /// mock, which waits this long on every fetch).
    #[arg(long)]
    pub fetch_wait_ms: Option<u64>,
    /// Directory with features.toml, rules.toml, models/ and lists/lists.csv.
    #[arg(long, default_value = "config")]
    pub config_dir: PathBuf,
    /// Where the worker's spans go: `kafka` (as shipped: batched OTLP protobuf records to this
    /// run's `otlp_spans` topic on the same broker) or `none` (tracing off: no subscriber).
    #[arg(long, default_value = "kafka")]
    pub traces: String,
    /// Share of new traces sampled, as `telemetry.sampling_ratio` (generated events carry no
    /// trace context, so every decision starts a trace).
    #[arg(long, default_value_t = 1.0)]
    pub sampling_ratio: f64,
    /// Keyed mode: run the windows stage for the feature file's `[[window_output]]`s (`on`,
    /// as shipped) or not (`off`). Local mode never does.
    #[arg(long, default_value = "on")]
    pub window_outputs: String,
}

const WARM_UP_EVENTS: usize = 2_000;
/// Longest wait for the next output before a phase is declared stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One generated event as produced: key, bytes, id.
struct Input {
    key: String,
    payload: Vec<u8>,
}

pub async fn run(a: WorkerBench) -> anyhow::Result<()> {
    let modes: Vec<WorkerMode> = match a.mode.as_str() {
        "local" => vec![WorkerMode::Local],
        "keyed" => vec![WorkerMode::Keyed],
        "both" => vec![WorkerMode::Local, WorkerMode::Keyed],
        other => anyhow::bail!("--mode must be local, keyed or both, not {other}"),
    };
    if !matches!(a.window_outputs.as_str(), "on" | "off") {
        anyhow::bail!(
            "--window-outputs must be on or off, not {}",
            a.window_outputs
        );
    }
    let stamp = riskstream_common::now_ms();
    let raw_topics = Topics::with_suffix(&format!("benchw-raw-{stamp}"));
    let mode_topics: Vec<(WorkerMode, Topics)> = modes
        .iter()
        .map(|m| (*m, Topics::with_suffix(&format!("benchw-{m:?}-{stamp}"))))
        .collect();
    let spans_topics = Topics::with_suffix(&format!("benchw-spans-{stamp}"));
    let mut all: Vec<String> = raw_topics.all().iter().map(|s| s.to_string()).collect();
    for (_, t) in &mode_topics {
        all.extend(t.all().iter().map(|s| s.to_string()));
    }
    all.push(spans_topics.otlp_spans.clone());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let broker = BenchBroker::new(a.brokers.as_deref(), a.partitions, &all).await?;
    let base_kafka = KafkaConfig {
        linger: Duration::from_millis(a.linger_ms),
        ..broker.kafka(&Topics::default(), a.fetch_wait_ms)
    };
    let telemetry = traces(&a, &base_kafka, &spans_topics)?;
    println!(
        "bench worker: {} events per phase (+{WARM_UP_EVENTS} warm-up), {} partitions, {} worker(s), window {}, linger {} ms, fetch wait {} ms, session timeout {:?}, traces {}, window outputs (keyed) {}, {}",
        a.events,
        a.partitions,
        a.workers,
        a.window,
        a.linger_ms,
        base_kafka.fetch_wait_max.as_millis(),
        base_kafka.session_timeout,
        match a.traces.as_str() {
            "none" => "off".to_string(),
            _ => format!("to kafka (sampling {})", a.sampling_ratio),
        },
        a.window_outputs,
        broker.describe()
    );
    let total = WARM_UP_EVENTS + a.events;
    let (inputs, ids) = generate(total);
    let inputs = Arc::new(inputs);
    let ids = Arc::new(ids);

    // Ceiling: consume -> produce the same bytes.
    let kafka = KafkaConfig {
        topics: raw_topics.clone(),
        ..base_kafka.clone()
    };
    let stop = CancellationToken::new();
    let pass = tokio::spawn(passthrough(kafka.clone(), stop.clone()));
    let raw = measure("raw passthrough (ceiling)", &kafka, &inputs, &ids, a.window).await?;
    stop.cancel();
    let _ = pass.await;

    let mut phases = Vec::new();
    for (mode, topics) in mode_topics {
        let kafka = KafkaConfig {
            topics,
            ..base_kafka.clone()
        };
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for _ in 0..a.workers.max(1) {
            handles.push(start_worker(&a, mode, &kafka, &stop, stamp).await?);
        }
        let name = format!("worker {mode:?} x{}", a.workers.max(1)).to_lowercase();
        let phase = measure(&name, &kafka, &inputs, &ids, a.window).await;
        stop.cancel();
        for h in handles {
            let _ = h.await;
        }
        phases.push(phase?);
    }
    print_phases(
        "worker end to end (latency: event produced -> decision read back)",
        &raw,
        &phases,
    );
    // Flush the last spans while the broker is still up.
    drop(telemetry);
    drop(broker);
    Ok(())
}

/// Span export as a worker process has it (`--traces kafka`), or none at all.
fn traces(
    a: &WorkerBench,
    kafka: &KafkaConfig,
    spans_topics: &Topics,
) -> anyhow::Result<Option<TelemetryGuard>> {
    let exporter = match a.traces.as_str() {
        "none" => return Ok(None),
        "kafka" => telemetry::exporter::KAFKA,
        other => anyhow::bail!("--traces must be kafka or none, not {other}"),
    };
    let cfg = TelemetryConfig {
        log_level: "warn".into(),
        traces_exporter: exporter.into(),
        sampling_ratio: a.sampling_ratio,
        ..TelemetryConfig::default()
    };
    let problems = cfg.validate();
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    let kafka = KafkaConfig {
        topics: spans_topics.clone(),
        ..kafka.clone()
    };
    Ok(Some(telemetry::init(
        &cfg,
        "riskstream-worker",
        Some(&kafka),
    )))
}

fn generate(n: usize) -> (Vec<Input>, HashMap<String, usize>) {
    let mut inputs = Vec::with_capacity(n);
    let mut ids = HashMap::with_capacity(n);
    let generator = Generator::new(GeneratorConfig {
        start_time_ms: riskstream_common::now_ms() - 7_200_000,
        ..GeneratorConfig::default()
    });
    for (i, e) in generator.take(n).enumerate() {
        ids.insert(e.event_id.to_string(), i);
        inputs.push(Input {
            key: e.account_id.clone().unwrap_or_default(),
            payload: e.to_json_bytes(),
        });
    }
    (inputs, ids)
}

async fn start_worker(
    a: &WorkerBench,
    mode: WorkerMode,
    kafka: &KafkaConfig,
    stop: &CancellationToken,
    stamp: i64,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let dir = &a.config_dir;
    let mut worker = WorkerConfig {
        listen: "127.0.0.1:0".into(),
        group_id: format!("bench-worker-{mode:?}-{stamp}"),
        features_path: dir.join("features.toml"),
        out_of_orderness: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        mode,
        window_outputs: mode == WorkerMode::Keyed && a.window_outputs == "on",
        ..WorkerConfig::default()
    };
    worker.scoring.rules_path = dir.join("rules.toml");
    worker.scoring.models_dir = dir.join("models");
    worker.scoring.lists_path = Some(dir.join("lists").join("lists.csv"));
    let app = App::build(
        Config {
            kafka: kafka.clone(),
            worker,
        },
        stop.clone(),
    )
    .await
    .with_context(|| format!("worker with the configuration in {}", dir.display()))?;
    Ok(tokio::spawn(async move {
        if let Err(e) = app.run_until_stopped().await {
            tracing::error!(error = %e, "bench worker failed");
        }
    }))
}

/// The raw ceiling: every record of `events` copied to `decisions` unchanged.
async fn passthrough(kafka: KafkaConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer = kafka.consumer(&format!(
        "bench-passthrough-{}",
        riskstream_common::now_ms()
    ))?;
    consumer.subscribe(&[kafka.topics.events.as_str()])?;
    let producer: FutureProducer = kafka.producer()?;
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        let Ok(m) = m else { continue };
        let mut record = FutureRecord::<[u8], [u8]>::to(&kafka.topics.decisions)
            .payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        enqueue(&producer, record).await;
    }
    let _ = producer.flush(Duration::from_secs(5));
    Ok(())
}

/// Enqueues a record now, waiting while the queue is full; the delivery is not awaited.
async fn enqueue(producer: &FutureProducer, mut record: FutureRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send_result(record) {
            Ok(_) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "bench record dropped");
                return;
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct IdOnly<'a> {
    event_id: &'a str,
}

/// Produces every input to `events` (closed loop) and reads `decisions` until each has an
/// output; the phase covers the inputs after the warm-up.
async fn measure(
    name: &str,
    kafka: &KafkaConfig,
    inputs: &Arc<Vec<Input>>,
    ids: &Arc<HashMap<String, usize>>,
    window: usize,
) -> anyhow::Result<Phase> {
    let n = inputs.len();
    let sent_us: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let outputs = Arc::new(AtomicUsize::new(0));
    let clock = Instant::now();
    let reader = {
        let consumer: StreamConsumer =
            kafka.consumer(&format!("bench-reader-{}", riskstream_common::now_ms()))?;
        consumer.subscribe(&[kafka.topics.decisions.as_str()])?;
        let (ids, sent_us, outputs) = (ids.clone(), sent_us.clone(), outputs.clone());
        tokio::spawn(async move {
            let mut seen = vec![false; n];
            let mut latency = histogram();
            let mut last = Instant::now();
            let mut done = 0usize;
            while done < n {
                let m = match tokio::time::timeout(STALL_TIMEOUT, consumer.recv()).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(_)) => continue,
                    Err(_) => anyhow::bail!("no output for {STALL_TIMEOUT:?} ({done} of {n})"),
                };
                let now_us = clock.elapsed().as_micros() as u64;
                let Some(&i) = serde_json::from_slice::<IdOnly>(m.payload().unwrap_or_default())
                    .ok()
                    .and_then(|r| ids.get(r.event_id))
                else {
                    continue;
                };
                if std::mem::replace(&mut seen[i], true) {
                    continue; // a duplicate output
                }
                done += 1;
                outputs.store(done, Ordering::Release);
                if i >= WARM_UP_EVENTS {
                    let sent = sent_us[i].load(Ordering::Acquire);
                    let _ = latency.record(now_us.saturating_sub(sent).max(1));
                }
                last = Instant::now();
            }
            Ok((latency, last))
        })
    };
    let producer: FutureProducer = kafka.producer()?;
    let mut started = Instant::now();
    for (i, input) in inputs.iter().enumerate() {
        if i == WARM_UP_EVENTS {
            // Wait for the warm-up to come out (groups joined, caches warm), then measure.
            while outputs.load(Ordering::Acquire) < WARM_UP_EVENTS && !reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            started = Instant::now();
        }
        while i.saturating_sub(outputs.load(Ordering::Acquire)) >= window {
            if reader.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        sent_us[i].store(clock.elapsed().as_micros() as u64, Ordering::Release);
        let record = FutureRecord::<[u8], [u8]>::to(&kafka.topics.events)
            .key(input.key.as_bytes())
            .payload(&input.payload);
        enqueue(&producer, record).await;
    }
    let (latency, last) = reader.await.context("reader task")??;
    Ok(Phase {
        name: name.to_string(),
        events: n - WARM_UP_EVENTS,
        elapsed: last.saturating_duration_since(started),
        latency,
    })
}
