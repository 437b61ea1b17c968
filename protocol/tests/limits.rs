//! Every size limit the spec states holds where it is built and where it is received:
//! batches and snapshot chunks are cut by encoded size, and a gossip message refuses a batch
//! above the batch limit even when the whole message is within the gossip limit.

mod common;

use zorgmesh_protocol::batch::{BatchBody, MAX_BATCH_BYTES, MAX_ENTRIES_PER_BATCH};
use zorgmesh_protocol::codec::DecodeError;
use zorgmesh_protocol::gossip::{GossipMessage, MAX_GOSSIP_BYTES};
use zorgmesh_protocol::locator::{LocatorEntry, ResourceCount, MAX_COUNTS_PER_ENTRY};
use zorgmesh_protocol::publisher::{BatchPolicy, PublisherLog};
use zorgmesh_protocol::record::NodeRecord;
use zorgmesh_protocol::snapshot::{cut_snapshot, SignedSnapshotChunk, MAX_CHUNK_BYTES};
use zorgmesh_protocol::{PatientKey, SignedBatch};

/// An entry as large as the rules allow in count of types (64 types of 12 characters).
fn heavy_entry(key: &ed25519_dalek::SigningKey, n: u32) -> LocatorEntry {
    let mut patient = [0u8; 32];
    patient[..4].copy_from_slice(&n.to_be_bytes());
    LocatorEntry {
        patient: PatientKey(patient),
        holder: common::node_id(key),
        counts: (0..MAX_COUNTS_PER_ENTRY)
            .map(|i| ResourceCount {
                resource_type: format!("T{i:011}"),
                count: 1,
            })
            .collect(),
        updated_at_ms: 1,
        retracted: false,
    }
}

#[test]
fn a_full_count_of_heavy_entries_is_cut_into_batches_within_the_byte_limit() {
    let key = common::publisher_key();
    let policy = BatchPolicy {
        max_entries: MAX_ENTRIES_PER_BATCH,
        window_ms: 10,
    };
    let mut log = PublisherLog::new(common::node_id(&key), policy, None);
    for n in 0..MAX_ENTRIES_PER_BATCH as u32 {
        log.stage(heavy_entry(&key, n), 0);
    }
    let mut entries = 0;
    let mut batches = 0;
    while let Some(batch) = log.flush(20, &key) {
        let bytes = batch.to_bytes();
        assert!(
            bytes.len() <= MAX_BATCH_BYTES,
            "batch of {} bytes",
            bytes.len()
        );
        SignedBatch::from_bytes(&bytes).expect("every cut batch decodes");
        entries += batch.body.entries.len();
        batches += 1;
    }
    assert_eq!(entries, MAX_ENTRIES_PER_BATCH);
    assert!(
        batches > 1,
        "the byte limit, not the count, cut these batches"
    );
}

#[test]
fn snapshot_chunks_are_cut_by_encoded_size() {
    let key = common::publisher_key();
    let entries: Vec<LocatorEntry> = (0..MAX_ENTRIES_PER_BATCH as u32)
        .map(|n| heavy_entry(&key, n))
        .collect();
    let chunks = cut_snapshot(&key, 9, [1; 32], entries, 5);
    assert!(chunks.len() > 1);
    let mut total = 0;
    for chunk in &chunks {
        let bytes = chunk.to_bytes();
        assert!(
            bytes.len() <= MAX_CHUNK_BYTES,
            "chunk of {} bytes",
            bytes.len()
        );
        let decoded = SignedSnapshotChunk::from_bytes(&bytes).expect("chunk decodes");
        decoded.verify().expect("chunk signature");
        assert_eq!(decoded.body.parts as usize, chunks.len());
        total += decoded.body.entries.len();
    }
    assert_eq!(total, MAX_ENTRIES_PER_BATCH);
}

#[test]
fn a_gossip_message_refuses_a_batch_above_the_batch_limit() {
    let key = common::publisher_key();
    // Just over the batch limit, with the whole message under the gossip limit.
    let mut entries = Vec::new();
    let batch = loop {
        entries.push(heavy_entry(&key, entries.len() as u32));
        let batch = BatchBody {
            publisher: common::node_id(&key),
            sequence: 1,
            previous_hash: [0; 32],
            created_at_ms: 1,
            entries: entries.clone(),
        }
        .sign(&key);
        if batch.to_bytes().len() > MAX_BATCH_BYTES {
            break batch;
        }
    };
    let record = NodeRecord {
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
