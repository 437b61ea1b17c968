//! Log compaction: a publisher replaces the prefix of its log with a **signed snapshot** of
//! its live entries at a sequence number; peers that are further behind than the oldest
//! batch kept sync from the snapshot plus the tail.
//!
//! A snapshot is cut into chunks of at most [`MAX_ENTRIES_PER_BATCH`] entries and
//! [`MAX_CHUNK_BYTES`] encoded bytes, so that every decode stays bounded. Each chunk is signed on its own over
//! `SNAPSHOT_SIGNATURE_DOMAIN || encode(SnapshotChunkBody)`; a receiver installs a snapshot
//! only when it holds every part `0..parts` and all of them name the same publisher,
//! sequence and head hash.

use crate::batch::{SignatureError, MAX_ENTRIES_PER_BATCH};
use crate::codec::{self, DecodeError};
use crate::locator::{LocatorEntry, NodeId};
use ed25519_dalek::SigningKey;

/// Domain-separation prefix of the bytes a snapshot chunk signature covers.
pub const SNAPSHOT_SIGNATURE_DOMAIN: &[u8] = b"zorgmesh/locator-snapshot/v1\n";
/// Most parts one snapshot may have (268 million entries).
pub const MAX_SNAPSHOT_PARTS: u32 = 65_536;
/// Largest encoded chunk.
pub const MAX_CHUNK_BYTES: usize = crate::batch::MAX_BATCH_BYTES;

/// The signed part of a snapshot chunk.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SnapshotChunkBody {
    /// The publisher whose log this compacts.
    pub publisher: NodeId,
    /// The last batch the snapshot covers.
    pub sequence: u64,
    /// [`crate::batch::BatchBody::hash`] of that batch: the log continues from it.
    pub head_hash: [u8; 32],
    /// This chunk's index, from 0.
    pub part: u32,
    /// Number of chunks of the snapshot.
    pub parts: u32,
    /// When the snapshot was made (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Live entries, sorted by patient key; chunk `k` holds the `k`-th run of them.
    pub entries: Vec<LocatorEntry>,
}

/// A chunk and the publisher's signature.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedSnapshotChunk {
    /// What was signed.
    pub body: SnapshotChunkBody,
    /// ed25519 signature by `body.publisher`.
    pub signature: [u8; 64],
}

impl SnapshotChunkBody {
    /// The exact bytes the publisher signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        crate::signing::signing_bytes(SNAPSHOT_SIGNATURE_DOMAIN, self)
    }

    /// Checks bounds and ordering.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.parts == 0 || self.parts > MAX_SNAPSHOT_PARTS || self.part >= self.parts {
            return Err(DecodeError::Invalid(format!(
                "snapshot part {} of {} is out of range",
                self.part, self.parts
            )));
        }
        if self.sequence == 0 {
            return Err(DecodeError::Invalid(
                "a snapshot covers at least one batch".into(),
            ));
        }
        if self.entries.len() > MAX_ENTRIES_PER_BATCH {
            return Err(DecodeError::Invalid("snapshot chunk too large".into()));
        }
        for entry in &self.entries {
            entry.validate()?;
            if entry.holder != self.publisher || entry.retracted {
                return Err(DecodeError::Invalid(
                    "a snapshot holds the publisher's live entries only".into(),
                ));
            }
        }
        if !self.entries.windows(2).all(|w| w[0].patient < w[1].patient) {
            return Err(DecodeError::Invalid(
                "snapshot entries must be sorted by patient key".into(),
            ));
        }
        Ok(())
    }
}

impl SignedSnapshotChunk {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and validates (the signature is checked by [`SignedSnapshotChunk::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let chunk: Self = codec::decode(bytes, MAX_CHUNK_BYTES)?;
        chunk.body.validate()?;
        Ok(chunk)
    }

    /// Verifies the publisher's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.verify_by(&self.body.publisher)
    }

    /// Verifies the signature by `key` (a key of the publisher's log in force at or after
    /// the snapshot's sequence).
    pub fn verify_by(&self, key: &NodeId) -> Result<(), SignatureError> {
        crate::signing::verify(key, SNAPSHOT_SIGNATURE_DOMAIN, &self.body, &self.signature)
    }
}

/// Cuts and signs a snapshot of `entries` (the publisher's live entries) at `sequence`.
pub fn cut_snapshot(
    key: &SigningKey,
    sequence: u64,
    head_hash: [u8; 32],
    entries: Vec<LocatorEntry>,
    now_ms: u64,
) -> Vec<SignedSnapshotChunk> {
    let publisher = NodeId(key.verifying_key().to_bytes());
    cut_snapshot_of(publisher, key, sequence, head_hash, entries, now_ms)
}

/// Cuts a snapshot of log `publisher`, signed by `key`, the log's key in force now (see
/// [`crate::handover`]).
pub fn cut_snapshot_of(
    publisher: NodeId,
    key: &SigningKey,
    sequence: u64,
    head_hash: [u8; 32],
    mut entries: Vec<LocatorEntry>,
    now_ms: u64,
) -> Vec<SignedSnapshotChunk> {
    entries.retain(|e| !e.retracted);
    entries.sort_by_key(|e| e.patient);
    // Cut by entry count and by encoded size: every chunk stays within MAX_CHUNK_BYTES.
    let chunks: Vec<Vec<LocatorEntry>> = if entries.is_empty() {
        vec![Vec::new()]
    } else {
        crate::batch::runs_within_limits(entries, MAX_ENTRIES_PER_BATCH)
    };
    let parts = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(part, entries)| {
            let body = SnapshotChunkBody {
                publisher,
                sequence,
                head_hash,
                part: part as u32,
                parts,
                created_at_ms: now_ms,
                entries,
            };
            let signature = crate::signing::sign(key, SNAPSHOT_SIGNATURE_DOMAIN, &body);
            SignedSnapshotChunk { body, signature }
        })
        .collect()
}
