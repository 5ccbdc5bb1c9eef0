//! Parsing of request parameters: trace ids, Jaeger search parameters (tags as a JSON object or
//! `key:value`, Go-style durations such as `1.2s`, microsecond time bounds) and time bounds
//! for decisions (RFC 3339 or epoch milliseconds). Every error names the parameter.
//!
//! Every value reaches ClickHouse as a bound parameter, never as SQL text; on top of that,
//! names (services, tag keys, account ids) must be letters, digits and `._-:/@`, and free text
//! (operations, tag values) must hold no control character, quote, backslash, semicolon or SQL
//! comment marker, so an injection attempt is a 400 naming the parameter before any query.

use crate::error::ApiError;
use riskstream_store::TraceQuery;

/// A trace id as 32 hex digits (any case), returned lowercase.
pub fn trace_id(raw: &str) -> Result<String, ApiError> {
    let ok = raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok || raw.bytes().all(|b| b == b'0') {
        return Err(ApiError::bad_param(
            "trace_id",
            format!("malformed trace id {raw:?}: expected 32 hex digits, not all zero"),
        ));
    }
    Ok(raw.to_ascii_lowercase())
}

/// Longest name (service, tag key, account id) accepted.
pub const MAX_NAME_LEN: usize = 256;
/// Longest free-text value (operation, tag value) accepted.
pub const MAX_TEXT_LEN: usize = 1024;

/// A name: 1 to [`MAX_NAME_LEN`] letters, digits and `._-:/@` (OpenTelemetry service names
/// and attribute keys, account ids).
pub fn name(param: &str, raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME_LEN
        && raw
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::bad_param(
            param,
            format!(
                "malformed {param} {:?}: expected 1 to {MAX_NAME_LEN} letters, digits and ._-:/@",
                truncated(raw)
            ),
        ))
    }
}

/// Free text (an operation, a tag value): at most [`MAX_TEXT_LEN`] bytes without control
/// characters, quotes, backslashes, semicolons or SQL comment markers (`--`, `/*`, `*/`).
pub fn text(param: &str, raw: &str) -> Result<String, ApiError> {
    let forbidden = |c: char| c.is_control() || matches!(c, '\'' | '"' | '`' | '\\' | ';');
    let ok = raw.len() <= MAX_TEXT_LEN
        && !raw.chars().any(forbidden)
        && !["--", "/*", "*/"].iter().any(|m| raw.contains(m));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::bad_param(
            param,
            format!(
                "malformed {param} {:?}: at most {MAX_TEXT_LEN} bytes without control characters, \
                 quotes, backslashes, semicolons or comment markers",
                truncated(raw)
            ),
        ))
    }
}

/// At most 64 characters of a refused value, for its error message.
fn truncated(raw: &str) -> String {
    raw.chars().take(64).collect()
}

/// A Go `time.ParseDuration` string (`1.5s`, `100ms`, `2m30s`, `250us`, `1h`) in nanoseconds.
pub fn go_duration_ns(raw: &str) -> Option<u64> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    (total.is_finite() && total >= 0.0 && total < u64::MAX as f64).then_some(total as u64)
}

/// Tags as Jaeger sends them: a JSON object (`{"http.status_code":"200","error":true}`) or
/// `key:value` (several separated by spaces).
pub fn tags(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if raw.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_param("tags", format!("malformed tags json: {e}")))?;
        return Ok(map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect());
    }
    raw.split_whitespace()
        .map(|pair| {
            pair.split_once(':')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    ApiError::bad_param(
                        "tags",
                        format!("malformed tag {pair:?}: expected key:value"),
                    )
                })
        })
        .collect()
}

fn micros_to_nanos(param: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim()
        .parse::<u64>()
        .map(|us| us.saturating_mul(1000))
        .map_err(|_| {
            ApiError::bad_param(
                param,
                format!("{param} must be microseconds since the epoch, got {raw:?}"),
            )
        })
}

/// The Jaeger search parameters (as repeated pairs: `tag=` may repeat).
pub fn trace_query(
    pairs: &[(String, String)],
    default_limit: u32,
    max_limit: u32,
) -> Result<TraceQuery, ApiError> {
    let mut q = TraceQuery {
        limit: default_limit,
        ..TraceQuery::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "service" => q.service = name("service", v)?,
            "operation" if !v.is_empty() => q.operation = Some(text("operation", v)?),
            "tags" | "tag" => {
                for (key, value) in tags(v)? {
                    q.tags.push((name("tags", &key)?, text("tags", &value)?));
                }
            }
            "minDuration" if !v.is_empty() => {
                q.min_duration_ns = Some(go_duration_ns(v).ok_or_else(|| {
                    ApiError::bad_param(
                        "minDuration",
                        format!("malformed duration {v:?} (e.g. 1.2s, 100ms)"),
                    )
                })?)
            }
            "maxDuration" if !v.is_empty() => {
                q.max_duration_ns = Some(go_duration_ns(v).ok_or_else(|| {
                    ApiError::bad_param(
                        "maxDuration",
                        format!("malformed duration {v:?} (e.g. 1.2s, 100ms)"),
                    )
                })?)
            }
            "start" if !v.is_empty() => {
                q.start_time_min_unix_nano = Some(micros_to_nanos("start", v)?)
            }
            "end" if !v.is_empty() => q.start_time_max_unix_nano = Some(micros_to_nanos("end", v)?),
            "limit" if !v.is_empty() => {
                let limit: u32 = v.parse().map_err(|_| {
                    ApiError::bad_param(
                        "limit",
                        format!("limit must be a positive integer, got {v:?}"),
                    )
                })?;
                if limit > 0 {
                    q.limit = limit.min(max_limit);
                }
            }
            _ => {}
        }
    }
    if q.service.is_empty() {
        return Err(ApiError::bad_param(
            "service",
            "parameter 'service' is required",
        ));
    }
    if let (Some(min), Some(max)) = (q.min_duration_ns, q.max_duration_ns)
        && min > max
    {
        return Err(ApiError::bad_param(
            "maxDuration",
            "maxDuration must not be below minDuration",
        ));
    }
    Ok(q)
}

/// A time bound for decisions: RFC 3339 or epoch milliseconds.
pub fn time_ms(param: &str, raw: &str) -> Result<i64, ApiError> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_param(
                param,
                format!("{param} must be RFC 3339 or epoch milliseconds, got {raw:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(go_duration_ns("1.2s"), Some(1_200_000_000));
        assert_eq!(go_duration_ns("100ms"), Some(100_000_000));
        assert_eq!(go_duration_ns("2m30s"), Some(150_000_000_000));
        assert_eq!(go_duration_ns("250us"), Some(250_000));
        assert_eq!(go_duration_ns("250µs"), Some(250_000));
        assert_eq!(go_duration_ns("0"), Some(0));
        for bad in ["", "5", "1.2", "ms", "3 days", "-1s", "1x"] {
            assert_eq!(go_duration_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn tags_take_json_objects_and_key_value_pairs() {
        assert_eq!(
            tags(r#"{"http.status_code":200,"error":true,"k":"v"}"#).unwrap(),
            vec![
                ("error".to_string(), "true".to_string()),
                ("http.status_code".to_string(), "200".to_string()),
                ("k".to_string(), "v".to_string()),
            ]
        );
        assert_eq!(
            tags("a:1 b:x:y").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x:y".into())]
        );
        assert!(tags("{nope").is_err());
        assert!(tags("novalue").is_err());
    }

    #[test]
    fn trace_ids_must_be_32_hex_digits() {
        assert_eq!(
            trace_id("5B8EFFF798038103D269B633813FC60C").unwrap(),
            "5b8efff798038103d269b633813fc60c"
        );
        for bad in [
            "",
            "xyz",
            "5b8efff798038103d269b633813fc60",
            "00000000000000000000000000000000",
        ] {
            assert!(trace_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_parameters_need_a_service_and_clamp_the_limit() {
        let p = |pairs: &[(&str, &str)]| {
            let v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            trace_query(&v, 20, 100)
        };
        assert!(p(&[("operation", "x")]).is_err());
        let q = p(&[
            ("service", "s"),
            ("limit", "5000"),
            ("start", "1000"),
            ("tag", "a:b"),
        ])
        .unwrap();
        assert_eq!(q.limit, 100);
        assert_eq!(q.start_time_min_unix_nano, Some(1_000_000));
        assert_eq!(q.tags, vec![("a".into(), "b".into())]);
        assert!(
            p(&[
                ("service", "s"),
                ("minDuration", "2s"),
                ("maxDuration", "1s")
            ])
            .is_err()
        );
    }

    #[test]
    fn names_and_text_refuse_injection_payloads() {
        for ok in [
            "riskstream-ingest",
            "svc.v2",
            "acc-1",
            "k8s:pod/x@y",
            "Zürich",
        ] {
            assert_eq!(name("service", ok).unwrap(), ok);
        }
        for bad in [
            "",
            "x' OR '1'='1",
            "a;DROP TABLE spans",
            "a b",
            "a\u{0}b",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            let e = name("service", bad).unwrap_err();
            assert!(
                matches!(&e, ApiError::BadRequest { data, .. } if data["parameter"] == "service"),
                "{bad}: {e}"
            );
        }
        for ok in [
            "",
            "POST /v1/events",
            "GET /v1/decisions/{event_id}",
            "http://h/a?b=c&d=e",
            "200",
        ] {
            assert_eq!(text("operation", ok).unwrap(), ok);
        }
        for bad in [
            "x' OR 1=1",
            "1\" OR \"1",
            "a; SELECT 1",
            "a -- comment",
            "/* c */",
            "a\\' ",
            "line\nbreak",
            "`id`",
            &"a".repeat(MAX_TEXT_LEN + 1),
        ] {
            assert!(text("tags", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_parameters_refuse_injection_in_service_operation_and_tags() {
        let p = |pairs: &[(&str, &str)]| {
            let v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            trace_query(&v, 20, 100)
        };
        let param = |r: Result<TraceQuery, ApiError>| match r {
            Err(ApiError::BadRequest { data, .. }) => {
                data["parameter"].as_str().unwrap().to_string()
            }
            other => panic!("expected a 400, got {other:?}"),
        };
        assert_eq!(param(p(&[("service", "s' OR '1'='1")])), "service");
        assert_eq!(
            param(p(&[
                ("service", "s"),
                ("operation", "x'; DROP TABLE spans --")
            ])),
            "operation"
        );
        assert_eq!(
            param(p(&[("service", "s"), ("tags", r#"{"k') OR 1=1 --":"v"}"#)])),
            "tags"
        );
        assert_eq!(
            param(p(&[("service", "s"), ("tags", r#"{"k":"v' OR '1'='1"}"#)])),
            "tags"
        );
        assert_eq!(param(p(&[("service", "s"), ("tag", "k:v;SELECT")])), "tags");
        assert!(p(&[("service", "s"), ("tags", r#"{"http.status_code":"200"}"#)]).is_ok());
    }

    #[test]
    fn decision_times_are_rfc3339_or_millis() {
        assert_eq!(time_ms("from", "1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            time_ms("from", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(time_ms("from", "yesterday").is_err());
    }
}
