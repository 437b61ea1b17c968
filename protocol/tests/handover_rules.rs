//! Hand-overs: a log continues under a new key; the index verifies each batch under the key
//! in force at its sequence, and refuses chains that contradict each other.

mod common;

use ed25519_dalek::SigningKey;
use zorgmesh_protocol::handover::{verify_chain, HandOverBody, HandOverError, SignedHandOver};
use zorgmesh_protocol::index::{
    AdmitError, BatchOutcome, BatchRejection, ChainStanding, IndexLimits,
};
use zorgmesh_protocol::publisher::{BatchPolicy, PublisherLog};
use zorgmesh_protocol::snapshot::cut_snapshot_of;
use zorgmesh_protocol::{LocatorIndex, SignedBatch};

const NETWORK: &str = "test";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn sign_handover(
    log: &SigningKey,
    old: &SigningKey,
    new: &SigningKey,
    from: u64,
    previous: [u8; 32],
) -> SignedHandOver {
    HandOverBody {
        version: 1,
        network: NETWORK.into(),
        log: common::node_id(log),
        old_key: common::node_id(old),
        new_key: common::node_id(new),
        new_certificate_der: vec![0x30; 300],
        from_sequence: from,
        previous_hash: previous,
        issued_at_ms: 5,
    }
    .sign(old, new)
}

/// Three batches under `first`, a hand-over to `second`, three batches under `second`.
fn rotated_log() -> (Vec<SignedBatch>, SignedHandOver) {
    let (first, second) = (common::publisher_key(), key(9));
    let mut log = PublisherLog::new(common::node_id(&first), BatchPolicy::default(), None);
    let mut batches = Vec::new();
    let bsns = [
        "999911120",
        "111222333",
        "123456782",
        "999999990",
        "111111110",
        "222222220",
    ];
    for (i, bsn) in bsns.iter().enumerate() {
        if i == 3 {
            assert_eq!(log.next_sequence(), 4);
        }
        let signer = if i < 3 { &first } else { &second };
        log.stage(common::entry(&first, bsn, &[("Patient", 1)]), i as u64);
        batches.push(log.flush(i as u64, signer).unwrap());
    }
    let handover = sign_handover(&first, &first, &second, 4, batches[2].body.hash());
    (batches, handover)
}

#[test]
fn a_handed_over_log_continues_under_the_new_key() {
    let first = common::publisher_key();
    let (batches, handover) = rotated_log();
    let log = common::node_id(&first);
    assert_eq!(
        verify_chain(log, NETWORK, std::slice::from_ref(&handover)),
        Ok(common::node_id(&key(9)))
    );

    let mut index = LocatorIndex::new(IndexLimits::default());
    let chain = vec![handover.body.clone()];
    assert_eq!(
        index.admit_log(common::publisher_info(&first), &chain),
        Ok(ChainStanding::Current)
    );
    for batch in batches {
        assert!(matches!(
            index.receive_batch(batch, 10),
            Ok(BatchOutcome::Applied { .. })
        ));
    }
    assert_eq!(index.live_entries(), 6);
    assert_eq!(index.publisher_heads()[&log], 6);
    assert_eq!(index.key_at(&log, 3), Some(log));
    assert_eq!(index.current_key(&log), Some(common::node_id(&key(9))));
}

#[test]
fn without_the_hand_over_the_new_keys_batches_do_not_verify() {
    let first = common::publisher_key();
    let (batches, handover) = rotated_log();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&first));
    for batch in &batches[..3] {
        index.receive_batch(batch.clone(), 10).unwrap();
    }
    assert!(matches!(
        index.receive_batch(batches[3].clone(), 10),
        Err(BatchRejection::Signature(_))
    ));
    // The hand-over arrives (with the next record): the same batch now applies.
    let chain = vec![handover.body];
    assert_eq!(
        index.admit_log(common::publisher_info(&first), &chain),
        Ok(ChainStanding::Current)
    );
    assert!(matches!(
        index.receive_batch(batches[3].clone(), 10),
        Ok(BatchOutcome::Applied { .. })
    ));
    // The old key signing past the hand-over point is refused.
    let mut forged = batches[4].clone();
    forged.signature = {
        let mut b = forged.clone();
        b = b.body.clone().sign(&first);
        b.signature
    };
    assert!(matches!(
        index.receive_batch(forged, 10),
        Err(BatchRejection::Signature(_))
    ));
}

#[test]
fn older_records_are_stale_and_contradicting_chains_refused() {
    let first = common::publisher_key();
    let (batches, handover) = rotated_log();
    let mut index = LocatorIndex::new(IndexLimits::default());
    let chain = vec![handover.body.clone()];
    index
        .admit_log(common::publisher_info(&first), &chain)
        .unwrap();
    assert_eq!(
        index.admit_log(common::publisher_info(&first), &[]),
        Ok(ChainStanding::Stale)
    );
    // A second, different successor of the same key.
    let other = sign_handover(&first, &first, &key(10), 4, batches[2].body.hash());
    assert!(matches!(
        index.admit_log(
            common::publisher_info(&first),
            std::slice::from_ref(&other.body)
        ),
        Err(AdmitError::HandOverConflict { .. })
    ));
    // A hand-over from a point the log already passed under its old key.
    let mut fresh = LocatorIndex::new(IndexLimits::default());
    fresh.admit_publisher(common::publisher_info(&first));
    for batch in &batches[..3] {
        fresh.receive_batch(batch.clone(), 10).unwrap();
    }
    let early = sign_handover(&first, &first, &key(10), 2, batches[0].body.hash());
    assert!(matches!(
        fresh.admit_log(common::publisher_info(&first), &[early.body]),
        Err(AdmitError::HandOverConflict { .. })
    ));
    // A hand-over naming another previous batch than the head.
    let wrong = sign_handover(&first, &first, &key(10), 4, [7; 32]);
    assert!(matches!(
        fresh.admit_log(common::publisher_info(&first), &[wrong.body]),
        Err(AdmitError::HandOverConflict { .. })
    ));
}

#[test]
fn chains_are_checked_link_by_link() {
    let (first, second, third) = (common::publisher_key(), key(9), key(10));
    let log = common::node_id(&first);
    let one = sign_handover(&first, &first, &second, 4, [1; 32]);
    let two = sign_handover(&first, &second, &third, 6, [2; 32]);
    assert_eq!(
        verify_chain(log, NETWORK, &[one.clone(), two.clone()]),
        Ok(common::node_id(&third))
    );
    // Out of order, skipping a link, another network, a bad signature.
    assert!(verify_chain(log, NETWORK, &[two.clone(), one.clone()]).is_err());
    assert!(verify_chain(log, NETWORK, std::slice::from_ref(&two)).is_err());
    assert!(verify_chain(log, "other", std::slice::from_ref(&one)).is_err());
    let mut bad = one.clone();
    bad.new_signature[0] ^= 1;
    assert!(matches!(
        verify_chain(log, NETWORK, &[bad]),
        Err(HandOverError::Signature {
            which: "new-key",
            ..
        })
    ));
    // Going back in the log.
    let back = sign_handover(&first, &second, &third, 3, [2; 32]);
    assert!(verify_chain(log, NETWORK, &[one, back]).is_err());
}

#[test]
fn revoking_a_handed_over_key_leaves_the_log_and_revoking_the_current_key_removes_it() {
    let first = common::publisher_key();
    let (batches, handover) = rotated_log();
    let log = common::node_id(&first);
    let mut index = LocatorIndex::new(IndexLimits::default());
    index
        .admit_log(
            common::publisher_info(&first),
            std::slice::from_ref(&handover.body),
        )
        .unwrap();
    for batch in batches {
        index.receive_batch(batch, 10).unwrap();
    }
    assert_eq!(index.revoke_key(log), None);
    assert_eq!(index.live_entries(), 6);
    assert_eq!(index.revoke_key(common::node_id(&key(9))), Some((log, 6)));
    assert_eq!(index.live_entries(), 0);
    assert!(index
        .admit_log(common::publisher_info(&first), &[handover.body])
        .is_err());
}

#[test]
fn a_chain_ending_at_a_revoked_key_is_not_admitted() {
    let first = common::publisher_key();
    let (_, handover) = rotated_log();
    let mut index = LocatorIndex::new(IndexLimits::default());
    assert_eq!(index.revoke_key(common::node_id(&key(9))), None);
    assert!(matches!(
        index.admit_log(common::publisher_info(&first), &[handover.body]),
        Err(AdmitError::Revoked(_))
    ));
}

#[test]
fn a_snapshot_signed_by_the_new_key_covers_the_old_keys_batches() {
    let first = common::publisher_key();
    let (batches, handover) = rotated_log();
    let log = common::node_id(&first);
    let entries: Vec<_> = batches[..3]
        .iter()
        .flat_map(|b| b.body.entries.clone())
        .collect();
    // The node compacted at sequence 3 after handing over: it signs with the new key.
    let chunks = cut_snapshot_of(log, &key(9), 3, batches[2].body.hash(), entries.clone(), 20);
    let mut index = LocatorIndex::new(IndexLimits::default());
    index
        .admit_log(
            common::publisher_info(&first),
            std::slice::from_ref(&handover.body),
        )
        .unwrap();
    index.install_snapshot(&chunks, 30).unwrap();
    assert_eq!(index.live_entries(), 3);
    assert!(matches!(
        index.receive_batch(batches[3].clone(), 30),
        Ok(BatchOutcome::Applied { .. })
    ));
    // A key outside the log signs nothing.
    let foreign = cut_snapshot_of(log, &key(11), 3, batches[2].body.hash(), entries, 20);
    let mut other = LocatorIndex::new(IndexLimits::default());
    other
        .admit_log(common::publisher_info(&first), &[handover.body])
        .unwrap();
    assert!(other.install_snapshot(&foreign, 30).is_err());
}
