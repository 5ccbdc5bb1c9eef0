//! Scopes: what a token may do. Each route of each service requires at most one (the table is
//! in docs/security.md); `admin` grants every scope.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::AuthError;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /v1/events` on ingest.
    EventsWrite,
    /// `POST /v1/decisions` and `GET /v1/decisions/{event_id}` on ingest.
    Decide,
    /// The api's decisions (`/v1/decisions...`).
    DecisionsRead,
    /// The api's traces (Jaeger `/api/...`, `/v1/traces/{trace_id}`).
    TracesRead,
    /// The collector's OTLP receivers (HTTP `POST /v1/traces`, gRPC `TraceService/Export`).
    TracesWrite,
    /// `GET /metrics` when `auth.metrics_public` is false.
    MetricsRead,
    /// The worker's admin routes; grants every other scope too.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::EventsWrite,
        Scope::Decide,
        Scope::DecisionsRead,
        Scope::TracesRead,
        Scope::TracesWrite,
        Scope::MetricsRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::Decide => "decide",
            Scope::DecisionsRead => "decisions:read",
            Scope::TracesRead => "traces:read",
            Scope::TracesWrite => "traces:write",
            Scope::MetricsRead => "metrics:read",
            Scope::Admin => "admin",
        }
    }

    /// Every scope's name.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|s| s.as_str()).collect()
    }

    /// Parses a comma-separated list (`events:write,decide`), ignoring blanks and repeats.
    pub fn parse_list(list: &str) -> Result<Vec<Scope>, AuthError> {
        let mut out: Vec<Scope> = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let s: Scope = part.parse()?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether holding `held` allows what needs `self`.
    pub fn granted_by(self, held: &[Scope]) -> bool {
        held.iter().any(|h| *h == self || *h == Scope::Admin)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| AuthError::UnknownScope(s.to_string()))
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_scopes_are_refused() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
        }
        let err = "events:delete".parse::<Scope>().unwrap_err().to_string();
        assert!(
            err.contains("events:delete") && err.contains("traces:read"),
            "{err}"
        );
    }

    #[test]
    fn lists_are_parsed_sorted_without_repeats() {
        assert_eq!(
            Scope::parse_list(" decide, events:write,,decide ").unwrap(),
            vec![Scope::EventsWrite, Scope::Decide]
        );
        assert!(Scope::parse_list("decide,nope").is_err());
    }

    #[test]
    fn admin_grants_everything_and_others_only_themselves() {
        for s in Scope::ALL {
            assert!(s.granted_by(&[Scope::Admin]));
        }
        assert!(Scope::Decide.granted_by(&[Scope::EventsWrite, Scope::Decide]));
        assert!(!Scope::TracesRead.granted_by(&[Scope::TracesWrite]));
        assert!(!Scope::Admin.granted_by(&[Scope::MetricsRead]));
        assert!(!Scope::Decide.granted_by(&[]));
    }
}
