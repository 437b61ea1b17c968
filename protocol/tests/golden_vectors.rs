//! Golden vectors: these bytes are the v1 wire format. If a test here fails, the wire format
//! changed: that needs a new protocol version, not new vectors. SPEC.md quotes the same values.

mod common;

use zorgmesh_protocol::batch::SignedBatch;
use zorgmesh_protocol::codec;
use zorgmesh_protocol::patient::{Bsn, PatientKey};

const GOLDEN_PATIENT_KEY_999911120: &str =
    "2135c0bc97cc7c026ed2a4b7d2d84529da8df252574ca1140b3e4f3f7860df25";
const GOLDEN_PUBLISHER: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
const GOLDEN_BODY_HEX: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01000000000000000000000000000000000000000000000000000000000000000000000000000000f4a9da769b01000002000000000000002135c0bc97cc7c026ed2a4b7d2d84529da8df252574ca1140b3e4f3f7860df25ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c02000000000000000900000000000000436f6e646974696f6e02000000070000000000000050617469656e740100000000a8da769b0100000062112f11dfde138e9cada30f5dfb6afb9b90509b07e1752efab60b5eb8f0c586ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01000000000000000b000000000000004f62736572766174696f6e0500000000a8da769b01000000";
const GOLDEN_SIGNATURE_HEX: &str = "bbb274666ab046f42d36278159feb3922d1aeda38c547adb3a2629bd3d903cd82ca616e458abe94825c454a919ebf3c4bb14a79bc0949b96beee181d9626e905";
const GOLDEN_BATCH_HASH_HEX: &str =
    "7adbcaa91139cb87d85d8a316d16c290cfd459bccd6106bbd552af8eed070433";

#[test]
fn patient_key_vector() {
    let key = PatientKey::derive(&common::locator_key(), &Bsn::parse("999911120").unwrap());
    assert_eq!(key.to_hex(), GOLDEN_PATIENT_KEY_999911120);
}

#[test]
fn batch_vector() {
    let batch = common::golden_batch();
    assert_eq!(batch.body.publisher.to_hex(), GOLDEN_PUBLISHER);
    assert_eq!(hex::encode(codec::encode(&batch.body)), GOLDEN_BODY_HEX);
    assert_eq!(hex::encode(batch.signature), GOLDEN_SIGNATURE_HEX);
    assert_eq!(hex::encode(batch.body.hash()), GOLDEN_BATCH_HASH_HEX);
}

#[test]
fn golden_bytes_decode_and_verify() {
    let mut bytes = hex::decode(GOLDEN_BODY_HEX).unwrap();
    bytes.extend(hex::decode(GOLDEN_SIGNATURE_HEX).unwrap());
    let batch = SignedBatch::from_bytes(&bytes).unwrap();
    batch.verify().unwrap();
    assert_eq!(batch, common::golden_batch());
}

/// The signature verifies with nothing but an ed25519 library, the domain prefix of SPEC.md
/// and the body bytes: no zorgmesh types involved.
#[test]
fn signature_verifies_from_spec_alone() {
    use ed25519_dalek::{Signature, VerifyingKey};
    let mut message = b"zorgmesh/locator-batch/v1\n".to_vec();
    message.extend(hex::decode(GOLDEN_BODY_HEX).unwrap());
    let publisher: [u8; 32] = hex::decode(GOLDEN_PUBLISHER).unwrap().try_into().unwrap();
    let signature: [u8; 64] = hex::decode(GOLDEN_SIGNATURE_HEX)
        .unwrap()
        .try_into()
        .unwrap();
    VerifyingKey::from_bytes(&publisher)
        .unwrap()
        .verify_strict(&message, &Signature::from_bytes(&signature))
        .unwrap();
    // and the hash chain is SHA-256 over its own domain prefix and the same body bytes
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"zorgmesh/locator-batch-hash/v1\n");
    hasher.update(hex::decode(GOLDEN_BODY_HEX).unwrap());
    assert_eq!(hex::encode(hasher.finalize()), GOLDEN_BATCH_HASH_HEX);
}

#[test]
fn print_vectors_for_spec() {
    let batch = common::golden_batch();
    println!("publisher {}", batch.body.publisher.to_hex());
    println!("body {}", hex::encode(codec::encode(&batch.body)));
    println!("signature {}", hex::encode(batch.signature));
    println!("hash {}", hex::encode(batch.body.hash()));
    let key = PatientKey::derive(&common::locator_key(), &Bsn::parse("999911120").unwrap());
    println!("patient {}", key.to_hex());
}
