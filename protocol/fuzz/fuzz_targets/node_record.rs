//! SignedNodeRecord with a hand-over chain: decode, validate, verify.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::codec;
use zorgmesh_protocol::record::{SignedNodeRecord, MAX_RECORD_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = codec::decode::<SignedNodeRecord>(data, MAX_RECORD_BYTES) {
        let _ = record.record.validate();
        let _ = record.verify("fuzznet");
        let bytes = codec::encode(&record);
        assert_eq!(codec::decode::<SignedNodeRecord>(&bytes, MAX_RECORD_BYTES).ok(), Some(record));
    }
});
