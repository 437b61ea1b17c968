//! Requester claims: who asks a holder for a patient's data, and why.
//!
//! Every data-plane request that returns patient data carries [`SignedClaims`]: the
//! requesting node's key (its organisation comes from its certificate, never from the
//! claims), the practitioner it acts for, the purpose of use, the patient key, a fresh nonce
//! and a timestamp, and the connection's channel binding (a TLS exporter value of the QUIC
//! connection the request travels on), signed by the requesting node. The holder checks them
//! with [`ClaimsGuard::admit`] before anything leaves it: a request altered, sent by another
//! node than the one that signed it, moved to another connection, replayed or stale is
//! refused with a typed error.
//!
//! Sans-IO: the caller supplies the time, the peer's key and the channel binding.

use crate::codec::{self, DecodeError};
use crate::fetch::FetchErrorCode;
use crate::locator::NodeId;
use crate::patient::PatientKey;
use crate::signing;
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, HashMap};

/// Version of [`RequesterClaims`].
pub const CLAIMS_VERSION: u8 = 1;
/// Signature domain of requester claims.
pub const CLAIMS_DOMAIN: &[u8] = b"zorgmesh/requester-claims/v1\n";
/// TLS exporter label of the channel binding (RFC 5705 / RFC 8446 §7.5; empty context, 32
/// bytes).
pub const CHANNEL_LABEL: &[u8] = b"EXPORTER-zorgmesh-requester-claims/v1";
/// How far a claim's `issued_at_ms` may lie from the holder's clock, either way.
pub const CLAIMS_WINDOW_MS: u64 = 120_000;
/// Nonces a holder remembers (each for twice the window); beyond, it answers Busy rather
/// than forget one early.
pub const MAX_REMEMBERED_NONCES: usize = 1_000_000;
/// Longest practitioner id (`system|value`) and name.
pub const MAX_PERSON_FIELD: usize = 256;
/// Longest practitioner role code.
pub const MAX_ROLE: usize = 64;
/// Longest emergency (break-the-glass) reason.
pub const MAX_REASON: usize = 512;
/// Longest network name.
pub const MAX_NETWORK: usize = 64;
/// Largest encoded [`SignedClaims`].
pub const MAX_CLAIMS_BYTES: usize = 2048;

/// Why data is asked for (the purposes of use a holder's policy distinguishes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode,
)]
pub enum PurposeOfUse {
    /// Tag 0: care of the patient by the requesting practitioner.
    Treatment,
    /// Tag 1: break-the-glass: an emergency, with a mandatory reason.
    Emergency,
    /// Tag 2: the patient reads their own data.
    PatientSelfAccess,
    /// Tag 3: an approved study (secondary use).
    Research,
    /// Tag 4: a privacy officer reviews who accessed a patient's data (names the officer
    /// as the practitioner).
    Compliance,
}

impl PurposeOfUse {
    /// The name used in APIs and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            PurposeOfUse::Treatment => "treatment",
            PurposeOfUse::Emergency => "emergency",
            PurposeOfUse::PatientSelfAccess => "patient-self-access",
            PurposeOfUse::Research => "research",
            PurposeOfUse::Compliance => "compliance",
        }
    }

    /// Parses [`PurposeOfUse::as_str`]'s names.
    pub fn parse(text: &str) -> Option<PurposeOfUse> {
        [
            PurposeOfUse::Treatment,
            PurposeOfUse::Emergency,
            PurposeOfUse::PatientSelfAccess,
            PurposeOfUse::Research,
            PurposeOfUse::Compliance,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// The practitioner a request is made for (as the requesting organisation's system says).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Practitioner {
    /// `system|value`, e.g. an UZI or BIG number (1 to 256 bytes).
    pub id: String,
    /// Role code (at most 64 bytes; empty: not given).
    pub role: String,
    /// Name (at most 256 bytes; empty: not given).
    pub name: String,
}

/// What a requester claims about a request.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RequesterClaims {
    /// [`CLAIMS_VERSION`].
    pub version: u8,
    /// The network's name.
    pub network: String,
    /// The requesting node's key: the key of the certificate it presents on the connection.
    pub requester: NodeId,
    /// The practitioner the request is for; none for a patient's own request or a system's
    /// own request for treatment or research.
    pub practitioner: Option<Practitioner>,
    /// Why.
    pub purpose: PurposeOfUse,
    /// The reason of an emergency request (required then, 1 to 512 bytes; empty otherwise).
    pub emergency_reason: String,
    /// The patient whose data is asked for.
    pub patient: PatientKey,
    /// 16 random bytes, never used twice by a requester.
    pub nonce: [u8; 16],
    /// When the claims were made (ms since the Unix epoch).
    pub issued_at_ms: u64,
    /// The TLS exporter value ([`CHANNEL_LABEL`], 32 bytes) of the connection the request is
    /// sent on.
    pub channel: [u8; 32],
}

/// Claims and the requesting node's signature over `CLAIMS_DOMAIN || encode(claims)`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedClaims {
    pub claims: RequesterClaims,
    pub signature: [u8; 64],
}

/// Why a holder refused a request's claims.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("the claims break a rule: {0}")]
    Malformed(String),
    #[error("the claims are for network {0:?}")]
    WrongNetwork(String),
    #[error("the claims name another requester than the node on this connection")]
    NotThePeer,
    #[error("the claims' signature does not verify (altered or forged)")]
    BadSignature,
    #[error("the claims are bound to another connection")]
    WrongChannel,
    #[error("the claims were made {skew_ms} ms away from the holder's clock (window {CLAIMS_WINDOW_MS} ms)")]
    Stale { skew_ms: u64 },
    #[error("the claims' nonce was used before: a replayed request")]
    Replayed,
    #[error("the holder is remembering too many requests: retry shortly")]
    Busy,
}

impl ClaimsError {
    /// The data-plane error code a holder answers with.
    pub fn code(&self) -> FetchErrorCode {
        match self {
            ClaimsError::Stale { .. } => FetchErrorCode::ClaimsStale,
            ClaimsError::Replayed => FetchErrorCode::ClaimsReplayed,
            ClaimsError::Busy => FetchErrorCode::Busy,
            _ => FetchErrorCode::ClaimsInvalid,
        }
    }
}

impl RequesterClaims {
    /// Checks the bounds and the purpose's rules.
    pub fn validate(&self) -> Result<(), ClaimsError> {
        let malformed = |text: &str| Err(ClaimsError::Malformed(text.to_owned()));
        if self.version != CLAIMS_VERSION {
            return malformed("unknown claims version");
        }
        if self.network.is_empty() || self.network.len() > MAX_NETWORK {
            return malformed("network name of 1 to 64 bytes");
        }
        if let Some(p) = &self.practitioner {
            if p.id.is_empty() || p.id.len() > MAX_PERSON_FIELD || !p.id.contains('|') {
                return malformed("practitioner id must be system|value of at most 256 bytes");
            }
            if p.role.len() > MAX_ROLE || p.name.len() > MAX_PERSON_FIELD {
                return malformed("practitioner role or name too long");
            }
        }
        let reason_given = !self.emergency_reason.trim().is_empty();
        match self.purpose {
            PurposeOfUse::Emergency
                if !reason_given || self.emergency_reason.len() > MAX_REASON =>
            {
                return malformed("an emergency request needs a reason of 1 to 512 bytes");
            }
            PurposeOfUse::Emergency => {}
            _ if !self.emergency_reason.is_empty() => {
                return malformed("only an emergency request carries a reason")
            }
            _ => {}
        }
        match (self.purpose, &self.practitioner) {
            (PurposeOfUse::PatientSelfAccess, Some(_)) => {
                malformed("a patient's own request names no practitioner")
            }
            (PurposeOfUse::Emergency, None) => {
                malformed("an emergency request names the practitioner who breaks the glass")
            }
            (PurposeOfUse::Compliance, None) => {
                malformed("a compliance review names the privacy officer")
            }
            _ => Ok(()),
        }
    }

    /// Signs the claims with the requesting node's key.
    pub fn sign(self, key: &SigningKey) -> SignedClaims {
        let signature = signing::sign(key, CLAIMS_DOMAIN, &self);
        SignedClaims {
            claims: self,
            signature,
        }
    }
}

impl SignedClaims {
    /// Encodes the signed claims.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }
    /// Decodes signed claims (at most [`MAX_CLAIMS_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_CLAIMS_BYTES)
    }

    /// Checks everything but freshness and replay: shape, network, that the signer is the
    /// peer, the signature and the channel binding.
    pub fn verify(
        &self,
        network: &str,
        peer: &NodeId,
        channel: &[u8; 32],
    ) -> Result<(), ClaimsError> {
        let claims = &self.claims;
        claims.validate()?;
        if claims.network != network {
            return Err(ClaimsError::WrongNetwork(claims.network.clone()));
        }
        if &claims.requester != peer {
            return Err(ClaimsError::NotThePeer);
        }
        signing::verify(&claims.requester, CLAIMS_DOMAIN, claims, &self.signature)
            .map_err(|_| ClaimsError::BadSignature)?;
        if &claims.channel != channel {
            return Err(ClaimsError::WrongChannel);
        }
        Ok(())
    }
}

/// A holder's memory of the nonces it accepted, for the replay check.
#[derive(Debug, Default)]
pub struct ClaimsGuard {
    seen: HashMap<(NodeId, [u8; 16]), u64>,
    /// Expiry time → nonces, to forget them in order.
    by_expiry: BTreeMap<u64, Vec<(NodeId, [u8; 16])>>,
}

impl ClaimsGuard {
    /// Admits a request's claims, or says why not: [`SignedClaims::verify`], then the time
    /// window, then the nonce (remembered for twice the window).
    pub fn admit(
        &mut self,
        signed: &SignedClaims,
        network: &str,
        peer: &NodeId,
        channel: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), ClaimsError> {
        signed.verify(network, peer, channel)?;
        let issued = signed.claims.issued_at_ms;
        let skew_ms = issued.abs_diff(now_ms);
        if skew_ms > CLAIMS_WINDOW_MS {
            return Err(ClaimsError::Stale { skew_ms });
        }
        self.forget_before(now_ms);
        let key = (signed.claims.requester, signed.claims.nonce);
        if self.seen.contains_key(&key) {
            return Err(ClaimsError::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED_NONCES {
            return Err(ClaimsError::Busy);
        }
        // A nonce can be replayed while its claims are within the window of the holder's
        // clock: up to `issued + window`. It is kept until then, at least.
        let expiry = issued.max(now_ms) + CLAIMS_WINDOW_MS;
        self.seen.insert(key, expiry);
        self.by_expiry.entry(expiry).or_default().push(key);
        Ok(())
    }

    fn forget_before(&mut self, now_ms: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() >= now_ms {
                break;
            }
            for key in entry.remove() {
                self.seen.remove(&key);
            }
        }
    }

    /// Nonces remembered now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn node(key: &SigningKey) -> NodeId {
        NodeId(key.verifying_key().to_bytes())
    }

    fn claims(requester: &SigningKey, nonce: u8, at: u64) -> RequesterClaims {
        RequesterClaims {
            version: CLAIMS_VERSION,
            network: "zorgnet".into(),
            requester: node(requester),
            practitioner: Some(Practitioner {
                id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789".into(),
                role: "01.015".into(),
                name: "J. Jansen".into(),
            }),
            purpose: PurposeOfUse::Treatment,
            emergency_reason: String::new(),
            patient: PatientKey([3; 32]),
            nonce: [nonce; 16],
            issued_at_ms: at,
            channel: [9; 32],
        }
    }

    const NOW: u64 = 1_767_225_600_000;

    #[test]
    fn each_attack_gets_its_answer() {
        let asker = key(7);
        let other = key(8);
        let good = claims(&asker, 1, NOW).sign(&asker);
        let altered = {
            let mut c = good.clone();
            c.claims.purpose = PurposeOfUse::Research;
            c.claims.practitioner = None;
            c
        };
        let forged = {
            // Another certified node signs claims naming the asker as requester.
            let mut c = claims(&asker, 2, NOW);
            c.requester = node(&asker);
            SignedClaims {
                signature: c.clone().sign(&other).signature,
                claims: c,
            }
        };
        let foreign_channel = {
            let mut c = claims(&asker, 3, NOW);
            c.channel = [1; 32];
            c.sign(&asker)
        };
        type Case = (
            &'static str,
            SignedClaims,
            NodeId,
            u64,
            Result<(), ClaimsError>,
        );
        let cases: Vec<Case> = vec![
            ("good", good.clone(), node(&asker), NOW, Ok(())),
            (
                "replayed",
                good.clone(),
                node(&asker),
                NOW + 5,
                Err(ClaimsError::Replayed),
            ),
            (
                "altered",
                altered,
                node(&asker),
                NOW,
                Err(ClaimsError::BadSignature),
            ),
            (
                "sent by another node",
                claims(&asker, 4, NOW).sign(&asker),
                node(&other),
                NOW,
                Err(ClaimsError::NotThePeer),
            ),
            (
                "forged signature",
                forged,
                node(&asker),
                NOW,
                Err(ClaimsError::BadSignature),
            ),
            (
                "other connection",
                foreign_channel,
                node(&asker),
                NOW,
                Err(ClaimsError::WrongChannel),
            ),
            (
                "stale",
                claims(&asker, 5, NOW - CLAIMS_WINDOW_MS - 1).sign(&asker),
                node(&asker),
                NOW,
                Err(ClaimsError::Stale {
                    skew_ms: CLAIMS_WINDOW_MS + 1,
                }),
            ),
            (
                "from the future",
                claims(&asker, 6, NOW + CLAIMS_WINDOW_MS + 1).sign(&asker),
                node(&asker),
                NOW,
                Err(ClaimsError::Stale {
                    skew_ms: CLAIMS_WINDOW_MS + 1,
                }),
            ),
            (
                "just inside the window",
                claims(&asker, 7, NOW - CLAIMS_WINDOW_MS).sign(&asker),
                node(&asker),
                NOW,
                Ok(()),
            ),
        ];
        let mut guard = ClaimsGuard::default();
        for (name, signed, peer, now, expected) in cases {
            assert_eq!(
                guard.admit(&signed, "zorgnet", &peer, &[9; 32], now),
                expected,
                "{name}"
            );
        }
        let wrong_network = claims(&asker, 8, NOW).sign(&asker);
        assert_eq!(
            guard.admit(&wrong_network, "othernet", &node(&asker), &[9; 32], NOW),
            Err(ClaimsError::WrongNetwork("zorgnet".into()))
        );
    }

    #[test]
    fn a_nonce_is_remembered_as_long_as_it_could_be_replayed() {
        let asker = key(7);
        let mut guard = ClaimsGuard::default();
        let signed = claims(&asker, 1, NOW).sign(&asker);
        guard
            .admit(&signed, "zorgnet", &node(&asker), &[9; 32], NOW)
            .unwrap();
        // Replayed at the last moment the claims are fresh: still refused.
        assert_eq!(
            guard.admit(
                &signed,
                "zorgnet",
                &node(&asker),
                &[9; 32],
                NOW + CLAIMS_WINDOW_MS
            ),
            Err(ClaimsError::Replayed)
        );
        // After that the claims are stale anyway, and the nonce is forgotten.
        assert!(matches!(
            guard.admit(
                &signed,
                "zorgnet",
                &node(&asker),
                &[9; 32],
                NOW + CLAIMS_WINDOW_MS + 2
            ),
            Err(ClaimsError::Stale { .. })
        ));
        let later = claims(&asker, 2, NOW + 3 * CLAIMS_WINDOW_MS).sign(&asker);
        guard
            .admit(
                &later,
                "zorgnet",
                &node(&asker),
                &[9; 32],
                NOW + 3 * CLAIMS_WINDOW_MS,
            )
            .unwrap();
        assert_eq!(guard.remembered(), 1);
    }

    #[test]
    fn purposes_carry_what_they_need() {
        let asker = key(7);
        let mut emergency = claims(&asker, 1, NOW);
        emergency.purpose = PurposeOfUse::Emergency;
        assert!(emergency.validate().is_err());
        emergency.emergency_reason = "unconscious at the emergency department".into();
        assert!(emergency.validate().is_ok());
        let mut own = claims(&asker, 2, NOW);
        own.purpose = PurposeOfUse::PatientSelfAccess;
        assert!(own.validate().is_err());
        own.practitioner = None;
        assert!(own.validate().is_ok());
        // A system's own request for treatment names no person; an emergency always does.
        let mut anonymous = claims(&asker, 3, NOW);
        anonymous.practitioner = None;
        assert!(anonymous.validate().is_ok());
        emergency.practitioner = None;
        assert!(emergency.validate().is_err());
        for purpose in ["treatment", "emergency", "patient-self-access", "research"] {
            assert_eq!(PurposeOfUse::parse(purpose).unwrap().as_str(), purpose);
        }
        assert_eq!(PurposeOfUse::parse("marketing"), None);
    }

    #[test]
    fn signed_claims_round_trip_within_their_bound() {
        let asker = key(7);
        let signed = claims(&asker, 1, NOW).sign(&asker);
        let bytes = signed.to_bytes();
        assert!(bytes.len() < MAX_CLAIMS_BYTES);
        assert_eq!(SignedClaims::from_bytes(&bytes).unwrap(), signed);
        assert!(SignedClaims::from_bytes(&vec![0u8; MAX_CLAIMS_BYTES + 1]).is_err());
    }
}
