//! The node's view of the mesh: its locator index, fed by gossip and by its own log, and
//! the application-level validation every gossip message passes before it is accepted and
//! forwarded.
//!
//! Validation order: decode (bounded) → node record signature → certificate chain to this
//! network's CA, valid now (cached per certificate) → the record's node equals the batch's
//! publisher and the gossip author → the index's verdict (signature, sequence, chain).

use crate::index_store::DiskEntries;
use crate::storage::Storage;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use zorgmesh_certs::{TrustAnchor, VerifiedNode};
use zorgmesh_protocol::fetch::FetchFrame;
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::handover::{HandOverBody, SignedHandOver};
use zorgmesh_protocol::index::{
    AdmitError, BatchOutcome, ChainStanding, HolderLocation, IndexLimits, SnapshotOutcome,
};
use zorgmesh_protocol::record::SignedNodeRecord;
use zorgmesh_protocol::revocation::{AppliedRevocations, RevocationState, SignedRevocationList};
use zorgmesh_protocol::snapshot::SignedSnapshotChunk;
use zorgmesh_protocol::standing::{Answer, HolderStanding};
use zorgmesh_protocol::{LocatorIndex, NodeId, PatientKey, SignedBatch};

/// The log target of one line per gossiped batch applied, with each entry's propagation
/// lag (debug level): `RUST_LOG=warn,zorgmesh::propagation=debug`.
pub const PROPAGATION_LOG: &str = "zorgmesh::propagation";

/// Reason given when the index has no room for another publisher (not the sender's fault).
const INDEX_FULL: &str = "the index is full";

/// Most verified certificates kept in the cache.
const MAX_CACHED_CERTIFICATES: usize = 10_000;

/// The verdict on one gossip message; maps onto gossipsub's accept / ignore / reject.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: keep and forward.
    Accept,
    /// Harmless but not worth forwarding (duplicate, buffer full).
    Ignore,
    /// Invalid: drop and penalise the peer that sent it.
    Reject(String),
}

/// Why a range of a publisher's log cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BatchRangeError {
    /// Reading the stored log failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The range starts in a compacted prefix that no kept snapshot covers.
    #[error("batches from {from} are compacted here and no snapshot covers them (oldest kept: {oldest})")]
    Gap {
        /// First sequence asked for.
        from: u64,
        /// Oldest batch kept.
        oldest: u64,
    },
}

/// What applying a revocation list did.
#[derive(Debug, PartialEq, Eq)]
pub enum RevocationOutcome {
    /// The list is newer than the one held and now applies.
    Applied {
        /// Its sequence.
        sequence: u64,
        /// Nodes this list revoked that the previous one did not.
        newly_revoked: Vec<NodeId>,
        /// Live locator entries removed from the index.
        removed_entries: usize,
    },
    /// The node holds this list or a newer one.
    Stale,
}

/// The index and its validation.
pub struct Mesh {
    anchor: TrustAnchor,
    own_record: Mutex<Option<SignedNodeRecord>>,
    /// The newest current record of every log that was handed over: batches of such a log
    /// are served wrapped in it, so a peer that has not seen the hand-over learns it with
    /// the first batch, and a retired (perhaps revoked) key's record does not travel.
    handover_records: Mutex<HashMap<NodeId, SignedNodeRecord>>,
    sync_nudge: Option<tokio::sync::mpsc::Sender<Option<NodeId>>>,
    index: Mutex<LocatorIndex<DiskEntries>>,
    certificates: Mutex<HashMap<[u8; 32], VerifiedNode>>,
    storage: Arc<Storage>,
    own: NodeId,
    revocations: Mutex<RevocationState>,
    revocation_watch: tokio::sync::watch::Sender<u64>,
    forks_detected: std::sync::atomic::AtomicUsize,
    /// How each holder answered this node's fetches (false claims lower its gossip score).
    standings: Mutex<HashMap<NodeId, HolderStanding>>,
    /// Told the patients of applied entries that say their holder keeps a privacy Consent.
    consent_nudge: std::sync::OnceLock<tokio::sync::mpsc::Sender<PatientKey>>,
    /// What the last [`Mesh::restore`] did.
    last_restore: Mutex<RestoreReport>,
}

/// What a restore did: the batches it applied to the index from the kept logs (none that
/// the index on disk already held), and the logs it applied again from the start because
/// the index was ahead of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// This node's own batches read back (each is fed again; held ones change nothing).
    pub own_batches: usize,
    /// Other publishers' batches that entered the index.
    pub remote_batches: usize,
    /// Publishers whose log was applied again from its start.
    pub logs_applied_again: usize,
}

/// Holders whose standing is kept (more than any index holds publishers).
const MAX_STANDINGS: usize = 65_536;

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    (crate::fhir::service::now_ms() / 1000) as i64
}

impl Mesh {
    /// A mesh view for this node, whose verified certificate (of its key in force) is
    /// `own_certificate` and whose log was handed over along `own_handovers` (empty when it
    /// still signs with its first key).
    /// `sync_nudge` is told when a gap shows up (naming the publisher) or a new publisher
    /// announces itself, so that anti-entropy runs at once instead of at its next tick.
    pub fn new(
        anchor: TrustAnchor,
        storage: Arc<Storage>,
        own_certificate: &VerifiedNode,
        own_handovers: &[SignedHandOver],
        sync_nudge: Option<tokio::sync::mpsc::Sender<Option<NodeId>>>,
        index_store: DiskEntries,
    ) -> Self {
        let mut index = LocatorIndex::with_store(IndexLimits::default(), index_store);
        let own = own_handovers
            .first()
            .map_or(own_certificate.node, |h| h.body.log);
        let mut info = own_certificate.publisher_info();
        info.node = own;
        let chain: Vec<HandOverBody> = own_handovers.iter().map(|h| h.body.clone()).collect();
        if let Err(e) = index.admit_log(info, &chain) {
            tracing::error!(error = %e, "own log refused by own index");
        }
        Self {
            anchor,
            own_record: Mutex::new(None),
            handover_records: Mutex::new(HashMap::new()),
            sync_nudge,
            index: Mutex::new(index),
            certificates: Mutex::new(HashMap::new()),
            storage,
            own,
            revocations: Mutex::new(RevocationState::default()),
            revocation_watch: tokio::sync::watch::channel(0).0,
            forks_detected: std::sync::atomic::AtomicUsize::new(0),
            standings: Mutex::new(HashMap::new()),
            consent_nudge: std::sync::OnceLock::new(),
            last_restore: Mutex::new(RestoreReport::default()),
        }
    }

    /// Counts a holder's answer to a fetch for a patient its locator entry claims; its
    /// standing after it.
    pub fn record_answer(&self, holder: NodeId, answer: Answer, now_ms: u64) -> HolderStanding {
        let mut standings = self.standings.lock().unwrap_or_else(|e| e.into_inner());
        if standings.len() >= MAX_STANDINGS && !standings.contains_key(&holder) {
            return HolderStanding::default();
        }
        let standing = standings.entry(holder).or_default();
        standing.record(answer, now_ms);
        *standing
    }

    /// Every holder's standing, by its log.
    pub fn holder_standings(&self) -> Vec<(NodeId, HolderStanding)> {
        let standings = self.standings.lock().unwrap_or_else(|e| e.into_inner());
        standings.iter().map(|(id, s)| (*id, *s)).collect()
    }

    /// The gossip score each holder with recent false claims should have, by the key it
    /// signs with now (its libp2p identity).
    pub fn gossip_scores(&self, now_ms: u64) -> Vec<(NodeId, f64)> {
        self.holder_standings()
            .into_iter()
            .map(|(log, standing)| {
                let key = self.key_in_force(&log).unwrap_or(log);
                (key, standing.gossip_score(now_ms))
            })
            .collect()
    }

    fn revocation_state(&self) -> std::sync::MutexGuard<'_, RevocationState> {
        self.revocations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when the network CA revoked `node`.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revocation_state().is_revoked(node)
    }

    /// True when the log `log` no longer counts: the index revoked it (its key in force was
    /// revoked), or its first key is revoked and no hand-over away from that key is known.
    pub fn is_log_revoked(&self, log: &NodeId) -> bool {
        let index = self.index();
        index.is_revoked(log) || (self.is_revoked(log) && index.handovers(log).is_empty())
    }

    /// Every node the held revocation list names.
    pub fn revoked_nodes(&self) -> BTreeSet<NodeId> {
        self.revocation_state().revoked().clone()
    }

    /// The sequence of the held revocation list (0: none).
    pub fn revocation_sequence(&self) -> u64 {
        self.revocation_state().sequence()
    }

    /// The held revocation list.
    pub fn revocation_list(&self) -> Option<SignedRevocationList> {
        self.revocation_state().list().cloned()
    }

    /// Told each time a newer revocation list applies (its sequence).
    pub fn watch_revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocation_watch.subscribe()
    }

    /// Peer `peer` says it holds revocation list `sequence`: when that is newer than ours,
    /// anti-entropy syncs with that peer at once (its first question is the list).
    pub fn peer_revocation_sequence(&self, peer: NodeId, sequence: u64) {
        if sequence > self.revocation_sequence() {
            self.nudge(Some(peer));
        }
    }

    /// Older-sequence forks detected so far (a publisher signed two different batches for
    /// one sequence).
    pub fn forks_detected(&self) -> usize {
        self.forks_detected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks a revocation list (CA signature, network) and, when it is newer than the one
    /// held, keeps it durably and applies it: the revoked nodes' entries leave the index
    /// and their stored logs are dropped; watchers close their connections.
    pub fn apply_revocations(
        &self,
        list: SignedRevocationList,
    ) -> Result<RevocationOutcome, String> {
        let mut state = self.revocation_state();
        let newer = state
            .check(&list, &self.anchor.public_key(), self.anchor.network())
            .map_err(|e| e.to_string())?;
        if !newer {
            return Ok(RevocationOutcome::Stale);
        }
        // Durable before it takes effect: a restart re-applies it.
        self.storage
            .store_revocations(&list.to_bytes())
            .map_err(|e| format!("cannot keep the revocation list: {e}"))?;
        let applied = state.apply(list, &mut self.index());
        drop(state);
        for log in &applied.revoked_logs {
            if *log == self.own {
                continue;
            }
            if let Err(e) = self.storage.forget_publisher(&log.0) {
                tracing::error!(error = %e, node = %log, "cannot drop a revoked node's stored log");
            }
        }
        let AppliedRevocations {
            sequence,
            newly_revoked,
            removed_entries,
            ..
        } = applied;
        tracing::warn!(sequence, revoked = ?newly_revoked, removed_entries, "revocation list applied");
        self.revocation_watch.send_replace(sequence);
        Ok(RevocationOutcome::Applied {
            sequence,
            newly_revoked,
            removed_entries,
        })
    }

    /// Admits a peer to the gossip mesh: its certificate (DER) must chain to the network
    /// CA, be valid now, be for `key` (the key the peer proved in the handshake) and not be
    /// revoked.
    pub fn admit_member(&self, der: &[u8], key: &[u8; 32]) -> Result<VerifiedNode, String> {
        let verified = self
            .verify_certificate(der)
            .map_err(|e| format!("certificate refused: {e}"))?;
        if verified.node.0 != *key {
            return Err("the certificate is for another key than the one the peer proved".into());
        }
        if self.is_revoked(&verified.node) {
            return Err(format!(
                "node {} ({}) is revoked by the network CA",
                verified.identity.name, verified.node
            ));
        }
        Ok(verified)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, LocatorIndex<DiskEntries>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A certificate issued by the network CA, whatever its validity period (cached).
    fn verify_certificate_issued(&self, der: &[u8]) -> Result<VerifiedNode, String> {
        let digest: [u8; 32] = Sha256::digest(der).into();
        {
            let cache = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(verified) = cache.get(&digest) {
                return Ok(verified.clone());
            }
        }
        let verified = self
            .anchor
            .verify_node_certificate(der, None)
            .map_err(|e| e.to_string())?;
        let mut cache = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_CERTIFICATES {
            cache.clear();
        }
        cache.insert(digest, verified.clone());
        Ok(verified)
    }

    /// A certificate issued by the network CA and valid now.
    fn verify_certificate(&self, der: &[u8]) -> Result<VerifiedNode, String> {
        let verified = self.verify_certificate_issued(der)?;
        let now = unix_now();
        if now > verified.not_after {
            return Err(format!(
                "the certificate of {} expired ({} s since the epoch)",
                verified.identity.name, verified.not_after
            ));
        }
        if now < verified.not_before {
            return Err(format!(
                "the certificate of {} is not valid yet",
                verified.identity.name
            ));
        }
        Ok(verified)
    }

    /// Checks a record's hand-over chain against the network CA: each hand-over's
    /// certificate is the CA's, for the hand-over's new key, for node `name`.
    fn verify_handover_certificates(
        &self,
        chain: &[SignedHandOver],
        name: &str,
    ) -> Result<(), String> {
        for handover in chain {
            let certificate = self
                .verify_certificate_issued(&handover.body.new_certificate_der)
                .map_err(|e| format!("hand-over certificate refused: {e}"))?;
            if certificate.node != handover.body.new_key {
                return Err("a hand-over's certificate is for another key than its new key".into());
            }
            if certificate.identity.name != name {
                return Err(format!(
                    "a hand-over moves the log of {name} to a certificate for {}",
                    certificate.identity.name
                ));
            }
        }
        Ok(())
    }

    /// Validates and applies one gossip message. `author` is the gossip message's signed
    /// source key, when the transport gives one.
    pub fn handle_gossip(&self, bytes: &[u8], author: Option<[u8; 32]>) -> Verdict {
        let message = match GossipMessage::from_bytes(bytes) {
            Ok(m) => m,
            Err(e) => return Verdict::Reject(format!("undecodable: {e}")),
        };
        let (record, batch) = match message {
            GossipMessage::Batch { record, batch } => (record, Some(batch)),
            GossipMessage::Announce { record } => (record, None),
            GossipMessage::Revocations { list } => {
                return match self.apply_revocations(list) {
                    Ok(RevocationOutcome::Applied { .. }) => Verdict::Accept,
                    Ok(RevocationOutcome::Stale) => Verdict::Ignore,
                    Err(reason) => Verdict::Reject(reason),
                };
            }
        };
        if let Some(author) = author {
            if author != record.record.signer().0 {
                return Verdict::Reject("gossip author is not the record's signer".into());
            }
        }
        let Some(batch) = batch else {
            let verdict = self.admit_record(&record).map(|(_, newer)| newer);
            return match verdict {
                Err(reason) if reason == INDEX_FULL => Verdict::Ignore,
                Err(reason) => Verdict::Reject(reason),
                Ok(false) => Verdict::Ignore,
                Ok(true) => {
                    if let Err(e) =
                        self.storage
                            .append_remote(&record.record.node.0, u64::MAX, bytes)
                    {
                        tracing::error!(error = %e, "cannot persist node record");
                    }
                    Verdict::Accept
                }
            };
        };
        let (publisher, sequence) = (batch.body.publisher, batch.body.sequence);
        if publisher == self.own {
            // This node's own log enters its index only from its store, or from peers
            // through `own_log::learn_own_head` at start.
            return Verdict::Ignore;
        }
        let verdict = self.admit(&record, batch);
        if verdict == Verdict::Accept {
            // Keep what was accepted so that a restart rebuilds the same index.
            if let Err(e) = self.storage.append_remote(&publisher.0, sequence, bytes) {
                tracing::error!(error = %e, "cannot persist accepted batch");
            }
        }
        verdict
    }

    /// Verifies a node record and its certificate, admits the node and takes its address.
    /// Returns the index guard and whether the record was newer than the one held.
    ///
    /// A record signed by a key that has since handed its log over (*stale*) still lets
    /// its batch through to the index, which verifies the batch under the key in force at
    /// its sequence; the stale record's certificate (which may have expired or been revoked
    /// since) and address are not taken.
    fn admit_record(
        &self,
        record: &SignedNodeRecord,
    ) -> Result<(std::sync::MutexGuard<'_, LocatorIndex<DiskEntries>>, bool), String> {
        let log = record.record.node;
        let signer = record.verify(self.anchor.network())?;
        let certificate = self
            .verify_certificate_issued(&record.record.certificate_der)
            .map_err(|e| format!("publisher certificate refused: {e}"))?;
        if certificate.node != signer {
            return Err(
                "the record's certificate is for another key than the one that signed it".into(),
            );
        }
        self.verify_handover_certificates(&record.record.handovers, &certificate.identity.name)?;
        let chain: Vec<HandOverBody> = record
            .record
            .handovers
            .iter()
            .map(|h| h.body.clone())
            .collect();
        let held = self.index().handovers(&log).len();
        let known = self.index().knows_publisher(&log);
        let current = !known || chain.len() >= held;
        if current {
            // The key in force must hold a certificate valid now and not be revoked.
            self.verify_certificate(&record.record.certificate_der)
                .map_err(|e| format!("publisher certificate refused: {e}"))?;
            if self.is_revoked(&signer) {
                return Err(format!("node {} is revoked", certificate.identity.name));
            }
        }
        let mut info = certificate.publisher_info();
        info.node = log;
        let mut index = self.index();
        let standing = match index.admit_log(info, &chain) {
            Ok(standing) => standing,
            Err(AdmitError::Full) => return Err(INDEX_FULL.into()),
            Err(e @ AdmitError::HandOverConflict { .. }) => {
                self.forks_detected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(publisher = %log, error = %e, "conflicting hand-overs");
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        };
        if !known {
            self.nudge(Some(log));
        }
        let newer = standing == ChainStanding::Current
            && index.update_address(
                &log,
                &record.record.data_address,
                record.record.issued_at_ms,
            );
        if standing == ChainStanding::Current && !chain.is_empty() {
            let mut records = self
                .handover_records
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let held = records.get(&log);
            if held.is_none_or(|h| {
                h.record.handovers.len() < chain.len()
                    || h.record.issued_at_ms < record.record.issued_at_ms
            }) {
                records.insert(log, record.clone());
            }
        }
        Ok((index, newer))
    }

    fn admit(&self, record: &SignedNodeRecord, batch: SignedBatch) -> Verdict {
        let mut index = match self.admit_record(record) {
            Ok((index, _)) => index,
            Err(reason) if reason == INDEX_FULL => return Verdict::Ignore,
            Err(reason) => return Verdict::Reject(reason),
        };
        let now_ms = crate::fhir::service::now_ms();
        let publisher = batch.body.publisher;
        let candidate = batch.clone();
        match index.receive_batch(batch, now_ms) {
            Ok(BatchOutcome::Duplicate) => {
                drop(index);
                match self.older_fork(&candidate) {
                    Some(reason) => {
                        self.forks_detected
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(publisher = %publisher, sequence = candidate.body.sequence, "publisher forked its log");
                        Verdict::Reject(reason)
                    }
                    None => Verdict::Ignore,
                }
            }
            Ok(BatchOutcome::Applied { .. }) => {
                // For measuring propagation from outside (scripts/sim-fidelity.sh): how long
                // after its holder staged it each entry reached this index.
                if tracing::enabled!(target: PROPAGATION_LOG, tracing::Level::DEBUG) {
                    let lags: Vec<u64> = candidate
                        .body
                        .entries
                        .iter()
                        .map(|e| now_ms.saturating_sub(e.updated_at_ms))
                        .collect();
                    tracing::debug!(target: PROPAGATION_LOG, publisher = %publisher,
                        sequence = candidate.body.sequence, lags_ms = ?lags, "batch applied");
                }
                if let Some(nudge) = self.consent_nudge.get() {
                    for entry in &candidate.body.entries {
                        if entry.categories & zorgmesh_protocol::locator::category::CONSENT != 0 {
                            // Full: the consent check's full round finds it.
                            let _ = nudge.try_send(entry.patient);
                        }
                    }
                }
                Verdict::Accept
            }
            Ok(BatchOutcome::Buffered { .. }) => {
                self.nudge(Some(publisher));
                Verdict::Accept
            }
            Err(e) if e.is_misbehaviour() => Verdict::Reject(e.to_string()),
            Err(_) => Verdict::Ignore,
        }
    }

    /// For a batch the index calls a duplicate: the fork reason when this node keeps a
    /// different batch for the same sequence and the candidate carries the publisher's
    /// valid signature (a relayed forgery is not the publisher's fork).
    fn older_fork(&self, candidate: &SignedBatch) -> Option<String> {
        let (publisher, sequence) = (candidate.body.publisher, candidate.body.sequence);
        let held = if publisher == self.own {
            self.storage
                .own_batch_at(sequence)
                .ok()
                .flatten()
                .and_then(|b| SignedBatch::from_bytes(&b).ok())
        } else {
            self.storage
                .remote_message_at(&publisher.0, sequence)
                .ok()
                .flatten()
                .and_then(|m| match GossipMessage::from_bytes(&m) {
                    Ok(GossipMessage::Batch { batch, .. }) => Some(batch),
                    _ => None,
                })
        }?;
        let key = self.index().key_at(&publisher, sequence)?;
        if held.body.hash() == candidate.body.hash() || candidate.verify_by(&key).is_err() {
            return None;
        }
        Some(format!(
            "publisher {publisher} forked its log at sequence {sequence} (an accepted, different batch is held)"
        ))
    }

    /// Takes this node's own hand-over to a new key (with its whole chain, oldest first) into
    /// its index: its batches from the hand-over on verify under the new key.
    pub fn hand_over_own(
        &self,
        chain: &[SignedHandOver],
        new_certificate: &VerifiedNode,
    ) -> Result<(), String> {
        let mut info = new_certificate.publisher_info();
        info.node = self.own;
        let bodies: Vec<HandOverBody> = chain.iter().map(|h| h.body.clone()).collect();
        self.index()
            .admit_log(info, &bodies)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Checks a batch of this node's own log that a peer holds: it names this node and
    /// carries the signature of the key in force at its sequence.
    pub fn verify_own_batch(&self, batch: &SignedBatch) -> Result<(), String> {
        if batch.body.publisher != self.own {
            return Err("the batch is of another publisher".into());
        }
        batch.body.validate().map_err(|e| e.to_string())?;
        let key = self
            .index()
            .key_at(&self.own, batch.body.sequence)
            .ok_or("this node's own log is not in its index")?;
        batch.verify_by(&key).map_err(|e| e.to_string())
    }

    /// Takes a snapshot of this node's own log that a peer holds (the node's store lost
    /// the batches it covers): into the index and into the store. Returns its sequence.
    pub async fn adopt_own_snapshot(&self, chunks: &[Vec<u8>]) -> Result<u64, String> {
        let decoded: Vec<SignedSnapshotChunk> = chunks
            .iter()
            .map(|c| SignedSnapshotChunk::from_bytes(c).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let first = decoded.first().ok_or("empty snapshot")?;
        if first.body.publisher != self.own {
            return Err("the snapshot is of another publisher".into());
        }
        let sequence = first.body.sequence;
        let outcome = self
            .index()
            .install_snapshot(&decoded, crate::fhir::service::now_ms())
            .map_err(|e| e.to_string())?;
        // Only a snapshot ahead of what the store holds replaces its log.
        if outcome != SnapshotOutcome::Stale {
            self.storage
                .compact_own_log(chunks, sequence)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(sequence)
    }

    /// The hash of the last batch of this node's own log in its index.
    pub fn own_head_hash(&self) -> Option<[u8; 32]> {
        self.index().head_hash(&self.own)
    }

    /// Applies one of this node's own batches to its index.
    pub fn apply_own(&self, batch: SignedBatch, data_address: &str) {
        let now_ms = crate::fhir::service::now_ms();
        let mut index = self.index();
        index.update_address(&self.own, data_address, now_ms);
        if let Err(e) = index.receive_batch(batch, now_ms) {
            tracing::error!(error = %e, "own batch refused by own index");
        }
    }

    /// Rebuilds the index from the persisted logs (own batches, accepted gossip).
    pub fn restore(
        &self,
        own_address: &str,
    ) -> Result<RestoreReport, crate::storage::StorageError> {
        let mut logs_applied_again = 0;
        // The index on disk goes on from the heads it recorded. It is written before the
        // logs, so a crash may have kept an index ahead of them (or the store was restored
        // from a backup): a publisher whose head the kept log does not reach starts again
        // from its log.
        let heads = self.index().store().heads();
        for (publisher, head) in heads {
            let own = publisher == self.own;
            let covered = self.storage.log_coverage((!own).then_some(&publisher.0))?;
            if head.sequence > covered {
                tracing::warn!(publisher = %publisher, index_head = head.sequence, log_head = covered, "the locator index is ahead of the kept log; the log is applied again");
                self.index().restart_log(&publisher).map_err(|e| {
                    crate::storage::StorageError::Corrupt {
                        key: "locator-index".into(),
                        message: e.to_string(),
                    }
                })?;
                logs_applied_again += 1;
            }
        }
        if let Some(bytes) = self.storage.revocations()? {
            match SignedRevocationList::from_bytes(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|list| self.apply_revocations(list))
            {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the kept revocation list is unusable; waiting for the mesh to resend it")
                }
            }
        }
        let mut own = 0;
        let own_chunks: Vec<SignedSnapshotChunk> = self
            .storage
            .own_snapshot()?
            .iter()
            .enumerate()
            .map(|(part, c)| {
                SignedSnapshotChunk::from_bytes(c).map_err(|e| {
                    crate::storage::StorageError::Corrupt {
                        key: format!("own_snapshot/{part}"),
                        message: format!("this node's log snapshot cannot be read: {e}"),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        if !own_chunks.is_empty() {
            let now_ms = crate::fhir::service::now_ms();
            if let Err(e) = self.index().install_snapshot(&own_chunks, now_ms) {
                tracing::error!(error = %e, "own snapshot refused by own index");
            }
        }
        for (announce, chunks) in self.storage.remote_snapshots()? {
            if let Ok(GossipMessage::Announce { record }) = GossipMessage::from_bytes(&announce) {
                match self.admit_record(&record) {
                    Ok((index, _)) => drop(index),
                    Err(reason) => {
                        tracing::warn!(reason = %reason, "stored snapshot's publisher no longer valid");
                        continue;
                    }
                }
                let decoded: Result<Vec<SignedSnapshotChunk>, _> = chunks
                    .iter()
                    .map(|c| SignedSnapshotChunk::from_bytes(c))
                    .collect();
                let decoded = match decoded {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        tracing::error!(publisher = %record.record.node, error = %e, "a kept snapshot cannot be read; it is left out and will be fetched again from peers");
                        continue;
                    }
                };
                if let Err(e) = self
                    .index()
                    .install_snapshot(&decoded, crate::fhir::service::now_ms())
                {
                    tracing::warn!(error = %e, "stored snapshot refused");
                }
            }
        }
        for bytes in self.storage.own_batches() {
            match SignedBatch::from_bytes(&bytes?) {
                Ok(batch) => {
                    self.apply_own(batch, own_address);
                    own += 1;
                }
                Err(e) => tracing::error!(error = %e, "stored own batch is corrupt"),
            }
        }
        // First the hand-over chains: a log's batches signed before a hand-over were kept
        // with records of the retired key, which may be expired or revoked by now; with the
        // chain known, those records count as stale and their batches are judged by the
        // key schedule.
        for bytes in self.storage.remote_messages() {
            if let Ok(GossipMessage::Batch { record, .. } | GossipMessage::Announce { record }) =
                GossipMessage::from_bytes(&bytes?)
            {
                if !record.record.handovers.is_empty() {
                    if let Err(reason) = self.admit_record(&record) {
                        tracing::debug!(reason = %reason, "stored hand-over record not admitted");
                    }
                }
            }
        }
        let mut remote = 0;
        for bytes in self.storage.remote_messages() {
            let bytes = bytes?;
            match GossipMessage::from_bytes(&bytes) {
                // This node's own log comes from its own store only.
                Ok(GossipMessage::Batch { batch, .. }) if batch.body.publisher == self.own => {}
                Ok(GossipMessage::Batch { record, batch }) => {
                    if self.admit(&record, batch) == Verdict::Accept {
                        remote += 1;
                    }
                }
                // A publisher's newest record is kept beside its batches.
                Ok(GossipMessage::Announce { record }) => {
                    if let Err(reason) = self.admit_record(&record) {
                        tracing::debug!(reason = %reason, "stored node record no longer admitted");
                    }
                }
                Ok(GossipMessage::Revocations { .. }) => {}
                Err(e) => tracing::error!(error = %e, "stored gossip message is corrupt"),
            }
        }
        let report = RestoreReport {
            own_batches: own,
            remote_batches: remote,
            logs_applied_again,
        };
        *self.last_restore.lock().unwrap_or_else(|e| e.into_inner()) = report;
        Ok(report)
    }

    /// Deletes up to `limit` invisible entries of the index on disk (of replaced snapshots
    /// or removed publishers) from `from` on; returns how many went and where to go on
    /// (`None`: the end was reached). Holds the index for one bounded step.
    pub fn sweep_index(
        &self,
        from: Option<crate::index_store::SweepCursor>,
        limit: usize,
    ) -> Result<
        (usize, Option<crate::index_store::SweepCursor>),
        zorgmesh_protocol::index::StoreError,
    > {
        self.index().store_mut().sweep(from, limit)
    }

    /// What the last restore did.
    pub fn last_restore(&self) -> RestoreReport {
        *self.last_restore.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The holders of a patient.
    pub fn holders(
        &self,
        patient: &PatientKey,
    ) -> Result<Vec<HolderLocation>, zorgmesh_protocol::index::StoreError> {
        self.index().holders(patient)
    }

    /// Last applied sequence per publisher.
    pub fn heads(&self) -> std::collections::BTreeMap<NodeId, u64> {
        self.index().publisher_heads()
    }

    /// Live locator entries in the index.
    pub fn live_entries(&self) -> usize {
        self.index().live_entries()
    }

    /// The key a publisher's log is signed with now (its first key unless handed over).
    pub fn key_in_force(&self, publisher: &NodeId) -> Option<NodeId> {
        self.index().current_key(publisher)
    }

    /// Whether the index knows a publisher.
    pub fn knows_publisher(&self, node: &NodeId) -> bool {
        self.index().knows_publisher(node)
    }

    /// Asks anti-entropy for a round now (e.g. after a start).
    pub fn request_sync(&self) {
        self.nudge(None);
    }

    fn nudge(&self, peer: Option<NodeId>) {
        if let Some(nudge) = &self.sync_nudge {
            let _ = nudge.try_send(peer);
        }
    }

    /// Records this node's own data-plane address in its index.
    pub fn set_own_address(&self, address: &str) {
        let now_ms = crate::fhir::service::now_ms();
        self.index().update_address(&self.own, address, now_ms);
    }

    /// Remembers this node's newest signed record (served with its own batches).
    pub fn set_own_record(&self, record: SignedNodeRecord) {
        *self.own_record.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// What to send a peer that asks for `publisher`'s batches from `from` on: gossip
    /// messages, or, when `from` lies in a compacted prefix, the publisher's record, its
    /// snapshot and the batches after it.
    pub fn batch_frames(
        &self,
        publisher: &NodeId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<FetchFrame>, BatchRangeError> {
        let own = *publisher == self.own;
        let (oldest, snapshot) = if own {
            let record = self
                .own_record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let chunks = self.storage.own_snapshot()?;
            let snapshot = match (record, chunks.is_empty()) {
                (Some(record), false) => {
                    Some((GossipMessage::Announce { record }.to_bytes(), chunks))
                }
                _ => None,
            };
            (self.storage.oldest_own_sequence()?, snapshot)
        } else {
            (
                self.storage.oldest_remote_sequence(&publisher.0)?,
                self.storage
                    .remote_snapshot(&publisher.0)?
                    .map(|(announce, chunks)| {
                        // The newest record of a handed-over log, not a retired key's.
                        match self.newest_handover_record(publisher) {
                            Some(record) => (GossipMessage::Announce { record }.to_bytes(), chunks),
                            None => (announce, chunks),
                        }
                    }),
            )
        };
        let mut frames = Vec::new();
        let mut from = from;
        if let Some((record, chunks)) = snapshot {
            let covered = chunks
                .first()
                .and_then(|c| SignedSnapshotChunk::from_bytes(c).ok())
                .map_or(0, |c| c.body.sequence);
            if from <= covered && oldest.is_none_or(|o| from < o) {
                frames.push(FetchFrame::Message { bytes: record });
                frames.extend(
                    chunks
                        .into_iter()
                        .map(|bytes| FetchFrame::Snapshot { bytes }),
                );
                from = covered + 1;
            }
        }
        // Never serve a range with a gap: what starts after `from` cannot be applied.
        if let Some(oldest) = oldest.filter(|oldest| from < *oldest) {
            return Err(BatchRangeError::Gap { from, oldest });
        }
        let messages = if own {
            let record = self
                .own_record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match record {
                None => Vec::new(),
                Some(record) => self
                    .storage
                    .own_range(from, limit)?
                    .into_iter()
                    .filter_map(|bytes| SignedBatch::from_bytes(&bytes).ok())
                    .map(|batch| {
                        GossipMessage::Batch {
                            record: record.clone(),
                            batch,
                        }
                        .to_bytes()
                    })
                    .collect(),
            }
        } else {
            let stored = self.storage.remote_range(&publisher.0, from, limit)?;
            match self.newest_handover_record(publisher) {
                None => stored,
                Some(newest) => stored
                    .into_iter()
                    .map(|bytes| match GossipMessage::from_bytes(&bytes) {
                        Ok(GossipMessage::Batch { record, batch })
                            if record.record.handovers.len() < newest.record.handovers.len() =>
                        {
                            GossipMessage::Batch {
                                record: newest.clone(),
                                batch,
                            }
                            .to_bytes()
                        }
                        _ => bytes,
                    })
                    .collect(),
            }
        };
        frames.extend(
            messages
                .into_iter()
                .map(|bytes| FetchFrame::Message { bytes }),
        );
        Ok(frames)
    }

    /// The newest current record of a log that was handed over.
    fn newest_handover_record(&self, publisher: &NodeId) -> Option<SignedNodeRecord> {
        self.handover_records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(publisher)
            .cloned()
    }

    /// Installs a publisher's snapshot fetched from a peer (its chunks as bytes), keeps it so
    /// that this node can serve it too, and drops the stored batches it covers. Returns the
    /// number of entries installed.
    pub fn install_snapshot(&self, announce: &[u8], chunks: &[Vec<u8>]) -> Result<usize, String> {
        let decoded: Vec<SignedSnapshotChunk> = chunks
            .iter()
            .map(|c| SignedSnapshotChunk::from_bytes(c).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let first = decoded.first().ok_or("empty snapshot")?;
        let (publisher, sequence) = (first.body.publisher, first.body.sequence);
        if publisher == self.own {
            return Err("refusing a snapshot of this node's own log".into());
        }
        let now_ms = crate::fhir::service::now_ms();
        let outcome = self
            .index()
            .install_snapshot(&decoded, now_ms)
            .map_err(|e| e.to_string())?;
        // Keep the snapshot (to serve it, and so that stored copies of the batches it covers
        // can go) unless an equal or newer one is kept already.
        let kept = self
            .storage
            .remote_snapshot(&publisher.0)
            .map_err(|e| e.to_string())?
            .and_then(|(_, chunks)| {
                chunks
                    .first()
                    .and_then(|c| SignedSnapshotChunk::from_bytes(c).ok())
            })
            .map_or(0, |c| c.body.sequence);
        if sequence > kept {
            self.storage
                .store_remote_snapshot(&publisher.0, announce, chunks, sequence)
                .map_err(|e| e.to_string())?;
        }
        match outcome {
            SnapshotOutcome::Stale => Ok(0),
            SnapshotOutcome::Installed { .. } => {
                Ok(decoded.iter().map(|c| c.body.entries.len()).sum())
            }
        }
    }

    /// Compacts this node's own log: a signed snapshot of its live entries at its current
    /// head replaces the batches up to it. Returns the sequence the snapshot covers.
    pub async fn compact_own_log(
        &self,
        keys: &crate::rotation::NodeKeys,
    ) -> Result<Option<u64>, crate::storage::StorageError> {
        let (head, head_hash) = {
            let index = self.index();
            let head = index.publisher_heads().get(&self.own).copied().unwrap_or(0);
            (head, index.head_hash(&self.own))
        };
        let Some(head_hash) = head_hash.filter(|_| head > 0) else {
            return Ok(None);
        };
        let entries = self.own_live_entries(head)?;
        // Read after the head: a key in force at or after the head signs the snapshot.
        let key = keys.current().key.clone();
        let chunks: Vec<Vec<u8>> = zorgmesh_protocol::snapshot::cut_snapshot_of(
            self.own,
            &key,
            head,
            head_hash,
            entries,
            crate::fhir::service::now_ms(),
        )
        .iter()
        .map(SignedSnapshotChunk::to_bytes)
        .collect();
        self.storage.compact_own_log(&chunks, head).await?;
        Ok(Some(head))
    }

    /// This node's live entries at sequence `head` of its own log, from its own store:
    /// its snapshot, then its batches up to `head` in order (the index need not keep full
    /// patient keys, and a store of the national index is not scanned for one publisher).
    fn own_live_entries(
        &self,
        head: u64,
    ) -> Result<Vec<zorgmesh_protocol::LocatorEntry>, crate::storage::StorageError> {
        let unreadable = |what: String, e: String| crate::storage::StorageError::Corrupt {
            key: what,
            message: format!("this node's log cannot be read: {e}"),
        };
        let mut live: BTreeMap<PatientKey, zorgmesh_protocol::LocatorEntry> = BTreeMap::new();
        let mut covered = 0;
        for (part, bytes) in self.storage.own_snapshot()?.iter().enumerate() {
            let chunk = SignedSnapshotChunk::from_bytes(bytes)
                .map_err(|e| unreadable(format!("own_snapshot/{part}"), e.to_string()))?;
            covered = chunk.body.sequence;
            for entry in chunk.body.entries {
                live.insert(entry.patient, entry);
            }
        }
        for bytes in self.storage.own_batches() {
            let batch = SignedBatch::from_bytes(&bytes?)
                .map_err(|e| unreadable("own_log".into(), e.to_string()))?;
            // Batches the snapshot covers (left by a crash before they were dropped) are
            // older than it; batches past the head are not in the index yet.
            if batch.body.sequence <= covered {
                continue;
            }
            if batch.body.sequence > head {
                break;
            }
            for entry in batch.body.entries {
                if entry.retracted {
                    live.remove(&entry.patient);
                } else {
                    live.insert(entry.patient, entry);
                }
            }
        }
        Ok(live.into_values().collect())
    }

    /// Where to tell the patients of applied entries that name a privacy Consent (once).
    pub fn set_consent_nudge(&self, nudge: tokio::sync::mpsc::Sender<PatientKey>) {
        let _ = self.consent_nudge.set(nudge);
    }

    /// Every known publisher's id and name.
    pub fn publishers(&self) -> Vec<(NodeId, String)> {
        self.index()
            .publishers()
            .map(|(info, _)| (info.node, info.name.clone()))
            .collect()
    }

    /// Nodes the index knows a data-plane address for, other than this one.
    pub fn peers(&self) -> Vec<(NodeId, String, String)> {
        self.index()
            .publishers()
            .filter(|(info, _)| info.node != self.own)
            .filter_map(|(info, address)| Some((info.node, info.name.clone(), address?.to_owned())))
            .collect()
    }

    /// The data-plane address the index holds for a node.
    pub fn data_address(&self, node: &NodeId) -> Option<String> {
        self.index().data_address(node).map(str::to_owned)
    }

    /// Publishers whose stored log copy holds more than `threshold` batches.
    pub fn oversized_copies(&self, threshold: u64) -> Vec<NodeId> {
        let heads = self.heads();
        heads
            .into_iter()
            .filter(|(publisher, _)| *publisher != self.own)
            .filter(|(publisher, head)| {
                self.storage
                    .oldest_remote_sequence(&publisher.0)
                    .ok()
                    .flatten()
                    .is_some_and(|oldest| head.saturating_sub(oldest) + 1 > threshold)
            })
            .map(|(publisher, _)| publisher)
            .collect()
    }

    /// Stored batches of a remote publisher's log (between the oldest kept and the head).
    pub fn remote_log_len(&self, publisher: &NodeId) -> u64 {
        let head = self.heads().get(publisher).copied().unwrap_or(0);
        self.storage
            .oldest_remote_sequence(&publisher.0)
            .ok()
            .flatten()
            .map_or(0, |oldest| head.saturating_sub(oldest) + 1)
    }

    /// Own batches kept in the log (not yet compacted).
    pub fn own_log_len(&self) -> usize {
        self.storage.own_log_len()
    }

    /// This node's id.
    pub fn own(&self) -> NodeId {
        self.own
    }
}
