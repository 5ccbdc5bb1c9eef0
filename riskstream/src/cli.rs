//! Command-line parsing and dispatch.

use clap::{Args, Parser, Subcommand};

use crate::setup::{
    ClickHouseArgs, CollectorArgs, Failure, ServiceArgs, WorkerArgs, load_config, redacted,
};

#[derive(Debug, Parser)]
#[command(
    name = "riskstream",
    version,
    about = "Streaming risk decisions on Kafka: ingest, features, scoring, traces"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded Kafka-protocol broker (librdkafka's mock cluster) with the pipeline's topics.
    Broker(crate::broker::BrokerArgs),
    /// Run ingest: the HTTP front door that lands events on Kafka.
    Ingest(ServiceArgs),
    /// Run a feature worker: event-time windowed features, scoring, decisions.
    Worker(WorkerArgs),
    /// Run the trace collector: OTLP spans (Kafka, OTLP/HTTP, OTLP/gRPC) and decisions into ClickHouse.
    Collector(CollectorArgs),
    /// Run the query api: traces by Trace ID (Jaeger-compatible), decisions.
    Api(ClickHouseArgs),
    /// Send events to Kafka directly: from an NDJSON file, stdin, or the synthetic generator.
    Produce(crate::produce::ProduceArgs),
    /// The whole pipeline in one process on the embedded broker, with generated traffic.
    Demo(crate::demo::DemoArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(ServiceArgs),
    /// End-to-end benchmarks.
    Bench(crate::bench::BenchArgs),
    /// Provision the pipeline's topics on a Kafka cluster (admin API, idempotent).
    Topics(crate::topics_cmd::TopicsArgs),
    /// Manage the bearer tokens of a tokens file (`[auth] tokens_file`): add, list, revoke.
    Auth(crate::auth_cmd::AuthArgs),
    /// Parse `riskstream ARGS...` with this binary's parser, print what it parsed, run nothing
    /// (CI checks the compose file's commands with it: scripts/check-compose).
    #[command(hide = true)]
    CheckArgs(CheckArgs),
}

/// Flags of `riskstream check-args`.
#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    /// The command line to parse, without the program name: `check-args -- worker --listen ...`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Parses `riskstream <args>` as [`Cli`]; help and version requests are refusals too (a
/// service command that only prints help is not a service).
pub fn check_args(args: &[String]) -> Result<Command, Failure> {
    use clap::error::ErrorKind;
    let line = || format!("`riskstream {}`", args.join(" "));
    let cli =
        Cli::try_parse_from(std::iter::once("riskstream".to_string()).chain(args.iter().cloned()))
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                        "only prints help or the version".to_string()
                    }
                    _ => {
                        let text = e.render().to_string();
                        let first = text.lines().next().unwrap_or_default();
                        first.trim_start_matches("error: ").to_string()
                    }
                };
                Failure::Usage(vec![format!("{}: {why}", line())])
            })?;
    if matches!(cli.command, Command::CheckArgs(_)) {
        return Err(Failure::Usage(vec![format!(
            "{}: check-args does not check itself",
            line()
        )]));
    }
    Ok(cli.command)
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Broker(a) => crate::broker::run(a).await,
        Command::Ingest(a) => crate::services::ingest(a).await,
        Command::Worker(a) => crate::services::worker(a).await,
        Command::Collector(a) => crate::services::collector(a).await,
        Command::Api(a) => crate::services::api(a).await,
        Command::Produce(a) => crate::produce::run(a).await,
        Command::Bench(a) => crate::bench::run(a).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Topics(a) => crate::topics_cmd::run(a).await,
        Command::Auth(a) => crate::auth_cmd::run(a),
        Command::CheckArgs(a) => {
            let parsed = check_args(&a.args)?;
            println!("{parsed:?}");
            Ok(())
        }
        Command::Config(a) => {
            let cfg = redacted(load_config(&a, None)?);
            let text = toml::to_string_pretty(&cfg).map_err(|e| Failure::Runtime(e.into()))?;
            print!("{text}");
            Ok(())
        }
    }
}
