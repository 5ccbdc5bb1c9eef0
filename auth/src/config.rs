//! The `[auth]` and `[http]` configuration sections, shared by every service (one root-level
//! section each in the riskstream configuration file).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[auth]`: bearer tokens and per-token rate limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens file (`riskstream auth add-token --file ...`): names, scopes and SHA-256 hashes.
    /// Empty: no authentication, every route is open (each service warns at start). Changes
    /// are picked up without a restart; a broken file keeps the previous tokens.
    pub tokens_file: PathBuf,
    /// How often the tokens file is checked for changes (its modification time and size).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Sustained requests per second of each token (429 with `Retry-After` beyond it); 0: no
    /// limit. A token's own `rate_limit_per_second` in the tokens file wins.
    pub rate_limit_per_second: u32,
    /// Requests a token may send at once on top of the sustained rate.
    pub rate_limit_burst: u32,
    /// Whether `GET /metrics` answers without a token (Prometheus scrapes it); false: it needs
    /// the `metrics:read` scope. Health checks (`/healthz`, `/readyz`) are always open.
    pub metrics_public: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: PathBuf::new(),
            reload_interval: Duration::from_secs(1),
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            metrics_public: true,
        }
    }
}

impl AuthConfig {
    /// Whether a tokens file is configured (authentication on).
    pub fn enabled(&self) -> bool {
        !self.tokens_file.as_os_str().is_empty()
    }

    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.reload_interval.is_zero() {
            v.push("auth.reload_interval must be positive".into());
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            v.push("auth.rate_limit_burst must be at least 1 when rate limiting is on".into());
        }
        v
    }
}

/// `[http]`: limits of every HTTP listener (ingest, worker admin, collector, api).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request head: the request target plus every header name and value (431 beyond
    /// it). Request bodies have their own limits (`ingest.max_body_bytes`,
    /// `collector.max_request_bytes`).
    pub max_header_bytes: usize,
    /// Longest a request may take, reading its body included (408 beyond it). Must exceed
    /// `ingest.max_decision_timeout` and `collector.request_timeout`, which answer first.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl HttpConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.max_header_bytes < 1024 {
            v.push(format!(
                "http.max_header_bytes must be at least 1024, got {}",
                self.max_header_bytes
            ));
        }
        if self.request_timeout.is_zero() {
            v.push("http.request_timeout must be positive".into());
        }
        v
    }
}

/// Both sections, as a service's listener applies them. The riskstream binary copies the root
/// `[auth]` and `[http]` sections into each service's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessConfig {
    pub auth: AuthConfig,
    pub http: HttpConfig,
    /// Running without a tokens file was chosen by the program (the local demo), not left by
    /// omission: the guard then notes it at info level instead of warning.
    pub open_by_choice: bool,
}

impl AccessConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut v = self.auth.problems();
        v.extend(self.http.problems());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_open_and_limited() {
        let c = AccessConfig::default();
        assert!(c.problems().is_empty());
        assert!(!c.auth.enabled());
        let bad = AccessConfig {
            auth: AuthConfig {
                reload_interval: Duration::ZERO,
                rate_limit_burst: 0,
                ..AuthConfig::default()
            },
            http: HttpConfig {
                max_header_bytes: 10,
                request_timeout: Duration::ZERO,
            },
            open_by_choice: false,
        };
        assert_eq!(bad.problems().len(), 4, "{:?}", bad.problems());
    }

    #[test]
    fn sections_read_humantime_and_refuse_unknown_keys() {
        let a: AuthConfig =
            toml::from_str("tokens_file = \"t.toml\"\nreload_interval = \"250ms\"").unwrap();
        assert!(a.enabled());
        assert_eq!(a.reload_interval, Duration::from_millis(250));
        assert!(toml::from_str::<HttpConfig>("max_headers = 1").is_err());
    }
}
