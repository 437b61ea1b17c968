//! The locator index's verdicts: order, gaps, forks, unknown and expired publishers.

mod common;

use zorgmesh_protocol::batch::BatchBody;
use zorgmesh_protocol::index::{BatchOutcome, BatchRejection, IndexLimits};
use zorgmesh_protocol::publisher::{BatchPolicy, PublisherLog};
use zorgmesh_protocol::LocatorIndex;

fn three_batches() -> Vec<zorgmesh_protocol::SignedBatch> {
    let key = common::publisher_key();
    let mut log = PublisherLog::new(common::node_id(&key), BatchPolicy::default(), None);
    let mut out = Vec::new();
    for (i, bsn) in ["999911120", "111222333", "123456782"].iter().enumerate() {
        log.stage(common::entry(&key, bsn, &[("Patient", 1)]), i as u64);
        out.push(log.flush(i as u64, &key).unwrap());
    }
    out
}

#[test]
fn batches_in_order_are_applied() {
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&key));
    for batch in three_batches() {
        assert!(matches!(
            index.receive_batch(batch, 10).unwrap(),
            BatchOutcome::Applied { .. }
        ));
    }
    assert_eq!(index.live_entries(), 3);
    assert_eq!(index.publisher_heads()[&common::node_id(&key)], 3);
}

#[test]
fn a_gap_is_buffered_then_filled() {
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&key));
    let batches = three_batches();
    assert_eq!(
        index.receive_batch(batches[2].clone(), 10).unwrap(),
        BatchOutcome::Buffered {
            missing_from: 1,
            missing_to: 2
        }
    );
    assert_eq!(index.live_entries(), 0);
    index.receive_batch(batches[0].clone(), 10).unwrap();
    let outcome = index.receive_batch(batches[1].clone(), 10).unwrap();
    assert!(
        matches!(outcome, BatchOutcome::Applied { ref sequences, .. } if sequences == &[2, 3]),
        "{outcome:?}"
    );
    assert_eq!(index.live_entries(), 3);
    assert_eq!(
        index.receive_batch(batches[0].clone(), 10).unwrap(),
        BatchOutcome::Duplicate
    );
}

#[test]
fn unknown_publisher_is_rejected() {
    let mut index = LocatorIndex::new(IndexLimits::default());
    let err = index.receive_batch(common::golden_batch(), 10).unwrap_err();
    assert!(matches!(err, BatchRejection::UnknownPublisher(_)));
    assert!(err.is_misbehaviour());
}

#[test]
fn expired_certificate_is_rejected() {
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    let mut info = common::publisher_info(&key);
    info.valid_until_ms = 5;
    index.admit_publisher(info);
    assert!(matches!(
        index.receive_batch(common::golden_batch(), 10),
        Err(BatchRejection::CertificateNotValid(_))
    ));
}

#[test]
fn a_second_batch_with_the_same_sequence_is_a_fork() {
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&key));
    index.receive_batch(common::golden_batch(), 10).unwrap();
    let mut other: BatchBody = common::golden_batch().body;
    other.created_at_ms += 1;
    let forged = other.sign(&key);
    assert!(matches!(
        index.receive_batch(forged, 10),
        Err(BatchRejection::Fork { sequence: 1, .. })
    ));
}

#[test]
fn a_batch_signed_by_another_key_is_rejected() {
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&key));
    let intruder = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let mut batch = common::golden_batch();
    batch.signature = {
        use ed25519_dalek::Signer;
        intruder.sign(&batch.body.signing_bytes()).to_bytes()
    };
    assert!(matches!(
        index.receive_batch(batch, 10),
        Err(BatchRejection::Signature(_))
    ));
    assert_eq!(index.live_entries(), 0);
}

#[test]
fn publisher_log_cuts_by_size_and_window() {
    let key = common::publisher_key();
    let policy = BatchPolicy {
        max_entries: 2,
        window_ms: 100,
    };
    let mut log = PublisherLog::new(common::node_id(&key), policy, None);
    log.stage(common::entry(&key, "999911120", &[("Patient", 1)]), 0);
    assert_eq!(log.next_deadline(), Some(100));
    assert!(log.poll(50, &key).is_none());
    assert!(log.poll(100, &key).is_some());
    log.stage(common::entry(&key, "999911120", &[("Patient", 1)]), 200);
    log.stage(common::entry(&key, "111222333", &[("Patient", 1)]), 201);
    let batch = log.poll(201, &key).expect("size reached");
    assert_eq!(batch.body.sequence, 2);
    assert_eq!(batch.body.entries.len(), 2);
    assert!(log.poll(10_000, &key).is_none());
}

#[test]
fn batch_verification_finds_the_bad_one() {
    let mut batches = three_batches();
    batches[1].signature[0] ^= 1;
    let refs: Vec<_> = batches.iter().collect();
    let results = zorgmesh_protocol::SignedBatch::verify_many(&refs);
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
    assert!(results[2].is_ok());
}

#[test]
fn a_snapshot_replaces_the_log_prefix_and_the_chain_continues_after_it() {
    use zorgmesh_protocol::index::SnapshotOutcome;
    use zorgmesh_protocol::snapshot::cut_snapshot;
    let key = common::publisher_key();
    let node = common::node_id(&key);
    let mut log = PublisherLog::new(node, BatchPolicy::default(), None);
    let mut batches = Vec::new();
    for (i, bsn) in ["999911120", "111222333", "123456782", "100000009"]
        .iter()
        .enumerate()
    {
        log.stage(common::entry(&key, bsn, &[("Patient", 1)]), i as u64);
        batches.push(log.flush(i as u64, &key).unwrap());
    }
    let mut full = LocatorIndex::new(IndexLimits::default());
    full.admit_publisher(common::publisher_info(&key));
    for batch in &batches[..3] {
        full.receive_batch(batch.clone(), 10).unwrap();
    }
    let chunks = cut_snapshot(
        &key,
        3,
        full.head_hash(&node).unwrap(),
        full.publisher_entries(&node),
        10,
    );

    // A node that never saw the first three batches installs the snapshot ...
    let mut fresh = LocatorIndex::new(IndexLimits::default());
    fresh.admit_publisher(common::publisher_info(&key));
    assert_eq!(
        fresh.install_snapshot(&chunks, 10).unwrap(),
        SnapshotOutcome::Installed { head: 3 }
    );
    assert_eq!(fresh.live_entries(), 3);
    // ... and the log continues from it.
    assert!(matches!(
        fresh.receive_batch(batches[3].clone(), 10).unwrap(),
        BatchOutcome::Applied { .. }
    ));
    assert_eq!(fresh.live_entries(), 4);
    assert_eq!(
        fresh.install_snapshot(&chunks, 10).unwrap(),
        SnapshotOutcome::Stale
    );

    // Tampered or incomplete snapshots are refused.
    let mut tampered = chunks.clone();
    tampered[0].body.entries.pop();
    let mut other = LocatorIndex::new(IndexLimits::default());
    other.admit_publisher(common::publisher_info(&key));
    assert!(matches!(
        other.install_snapshot(&tampered, 10),
        Err(BatchRejection::Signature(_))
    ));
    assert!(other.install_snapshot(&[], 10).is_err());
    assert_eq!(other.live_entries(), 0);
    let mut bigger = LocatorIndex::new(IndexLimits::default());
    bigger.admit_publisher(common::publisher_info(&key));
    let many: Vec<_> = (0..5000u32)
        .map(|n| {
            let mut e = common::entry(&key, "999911120", &[("Patient", 1)]);
            e.patient.0[..4].copy_from_slice(&n.to_be_bytes());
            e
        })
        .collect();
    let parts = cut_snapshot(&key, 7, [1; 32], many, 10);
    assert_eq!(parts.len(), 2);
    assert!(
        bigger.install_snapshot(&parts[..1], 10).is_err(),
        "a missing part is refused"
    );
    bigger.install_snapshot(&parts, 10).unwrap();
    assert_eq!(bigger.live_entries(), 5000);
}

#[test]
fn a_revoked_publisher_leaves_the_index_and_stays_out() {
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&key));
    let mut batches = three_batches();
    let last = batches.pop().unwrap();
    for batch in batches {
        index.receive_batch(batch, 10).unwrap();
    }
    assert_eq!(index.live_entries(), 2);
    assert_eq!(index.revoke_publisher(common::node_id(&key)), Ok(2));
    assert_eq!(index.live_entries(), 0);
    assert_eq!(index.store().patient_count(), 0);
    assert!(index.publisher_heads().is_empty());
    assert!(!index.admit_publisher(common::publisher_info(&key)));
    assert_eq!(
        index.receive_batch(last, 10),
        Err(BatchRejection::UnknownPublisher(common::node_id(&key)))
    );
}

#[test]
fn a_newer_revocation_list_takes_its_keys_out_and_a_stale_or_forged_one_does_nothing() {
    use zorgmesh_protocol::revocation::{
        Revocation, RevocationListBody, RevocationState, SignedRevocationList,
    };
    let ca = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let ca_public = ca.verifying_key().to_bytes();
    let key = common::publisher_key();
    let mut index = LocatorIndex::new(IndexLimits::default());
    index.admit_publisher(common::publisher_info(&key));
    for batch in three_batches() {
        index.receive_batch(batch, 10).unwrap();
    }
    let revocation = |node| Revocation {
        node,
        name: "umcg".into(),
        revoked_at_ms: 5,
        not_after: i64::MAX,
        reason: "key compromised".into(),
    };
    let first =
        RevocationListBody::empty("nl").successor(vec![revocation(common::node_id(&key))], 5);
    let first = SignedRevocationList::sign(first, &ca);
    let mut state = RevocationState::default();
    assert_eq!(state.check(&first, &ca_public, "nl"), Ok(true));
    let mut forged = first.clone();
    forged.body.sequence = 9;
    assert!(state.check(&forged, &ca_public, "nl").is_err());
    assert!(state.check(&first, &ca_public, "be").is_err());

    let applied = state.apply(first.clone(), &mut index);
    assert_eq!(applied.sequence, 1);
    assert_eq!(applied.newly_revoked, vec![common::node_id(&key)]);
    assert_eq!(applied.removed_entries, 3);
    assert_eq!(applied.revoked_logs, vec![common::node_id(&key)]);
    assert_eq!(index.live_entries(), 0);
    assert!(state.is_revoked(&common::node_id(&key)));
    assert_eq!(state.sequence(), 1);
    // The same list again is stale and changes nothing.
    assert_eq!(state.check(&first, &ca_public, "nl"), Ok(false));
    let again = state.apply(first, &mut index);
    assert!(again.newly_revoked.is_empty() && again.removed_entries == 0);
}
