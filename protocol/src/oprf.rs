//! Patient keys from a **threshold OPRF** (protocol version 2).
//!
//! A patient key is the RFC 9497 VOPRF output (suite `ristretto255-SHA512`, mode
//! `modeVOPRF` = 0x01) of the domain-separated patient identifier under the network's OPRF
//! key `k`, truncated to 32 bytes. No node holds `k`: the CA splits it t-of-n (Shamir over
//! the ristretto255 scalar field, Feldman commitments published in the signed
//! [`EvaluatorSet`]) over designated evaluator nodes and discards it.
//!
//! How one key is made, and who learns what:
//!
//! 1. The requesting node blinds its input ([`BlindedBatch::blind`]): `B = r · H(input)`. Only
//!    `B` leaves the node; it is a uniformly random group element, independent of the BSN.
//! 2. Each of `t` evaluators returns `D = k_i · B` for its share `k_i` with a batched DLEQ
//!    proof (RFC 9497 §2.2) that it used the key behind its public share `K_i = k_i · G`
//!    ([`evaluate`]). `K_i` is not taken on trust: it is computed from the CA's commitments.
//! 3. The requester checks every proof ([`BlindedBatch::verify`]), combines `t` verified
//!    partials with Lagrange coefficients at zero (`Σ λ_i D_i = k · B`), unblinds
//!    (`r⁻¹ · k · B = k · H(input)`) and hashes (`Finalize`, RFC 9497 §3.3.2)
//!    ([`BlindedBatch::combine`]).
//!
//! The result is bit for bit what any RFC 9497 implementation computes with the whole key
//! `k`, so a third party with an RFC 9497 library reproduces a key from `k` (see the golden
//! vectors in `protocol/SPEC.md` and the cross-check against the `voprf` crate in the tests).
//!
//! Sans-IO: randomness comes from the caller's RNG, nothing here touches a socket or clock.

use crate::codec::{self, DecodeError};
use crate::locator::NodeId;
use crate::patient::{Bsn, PatientKey, BSN_SYSTEM};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, MultiscalarMul, VartimeMultiscalarMul};
use elliptic_curve::hash2curve::{ExpandMsg, ExpandMsgXmd, Expander};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use std::collections::BTreeSet;
use std::fmt;

/// The RFC 9497 cipher suite.
pub const SUITE_ID: &str = "ristretto255-SHA512";
/// RFC 9497 mode byte of the verifiable OPRF.
pub const MODE_VOPRF: u8 = 0x01;
/// RFC 9497 `contextString` = "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier.
pub const CONTEXT_STRING: &[u8] = b"OPRFV1-\x01-ristretto255-SHA512";
/// Domain-separation prefix of the OPRF input; the canonical identifier follows.
pub const INPUT_DOMAIN: &[u8] = b"zorgmesh/patient-key/v2\n";
/// Most elements in one evaluation request (and answer).
pub const MAX_ELEMENTS_PER_REQUEST: usize = 1024;
/// Most evaluators an evaluator set may name.
pub const MAX_EVALUATORS: usize = 64;
/// Largest encoded signed evaluator set.
pub const MAX_EVALUATOR_SET_BYTES: usize = 16 * 1024;
/// Signature domain of an evaluator set (signed by the network CA's ed25519 key).
pub const EVALUATOR_SET_DOMAIN: &[u8] = b"zorgmesh/evaluator-set/v1\n";

/// Why an OPRF operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OprfError {
    /// A 32-byte string is not the canonical encoding of a ristretto255 element, or is the
    /// identity (which RFC 9497 forbids on the wire).
    #[error("element {index} is not a valid ristretto255 group element")]
    BadElement {
        /// Position in the request or answer.
        index: usize,
    },
    /// A scalar is not canonical (or is zero where that is not allowed).
    #[error("invalid scalar in {0}")]
    BadScalar(&'static str),
    /// Too many or too few elements.
    #[error("{0}")]
    Count(String),
    /// The DLEQ proof does not hold: the evaluator did not use its share.
    #[error("evaluator {evaluator} sent a partial evaluation whose proof does not verify")]
    BadProof {
        /// The evaluator's index.
        evaluator: u16,
    },
    /// The evaluator index is not in the set.
    #[error("evaluator index {0} is not in the evaluator set")]
    UnknownEvaluator(u16),
    /// Fewer than `threshold` distinct verified partials.
    #[error("{have} verified partial evaluations, the threshold is {threshold}")]
    BelowThreshold {
        /// Distinct verified partials given.
        have: usize,
        /// Partials needed.
        threshold: usize,
    },
    /// The evaluator set is inconsistent.
    #[error("evaluator set: {0}")]
    BadSet(String),
}

/// RFC 9380 `expand_message_xmd` with SHA-512 to 64 bytes, DST = `prefix || contextString`.
fn expand64(parts: &[&[u8]], dst_prefix: &[u8]) -> [u8; 64] {
    let dst: [&[u8]; 2] = [dst_prefix, CONTEXT_STRING];
    let mut out = [0u8; 64];
    ExpandMsgXmd::<Sha512>::expand_message(parts, &dst, 64)
        .expect("64 bytes from SHA-512 with a short DST always expand")
        .fill_bytes(&mut out);
    out
}

/// RFC 9497 `HashToGroup` (hash_to_ristretto255 of RFC 9380).
pub fn hash_to_group(input: &[u8]) -> RistrettoPoint {
    RistrettoPoint::from_uniform_bytes(&expand64(&[input], b"HashToGroup-"))
}

/// RFC 9497 `HashToScalar`.
fn hash_to_scalar(parts: &[&[u8]]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&expand64(parts, b"HashToScalar-"))
}

fn i2osp2(n: usize) -> [u8; 2] {
    u16::try_from(n)
        .expect("lengths on this path are below 2^16")
        .to_be_bytes()
}

/// Decodes a wire element: canonical, and not the identity.
pub fn decode_element(bytes: &[u8; 32], index: usize) -> Result<RistrettoPoint, OprfError> {
    CompressedRistretto(*bytes)
        .decompress()
        .filter(|p| *p != RistrettoPoint::identity())
        .ok_or(OprfError::BadElement { index })
}

fn decode_scalar(bytes: &[u8; 32], what: &'static str) -> Result<Scalar, OprfError> {
    Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes)).ok_or(OprfError::BadScalar(what))
}

/// The OPRF input of a patient: [`INPUT_DOMAIN`] || `system|value` of its identifier. For a
/// BSN: `zorgmesh/patient-key/v2\nhttp://fhir.nl/fhir/NamingSystem/bsn|999911120`.
pub fn patient_input(bsn: &Bsn) -> Vec<u8> {
    let mut input = INPUT_DOMAIN.to_vec();
    input.extend_from_slice(BSN_SYSTEM.as_bytes());
    input.push(b'|');
    input.extend_from_slice(bsn.as_str().as_bytes());
    input
}

/// RFC 9497 `Finalize` for the (V)OPRF modes: SHA-512 over the input and the unblinded
/// element. The patient key is its first 32 bytes.
pub fn finalize(input: &[u8], unblinded: &RistrettoPoint) -> [u8; 64] {
    let element = unblinded.compress().to_bytes();
    let mut hash = Sha512::new();
    hash.update(i2osp2(input.len()));
    hash.update(input);
    hash.update(i2osp2(element.len()));
    hash.update(element);
    hash.update(b"Finalize");
    hash.finalize().into()
}

/// The patient key from a full OPRF output.
pub fn patient_key_from_output(output: &[u8; 64]) -> PatientKey {
    PatientKey(output[..32].try_into().expect("64 > 32"))
}

/// The patient key computed with the whole OPRF key. Nobody in a running network holds
/// `key`; this exists for golden vectors, tests and the simulator.
pub fn patient_key_with_whole_key(key: &Scalar, bsn: &Bsn) -> PatientKey {
    let input = patient_input(bsn);
    patient_key_from_output(&finalize(&input, &(key * hash_to_group(&input))))
}

// ---------------------------------------------------------------------------------------
// DLEQ proofs (RFC 9497 §2.2), A = G.

/// A batched DLEQ proof: `(c, s)` as two canonical little-endian scalars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct DleqProof {
    /// The challenge.
    pub c: [u8; 32],
    /// The response.
    pub s: [u8; 32],
}

/// RFC 9497 `ComputeComposites`: `M = Σ d_i C_i`, `Z = Σ d_i D_i` (or `k · M` when the
/// prover knows `k`). `cs_bytes` and `ds_bytes` are the elements' encodings, which every
/// caller already has: compressing a point costs an inverse square root, so it is not redone.
fn composites(
    public: &RistrettoPoint,
    cs: &[RistrettoPoint],
    cs_bytes: &[[u8; 32]],
    ds: &[RistrettoPoint],
    ds_bytes: &[[u8; 32]],
    key: Option<&Scalar>,
) -> (RistrettoPoint, RistrettoPoint) {
    let bm = public.compress().to_bytes();
    let mut seed_dst = b"Seed-".to_vec();
    seed_dst.extend_from_slice(CONTEXT_STRING);
    let mut h = Sha512::new();
    h.update(i2osp2(32));
    h.update(bm);
    h.update(i2osp2(seed_dst.len()));
    h.update(&seed_dst);
    let seed: [u8; 64] = h.finalize().into();
    let weights: Vec<Scalar> = cs_bytes
        .iter()
        .zip(ds_bytes)
        .enumerate()
        .map(|(i, (c, d))| {
            hash_to_scalar(&[
                &i2osp2(64),
                &seed,
                &i2osp2(i),
                &i2osp2(32),
                c,
                &i2osp2(32),
                d,
                b"Composite",
            ])
        })
        .collect();
    let m = RistrettoPoint::vartime_multiscalar_mul(&weights, cs);
    let z = match key {
        Some(k) => k * m,
        None => RistrettoPoint::vartime_multiscalar_mul(&weights, ds),
    };
    (m, z)
}

fn challenge(
    public: &RistrettoPoint,
    m: &RistrettoPoint,
    z: &RistrettoPoint,
    t2: &RistrettoPoint,
    t3: &RistrettoPoint,
) -> Scalar {
    let len = i2osp2(32);
    hash_to_scalar(&[
        &len,
        &public.compress().to_bytes(),
        &len,
        &m.compress().to_bytes(),
        &len,
        &z.compress().to_bytes(),
        &len,
        &t2.compress().to_bytes(),
        &len,
        &t3.compress().to_bytes(),
        b"Challenge",
    ])
}

fn random_nonzero_scalar<R: RngCore + CryptoRng>(rng: &mut R) -> Scalar {
    loop {
        let mut wide = [0u8; 64];
        rng.fill_bytes(&mut wide);
        let s = Scalar::from_bytes_mod_order_wide(&wide);
        if s != Scalar::ZERO {
            return s;
        }
    }
}

fn generate_proof<R: RngCore + CryptoRng>(
    key: &Scalar,
    public: &RistrettoPoint,
    (cs, cs_bytes): (&[RistrettoPoint], &[[u8; 32]]),
    ds_bytes: &[[u8; 32]],
    rng: &mut R,
) -> DleqProof {
    let (m, z) = composites(public, cs, cs_bytes, &[], ds_bytes, Some(key));
    let r = random_nonzero_scalar(rng);
    let t2 = &r * RISTRETTO_BASEPOINT_TABLE;
    let t3 = r * m;
    let c = challenge(public, &m, &z, &t2, &t3);
    let s = r - c * key;
    DleqProof {
        c: c.to_bytes(),
        s: s.to_bytes(),
    }
}

fn verify_proof(
    public: &RistrettoPoint,
    (cs, cs_bytes): (&[RistrettoPoint], &[[u8; 32]]),
    (ds, ds_bytes): (&[RistrettoPoint], &[[u8; 32]]),
    proof: &DleqProof,
) -> Result<bool, OprfError> {
    let c = decode_scalar(&proof.c, "proof challenge")?;
    let s = decode_scalar(&proof.s, "proof response")?;
    let (m, z) = composites(public, cs, cs_bytes, ds, ds_bytes, None);
    let t2 = RistrettoPoint::vartime_double_scalar_mul_basepoint(&c, public, &s);
    let t3 = RistrettoPoint::vartime_multiscalar_mul([s, c], [m, z]);
    Ok(challenge(public, &m, &z, &t2, &t3) == c)
}

// ---------------------------------------------------------------------------------------
// The evaluator set and key shares.

/// One evaluator of the set.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct EvaluatorEntry {
    /// Its share index (1..=n): the x-coordinate of its Shamir share.
    pub index: u16,
    /// The node that holds the share (its certificate's node name).
    pub name: String,
}

/// What the CA signs about the network's OPRF key.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct EvaluatorSetBody {
    /// Format version (1).
    pub version: u8,
    /// The network name.
    pub network: String,
    /// The RFC 9497 suite ([`SUITE_ID`]).
    pub suite: String,
    /// Partials needed for a key.
    pub threshold: u16,
    /// Feldman commitments `C_j = a_j · G` to the sharing polynomial's coefficients,
    /// `threshold` of them; `C_0` is the network's OPRF public key.
    pub commitments: Vec<[u8; 32]>,
    /// The evaluators, by ascending index.
    pub evaluators: Vec<EvaluatorEntry>,
    /// When the set was made (ms since the Unix epoch).
    pub issued_at_ms: u64,
}

/// An [`EvaluatorSetBody`] with the CA's ed25519 signature over
/// [`EVALUATOR_SET_DOMAIN`] || encode(body).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedEvaluatorSet {
    /// The signed content.
    pub body: EvaluatorSetBody,
    /// The CA's signature.
    pub signature: [u8; 64],
}

impl SignedEvaluatorSet {
    /// Signs `body` with the CA key.
    pub fn sign(body: EvaluatorSetBody, ca_key: &ed25519_dalek::SigningKey) -> Self {
        let signature = crate::signing::sign(ca_key, EVALUATOR_SET_DOMAIN, &body);
        Self { body, signature }
    }

    /// Encodes the set.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a set (not yet verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_EVALUATOR_SET_BYTES)
    }

    /// Checks the CA's signature and the set's consistency, for `network`.
    pub fn verify(&self, ca_key: &[u8; 32], network: &str) -> Result<EvaluatorSet, OprfError> {
        crate::signing::verify(
            &NodeId(*ca_key),
            EVALUATOR_SET_DOMAIN,
            &self.body,
            &self.signature,
        )
        .map_err(|e| OprfError::BadSet(format!("not signed by the network CA: {e}")))?;
        if self.body.network != network {
            return Err(OprfError::BadSet(format!(
                "made for network {:?}, this is {network:?}",
                self.body.network
            )));
        }
        EvaluatorSet::from_body(&self.body)
    }
}

/// A verified evaluator set: threshold, evaluators and their public shares.
#[derive(Clone, PartialEq, Eq)]
pub struct EvaluatorSet {
    threshold: usize,
    group_public: RistrettoPoint,
    evaluators: Vec<(EvaluatorEntry, RistrettoPoint)>,
}

impl fmt::Debug for EvaluatorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvaluatorSet")
            .field("threshold", &self.threshold)
            .field(
                "evaluators",
                &self
                    .evaluators
                    .iter()
                    .map(|(e, _)| &e.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// `Σ_j C_j · x^j`: the public share of index `x`.
fn public_share(commitments: &[RistrettoPoint], index: u16) -> RistrettoPoint {
    let x = Scalar::from(u64::from(index));
    let mut power = Scalar::ONE;
    let mut powers = Vec::with_capacity(commitments.len());
    for _ in commitments {
        powers.push(power);
        power *= x;
    }
    RistrettoPoint::vartime_multiscalar_mul(&powers, commitments)
}

impl EvaluatorSet {
    /// Checks a body: suite, threshold, commitments, distinct indexes and names.
    pub fn from_body(body: &EvaluatorSetBody) -> Result<Self, OprfError> {
        let bad = |m: String| Err(OprfError::BadSet(m));
        if body.version != 1 {
            return bad(format!("unknown version {}", body.version));
        }
        if body.suite != SUITE_ID {
            return bad(format!("suite {:?}, expected {SUITE_ID}", body.suite));
        }
        let n = body.evaluators.len();
        let t = usize::from(body.threshold);
        if n == 0 || n > MAX_EVALUATORS {
            return bad(format!(
                "{n} evaluators; between 1 and {MAX_EVALUATORS} allowed"
            ));
        }
        if t == 0 || t > n {
            return bad(format!("threshold {t} with {n} evaluators"));
        }
        if body.commitments.len() != t {
            return bad(format!(
                "{} commitments for threshold {t}",
                body.commitments.len()
            ));
        }
        let commitments = body
            .commitments
            .iter()
            .enumerate()
            .map(|(i, c)| decode_element(c, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OprfError::BadSet(format!("commitment: {e}")))?;
        let mut indexes = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut evaluators = Vec::with_capacity(n);
        for entry in &body.evaluators {
            if entry.index == 0 || !indexes.insert(entry.index) {
                return bad(format!(
                    "evaluator index {} is zero or repeated",
                    entry.index
                ));
            }
            if entry.name.is_empty() || entry.name.len() > 63 || !names.insert(&entry.name) {
                return bad(format!(
                    "evaluator name {:?} is empty, too long or repeated",
                    entry.name
                ));
            }
            evaluators.push((entry.clone(), public_share(&commitments, entry.index)));
        }
        Ok(Self {
            threshold: t,
            group_public: commitments[0],
            evaluators,
        })
    }

    /// Partials needed for a key.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The evaluators, by index.
    pub fn evaluators(&self) -> impl Iterator<Item = &EvaluatorEntry> {
        self.evaluators.iter().map(|(e, _)| e)
    }

    /// The evaluator of `index`, with its public share.
    fn evaluator(&self, index: u16) -> Option<&(EvaluatorEntry, RistrettoPoint)> {
        self.evaluators.iter().find(|(e, _)| e.index == index)
    }

    /// The evaluator named `name`.
    pub fn by_name(&self, name: &str) -> Option<&EvaluatorEntry> {
        self.evaluators().find(|e| e.name == name)
    }

    /// The network's OPRF public key `k · G` (compressed).
    pub fn group_public(&self) -> [u8; 32] {
        self.group_public.compress().to_bytes()
    }

    /// The public share `k_i · G` of evaluator `index` (compressed).
    pub fn public_share(&self, index: u16) -> Option<[u8; 32]> {
        self.evaluator(index).map(|(_, p)| p.compress().to_bytes())
    }
}

/// One evaluator's secret share `(i, k_i)` of the network OPRF key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyShare {
    index: u16,
    secret: Scalar,
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyShare(index {}, ..)", self.index)
    }
}

impl KeyShare {
    /// A share from its index and canonical scalar bytes.
    pub fn from_parts(index: u16, secret: &[u8; 32]) -> Result<Self, OprfError> {
        if index == 0 {
            return Err(OprfError::BadSet("share index 0".into()));
        }
        let secret = decode_scalar(secret, "key share")?;
        if secret == Scalar::ZERO {
            return Err(OprfError::BadScalar("key share"));
        }
        Ok(Self { index, secret })
    }

    /// The share's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The secret scalar's canonical bytes (for writing the owner-only share file).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// True if this share belongs to `set` (its public share matches the commitments).
    pub fn matches(&self, set: &EvaluatorSet) -> bool {
        set.evaluator(self.index)
            .is_some_and(|(_, public)| *public == &self.secret * RISTRETTO_BASEPOINT_TABLE)
    }
}

/// A fresh t-of-n sharing: the dealer (the CA, once) draws the key and a random polynomial
/// of degree `t − 1`, and returns the commitments and the shares for indexes `1..=n`. The
/// whole key exists only inside this call.
pub fn deal<R: RngCore + CryptoRng>(
    threshold: u16,
    evaluators: u16,
    rng: &mut R,
) -> Result<(Vec<[u8; 32]>, Vec<KeyShare>), OprfError> {
    let (t, n) = (usize::from(threshold), usize::from(evaluators));
    if t == 0 || t > n || n > MAX_EVALUATORS {
        return Err(OprfError::BadSet(format!(
            "threshold {t} of {n} evaluators (1 ≤ t ≤ n ≤ {MAX_EVALUATORS})"
        )));
    }
    let coefficients: Vec<Scalar> = (0..t).map(|_| random_nonzero_scalar(rng)).collect();
    Ok(deal_with_coefficients(&coefficients, evaluators))
}

/// The sharing of the polynomial with `coefficients` (`coefficients[0]` is the key).
/// Deterministic; for golden vectors and tests.
pub fn deal_with_coefficients(
    coefficients: &[Scalar],
    evaluators: u16,
) -> (Vec<[u8; 32]>, Vec<KeyShare>) {
    let commitments = coefficients
        .iter()
        .map(|a| (a * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes())
        .collect();
    let shares = (1..=evaluators)
        .map(|index| {
            let x = Scalar::from(u64::from(index));
            // Horner's rule from the highest coefficient down.
            let secret = coefficients
                .iter()
                .rev()
                .fold(Scalar::ZERO, |acc, a| acc * x + a);
            KeyShare { index, secret }
        })
        .collect();
    (commitments, shares)
}

/// Recombines the whole key from `threshold` shares: exactly what `t` colluding evaluators
/// could do, and why fewer than `t` must never collude. For tests and the simulator only;
/// no node does this.
pub fn recombine_key(set: &EvaluatorSet, shares: &[KeyShare]) -> Result<Scalar, OprfError> {
    let chosen: Vec<&KeyShare> = shares.iter().take(set.threshold).collect();
    let distinct: BTreeSet<u16> = chosen.iter().map(|s| s.index).collect();
    if distinct.len() < set.threshold || !chosen.iter().all(|s| s.matches(set)) {
        return Err(OprfError::BelowThreshold {
            have: distinct.len(),
            threshold: set.threshold,
        });
    }
    let xs: Vec<Scalar> = chosen
        .iter()
        .map(|s| Scalar::from(u64::from(s.index)))
        .collect();
    Ok(chosen
        .iter()
        .zip(lagrange_at_zero(&xs))
        .map(|(share, lambda)| share.secret * lambda)
        .sum())
}

/// Lagrange coefficients at zero for the x-coordinates `xs`: `λ_i = Π_{j≠i} x_j / (x_j − x_i)`.
fn lagrange_at_zero(xs: &[Scalar]) -> Vec<Scalar> {
    xs.iter()
        .enumerate()
        .map(|(i, xi)| {
            let (num, den) = xs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold((Scalar::ONE, Scalar::ONE), |(num, den), (_, xj)| {
                    (num * xj, den * (xj - xi))
                });
            num * den.invert()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The exchange.

/// Tag 4 of the data plane: elements to evaluate.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct EvaluationRequest {
    /// Blinded elements, 1..=[`MAX_ELEMENTS_PER_REQUEST`].
    pub elements: Vec<[u8; 32]>,
}

/// Tag 7 of the data plane: one evaluator's answer.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct PartialEvaluation {
    /// The evaluator's share index.
    pub evaluator: u16,
    /// `k_i · B` for every requested element, in request order.
    pub elements: Vec<[u8; 32]>,
    /// One batched DLEQ proof over all elements against the evaluator's public share.
    pub proof: DleqProof,
}

/// The evaluator's side: checks the request and evaluates every element with `share`.
/// The evaluator sees only blinded elements.
pub fn evaluate<R: RngCore + CryptoRng>(
    share: &KeyShare,
    request: &EvaluationRequest,
    rng: &mut R,
) -> Result<PartialEvaluation, OprfError> {
    let n = request.elements.len();
    if n == 0 || n > MAX_ELEMENTS_PER_REQUEST {
        return Err(OprfError::Count(format!(
            "{n} elements; 1 to {MAX_ELEMENTS_PER_REQUEST} per request"
        )));
    }
    let blinded = request
        .elements
        .iter()
        .enumerate()
        .map(|(i, e)| decode_element(e, i))
        .collect::<Result<Vec<_>, _>>()?;
    let evaluated: Vec<[u8; 32]> = blinded
        .iter()
        .map(|b| (share.secret * b).compress().to_bytes())
        .collect();
    let public = &share.secret * RISTRETTO_BASEPOINT_TABLE;
    let proof = generate_proof(
        &share.secret,
        &public,
        (&blinded, &request.elements),
        &evaluated,
        rng,
    );
    Ok(PartialEvaluation {
        evaluator: share.index,
        elements: evaluated,
        proof,
    })
}

/// A partial evaluation whose proof verified.
#[derive(Clone, Debug)]
pub struct VerifiedPartial {
    evaluator: u16,
    elements: Vec<RistrettoPoint>,
}

impl VerifiedPartial {
    /// The evaluator's index.
    pub fn evaluator(&self) -> u16 {
        self.evaluator
    }
}

/// The requester's side of one exchange: the inputs, their blinds and blinded elements.
pub struct BlindedBatch {
    inputs: Vec<Vec<u8>>,
    /// The inverses of the blinds `r_i`.
    unblinds: Vec<Scalar>,
    blinded: Vec<RistrettoPoint>,
    blinded_bytes: Vec<[u8; 32]>,
}

impl fmt::Debug for BlindedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindedBatch({} inputs)", self.inputs.len())
    }
}

impl BlindedBatch {
    /// Blinds `inputs` (each an OPRF input such as [`patient_input`]).
    pub fn blind<R: RngCore + CryptoRng>(
        inputs: Vec<Vec<u8>>,
        rng: &mut R,
    ) -> Result<Self, OprfError> {
        if inputs.is_empty() || inputs.len() > MAX_ELEMENTS_PER_REQUEST {
            return Err(OprfError::Count(format!(
                "{} inputs; 1 to {MAX_ELEMENTS_PER_REQUEST} per request",
                inputs.len()
            )));
        }
        let mut blinds = Vec::with_capacity(inputs.len());
        let mut blinded = Vec::with_capacity(inputs.len());
        for input in &inputs {
            if input.len() > usize::from(u16::MAX) {
                return Err(OprfError::Count(
                    "an input is longer than 65535 bytes".into(),
                ));
            }
            let r = random_nonzero_scalar(rng);
            blinded.push(r * hash_to_group(input));
            blinds.push(r);
        }
        let blinded_bytes = blinded.iter().map(|b| b.compress().to_bytes()).collect();
        // The unblinding factors, inverted together (one inversion for the whole batch).
        let mut unblinds = blinds;
        Scalar::batch_invert(&mut unblinds);
        Ok(Self {
            inputs,
            unblinds,
            blinded,
            blinded_bytes,
        })
    }

    /// The request to send to every evaluator.
    pub fn request(&self) -> EvaluationRequest {
        EvaluationRequest {
            elements: self.blinded_bytes.clone(),
        }
    }

    /// Checks one evaluator's answer: known evaluator, one element per input, valid
    /// elements, and the DLEQ proof against its public share from the CA's commitments.
    pub fn verify(
        &self,
        set: &EvaluatorSet,
        answer: &PartialEvaluation,
    ) -> Result<VerifiedPartial, OprfError> {
        let (_, public) = set
            .evaluator(answer.evaluator)
            .ok_or(OprfError::UnknownEvaluator(answer.evaluator))?;
        if answer.elements.len() != self.blinded.len() {
            return Err(OprfError::Count(format!(
                "evaluator {} answered {} elements for {} requested",
                answer.evaluator,
                answer.elements.len(),
                self.blinded.len()
            )));
        }
        let elements = answer
            .elements
            .iter()
            .enumerate()
            .map(|(i, e)| decode_element(e, i))
            .collect::<Result<Vec<_>, _>>()?;
        if !verify_proof(
            public,
            (&self.blinded, &self.blinded_bytes),
            (&elements, &answer.elements),
            &answer.proof,
        )? {
            return Err(OprfError::BadProof {
                evaluator: answer.evaluator,
            });
        }
        Ok(VerifiedPartial {
            evaluator: answer.evaluator,
            elements,
        })
    }

    /// Combines `threshold` verified partials from distinct evaluators (extra ones are
    /// ignored), unblinds and finalizes: the patient keys, in input order.
    pub fn combine(
        &self,
        set: &EvaluatorSet,
        partials: &[VerifiedPartial],
    ) -> Result<Vec<PatientKey>, OprfError> {
        Ok(self
            .combine_outputs(set, partials)?
            .iter()
            .map(patient_key_from_output)
            .collect())
    }

    /// Like [`BlindedBatch::combine`], returning the whole 64-byte RFC 9497 outputs.
    pub fn combine_outputs(
        &self,
        set: &EvaluatorSet,
        partials: &[VerifiedPartial],
    ) -> Result<Vec<[u8; 64]>, OprfError> {
        let mut chosen: Vec<&VerifiedPartial> = Vec::with_capacity(set.threshold);
        let mut seen = BTreeSet::new();
        for partial in partials {
            if chosen.len() == set.threshold {
                break;
            }
            if set.evaluator(partial.evaluator).is_some()
                && partial.elements.len() == self.blinded.len()
                && seen.insert(partial.evaluator)
            {
                chosen.push(partial);
            }
        }
        if chosen.len() < set.threshold {
            return Err(OprfError::BelowThreshold {
                have: chosen.len(),
                threshold: set.threshold,
            });
        }
        let xs: Vec<Scalar> = chosen
            .iter()
            .map(|p| Scalar::from(u64::from(p.evaluator)))
            .collect();
        let lambdas = lagrange_at_zero(&xs);
        let outputs = (0..self.blinded.len())
            .map(|e| {
                let unblind = self.unblinds[e];
                let scalars: Vec<Scalar> = lambdas.iter().map(|l| l * unblind).collect();
                let points: Vec<RistrettoPoint> = chosen.iter().map(|p| p.elements[e]).collect();
                // Constant time: the scalars carry the secret blind.
                let unblinded = RistrettoPoint::multiscalar_mul(&scalars, &points);
                finalize(&self.inputs[e], &unblinded)
            })
            .collect();
        Ok(outputs)
    }

    /// How many inputs the batch holds.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// True when the batch holds no input (never, for a batch made by `blind`).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Rate limiting at the evaluator.

/// An evaluator's budget for one requesting node: a one-time allowance (a holder's initial
/// load) used first, then a token bucket of `burst` keys refilled at `per_second`. Sans-IO:
/// the caller passes `now_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluationBudget {
    allowance_left: u64,
    per_second: u64,
    burst: u64,
    /// Tokens in thousandths of a key, so slow rates refill smoothly.
    milli_tokens: u64,
    last_ms: u64,
}

impl EvaluationBudget {
    /// A budget with `allowance` keys left of the one-time allowance and a full bucket.
    pub fn new(allowance: u64, per_second: u32, burst: u32, now_ms: u64) -> Self {
        Self {
            allowance_left: allowance,
            per_second: u64::from(per_second),
            burst: u64::from(burst),
            milli_tokens: u64::from(burst) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes `keys` from the budget, or says how many milliseconds until it could.
    pub fn take(&mut self, keys: u64, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli_tokens = (self.milli_tokens + elapsed * self.per_second).min(self.burst * 1000);
        if self.allowance_left >= keys {
            self.allowance_left -= keys;
            return Ok(());
        }
        let from_bucket = keys - self.allowance_left;
        if self.milli_tokens >= from_bucket * 1000 {
            self.milli_tokens -= from_bucket * 1000;
            self.allowance_left = 0;
            return Ok(());
        }
        if from_bucket > self.burst {
            return Err(u64::MAX);
        }
        let missing = from_bucket * 1000 - self.milli_tokens;
        Err(missing.div_ceil(self.per_second.max(1)))
    }

    /// Keys left of the one-time allowance.
    pub fn allowance_left(&self) -> u64 {
        self.allowance_left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    fn set_of(
        threshold: u16,
        n: u16,
        rng: &mut rand_chacha::ChaCha20Rng,
    ) -> (EvaluatorSet, Vec<KeyShare>) {
        let (commitments, shares) = deal(threshold, n, rng).unwrap();
        let body = EvaluatorSetBody {
            version: 1,
            network: "test".into(),
            suite: SUITE_ID.into(),
            threshold,
            commitments,
            evaluators: (1..=n)
                .map(|index| EvaluatorEntry {
                    index,
                    name: format!("eval{index}"),
                })
                .collect(),
            issued_at_ms: 0,
        };
        (EvaluatorSet::from_body(&body).unwrap(), shares)
    }

    #[test]
    fn the_budget_spends_the_allowance_then_the_bucket_then_refuses() {
        let mut budget = EvaluationBudget::new(100, 10, 20, 0);
        assert_eq!(budget.take(100, 0), Ok(()));
        assert_eq!(budget.allowance_left(), 0);
        assert_eq!(budget.take(20, 0), Ok(()));
        // Empty bucket: one key takes 100 ms at 10 per second.
        assert_eq!(budget.take(1, 0), Err(100));
        assert_eq!(budget.take(1, 100), Ok(()));
        // A second later ten keys are back, never more than the burst.
        assert_eq!(budget.take(10, 1_100), Ok(()));
        assert_eq!(budget.take(21, 1_000_000), Err(u64::MAX));
        assert_eq!(budget.take(20, 1_000_000), Ok(()));
    }

    #[test]
    fn shares_match_their_public_shares() {
        let mut rng = rng();
        let (set, shares) = set_of(2, 3, &mut rng);
        for share in &shares {
            assert!(share.matches(&set));
        }
        let forged = KeyShare::from_parts(1, &shares[1].secret_bytes()).unwrap();
        assert!(!forged.matches(&set));
    }

    #[test]
    fn a_request_of_no_or_too_many_elements_is_refused() {
        let mut rng = rng();
        let (_, shares) = set_of(1, 1, &mut rng);
        let empty = EvaluationRequest { elements: vec![] };
        assert!(matches!(
            evaluate(&shares[0], &empty, &mut rng),
            Err(OprfError::Count(_))
        ));
        let identity = EvaluationRequest {
            elements: vec![[0u8; 32]],
        };
        assert_eq!(
            evaluate(&shares[0], &identity, &mut rng).unwrap_err(),
            OprfError::BadElement { index: 0 }
        );
        let non_canonical = EvaluationRequest {
            elements: vec![[0xff; 32]],
        };
        assert!(evaluate(&shares[0], &non_canonical, &mut rng).is_err());
    }
}
