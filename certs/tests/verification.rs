//! A certificate from another CA, an expired one, a tampered one and garbage are rejected;
//! a good one yields the identity it was issued with.

use ed25519_dalek::SigningKey;
use std::os::unix::fs::PermissionsExt;
use time::{Duration, OffsetDateTime};
use zorgmesh_certs::{CaFiles, CertError, CertificateAuthority, NodeIdentity, TrustAnchor};
use zorgmesh_protocol::NodeRole;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
}

fn identity() -> NodeIdentity {
    NodeIdentity {
        name: "umcg".into(),
        organisation_ura: "00001234".into(),
        organisation_name: "Universitair Medisch Centrum Groningen".into(),
        region: "noord".into(),
        role: NodeRole::Institution,
        category: zorgmesh_protocol::consent::OrganisationCategory::Hospital,
    }
}

fn ca(seed: u8, network: &str) -> CertificateAuthority {
    CertificateAuthority::create(network, SigningKey::from_bytes(&[seed; 32]), now(), 3650).unwrap()
}

fn anchor(ca: &CertificateAuthority) -> TrustAnchor {
    TrustAnchor::from_der(ca.certificate_der()).unwrap()
}

#[test]
fn a_good_certificate_verifies_and_carries_the_identity() {
    let ca = ca(1, "testnet");
    let node_key = SigningKey::from_bytes(&[5; 32]);
    let der = ca
        .issue(&identity(), &node_key, now(), now() + Duration::days(365))
        .unwrap();
    let verified = anchor(&ca)
        .verify_node_certificate(&der, Some(now().unix_timestamp() + 10))
        .unwrap();
    assert_eq!(verified.identity, identity());
    assert_eq!(verified.node.0, node_key.verifying_key().to_bytes());
    assert_eq!(anchor(&ca).network(), "testnet");
}

#[test]
fn a_certificate_from_another_ca_is_rejected() {
    let ours = ca(1, "testnet");
    let theirs = ca(2, "testnet");
    let der = theirs
        .issue(
            &identity(),
            &SigningKey::from_bytes(&[5; 32]),
            now(),
            now() + Duration::days(1),
        )
        .unwrap();
    // Same network name, same subject: only the signature tells them apart.
    let err = anchor(&ours)
        .verify_node_certificate(&der, Some(now().unix_timestamp()))
        .unwrap_err();
    assert!(matches!(err, CertError::BadSignature(_)), "{err}");

    let other_network = ca(3, "othernet");
    let der = other_network
        .issue(
            &identity(),
            &SigningKey::from_bytes(&[5; 32]),
            now(),
            now() + Duration::days(1),
        )
        .unwrap();
    let err = anchor(&ours)
        .verify_node_certificate(&der, Some(now().unix_timestamp()))
        .unwrap_err();
    assert!(matches!(err, CertError::ForeignIssuer { .. }), "{err}");
    assert!(err.to_string().contains("zorgmesh certs issue"));
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_rejected() {
    let ca = ca(1, "testnet");
    let der = ca
        .issue(
            &identity(),
            &SigningKey::from_bytes(&[5; 32]),
            now(),
            now() + Duration::days(1),
        )
        .unwrap();
    let later = (now() + Duration::days(2)).unix_timestamp();
    let err = anchor(&ca)
        .verify_node_certificate(&der, Some(later))
        .unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("umcg"), "{err}");
    let earlier = (now() - Duration::days(1)).unix_timestamp();
    let err = anchor(&ca)
        .verify_node_certificate(&der, Some(earlier))
        .unwrap_err();
    assert!(matches!(err, CertError::NotYetValid { .. }), "{err}");
}

#[test]
fn a_tampered_certificate_is_rejected() {
    let ca = ca(1, "testnet");
    let der = ca
        .issue(
            &identity(),
            &SigningKey::from_bytes(&[5; 32]),
            now(),
            now() + Duration::days(365),
        )
        .unwrap();
    // Change the organisation name inside the identity extension, keeping the length.
    let needle = b"Groningen";
    let at = der
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("name is in the certificate");
    let mut tampered = der.clone();
    tampered[at..at + needle.len()].copy_from_slice(b"Rotterdam");
    let err = anchor(&ca)
        .verify_node_certificate(&tampered, Some(now().unix_timestamp()))
        .unwrap_err();
    assert!(matches!(err, CertError::BadSignature(_)), "{err}");
}

#[test]
fn garbage_is_a_clear_error() {
    let ca = ca(1, "testnet");
    for input in [&b""[..], b"not a certificate", &[0x30, 0x82, 0xff, 0xff]] {
        assert!(matches!(
            anchor(&ca).verify_node_certificate(input, None),
            Err(CertError::Malformed(_))
        ));
    }
    // a node certificate is not a trust anchor
    let der = ca
        .issue(
            &identity(),
            &SigningKey::from_bytes(&[5; 32]),
            now(),
            now() + Duration::days(1),
        )
        .unwrap();
    assert!(matches!(
        TrustAnchor::from_der(&der),
        Err(CertError::NotACa(_))
    ));
}

#[test]
fn key_files_are_owner_only_and_shares_leave_the_ca_when_issued() {
    let dir = tempfile::tempdir().unwrap();
    let files = CaFiles::in_dir(dir.path());
    let ca = ca(1, "testnet");
    let names = vec![
        "umcg".to_owned(),
        "erasmusmc".to_owned(),
        "radboud".to_owned(),
    ];
    let keys = zorgmesh_certs::deal_evaluator_keys(&ca, &names, 2, 0).unwrap();
    files.write(&ca, &keys).unwrap();
    for path in [files.key.clone(), files.pending_share("umcg")] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert!(files.ensure_absent().is_err());
    let loaded = files.load_authority().unwrap();
    assert_eq!(loaded.certificate_der(), ca.certificate_der());

    // The set verifies under this CA only, and each share belongs to it.
    let signed = zorgmesh_certs::read_evaluator_set(&files.evaluator_set).unwrap();
    let anchor = zorgmesh_certs::TrustAnchor::from_der(ca.certificate_der()).unwrap();
    let set = signed.verify(&anchor.public_key(), "testnet").unwrap();
    assert_eq!(set.threshold(), 2);
    let other = super_ca_public_key();
    assert!(signed.verify(&other, "testnet").is_err());
    assert!(signed.verify(&anchor.public_key(), "othernet").is_err());

    // Issuing moves the share to the node; none is left behind.
    let node_dir = tempfile::tempdir().unwrap();
    let to = node_dir.path().join("umcg.share");
    assert!(files.hand_out_share("umcg", &to).unwrap());
    assert!(!files.pending_share("umcg").exists());
    assert!(!files
        .hand_out_share("umcg", &node_dir.path().join("again.share"))
        .unwrap());
    let share = zorgmesh_certs::read_key_share(&to).unwrap();
    assert_eq!(share.index(), 1);
    assert!(share.matches(&set));
    std::fs::write(&to, "zz").unwrap();
    assert!(zorgmesh_certs::read_key_share(&to).is_err());
}

fn super_ca_public_key() -> [u8; 32] {
    let other = ca(2, "testnet");
    zorgmesh_certs::TrustAnchor::from_der(other.certificate_der())
        .unwrap()
        .public_key()
}

#[test]
fn key_and_certificate_files_are_read_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let key_path = dir.path().join("node.key");
    let cert_path = dir.path().join("node.crt");
    zorgmesh_certs::write_signing_key(&key_path, &key).unwrap();
    let ca = ca(1, "testnet");
    let der = ca
        .issue(&identity(), &key, now(), now() + Duration::days(1))
        .unwrap();
    zorgmesh_certs::write_certificate(&cert_path, &der).unwrap();
    assert_eq!(
        zorgmesh_certs::read_signing_key(&key_path)
            .unwrap()
            .to_bytes(),
        key.to_bytes()
    );
    let openssl = |args: &[&str]| std::process::Command::new("openssl").args(args).output();
    let Ok(key_out) = openssl(&[
        "pkey",
        "-in",
        key_path.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]) else {
        eprintln!("SKIPPED the OpenSSL half: no openssl binary");
        return;
    };
    assert!(
        key_out.status.success(),
        "openssl cannot read the key: {key_out:?}"
    );
    // The SPKI OpenSSL derives ends with the node's public key.
    assert!(key_out.stdout.ends_with(key.verifying_key().as_bytes()));
    let cert_out = openssl(&[
        "x509",
        "-in",
        cert_path.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ])
    .unwrap();
    assert!(
        cert_out.status.success(),
        "openssl cannot read the certificate: {cert_out:?}"
    );
    assert!(String::from_utf8_lossy(&cert_out.stdout).contains("DNS:umcg.node.zorgmesh"));
}
