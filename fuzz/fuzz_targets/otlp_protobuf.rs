//! The collector's OTLP protobuf decoder (OTLP/HTTP protobuf bodies and `otlp_spans` Kafka
//! records) and the conversion to rows that follows it.
//!
//! Properties: no panic; a decoded request re-encodes to a stable form; every span becomes a
//! row or a rejection with its reason, whose dead letter decodes to a one-span request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use riskstream_fuzz::check_conversion;
use riskstream_trace_collector::convert::decode_protobuf;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_protobuf(data) else {
        return;
    };
    let encoded = request.encode_to_vec();
    let again = decode_protobuf(&encoded).expect("a re-encoded request decodes");
    assert_eq!(again.encode_to_vec(), encoded, "encoding is stable");
    check_conversion(&request);
});
