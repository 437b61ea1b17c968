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
}
