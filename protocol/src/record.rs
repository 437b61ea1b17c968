//! Signed node records: how a node tells the mesh its certificate and data-plane address.
//!
//! A record travels with every batch, so any node that indexed a publisher's entries also
//! knows where to pull the data and which certificate vouches for the publisher.

use crate::codec::DecodeError;
use crate::handover::{SignedHandOver, MAX_HANDOVERS, MAX_HANDOVER_BYTES};
use crate::locator::NodeId;
use ed25519_dalek::SigningKey;

/// Domain-separation prefix of the bytes a node record signature covers.
pub const NODE_RECORD_DOMAIN: &[u8] = b"zorgmesh/node-record/v2\n";
/// Largest certificate a record may carry.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Longest data-plane address (`host:port`).
pub const MAX_ADDRESS_LEN: usize = 256;
/// Largest encoded signed record: certificate, address, a full hand-over chain, fixed fields.
pub const MAX_RECORD_BYTES: usize =
    MAX_CERTIFICATE_BYTES + MAX_ADDRESS_LEN + MAX_HANDOVERS * MAX_HANDOVER_BYTES + 256;

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct NodeRecord {
    /// The node's log id: the key that signed its first batch.
    pub node: NodeId,
    /// The log's hand-overs, oldest first (empty while the node still signs with its
    /// first key). The record is signed by the key in force at the chain's end.
    pub handovers: Vec<SignedHandOver>,
    /// DER of the X.509 certificate of the signing key, issued by the network CA.
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
    /// ed25519 signature by [`NodeRecord::signer`].
    pub signature: [u8; 64],
}

impl NodeRecord {
    /// The exact bytes the node signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        crate::signing::signing_bytes(NODE_RECORD_DOMAIN, self)
    }

    /// The key that signs the record: the last hand-over's new key, else the log id.
    pub fn signer(&self) -> NodeId {
        self.handovers.last().map_or(self.node, |h| h.body.new_key)
    }

    /// Signs the record with the node's key in force ([`NodeRecord::signer`]).
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
        if self.handovers.len() > MAX_HANDOVERS {
            return Err(DecodeError::Invalid(format!(
                "{} hand-overs (at most {MAX_HANDOVERS})",
                self.handovers.len()
            )));
        }
        for handover in &self.handovers {
            handover.body.validate()?;
        }
        Ok(())
    }
}

impl SignedNodeRecord {
    /// Checks the hand-over chain (for `network`) and the signature by the key in force at
    /// its end; returns that key.
    pub fn verify(&self, network: &str) -> Result<NodeId, String> {
        let signer =
            crate::handover::verify_chain(self.record.node, network, &self.record.handovers)
                .map_err(|e| e.to_string())?;
        crate::signing::verify(&signer, NODE_RECORD_DOMAIN, &self.record, &self.signature)
            .map_err(|e| format!("node record signature: {e}"))?;
        Ok(signer)
    }
}
