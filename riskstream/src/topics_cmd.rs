//! `riskstream topics create|list`: provision every topic riskstream uses through the Kafka
//! admin API (partitions, retention and cleanup policy from `[kafka.provision]`), idempotently;
//! also the compose file's init step.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use riskstream_common::topics::{Created, create_topics, partition_counts};

use crate::setup::{Failure, ServiceArgs, load_config, logging_only};

#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub command: TopicsCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every missing topic (existing ones are left as they are and reported).
    Create(TopicsCreateArgs),
    /// Print every topic riskstream uses with its provisioning and what the cluster has.
    List(TopicsCreateArgs),
}

#[derive(Debug, Args, Clone)]
pub struct TopicsCreateArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Partitions of the data and keyBy topics (overrides kafka.provision.partitions).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub partitions: Option<i32>,
    /// Replication factor (overrides kafka.provision.replication_factor; -1 = broker default).
    #[arg(long, allow_negative_numbers = true)]
    pub replication_factor: Option<i32>,
    /// How long to wait for the cluster.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(args: TopicsArgs) -> Result<(), Failure> {
    match args.command {
        TopicsCommand::Create(a) => create(a, false).await,
        TopicsCommand::List(a) => create(a, true).await,
    }
}

async fn create(a: TopicsCreateArgs, list_only: bool) -> Result<(), Failure> {
    let mut cfg = load_config(&a.service, None)?;
    let _log = logging_only(&cfg);
    if let Some(p) = a.partitions {
        cfg.kafka.provision.partitions = p;
    }
    if let Some(r) = a.replication_factor {
        cfg.kafka.provision.replication_factor = r;
    }
    let specs = cfg.kafka.topics.specs(&cfg.kafka.provision);
    if list_only {
        let have = partition_counts(&cfg.kafka, a.timeout)
            .with_context(|| format!("reading topics from {}", cfg.kafka.brokers))?;
        for s in &specs {
            let on_cluster = have
                .get(&s.name)
                .map_or("missing".to_string(), |p| format!("{p} partitions"));
            println!(
                "{:<28} {:<11} partitions={:<4} {} cluster: {on_cluster}",
                s.name,
                format!("{:?}", s.role).to_lowercase(),
                s.partitions,
                s.configs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        return Ok(());
    }
    let results = create_topics(&cfg.kafka, &specs, a.timeout)
        .await
        .with_context(|| format!("creating topics on {}", cfg.kafka.brokers))?;
    let mut mismatched = Vec::new();
    for (name, what) in &results {
        let want = specs.iter().find(|s| &s.name == name).map(|s| s.partitions);
        match what {
            Created::Created => println!("created {name} partitions={}", want.unwrap_or(0)),
            Created::Existed { partitions } => {
                println!("exists  {name} partitions={partitions}");
                if want.is_some_and(|w| w != *partitions) {
                    mismatched.push(format!(
                        "{name} has {partitions} partitions, the configuration says {}",
                        want.unwrap_or(0)
                    ));
                }
            }
        }
    }
    for m in &mismatched {
        // Kafka can add partitions but never remove them, and adding them moves keys: left
        // to an operator on purpose.
        eprintln!("warning: {m} (left as it is)");
    }
    Ok(())
}
