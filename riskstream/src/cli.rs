//! Command-line parsing and dispatch.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use riskstream_common::config::{self, ConfigError, Value};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

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

/// Flags every service takes.
#[derive(Debug, Args, Clone, Default)]
pub struct ServiceArgs {
    /// TOML configuration file (defaults, then this file, then RISKSTREAM__SECTION__KEY variables, then flags).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    pub brokers: Option<String>,
    /// HOST:PORT to listen on (port 0 picks a free port; the bound address is printed as listening=HOST:PORT).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Flags of the services that read ClickHouse.
#[derive(Debug, Args, Clone, Default)]
pub struct ClickHouseArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// ClickHouse HTTP URL, e.g. http://127.0.0.1:8123.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
}

/// Flags of `riskstream collector`.
#[derive(Debug, Args, Clone, Default)]
pub struct CollectorArgs {
    #[command(flatten)]
    pub ch: ClickHouseArgs,
    /// HOST:PORT for OTLP/gRPC (OTLP/HTTP is on --listen).
    #[arg(long)]
    pub otlp_grpc_listen: Option<String>,
}

/// Flags of `riskstream worker`.
#[derive(Debug, Args, Clone, Default)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Feature definitions (default: config/features.toml).
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Rule set (default: config/rules.toml).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Models directory with manifest.toml (default: config/models).
    #[arg(long)]
    pub models: Option<PathBuf>,
}

/// The whole configuration file: one file can configure every service.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RootConfig {
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    pub ingest: riskstream_ingest::IngestConfig,
    pub worker: riskstream_feature_worker::WorkerConfig,
    pub clickhouse: riskstream_store::ClickHouseConfig,
    pub collector: riskstream_trace_collector::CollectorSection,
    pub api: riskstream_api::ApiSection,
    /// Bearer tokens of every listener (copied into each service's section at load).
    pub auth: riskstream_auth::AuthConfig,
    /// Limits of every HTTP listener (copied likewise).
    pub http: riskstream_auth::HttpConfig,
}

impl RootConfig {
    /// The `[auth]` and `[http]` sections as each service's listener applies them.
    pub fn access(&self) -> riskstream_auth::AccessConfig {
        riskstream_auth::AccessConfig {
            auth: self.auth.clone(),
            http: self.http.clone(),
            open_by_choice: false,
        }
    }

    /// Copies `[auth]` and `[http]` into every service's section (see [`RootConfig::access`]).
    pub fn with_access(mut self) -> Self {
        let access = self.access();
        self.ingest.access = access.clone();
        self.worker.access = access.clone();
        self.collector.access = access.clone();
        self.api.access = access;
        self
    }
}

impl config::Validate for RootConfig {
    fn validate(&self) -> Vec<String> {
        let s = self.clone().with_access();
        let mut v = s.telemetry.validate();
        v.extend(s.access().problems());
        v.extend(s.ingest.problems());
        v.extend(s.worker.problems());
        // The collector's and the api's own checks, on the sections they read.
        v.extend(
            riskstream_trace_collector::Config {
                kafka: s.kafka.clone(),
                clickhouse: s.clickhouse.clone(),
                collector: s.collector.clone(),
            }
            .validate(),
        );
        v.extend(
            riskstream_api::Config {
                clickhouse: s.clickhouse.clone(),
                api: s.api.clone(),
            }
            .validate()
            .into_iter()
            .filter(|p| !p.starts_with("clickhouse.")),
        );
        v
    }
}

/// What `riskstream config` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// The configuration with its secrets replaced by [`REDACTED`]: the ClickHouse password and
/// every librdkafka property whose name says password or secret (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...). Empty values stay empty.
pub fn redacted(mut cfg: RootConfig) -> RootConfig {
    if !cfg.clickhouse.password.is_empty() {
        cfg.clickhouse.password = REDACTED.into();
    }
    for (k, v) in cfg.kafka.extra.iter_mut() {
        let k = k.to_ascii_lowercase();
        if (k.contains("password") || k.contains("secret")) && !v.is_empty() {
            *v = REDACTED.into();
        }
    }
    cfg
}

/// Why a command failed: bad usage/config (exit 2) or at run time (exit 1).
pub enum Failure {
    Usage(Vec<String>),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(e.errors)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Loads the root configuration with the flags as the last layer; `listen_key` names the
/// section whose `listen` the `--listen` flag sets.
pub fn load_config(args: &ServiceArgs, listen_key: Option<&str>) -> Result<RootConfig, Failure> {
    load_config_with(args, listen_key, Vec::new())
}

/// [`load_config`] with further `(key, value)` overrides from flags.
pub fn load_config_with(
    args: &ServiceArgs,
    listen_key: Option<&str>,
    extra: Vec<(&str, Value)>,
) -> Result<RootConfig, Failure> {
    let mut overrides: Vec<(&str, Value)> = extra;
    if let Some(b) = &args.brokers {
        overrides.push(("kafka.brokers", Value::from(b.clone())));
    }
    if let (Some(l), Some(key)) = (&args.listen, listen_key) {
        overrides.push((key, Value::from(l.clone())));
    }
    let cfg: RootConfig = config::load(args.config.as_deref(), &overrides)?;
    Ok(cfg.with_access())
}

/// Starts logging and span export for one service; keep the guard alive while it runs.
pub fn telemetry(cfg: &RootConfig, service: &str) -> riskstream_common::telemetry::TelemetryGuard {
    riskstream_common::telemetry::init(&cfg.telemetry, service, Some(&cfg.kafka))
}

/// Logging only (tools that are not services export no spans).
pub fn logging_only(cfg: &RootConfig) -> riskstream_common::telemetry::TelemetryGuard {
    let t = riskstream_common::telemetry::TelemetryConfig {
        traces_exporter: riskstream_common::telemetry::exporter::NONE.into(),
        ..cfg.telemetry.clone()
    };
    riskstream_common::telemetry::init(&t, "riskstream", None)
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
