//! Signatures already verified, shared by the indexes of one process.
//!
//! A simulator runs thousands of [`LocatorIndex`](super::LocatorIndex)es in one process,
//! each receiving the very same signed batches: checking each batch's ed25519 signature
//! once, not once per simulated node, gives the same verdicts at a fraction of the cost. A
//! node has one index and needs none of this.

use crate::batch::SignatureError;
use crate::batch::SignedBatch;
use crate::locator::NodeId;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Most signatures remembered (128 bytes each); when full, the set starts again (correct,
/// only slower).
pub const MAX_REMEMBERED: usize = 4_000_000;

/// A shared set of `(body hash, signature, key)` triples whose signature verified.
#[derive(Clone, Debug, Default)]
pub struct VerifiedSignatures(Arc<Mutex<HashSet<[u8; 128], ahash::RandomState>>>);

impl VerifiedSignatures {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `batch` by `key`, or remembers that it did before. Only successes are
    /// remembered, under a digest of the body, the signature and the key, so a batch with
    /// another signature or for another key is checked afresh.
    pub fn verify(&self, batch: &SignedBatch, key: &NodeId) -> Result<(), SignatureError> {
        self.verify_hashed(batch, &batch.body.hash(), key)
    }

    /// [`VerifiedSignatures::verify`] of a batch whose body hash is `body_hash` (the
    /// caller's [`super::HashedBatch`] computed it).
    pub(crate) fn verify_hashed(
        &self,
        batch: &SignedBatch,
        body_hash: &[u8; 32],
        key: &NodeId,
    ) -> Result<(), SignatureError> {
        let mut digest = [0u8; 128];
        digest[..32].copy_from_slice(body_hash);
        digest[32..96].copy_from_slice(&batch.signature);
        digest[96..].copy_from_slice(&key.0);
        if self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&digest)
        {
            return Ok(());
        }
        batch.verify_by(key)?;
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= MAX_REMEMBERED {
            set.clear();
        }
        set.insert(digest);
        Ok(())
    }

    /// Signatures remembered.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBody, GENESIS_HASH};

    #[test]
    fn a_remembered_signature_does_not_cover_another_signature_or_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let node = NodeId(key.verifying_key().to_bytes());
        let batch = BatchBody {
            publisher: node,
            sequence: 1,
            previous_hash: GENESIS_HASH,
            created_at_ms: 1,
            entries: Vec::new(),
        }
        .sign(&key);
        let verified = VerifiedSignatures::new();
        assert!(verified.verify(&batch, &node).is_ok());
        assert!(verified.verify(&batch, &node).is_ok());
        assert_eq!(verified.len(), 1);
        let mut forged = batch.clone();
        forged.signature[0] ^= 1;
        assert!(verified.verify(&forged, &node).is_err());
        let other = NodeId(
            ed25519_dalek::SigningKey::from_bytes(&[6; 32])
                .verifying_key()
                .to_bytes(),
        );
        assert!(verified.verify(&batch, &other).is_err());
        assert_eq!(verified.len(), 1, "failures are not remembered");
    }
}
