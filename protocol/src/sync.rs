//! Anti-entropy for the locator index: how two nodes find and fetch exactly what one of them
//! is missing.
//!
//! Every publisher's log is gapless and append-only, so the difference between two indexes
//! is exactly, per publisher, the suffix of batches after the lower of the two heads. A node
//! therefore needs only the other's **heads vector** (publisher → last sequence) to know
//! what to ask for, and the batches it then fetches are the same signed messages gossip
//! carries, validated the same way.
//!
//! A round: ask for the peer's [`heads_digest`] (32 bytes); if it equals ours, the replicas
//! agree and the round ends after one round trip. Otherwise fetch the heads vector (one
//! 40-byte row per publisher) and, for every publisher where the peer is ahead, request the
//! missing range with [`plan_requests`]. The cost is one round trip when in sync, and
//! otherwise O(publishers) for the vector plus O(difference) for the batches: publishers
//! number in the thousands nationally while entries number in the tens of millions.

use crate::locator::NodeId;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Domain-separation prefix of the heads digest.
pub const HEADS_DIGEST_DOMAIN: &[u8] = b"zorgmesh/heads-digest/v1\n";
/// Most batches one range request may ask for.
pub const MAX_BATCHES_PER_REQUEST: u32 = 256;
/// Most rows in a heads vector.
pub const MAX_HEADS: usize = 100_000;

/// One row of a heads vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct PublisherHead {
    /// The publisher.
    pub publisher: NodeId,
    /// Its last sequence number the sender holds (0: none).
    pub sequence: u64,
}

/// A request for a range of one publisher's batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RangeRequest {
    /// The publisher.
    pub publisher: NodeId,
    /// First sequence wanted.
    pub from: u64,
    /// Most batches wanted (at most [`MAX_BATCHES_PER_REQUEST`]).
    pub limit: u32,
}

/// SHA-256 over the domain prefix and every `(publisher, sequence)` row in publisher order
/// (sequence as `u64` little-endian); publishers at sequence 0 are left out.
pub fn heads_digest(heads: &BTreeMap<NodeId, u64>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(HEADS_DIGEST_DOMAIN);
    for (publisher, sequence) in heads.iter().filter(|(_, s)| **s > 0) {
        hasher.update(publisher.0);
        hasher.update(sequence.to_le_bytes());
    }
    hasher.finalize().into()
}

/// The rows of a heads vector, in publisher order, publishers at 0 left out.
pub fn heads_vector(heads: &BTreeMap<NodeId, u64>) -> Vec<PublisherHead> {
    heads
        .iter()
        .filter(|(_, s)| **s > 0)
        .map(|(publisher, sequence)| PublisherHead {
            publisher: *publisher,
            sequence: *sequence,
        })
        .collect()
}

/// What to fetch from a peer whose heads are `remote`, given ours: one request per
/// publisher where the peer is ahead, each for at most [`MAX_BATCHES_PER_REQUEST`]
/// batches (a later round continues a longer gap).
pub fn plan_requests(local: &BTreeMap<NodeId, u64>, remote: &[PublisherHead]) -> Vec<RangeRequest> {
    remote
        .iter()
        .filter_map(|head| {
            let ours = local.get(&head.publisher).copied().unwrap_or(0);
            (head.sequence > ours).then(|| RangeRequest {
                publisher: head.publisher,
                from: ours + 1,
                limit: (head.sequence - ours).min(u64::from(MAX_BATCHES_PER_REQUEST)) as u32,
            })
        })
        .collect()
}

/// Most digest-heads-fetch rounds one sync with a peer makes; a longer catch-up goes on at
/// the next sync.
pub const MAX_ROUNDS_PER_SYNC: usize = 64;

/// What a node does next in a sync with one peer (see [`SyncSession`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// Ask the peer for a revocation list newer than the one held (its sequence): a newer
    /// list changes which publishers count at all, so it comes first.
    AskRevocations {
        /// The sequence of the list this node holds (0: none).
        held: u64,
    },
    /// Ask for the peer's [`heads_digest`].
    AskDigest,
    /// Ask for the peer's heads vector.
    AskHeads,
    /// Fetch these ranges and feed every message (and snapshot) to the index, then call
    /// [`SyncSession::on_fetched`].
    Fetch(Vec<RangeRequest>),
    /// The sync is over.
    Done(SyncEnd),
}

/// Why a sync ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncEnd {
    /// The digests matched: the two indexes hold the same heads.
    InSync,
    /// The peer is ahead on no publisher this node counts.
    PeerBehind,
    /// A fetch applied nothing (the peer served nothing new).
    NoProgress,
    /// [`MAX_ROUNDS_PER_SYNC`] rounds were made.
    RoundLimit,
}

/// One sync with one peer, as a state machine the node's network code and the simulator
/// both drive: revocations first, then rounds of digest, heads and fetch until the digests
/// match, the peer has nothing more, a fetch brings nothing, or the round limit is reached.
/// Each step is one request and its answer.
#[derive(Clone, Debug)]
pub struct SyncSession {
    rounds: usize,
}

impl SyncSession {
    /// Starts a sync; the first step asks for revocations.
    pub fn start(held_revocations: u64) -> (Self, SyncStep) {
        (
            Self { rounds: 0 },
            SyncStep::AskRevocations {
                held: held_revocations,
            },
        )
    }

    /// Rounds begun so far.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The revocations were answered (and any newer list applied): the first round begins.
    pub fn on_revocations(&mut self) -> SyncStep {
        self.next_round()
    }

    /// The peer's digest, against this node's heads now.
    pub fn on_digest(&mut self, remote: &[u8; 32], local: &BTreeMap<NodeId, u64>) -> SyncStep {
        if *remote == heads_digest(local) {
            SyncStep::Done(SyncEnd::InSync)
        } else {
            SyncStep::AskHeads
        }
    }

    /// The peer's heads vector, against this node's heads now. `counts` says whether a
    /// publisher counts at all: a peer that has not yet applied a revocation still lists
    /// the revoked, and a node learns its own log from peers only when it starts.
    pub fn on_heads(
        &mut self,
        local: &BTreeMap<NodeId, u64>,
        mut remote: Vec<PublisherHead>,
        counts: impl Fn(&NodeId) -> bool,
    ) -> SyncStep {
        remote.retain(|head| counts(&head.publisher));
        let requests = plan_requests(local, &remote);
        if requests.is_empty() {
            SyncStep::Done(SyncEnd::PeerBehind)
        } else {
            SyncStep::Fetch(requests)
        }
    }

    /// The fetched ranges were fed to the index; `progressed` when anything was applied.
    pub fn on_fetched(&mut self, progressed: bool) -> SyncStep {
        if progressed {
            self.next_round()
        } else {
            SyncStep::Done(SyncEnd::NoProgress)
        }
    }

    fn next_round(&mut self) -> SyncStep {
        if self.rounds == MAX_ROUNDS_PER_SYNC {
            return SyncStep::Done(SyncEnd::RoundLimit);
        }
        self.rounds += 1;
        SyncStep::AskDigest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(rows: &[(u8, u64)]) -> BTreeMap<NodeId, u64> {
        rows.iter().map(|(p, s)| (NodeId([*p; 32]), *s)).collect()
    }

    #[test]
    fn equal_heads_have_equal_digests_and_zero_rows_do_not_count() {
        assert_eq!(
            heads_digest(&heads(&[(1, 5), (2, 7)])),
            heads_digest(&heads(&[(2, 7), (1, 5), (3, 0)]))
        );
        assert_ne!(
            heads_digest(&heads(&[(1, 5), (2, 7)])),
            heads_digest(&heads(&[(1, 5), (2, 8)]))
        );
    }

    #[test]
    fn plans_only_what_is_missing() {
        let local = heads(&[(1, 5), (2, 7)]);
        let remote = heads_vector(&heads(&[(1, 5), (2, 9), (3, 1000)]));
        let plan = plan_requests(&local, &remote);
        assert_eq!(
            plan,
            vec![
                RangeRequest {
                    publisher: NodeId([2; 32]),
                    from: 8,
                    limit: 2
                },
                RangeRequest {
                    publisher: NodeId([3; 32]),
                    from: 1,
                    limit: MAX_BATCHES_PER_REQUEST
                },
            ]
        );
        assert!(plan_requests(&heads(&[(1, 9)]), &heads_vector(&heads(&[(1, 5)]))).is_empty());
    }

    #[test]
    fn a_session_asks_revocations_first_then_rounds_until_nothing_is_missing() {
        let (mut session, first) = SyncSession::start(3);
        assert_eq!(first, SyncStep::AskRevocations { held: 3 });
        assert_eq!(session.on_revocations(), SyncStep::AskDigest);
        let local = heads(&[(1, 5)]);
        let remote = heads(&[(1, 7), (2, 1), (9, 4)]);
        assert_eq!(
            session.on_digest(&heads_digest(&remote), &local),
            SyncStep::AskHeads
        );
        // Publisher 9 does not count (revoked): it is not fetched.
        let step = session.on_heads(&local, heads_vector(&remote), |p| p.0[0] != 9);
        let SyncStep::Fetch(requests) = step else {
            panic!("{step:?}")
        };
        assert_eq!(requests.len(), 2);
        assert_eq!(session.on_fetched(true), SyncStep::AskDigest);
        assert_eq!(session.rounds(), 2);
        assert_eq!(
            session.on_digest(&heads_digest(&remote), &remote),
            SyncStep::Done(SyncEnd::InSync)
        );
        assert_eq!(
            session.on_heads(&remote, heads_vector(&local), |_| true),
            SyncStep::Done(SyncEnd::PeerBehind)
        );
        assert_eq!(
            session.on_fetched(false),
            SyncStep::Done(SyncEnd::NoProgress)
        );
        // A catch-up that keeps progressing stops at the round limit.
        let (mut session, _) = SyncSession::start(0);
        let mut step = session.on_revocations();
        while step == SyncStep::AskDigest {
            step = session.on_fetched(true);
        }
        assert_eq!(step, SyncStep::Done(SyncEnd::RoundLimit));
        assert_eq!(session.rounds(), MAX_ROUNDS_PER_SYNC);
    }
}
