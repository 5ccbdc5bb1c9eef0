//! The long-running services: build from configuration, print the bound address, run until
//! SIGTERM/Ctrl-C, drain.

use anyhow::Context;
use riskstream_common::shutdown::{CancellationToken, cancel_on_signal};

use crate::cli::{Failure, ServiceArgs, load_config};

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
