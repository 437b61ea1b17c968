//! Creating a network's CA and issuing node certificates.

use crate::identity::{NodeIdentity, IDENTITY_EXTENSION_OID};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};

/// A network's certificate authority: its key and self-signed certificate.
pub struct CertificateAuthority {
    network: String,
    key: SigningKey,
    certificate_der: Vec<u8>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// A freshly issued node certificate and its key.
#[derive(Debug)]
pub struct IssuedNode {
    /// The node's ed25519 key.
    pub key: SigningKey,
    /// DER of the certificate.
    pub certificate_der: Vec<u8>,
}

pub(crate) fn rcgen_key(key: &SigningKey) -> Result<KeyPair, String> {
    let der = key
        .to_pkcs8_der()
        .map_err(|e| format!("cannot encode ed25519 key: {e}"))?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_ED25519)
        .map_err(|e| format!("cannot load ed25519 key: {e}"))
}

fn ca_name(network: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("zorgmesh {network} network CA"));
    name.push(DnType::OrganizationName, network.to_owned());
    name
}

fn ca_params(
    network: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(network);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

impl CertificateAuthority {
    /// Creates a new CA for `network`, valid from `now` for `valid_days`.
    pub fn create(
        network: &str,
        key: SigningKey,
        now: OffsetDateTime,
        valid_days: i64,
    ) -> Result<Self, String> {
        crate::validate_label("network name", network)?;
        let params = ca_params(
            network,
            now - Duration::minutes(5),
            now + Duration::days(valid_days),
        );
        let certificate = params
            .self_signed(&rcgen_key(&key)?)
            .map_err(|e| format!("cannot sign CA certificate: {e}"))?;
        Ok(Self {
            network: network.to_owned(),
            key,
            certificate_der: certificate.der().to_vec(),
        })
    }

    /// Loads a CA from its key and certificate.
    pub fn load(key: SigningKey, certificate_der: Vec<u8>) -> Result<Self, String> {
        let anchor = crate::TrustAnchor::from_der(&certificate_der).map_err(|e| e.to_string())?;
        if anchor.public_key() != key.verifying_key().to_bytes() {
            return Err("the CA key does not belong to the CA certificate".into());
        }
        Ok(Self {
            network: anchor.network().to_owned(),
            key,
            certificate_der,
        })
    }

    /// The network's name.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// DER of the CA certificate.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The CA's key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Issues a certificate for `node_key` that binds it to `identity`, valid from
    /// `not_before` to `not_after`.
    pub fn issue(
        &self,
        identity: &NodeIdentity,
        node_key: &SigningKey,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>, String> {
        identity.validate()?;
        if not_after <= not_before {
            return Err("certificate would expire before it becomes valid".into());
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity.name.clone());
        name.push(DnType::OrganizationName, identity.organisation_name.clone());
        name.push(DnType::OrganizationalUnitName, identity.role.as_str());
        name.push(DnType::LocalityName, identity.region.clone());
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::DnsName(
            crate::node_dns_name(&identity.name)
                .try_into()
                .map_err(|e| format!("node name is not a DNS name: {e}"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let mut extension =
            CustomExtension::from_oid_content(IDENTITY_EXTENSION_OID, identity.to_der());
        extension.set_criticality(false);
        params.custom_extensions.push(extension);
        let serial: [u8; 16] = {
            let digest = ed25519_dalek::Signer::sign(
                &self.key,
                &[
                    node_key.verifying_key().as_bytes().as_slice(),
                    &not_before.unix_timestamp().to_le_bytes(),
                ]
                .concat(),
            )
            .to_bytes();
            let mut s = [0u8; 16];
            s.copy_from_slice(&digest[..16]);
            s[0] &= 0x7f;
            s
        };
        params.serial_number = Some(serial.to_vec().into());

        let issuer_params = ca_params(&self.network, not_before, not_after);
        let ca_key = rcgen_key(&self.key)?;
        let issuer = Issuer::from_params(&issuer_params, &ca_key);
        let certificate = params
            .signed_by(&rcgen_key(node_key)?, &issuer)
            .map_err(|e| format!("cannot sign node certificate: {e}"))?;
        Ok(certificate.der().to_vec())
    }
}
