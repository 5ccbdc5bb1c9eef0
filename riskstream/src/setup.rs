//! What every subcommand shares: the common flags (`--config`, `--brokers`, `--listen`), the
//! root configuration and its loading (defaults, TOML, `RISKSTREAM__*`), redaction, the failure
//! type with its exit codes, and telemetry setup. Subcommands use it; nothing here knows them.

use std::path::PathBuf;

use clap::Args;
use riskstream_common::config::{self, ConfigError, Value};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

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
