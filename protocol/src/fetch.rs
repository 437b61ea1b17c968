//! The data-plane protocol (`zorgmesh/fetch/3` over QUIC): one request per bidirectional
//! stream, answered by a stream of frames. It carries patient data (tag 0), index
//! anti-entropy (tags 1-3, see [`crate::sync`]) and threshold-OPRF evaluations (tag 4, see
//! [`crate::oprf`]).
//!
//! Framing: each frame is a `u32` little-endian length followed by that many bytes of an
//! encoded [`FetchRequest`] or [`FetchFrame`]. The client sends one request and finishes its
//! send side; the server answers with zero or more `Resource` frames and exactly one `End`
//! or `Error` frame, then finishes.

use crate::claims::SignedClaims;
use crate::codec::{self, DecodeError};
use crate::oprf::{EvaluationRequest, PartialEvaluation};
use crate::sync::{PublisherHead, RangeRequest};

/// ALPN protocol id of the data plane.
pub const FETCH_ALPN: &[u8] = b"zorgmesh/fetch/3";
/// Largest request frame (an evaluation request of 1024 elements is 32,780 bytes).
pub const MAX_REQUEST_BYTES: usize = 36 * 1024;
/// Largest response frame (one resource; the API accepts resources up to 8 MiB).
pub const MAX_FRAME_BYTES: usize = 9 * 1024 * 1024;
/// Most resources one response may carry.
pub const MAX_RESOURCES_PER_RESPONSE: u32 = 200_000;

/// What a client asks a holder.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum FetchRequest {
    /// Tag 0: every resource the holder has for the patient the claims name, for the
    /// requester, practitioner and purpose they name (see [`crate::claims`]).
    PatientResources {
        /// Who asks, for whom and why, signed and bound to the connection (boxed: encoded
        /// exactly as the claims themselves).
        claims: Box<SignedClaims>,
    },
    /// Tag 1: the digest of the holder's index heads.
    HeadsDigest,
    /// Tag 2: the holder's heads vector.
    Heads,
    /// Tag 3: a range of one publisher's batches, as gossip messages.
    Batches(RangeRequest),
    /// Tag 4: evaluate blinded elements with the server's OPRF key share (evaluators only).
    Evaluate(EvaluationRequest),
    /// Tag 5: the server's revocation list if it is newer than `have` (the requester's
    /// sequence): one `Message` frame with a `GossipMessage::Revocations`, then `End`.
    Revocations {
        /// The highest list sequence the requester holds (0: none).
        have: u64,
    },
    /// Tag 6: the holder's access-trail entries about the patient the claims name (the
    /// newest, at most [`MAX_ACCESS_ENTRIES`]), as `AccessEntry` frames, then `End`. Asked
    /// only as `PatientSelfAccess` or `Compliance`.
    AccessLog {
        /// Who asks, for whom and why (as for `PatientResources`).
        claims: Box<SignedClaims>,
    },
    /// Tag 7: the privacy `Consent` resources the holder keeps for the patient the claims
    /// name, as `Resource` frames, then `End`; answered only to another holder of that
    /// patient (by the holder's own index), else `NotPermitted`.
    ConsentRecords {
        /// Who asks, for whom and why (as for `PatientResources`).
        claims: Box<SignedClaims>,
    },
}

/// Most access-trail entries one `AccessLog` answer holds.
pub const MAX_ACCESS_ENTRIES: usize = 1000;

/// Why a holder refused or failed a request. Tags are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum FetchErrorCode {
    /// Tag 0: the request could not be decoded.
    BadRequest,
    /// Tag 1: the holder has no data for the patient.
    NotFound,
    /// Tag 2: the holder failed internally.
    Internal,
    /// Tag 3: the holder is overloaded, or (for `Evaluate`) the requester is over its rate
    /// limit; try later.
    Busy,
    /// Tag 4: the request's claims are altered, forged, malformed, for another network or
    /// bound to another connection.
    ClaimsInvalid,
    /// Tag 5: the request's claims were used before (a replay).
    ClaimsReplayed,
    /// Tag 6: the request's claims are too old or from the future.
    ClaimsStale,
    /// Tag 7: the holder does not answer this request for the purpose it names.
    NotPermitted,
}

/// One frame of a response.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum FetchFrame {
    /// Tag 0: one FHIR resource as JSON.
    Resource {
        /// The resource's JSON bytes (UTF-8).
        json: Vec<u8>,
    },
    /// Tag 1: the response is complete.
    End {
        /// Number of `Resource`, `Message`, `Snapshot` or `AccessEntry` frames sent.
        count: u32,
    },
    /// Tag 2: the request failed.
    Error {
        /// Machine-readable reason.
        code: FetchErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Tag 3: answer to `HeadsDigest`.
    HeadsDigest {
        /// See [`crate::sync::heads_digest`].
        digest: [u8; 32],
    },
    /// Tag 4: answer to `Heads` (then `End`).
    Heads {
        /// One row per publisher.
        heads: Vec<PublisherHead>,
    },
    /// Tag 5: one encoded [`crate::gossip::GossipMessage`] (a batch with its publisher's
    /// record), answering `Batches`; `End` follows the last.
    Message {
        /// The gossip message bytes.
        bytes: Vec<u8>,
    },
    /// Tag 6: one encoded [`crate::snapshot::SignedSnapshotChunk`], answering `Batches` for
    /// a range the holder has compacted: an `Announce` message with the publisher's record
    /// comes first, then every chunk in part order, then the batches after the snapshot.
    Snapshot {
        /// The chunk bytes.
        bytes: Vec<u8>,
    },
    /// Tag 7: an evaluator's answer to `Evaluate` (then `End` with count 0).
    Evaluated(PartialEvaluation),
    /// Tag 8: after the `Resource` frames of a `PatientResources` answer, what the resolver
    /// needs to check them against the holder's locator entry: the first `members`
    /// resources are the patient's compartment that the entry's holding commitment covers
    /// (the rest are resources they reference), and `salt` is the commitment's salt.
    Holding {
        /// The salt of [`crate::locator::holding_commitment`].
        salt: [u8; 32],
        /// How many of the resources sent, from the first, the commitment covers.
        members: u32,
    },
    /// Tag 9: one encoded [`crate::audit::AuditEntry`] of the holder's trail, answering
    /// `AccessLog`.
    AccessEntry {
        /// The entry's bytes (at most [`crate::audit::MAX_ENTRY_BYTES`]).
        bytes: Vec<u8>,
    },
    /// Tag 10: in a `PatientResources` answer, in place of `Holding`: the patient's consent
    /// kept some or all of the holder's data for this patient from the requester (what, is
    /// not said), so the resources sent cannot be checked against the holding commitment.
    ConsentWithheld,
}

impl FetchRequest {
    /// Encodes the request (without the length prefix).
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }
    /// Decodes a request body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_REQUEST_BYTES)
    }
}

impl FetchFrame {
    /// Encodes the frame (without the length prefix).
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }
    /// Decodes a frame body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_FRAME_BYTES)
    }
}

/// Prefixes `body` with its `u32` little-endian length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}
