//! A node never forks its own log. Its peers hold copies of the batches it signed, so before
//! it signs anything after a start, a node asks a peer for its own log's head and, when the
//! peer holds more than the node's store (a store that was lost, or restored from a backup),
//! takes those batches (or the snapshot that covers them) back, continues after them, and
//! republishes the current state of every patient they name.

use crate::data_plane::DataPlane;
use crate::mesh::Mesh;
use crate::publishing::Publisher;
use std::collections::BTreeSet;
use std::time::Duration;
use zorgmesh_protocol::fetch::FetchFrame;
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::sync::{RangeRequest, MAX_BATCHES_PER_REQUEST};
use zorgmesh_protocol::PatientKey;

/// What the node learnt about its own log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OwnHead {
    /// The head its store held.
    pub stored: u64,
    /// The highest head a peer reported (None: no peer answered in time).
    pub peers: Option<u64>,
    /// Batches taken back from the peer.
    pub adopted: u64,
}

/// Polling interval while no peer is known yet.
const POLL: Duration = Duration::from_millis(100);
/// Peers asked per attempt.
const ASKED: usize = 3;

/// Learns this node's own head from the mesh (waiting at most `wait` for a peer to answer;
/// a node alone goes on with its store's head), takes back what peers hold beyond its
/// store, and lets the publisher sign.
pub async fn learn_own_head(
    mesh: &Mesh,
    data_plane: &DataPlane,
    publisher: &Publisher,
    own_address: &str,
    wait: Duration,
) -> OwnHead {
    let own = mesh.own();
    // What the store holds is what the publisher would continue from.
    let stored = publisher.head().await;
    let mut outcome = OwnHead {
        stored,
        ..OwnHead::default()
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut best: Option<(u64, (zorgmesh_protocol::NodeId, String, String))> = None;
    while best.is_none() && tokio::time::Instant::now() < deadline {
        for peer in mesh.peers().into_iter().take(ASKED) {
            let Ok(addr) = crate::data_plane::resolve_address(&peer.2).await else {
                continue;
            };
            if let Ok(heads) = data_plane.heads(peer.0, &peer.1, addr).await {
                let theirs = heads
                    .iter()
                    .find(|h| h.publisher == own)
                    .map_or(0, |h| h.sequence);
                if best.as_ref().is_none_or(|(b, _)| theirs > *b) {
                    best = Some((theirs, peer));
                }
            }
        }
        if best.is_none() {
            tokio::time::sleep(POLL).await;
        }
    }
    let Some((theirs, (peer, name, address))) = best else {
        tracing::warn!(
            stored,
            "no peer told this node its own log's head within {wait:?}: signing on from the store's head"
        );
        publisher.set_ready();
        return outcome;
    };
    outcome.peers = Some(theirs);
    if theirs > stored {
        tracing::warn!(
            stored,
            peers = theirs,
            peer = %name,
            "this node's store holds less of its own log than its peers: taking the missing batches back before signing"
        );
        let mut patients: BTreeSet<PatientKey> = BTreeSet::new();
        let mut head = stored;
        let mut head_hash = None;
        if let Ok(addr) = crate::data_plane::resolve_address(&address).await {
            while head < theirs {
                let range = RangeRequest {
                    publisher: own,
                    from: head + 1,
                    limit: MAX_BATCHES_PER_REQUEST,
                };
                let Ok(frames) = data_plane.batches(peer, &name, addr, range).await else {
                    break;
                };
                let before = head;
                let mut chunks = Vec::new();
                for frame in frames {
                    match frame {
                        FetchFrame::Snapshot { bytes } => chunks.push(bytes),
                        FetchFrame::Message { bytes } => {
                            if !chunks.is_empty() {
                                match mesh.adopt_own_snapshot(&std::mem::take(&mut chunks)).await {
                                    Ok(sequence) if sequence > head => {
                                        head = sequence;
                                        head_hash = mesh.own_head_hash();
                                    }
                                    Ok(_) => {}
                                    Err(e) => {
                                        tracing::error!(error = %e, "a peer's snapshot of this node's log is unusable")
                                    }
                                }
                            }
                            let Ok(GossipMessage::Batch { batch, .. }) =
                                GossipMessage::from_bytes(&bytes)
                            else {
                                continue;
                            };
                            if batch.body.sequence != head + 1 {
                                continue;
                            }
                            if let Err(e) = mesh.verify_own_batch(&batch) {
                                tracing::error!(error = %e, "a peer's copy of this node's batch is unusable");
                                break;
                            }
                            let sequence = batch.body.sequence;
                            patients.extend(batch.body.entries.iter().map(|e| e.patient));
                            if let Err(e) = publisher
                                .storage()
                                .append_own_batch(sequence, &batch.to_bytes(), &[])
                                .await
                            {
                                tracing::error!(error = %e, "cannot keep a batch taken back from a peer");
                                break;
                            }
                            head_hash = Some(batch.body.hash());
                            mesh.apply_own(batch, own_address);
                            head = sequence;
                            outcome.adopted += 1;
                        }
                        _ => {}
                    }
                }
                if !chunks.is_empty() {
                    if let Ok(sequence) = mesh.adopt_own_snapshot(&chunks).await {
                        if sequence > head {
                            head = sequence;
                            head_hash = mesh.own_head_hash();
                        }
                    }
                }
                if head == before {
                    break;
                }
            }
        }
        match head_hash {
            Some(hash) if head > stored => {
                publisher.continue_after(head, hash).await;
            }
            _ => {}
        }
        if head < theirs {
            // Signing now would reuse a sequence a peer holds: better not to publish.
            tracing::error!(
                head,
                peers = theirs,
                "could not take back this node's whole log from its peers; publishing stays off until a restart can"
            );
            return outcome;
        }
        // What the taken-back batches say may not match this store: republish each
        // patient they name from what the store holds now.
        if !patients.is_empty() {
            publisher.stage(patients).await;
        }
    }
    publisher.set_ready();
    outcome
}
