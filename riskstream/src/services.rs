//! The long-running services: build from configuration, print the bound address, run until
//! SIGTERM/Ctrl-C, drain.

use anyhow::Context;
use riskstream_common::shutdown::{CancellationToken, cancel_on_signal};

use crate::cli::{Failure, ServiceArgs, WorkerArgs, load_config};

pub async fn ingest(args: ServiceArgs) -> Result<(), Failure> {
    let cfg = load_config(&args, Some("ingest.listen"))?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = riskstream_ingest::App::build(
        riskstream_ingest::Config {
            kafka: cfg.kafka,
            ingest: cfg.ingest,
        },
        shutdown,
    )
    .await
    .context("starting ingest")?;
    println!("listening={}", app.local_addr());
    app.run_until_stopped().await.context("running ingest")?;
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    let mut cfg = load_config(&args.service, Some("worker.listen"))?;
    if let Some(p) = args.features {
        cfg.worker.features_path = p;
    }
    if let Some(p) = args.rules {
        cfg.worker.scoring.rules_path = p;
    }
    if let Some(p) = args.models {
        cfg.worker.scoring.models_dir = p;
    }
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = riskstream_feature_worker::App::build(
        riskstream_feature_worker::Config {
            kafka: cfg.kafka,
            worker: cfg.worker,
        },
        shutdown,
    )
    .await
    .map_err(|e| match e {
        riskstream_feature_worker::WorkerError::Features(m) | riskstream_feature_worker::WorkerError::Scoring(m) => {
            Failure::Usage(vec![m])
        }
        other => Failure::Runtime(anyhow::Error::new(other).context("starting the worker")),
    })?;
    println!("listening={}", app.local_addr());
    app.run_until_stopped().await.context("running the worker")?;
    Ok(())
}
