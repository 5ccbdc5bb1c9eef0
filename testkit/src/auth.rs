//! Tokens files for the services' auth tests: a temporary file holding named tokens with the
//! given scopes (the tokens themselves kept in memory), that tests can add to or revoke from
//! while a service runs, and the [`AccessConfig`] pointing a service at it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use riskstream_auth::{AccessConfig, AuthConfig, Scope, TokenFile};

/// A tokens file in a temporary directory (removed on drop).
pub struct TestTokens {
    _dir: tempfile::TempDir,
    path: PathBuf,
    file: TokenFile,
    tokens: HashMap<String, String>,
}

impl TestTokens {
    /// A file with one token per `(name, scopes)`.
    pub fn new(specs: &[(&str, &[Scope])]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let mut t = Self {
            _dir: dir,
            path,
            file: TokenFile::default(),
            tokens: HashMap::new(),
        };
        t.file.save(&t.path).expect("save tokens file");
        for (name, scopes) in specs {
            t.add(name, scopes);
        }
        t
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a token and rewrites the file; returns the token.
    pub fn add(&mut self, name: &str, scopes: &[Scope]) -> String {
        let token = self
            .file
            .add(name, scopes.to_vec(), chrono::Utc::now())
            .expect("add token");
        self.file.save(&self.path).expect("save tokens file");
        self.tokens.insert(name.to_string(), token.clone());
        token
    }

    /// Removes token `name` and rewrites the file.
    pub fn revoke(&mut self, name: &str) {
        self.file.revoke(name).expect("revoke token");
        self.file.save(&self.path).expect("save tokens file");
    }

    /// Gives token `name` its own rate limit and rewrites the file.
    pub fn limit(&mut self, name: &str, per_second: u32, burst: u32) {
        let entry = self
            .file
            .tokens
            .iter_mut()
            .find(|t| t.name == name)
            .expect("token exists");
        entry.rate_limit_per_second = Some(per_second);
        entry.rate_limit_burst = Some(burst);
        self.file.save(&self.path).expect("save tokens file");
    }

    /// The token named `name`.
    pub fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }

    /// `Bearer <token of name>`, for an `Authorization` header.
    pub fn bearer(&self, name: &str) -> String {
        format!("Bearer {}", self.token(name))
    }

    /// Authentication on with this file, reloaded every 100 ms; default limits otherwise.
    pub fn access(&self) -> AccessConfig {
        AccessConfig {
            auth: AuthConfig {
                tokens_file: self.path.clone(),
                reload_interval: Duration::from_millis(100),
                ..AuthConfig::default()
            },
            ..AccessConfig::default()
        }
    }
}

/// One HTTP answer: status, headers, and the body as JSON (a string if it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Answer {
    /// A header as text ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// `request` with an `Authorization` header if one is given.
pub fn authorized(
    request: reqwest::RequestBuilder,
    authorization: Option<&str>,
) -> reqwest::RequestBuilder {
    match authorization {
        Some(a) => request.header("authorization", a),
        None => request,
    }
}

/// Sends `request` and reads the answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends what `make` builds until the answer has status `want` (a reload to be picked up);
/// panics with the last answer after `within`, a bound against hanging, not a latency claim.
pub async fn until_status(
    make: &dyn Fn(Option<&str>) -> reqwest::RequestBuilder,
    authorization: Option<&str>,
    want: u16,
    within: Duration,
) -> Answer {
    let deadline = std::time::Instant::now() + within;
    loop {
        let a = send(make(authorization)).await;
        if a.status == want {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} instead of {want} after {within:?}: {a:?}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a service's guarded route is checked with by [`exercise_guard`].
pub struct GuardedRoute<'a> {
    /// Builds the request with the given `Authorization` header value (none if `None`).
    pub make: &'a dyn Fn(Option<&str>) -> reqwest::RequestBuilder,
    /// The scope the route needs.
    pub scope: Scope,
    /// A scope that does not grant it.
    pub other_scope: Scope,
    /// The status of an allowed request.
    pub ok_status: u16,
    /// `http.max_header_bytes` of the service.
    pub max_header_bytes: usize,
}

/// The answers of [`exercise_guard`], for checks of the service's own error shape.
pub struct Refusals {
    pub missing: Answer,
    pub forbidden: Answer,
    pub limited: Answer,
}

/// Checks one guarded route of a running service whose tokens file is `tokens`: 401 without a
/// token and with an unknown one (`WWW-Authenticate: Bearer`), 403 naming the scope with a
/// token lacking it, `ok_status` with one holding it, 431 over the header limit, 429 with
/// `Retry-After` once a token's own limit (1/s, burst 2) is used up, and a token added to the
/// file while the service runs works, then is refused once revoked (no restart). No answer
/// holds a token.
pub async fn exercise_guard(tokens: &mut TestTokens, route: GuardedRoute<'_>) -> Refusals {
    let make = route.make;
    let within = Duration::from_secs(30);
    let allowed = tokens.add(&crate::unique("allowed"), &[route.scope]);
    let other = tokens.add(&crate::unique("other"), &[route.other_scope]);
    let bearer = |t: &str| format!("Bearer {t}");
    // Added to a running service's file: wait until it is loaded.
    until_status(make, Some(&bearer(&allowed)), route.ok_status, within).await;

    let missing = send(make(None)).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(
        missing.header("www-authenticate"),
        "Bearer realm=\"riskstream\""
    );
    let stranger = send(make(Some(&bearer(&crate::unique("rst_guess"))))).await;
    assert_eq!(stranger.status, 401, "{stranger:?}");
    assert!(
        stranger
            .header("www-authenticate")
            .contains("invalid_token")
    );
    let wrong_scheme = send(make(Some(&format!("Basic {allowed}")))).await;
    assert_eq!(wrong_scheme.status, 401, "{wrong_scheme:?}");

    until_status(make, Some(&bearer(&other)), 403, within).await;
    let forbidden = send(make(Some(&bearer(&other)))).await;
    assert!(
        forbidden.body.to_string().contains(route.scope.as_str()),
        "the 403 names the missing scope: {forbidden:?}"
    );
    assert!(
        forbidden
            .header("www-authenticate")
            .contains("insufficient_scope")
    );

    let padded =
        make(Some(&bearer(&allowed))).header("x-padding", "p".repeat(route.max_header_bytes));
    let big = send(padded).await;
    assert_eq!(big.status, 431, "{big:?}");

    let limited_name = crate::unique("limited");
    let limited_token = tokens.add(&limited_name, &[route.scope]);
    tokens.limit(&limited_name, 1, 2);
    let limited = until_status(make, Some(&bearer(&limited_token)), 429, within).await;
    let retry_after: u64 = limited.header("retry-after").parse().expect("Retry-After");
    assert!(retry_after >= 1, "{limited:?}");
    let unaffected = send(make(Some(&bearer(&allowed)))).await;
    assert_eq!(
        unaffected.status, route.ok_status,
        "other tokens keep their budget"
    );

    let late_name = crate::unique("late");
    let late = tokens.add(&late_name, &[route.scope]);
    until_status(make, Some(&bearer(&late)), route.ok_status, within).await;
    tokens.revoke(&late_name);
    until_status(make, Some(&bearer(&late)), 401, within).await;

    for a in [&missing, &stranger, &forbidden, &big, &limited] {
        let text = format!("{a:?}");
        for t in [&allowed, &other, &limited_token, &late] {
            assert!(
                !text.contains(t.as_str()),
                "an answer holds a token: {text}"
            );
        }
    }
    Refusals {
        missing,
        forbidden,
        limited,
    }
}
