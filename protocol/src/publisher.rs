//! A node's own publisher log: stages locator entries and cuts signed batches by size or
//! time window, so that one signature covers many entries.

use crate::batch::{
    BatchBody, SignedBatch, FIRST_SEQUENCE, GENESIS_HASH, MAX_ENTRIES_PER_BATCH, MAX_ENTRY_BYTES,
};
use crate::locator::{LocatorEntry, NodeId};
use crate::patient::PatientKey;
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;

/// When to cut a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Cut as soon as this many patients are staged (at most [`MAX_ENTRIES_PER_BATCH`]).
    pub max_entries: usize,
    /// Cut when the oldest staged entry has waited this long (ms).
    pub window_ms: u64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_entries: 1024,
            window_ms: 200,
        }
    }
}

/// The sans-IO publisher log. Feed it entries with [`PublisherLog::stage`]; ask
/// [`PublisherLog::next_deadline`] when to come back; call [`PublisherLog::poll`] to cut due
/// batches.
#[derive(Debug)]
pub struct PublisherLog {
    publisher: NodeId,
    policy: BatchPolicy,
    next_sequence: u64,
    head_hash: [u8; 32],
    staged: BTreeMap<PatientKey, LocatorEntry>,
    oldest_staged_at_ms: Option<u64>,
}

impl PublisherLog {
    /// A log that continues after `head` (`None` for a new log): the sequence and hash of the
    /// last batch this node signed, which it must have persisted before publishing it.
    pub fn new(publisher: NodeId, policy: BatchPolicy, head: Option<(u64, [u8; 32])>) -> Self {
        let (next_sequence, head_hash) = match head {
            Some((sequence, hash)) => (sequence + 1, hash),
            None => (FIRST_SEQUENCE, GENESIS_HASH),
        };
        Self {
            publisher,
            policy: BatchPolicy {
                max_entries: policy.max_entries.clamp(1, MAX_ENTRIES_PER_BATCH),
                ..policy
            },
            next_sequence,
            head_hash,
            staged: BTreeMap::new(),
            oldest_staged_at_ms: None,
        }
    }

    /// Stages the newest state of one patient; a later entry for the same patient replaces
    /// an earlier staged one.
    pub fn stage(&mut self, entry: LocatorEntry, now_ms: u64) {
        debug_assert_eq!(entry.holder, self.publisher);
        self.oldest_staged_at_ms.get_or_insert(now_ms);
        self.staged.insert(entry.patient, entry);
    }

    /// Number of staged entries.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// The sequence number the next batch will carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Continues the log after `sequence` (whose batch hash is `hash`) when that is ahead of
    /// it: a node that learns from its peers that it signed more than its store holds (a
    /// lost or restored store) must never sign those sequence numbers again. Returns
    /// whether the log moved.
    pub fn continue_after(&mut self, sequence: u64, hash: [u8; 32]) -> bool {
        if sequence < self.next_sequence {
            return false;
        }
        self.next_sequence = sequence + 1;
        self.head_hash = hash;
        true
    }

    /// Hash of the last batch cut (the genesis hash before the first).
    pub fn head_hash(&self) -> [u8; 32] {
        self.head_hash
    }

    /// The log id batches carry as their publisher.
    pub fn publisher(&self) -> NodeId {
        self.publisher
    }

    /// When [`PublisherLog::poll`] will next have work, if anything is staged.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.staged.len() >= self.policy.max_entries {
            return Some(0);
        }
        self.oldest_staged_at_ms
            .map(|t| t.saturating_add(self.policy.window_ms))
    }

    /// Cuts at most one due batch and signs it. Call repeatedly until `None`.
    pub fn poll(&mut self, now_ms: u64, key: &SigningKey) -> Option<SignedBatch> {
        let due = self.next_deadline()?;
        if now_ms < due {
            return None;
        }
        Some(self.cut(now_ms, key))
    }

    /// Cuts whatever is staged now (up to the size limit), due or not.
    pub fn flush(&mut self, now_ms: u64, key: &SigningKey) -> Option<SignedBatch> {
        if self.staged.is_empty() {
            return None;
        }
        Some(self.cut(now_ms, key))
    }

    fn cut(&mut self, now_ms: u64, key: &SigningKey) -> SignedBatch {
        // Cut by entry count and by encoded size, so a batch never exceeds MAX_BATCH_BYTES.
        let max_entries = self.policy.max_entries.clamp(1, MAX_ENTRIES_PER_BATCH);
        let mut entries = Vec::new();
        let mut bytes = 0;
        while let Some(entry) = self.staged.first_entry() {
            let size = entry.get().encoded_len();
            if !entries.is_empty()
                && (entries.len() >= max_entries || bytes + size > MAX_ENTRY_BYTES)
            {
                break;
            }
            bytes += size;
            entries.push(entry.remove());
        }
        self.oldest_staged_at_ms = if self.staged.is_empty() {
            None
        } else {
            Some(now_ms)
        };
        let body = BatchBody {
            publisher: self.publisher,
            sequence: self.next_sequence,
            previous_hash: self.head_hash,
            created_at_ms: now_ms,
            entries,
        };
        self.head_hash = body.hash();
        self.next_sequence += 1;
        body.sign(key)
    }
}
