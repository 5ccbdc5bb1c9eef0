//! The api's query parameters: a query string split into pairs as axum's `Query` does
//! (`serde_urlencoded`), then the Jaeger search parameters, trace ids, names, free text, time
//! bounds and durations as the handlers parse them.
//!
//! Properties: no panic; a refusal is a 400 naming the parameter; what is accepted holds no
//! character the store's injection guard refuses (names: letters, digits and `._-:/@`; text: no
//! control character, quote, backslash, semicolon or comment marker) and stays within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riskstream_api::ApiError;
use riskstream_api::params::{self, MAX_NAME_LEN, MAX_TEXT_LEN};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 1000;

fn names_parameter(e: &ApiError) {
    match e {
        ApiError::BadRequest { data, message } => {
            assert!(!message.is_empty());
            let p = data["parameter"].as_str().unwrap_or_default();
            assert!(!p.is_empty(), "a 400 that names no parameter: {message}");
        }
        other => panic!("a parameter error that is not a 400: {other:?}"),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
}

fn is_text(s: &str) -> bool {
    s.len() <= MAX_TEXT_LEN
        && !s
            .chars()
            .any(|c| c.is_control() || matches!(c, '\'' | '"' | '`' | '\\' | ';'))
        && !["--", "/*", "*/"].iter().any(|m| s.contains(m))
}

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else {
        return;
    };
    match params::trace_query(&pairs, DEFAULT_LIMIT, MAX_LIMIT) {
        Ok(q) => {
            assert!(is_name(&q.service), "accepted service {:?}", q.service);
            if let Some(op) = &q.operation {
                assert!(is_text(op), "accepted operation {op:?}");
            }
            for (k, v) in &q.tags {
                assert!(is_name(k) && is_text(v), "accepted tag {k:?}={v:?}");
            }
            assert!((1..=MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
            if let (Some(min), Some(max)) = (q.min_duration_ns, q.max_duration_ns) {
                assert!(min <= max);
            }
        }
        Err(e) => names_parameter(&e),
    }
    for (_, value) in &pairs {
        match params::trace_id(value) {
            Ok(id) => {
                assert_eq!(id.len(), 32);
                assert!(
                    id.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                );
                assert!(id.bytes().any(|b| b != b'0'));
            }
            Err(e) => names_parameter(&e),
        }
        match params::name("service", value) {
            Ok(n) => assert!(is_name(&n), "accepted name {n:?}"),
            Err(e) => names_parameter(&e),
        }
        match params::text("operation", value) {
            Ok(t) => assert!(is_text(&t), "accepted text {t:?}"),
            Err(e) => names_parameter(&e),
        }
        if let Err(e) = params::time_ms("from", value) {
            names_parameter(&e);
        }
        let _ = params::go_duration_ns(value);
        if let Ok(tags) = params::tags(value) {
            for (k, _) in tags {
                let _ = params::name("tags", &k);
            }
        }
    }
});
