//! Every size limit the spec states holds where it is built and where it is received:
//! batches and snapshot chunks are cut by entry count and encoded size, and a gossip message
//! refuses a batch above the batch limit even when the whole message is within the gossip
//! limit.

mod common;

use zorgmesh_protocol::batch::{
    runs_within_limits, BatchBody, MAX_BATCH_BYTES, MAX_ENTRIES_PER_BATCH,
};
use zorgmesh_protocol::codec::DecodeError;
use zorgmesh_protocol::gossip::{GossipMessage, MAX_GOSSIP_BYTES};
use zorgmesh_protocol::locator::{category, LocatorEntry, ENTRY_BYTES};
use zorgmesh_protocol::publisher::{BatchPolicy, PublisherLog};
use zorgmesh_protocol::record::NodeRecord;
use zorgmesh_protocol::snapshot::{cut_snapshot, SignedSnapshotChunk, MAX_CHUNK_BYTES};
use zorgmesh_protocol::{PatientKey, SignedBatch};

fn entry(key: &ed25519_dalek::SigningKey, n: u32) -> LocatorEntry {
    let mut patient = [0u8; 32];
    patient[..4].copy_from_slice(&n.to_be_bytes());
    LocatorEntry {
        patient: PatientKey(patient),
        holder: common::node_id(key),
        categories: category::MEDICATION | category::OBSERVATIONS,
        commitment: [7; 32],
        updated_at_ms: 1,
        retracted: false,
    }
}

#[test]
fn an_entry_encodes_to_its_fixed_length() {
    let key = common::publisher_key();
    let encoded = zorgmesh_protocol::codec::encode(&entry(&key, 1));
    assert_eq!(encoded.len(), ENTRY_BYTES);
}

#[test]
fn full_batches_and_snapshot_chunks_stay_within_the_byte_limit() {
    let key = common::publisher_key();
    let policy = BatchPolicy {
        max_entries: MAX_ENTRIES_PER_BATCH,
        window_ms: 10,
    };
    let mut log = PublisherLog::new(common::node_id(&key), policy, None);
    let total = 3 * MAX_ENTRIES_PER_BATCH as u32 + 5;
    for n in 0..total {
        log.stage(entry(&key, n), 0);
    }
    let mut entries = 0;
    while let Some(batch) = log.flush(20, &key) {
        let bytes = batch.to_bytes();
        assert!(
            bytes.len() <= MAX_BATCH_BYTES,
            "batch of {} bytes",
            bytes.len()
        );
        assert!(batch.body.entries.len() <= MAX_ENTRIES_PER_BATCH);
        SignedBatch::from_bytes(&bytes).expect("every cut batch decodes");
        entries += batch.body.entries.len();
    }
    assert_eq!(entries, total as usize);

    let live: Vec<LocatorEntry> = (0..total).map(|n| entry(&key, n)).collect();
    let chunks = cut_snapshot(&key, 9, [1; 32], live, 5);
    assert_eq!(chunks.len(), 4);
    let mut installed = 0;
    for chunk in &chunks {
        let bytes = chunk.to_bytes();
        assert!(
            bytes.len() <= MAX_CHUNK_BYTES,
            "chunk of {} bytes",
            bytes.len()
        );
        let decoded = SignedSnapshotChunk::from_bytes(&bytes).expect("chunk decodes");
        decoded.verify().expect("chunk signature");
        installed += decoded.body.entries.len();
    }
    assert_eq!(installed, total as usize);
}

#[test]
fn runs_are_cut_by_count_and_never_empty() {
    let key = common::publisher_key();
    let runs = runs_within_limits((0..10).map(|n| entry(&key, n)).collect(), 4);
    assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
    assert!(runs_within_limits(Vec::new(), 4).is_empty());
}

#[test]
fn a_gossip_message_refuses_a_batch_above_the_batch_limit() {
    let key = common::publisher_key();
    // Just over the batch limit, with the whole message under the gossip limit.
    let count = (MAX_BATCH_BYTES - 152) / ENTRY_BYTES + 1;
    let batch = BatchBody {
        publisher: common::node_id(&key),
        sequence: 1,
        previous_hash: [0; 32],
        created_at_ms: 1,
        entries: (0..count as u32).map(|n| entry(&key, n)).collect(),
    }
    .sign(&key);
    assert!(batch.to_bytes().len() > MAX_BATCH_BYTES);
    let record = NodeRecord {
        handovers: Vec::new(),
        node: common::node_id(&key),
        certificate_der: vec![0x30; 600],
        data_address: "127.0.0.1:4000".into(),
        issued_at_ms: 1,
    }
    .sign(&key);
    let bytes = GossipMessage::Batch { record, batch }.to_bytes();
    assert!(bytes.len() <= MAX_GOSSIP_BYTES);
    assert!(matches!(
        GossipMessage::from_bytes(&bytes),
        Err(DecodeError::TooLarge { limit, .. }) if limit == MAX_BATCH_BYTES
    ));
}
