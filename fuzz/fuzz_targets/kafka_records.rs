//! The records of the other topics services consume: the worker's repartition and results
//! topics (keyed mode), the `lists` control topic (and the lists file's lines), and the
//! `decisions` topic the collector stores (and the api reads back).
//!
//! Properties: no panic; an internal record accepted against the shipped feature set
//! re-encodes to an equal record, a refused one carries a code and a reason; a decision stored
//! as a row reads back equal.
//!
//! Input: the first byte picks the topic (repartition, results, lists, decisions), the rest is
//! the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riskstream_common::Decision;
use riskstream_feature_worker::keyed::{RepartitionRecord, ResultRecord};
use riskstream_feature_worker::scoring::Lists;
use riskstream_fuzz::shipped_features;
use riskstream_store::schema::DecisionRow;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let set = shipped_features();
    match mode % 4 {
        0 => match RepartitionRecord::decode(payload, set) {
            Ok(r) => {
                let bytes = serde_json::to_vec(&r).expect("a record encodes");
                let again = RepartitionRecord::decode(&bytes, set).expect("its encoding decodes");
                assert_eq!(again, r);
            }
            Err(e) => assert!(!e.code.is_empty() && !e.reason.is_empty()),
        },
        1 => match ResultRecord::decode(payload, set) {
            Ok(r) => {
                let bytes = serde_json::to_vec(&r).expect("a record encodes");
                let again = ResultRecord::decode(&bytes, set).expect("its encoding decodes");
                assert_eq!(again, r);
            }
            Err(e) => assert!(!e.code.is_empty() && !e.reason.is_empty()),
        },
        2 => {
            let lists = Lists::new(1_000, None);
            if let Err(e) = lists.apply_json(payload) {
                assert!(!e.to_string().is_empty());
            }
            if let Ok(text) = std::str::from_utf8(payload)
                && let Err(e) = lists.load_str(text)
            {
                assert!(!e.to_string().is_empty());
            }
        }
        _ => {
            let Ok(d) = serde_json::from_slice::<Decision>(payload) else {
                return;
            };
            let row = DecisionRow::from(&d);
            let back = Decision::try_from(row).expect("a stored decision reads back");
            assert_eq!(back, d, "a stored decision reads back equal");
        }
    }
});
