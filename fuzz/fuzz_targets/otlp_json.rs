//! The collector's OTLP/JSON decoder (OTLP/HTTP JSON bodies: hex ids, camelCase, 64-bit
//! integers as strings) and the conversion to rows that follows it.
//!
//! Properties: no panic; a decoded request survives the protobuf encoding its dead letters
//! use; every span becomes a row or a rejection with its reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use riskstream_fuzz::check_conversion;
use riskstream_trace_collector::convert::{decode_json, decode_protobuf};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_json(data) else {
        return;
    };
    let encoded = request.encode_to_vec();
    let again = decode_protobuf(&encoded).expect("the protobuf form of a json request decodes");
    assert_eq!(again.encode_to_vec(), encoded, "encoding is stable");
    check_conversion(&request);
});
