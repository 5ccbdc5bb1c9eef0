//! The worker's admin HTTP: live window values of one key, the running rule set, Prometheus
//! metrics, health (read from the shared [`WorkerState`]); behind the access guard of
//! `worker.access` ([`AUTH_RULES`]: the admin routes need the `admin` scope).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use riskstream_auth::{Access, Guard, Rule, Scope};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::worker::WorkerState;

/// What each route needs (docs/security.md has the table of every service).
pub static AUTH_RULES: &[Rule] = &[
    Rule::new("/v1/features/{entity}/{key}", Access::Scope(Scope::Admin)),
    Rule::new("/v1/rules", Access::Scope(Scope::Admin)),
    Rule::new("/healthz", Access::Public),
    Rule::new("/readyz", Access::Public),
    Rule::new("/metrics", Access::Metrics),
];

/// The admin routes behind the guard. A tokens file that cannot be read refuses every
/// protected route (the riskstream binary checks it before starting the worker).
pub fn router(state: WorkerState) -> Router {
    let guard = Guard::new_or_closed("worker", &state.config.worker.access, AUTH_RULES);
    let routes = Router::new()
        .route("/v1/features/{entity}/{key}", get(features))
        .route("/v1/rules", get(rules))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(|| async { Json(json!({"status": "ready"})) }),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route".to_string(),
            )
        });
    guard.protect(routes).with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "data": null})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct AtQuery {
    /// Read the windows as of this event time (epoch ms); default: now.
    at_ms: Option<i64>,
}

/// `GET /v1/features/{entity}/{key}`: `entity` is the group's key spec (`card_id`,
/// `card_id+merchant_id`, ...); composite keys give their parts joined by `|`.
async fn features(
    State(s): State<WorkerState>,
    Path((entity, key)): Path<(String, String)>,
    Query(q): Query<AtQuery>,
) -> Response {
    let set = s.engine.feature_set();
    let Some(group) = set.group_index(&entity) else {
        let known: Vec<String> = set.groups().iter().map(|g| g.key_spec().name()).collect();
        return error(
            StatusCode::NOT_FOUND,
            "unknown_entity",
            format!(
                "no feature is keyed by {entity:?}; keyed entities: {}",
                known.join(", ")
            ),
        );
    };
    let key_parts: Vec<&str> = key.split('|').collect();
    let state_key = crate::features::KeySpec::encode_parts(&key_parts);
    let at = q.at_ms.unwrap_or_else(riskstream_common::now_ms);
    match s.engine.snapshot(group, &state_key, at) {
        Ok(Some(values)) => {
            let mut m = Map::new();
            for (name, v) in values {
                m.insert(name, serde_json::to_value(v).unwrap_or(Value::Null));
            }
            Json(json!({"entity": entity, "key": key, "at_ms": at, "features": m})).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no_state",
            format!("no window state for {entity} {key:?} on this worker"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// `GET /v1/rules`: the running rule set's version and rules, whether the control topics were
/// replayed, and the last refused update with its problems.
async fn rules(State(s): State<WorkerState>) -> Response {
    let set = s.scorer.rules().current();
    let rules: Vec<Value> = set
        .rules()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    Json(json!({
        "version": set.version(),
        "rules": rules,
        "control_caught_up": s.control.is_caught_up(),
        "last_rejected": s.control.last_rejection(),
    }))
    .into_response()
}

async fn metrics(State(s): State<WorkerState>) -> Response {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    s.metrics.observe_state(&s.engine);
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = encode_registry(&mut out, &s.metrics.registry);
    let _ = encode_registry(&mut out, &s.control.metrics.registry);
    let _ = encode_eof(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            riskstream_common::metrics::CONTENT_TYPE,
        )],
        out,
    )
        .into_response()
}
