//! The axum side: [`Guard::protect`] wraps a router's routes with [`enforce`], which refuses
//! requests whose target and headers exceed `http.max_header_bytes` (431), checks the bearer
//! token against the route's rule (401, 403, 429), and answers 408 when the handler (reading
//! the body included) takes longer than `http.request_timeout`. Refusals are rendered by the
//! guard's [`Render`] function, by default the services' JSON error
//! `{"code","message","data"}`.
//!
//! Nothing here logs a header: a token appears in no log line, error or metric.

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::guard::{Denial, Guard};

/// What a renderer may look at of the refused request.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub path: String,
    pub content_type: Option<HeaderValue>,
}

/// Renders a refusal in a service's error shape (it must add [`Denial::headers`]).
pub type Render = fn(&Denial, &RequestView) -> Response;

/// Adds the refusal's `WWW-Authenticate` / `Retry-After` headers to `response`.
pub fn with_headers(denial: &Denial, mut response: Response) -> Response {
    for (k, v) in denial.headers() {
        response.headers_mut().insert(k, v);
    }
    response
}

/// The default renderer: `{"code","message","data"}` with the refusal's status and headers.
pub fn json_error(denial: &Denial, _request: &RequestView) -> Response {
    let body = json!({"code": denial.code(), "message": denial.to_string(), "data": denial.data()});
    with_headers(denial, (denial.status(), Json(body)).into_response())
}

/// Bytes of the request target and headers, as HTTP/1.1 would send them.
fn head_size(req: &Request) -> usize {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = header_bytes(req.headers());
    target + headers
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// The middleware (see the module doc); the guard is its state.
pub async fn enforce(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let view = RequestView {
        path: req.uri().path().to_string(),
        content_type: req.headers().get(header::CONTENT_TYPE).cloned(),
    };
    let render = guard.render();
    let limit = guard.http().max_header_bytes;
    let size = head_size(&req);
    if size > limit {
        return render(&Denial::HeadersTooLarge { size, limit }, &view);
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let checked = guard.check(
        route,
        req.headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    );
    match checked {
        Err(denial) => render(&denial, &view),
        Ok(principal) => {
            if let Some(p) = principal {
                req.extensions_mut().insert(p);
            }
            let timeout = guard.http().request_timeout;
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(response) => response,
                Err(_) => render(&Denial::Timeout(timeout), &view),
            }
        }
    }
}

impl Guard {
    /// `router` with every route (and the fallback) behind this guard. Apply it before
    /// (inside) request-counting layers so refusals are counted too.
    pub fn protect<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.layer(middleware::from_fn_with_state(self.clone(), enforce))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::{AccessConfig, HttpConfig};
    use crate::guard::{Access, Rule};
    use crate::scope::Scope;

    static RULES: &[Rule] = &[
        Rule::new("/healthz", Access::Public),
        Rule::new("/slow", Access::Public),
        Rule::new("/v1/decide", Access::Scope(Scope::Decide)),
    ];

    async fn call(
        app: &Router,
        uri: &str,
        headers: &[(&str, String)],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = axum::http::Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, body)
    }

    #[tokio::test]
    async fn refusals_are_json_with_headers_and_allowed_requests_reach_the_handler() {
        let access = AccessConfig {
            http: HttpConfig {
                max_header_bytes: 2048,
                request_timeout: Duration::from_millis(100),
            },
            ..AccessConfig::default()
        };
        let f = crate::fixture::guard(
            RULES,
            &[("c", &[Scope::EventsWrite]), ("d", &[Scope::Decide])],
            access,
        );
        let (token, decider) = (f.tokens[0].clone(), f.tokens[1].clone());
        let guard = f.guard.clone();
        let app = guard.protect(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/v1/decide", get(|| async { "decided" }))
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late"
                    }),
                ),
        );
        let (s, h, body) = call(&app, "/v1/decide", &[]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer realm=\"riskstream\"");
        assert_eq!(body["code"], "unauthorized");

        let auth = |t: &str| vec![("authorization", format!("Bearer {t}"))];
        let (s, _, body) = call(&app, "/v1/decide", &auth(&token)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(body["data"]["required_scope"], "decide");
        assert!(body["message"].as_str().unwrap().contains("decide"));
        assert!(
            !body.to_string().contains(&token),
            "the token is not echoed"
        );

        let (s, _, _) = call(&app, "/v1/decide", &auth(&decider)).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _, body) = call(&app, "/nowhere", &auth(&decider)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        let (s, _, _) = call(&app, "/nowhere", &[]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "strangers learn no route");

        let big = vec![("x-padding", "a".repeat(3000))];
        let (s, _, body) = call(&app, "/healthz", &big).await;
        assert_eq!(s, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(body["data"]["max_header_bytes"], 2048);

        let (s, _, body) = call(&app, "/slow", &[]).await;
        assert_eq!(s, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["code"], "request_timeout");
    }
}
