//! Revocation lists: the network CA's signed word that a node's key is no longer a member.
//!
//! A list is cumulative: list `n + 1` holds every revocation of list `n` that has not yet
//! expired, plus the new ones, so a node needs only the newest list it has seen. Lists spread
//! on the locator topic ([`crate::gossip::GossipMessage::Revocations`]) and over
//! anti-entropy ([`crate::fetch::FetchRequest::Revocations`]). A node that applies a list
//! drops the revoked nodes' locator entries, refuses their gossip and data-plane
//! connections, and closes the ones it has.
//!
//! A revocation names the node's key: certificates are issued one per key, and a node that
//! comes back gets a new certificate for a new key, so its old entries never return.

use crate::codec::{self, DecodeError};
use crate::locator::NodeId;
use std::collections::BTreeSet;

/// Domain of the CA's signature over a revocation list.
pub const REVOCATION_LIST_DOMAIN: &[u8] = b"zorgmesh/revocation-list/v1\n";
/// Most revocations in one list. Entries leave the list once the revoked certificate has
/// expired, so this bounds the revocations per certificate lifetime.
pub const MAX_REVOCATIONS: usize = 8192;
/// Longest reason, in bytes.
pub const MAX_REASON_BYTES: usize = 64;
/// Largest encoded list (it fits in one gossip message).
pub const MAX_REVOCATION_LIST_BYTES: usize = 1024 * 1024;

/// One revoked node.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Revocation {
    /// The revoked node's key (its NodeId).
    pub node: NodeId,
    /// The revoked certificate's node name, for people reading the list.
    pub name: String,
    /// When it was revoked (ms since the Unix epoch).
    pub revoked_at_ms: u64,
    /// The revoked certificate's `notAfter` (seconds since the Unix epoch); the CA may drop
    /// the entry from lists issued after that.
    pub not_after: i64,
    /// Why (at most [`MAX_REASON_BYTES`]), for example "key compromised".
    pub reason: String,
}

/// What the CA signs.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RevocationListBody {
    /// Format version (1).
    pub version: u8,
    /// The network name.
    pub network: String,
    /// Increases by one with every list the CA issues; a node keeps the highest.
    pub sequence: u64,
    /// When the list was made (ms since the Unix epoch).
    pub issued_at_ms: u64,
    /// The revocations, by ascending node key, no node twice.
    pub revocations: Vec<Revocation>,
}

/// A [`RevocationListBody`] with the CA's ed25519 signature over
/// [`REVOCATION_LIST_DOMAIN`] || encode(body).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedRevocationList {
    /// The signed content.
    pub body: RevocationListBody,
    /// The CA's signature.
    pub signature: [u8; 64],
}

/// Why a revocation list is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevocationError {
    /// The bytes are not a list.
    #[error("revocation list: {0}")]
    Decode(#[from] DecodeError),
    /// The CA did not sign it.
    #[error("revocation list is not signed by the network CA")]
    BadSignature,
    /// It is for another network.
    #[error("revocation list is for network {found:?}, this is {expected:?}")]
    WrongNetwork {
        /// The list's network.
        found: String,
        /// Ours.
        expected: String,
    },
}

impl RevocationListBody {
    /// Checks the structural rules (version, sequence, order, bounds).
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.version != 1 {
            return Err(DecodeError::Invalid(format!(
                "revocation list version {}",
                self.version
            )));
        }
        if self.sequence == 0 {
            return Err(DecodeError::Invalid(
                "revocation list sequence starts at 1".into(),
            ));
        }
        if self.revocations.len() > MAX_REVOCATIONS {
            return Err(DecodeError::Invalid(format!(
                "{} revocations (at most {MAX_REVOCATIONS})",
                self.revocations.len()
            )));
        }
        for pair in self.revocations.windows(2) {
            if pair[0].node.0 >= pair[1].node.0 {
                return Err(DecodeError::Invalid(
                    "revocations are not in ascending node order".into(),
                ));
            }
        }
        if let Some(long) = self
            .revocations
            .iter()
            .find(|r| r.reason.len() > MAX_REASON_BYTES || r.name.len() > 255)
        {
            return Err(DecodeError::Invalid(format!(
                "revocation of {:?}: name or reason too long",
                long.name
            )));
        }
        Ok(())
    }

    /// The revoked keys.
    pub fn revoked_nodes(&self) -> BTreeSet<NodeId> {
        self.revocations.iter().map(|r| r.node).collect()
    }

    /// The next list: this one's revocations that are still current at `now_secs`, plus
    /// `added` (replacing an earlier entry for the same node), with the next sequence.
    pub fn successor(&self, added: Vec<Revocation>, now_ms: u64) -> Self {
        let now_secs = (now_ms / 1000) as i64;
        let mut by_node: std::collections::BTreeMap<[u8; 32], Revocation> = self
            .revocations
            .iter()
            .filter(|r| r.not_after >= now_secs)
            .map(|r| (r.node.0, r.clone()))
            .collect();
        for revocation in added {
            by_node.insert(revocation.node.0, revocation);
        }
        Self {
            version: 1,
            network: self.network.clone(),
            sequence: self.sequence + 1,
            issued_at_ms: now_ms,
            revocations: by_node.into_values().collect(),
        }
    }

    /// The list before the first: sequence 0, nothing revoked (never signed or sent).
    pub fn empty(network: &str) -> Self {
        Self {
            version: 1,
            network: network.to_owned(),
            sequence: 0,
            issued_at_ms: 0,
            revocations: Vec::new(),
        }
    }
}

impl SignedRevocationList {
    /// Signs `body` with the CA key.
    pub fn sign(body: RevocationListBody, ca_key: &ed25519_dalek::SigningKey) -> Self {
        let signature = crate::signing::sign(ca_key, REVOCATION_LIST_DOMAIN, &body);
        Self { body, signature }
    }

    /// Encodes the list.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and structurally validates a list (not yet verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let list: Self = codec::decode(bytes, MAX_REVOCATION_LIST_BYTES)?;
        list.body.validate()?;
        Ok(list)
    }

    /// Checks the CA's signature and the network.
    pub fn verify(&self, ca_key: &[u8; 32], network: &str) -> Result<(), RevocationError> {
        self.body.validate()?;
        crate::signing::verify(
            &NodeId(*ca_key),
            REVOCATION_LIST_DOMAIN,
            &self.body,
            &self.signature,
        )
        .map_err(|_| RevocationError::BadSignature)?;
        if self.body.network != network {
            return Err(RevocationError::WrongNetwork {
                found: self.body.network.clone(),
                expected: network.to_owned(),
            });
        }
        Ok(())
    }
}

/// The revocations a node holds, and what applying a newer list does to its index. Sans-IO:
/// [`RevocationState::check`] says whether a list is valid and newer; the caller keeps it
/// durably (a restart must re-apply it) and then calls [`RevocationState::apply`].
#[derive(Clone, Debug, Default)]
pub struct RevocationState {
    list: Option<SignedRevocationList>,
    revoked: BTreeSet<NodeId>,
}

/// What applying a revocation list did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedRevocations {
    /// The list's sequence.
    pub sequence: u64,
    /// Keys this list revoked that the previous one did not.
    pub newly_revoked: Vec<NodeId>,
    /// Live locator entries that left the index.
    pub removed_entries: usize,
    /// Logs that left the index with their key in force (the caller drops their stored
    /// batches, its own excepted).
    pub revoked_logs: Vec<NodeId>,
}

impl RevocationState {
    /// The sequence of the held list (0: none).
    pub fn sequence(&self) -> u64 {
        self.list.as_ref().map_or(0, |l| l.body.sequence)
    }

    /// The held list.
    pub fn list(&self) -> Option<&SignedRevocationList> {
        self.list.as_ref()
    }

    /// Every key any applied list named (lists are cumulative: a key dropped from a newer
    /// list because its certificate expired stays revoked).
    pub fn revoked(&self) -> &BTreeSet<NodeId> {
        &self.revoked
    }

    /// True when an applied list named `node`.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked.contains(node)
    }

    /// Checks a list (the CA's signature, the network): `Ok(true)` when it is newer than
    /// the held one and should be kept and applied, `Ok(false)` when it is stale.
    pub fn check(
        &self,
        list: &SignedRevocationList,
        ca_key: &[u8; 32],
        network: &str,
    ) -> Result<bool, RevocationError> {
        list.verify(ca_key, network)?;
        Ok(list.body.sequence > self.sequence())
    }

    /// Applies a list [`RevocationState::check`] found newer: each newly revoked key that
    /// is a log's key in force takes that log's entries out of `index` (a key that handed
    /// its log over to a successor leaves the log alone). A stale list changes nothing.
    pub fn apply<S: crate::index::EntryStore>(
        &mut self,
        list: SignedRevocationList,
        index: &mut crate::index::LocatorIndex<S>,
    ) -> AppliedRevocations {
        let sequence = list.body.sequence;
        if sequence <= self.sequence() {
            return AppliedRevocations {
                sequence,
                newly_revoked: Vec::new(),
                removed_entries: 0,
                revoked_logs: Vec::new(),
            };
        }
        let named = list.body.revoked_nodes();
        let newly_revoked: Vec<NodeId> = named.difference(&self.revoked).copied().collect();
        let mut removed_entries = 0;
        let mut revoked_logs = Vec::new();
        for node in &newly_revoked {
            if let Some((log, removed)) = index.revoke_key(*node) {
                removed_entries += removed;
                revoked_logs.push(log);
            }
        }
        self.revoked.extend(named);
        self.list = Some(list);
        AppliedRevocations {
            sequence,
            newly_revoked,
            removed_entries,
            revoked_logs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn revocation(byte: u8, not_after: i64) -> Revocation {
        Revocation {
            node: NodeId([byte; 32]),
            name: format!("node-{byte}"),
            revoked_at_ms: 1,
            not_after,
            reason: "key compromised".into(),
        }
    }

    #[test]
    fn lists_are_signed_cumulative_and_checked() {
        let ca = SigningKey::from_bytes(&[9; 32]);
        let first = RevocationListBody::empty("nl").successor(vec![revocation(3, 100)], 1_000);
        let second = first.successor(vec![revocation(1, 2_000), revocation(3, 100)], 50_000);
        assert_eq!(second.sequence, 2);
        assert_eq!(second.revocations.len(), 2);
        assert!(second.validate().is_ok());
        // An expired certificate's revocation leaves the next list.
        let third = second.successor(vec![], 200_000);
        assert_eq!(third.revoked_nodes(), [NodeId([1; 32])].into());

        let signed = SignedRevocationList::sign(second, &ca);
        let decoded = SignedRevocationList::from_bytes(&signed.to_bytes()).unwrap();
        let ca_public = ca.verifying_key().to_bytes();
        assert_eq!(decoded.verify(&ca_public, "nl"), Ok(()));
        assert!(matches!(
            decoded.verify(&ca_public, "be"),
            Err(RevocationError::WrongNetwork { .. })
        ));
        let mut forged = decoded.clone();
        forged.body.revocations.pop();
        assert_eq!(
            forged.verify(&ca_public, "nl"),
            Err(RevocationError::BadSignature)
        );
        let mut unordered = decoded.body.clone();
        unordered.revocations.reverse();
        assert!(unordered.validate().is_err());
    }
}
