//! Fixtures shared by the protocol tests: fixed keys and a small batch.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use zorgmesh_protocol::batch::{BatchBody, SignedBatch, GENESIS_HASH};
use zorgmesh_protocol::identity::{NodeRole, PublisherInfo};
use zorgmesh_protocol::locator::{
    category_of, holding_commitment, HeldResource, LocatorEntry, NodeId,
};
use zorgmesh_protocol::patient::PatientKey;

pub fn publisher_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

pub fn node_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

/// A fixture patient key: any 32 bytes serve a batch. These are the values protocol v1
/// derived (HMAC-SHA256 under 32 bytes of 0x2a), kept so the batch vectors stay put.
pub fn fixture_patient_key(bsn: &str) -> PatientKey {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&[42u8; 32]).unwrap();
    mac.update(b"zorgmesh/patient-key/v1\n");
    mac.update(bsn.as_bytes());
    PatientKey(mac.finalize().into_bytes().into())
}

/// An entry for a holder of `counts` resources per type: their categories, and the
/// commitment (salt 32 bytes of 0x01) to resources `<type>/<n>` version 1.
pub fn entry(key: &SigningKey, bsn: &str, counts: &[(&str, u32)]) -> LocatorEntry {
    let resources: Vec<HeldResource> = counts
        .iter()
        .flat_map(|(t, c)| {
            (0..*c).map(move |n| HeldResource {
                resource_type: (*t).to_owned(),
                id: n.to_string(),
                version: 1,
            })
        })
        .collect();
    LocatorEntry {
        patient: fixture_patient_key(bsn),
        holder: node_id(key),
        categories: counts.iter().fold(0, |bits, (t, _)| bits | category_of(t)),
        commitment: holding_commitment(&[1; 32], &resources),
        updated_at_ms: 1_767_225_600_000,
        retracted: false,
    }
}

/// The golden batch: sequence 1, two entries, fixed time.
pub fn golden_batch() -> SignedBatch {
    let key = publisher_key();
    let mut entries = vec![
        entry(&key, "999911120", &[("Condition", 2), ("Patient", 1)]),
        entry(&key, "111222333", &[("Observation", 5)]),
    ];
    entries.sort_by_key(|e| e.patient);
    BatchBody {
        publisher: node_id(&key),
        sequence: 1,
        previous_hash: GENESIS_HASH,
        created_at_ms: 1_767_225_600_500,
        entries,
    }
    .sign(&key)
}

pub fn publisher_info(key: &SigningKey) -> PublisherInfo {
    PublisherInfo {
        node: node_id(key),
        name: "umcg".into(),
        organisation_ura: "00000001".into(),
        organisation_name: "UMC Groningen".into(),
        region: "noord".into(),
        role: NodeRole::Institution,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
    }
}
