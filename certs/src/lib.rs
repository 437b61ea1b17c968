//! # zorgmesh-certs
//!
//! The network's trust material:
//!
//! - the **trust anchor**: a self-signed ed25519 CA certificate for one network;
//! - **node certificates** (X.509) that bind a node's ed25519 key to its name, organisation
//!   (URA and name), region and role, carried in a zorgmesh identity extension;
//! - the **evaluator set**: the CA-signed description of the network's threshold OPRF key
//!   (threshold, evaluator nodes, Feldman commitments) and the evaluators' **key shares**.
//!   No file anywhere holds the whole key: the CA deals the shares once and keeps none.
//!
//! One ed25519 key per node is its libp2p identity, its TLS identity and its batch-signing
//! key. [`TrustAnchor::verify_node_certificate`] is the one place that decides whether a
//! certificate belongs to this network.

mod authority;
mod evaluators;
mod files;
mod identity;
mod verify;

pub use authority::{CertificateAuthority, IssuedNode};
pub use evaluators::{deal_evaluator_keys, EvaluatorKeys};
pub use files::{
    parse_revocation_list, read_certificate, read_evaluator_set, read_key_share,
    read_revocation_list, read_signing_key, write_certificate, write_evaluator_set,
    write_key_share, write_private_file, write_revocation_list, write_signing_key, CaFiles,
    FileError, NodeFiles,
};
pub use identity::{NodeIdentity, IDENTITY_EXTENSION_OID};
pub use verify::{CertError, TrustAnchor, VerifiedNode};

/// The DNS name a node's certificate carries (and TLS clients ask for).
pub fn node_dns_name(node_name: &str) -> String {
    format!("{node_name}.node.zorgmesh")
}

pub use zorgmesh_protocol::identity::validate_label;
