//! The membership handshake that admits a peer to the gossip mesh.
//!
//! Gossip runs over libp2p TCP with the security protocol `/zorgmesh/noise-member/1`: a
//! libp2p noise XX handshake (which proves that each side holds the ed25519 key of its peer
//! id), then, inside the noise channel and before any multiplexing or topic traffic, this
//! exchange of node certificates:
//!
//! 1. the dialer sends a [`MemberHello`] frame;
//! 2. the listener checks it (`SPEC.md`, "Gossip membership": the certificate chains to
//!    the network CA, is valid now, is not revoked, and its key is the dialer's noise-proven
//!    key) and answers [`MemberAnswer::Admitted`] with its own hello, or
//!    [`MemberAnswer::Refused`] with a reason, and closes;
//! 3. the dialer checks the listener's hello the same way.
//!
//! Only then does the connection go on to yamux and gossipsub. A peer without a certificate
//! from the network's CA never sees a topic, a subscription or a message. Each frame is a
//! `u32` little-endian length followed by the encoded value; this module holds the bounded
//! encoding, the node drives the I/O.

use crate::codec::{self, DecodeError};

/// Largest certificate a hello may carry (as for node records).
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Largest refusal reason, in bytes.
pub const MAX_REASON_BYTES: usize = 256;
/// Largest encoded frame body of either message.
pub const MAX_FRAME_BYTES: usize = MAX_CERTIFICATE_BYTES + 64;
/// The libp2p security protocol id.
pub const SECURITY_PROTOCOL: &str = "/zorgmesh/noise-member/1";

/// What each side says about itself after the noise handshake.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct MemberHello {
    /// The sender's X.509 node certificate (DER), issued by the network CA for the key
    /// that the noise handshake proved.
    pub certificate_der: Vec<u8>,
    /// The highest revocation-list sequence the sender has applied (0: none). A receiver
    /// that holds an older list asks the sender for the newer one over anti-entropy.
    pub revocation_sequence: u64,
}

/// The listener's answer to a dialer's hello.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum MemberAnswer {
    /// Tag 0: the dialer is a member; here is the listener's hello.
    Admitted(MemberHello),
    /// Tag 1: the dialer is not admitted; the listener closes the connection.
    Refused {
        /// Why, for the dialer's logs (at most [`MAX_REASON_BYTES`]).
        reason: String,
    },
}

impl MemberHello {
    /// Encodes the hello.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a hello of at most [`MAX_FRAME_BYTES`], checking the certificate bound.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let hello: Self = codec::decode(bytes, MAX_FRAME_BYTES)?;
        hello.validate()?;
        Ok(hello)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        if self.certificate_der.is_empty() || self.certificate_der.len() > MAX_CERTIFICATE_BYTES {
            return Err(DecodeError::Invalid(format!(
                "certificate of {} bytes (1..={MAX_CERTIFICATE_BYTES})",
                self.certificate_der.len()
            )));
        }
        Ok(())
    }
}

impl MemberAnswer {
    /// A refusal, its reason cut to [`MAX_REASON_BYTES`] on a character boundary.
    pub fn refused(reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self::Refused {
            reason: reason[..end].to_owned(),
        }
    }

    /// Encodes the answer.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes an answer of at most [`MAX_FRAME_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let answer: Self = codec::decode(bytes, MAX_FRAME_BYTES)?;
        match &answer {
            Self::Admitted(hello) => hello.validate()?,
            Self::Refused { reason } if reason.len() > MAX_REASON_BYTES => {
                return Err(DecodeError::Invalid("refusal reason too long".into()))
            }
            Self::Refused { .. } => {}
        }
        Ok(answer)
    }
}

/// Reads the `u32` little-endian length prefix of a frame and checks it against
/// [`MAX_FRAME_BYTES`] before anything is allocated.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let length = u32::from_le_bytes(prefix) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge {
            actual: length,
            limit: MAX_FRAME_BYTES,
        });
    }
    Ok(length)
}

/// A whole frame: length prefix and body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_bounds_hold() {
        let hello = MemberHello {
            certificate_der: vec![0x30; 100],
            revocation_sequence: 7,
        };
        assert_eq!(
            MemberHello::from_bytes(&hello.to_bytes()),
            Ok(hello.clone())
        );
        let answer = MemberAnswer::Admitted(hello);
        assert_eq!(MemberAnswer::from_bytes(&answer.to_bytes()), Ok(answer));
        let huge = MemberHello {
            certificate_der: vec![0x30; MAX_CERTIFICATE_BYTES + 1],
            revocation_sequence: 0,
        };
        assert!(MemberHello::from_bytes(&huge.to_bytes()).is_err());
        let empty = MemberHello {
            certificate_der: vec![],
            revocation_sequence: 0,
        };
        assert!(MemberHello::from_bytes(&empty.to_bytes()).is_err());
        assert!(frame_length((MAX_FRAME_BYTES as u32 + 1).to_le_bytes()).is_err());
        let long = "é".repeat(MAX_REASON_BYTES);
        let MemberAnswer::Refused { reason } = MemberAnswer::refused(&long) else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_REASON_BYTES);
    }
}
