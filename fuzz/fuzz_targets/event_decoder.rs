//! The event decoder as every service runs it: ingest's body splitting (JSON, NDJSON) and
//! validating decoder (its default limits), and the worker's decoder of `events` records.
//!
//! Properties: no panic; every refusal names a field and a reason; an accepted event's
//! canonical JSON is what the decoder returned, and it decodes again to the same event.
//!
//! Input: the first byte picks the path (JSON body, NDJSON body, `events` record), the rest is
//! the body or record.
#![no_main]

use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use riskstream_common::{DecodeLimits, EventDecoder, EventError};
use riskstream_feature_worker::worker::events_decoder;
use riskstream_ingest::events::{NDJSON, parse_body};

use riskstream_fuzz::NOW_MS;

fn check_refusal(e: &EventError) {
    assert!(!e.errors.is_empty(), "a refusal without errors");
    for fe in &e.errors {
        assert!(
            !fe.field.is_empty(),
            "a field error without a field: {fe:?}"
        );
        assert!(
            !fe.reason.is_empty(),
            "a field error without a reason: {fe:?}"
        );
        assert!(!fe.code.is_empty());
    }
}

/// Decodes the canonical form again: the same event.
fn check_round_trip(decoder: &EventDecoder, event: &riskstream_common::Event, bytes: &[u8]) {
    assert_eq!(
        event.to_json_bytes(),
        bytes,
        "returned bytes are the canonical form"
    );
    let again = decoder.decode_slice(bytes, NOW_MS).unwrap_or_else(|e| {
        panic!(
            "canonical form refused: {e}\n{}",
            String::from_utf8_lossy(bytes)
        )
    });
    assert_eq!(&again, event, "canonical form decodes to the same event");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 | 1 => {
            let ingest = EventDecoder::new(DecodeLimits::default());
            let ctype = if mode % 3 == 0 {
                "application/json"
            } else {
                NDJSON
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            let Ok(values) = parse_body(&headers, body) else {
                return;
            };
            for v in values {
                match ingest.decode_value_encoded(v, NOW_MS) {
                    Ok((event, bytes)) => check_round_trip(&ingest, &event, &bytes),
                    Err(e) => check_refusal(&e),
                }
            }
        }
        _ => {
            let worker = events_decoder();
            match worker.decode_slice(body, NOW_MS) {
                Ok(event) => {
                    let bytes = event.to_json_bytes();
                    check_round_trip(&worker, &event, &bytes);
                }
                Err(e) => check_refusal(&e),
            }
        }
    }
});
