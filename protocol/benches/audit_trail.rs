//! The access trail's costs on its real encoding: appending entries to the hash chain (the
//! CPU part of an audit append: encode, hash, link) and verifying a stored trail of
//! 1,000,000 entries (decode, hash, link and checkpoint checks), against the baseline of
//! only decoding the same bytes.
//!
//! Run: `cargo bench -p zorgmesh-protocol --bench audit_trail`
//! Other sizes: `ZM_AUDIT_ENTRIES=5000000 cargo bench -p zorgmesh-protocol --bench audit_trail`

use ed25519_dalek::SigningKey;
use std::time::Instant;
use zorgmesh_protocol::audit::{
    AuditAction, AuditEntry, AuditOutcome, AuditRecord, ChainHead, Checkpoint, TrailVerifier,
};
use zorgmesh_protocol::claims::{Practitioner, PurposeOfUse};
use zorgmesh_protocol::{NodeId, PatientKey};

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        at_ms: 1_767_225_600_000 + n,
        action: if n.is_multiple_of(3) {
            AuditAction::PullServed
        } else {
            AuditAction::Dossier
        },
        outcome: AuditOutcome::Success,
        actor: "epd-umcg".into(),
        organisation: "00001234".into(),
        person: Some(Practitioner {
            id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789".into(),
            role: "01.015".into(),
            name: "J. Jansen".into(),
        }),
        purpose: Some(PurposeOfUse::Treatment),
        patient: Some(PatientKey([(n % 251) as u8; 32])),
        what: "Observation 12, Condition 3, Patient 1".into(),
        detail: "permit: network default (opt-out)".into(),
    }
}

fn main() {
    let count: u64 = std::env::var("ZM_AUDIT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let key = SigningKey::from_bytes(&[7; 32]);
    let node = NodeId(key.verifying_key().to_bytes());

    // Append: entries as the node writes them, a checkpoint every 10,000.
    let started = Instant::now();
    let mut head = ChainHead::default();
    let mut stored: Vec<Vec<u8>> = Vec::with_capacity(count as usize);
    let mut checkpoints = Vec::new();
    for n in 1..=count {
        let (entry, next) = head.append(record(n));
        head = next;
        stored.push(entry.to_bytes());
        if n.is_multiple_of(10_000) {
            checkpoints.push(
                Checkpoint {
                    node,
                    sequence: head.sequence,
                    hash: head.hash,
                    at_ms: 0,
                }
                .sign(&key),
            );
        }
    }
    let append = started.elapsed();
    let bytes: usize = stored.iter().map(Vec::len).sum();

    // Baseline: only decoding the stored entries.
    let started = Instant::now();
    let mut decoded = 0u64;
    for bytes in &stored {
        decoded += AuditEntry::from_bytes(bytes).expect("decodes").sequence & 1;
    }
    let decode_only = started.elapsed();

    // Verify: decode, hash, link, checkpoints.
    let started = Instant::now();
    let mut verifier = TrailVerifier::new(&checkpoints);
    for bytes in &stored {
        verifier.push(&AuditEntry::from_bytes(bytes).expect("decodes"));
    }
    let report = verifier.finish();
    let verify = started.elapsed();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.head, head);

    println!(
        "audit trail, {count} entries ({:.0} bytes each, {} checkpoints):",
        bytes as f64 / count as f64,
        checkpoints.len()
    );
    println!(
        "  append (encode, hash, link; CPU only): {:.2} s, {:.0} entries/s",
        append.as_secs_f64(),
        count as f64 / append.as_secs_f64()
    );
    println!(
        "  verify (decode, hash, links, checkpoints): {:.2} s, {:.0} entries/s",
        verify.as_secs_f64(),
        count as f64 / verify.as_secs_f64()
    );
    println!(
        "  baseline, decode only: {:.2} s; verify costs {:.1}x decoding ({decoded} odd)",
        decode_only.as_secs_f64(),
        verify.as_secs_f64() / decode_only.as_secs_f64()
    );
}
