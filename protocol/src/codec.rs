//! The one place where zorgmesh turns wire types into bytes and back.
//!
//! The encoding is bincode 2 with a fixed configuration: little-endian, fixed-width
//! integers, lengths as `u64`, enum tags as `u32`. `protocol/SPEC.md` writes that layout out
//! so that others can reproduce it without bincode. Every decode is bounded: the input must
//! not exceed the caller's size limit, bincode's allocation limit guards lengths before
//! allocating, and the whole buffer must be consumed.

use bincode::config::{self, Configuration, Fixint, Limit, LittleEndian};

/// Largest encoded message any zorgmesh decoder accepts (16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

type WireConfig = Configuration<LittleEndian, Fixint, Limit<MAX_MESSAGE_BYTES>>;

const fn wire_config() -> WireConfig {
    config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_MESSAGE_BYTES>()
}

/// Why bytes could not be decoded into a wire type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is larger than the limit for this message type.
    #[error("message of {actual} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        actual: usize,
        /// Limit for this message type.
        limit: usize,
    },
    /// The bytes do not follow the layout of the message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message decoded but breaks a rule of the protocol (ordering, bounds).
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Encodes a wire value. Encoding to a `Vec` cannot fail for zorgmesh types except when the
/// value exceeds [`MAX_MESSAGE_BYTES`], which callers prevent by bounding what they build.
pub fn encode<T: bincode::Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, wire_config()).expect("zorgmesh wire values always encode")
}

/// Decodes exactly one value from `bytes`, which may be at most `limit` bytes long.
pub fn decode<T: bincode::Decode<()>>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            actual: bytes.len(),
            limit,
        });
    }
    let (value, used) = bincode::decode_from_slice(bytes, wire_config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}
