//! The api's configuration: ClickHouse (shared section with the collector) and `[api]`.

use riskstream_common::config::Validate;
pub use riskstream_store::ClickHouseConfig;
use serde::{Deserialize, Serialize};

/// The `[api]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Address of the query API (Jaeger-compatible `/api/...`, `/v1/...`) and `/metrics`.
    pub listen: String,
    /// Traces returned by a search without `limit`.
    pub default_search_limit: u32,
    /// Largest `limit` accepted by searches and decision listings.
    pub max_limit: u32,
    /// Bearer tokens and HTTP limits: the root `[auth]` and `[http]` sections, which the
    /// riskstream binary copies here (not a key of `[api]`). Default: open.
    #[serde(skip)]
    pub access: riskstream_auth::AccessConfig,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
            default_search_limit: 20,
            max_limit: 1000,
            access: riskstream_auth::AccessConfig::default(),
        }
    }
}

/// Everything the api reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub clickhouse: ClickHouseConfig,
    pub api: ApiSection,
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut v = self.clickhouse.problems("clickhouse");
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            v.push(format!(
                "api.listen must be HOST:PORT, got {:?}",
                self.api.listen
            ));
        }
        if self.api.max_limit == 0 || self.api.default_search_limit == 0 {
            v.push("api.max_limit and api.default_search_limit must be at least 1".into());
        }
        if self.api.default_search_limit > self.api.max_limit {
            v.push("api.default_search_limit must not exceed api.max_limit".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_problems_are_listed() {
        assert!(Config::default().validate().is_empty());
        let mut c = Config::default();
        c.api.listen = "x".into();
        c.api.default_search_limit = 5000;
        assert_eq!(c.validate().len(), 2);
        assert!(
            serde_json::from_value::<Config>(serde_json::json!({"api": {"lisen": "a"}})).is_err()
        );
    }
}
