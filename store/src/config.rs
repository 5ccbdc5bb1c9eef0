//! How to reach ClickHouse: the `[clickhouse]` section shared by the collector (writes) and
//! the api (reads), and the client it builds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach ClickHouse (the collector writes, the api reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database of the spans and decisions tables (created at start).
    pub database: String,
    /// ClickHouse user.
    pub user: String,
    /// ClickHouse password.
    pub password: String,
    /// Timeout of one request (insert or query).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Compression of inserts and results: `lz4` (for a remote server) or `none` (cheaper on
    /// loopback, where the CPU is the bottleneck).
    pub compression: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "riskstream".into(),
            user: "default".into(),
            password: String::new(),
            request_timeout: Duration::from_secs(30),
            compression: "lz4".into(),
        }
    }
}

impl ClickHouseConfig {
    /// A client for this server and database. Schema validation is off: ClickHouse 18.16 has no
    /// `RowBinaryWithNamesAndTypes`, so rows go as `RowBinary` with explicit column names.
    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(&self.database)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_validation(false)
            .with_compression(match self.compression.as_str() {
                "none" => clickhouse::Compression::None,
                _ => clickhouse::Compression::Lz4,
            })
    }

    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut v = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            v.push(format!(
                "{section}.url must start with http:// or https://, got {:?}",
                self.url
            ));
        }
        let valid_db = !self.database.is_empty()
            && self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_db {
            v.push(format!(
                "{section}.database must be a non-empty name of letters, digits and '_', got {:?}",
                self.database
            ));
        }
        if self.request_timeout.is_zero() {
            v.push(format!("{section}.request_timeout must be positive"));
        }
        if !matches!(self.compression.as_str(), "lz4" | "none") {
            v.push(format!(
                "{section}.compression must be lz4 or none, got {:?}",
                self.compression
            ));
        }
        v
    }
}
