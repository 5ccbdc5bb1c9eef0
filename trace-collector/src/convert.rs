//! OTLP -> rows: flattens an `ExportTraceServiceRequest` into [`SpanRow`]s and sets aside the
//! spans that cannot be stored (bad ids, no start time), each with its reason and a one-span
//! request for the dead-letter topic.

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use riskstream_store::schema::{SpanRow, attr_type};

/// The resource attribute naming the service.
pub const SERVICE_NAME_ATTR: &str = "service.name";
/// The service of spans whose resource has no `service.name` (as the OTel SDKs default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Why a span was not stored (the dead-letter `riskstream-dlq-code` header and metric label).
pub mod reason {
    pub const INVALID_TRACE_ID: &str = "invalid_trace_id";
    pub const INVALID_SPAN_ID: &str = "invalid_span_id";
    pub const INVALID_PARENT_SPAN_ID: &str = "invalid_parent_span_id";
    pub const MISSING_START_TIME: &str = "missing_start_time";
    pub const UNDECODABLE: &str = "undecodable";
    pub const INSERT_REJECTED: &str = "insert_rejected";
}

/// A span that cannot be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedSpan {
    /// One of [`reason`].
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// The span in a request of its own (resource and scope kept), for the dead-letter topic.
    pub request: ExportTraceServiceRequest,
}

impl RejectedSpan {
    pub fn encoded(&self) -> Vec<u8> {
        self.request.encode_to_vec()
    }
}

/// The result of converting one request.
#[derive(Debug, Default)]
pub struct Converted {
    pub rows: Vec<SpanRow>,
    pub rejected: Vec<RejectedSpan>,
}

impl Converted {
    /// The OTLP partial-success message summarising the rejections (empty if none).
    pub fn error_message(&self) -> String {
        let mut codes: Vec<&str> = self.rejected.iter().map(|r| r.code).collect();
        codes.sort_unstable();
        codes.dedup();
        match self.rejected.first() {
            None => String::new(),
            Some(first) => format!(
                "{} span(s) rejected ({}); first: {}",
                self.rejected.len(),
                codes.join(", "),
                first.message
            ),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const_hex::encode(bytes)
}

/// The text form and [`attr_type`] of an attribute value.
pub fn any_value_text(value: Option<&AnyValue>) -> (String, u8) {
    match value.and_then(|v| v.value.as_ref()) {
        None => (String::new(), attr_type::STRING),
        Some(Value::StringValue(s)) => (s.clone(), attr_type::STRING),
        Some(Value::BoolValue(b)) => (b.to_string(), attr_type::BOOL),
        Some(Value::IntValue(i)) => (i.to_string(), attr_type::INT),
        Some(Value::DoubleValue(d)) => (d.to_string(), attr_type::DOUBLE),
        Some(Value::BytesValue(b)) => (
            base64::engine::general_purpose::STANDARD.encode(b),
            attr_type::BYTES,
        ),
        Some(other) => (any_value_json(Some(other)).to_string(), attr_type::JSON),
    }
}

/// An attribute value as plain JSON (ints as numbers, bytes as base64).
pub fn any_value_json(value: Option<&Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Some(Value::BytesValue(b)) => {
            J::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(Value::ArrayValue(a)) => J::Array(
            a.values
                .iter()
                .map(|v| any_value_json(v.value.as_ref()))
                .collect(),
        ),
        Some(Value::KvlistValue(kv)) => J::Object(attributes_json_map(&kv.values)),
        Some(_) => J::Null,
    }
}

fn attributes_json_map(attrs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    attrs
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                any_value_json(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

/// Attributes as one JSON object string.
pub fn attributes_json(attrs: &[KeyValue]) -> String {
    serde_json::Value::Object(attributes_json_map(attrs)).to_string()
}

fn split_attributes(attrs: &[KeyValue]) -> (Vec<String>, Vec<String>, Vec<u8>) {
    let mut keys = Vec::with_capacity(attrs.len());
    let mut values = Vec::with_capacity(attrs.len());
    let mut types = Vec::with_capacity(attrs.len());
    for kv in attrs {
        let (v, t) = any_value_text(kv.value.as_ref());
        keys.push(kv.key.clone());
        values.push(v);
        types.push(t);
    }
    (keys, values, types)
}

fn service_name(resource_attrs: &[KeyValue]) -> String {
    resource_attrs
        .iter()
        .find(|kv| kv.key == SERVICE_NAME_ATTR)
        .and_then(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            },
        )
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_string())
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|b| *b != 0)
}

/// Why a span cannot be stored, if it cannot.
fn check(span: &Span) -> Option<(&'static str, String)> {
    if !valid_id(&span.trace_id, 16) {
        return Some((
            reason::INVALID_TRACE_ID,
            format!(
                "trace id must be 16 bytes and not all zero, got {} byte(s)",
                span.trace_id.len()
            ),
        ));
    }
    if !valid_id(&span.span_id, 8) {
        return Some((
            reason::INVALID_SPAN_ID,
            format!(
                "span id must be 8 bytes and not all zero, got {} byte(s)",
                span.span_id.len()
            ),
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Some((
            reason::INVALID_PARENT_SPAN_ID,
            format!(
                "parent span id must be empty or 8 bytes, got {} byte(s)",
                span.parent_span_id.len()
            ),
        ));
    }
    if span.start_time_unix_nano == 0 {
        return Some((reason::MISSING_START_TIME, "span has no start time".into()));
    }
    None
}

fn single_span_request(
    rs: &ResourceSpans,
    ss: &ScopeSpans,
    span: &Span,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: rs.resource.clone(),
            scope_spans: vec![ScopeSpans {
                scope: ss.scope.clone(),
                spans: vec![span.clone()],
                schema_url: ss.schema_url.clone(),
            }],
            schema_url: rs.schema_url.clone(),
        }],
    }
}

/// Converts every span of `request`.
pub fn convert(request: &ExportTraceServiceRequest) -> Converted {
    let mut out = Converted::default();
    for rs in &request.resource_spans {
        let resource_attrs: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
        let service = service_name(resource_attrs);
        let (rk, rv, rt) = split_attributes(resource_attrs);
        for ss in &rs.scope_spans {
            let (scope_name, scope_version) = ss
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for span in &ss.spans {
                if let Some((code, message)) = check(span) {
                    out.rejected.push(RejectedSpan {
                        code,
                        message,
                        request: single_span_request(rs, ss, span),
                    });
                    continue;
                }
                let (sk, sv, st) = split_attributes(&span.attributes);
                let status = span.status.as_ref();
                out.rows.push(SpanRow {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    trace_state: span.trace_state.clone(),
                    service_name: service.clone(),
                    span_name: span.name.clone(),
                    span_kind: u8::try_from(span.kind).unwrap_or(0),
                    start_time_unix_nano: span.start_time_unix_nano,
                    duration_ns: span
                        .end_time_unix_nano
                        .saturating_sub(span.start_time_unix_nano),
                    status_code: status.map_or(0, |s| u8::try_from(s.code).unwrap_or(0)),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    resource_attr_keys: rk.clone(),
                    resource_attr_values: rv.clone(),
                    resource_attr_types: rt.clone(),
                    span_attr_keys: sk,
                    span_attr_values: sv,
                    span_attr_types: st,
                    event_times_unix_nano: span.events.iter().map(|e| e.time_unix_nano).collect(),
                    event_names: span.events.iter().map(|e| e.name.clone()).collect(),
                    event_attributes: span
                        .events
                        .iter()
                        .map(|e| attributes_json(&e.attributes))
                        .collect(),
                    link_trace_ids: span.links.iter().map(|l| hex(&l.trace_id)).collect(),
                    link_span_ids: span.links.iter().map(|l| hex(&l.span_id)).collect(),
                    link_trace_states: span.links.iter().map(|l| l.trace_state.clone()).collect(),
                    link_attributes: span
                        .links
                        .iter()
                        .map(|l| attributes_json(&l.attributes))
                        .collect(),
                });
            }
        }
    }
    out
}

/// Decodes an OTLP protobuf request (the Kafka `otlp_proto` encoding and OTLP/HTTP protobuf).
pub fn decode_protobuf(bytes: &[u8]) -> Result<ExportTraceServiceRequest, prost::DecodeError> {
    ExportTraceServiceRequest::decode(bytes)
}

/// Decodes an OTLP/JSON request (hex ids, camelCase, enums as numbers, 64-bit ints as strings).
pub fn decode_json(bytes: &[u8]) -> Result<ExportTraceServiceRequest, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trace example of the OTLP specification (`examples/trace.json`).
    const SPEC_EXAMPLE: &str = r#"{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          { "key": "service.name", "value": { "stringValue": "my.service" } }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              { "key": "my.scope.attribute", "value": { "stringValue": "some scope attribute" } }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "kind": 2,
              "attributes": [
                { "key": "my.span.attr", "value": { "stringValue": "some value" } },
                { "key": "retries", "value": { "intValue": "3" } },
                { "key": "ratio", "value": { "doubleValue": 0.5 } },
                { "key": "ok", "value": { "boolValue": true } }
              ],
              "events": [
                { "timeUnixNano": "1544712660500000000", "name": "cache miss",
                  "attributes": [ { "key": "k", "value": { "intValue": "7" } } ] }
              ],
              "status": { "code": 2, "message": "boom" }
            }
          ]
        }
      ]
    }
  ]
}"#;

    #[test]
    fn the_spec_json_example_decodes_with_hex_ids_string_ints_and_enum_numbers() {
        let req = decode_json(SPEC_EXAMPLE.as_bytes()).unwrap();
        let c = convert(&req);
        assert!(c.rejected.is_empty());
        let r = &c.rows[0];
        assert_eq!(r.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(r.span_id, "eee19b7ec3c1b174");
        assert_eq!(r.parent_span_id, "eee19b7ec3c1b173");
        assert_eq!(r.service_name, "my.service");
        assert_eq!(r.span_kind, 2);
        assert_eq!(r.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(r.duration_ns, 1_000_000_000);
        assert_eq!((r.status_code, r.status_message.as_str()), (2, "boom"));
        assert_eq!(r.scope_name, "my.library");
        assert_eq!(r.span_attr_keys, ["my.span.attr", "retries", "ratio", "ok"]);
        assert_eq!(r.span_attr_values, ["some value", "3", "0.5", "true"]);
        assert_eq!(
            r.span_attr_types,
            [
                attr_type::STRING,
                attr_type::INT,
                attr_type::DOUBLE,
                attr_type::BOOL
            ]
        );
        assert_eq!(r.event_names, ["cache miss"]);
        assert_eq!(r.event_attributes, [r#"{"k":7}"#]);
    }

    #[test]
    fn protobuf_round_trips_and_bad_ids_are_rejected_with_their_reason() {
        let mut req = decode_json(SPEC_EXAMPLE.as_bytes()).unwrap();
        let good = req.resource_spans[0].scope_spans[0].spans[0].clone();
        let mut short_trace = good.clone();
        short_trace.trace_id = vec![1; 8];
        let mut zero_span = good.clone();
        zero_span.span_id = vec![0; 8];
        let mut no_start = good.clone();
        no_start.start_time_unix_nano = 0;
        req.resource_spans[0].scope_spans[0].spans.extend([
            short_trace.clone(),
            zero_span,
            no_start,
        ]);
        let decoded = decode_protobuf(&req.encode_to_vec()).unwrap();
        assert_eq!(decoded, req);
        let c = convert(&decoded);
        assert_eq!(c.rows.len(), 1);
        let codes: Vec<_> = c.rejected.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            [
                reason::INVALID_TRACE_ID,
                reason::INVALID_SPAN_ID,
                reason::MISSING_START_TIME
            ]
        );
        let dead = decode_protobuf(&c.rejected[0].encoded()).unwrap();
        assert_eq!(
            dead.resource_spans[0].scope_spans[0].spans,
            vec![short_trace]
        );
        assert_eq!(
            dead.resource_spans[0].resource,
            req.resource_spans[0].resource
        );
        assert!(c.error_message().starts_with("3 span(s) rejected"));
    }

    #[test]
    fn undecodable_input_is_an_error_not_a_panic() {
        assert!(decode_protobuf(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_json(b"{\"resourceSpans\": 3}").is_err());
        assert!(
            decode_json(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#)
                .is_err()
        );
    }
}
