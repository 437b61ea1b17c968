//! Signed node records: how a node tells the mesh its certificate and data-plane address.
//!
//! A record travels with every batch, so any node that indexed a publisher's entries also
//! knows where to pull the data and which certificate vouches for the publisher.

use crate::codec::DecodeError;
use crate::locator::NodeId;
use ed25519_dalek::SigningKey;

/// Domain-separation prefix of the bytes a node record signature covers.
pub const NODE_RECORD_DOMAIN: &[u8] = b"zorgmesh/node-record/v1\n";
/// Largest certificate a record may carry.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Longest data-plane address (`host:port`).
pub const MAX_ADDRESS_LEN: usize = 256;

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct NodeRecord {
    /// The node.
    pub node: NodeId,
    /// DER of the node's X.509 certificate, issued by the network CA.
    pub certificate_der: Vec<u8>,
    /// QUIC data-plane address as `ip:port`.
    pub data_address: String,
    /// When the record was made (ms since the Unix epoch); newer records replace older ones.
    pub issued_at_ms: u64,
}

/// A node record and the node's signature over `NODE_RECORD_DOMAIN || encode(NodeRecord)`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedNodeRecord {
    /// What was signed.
    pub record: NodeRecord,
    /// ed25519 signature by `record.node`.
    pub signature: [u8; 64],
}

impl NodeRecord {
    /// The exact bytes the node signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        crate::signing::signing_bytes(NODE_RECORD_DOMAIN, self)
    }

    /// Signs the record with the node's key.
    pub fn sign(self, key: &SigningKey) -> SignedNodeRecord {
        let signature = crate::signing::sign(key, NODE_RECORD_DOMAIN, &self);
        SignedNodeRecord {
            record: self,
            signature,
        }
    }

    /// Checks bounds.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.certificate_der.len() > MAX_CERTIFICATE_BYTES {
            return Err(DecodeError::Invalid("certificate too large".into()));
        }
        if self.data_address.len() > MAX_ADDRESS_LEN {
            return Err(DecodeError::Invalid("data address too long".into()));
        }
        Ok(())
    }
}

impl SignedNodeRecord {
    /// True when the signature by `record.node` holds.
    pub fn verify(&self) -> bool {
        crate::signing::verify(
            &self.record.node,
            NODE_RECORD_DOMAIN,
            &self.record,
            &self.signature,
        )
        .is_ok()
    }
}
