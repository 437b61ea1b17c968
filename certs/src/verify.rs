//! Verifying that a certificate belongs to this network.

use crate::identity::{NodeIdentity, IDENTITY_EXTENSION_OID};
use time::OffsetDateTime;
use x509_parser::oid_registry::{Oid, OID_SIG_ED25519};
use x509_parser::prelude::{FromDer, X509Certificate};
use zorgmesh_protocol::{NodeId, PublisherInfo};

/// Why a certificate is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// Not a parseable X.509 certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// Issued by another CA than this network's trust anchor.
    #[error("certificate of {subject:?} was issued by {issuer:?}, not by this network's CA ({expected:?}): issue one with 'zorgmesh certs issue' using this network's CA")]
    ForeignIssuer {
        /// Subject of the certificate.
        subject: String,
        /// Its issuer.
        issuer: String,
        /// The trust anchor's subject.
        expected: String,
    },
    /// The CA's signature over the certificate does not verify (tampered or forged).
    #[error("certificate of {0:?} does not carry a valid signature of this network's CA")]
    BadSignature(String),
    /// The certificate's validity ended.
    #[error("certificate for node {node:?} expired on {not_after}: issue a new one with 'zorgmesh certs issue'")]
    Expired {
        /// Node name.
        node: String,
        /// End of validity.
        not_after: String,
    },
    /// The certificate's validity has not started.
    #[error("certificate for node {node:?} is not valid before {not_before}: check the clocks")]
    NotYetValid {
        /// Node name.
        node: String,
        /// Start of validity.
        not_before: String,
    },
    /// The subject key is not ed25519.
    #[error("certificate key is not ed25519")]
    NotEd25519,
    /// The zorgmesh identity extension is missing or invalid.
    #[error("certificate carries no valid zorgmesh identity: {0}")]
    Identity(String),
    /// The trust anchor is not a CA certificate.
    #[error("{0}")]
    NotACa(String),
}

/// A node certificate that passed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNode {
    /// The node's key.
    pub node: NodeId,
    /// What the certificate says about it.
    pub identity: NodeIdentity,
    /// Validity start (Unix seconds).
    pub not_before: i64,
    /// Validity end (Unix seconds).
    pub not_after: i64,
}

impl VerifiedNode {
    /// The facts the protocol core needs.
    pub fn publisher_info(&self) -> PublisherInfo {
        PublisherInfo {
            node: self.node,
            name: self.identity.name.clone(),
            organisation_ura: self.identity.organisation_ura.clone(),
            organisation_name: self.identity.organisation_name.clone(),
            region: self.identity.region.clone(),
            role: self.identity.role,
            valid_from_ms: (self.not_before.max(0) as u64) * 1000,
            valid_until_ms: (self.not_after.max(0) as u64) * 1000,
        }
    }
}

/// A network's CA certificate, used to verify node certificates.
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    der: Vec<u8>,
    subject: String,
    network: String,
    public_key: [u8; 32],
}

fn ed25519_key(cert: &X509Certificate<'_>) -> Result<[u8; 32], CertError> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return Err(CertError::NotEd25519);
    }
    spki.subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertError::NotEd25519)
}

fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl TrustAnchor {
    /// Loads a CA certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        if !cert.is_ca() {
            return Err(CertError::NotACa(format!(
                "{} is not a CA certificate: use the network's ca.crt",
                cert.subject()
            )));
        }
        let public_key = ed25519_key(&cert)?;
        cert.verify_signature(None)
            .map_err(|_| CertError::BadSignature(cert.subject().to_string()))?;
        let network = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            der: der.to_vec(),
            subject: cert.subject().to_string(),
            network,
            public_key,
        })
    }

    /// DER of the CA certificate.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The network name the CA certifies.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The CA's ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Verifies a node certificate: issued and signed by this CA, valid at `now_unix`,
    /// ed25519, with a valid zorgmesh identity. Use `None` for `now_unix` to skip the
    /// validity period (for displaying a certificate).
    pub fn verify_node_certificate(
        &self,
        der: &[u8],
        now_unix: Option<i64>,
    ) -> Result<VerifiedNode, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        let subject = cert.subject().to_string();
        let issuer = cert.issuer().to_string();
        if issuer != self.subject {
            return Err(CertError::ForeignIssuer {
                subject,
                issuer,
                expected: self.subject.clone(),
            });
        }
        let anchor = X509Certificate::from_der(&self.der)
            .map_err(|e| CertError::Malformed(e.to_string()))?
            .1;
        cert.verify_signature(Some(anchor.public_key()))
            .map_err(|_| CertError::BadSignature(subject.clone()))?;
        let node = NodeId(ed25519_key(&cert)?);
        let oid = Oid::from(IDENTITY_EXTENSION_OID)
            .map_err(|_| CertError::Identity("bad extension oid".into()))?;
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .ok_or_else(|| CertError::Identity("extension missing".into()))?;
        let identity = NodeIdentity::from_der(extension.value).map_err(CertError::Identity)?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        if let Some(now) = now_unix {
            if now > not_after {
                return Err(CertError::Expired {
                    node: identity.name,
                    not_after: format_time(not_after),
                });
            }
            if now < not_before {
                return Err(CertError::NotYetValid {
                    node: identity.name,
                    not_before: format_time(not_before),
                });
            }
        }
        Ok(VerifiedNode {
            node,
            identity,
            not_before,
            not_after,
        })
    }
}
