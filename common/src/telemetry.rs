//! Logging setup: `tracing` to stderr as text or JSON, filtered by `RUST_LOG` or the configured
//! level. (OpenTelemetry span export is layered on here by the tracing work.)

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: String,
    /// A `tracing` filter directive such as `info` or `riskstream_ingest=debug,info`;
    /// `RUST_LOG` wins when set.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !matches!(self.log_format.as_str(), "text" | "json") {
            v.push(format!(
                "telemetry.log_format must be \"text\" or \"json\", got {:?}",
                self.log_format
            ));
        }
        if EnvFilter::try_new(&self.log_level).is_err() {
            v.push(format!("telemetry.log_level {:?} is not a valid filter", self.log_level));
        }
        v
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(cfg: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.log_format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
