//! Anti-entropy: the node periodically (and at once when nudged: a gap in a publisher's
//! log, or a publisher seen for the first time) compares its index with a peer's and fetches
//! exactly the batches it is missing, using the sans-IO planning of
//! `zorgmesh_protocol::sync`. Fetched batches go through the same validation as gossip.

use crate::data_plane::DataPlane;
use crate::mesh::{Mesh, Verdict};
use rand::seq::SliceRandom;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use zorgmesh_protocol::fetch::FetchFrame;
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::sync::{SyncSession, SyncStep};
use zorgmesh_protocol::NodeId;

/// Depth of the nudge channel (extra nudges are dropped: one pending round is enough).
pub const NUDGE_QUEUE: usize = 16;

/// Counters of the anti-entropy task.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Sync rounds started.
    pub rounds: AtomicU64,
    /// Rounds that found the peer in sync after one digest exchange.
    pub in_sync: AtomicU64,
    /// Batches fetched and accepted.
    pub batches_applied: AtomicU64,
    /// Rounds that failed (peer unreachable, protocol error).
    pub failures: AtomicU64,
}

/// What one sync with a peer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Request/response exchanges made.
    pub round_trips: usize,
    /// Batches accepted into the index.
    pub applied: usize,
}

/// Syncs this node's index from one peer until nothing more is missing, driving the
/// protocol's [`SyncSession`]: each step is one request to the peer.
pub async fn sync_with(
    mesh: &Mesh,
    data_plane: &DataPlane,
    peer: NodeId,
    name: &str,
    addr: SocketAddr,
) -> Result<SyncOutcome, crate::data_plane::FetchError> {
    let mut outcome = SyncOutcome::default();
    let (mut session, mut step) = SyncSession::start(mesh.revocation_sequence());
    loop {
        step = match step {
            SyncStep::AskRevocations { held } => {
                match data_plane.revocations(peer, name, addr, held).await {
                    Ok(Some(list)) => {
                        if let Err(reason) = mesh.apply_revocations(list) {
                            tracing::warn!(peer = %name, reason = %reason, "revocation list refused");
                        }
                    }
                    Ok(None) => {}
                    Err(crate::data_plane::FetchError::Remote { code, message }) => {
                        tracing::debug!(peer = %name, ?code, message = %message, "peer sent no revocation list");
                    }
                    Err(e) => return Err(e),
                }
                outcome.round_trips += 1;
                session.on_revocations()
            }
            SyncStep::AskDigest => {
                let digest = data_plane.heads_digest(peer, name, addr).await?;
                outcome.round_trips += 1;
                session.on_digest(&digest, &mesh.heads())
            }
            SyncStep::AskHeads => {
                let remote = data_plane.heads(peer, name, addr).await?;
                outcome.round_trips += 1;
                // A log whose first key is revoked after it was handed over still counts.
                session.on_heads(&mesh.heads(), remote, |publisher| {
                    *publisher != mesh.own() && !mesh.is_log_revoked(publisher)
                })
            }
            SyncStep::Fetch(requests) => {
                let mut progressed = false;
                for request in requests {
                    let frames = data_plane.batches(peer, name, addr, request).await?;
                    outcome.round_trips += 1;
                    progressed |= apply_frames(mesh, name, frames, &mut outcome);
                }
                session.on_fetched(progressed)
            }
            SyncStep::Done(_) => return Ok(outcome),
        };
    }
}

/// Feeds one range's frames to the index: gossip messages as gossip, snapshot chunks as a
/// snapshot after the announcement before them. True when anything was applied.
fn apply_frames(
    mesh: &Mesh,
    name: &str,
    frames: Vec<FetchFrame>,
    outcome: &mut SyncOutcome,
) -> bool {
    let mut progressed = false;
    let mut announce: Vec<u8> = Vec::new();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for frame in frames {
        match frame {
            FetchFrame::Snapshot { bytes } => chunks.push(bytes),
            FetchFrame::Message { bytes } => {
                if !chunks.is_empty() {
                    progressed |= install(mesh, &announce, &std::mem::take(&mut chunks), outcome);
                }
                if matches!(
                    GossipMessage::from_bytes(&bytes),
                    Ok(GossipMessage::Announce { .. })
                ) {
                    announce = bytes.clone();
                }
                match mesh.handle_gossip(&bytes, None) {
                    Verdict::Accept => {
                        outcome.applied += 1;
                        progressed = true;
                    }
                    Verdict::Reject(reason) => {
                        tracing::warn!(peer = %name, reason = %reason, "a message fetched in sync was rejected");
                    }
                    Verdict::Ignore => {}
                }
            }
            _ => {}
        }
    }
    if !chunks.is_empty() {
        progressed |= install(mesh, &announce, &chunks, outcome);
    }
    progressed
}

fn install(mesh: &Mesh, announce: &[u8], chunks: &[Vec<u8>], outcome: &mut SyncOutcome) -> bool {
    match mesh.install_snapshot(announce, chunks) {
        Ok(0) => false,
        Ok(entries) => {
            tracing::info!(entries, "installed a publisher snapshot");
            outcome.applied += 1;
            true
        }
        Err(reason) => {
            tracing::warn!(reason = %reason, "snapshot refused");
            false
        }
    }
}

/// Asks each publisher whose stored log copy exceeds `threshold` batches for its snapshot,
/// so that the copy can be pruned (the publisher compacts its own log at the same size).
pub async fn prune_copies(mesh: &Mesh, data_plane: &DataPlane, threshold: u64) {
    let peers = mesh.peers();
    for publisher in mesh.oversized_copies(threshold) {
        let Some((_, name, address)) = peers.iter().find(|(id, _, _)| *id == publisher) else {
            continue;
        };
        let Ok(addr) = crate::data_plane::resolve_address(address).await else {
            continue;
        };
        let range = zorgmesh_protocol::sync::RangeRequest {
            publisher,
            from: 1,
            limit: 1,
        };
        let Ok(frames) = data_plane.batches(publisher, name, addr, range).await else {
            continue;
        };
        let mut announce = Vec::new();
        let mut chunks = Vec::new();
        for frame in frames {
            match frame {
                FetchFrame::Snapshot { bytes } => chunks.push(bytes),
                FetchFrame::Message { bytes } if chunks.is_empty() => announce = bytes,
                _ => {}
            }
        }
        if !chunks.is_empty() {
            if let Err(reason) = mesh.install_snapshot(&announce, &chunks) {
                tracing::warn!(publisher = %name, reason = %reason, "snapshot for pruning refused");
            }
        }
    }
}

/// Runs anti-entropy every `interval` and whenever nudged, until `shutdown`.
pub async fn run(
    mesh: Arc<Mesh>,
    data_plane: DataPlane,
    interval: Duration,
    prune_threshold: u64,
    mut nudges: mpsc::Receiver<Option<NodeId>>,
    stats: Arc<SyncStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted = tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                prune_copies(&mesh, &data_plane, prune_threshold).await;
                None
            }
            nudge = nudges.recv() => match nudge {
                None => break,
                Some(peer) => peer,
            },
        };
        let peers = mesh.peers();
        let chosen = wanted
            .and_then(|w| peers.iter().find(|(id, _, _)| *id == w).cloned())
            .or_else(|| peers.choose(&mut rand::thread_rng()).cloned());
        let Some((peer, name, address)) = chosen else {
            continue;
        };
        let Ok(addr) = address.parse::<SocketAddr>() else {
            continue;
        };
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        match sync_with(&mesh, &data_plane, peer, &name, addr).await {
            Ok(outcome) => {
                if outcome.applied == 0 {
                    stats.in_sync.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::info!(peer = %name, applied = outcome.applied, round_trips = outcome.round_trips, "index caught up");
                }
                stats
                    .batches_applied
                    .fetch_add(outcome.applied as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %name, error = %e, "sync failed");
            }
        }
    }
}
