//! The one signing rule of every signed zorgmesh structure: ed25519 over a
//! domain-separation prefix followed by the structure's canonical encoding, verified
//! strictly (RFC 8032 with the malleability checks).

use crate::batch::SignatureError;
use crate::codec;
use crate::locator::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// `domain || encode(value)`: the exact bytes a signature covers.
pub fn signing_bytes<T: bincode::Encode>(domain: &[u8], value: &T) -> Vec<u8> {
    let mut bytes = domain.to_vec();
    bytes.extend_from_slice(&codec::encode(value));
    bytes
}

/// Signs `domain || encode(value)`.
pub fn sign<T: bincode::Encode>(key: &SigningKey, domain: &[u8], value: &T) -> [u8; 64] {
    key.sign(&signing_bytes(domain, value)).to_bytes()
}

/// Verifies `signature` by `signer` over `domain || encode(value)`.
pub fn verify<T: bincode::Encode>(
    signer: &NodeId,
    domain: &[u8],
    value: &T,
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_bytes(&signer.0).map_err(|_| SignatureError::BadPublicKey)?;
    key.verify_strict(
        &signing_bytes(domain, value),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| SignatureError::BadSignature)
}
