//! Golden vectors: these bytes are the wire format of protocol v2 (patient keys from the
//! threshold OPRF; entries with data categories and a holding commitment instead of counts). If a test here fails, the wire format
//! changed: that needs a new protocol version, not new vectors. SPEC.md quotes the same values.

mod common;

use curve25519_dalek::scalar::Scalar;
use zorgmesh_protocol::batch::SignedBatch;
use zorgmesh_protocol::codec;
use zorgmesh_protocol::oprf::{
    self, deal_with_coefficients, patient_input, patient_key_with_whole_key, EvaluationRequest,
};
use zorgmesh_protocol::patient::Bsn;

/// The OPRF vectors (SPEC.md, "Patient keys"): key k = 32 bytes of 0x2a reduced mod ℓ,
/// second coefficient 32 bytes of 0x07 reduced, 2-of-3, blind 32 bytes of 0x05 reduced.
fn golden_scalar(byte: u8) -> Scalar {
    Scalar::from_bytes_mod_order([byte; 32])
}
const GOLDEN_OPRF_KEY: &str = "50823e70f563057a7df03ae46c366c002a2a2a2a2a2a2a2a2a2a2a2a2a2a2a0a";
const GOLDEN_OPRF_PUBLIC: &str = "b69cf8ad48046990738802ea560d1000730ad86567aaf1ecaafbb5d32287e17d";
const GOLDEN_OPRF_INPUT: &str = "7a6f72676d6573682f70617469656e742d6b65792f76320a687474703a2f2f666869722e6e6c2f666869722f4e616d696e6753797374656d2f62736e7c393939393131313230";
const GOLDEN_OPRF_OUTPUT: &str = "d994d9719e73094e2b7c0587c23b569788f9013a6a407bf58c6599e7c002894a62b6277eaca99b54909ffa10654cfc590e47a530aec2f8798f5500246ac7727a";
const GOLDEN_PATIENT_KEY_999911120: &str =
    "d994d9719e73094e2b7c0587c23b569788f9013a6a407bf58c6599e7c002894a";
const GOLDEN_SHARES: [&str; 3] = [
    "6ab54f1ae207fa28ae5a4a48954394f230313131313131313131313131313101",
    "71bc5621e90e0130b561514f9c4a9bf937383838383838383838383838383808",
    "78c35d28f0150837bc685856a351a2003f3f3f3f3f3f3f3f3f3f3f3f3f3f3f0f",
];
const GOLDEN_BLINDED: &str = "6c9097c42095ee6ea5f70989d02813141d762a1b99968f33da08ee5c65568527";
const GOLDEN_EVALUATED: [&str; 3] = [
    "ccd9eee9c8b7086a89cc7b2355317f138981b58e84f8e454910098323d6a5d54",
    "e67e1ea7595d2d34f96af82cd75b1fbca7128b13c23e0592e2843a4f1aa27b69",
    "3a21af661d965dcb673efed04a04b5546acf59e6d93803a237b67f65649a3064",
];

struct OprfVectors {
    key: String,
    public: String,
    input: String,
    output: String,
    patient: String,
    shares: Vec<String>,
    blinded: String,
    evaluated: Vec<String>,
}

fn oprf_vectors() -> OprfVectors {
    let key = golden_scalar(0x2a);
    let (commitments, shares) = deal_with_coefficients(&[key, golden_scalar(0x07)], 3);
    let bsn = Bsn::parse("999911120").unwrap();
    let input = patient_input(&bsn);
    let point = oprf::hash_to_group(&input);
    let output = oprf::finalize(&input, &(key * point));
    let blinded = golden_scalar(0x05) * point;
    let request = EvaluationRequest {
        elements: vec![blinded.compress().to_bytes()],
    };
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(0);
    OprfVectors {
        key: hex::encode(key.to_bytes()),
        public: hex::encode(commitments[0]),
        input: hex::encode(&input),
        output: hex::encode(output),
        patient: patient_key_with_whole_key(&key, &bsn).to_hex(),
        shares: shares
            .iter()
            .map(|s| hex::encode(s.secret_bytes()))
            .collect(),
        blinded: hex::encode(request.elements[0]),
        evaluated: shares
            .iter()
            .map(|s| hex::encode(oprf::evaluate(s, &request, &mut rng).unwrap().elements[0]))
            .collect(),
    }
}

#[test]
fn oprf_vectors_hold() {
    let v = oprf_vectors();
    assert_eq!(v.key, GOLDEN_OPRF_KEY);
    assert_eq!(v.public, GOLDEN_OPRF_PUBLIC);
    assert_eq!(v.input, GOLDEN_OPRF_INPUT);
    assert_eq!(v.output, GOLDEN_OPRF_OUTPUT);
    assert_eq!(v.patient, GOLDEN_PATIENT_KEY_999911120);
    assert_eq!(v.patient, v.output[..64]);
    assert_eq!(v.shares, GOLDEN_SHARES);
    assert_eq!(v.blinded, GOLDEN_BLINDED);
    assert_eq!(v.evaluated, GOLDEN_EVALUATED);
}
const GOLDEN_PUBLISHER: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
const GOLDEN_BODY_HEX: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01000000000000000000000000000000000000000000000000000000000000000000000000000000f4a9da769b01000002000000000000002135c0bc97cc7c026ed2a4b7d2d84529da8df252574ca1140b3e4f3f7860df25ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c05003086bc5a8ddeb8736991fd4744a01b0fdf042300ff70cfc878b9d2bc15f9050c00a8da769b0100000062112f11dfde138e9cada30f5dfb6afb9b90509b07e1752efab60b5eb8f0c586ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c200006e1fa837ec634d595a6c12477f0a5216b086e4b7f58b2d3facc8fa25b9d20f500a8da769b01000000";
const GOLDEN_SIGNATURE_HEX: &str = "579d7b23cf914bf48aa6b7aef282222e95296c934738615619de6c7dee6acffb36268df747c84714bb280105788b892038d4f27688bc0e9967c3c5fde3d47204";
const GOLDEN_BATCH_HASH_HEX: &str =
    "733b4780d6a476fb72114a17303da11052b57a94ecf150f8cf13f1cbfeb03a77";

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
    let v = oprf_vectors();
    println!("GOLDEN_OPRF_KEY_ {}", v.key);
    println!("GOLDEN_OPRF_PUBLIC_ {}", v.public);
    println!("GOLDEN_OPRF_INPUT_ {}", v.input);
    println!("GOLDEN_OPRF_OUTPUT_ {}", v.output);
    println!("GOLDEN_PATIENT_KEY_ {}", v.patient);
    for (i, share) in v.shares.iter().enumerate() {
        println!("GOLDEN_SHARE_{}_ {share}", i + 1);
    }
    println!("GOLDEN_BLINDED_ {}", v.blinded);
    for (i, e) in v.evaluated.iter().enumerate() {
        println!("GOLDEN_EVAL_{}_ {e}", i + 1);
    }
}

/// The revocation-list vector (SPEC.md, "Revocation lists"): CA secret key 32 bytes of 0x09,
/// network "zorgnet", sequence 1, one revocation of the batch publisher (key 0x07…).
fn golden_revocation_list() -> zorgmesh_protocol::revocation::SignedRevocationList {
    use zorgmesh_protocol::revocation::{Revocation, RevocationListBody, SignedRevocationList};
    let ca = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let body = RevocationListBody {
        version: 1,
        network: "zorgnet".into(),
        sequence: 1,
        issued_at_ms: 1_767_225_600_000,
        revocations: vec![Revocation {
            node: common::node_id(&common::publisher_key()),
            name: "zuid-b".into(),
            revoked_at_ms: 1_767_225_600_000,
            not_after: 1_798_761_600,
            reason: "key compromised".into(),
        }],
    };
    SignedRevocationList::sign(body, &ca)
}
const GOLDEN_CA_PUBLIC: &str = "fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618";
const GOLDEN_REVOCATION_LIST: &str = "0107000000000000007a6f72676e6574010000000000000000a8da769b0100000100000000000000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c06000000000000007a7569642d6200a8da769b01000080ec366b000000000f000000000000006b657920636f6d70726f6d697365648f48e5497800ef01b04cdf580cd1f1d094d0d502e916b9be6fead0f5dca7d38409cd51869b24eaa2e8d0482b5dd8f56f64a59637c495d4c53df26cf0a10e8f0f";
const GOLDEN_MEMBER_HELLO: &str = "050000000000000030030201000100000000000000";
const GOLDEN_MEMBER_REFUSED: &str =
    "01000000130000000000000063657274696669636174652072656675736564";

#[test]
fn revocation_list_and_membership_vectors() {
    use zorgmesh_protocol::membership::{MemberAnswer, MemberHello};
    let list = golden_revocation_list();
    let ca = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let ca_public = ca.verifying_key().to_bytes();
    let hello = MemberHello {
        certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        revocation_sequence: 1,
    };
    let refused = MemberAnswer::refused("certificate refused");
    println!("ca public: {}", hex::encode(ca_public));
    println!("revocation list: {}", hex::encode(list.to_bytes()));
    println!("hello: {}", hex::encode(hello.to_bytes()));
    println!("refused: {}", hex::encode(refused.to_bytes()));
    assert_eq!(hex::encode(ca_public), GOLDEN_CA_PUBLIC);
    assert_eq!(hex::encode(list.to_bytes()), GOLDEN_REVOCATION_LIST);
    let decoded = zorgmesh_protocol::revocation::SignedRevocationList::from_bytes(
        &hex::decode(GOLDEN_REVOCATION_LIST).unwrap(),
    )
    .unwrap();
    decoded.verify(&ca_public, "zorgnet").unwrap();
    assert_eq!(hex::encode(hello.to_bytes()), GOLDEN_MEMBER_HELLO);
    assert_eq!(hex::encode(refused.to_bytes()), GOLDEN_MEMBER_REFUSED);
}

#[test]
fn holding_commitment_vector() {
    use zorgmesh_protocol::locator::{holding_commitment, HeldResource};
    // Salt 32 bytes of 0x01; Condition/0, Condition/1, Patient/0, each version 1.
    let resources: Vec<HeldResource> = [("Patient", "0"), ("Condition", "1"), ("Condition", "0")]
        .iter()
        .map(|(t, id)| HeldResource {
            resource_type: (*t).into(),
            id: (*id).into(),
            version: 1,
        })
        .collect();
    assert_eq!(
        hex::encode(holding_commitment(&[1; 32], &resources)),
        "3086bc5a8ddeb8736991fd4744a01b0fdf042300ff70cfc878b9d2bc15f9050c"
    );
}

/// The hand-over vector (SPEC.md, "Hand-overs"): the batch publisher (key 0x07…) hands its
/// log over to the key 0x08… from sequence 2, after the golden batch.
fn golden_handover() -> zorgmesh_protocol::handover::SignedHandOver {
    use zorgmesh_protocol::handover::HandOverBody;
    let old = common::publisher_key();
    let new = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
    HandOverBody {
        version: 1,
        network: "zorgnet".into(),
        log: common::node_id(&old),
        old_key: common::node_id(&old),
        new_key: common::node_id(&new),
        new_certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        from_sequence: 2,
        previous_hash: common::golden_batch().body.hash(),
        issued_at_ms: 1_767_225_600_000,
    }
    .sign(&old, &new)
}

const GOLDEN_NEW_KEY: &str = "1398f62c6d1a457c51ba6a4b5f3dbd2f69fca93216218dc8997e416bd17d93ca";
const GOLDEN_HANDOVER: &str = "0107000000000000007a6f72676e6574ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c1398f62c6d1a457c51ba6a4b5f3dbd2f69fca93216218dc8997e416bd17d93ca050000000000000030030201000200000000000000733b4780d6a476fb72114a17303da11052b57a94ecf150f8cf13f1cbfeb03a7700a8da769b010000b043e81815434f535f40c2180ad5209c25e4d3db50705b8a9a9d5fb5384c36441ec63293acb72f0023f645beef7aa83b91c2707f3a8f842f032e190f1ccab70819c2939d0428069fceddeb00642a7b5e5fb526f0dd86faabbc03056248720aa32a4db1e6eca5f9257df9543b285c07a0c2425077920802f34fa26aee84a0030e";
const GOLDEN_RECORD: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01000000000000000107000000000000007a6f72676e6574ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c1398f62c6d1a457c51ba6a4b5f3dbd2f69fca93216218dc8997e416bd17d93ca050000000000000030030201000200000000000000733b4780d6a476fb72114a17303da11052b57a94ecf150f8cf13f1cbfeb03a7700a8da769b010000b043e81815434f535f40c2180ad5209c25e4d3db50705b8a9a9d5fb5384c36441ec63293acb72f0023f645beef7aa83b91c2707f3a8f842f032e190f1ccab70819c2939d0428069fceddeb00642a7b5e5fb526f0dd86faabbc03056248720aa32a4db1e6eca5f9257df9543b285c07a0c2425077920802f34fa26aee84a0030e050000000000000030030201000d0000000000000031302e302e302e373a3730303000a8da769b0100003e7a5876039696f2664607c4243275080975d1ef75d7b9e1cfc3069778230679fc7d82890ad734ce32733a938770ec7b146d2a1cebb923715eee5ab5b90cb704";

#[test]
fn handover_and_record_vectors() {
    use zorgmesh_protocol::handover::{verify_chain, SignedHandOver};
    use zorgmesh_protocol::record::{NodeRecord, SignedNodeRecord};
    let handover = golden_handover();
    let new = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
    let record = NodeRecord {
        node: handover.body.log,
        handovers: vec![handover.clone()],
        certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        data_address: "10.0.0.7:7000".into(),
        issued_at_ms: 1_767_225_600_000,
    }
    .sign(&new);
    println!("new key: {}", hex::encode(new.verifying_key().to_bytes()));
    println!("hand-over: {}", hex::encode(codec::encode(&handover)));
    println!("record: {}", hex::encode(codec::encode(&record)));
    assert_eq!(hex::encode(new.verifying_key().to_bytes()), GOLDEN_NEW_KEY);
    assert_eq!(hex::encode(codec::encode(&handover)), GOLDEN_HANDOVER);
    assert_eq!(hex::encode(codec::encode(&record)), GOLDEN_RECORD);
    let decoded: SignedHandOver =
        codec::decode(&hex::decode(GOLDEN_HANDOVER).unwrap(), 1 << 16).unwrap();
    decoded.verify().unwrap();
    let log = common::node_id(&common::publisher_key());
    assert_eq!(
        verify_chain(log, "zorgnet", &[decoded]).unwrap().to_hex(),
        GOLDEN_NEW_KEY
    );
    let record: SignedNodeRecord =
        codec::decode(&hex::decode(GOLDEN_RECORD).unwrap(), 1 << 16).unwrap();
    assert_eq!(record.verify("zorgnet").unwrap().to_hex(), GOLDEN_NEW_KEY);
    assert!(record.verify("othernet").is_err());
}

/// The requester claims of SPEC.md ("Requester claims"): requester = the batch publisher
/// (secret key 32 bytes of 0x07), network `zorgnet`, practitioner UZI 123456789 with role
/// 01.015 and name `J. Jansen`, purpose treatment, patient = PatientKey(999911120) above,
/// nonce 16 bytes of 0x0c, issued_at_ms 1767225600000, channel 32 bytes of 0x0d.
fn golden_claims() -> zorgmesh_protocol::claims::SignedClaims {
    use zorgmesh_protocol::claims::{Practitioner, PurposeOfUse, RequesterClaims, CLAIMS_VERSION};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let patient: [u8; 32] = hex::decode(GOLDEN_PATIENT_KEY_999911120)
        .unwrap()
        .try_into()
        .unwrap();
    RequesterClaims {
        version: CLAIMS_VERSION,
        network: "zorgnet".into(),
        requester: zorgmesh_protocol::NodeId(key.verifying_key().to_bytes()),
        practitioner: Some(Practitioner {
            id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789".into(),
            role: "01.015".into(),
            name: "J. Jansen".into(),
        }),
        purpose: PurposeOfUse::Treatment,
        emergency_reason: String::new(),
        patient: zorgmesh_protocol::PatientKey(patient),
        nonce: [0x0c; 16],
        issued_at_ms: 1_767_225_600_000,
        channel: [0x0d; 32],
    }
    .sign(&key)
}

const GOLDEN_CLAIMS_HEX: &str =
    "0107000000000000007a6f72676e6574ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c013600000000000000687474703a2f2f666869722e6e6c2f666869722f4e616d696e6753797374656d2f757a692d6e722d706572737c313233343536373839060000000000000030312e30313509000000000000004a2e204a616e73656e000000000000000000000000d994d9719e73094e2b7c0587c23b569788f9013a6a407bf58c6599e7c002894a0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c00a8da769b0100000d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d1d7eb401f28085b2a9572045377cc128ecd4750fd025521160285972657de0ccb4a5d746f362443e981d7824c06d1d170fd4cf2e0f20a6e958d8748a9e060b05";

#[test]
fn claims_vector() {
    let signed = golden_claims();
    assert_eq!(hex::encode(signed.to_bytes()), GOLDEN_CLAIMS_HEX);
    // Decodes, and verifies with nothing but ed25519 over the domain and the claims bytes
    // (everything but the last 64 bytes).
    let bytes = hex::decode(GOLDEN_CLAIMS_HEX).unwrap();
    let decoded = zorgmesh_protocol::claims::SignedClaims::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, signed);
    let (body, signature) = bytes.split_at(bytes.len() - 64);
    let mut message = b"zorgmesh/requester-claims/v1\n".to_vec();
    message.extend_from_slice(body);
    use ed25519_dalek::{Signature, VerifyingKey};
    VerifyingKey::from_bytes(&hex::decode(GOLDEN_PUBLISHER).unwrap().try_into().unwrap())
        .unwrap()
        .verify_strict(
            &message,
            &Signature::from_bytes(&signature.try_into().unwrap()),
        )
        .unwrap();
    // The data-plane request that carries them: tag 0, then the signed claims.
    let request = zorgmesh_protocol::fetch::FetchRequest::PatientResources {
        claims: Box::new(signed),
    };
    assert_eq!(
        hex::encode(request.to_bytes()),
        format!("00000000{GOLDEN_CLAIMS_HEX}")
    );
    let access_log = zorgmesh_protocol::fetch::FetchRequest::AccessLog {
        claims: Box::new(golden_claims()),
    };
    assert_eq!(
        hex::encode(access_log.to_bytes()),
        format!("06000000{GOLDEN_CLAIMS_HEX}")
    );
    let consent_records = zorgmesh_protocol::fetch::FetchRequest::ConsentRecords {
        claims: Box::new(golden_claims()),
    };
    assert_eq!(
        hex::encode(consent_records.to_bytes()),
        format!("07000000{GOLDEN_CLAIMS_HEX}")
    );
    assert_eq!(
        hex::encode(zorgmesh_protocol::fetch::FetchFrame::ConsentWithheld.to_bytes()),
        "0a000000"
    );
}

#[test]
fn print_claims_vector() {
    println!("GOLDEN_CLAIMS_ {}", hex::encode(golden_claims().to_bytes()));
}

/// The access trail of SPEC.md ("Access trail"): two entries of the node with the batch
/// publisher's key (secret 32 bytes of 0x07) and a checkpoint over the second.
fn golden_trail() -> (
    Vec<zorgmesh_protocol::audit::AuditEntry>,
    zorgmesh_protocol::audit::SignedCheckpoint,
) {
    use zorgmesh_protocol::audit::{AuditAction, AuditOutcome, AuditRecord, ChainHead, Checkpoint};
    use zorgmesh_protocol::claims::{Practitioner, PurposeOfUse};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let patient: [u8; 32] = hex::decode(GOLDEN_PATIENT_KEY_999911120)
        .unwrap()
        .try_into()
        .unwrap();
    let served = AuditRecord {
        at_ms: 1_767_225_600_000,
        action: AuditAction::PullServed,
        outcome: AuditOutcome::Success,
        actor: "umcg".into(),
        organisation: "00001234".into(),
        person: Some(Practitioner {
            id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789".into(),
            role: "01.015".into(),
            name: "J. Jansen".into(),
        }),
        purpose: Some(PurposeOfUse::Treatment),
        patient: Some(zorgmesh_protocol::PatientKey(patient)),
        what: "2 resources: Observation 1, Patient 1".into(),
        detail: "served to umcg".into(),
    };
    let refused = AuditRecord {
        at_ms: 1_767_225_601_000,
        action: AuditAction::AuthenticationFailed,
        outcome: AuditOutcome::Denied,
        actor: String::new(),
        organisation: String::new(),
        person: None,
        purpose: None,
        patient: None,
        what: "GET /fhir/Patient".into(),
        detail: "Missing".into(),
    };
    let (first, head) = ChainHead::default().append(served);
    let (second, head) = head.append(refused);
    let checkpoint = Checkpoint {
        node: zorgmesh_protocol::NodeId(key.verifying_key().to_bytes()),
        sequence: head.sequence,
        hash: head.hash,
        at_ms: 1_767_225_602_000,
    }
    .sign(&key);
    (vec![first, second], checkpoint)
}

const GOLDEN_ENTRY_1: &str = "0100000000000000000000000000000000000000000000000000000000000000000000000000000000a8da769b01000005000000000000000400000000000000756d636708000000000000003030303031323334013600000000000000687474703a2f2f666869722e6e6c2f666869722f4e616d696e6753797374656d2f757a692d6e722d706572737c313233343536373839060000000000000030312e30313509000000000000004a2e204a616e73656e010000000001d994d9719e73094e2b7c0587c23b569788f9013a6a407bf58c6599e7c002894a250000000000000032207265736f75726365733a204f62736572766174696f6e20312c2050617469656e7420310e0000000000000073657276656420746f20756d6367";
const GOLDEN_ENTRY_1_HASH: &str =
    "337439df377f977c0741f459be9d1a300324a6b9485af1abb317072bcefc71a3";
const GOLDEN_ENTRY_2: &str = "0200000000000000337439df377f977c0741f459be9d1a300324a6b9485af1abb317072bcefc71a3e8abda769b0100000900000001000000000000000000000000000000000000000000001100000000000000474554202f666869722f50617469656e7407000000000000004d697373696e67";
const GOLDEN_ENTRY_2_HASH: &str =
    "cea38936bea80cd96f5556cc00e17096135552726ced9fb0a5ab3bbec8b89466";
const GOLDEN_CHECKPOINT: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0200000000000000cea38936bea80cd96f5556cc00e17096135552726ced9fb0a5ab3bbec8b89466d0afda769b0100006035413269e3106bad22bc3f3b59438c068827d976652c97f1679e811520366b27d504b0dc63e3b60a974fbd1c0e66dfcdc7944cd335c6bb702d4fe539a49201";

#[test]
fn trail_vector() {
    use sha2::{Digest, Sha256};
    let (entries, checkpoint) = golden_trail();
    let golden = [
        (GOLDEN_ENTRY_1, GOLDEN_ENTRY_1_HASH),
        (GOLDEN_ENTRY_2, GOLDEN_ENTRY_2_HASH),
    ];
    for (entry, (bytes, hash)) in entries.iter().zip(golden) {
        assert_eq!(hex::encode(entry.to_bytes()), bytes);
        // The hash with nothing but SHA-256 over the domain and the entry's bytes.
        let mut hasher = Sha256::new();
        hasher.update(b"zorgmesh/audit-entry/v1\n");
        hasher.update(hex::decode(bytes).unwrap());
        assert_eq!(hex::encode(hasher.finalize()), hash);
        assert_eq!(
            &zorgmesh_protocol::audit::AuditEntry::from_bytes(&hex::decode(bytes).unwrap())
                .unwrap(),
            entry
        );
    }
    assert_eq!(hex::encode(entries[1].previous), GOLDEN_ENTRY_1_HASH);
    assert_eq!(hex::encode(codec::encode(&checkpoint)), GOLDEN_CHECKPOINT);
    let bytes = hex::decode(GOLDEN_CHECKPOINT).unwrap();
    let (body, signature) = bytes.split_at(bytes.len() - 64);
    let mut message = b"zorgmesh/audit-checkpoint/v1\n".to_vec();
    message.extend_from_slice(body);
    use ed25519_dalek::{Signature, VerifyingKey};
    VerifyingKey::from_bytes(&hex::decode(GOLDEN_PUBLISHER).unwrap().try_into().unwrap())
        .unwrap()
        .verify_strict(
            &message,
            &Signature::from_bytes(&signature.try_into().unwrap()),
        )
        .unwrap();
    let mut verifier =
        zorgmesh_protocol::audit::TrailVerifier::new(std::slice::from_ref(&checkpoint));
    for entry in &entries {
        verifier.push(entry);
    }
    assert!(verifier.finish().is_intact());
}
