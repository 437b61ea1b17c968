//! Signed locator batches: the append-only log each publisher writes.
//!
//! A batch carries a sequence number, the hash of the previous batch and a set of entries;
//! one ed25519 signature covers `BATCH_SIGNATURE_DOMAIN || encode(BatchBody)`.

use crate::codec::{self, DecodeError};
use crate::locator::{LocatorEntry, NodeId};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Domain-separation prefix of the bytes a batch signature covers.
pub const BATCH_SIGNATURE_DOMAIN: &[u8] = b"zorgmesh/locator-batch/v1\n";
/// Domain-separation prefix of the batch hash that chains the log.
pub const BATCH_HASH_DOMAIN: &[u8] = b"zorgmesh/locator-batch-hash/v1\n";
/// Most entries one batch may carry.
pub const MAX_ENTRIES_PER_BATCH: usize = 4096;
/// Bytes of entries a batch or snapshot chunk may carry: [`MAX_BATCH_BYTES`] less room for
/// the fixed fields and the signature. Publishers cut by this as well as by entry count.
pub const MAX_ENTRY_BYTES: usize = MAX_BATCH_BYTES - 256;

/// Splits `entries` (in order) into runs of at most [`MAX_ENTRIES_PER_BATCH`] entries and
/// [`MAX_ENTRY_BYTES`] encoded bytes each; never returns an empty run.
pub fn runs_within_limits(
    entries: Vec<LocatorEntry>,
    max_entries: usize,
) -> Vec<Vec<LocatorEntry>> {
    let max_entries = max_entries.clamp(1, MAX_ENTRIES_PER_BATCH);
    let mut runs = Vec::new();
    let mut run: Vec<LocatorEntry> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry.encoded_len();
        if !run.is_empty() && (run.len() >= max_entries || bytes + size > MAX_ENTRY_BYTES) {
            runs.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += size;
        run.push(entry);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}
/// Largest encoded signed batch.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Sequence number of a publisher's first batch.
pub const FIRST_SEQUENCE: u64 = 1;
/// `previous_hash` of the first batch.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The signed part of a batch.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct BatchBody {
    /// The publishing node.
    pub publisher: NodeId,
    /// Position in the publisher's log, starting at [`FIRST_SEQUENCE`], without gaps.
    pub sequence: u64,
    /// [`BatchBody::hash`] of the previous batch, or [`GENESIS_HASH`] for the first.
    pub previous_hash: [u8; 32],
    /// When the batch was cut (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Entries, sorted by patient key, each patient at most once.
    pub entries: Vec<LocatorEntry>,
}

/// A batch and its signature by the publisher's key.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedBatch {
    /// What was signed.
    pub body: BatchBody,
    /// ed25519 signature over [`BatchBody::signing_bytes`].
    pub signature: [u8; 64],
}

/// Why a batch's signature does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The publisher field is not a valid ed25519 point.
    #[error("publisher key is not a valid ed25519 public key")]
    BadPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

impl BatchBody {
    /// The exact bytes the publisher signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        crate::signing::signing_bytes(BATCH_SIGNATURE_DOMAIN, self)
    }

    /// The hash that the next batch names as `previous_hash`.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(BATCH_HASH_DOMAIN);
        hasher.update(codec::encode(self));
        hasher.finalize().into()
    }

    /// Signs the body. `key` must be the log's key in force at this sequence: the
    /// publisher's own key unless the log was handed over ([`crate::handover`]).
    pub fn sign(self, key: &SigningKey) -> SignedBatch {
        let signature = crate::signing::sign(key, BATCH_SIGNATURE_DOMAIN, &self);
        SignedBatch {
            body: self,
            signature,
        }
    }

    /// Checks the structural rules: bounds, order, holder equals publisher.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.entries.len() > MAX_ENTRIES_PER_BATCH {
            return Err(DecodeError::Invalid(format!(
                "batch has {} entries, at most {MAX_ENTRIES_PER_BATCH} allowed",
                self.entries.len()
            )));
        }
        if self.sequence < FIRST_SEQUENCE {
            return Err(DecodeError::Invalid("sequence numbers start at 1".into()));
        }
        if self.sequence == FIRST_SEQUENCE && self.previous_hash != GENESIS_HASH {
            return Err(DecodeError::Invalid(
                "the first batch names the all-zero previous hash".into(),
            ));
        }
        for entry in &self.entries {
            entry.validate()?;
            if entry.holder != self.publisher {
                return Err(DecodeError::Invalid(
                    "an entry's holder must be the batch's publisher".into(),
                ));
            }
        }
        if !self.entries.windows(2).all(|w| w[0].patient < w[1].patient) {
            return Err(DecodeError::Invalid(
                "entries must be sorted by patient key, each patient once".into(),
            ));
        }
        Ok(())
    }
}

impl SignedBatch {
    /// Encodes the signed batch for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and structurally validates a signed batch (the signature is checked by
    /// [`SignedBatch::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let batch: Self = codec::decode(bytes, MAX_BATCH_BYTES)?;
        batch.body.validate()?;
        Ok(batch)
    }

    /// Verifies the signature against the publisher key named in the body.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.verify_by(&self.body.publisher)
    }

    /// Verifies the signature by `key`: the key in force at this batch's sequence (the
    /// publisher's first key unless the log was handed over, see [`crate::handover`]).
    pub fn verify_by(&self, key: &NodeId) -> Result<(), SignatureError> {
        crate::signing::verify(key, BATCH_SIGNATURE_DOMAIN, &self.body, &self.signature)
    }

    /// Verifies many batches at once (ed25519 batch verification, several times faster than
    /// one by one). On failure, tells which batches are bad by checking them one by one.
    pub fn verify_many(batches: &[&SignedBatch]) -> Vec<Result<(), SignatureError>> {
        let mut messages = Vec::with_capacity(batches.len());
        let mut signatures = Vec::with_capacity(batches.len());
        let mut keys = Vec::with_capacity(batches.len());
        for batch in batches {
            match VerifyingKey::from_bytes(&batch.body.publisher.0) {
                Ok(key) => keys.push(key),
                Err(_) => return batches.iter().map(|b| b.verify()).collect(),
            }
            messages.push(batch.body.signing_bytes());
            signatures.push(Signature::from_bytes(&batch.signature));
        }
        let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        if ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok() {
            batches.iter().map(|_| Ok(())).collect()
        } else {
            batches.iter().map(|b| b.verify()).collect()
        }
    }
}
