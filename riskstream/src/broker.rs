//! `riskstream broker`: the embedded Kafka-protocol broker with the pipeline's topics created,
//! printing `bootstrap=HOST:PORT` once ready.
//!
//! librdkafka's mock cluster always listens on a free port of its own choosing. With `--port P`
//! we also listen on P and forward connections to it, so `bootstrap=127.0.0.1:P` works; clients
//! then follow the broker's advertised address from the metadata, as with any Kafka.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use riskstream_common::broker::EmbeddedBroker;
use riskstream_common::shutdown::{CancellationToken, cancel_on_signal};
use tokio::net::{TcpListener, TcpStream};

use crate::setup::{Failure, ServiceArgs, load_config, logging_only};

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Port for the bootstrap address (0 = the mock's own free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Partitions for every pipeline topic.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub partitions: i32,
    /// A further topic to create (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Configuration file (for topic names).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub async fn run(args: BrokerArgs) -> Result<(), Failure> {
    let cfg = load_config(
        &ServiceArgs {
            config: args.config.clone(),
            ..ServiceArgs::default()
        },
        None,
    )?;
    let _telemetry = logging_only(&cfg);
    let broker = EmbeddedBroker::start().context("starting the mock kafka cluster")?;
    let mut topics: Vec<String> = cfg
        .kafka
        .topics
        .all()
        .into_iter()
        .map(String::from)
        .collect();
    topics.extend(args.topics.iter().cloned());
    for t in &topics {
        broker
            .create_topic(t, args.partitions)
            .with_context(|| format!("creating topic {t}"))?;
    }
    tracing::info!(topics = ?topics, partitions = args.partitions, "topics created");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

    let bootstrap = if args.port == 0 {
        broker.bootstrap().to_string()
    } else {
        let listener = TcpListener::bind(("127.0.0.1", args.port))
            .await
            .with_context(|| format!("listening on port {}", args.port))?;
        let target = broker.bootstrap().to_string();
        let addr = listener.local_addr().context("local address")?;
        tokio::spawn(forward(listener, target, shutdown.clone()));
        addr.to_string()
    };
    println!("bootstrap={bootstrap}");
    shutdown.cancelled().await;
    broker.stop();
    Ok(())
}

async fn forward(listener: TcpListener, target: String, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
