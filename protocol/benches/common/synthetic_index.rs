//! A synthetic national index for the index benchmarks: `patients` patients with five
//! holders each among `publishers` publishers (a multiple of five), every publisher's
//! entries as signed batches of up to 1,024, the same in every run.

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use zorgmesh_protocol::batch::{BatchBody, SignedBatch, GENESIS_HASH};
use zorgmesh_protocol::{LocatorEntry, NodeId, NodeRole, PatientKey, PublisherInfo};

pub const HOLDERS_PER_PATIENT: usize = 5;
pub const BATCH: usize = 1024;
pub const NOW_MS: u64 = 1_767_225_600_000;

pub fn patient_key(i: usize) -> PatientKey {
    PatientKey(Sha256::digest((i as u64).to_le_bytes()).into())
}

pub fn key_of(publisher: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(publisher as u64 + 1).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

pub fn info_of(key: &SigningKey) -> PublisherInfo {
    PublisherInfo {
        node: NodeId(key.verifying_key().to_bytes()),
        name: "bench".into(),
        organisation_ura: "00000001".into(),
        organisation_name: "Bench".into(),
        region: "noord".into(),
        role: NodeRole::Institution,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
    }
}

/// Publisher `p`'s log: it holds every `publishers / 5`-th patient from `p % (publishers / 5)`.
pub fn batches_of(
    p: usize,
    key: &SigningKey,
    publishers: usize,
    patients: usize,
) -> impl Iterator<Item = SignedBatch> + '_ {
    let groups = publishers / HOLDERS_PER_PATIENT;
    let node = NodeId(key.verifying_key().to_bytes());
    let mut held: Vec<PatientKey> = (p % groups..patients)
        .step_by(groups)
        .map(patient_key)
        .collect();
    held.sort();
    let mut previous_hash = GENESIS_HASH;
    let chunks: Vec<Vec<PatientKey>> = held.chunks(BATCH).map(<[_]>::to_vec).collect();
    chunks.into_iter().enumerate().map(move |(n, chunk)| {
        let entries = chunk
            .iter()
            .map(|patient| LocatorEntry {
                patient: *patient,
                holder: node,
                categories: 0b10_0101,
                commitment: patient.0,
                updated_at_ms: NOW_MS,
                retracted: false,
            })
            .collect();
        let batch = BatchBody {
            publisher: node,
            sequence: n as u64 + 1,
            previous_hash,
            created_at_ms: NOW_MS,
            entries,
        }
        .sign(key);
        previous_hash = batch.body.hash();
        batch
    })
}
