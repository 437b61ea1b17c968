//! The node's view of the mesh: its locator index, fed by gossip and by its own log, and
//! the application-level validation every gossip message passes before it is accepted and
//! forwarded.
//!
//! Validation order: decode (bounded) → node record signature → certificate chain to this
//! network's CA, valid now (cached per certificate) → the record's node equals the batch's
//! publisher and the gossip author → the index's verdict (signature, sequence, chain).

use crate::storage::Storage;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zorgmesh_certs::{TrustAnchor, VerifiedNode};
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::index::{BatchOutcome, HolderLocation, IndexLimits};
use zorgmesh_protocol::record::SignedNodeRecord;
use zorgmesh_protocol::{LocatorIndex, NodeId, PatientKey, SignedBatch};

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

/// The index and its validation.
pub struct Mesh {
    anchor: TrustAnchor,
    own_record: Mutex<Option<SignedNodeRecord>>,
    sync_nudge: Option<tokio::sync::mpsc::Sender<Option<NodeId>>>,
    index: Mutex<LocatorIndex>,
    certificates: Mutex<HashMap<[u8; 32], VerifiedNode>>,
    storage: Arc<Storage>,
    own: NodeId,
}

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
    /// A mesh view for node `own`, whose verified certificate is `own_certificate`.
    /// `sync_nudge` is told when a gap shows up (naming the publisher) or a new publisher
    /// announces itself, so that anti-entropy runs at once instead of at its next tick.
    pub fn new(
        anchor: TrustAnchor,
        storage: Arc<Storage>,
        own_certificate: &VerifiedNode,
        sync_nudge: Option<tokio::sync::mpsc::Sender<Option<NodeId>>>,
    ) -> Self {
        let mut index = LocatorIndex::new(IndexLimits::default());
        index.admit_publisher(own_certificate.publisher_info());
        Self {
            anchor,
            own_record: Mutex::new(None),
            sync_nudge,
            index: Mutex::new(index),
            certificates: Mutex::new(HashMap::new()),
            storage,
            own: own_certificate.node,
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, LocatorIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verify_certificate(&self, der: &[u8]) -> Result<VerifiedNode, String> {
        let digest: [u8; 32] = Sha256::digest(der).into();
        let now = unix_now();
        {
            let cache = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(verified) = cache.get(&digest) {
                if now <= verified.not_after && now >= verified.not_before {
                    return Ok(verified.clone());
                }
            }
        }
        let verified = self
            .anchor
            .verify_node_certificate(der, Some(now))
            .map_err(|e| e.to_string())?;
        let mut cache = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_CERTIFICATES {
            cache.clear();
        }
        cache.insert(digest, verified.clone());
        Ok(verified)
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
        };
        if let Some(author) = author {
            if author != record.record.node.0 {
                return Verdict::Reject("gossip author is not the record's node".into());
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
    fn admit_record(
        &self,
        record: &SignedNodeRecord,
    ) -> Result<(std::sync::MutexGuard<'_, LocatorIndex>, bool), String> {
        if !record.verify() {
            return Err("node record signature does not verify".into());
        }
        let verified = self
            .verify_certificate(&record.record.certificate_der)
            .map_err(|e| format!("publisher certificate refused: {e}"))?;
        if verified.node != record.record.node {
            return Err("certificate key differs from the record's node".into());
        }
        let mut index = self.index();
        let known = index.knows_publisher(&verified.node);
        if !index.admit_publisher(verified.publisher_info()) {
            return Err(INDEX_FULL.into());
        }
        if !known {
            self.nudge(Some(verified.node));
        }
        let newer = index.update_address(
            &verified.node,
            &record.record.data_address,
            record.record.issued_at_ms,
        );
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
        match index.receive_batch(batch, now_ms) {
            Ok(BatchOutcome::Applied { .. }) => Verdict::Accept,
            Ok(BatchOutcome::Buffered { .. }) => {
                self.nudge(Some(publisher));
                Verdict::Accept
            }
            Ok(BatchOutcome::Duplicate) => Verdict::Ignore,
            Err(e) if e.is_misbehaviour() => Verdict::Reject(e.to_string()),
            Err(_) => Verdict::Ignore,
        }
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
    ) -> Result<(usize, usize), crate::storage::StorageError> {
        let mut own = 0;
        for bytes in self.storage.own_batches() {
            match SignedBatch::from_bytes(&bytes?) {
                Ok(batch) => {
                    self.apply_own(batch, own_address);
                    own += 1;
                }
                Err(e) => tracing::error!(error = %e, "stored own batch is corrupt"),
            }
        }
        let mut remote = 0;
        for bytes in self.storage.remote_messages() {
            let bytes = bytes?;
            let Ok(GossipMessage::Batch { record, batch }) = GossipMessage::from_bytes(&bytes)
            else {
                tracing::error!("stored gossip message is corrupt");
                continue;
            };
            if self.admit(&record, batch) == Verdict::Accept {
                remote += 1;
            }
        }
        Ok((own, remote))
    }

    /// The holders of a patient.
    pub fn holders(&self, patient: &PatientKey) -> Vec<HolderLocation> {
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

    /// Up to `limit` batches of `publisher` from `from` on, as gossip messages.
    pub fn batch_messages(
        &self,
        publisher: &NodeId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, crate::storage::StorageError> {
        if *publisher != self.own {
            return self.storage.remote_range(&publisher.0, from, limit);
        }
        let Some(record) = self
            .own_record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for bytes in self.storage.own_range(from, limit)? {
            if let Ok(batch) = SignedBatch::from_bytes(&bytes) {
                out.push(
                    GossipMessage::Batch {
                        record: record.clone(),
                        batch,
                    }
                    .to_bytes(),
                );
            }
        }
        Ok(out)
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

    /// This node's id.
    pub fn own(&self) -> NodeId {
        self.own
    }
}
