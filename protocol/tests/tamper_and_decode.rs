//! A flipped bit in any signed field is rejected; truncated, oversized and random input is an
//! error, never a panic.

mod common;

use proptest::prelude::*;
use zorgmesh_protocol::batch::{SignedBatch, MAX_BATCH_BYTES};
use zorgmesh_protocol::codec::DecodeError;
use zorgmesh_protocol::fetch::{FetchFrame, FetchRequest};
use zorgmesh_protocol::gossip::GossipMessage;

#[test]
fn every_flipped_bit_is_rejected() {
    let bytes = common::golden_batch().to_bytes();
    let mut decoded_but_rejected = 0;
    for bit in 0..bytes.len() * 8 {
        let mut tampered = bytes.clone();
        tampered[bit / 8] ^= 1 << (bit % 8);
        match SignedBatch::from_bytes(&tampered) {
            Err(_) => {}
            Ok(batch) => {
                assert!(
                    batch.verify().is_err(),
                    "flipping bit {bit} left a batch whose signature still verifies"
                );
                decoded_but_rejected += 1;
            }
        }
    }
    // Most flips land in fields that still decode: the signature must catch them.
    assert!(decoded_but_rejected > bytes.len() * 4);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = common::golden_batch().to_bytes();
    for len in 0..bytes.len() {
        assert!(
            SignedBatch::from_bytes(&bytes[..len]).is_err(),
            "length {len}"
        );
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = common::golden_batch().to_bytes();
    bytes.push(0);
    assert_eq!(
        SignedBatch::from_bytes(&bytes),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let bytes = vec![0u8; MAX_BATCH_BYTES + 1];
    assert!(matches!(
        SignedBatch::from_bytes(&bytes),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn a_huge_length_prefix_does_not_allocate() {
    // publisher, sequence, previous hash, created_at, then an entry count of 2^60.
    let mut bytes = vec![0u8; 32 + 8 + 32 + 8];
    bytes[32] = 1;
    bytes.extend((1u64 << 60).to_le_bytes());
    assert!(SignedBatch::from_bytes(&bytes).is_err());
}

#[test]
fn unsorted_entries_are_invalid() {
    let mut batch = common::golden_batch();
    batch.body.entries.reverse();
    assert!(SignedBatch::from_bytes(&batch.to_bytes()).is_err());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedBatch::from_bytes(&bytes);
        let _ = GossipMessage::from_bytes(&bytes);
        let _ = FetchRequest::from_bytes(&bytes);
        let _ = FetchFrame::from_bytes(&bytes);
    }

    #[test]
    fn mutated_batches_never_panic_and_never_verify_when_changed(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        let original = common::golden_batch().to_bytes();
        let mut bytes = original.clone();
        for (pos, value) in edits {
            let at = pos % bytes.len();
            bytes[at] = value;
        }
        if let Ok(batch) = SignedBatch::from_bytes(&bytes) {
            if bytes != original {
                prop_assert!(batch.verify().is_err());
            }
        }
    }
}
