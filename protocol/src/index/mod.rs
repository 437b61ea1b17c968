//! The locator index every node keeps: which holders have data for which patient.
//!
//! Batches enter through [`LocatorIndex::receive_batch`], which decides, without any I/O,
//! whether a batch is applied, a harmless duplicate, buffered behind a gap, or rejected.
//! Gossip maps the verdicts onto accept / ignore / reject, which feed peer scoring.

use crate::batch::{SignatureError, SignedBatch, FIRST_SEQUENCE, GENESIS_HASH};
use crate::codec::DecodeError;
use crate::handover::{key_in_force, HandOverBody};
use crate::identity::PublisherInfo;
use crate::locator::{LocatorEntry, NodeId};
use crate::patient::PatientKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub mod entries;
pub mod verified;
pub use entries::{EntryStore, MemoryEntries, PublisherHead, StoreError};
pub use verified::VerifiedSignatures;

/// Bounds of an index.
#[derive(Clone, Copy, Debug)]
pub struct IndexLimits {
    /// Out-of-order batches buffered per publisher while waiting for a gap to fill.
    pub max_pending_per_publisher: usize,
    /// Publishers the index accepts.
    pub max_publishers: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        Self {
            max_pending_per_publisher: 256,
            max_publishers: 100_000,
        }
    }
}

/// What happened to a batch the index accepted or ignored.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The batch (and any buffered batches it unblocked) entered the index.
    Applied {
        /// Sequence numbers applied, in order.
        sequences: Vec<u64>,
        /// Patients whose entry changed.
        patients: Vec<PatientKey>,
    },
    /// The index already has this batch.
    Duplicate,
    /// The batch is valid but earlier batches are missing; it waits in a bounded buffer.
    Buffered {
        /// First missing sequence number.
        missing_from: u64,
        /// Last missing sequence number.
        missing_to: u64,
    },
}

/// A signed batch with its body's hash ([`crate::batch::BatchBody::hash`]) computed once:
/// the index chains on it, compares forks by it, and a shared [`VerifiedSignatures`]
/// remembers signatures under it. Made only by [`HashedBatch::new`], so the hash is
/// always the batch's.
///
/// Clones share one allocation, and the first index that verifies the signature records
/// the key it verified under, so the indexes of a simulator that all receive one batch
/// check its signature once (the same verdicts: a batch is immutable, and another key is
/// checked afresh).
#[derive(Clone, Debug)]
pub struct HashedBatch(std::sync::Arc<HashedInner>);

#[derive(Debug)]
struct HashedInner {
    batch: SignedBatch,
    hash: [u8; 32],
    verified_by: std::sync::OnceLock<NodeId>,
}

impl HashedBatch {
    /// Hashes `batch`.
    pub fn new(batch: SignedBatch) -> Self {
        let hash = batch.body.hash();
        Self(std::sync::Arc::new(HashedInner {
            batch,
            hash,
            verified_by: std::sync::OnceLock::new(),
        }))
    }

    /// The batch.
    pub fn batch(&self) -> &SignedBatch {
        &self.0.batch
    }

    /// Its body's hash.
    pub fn hash(&self) -> [u8; 32] {
        self.0.hash
    }
}

/// Why the index refused a batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchRejection {
    /// No verified certificate is known for the publisher.
    #[error("publisher {0} has no verified certificate in this network")]
    UnknownPublisher(NodeId),
    /// The publisher's certificate is not valid at `now`.
    #[error("publisher {0}'s certificate is not valid now")]
    CertificateNotValid(NodeId),
    /// The batch breaks a structural rule.
    #[error(transparent)]
    Invalid(#[from] DecodeError),
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    Signature(#[from] SignatureError),
    /// The publisher signed two different batches with the same sequence number.
    #[error("publisher {publisher} forked its log at sequence {sequence}")]
    Fork {
        /// The publisher.
        publisher: NodeId,
        /// The sequence number signed twice.
        sequence: u64,
    },
    /// The batch's `previous_hash` does not match the batch before it.
    #[error("batch {sequence} of {publisher} does not chain to the batch before it")]
    BrokenChain {
        /// The publisher.
        publisher: NodeId,
        /// The batch's sequence number.
        sequence: u64,
    },
    /// The buffer for out-of-order batches of this publisher is full.
    #[error("too many out-of-order batches buffered for {0}")]
    BufferFull(NodeId),
    /// The index's store could not take the batch (the index did not change).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BatchRejection {
    /// True when the sender of the batch is at fault (the verdict should lower its score);
    /// false when the batch was merely not useful now.
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(
            self,
            BatchRejection::BufferFull(_) | BatchRejection::Store(_)
        )
    }
}

/// How a verified record's hand-over chain stands against the one the index holds.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainStanding {
    /// The chain is the newest known: the record's key is the log's key in force, and its
    /// certificate facts now describe the publisher.
    Current,
    /// The chain is an older prefix of the one held: the record was signed by a key that
    /// has since handed the log over. Its batch (if any) is still judged by the key
    /// schedule; its certificate and address are not taken.
    Stale,
}

/// Why the index does not admit a publisher.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    /// The index holds as many publishers as it may.
    #[error("the index is full")]
    Full,
    /// The log, or the key now in force for it, is revoked.
    #[error("publisher {0} is revoked")]
    Revoked(NodeId),
    /// The record's hand-overs contradict the ones held (two different successors, or a
    /// hand-over from a point the log has already passed under its old key).
    #[error("publisher {publisher}'s hand-overs contradict the ones held: {reason}")]
    HandOverConflict {
        /// The log.
        publisher: NodeId,
        /// What contradicts.
        reason: String,
    },
}

/// A holder of a patient's data, as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderLocation {
    /// The holder's certificate facts.
    pub info: PublisherInfo,
    /// Its data-plane address, if a node record has been seen.
    pub data_address: Option<String>,
    /// Its locator entry for the patient.
    pub entry: LocatorEntry,
}

#[derive(Debug)]
struct PublisherState {
    /// Shared: a process that runs many indexes (the simulator) admits each publisher to
    /// all of them with one allocation.
    info: Arc<PublisherInfo>,
    data_address: Option<String>,
    record_issued_at_ms: u64,
    next_sequence: u64,
    head_hash: [u8; 32],
    pending: BTreeMap<u64, HashedBatch>,
    /// The log's hand-overs, oldest first (verified by the caller).
    handovers: Vec<HandOverBody>,
}

impl PublisherState {
    fn key_at(&self, sequence: u64) -> NodeId {
        key_in_force(self.info.node, &self.handovers, sequence)
    }

    fn current_key(&self) -> NodeId {
        self.handovers.last().map_or(self.info.node, |h| h.new_key)
    }

    /// The hand-over that starts at `sequence`, if any (the last one when several do).
    fn handover_at(&self, sequence: u64) -> Option<&HandOverBody> {
        self.handovers
            .iter()
            .rev()
            .find(|h| h.from_sequence == sequence)
    }
}

/// The sans-IO locator index. Its entries and each publisher's head live in an
/// [`EntryStore`] (by default the compact in-memory [`MemoryEntries`]); the publishers'
/// certificate facts, hand-overs and out-of-order buffers are kept here.
#[derive(Debug)]
pub struct LocatorIndex<S: EntryStore = MemoryEntries> {
    limits: IndexLimits,
    publishers: HashMap<NodeId, PublisherState, ahash::RandomState>,
    store: S,
    /// Signatures other indexes of this process already checked (a simulator's nodes).
    verified: Option<VerifiedSignatures>,
    revoked: std::collections::HashSet<NodeId>,
    revoked_keys: std::collections::HashSet<NodeId>,
}

impl Default for LocatorIndex {
    fn default() -> Self {
        Self::new(IndexLimits::default())
    }
}

/// What installing a snapshot did.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The snapshot replaced the publisher's entries up to its sequence (and buffered
    /// batches that follow it were applied).
    Installed {
        /// The publisher's head after installing.
        head: u64,
    },
    /// The index is already at or past the snapshot's sequence.
    Stale,
}

impl LocatorIndex {
    /// An empty index in memory.
    pub fn new(limits: IndexLimits) -> Self {
        Self::with_store(limits, MemoryEntries::new())
    }

    /// A publisher's live entries, sorted by patient key (what its snapshot holds).
    pub fn publisher_entries(&self, publisher: &NodeId) -> Vec<LocatorEntry> {
        self.store.publisher_entries(publisher)
    }
}

impl<S: EntryStore> LocatorIndex<S> {
    /// An index over `store`: a publisher admitted again goes on from the head the store
    /// recorded for it (a node restarts without replaying its peers' logs).
    pub fn with_store(limits: IndexLimits, store: S) -> Self {
        Self {
            limits,
            publishers: HashMap::default(),
            store,
            verified: None,
            revoked: Default::default(),
            revoked_keys: Default::default(),
        }
    }

    /// Checks batch signatures through `verified`, shared with other indexes of this
    /// process, so that a batch they checked is not checked again.
    pub fn share_verified_signatures(&mut self, verified: VerifiedSignatures) {
        self.verified = Some(verified);
    }

    /// The store of the entries.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Drops a publisher's entries and head from the store and starts its log again from
    /// the first sequence, keeping its certificate facts and hand-overs: for a store whose
    /// head is ahead of the log kept beside it (the log's last writes were lost, or the
    /// log was restored from a backup), so that the log is applied again.
    pub fn restart_log(&mut self, publisher: &NodeId) -> Result<(), StoreError> {
        self.store.remove_publisher(publisher)?;
        if let Some(state) = self.publishers.get_mut(publisher) {
            state.next_sequence = FIRST_SEQUENCE;
            state.head_hash = GENESIS_HASH;
            state.pending.clear();
        }
        Ok(())
    }

    /// The store of the entries, to tidy it up (a sweep) or make it durable.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Records a publisher whose certificate chain the caller has verified and that never
    /// handed its log over. Returns false when the index is full and the publisher is new,
    /// or when the publisher is revoked.
    pub fn admit_publisher(&mut self, info: impl Into<Arc<PublisherInfo>>) -> bool {
        self.admit_log(info, &[]).is_ok()
    }

    /// Records a publisher from a verified record: `info` describes the record's
    /// certificate with `info.node` set to the log id, `chain` is the record's verified
    /// hand-over chain. A chain that extends the one held is taken on (the log's batches
    /// from each hand-over's `from_sequence` on verify under its new key).
    pub fn admit_log(
        &mut self,
        info: impl Into<Arc<PublisherInfo>>,
        chain: &[HandOverBody],
    ) -> Result<ChainStanding, AdmitError> {
        let info: Arc<PublisherInfo> = info.into();
        let log = info.node;
        if self.revoked.contains(&log) {
            return Err(AdmitError::Revoked(log));
        }
        let record_key = chain.last().map_or(log, |h| h.new_key);
        let conflict = |reason: String| AdmitError::HandOverConflict {
            publisher: log,
            reason,
        };
        let standing = match self.publishers.get_mut(&log) {
            Some(state) => {
                let held = state.handovers.len();
                let shared = held.min(chain.len());
                if state.handovers[..shared] != chain[..shared] {
                    return Err(conflict("two different hand-overs of one key".into()));
                }
                if chain.len() < held {
                    ChainStanding::Stale
                } else {
                    for handover in &chain[held..] {
                        // The old key must not have signed past the hand-over point.
                        if handover.from_sequence < state.next_sequence {
                            return Err(conflict(format!(
                                "hand-over from sequence {} but the log is at {} under the old key",
                                handover.from_sequence,
                                state.next_sequence - 1
                            )));
                        }
                        if handover.from_sequence == state.next_sequence
                            && handover.previous_hash != state.head_hash
                        {
                            return Err(conflict(format!(
                                "hand-over at sequence {} names another previous batch than the one held",
                                handover.from_sequence
                            )));
                        }
                        // Buffered batches from the hand-over on were checked under the
                        // old key; drop them (sync fetches them again).
                        state.pending.retain(|s, _| *s < handover.from_sequence);
                    }
                    state.handovers = chain.to_vec();
                    state.info = info;
                    ChainStanding::Current
                }
            }
            None => {
                if self.publishers.len() >= self.limits.max_publishers {
                    return Err(AdmitError::Full);
                }
                // A store that failed to say counts as knowing nothing: the log is
                // then applied from its start again, which only repeats writes.
                let head = self
                    .store
                    .head(&log)
                    .ok()
                    .flatten()
                    .unwrap_or(PublisherHead {
                        sequence: 0,
                        hash: GENESIS_HASH,
                    });
                self.publishers.insert(
                    log,
                    PublisherState {
                        info,
                        data_address: None,
                        record_issued_at_ms: 0,
                        next_sequence: head.sequence + FIRST_SEQUENCE,
                        head_hash: head.hash,
                        pending: BTreeMap::new(),
                        handovers: chain.to_vec(),
                    },
                );
                ChainStanding::Current
            }
        };
        if standing == ChainStanding::Current && self.revoked_keys.contains(&record_key) {
            // Its entries are invisible whether or not the store managed to drop them.
            let _ = self.revoke_publisher(log);
            return Err(AdmitError::Revoked(log));
        }
        Ok(standing)
    }

    /// The key a publisher's log is signed with now.
    pub fn current_key(&self, publisher: &NodeId) -> Option<NodeId> {
        self.publishers
            .get(publisher)
            .map(PublisherState::current_key)
    }

    /// The key that signs sequence `sequence` of a publisher's log.
    pub fn key_at(&self, publisher: &NodeId, sequence: u64) -> Option<NodeId> {
        self.publishers.get(publisher).map(|s| s.key_at(sequence))
    }

    /// A publisher's hand-overs, oldest first.
    pub fn handovers(&self, publisher: &NodeId) -> &[HandOverBody] {
        self.publishers
            .get(publisher)
            .map_or(&[], |s| s.handovers.as_slice())
    }

    /// The CA revoked `key`. When it is the key in force of a log, the log is revoked (see
    /// [`LocatorIndex::revoke_publisher`]) and its id and removed entry count returned; a
    /// key that has handed its log over leaves the log alone. A log whose chain later
    /// arrives at a revoked key is not admitted.
    pub fn revoke_key(&mut self, key: NodeId) -> Option<(NodeId, usize)> {
        self.revoked_keys.insert(key);
        let log = self
            .publishers
            .iter()
            .find(|(_, state)| state.current_key() == key)
            .map(|(log, _)| *log)?;
        Some((log, self.revoke_publisher(log).unwrap_or(0)))
    }

    /// Removes a revoked publisher: its entries leave the index, its buffered batches are
    /// dropped, and it is never admitted again (a node that comes back does so under a new
    /// key). Returns the number of live entries removed. Should the store fail to remove
    /// them, they stay invisible all the same (no lookup names a holder the index does not
    /// know) and the error is returned.
    pub fn revoke_publisher(&mut self, node: NodeId) -> Result<usize, StoreError> {
        self.revoked.insert(node);
        self.publishers.remove(&node);
        Ok(self.store.remove_publisher(&node)? as usize)
    }

    /// True when the publisher was revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked.contains(node)
    }

    /// True when the publisher has been admitted.
    pub fn knows_publisher(&self, node: &NodeId) -> bool {
        self.publishers.contains_key(node)
    }

    /// Records a publisher's data-plane address from a verified node record; records older
    /// than the one held are ignored. Returns true when the record was newer.
    pub fn update_address(&mut self, node: &NodeId, address: &str, issued_at_ms: u64) -> bool {
        match self.publishers.get_mut(node) {
            Some(state)
                if issued_at_ms > state.record_issued_at_ms || state.data_address.is_none() =>
            {
                state.record_issued_at_ms = issued_at_ms;
                state.data_address = Some(address.to_owned());
                true
            }
            _ => false,
        }
    }

    /// The data-plane address the index holds for a publisher.
    pub fn data_address(&self, node: &NodeId) -> Option<&str> {
        self.publishers
            .get(node)
            .and_then(|s| s.data_address.as_deref())
    }

    /// Feeds one batch to the index.
    pub fn receive_batch(
        &mut self,
        batch: SignedBatch,
        now_ms: u64,
    ) -> Result<BatchOutcome, BatchRejection> {
        self.receive_hashed(HashedBatch::new(batch), now_ms)
    }

    /// Feeds one batch whose hash was computed before (a simulator hands the same batch to
    /// thousands of indexes) to the index: the same verdicts as
    /// [`LocatorIndex::receive_batch`].
    pub fn receive_hashed(
        &mut self,
        hashed: HashedBatch,
        now_ms: u64,
    ) -> Result<BatchOutcome, BatchRejection> {
        let batch = hashed.batch();
        let publisher = batch.body.publisher;
        let limits = self.limits;
        let state = self
            .publishers
            .get_mut(&publisher)
            .ok_or(BatchRejection::UnknownPublisher(publisher))?;
        if now_ms < state.info.valid_from_ms || now_ms > state.info.valid_until_ms {
            return Err(BatchRejection::CertificateNotValid(publisher));
        }
        batch.body.validate()?;
        let sequence = batch.body.sequence;
        if sequence < state.next_sequence {
            // Old news, unless it contradicts the head we hold.
            if sequence + 1 == state.next_sequence && hashed.hash() != state.head_hash {
                batch.verify_by(&state.key_at(sequence))?;
                return Err(BatchRejection::Fork {
                    publisher,
                    sequence,
                });
            }
            return Ok(BatchOutcome::Duplicate);
        }
        let key = state.key_at(sequence);
        if hashed.0.verified_by.get() != Some(&key) {
            match &self.verified {
                Some(verified) => verified.verify_hashed(batch, &hashed.hash(), &key)?,
                None => batch.verify_by(&key)?,
            }
            let _ = hashed.0.verified_by.set(key);
        }
        if let Some(handover) = state.handover_at(sequence) {
            // The first batch under a new key continues the log where the hand-over said.
            if batch.body.previous_hash != handover.previous_hash {
                return Err(BatchRejection::BrokenChain {
                    publisher,
                    sequence,
                });
            }
        }
        if sequence > state.next_sequence {
            if let Some(held) = state.pending.get(&sequence) {
                if held.hash() != hashed.hash() {
                    return Err(BatchRejection::Fork {
                        publisher,
                        sequence,
                    });
                }
                return Ok(BatchOutcome::Duplicate);
            }
            if state.pending.len() >= limits.max_pending_per_publisher {
                return Err(BatchRejection::BufferFull(publisher));
            }
            let missing_from = state.next_sequence;
            state.pending.insert(sequence, hashed);
            let missing_to = (missing_from..)
                .find(|s| state.pending.contains_key(s))
                .map_or(sequence - 1, |s| s - 1);
            return Ok(BatchOutcome::Buffered {
                missing_from,
                missing_to,
            });
        }
        if batch.body.previous_hash != state.head_hash {
            return Err(BatchRejection::BrokenChain {
                publisher,
                sequence,
            });
        }
        // Apply this batch and every buffered batch that now follows on.
        let mut sequences = Vec::new();
        let mut patients = Vec::new();
        let mut next = Some(hashed);
        while let Some(current) = next.take() {
            let head = PublisherHead {
                sequence: current.batch().body.sequence,
                hash: current.hash(),
            };
            if let Err(e) = self
                .store
                .apply_batch(&publisher, &current.batch().body.entries, head)
            {
                if sequences.is_empty() {
                    return Err(e.into());
                }
                // What was applied stands; this one waits for the next try.
                state.pending.insert(current.batch().body.sequence, current);
                break;
            }
            state.head_hash = head.hash;
            state.next_sequence = head.sequence + 1;
            sequences.push(head.sequence);
            patients.extend(current.batch().body.entries.iter().map(|e| e.patient));
            if let Some(candidate) = state.pending.remove(&state.next_sequence) {
                if candidate.batch().body.previous_hash == state.head_hash {
                    next = Some(candidate);
                } else {
                    // A buffered batch that does not chain is dropped; sync will refetch.
                    state.pending.clear();
                }
            }
        }
        state.pending.retain(|s, _| *s > state.next_sequence);
        Ok(BatchOutcome::Applied {
            sequences,
            patients,
        })
    }

    /// Installs a publisher's signed snapshot (all of its chunks): the publisher's entries
    /// become the snapshot's, its log continues after the snapshot's sequence.
    pub fn install_snapshot(
        &mut self,
        chunks: &[crate::snapshot::SignedSnapshotChunk],
        now_ms: u64,
    ) -> Result<SnapshotOutcome, BatchRejection> {
        let first = chunks.first().ok_or_else(|| {
            BatchRejection::Invalid(DecodeError::Invalid("empty snapshot".into()))
        })?;
        let (publisher, sequence, head_hash, parts) = (
            first.body.publisher,
            first.body.sequence,
            first.body.head_hash,
            first.body.parts,
        );
        let state = self
            .publishers
            .get(&publisher)
            .ok_or(BatchRejection::UnknownPublisher(publisher))?;
        if now_ms < state.info.valid_from_ms || now_ms > state.info.valid_until_ms {
            return Err(BatchRejection::CertificateNotValid(publisher));
        }
        if chunks.len() != parts as usize {
            return Err(BatchRejection::Invalid(DecodeError::Invalid(format!(
                "snapshot has {parts} parts, {} given",
                chunks.len()
            ))));
        }
        for (k, chunk) in chunks.iter().enumerate() {
            chunk.body.validate()?;
            let b = &chunk.body;
            if b.publisher != publisher
                || b.sequence != sequence
                || b.head_hash != head_hash
                || b.parts != parts
                || b.part as usize != k
            {
                return Err(BatchRejection::Invalid(DecodeError::Invalid(
                    "snapshot parts do not belong together".into(),
                )));
            }
            // Signed by the key in force at the snapshot's sequence or by a later one of
            // the log (a node compacts with the key it holds now).
            let mut keys = vec![state.key_at(sequence)];
            keys.extend(
                state
                    .handovers
                    .iter()
                    .filter(|h| h.from_sequence > sequence)
                    .map(|h| h.new_key),
            );
            let mut verified = Err(SignatureError::BadSignature);
            for key in &keys {
                verified = chunk.verify_by(key);
                if verified.is_ok() {
                    break;
                }
            }
            verified?;
        }
        if state
            .handover_at(sequence + 1)
            .is_some_and(|h| h.previous_hash != head_hash)
        {
            return Err(BatchRejection::BrokenChain {
                publisher,
                sequence,
            });
        }
        if sequence < state.next_sequence {
            return Ok(SnapshotOutcome::Stale);
        }
        // Replace the publisher's entries.
        let entries: Vec<LocatorEntry> = chunks
            .iter()
            .flat_map(|chunk| chunk.body.entries.iter().cloned())
            .collect();
        self.store.replace_publisher(
            &publisher,
            &entries,
            PublisherHead {
                sequence,
                hash: head_hash,
            },
        )?;
        let state = self.publishers.get_mut(&publisher).expect("checked above");
        state.next_sequence = sequence + 1;
        state.head_hash = head_hash;
        state.pending.retain(|s, _| *s > sequence);
        // Buffered batches right after the snapshot can now be applied.
        let mut head = sequence;
        if let Some(next) = state.pending.remove(&(sequence + 1)) {
            if let Ok(BatchOutcome::Applied { sequences, .. }) = self.receive_hashed(next, now_ms) {
                head = sequences.last().copied().unwrap_or(head);
            }
        }
        Ok(SnapshotOutcome::Installed { head })
    }

    /// The hash of the last batch applied for a publisher.
    pub fn head_hash(&self, publisher: &NodeId) -> Option<[u8; 32]> {
        self.publishers.get(publisher).map(|s| s.head_hash)
    }

    /// The holders that currently have data for a patient (retracted entries left out),
    /// ordered by node id.
    pub fn holders(&self, patient: &PatientKey) -> Result<Vec<HolderLocation>, StoreError> {
        Ok(self
            .store
            .holders_of(patient)?
            .into_iter()
            .filter_map(|entry| {
                let state = self.publishers.get(&entry.holder)?;
                Some(HolderLocation {
                    info: PublisherInfo::clone(&state.info),
                    data_address: state.data_address.clone(),
                    entry,
                })
            })
            .collect())
    }

    /// Number of live (not retracted) entries.
    pub fn live_entries(&self) -> usize {
        self.store.live_entries() as usize
    }

    /// For each publisher, the last applied sequence number (0 when none).
    pub fn publisher_heads(&self) -> BTreeMap<NodeId, u64> {
        self.publishers
            .iter()
            .map(|(node, state)| (*node, state.next_sequence - 1))
            .collect()
    }

    /// Certificate facts of a publisher.
    pub fn publisher(&self, node: &NodeId) -> Option<&PublisherInfo> {
        self.publishers.get(node).map(|s| &*s.info)
    }

    /// Facts and data-plane address of every known publisher.
    pub fn publishers(&self) -> impl Iterator<Item = (&PublisherInfo, Option<&str>)> {
        self.publishers
            .values()
            .map(|s| (&*s.info, s.data_address.as_deref()))
    }
}
