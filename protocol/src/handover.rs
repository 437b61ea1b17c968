//! Hand-overs: a node rolls its locator log over to a new key without starting a new log.
//!
//! A log is named by the key that signed its first batch (its *log id*, the `publisher` of
//! every batch it will ever carry). When the node rotates its key, it signs a
//! [`HandOverBody`] with the old key **and** the new one: from `from_sequence` on, batches
//! of this log are signed by `new_key`; the batch before it has hash `previous_hash`. The
//! chain of a log's hand-overs travels in every node record the node signs, so a peer that
//! sees the first batch under the new key also sees why it may trust that key.
//!
//! The chain gives every sequence one key in force ([`key_in_force`]): batches verify under
//! it, so no entry needs republishing and the log's hash chain runs on unbroken.

use crate::batch::{SignatureError, GENESIS_HASH};
use crate::codec::DecodeError;
use crate::locator::NodeId;
use ed25519_dalek::SigningKey;

/// Domain of both signatures over a hand-over.
pub const HANDOVER_DOMAIN: &[u8] = b"zorgmesh/hand-over/v1\n";
/// Most hand-overs one log may carry (a node rotating yearly is far below it; past it, the
/// node starts a new log under a new certificate).
pub const MAX_HANDOVERS: usize = 16;
/// Largest certificate a hand-over may carry.
pub const MAX_HANDOVER_CERTIFICATE_BYTES: usize = 4096;
/// Largest encoded hand-over: fixed fields, certificate, two signatures.
pub const MAX_HANDOVER_BYTES: usize = MAX_HANDOVER_CERTIFICATE_BYTES + 512;

/// What the old and the new key both sign.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct HandOverBody {
    /// Format version (1).
    pub version: u8,
    /// The network name.
    pub network: String,
    /// The log handed over: the key that signed its first batch.
    pub log: NodeId,
    /// The key in force before (the log id, or the previous hand-over's `new_key`).
    pub old_key: NodeId,
    /// The key in force from `from_sequence` on.
    pub new_key: NodeId,
    /// The network CA's certificate for `new_key` (DER), for the same node name.
    pub new_certificate_der: Vec<u8>,
    /// First sequence signed by `new_key`.
    pub from_sequence: u64,
    /// Hash of batch `from_sequence - 1` (the old key's last), or the genesis hash when
    /// `from_sequence` is 1.
    pub previous_hash: [u8; 32],
    /// When the node signed the hand-over (ms since the Unix epoch).
    pub issued_at_ms: u64,
}

/// A [`HandOverBody`] with the old key's and the new key's ed25519 signatures over
/// [`HANDOVER_DOMAIN`] || encode(body).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedHandOver {
    /// What was signed.
    pub body: HandOverBody,
    /// Signature by `old_key`.
    pub old_signature: [u8; 64],
    /// Signature by `new_key`.
    pub new_signature: [u8; 64],
}

/// Why a hand-over or a chain of them is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandOverError {
    /// A structural rule is broken.
    #[error("hand-over invalid: {0}")]
    Invalid(String),
    /// A signature does not verify.
    #[error("hand-over {which} signature: {error}")]
    Signature {
        /// "old-key" or "new-key".
        which: &'static str,
        /// What failed.
        error: SignatureError,
    },
}

impl HandOverBody {
    /// Signs with both keys; `old` and `new` must be the keys the body names.
    pub fn sign(self, old: &SigningKey, new: &SigningKey) -> SignedHandOver {
        debug_assert_eq!(NodeId(old.verifying_key().to_bytes()), self.old_key);
        debug_assert_eq!(NodeId(new.verifying_key().to_bytes()), self.new_key);
        let old_signature = crate::signing::sign(old, HANDOVER_DOMAIN, &self);
        let new_signature = crate::signing::sign(new, HANDOVER_DOMAIN, &self);
        SignedHandOver {
            body: self,
            old_signature,
            new_signature,
        }
    }

    /// The exact bytes both signatures cover.
    pub fn signing_bytes(&self) -> Vec<u8> {
        crate::signing::signing_bytes(HANDOVER_DOMAIN, self)
    }

    /// Checks the structural rules (not the signatures).
    pub fn validate(&self) -> Result<(), DecodeError> {
        let invalid = |m: &str| Err(DecodeError::Invalid(format!("hand-over: {m}")));
        if self.version != 1 {
            return invalid(&format!("version {}", self.version));
        }
        if self.network.is_empty() || self.network.len() > 63 {
            return invalid("network name must be 1-63 bytes");
        }
        if self.old_key == self.new_key {
            return invalid("old and new key are the same");
        }
        if self.from_sequence == 0 {
            return invalid("from_sequence starts at 1");
        }
        if self.from_sequence == 1 && self.previous_hash != GENESIS_HASH {
            return invalid("a hand-over before the first batch must name the genesis hash");
        }
        if self.new_certificate_der.is_empty()
            || self.new_certificate_der.len() > MAX_HANDOVER_CERTIFICATE_BYTES
        {
            return invalid(&format!(
                "certificate must be 1-{MAX_HANDOVER_CERTIFICATE_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

impl SignedHandOver {
    /// Checks the structure and both signatures.
    pub fn verify(&self) -> Result<(), HandOverError> {
        self.body
            .validate()
            .map_err(|e| HandOverError::Invalid(e.to_string()))?;
        crate::signing::verify(
            &self.body.old_key,
            HANDOVER_DOMAIN,
            &self.body,
            &self.old_signature,
        )
        .map_err(|error| HandOverError::Signature {
            which: "old-key",
            error,
        })?;
        crate::signing::verify(
            &self.body.new_key,
            HANDOVER_DOMAIN,
            &self.body,
            &self.new_signature,
        )
        .map_err(|error| HandOverError::Signature {
            which: "new-key",
            error,
        })
    }
}

/// Checks a log's chain of hand-overs (in order, each signed by both keys, each starting
/// where the one before it ended, all for `log` in `network`) and returns the key in force
/// at its end: `log` itself for an empty chain.
pub fn verify_chain(
    log: NodeId,
    network: &str,
    chain: &[SignedHandOver],
) -> Result<NodeId, HandOverError> {
    if chain.len() > MAX_HANDOVERS {
        return Err(HandOverError::Invalid(format!(
            "{} hand-overs (at most {MAX_HANDOVERS})",
            chain.len()
        )));
    }
    let mut key = log;
    let mut from = 1;
    for (k, handover) in chain.iter().enumerate() {
        let body = &handover.body;
        if body.log != log || body.network != network {
            return Err(HandOverError::Invalid(format!(
                "hand-over {k} is for another log or network"
            )));
        }
        if body.old_key != key {
            return Err(HandOverError::Invalid(format!(
                "hand-over {k} does not start from the key in force before it"
            )));
        }
        if body.from_sequence < from {
            return Err(HandOverError::Invalid(format!(
                "hand-over {k} goes back in the log (from {} after {from})",
                body.from_sequence
            )));
        }
        handover.verify()?;
        key = body.new_key;
        from = body.from_sequence;
    }
    Ok(key)
}

/// The key that signs sequence `sequence` of a log with hand-overs `chain` (verified).
pub fn key_in_force(log: NodeId, chain: &[HandOverBody], sequence: u64) -> NodeId {
    chain
        .iter()
        .rev()
        .find(|h| h.from_sequence <= sequence)
        .map_or(log, |h| h.new_key)
}
