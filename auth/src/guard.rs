//! The check of one request: which scope its route needs ([`Rule`]s, one table per service),
//! whether it carries a known bearer token holding that scope, and whether the token is within
//! its rate limit. Routes without a rule (the fallback included) need a valid token with any
//! scope, so a stranger learns nothing about which routes exist.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::AuthError;
use crate::config::{AccessConfig, HttpConfig};
use crate::http::{Render, json_error};
use crate::scope::Scope;
use crate::store::{RateLimit, TokenStore};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks, the OpenAPI document).
    Public,
    /// A token holding this scope (or `admin`).
    Scope(Scope),
    /// `GET /metrics`: public when `auth.metrics_public`, else `metrics:read`.
    Metrics,
}

/// The access of one route, by its template as the router names it (`/v1/decisions/{event_id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub route: &'static str,
    pub access: Access,
}

impl Rule {
    pub const fn new(route: &'static str, access: Access) -> Self {
        Self { route, access }
    }
}

/// The caller a request was authenticated as (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the tokens file.
    pub name: Arc<str>,
}

/// Why a request is refused before its handler runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No token, a malformed `Authorization` header, or an unknown token (401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid token without the route's scope (403).
    #[error("token {token:?} lacks the {scope} scope this route requires")]
    Forbidden { token: String, scope: Scope },
    /// The token's rate limit is used up (429).
    #[error("token {token:?} is over its rate limit; retry in {retry_after_secs} s")]
    RateLimited {
        token: String,
        retry_after_secs: u64,
    },
    /// Request target and headers over `http.max_header_bytes` (431).
    #[error("request target and headers are {size} bytes, more than the limit of {limit}")]
    HeadersTooLarge { size: usize, limit: usize },
    /// Not answered within `http.request_timeout` (408).
    #[error("request not completed within {0:?}")]
    Timeout(Duration),
}

/// The 401 messages (never echoing what was sent).
pub const MISSING_TOKEN: &str = "this route requires an `Authorization: Bearer <token>` header";
pub const INVALID_TOKEN: &str = "the bearer token is not valid";

impl Denial {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The machine-readable `code` of the JSON error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::Timeout(_) => "request_timeout",
        }
    }

    /// The `data` of the JSON error.
    pub fn data(&self) -> Value {
        match self {
            Self::Forbidden { scope, .. } => json!({ "required_scope": scope.as_str() }),
            Self::RateLimited {
                retry_after_secs, ..
            } => json!({ "retry_after_secs": retry_after_secs }),
            Self::HeadersTooLarge { limit, .. } => json!({ "max_header_bytes": limit }),
            _ => Value::Null,
        }
    }

    /// `WWW-Authenticate` (RFC 6750) on 401 and 403, `Retry-After` on 429.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let www = |v: String| {
            HeaderValue::try_from(v)
                .map(|v| (header::WWW_AUTHENTICATE, v))
                .ok()
        };
        let h = match self {
            Self::Unauthenticated(MISSING_TOKEN) => www("Bearer realm=\"riskstream\"".into()),
            Self::Unauthenticated(_) => {
                www("Bearer realm=\"riskstream\", error=\"invalid_token\"".into())
            }
            Self::Forbidden { scope, .. } => www(format!(
                "Bearer realm=\"riskstream\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            Self::RateLimited {
                retry_after_secs, ..
            } => Some((header::RETRY_AFTER, HeaderValue::from(*retry_after_secs))),
            _ => None,
        };
        h.into_iter().collect()
    }
}

struct Inner {
    service: &'static str,
    store: Option<TokenStore>,
    rules: &'static [Rule],
    metrics_public: bool,
    http: HttpConfig,
    render: Render,
}

/// One service's access control; cheap to clone.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer(authorization: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(authorization?).ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 512)
        .then_some(token)
}

impl Guard {
    /// The guard of `service` with its route table. With `[auth] tokens_file` set, loads the
    /// file (an error if missing or broken) and watches it; without, every request is let
    /// through and a warning says so.
    pub fn new(
        service: &'static str,
        config: &AccessConfig,
        rules: &'static [Rule],
    ) -> Result<Self, AuthError> {
        let auth = &config.auth;
        let store = if auth.enabled() {
            let store = TokenStore::open(
                &auth.tokens_file,
                auth.reload_interval,
                RateLimit {
                    per_second: auth.rate_limit_per_second,
                    burst: auth.rate_limit_burst,
                },
            )?;
            let n = store.current().len();
            tracing::info!(
                service,
                tokens_file = %auth.tokens_file.display(),
                tokens = n,
                "bearer-token authentication on"
            );
            if n == 0 {
                tracing::warn!(
                    service,
                    "the tokens file holds no token: every protected route answers 401"
                );
            }
            Some(store)
        } else if config.open_by_choice {
            tracing::info!(service, "authentication is off by choice (the local demo)");
            None
        } else {
            tracing::warn!(
                service,
                "authentication is OFF: no [auth] tokens_file (RISKSTREAM__AUTH__TOKENS_FILE), so \
                 every route is open to anyone who can reach this listener"
            );
            None
        };
        Ok(Self::from_parts(service, store, config, rules))
    }

    /// [`Guard::new`], or, if the tokens file cannot be read, a guard that refuses every
    /// protected route (fail closed) after logging why.
    pub fn new_or_closed(
        service: &'static str,
        config: &AccessConfig,
        rules: &'static [Rule],
    ) -> Self {
        Self::new(service, config, rules).unwrap_or_else(|e| {
            tracing::error!(service, error = %e, "authentication cannot start; refusing every protected route");
            Self::from_parts(service, Some(TokenStore::empty()), config, rules)
        })
    }

    fn from_parts(
        service: &'static str,
        store: Option<TokenStore>,
        config: &AccessConfig,
        rules: &'static [Rule],
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                service,
                store,
                rules,
                metrics_public: config.auth.metrics_public,
                http: config.http.clone(),
                render: json_error,
            }),
        }
    }

    /// The same guard answering refusals with `render` (a service's own error shape).
    pub fn with_renderer(self, render: Render) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                service: inner.service,
                store: inner.store.clone(),
                rules: inner.rules,
                metrics_public: inner.metrics_public,
                http: inner.http.clone(),
                render,
            }),
        }
    }

    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// Whether requests are authenticated (a tokens file is configured).
    pub fn enabled(&self) -> bool {
        self.inner.store.is_some()
    }

    pub fn store(&self) -> Option<&TokenStore> {
        self.inner.store.as_ref()
    }

    pub fn http(&self) -> &HttpConfig {
        &self.inner.http
    }

    pub(crate) fn render(&self) -> Render {
        self.inner.render
    }

    /// What `route` needs: `None` for nothing, `Some(None)` for any valid token, `Some(scope)`.
    fn needs(&self, route: Option<&str>) -> Option<Option<Scope>> {
        let rule = route.and_then(|r| self.inner.rules.iter().find(|x| x.route == r));
        match rule.map(|r| r.access) {
            Some(Access::Public) => None,
            Some(Access::Metrics) if self.inner.metrics_public => None,
            Some(Access::Metrics) => Some(Some(Scope::MetricsRead)),
            Some(Access::Scope(s)) => Some(Some(s)),
            None => Some(None),
        }
    }

    /// Checks one request to `route` (`None`: no route matched) with its `Authorization`
    /// header value. `Ok(None)`: let through without a caller (open route or auth off).
    pub fn check(
        &self,
        route: Option<&str>,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Principal>, Denial> {
        let Some(store) = &self.inner.store else {
            return Ok(None);
        };
        let Some(scope) = self.needs(route) else {
            return Ok(None);
        };
        let Some(presented) = bearer(authorization) else {
            return Err(Denial::Unauthenticated(MISSING_TOKEN));
        };
        let set = store.current();
        let token = set
            .find(presented)
            .ok_or(Denial::Unauthenticated(INVALID_TOKEN))?;
        if let Some(scope) = scope
            && !scope.granted_by(&token.scopes)
        {
            return Err(Denial::Forbidden {
                token: token.name.to_string(),
                scope,
            });
        }
        token.take().map_err(|wait| Denial::RateLimited {
            token: token.name.to_string(),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })?;
        Ok(Some(Principal {
            name: token.name.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;

    static RULES: &[Rule] = &[
        Rule::new("/healthz", Access::Public),
        Rule::new("/metrics", Access::Metrics),
        Rule::new("/v1/events", Access::Scope(Scope::EventsWrite)),
        Rule::new("/v1/admin", Access::Scope(Scope::Admin)),
    ];

    struct Fixture {
        _f: crate::fixture::Fixture,
        guard: Guard,
        writer: String,
        admin: String,
    }

    fn fixture(auth: AuthConfig) -> Fixture {
        let f = crate::fixture::guard(
            RULES,
            &[("writer", &[Scope::EventsWrite]), ("root", &[Scope::Admin])],
            AccessConfig {
                auth,
                ..AccessConfig::default()
            },
        );
        Fixture {
            guard: f.guard.clone(),
            writer: f.tokens[0].clone(),
            admin: f.tokens[1].clone(),
            _f: f,
        }
    }

    fn bearer_of(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn open_without_a_tokens_file() {
        let g = Guard::new("test", &AccessConfig::default(), RULES).unwrap();
        assert!(!g.enabled());
        assert_eq!(g.check(Some("/v1/admin"), None), Ok(None));
        assert_eq!(g.check(None, None), Ok(None));
    }

    #[test]
    fn public_routes_need_nothing_and_others_a_valid_token_with_the_scope() {
        let f = fixture(AuthConfig::default());
        let g = &f.guard;
        assert_eq!(g.check(Some("/healthz"), None), Ok(None));
        assert_eq!(g.check(Some("/metrics"), None), Ok(None));
        assert_eq!(
            g.check(Some("/v1/events"), None),
            Err(Denial::Unauthenticated(MISSING_TOKEN))
        );
        assert_eq!(
            g.check(Some("/v1/events"), Some(b"Basic dXNlcjpwYXNz")),
            Err(Denial::Unauthenticated(MISSING_TOKEN))
        );
        assert_eq!(
            g.check(Some("/v1/events"), Some(&bearer_of("rst_guess"))),
            Err(Denial::Unauthenticated(INVALID_TOKEN))
        );
        let ok = g.check(Some("/v1/events"), Some(&bearer_of(&f.writer)));
        assert_eq!(ok.unwrap().unwrap().name.as_ref(), "writer");
        // The scheme in any case.
        let lower = format!("bearer {}", f.writer).into_bytes();
        assert!(g.check(Some("/v1/events"), Some(&lower)).is_ok());
        assert_eq!(
            g.check(Some("/v1/admin"), Some(&bearer_of(&f.writer))),
            Err(Denial::Forbidden {
                token: "writer".into(),
                scope: Scope::Admin
            })
        );
        // admin holds every scope; unknown routes need any valid token.
        assert!(
            g.check(Some("/v1/events"), Some(&bearer_of(&f.admin)))
                .is_ok()
        );
        assert!(g.check(None, Some(&bearer_of(&f.writer))).is_ok());
        assert_eq!(
            g.check(None, None),
            Err(Denial::Unauthenticated(MISSING_TOKEN))
        );
    }

    #[test]
    fn private_metrics_need_metrics_read() {
        let f = fixture(AuthConfig {
            metrics_public: false,
            ..AuthConfig::default()
        });
        assert!(matches!(
            f.guard.check(Some("/metrics"), Some(&bearer_of(&f.writer))),
            Err(Denial::Forbidden {
                scope: Scope::MetricsRead,
                ..
            })
        ));
        assert!(
            f.guard
                .check(Some("/metrics"), Some(&bearer_of(&f.admin)))
                .is_ok()
        );
    }

    #[test]
    fn each_token_has_its_own_rate_limit() {
        let f = fixture(AuthConfig {
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            ..AuthConfig::default()
        });
        let g = &f.guard;
        for _ in 0..2 {
            g.check(Some("/v1/events"), Some(&bearer_of(&f.writer)))
                .unwrap();
        }
        let denied = g
            .check(Some("/v1/events"), Some(&bearer_of(&f.writer)))
            .unwrap_err();
        assert_eq!(
            denied,
            Denial::RateLimited {
                token: "writer".into(),
                retry_after_secs: 1
            }
        );
        assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(denied.headers()[0].0, header::RETRY_AFTER);
        // Another token's budget is untouched.
        assert!(
            g.check(Some("/v1/events"), Some(&bearer_of(&f.admin)))
                .is_ok()
        );
    }

    #[test]
    fn broken_files_fail_start_or_close_the_guard() {
        let config = AccessConfig {
            auth: AuthConfig {
                tokens_file: "/nonexistent/tokens.toml".into(),
                ..AuthConfig::default()
            },
            ..AccessConfig::default()
        };
        assert!(Guard::new("test", &config, RULES).is_err());
        let closed = Guard::new_or_closed("test", &config, RULES);
        assert!(closed.enabled());
        assert!(closed.check(Some("/v1/events"), Some(b"Bearer x")).is_err());
        assert_eq!(closed.check(Some("/healthz"), None), Ok(None));
    }

    #[test]
    fn refusals_carry_status_code_and_rfc6750_headers() {
        let missing = Denial::Unauthenticated(MISSING_TOKEN);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[0].1, "Bearer realm=\"riskstream\"");
        let invalid = Denial::Unauthenticated(INVALID_TOKEN);
        assert!(
            invalid.headers()[0]
                .1
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        let forbidden = Denial::Forbidden {
            token: "t".into(),
            scope: Scope::Decide,
        };
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(forbidden.to_string().contains("decide"));
        assert_eq!(forbidden.data()["required_scope"], "decide");
        assert!(
            forbidden.headers()[0]
                .1
                .to_str()
                .unwrap()
                .contains("scope=\"decide\"")
        );
        let big = Denial::HeadersTooLarge {
            size: 20_000,
            limit: 16_384,
        };
        assert_eq!(big.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(
            Denial::Timeout(Duration::from_secs(1)).status(),
            StatusCode::REQUEST_TIMEOUT
        );
    }
}
