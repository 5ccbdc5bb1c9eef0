//! What several fuzz targets check: the collector's conversion of a decoded OTLP request.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use riskstream_trace_collector::convert::{convert, decode_protobuf};

/// A fixed "now" for the decoders that compare times against the clock, so a run reproduces.
pub const NOW_MS: i64 = 1_790_000_000_000;

fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// Every span of a decoded request becomes a row or a rejection with its reason; each
/// rejection's dead letter is a one-span request that decodes; rows carry well-formed ids.
pub fn check_conversion(request: &ExportTraceServiceRequest) {
    let c = convert(request);
    assert_eq!(
        c.rows.len() + c.rejected.len(),
        span_count(request),
        "every span is a row or a rejection"
    );
    for r in &c.rejected {
        assert!(!r.code.is_empty() && !r.message.is_empty(), "{r:?}");
        let dead = decode_protobuf(&r.encoded()).expect("a dead letter decodes");
        assert_eq!(span_count(&dead), 1, "a dead letter holds one span");
    }
    for row in &c.rows {
        assert_eq!(row.trace_id.len(), 32, "{}", row.trace_id);
        assert_eq!(row.span_id.len(), 16, "{}", row.span_id);
        assert!(row.parent_span_id.is_empty() || row.parent_span_id.len() == 16);
        assert_eq!(row.span_attr_keys.len(), row.span_attr_values.len());
        assert_eq!(row.span_attr_keys.len(), row.span_attr_types.len());
    }
    if !c.rejected.is_empty() {
        assert!(!c.error_message().is_empty());
    }
}

use std::collections::BTreeMap;
use std::sync::OnceLock;

use riskstream_common::{Event, EventDecoder, FeatureValue};
use riskstream_feature_worker::features::FeatureSet;
use riskstream_feature_worker::scoring::{FeatureCatalog, FeatureKind};
use riskstream_feature_worker::worker::catalog_of;

/// The shipped feature definitions (what rule sets are validated against in production).
pub const SHIPPED_FEATURES: &str = include_str!("../../config/features.toml");

/// The catalog of the shipped features.
pub fn shipped_catalog() -> &'static FeatureCatalog {
    static CATALOG: OnceLock<FeatureCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let set = FeatureSet::from_toml_str(SHIPPED_FEATURES).expect("the shipped features load");
        catalog_of(&set)
    })
}

/// Events to evaluate accepted rule sets and feature sets on: a full one, a sparse one.
pub fn sample_events() -> Vec<Event> {
    let decoder = EventDecoder::default();
    [
        serde_json::json!({
            "event_time": NOW_MS - 1_000, "account_id": "acc-1", "card_id": "card-1",
            "device_id": "dev-1", "ip": "203.0.113.7", "merchant_id": "m-1",
            "email": "a@example.com", "amount": 1.5, "currency": "EUR", "country": "DE",
            "channel": "web", "type": "payment", "attributes": {"mcc": "5411", "n": 3}
        }),
        serde_json::json!({"event_time": 0, "account_id": "x"}),
    ]
    .into_iter()
    .map(|v| {
        decoder
            .decode_value(v, NOW_MS)
            .expect("sample events are valid")
    })
    .collect()
}

/// Feature values for every feature of `catalog`: all null, or all set (numbers at extremes).
pub fn sample_features(catalog: &FeatureCatalog) -> Vec<BTreeMap<String, FeatureValue>> {
    let set = |n: f64| {
        catalog
            .iter()
            .map(|(name, kind)| {
                let v = match kind {
                    FeatureKind::Number => FeatureValue::Number(n),
                    FeatureKind::Text => FeatureValue::Text("DE".into()),
                };
                (name.to_string(), v)
            })
            .collect()
    };
    vec![
        catalog
            .iter()
            .map(|(name, _)| (name.to_string(), FeatureValue::Null))
            .collect(),
        set(0.0),
        set(f64::MAX),
    ]
}

/// The shipped feature set (what the worker's internal records are checked against).
pub fn shipped_features() -> &'static FeatureSet {
    static SET: OnceLock<FeatureSet> = OnceLock::new();
    SET.get_or_init(|| {
        FeatureSet::from_toml_str(SHIPPED_FEATURES).expect("the shipped features load")
    })
}
