//! SignedBatch: decode, check, verify; whatever decodes encodes back to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::SignedBatch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = SignedBatch::from_bytes(data) {
        let _ = batch.body.validate();
        let _ = batch.verify();
        let _ = batch.body.hash();
        assert_eq!(SignedBatch::from_bytes(&batch.to_bytes()).ok(), Some(batch));
    }
});
