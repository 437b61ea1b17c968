//! Messages on the gossip mesh, and the registry of protocol identifiers.

use crate::batch::{SignedBatch, MAX_BATCH_BYTES};
use crate::codec::{self, DecodeError};
use crate::record::{SignedNodeRecord, MAX_RECORD_BYTES};
use crate::revocation::SignedRevocationList;

/// Every versioned protocol id zorgmesh speaks, newest first per family. A retired id is
/// never reused for something else.
pub const PROTOCOL_IDS: &[&str] = &[LOCATOR_TOPIC_VERSION, FETCH_ALPN_STR];

/// Version suffix of the locator gossip topic.
pub const LOCATOR_TOPIC_VERSION: &str = "/zorgmesh/locators/2";
/// ALPN of the QUIC data plane (see [`crate::fetch`]).
pub const FETCH_ALPN_STR: &str = "zorgmesh/fetch/3";

/// Largest gossip message.
pub const MAX_GOSSIP_BYTES: usize = MAX_BATCH_BYTES + MAX_RECORD_BYTES + 4096;

/// The gossip topic for locator batches of a network: one national topic (see
/// docs/ARCHITECTURE.md for why not one per region).
pub fn locator_topic(network: &str) -> String {
    format!("{LOCATOR_TOPIC_VERSION}/{network}")
}

/// A message on the locator topic. Tags are `u32` in declaration order; never reorder.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum GossipMessage {
    /// Tag 0: a batch with the publisher's current node record.
    Batch {
        /// The publisher's signed record (certificate and data-plane address).
        record: SignedNodeRecord,
        /// The signed batch.
        batch: SignedBatch,
    },
    /// Tag 1: the publisher's current node record alone, sent at start and periodically,
    /// so that peers learn a changed address or a renewed certificate without a batch.
    Announce {
        /// The signed record.
        record: SignedNodeRecord,
    },
    /// Tag 2: the network CA's newest revocation list, relayed by any node that has it.
    /// The message's gossip author is the relaying node, not the CA.
    Revocations {
        /// The CA-signed list.
        list: SignedRevocationList,
    },
}

impl GossipMessage {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and structurally validates a gossip message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let message: Self = codec::decode(bytes, MAX_GOSSIP_BYTES)?;
        match &message {
            GossipMessage::Batch { record, batch } => {
                // The batch's own limit holds inside the message too: whatever is left
                // after the tag and the record is the batch.
                let batch_bytes = bytes.len() - 4 - codec::encode(record).len();
                if batch_bytes > MAX_BATCH_BYTES {
                    return Err(DecodeError::TooLarge {
                        actual: batch_bytes,
                        limit: MAX_BATCH_BYTES,
                    });
                }
                record.record.validate()?;
                batch.body.validate()?;
                if record.record.node != batch.body.publisher {
                    return Err(DecodeError::Invalid(
                        "the node record and the batch name different nodes".into(),
                    ));
                }
            }
            GossipMessage::Announce { record } => record.record.validate()?,
            GossipMessage::Revocations { list } => list.body.validate()?,
        }
        Ok(message)
    }
}
