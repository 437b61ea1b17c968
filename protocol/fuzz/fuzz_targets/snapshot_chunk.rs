//! SignedSnapshotChunk: decode, validate, verify; install into an index that knows no
//! publisher (refused, no panic).
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::index::IndexLimits;
use zorgmesh_protocol::snapshot::SignedSnapshotChunk;
use zorgmesh_protocol::LocatorIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(chunk) = SignedSnapshotChunk::from_bytes(data) {
        let _ = chunk.body.validate();
        let _ = chunk.verify();
        let mut index = LocatorIndex::new(IndexLimits::default());
        let _ = index.install_snapshot(std::slice::from_ref(&chunk), 0);
        assert_eq!(SignedSnapshotChunk::from_bytes(&chunk.to_bytes()).ok(), Some(chunk));
    }
});
