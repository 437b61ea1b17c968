//! The access trail (NEN 7513): one append-only hash chain of entries per node, with
//! checkpoints the node signs now and then, so that any altered, removed, inserted or
//! reordered entry is found, and named, by anyone holding the trail and the node's key.
//!
//! Sans-IO: entries and checkpoints are values; [`TrailVerifier`] checks a trail streamed
//! through it in stored order, in constant memory.

use crate::claims::{Practitioner, PurposeOfUse};
use crate::codec::{self, DecodeError};
use crate::locator::NodeId;
use crate::patient::PatientKey;
use crate::signing;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

/// Domain of an entry's hash.
pub const ENTRY_DOMAIN: &[u8] = b"zorgmesh/audit-entry/v1\n";
/// Signature domain of a checkpoint.
pub const CHECKPOINT_DOMAIN: &[u8] = b"zorgmesh/audit-checkpoint/v1\n";
/// Largest encoded entry.
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;
/// Longest free-text field of a record.
pub const MAX_TEXT: usize = 1024;
/// The `previous` hash of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum AuditAction {
    /// Tag 0: a local read or vread.
    Read,
    /// Tag 1: a local search.
    Search,
    /// Tag 2: a local history.
    History,
    /// Tag 3: a local `$everything`.
    Everything,
    /// Tag 4: a mesh-wide `$dossier`.
    Dossier,
    /// Tag 5: a patient's data served to another node.
    PullServed,
    /// Tag 6: a patient's data pulled from another node.
    PullMade,
    /// Tag 7: a consent decision.
    ConsentDecision,
    /// Tag 8: a break-the-glass access.
    BreakTheGlass,
    /// Tag 9: a failed authentication.
    AuthenticationFailed,
    /// Tag 10: a create, update or delete.
    Write,
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum AuditOutcome {
    /// Tag 0: done.
    Success,
    /// Tag 1: refused (authentication, scope, claims or consent).
    Denied,
    /// Tag 2: failed.
    Failed,
}

/// One access: who (client or node, organisation, person, role), what, when, which
/// patient (its key, never a BSN), why, and the outcome.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct AuditRecord {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    /// The client (its `client_id`) or the requesting node (its name).
    pub actor: String,
    /// The acting organisation's URA.
    pub organisation: String,
    /// The person acted for.
    pub person: Option<Practitioner>,
    /// Why.
    pub purpose: Option<PurposeOfUse>,
    /// Which patient.
    pub patient: Option<PatientKey>,
    /// What: resource types and ids, or counts.
    pub what: String,
    /// The rule that decided, the reason given, or what failed.
    pub detail: String,
}

/// A record at its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct AuditEntry {
    /// 1 for the first entry, one more for each next.
    pub sequence: u64,
    /// The hash of the entry before ([`GENESIS`] for the first).
    pub previous: [u8; 32],
    pub record: AuditRecord,
}

impl AuditEntry {
    /// SHA-256 over [`ENTRY_DOMAIN`] and the entry's encoding: what the next entry and the
    /// checkpoints name.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(ENTRY_DOMAIN);
        hasher.update(codec::encode(self));
        hasher.finalize().into()
    }

    /// Encodes the entry.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes an entry (at most [`MAX_ENTRY_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_ENTRY_BYTES)
    }
}

/// The node's statement that its trail, up to `sequence`, ends in `hash`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Checkpoint {
    /// The node (its key at signing).
    pub node: NodeId,
    pub sequence: u64,
    pub hash: [u8; 32],
    pub at_ms: u64,
}

/// A checkpoint with the node's signature over `CHECKPOINT_DOMAIN || encode(checkpoint)`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// Signs it.
    pub fn sign(self, key: &SigningKey) -> SignedCheckpoint {
        let signature = signing::sign(key, CHECKPOINT_DOMAIN, &self);
        SignedCheckpoint {
            checkpoint: self,
            signature,
        }
    }
}

impl SignedCheckpoint {
    /// Whether the signature is the node's.
    pub fn verifies(&self) -> bool {
        signing::verify(
            &self.checkpoint.node,
            CHECKPOINT_DOMAIN,
            &self.checkpoint,
            &self.signature,
        )
        .is_ok()
    }
}

/// The chain's writer side: the next sequence and previous hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// The last entry's sequence (0: none yet).
    pub sequence: u64,
    /// The last entry's hash ([`GENESIS`]: none yet).
    pub hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            sequence: 0,
            hash: GENESIS,
        }
    }
}

impl ChainHead {
    /// The entry that appends `record`, and the head after it.
    pub fn append(&self, record: AuditRecord) -> (AuditEntry, ChainHead) {
        let entry = AuditEntry {
            sequence: self.sequence + 1,
            previous: self.hash,
            record,
        };
        let head = ChainHead {
            sequence: entry.sequence,
            hash: entry.hash(),
        };
        (entry, head)
    }
}

/// What is wrong with a trail, at which stored position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrailProblem {
    /// The entry's content changed after it was written: its hash is not what the next
    /// entry (or a checkpoint) names.
    Altered { sequence: u64 },
    /// Entries are missing before this one (`missing` of them).
    Removed { before: u64, missing: u64 },
    /// An entry that was never written in this place: its sequence was seen already.
    Inserted { sequence: u64 },
    /// Entries out of order: this one comes after a later one.
    Reordered { sequence: u64 },
    /// A checkpoint whose signature does not verify.
    BadCheckpoint { sequence: u64 },
    /// The trail ends before a checkpoint's sequence: entries at its end were removed.
    Truncated { after: u64, checkpoint: u64 },
}

impl std::fmt::Display for TrailProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrailProblem::Altered { sequence } => write!(f, "entry {sequence} was altered"),
            TrailProblem::Removed { before, missing } => {
                write!(f, "{missing} entr{} removed before entry {before}", if *missing == 1 { "y was" } else { "ies were" })
            }
            TrailProblem::Inserted { sequence } => {
                write!(f, "an entry numbered {sequence} was inserted (that number was used before)")
            }
            TrailProblem::Reordered { sequence } => {
                write!(f, "entry {sequence} is out of order (it comes after a later entry)")
            }
            TrailProblem::BadCheckpoint { sequence } => {
                write!(f, "the checkpoint at entry {sequence} is not signed by the node")
            }
            TrailProblem::Truncated { after, checkpoint } => write!(
                f,
                "the trail ends at entry {after}, but the node signed a checkpoint at entry {checkpoint}: entries at its end were removed"
            ),
        }
    }
}

/// Most problems a verification lists (it counts the rest).
pub const MAX_PROBLEMS: usize = 1000;

/// Checks a trail streamed through it in stored order, against the node's checkpoints (in
/// sequence order), in constant memory.
#[derive(Debug)]
pub struct TrailVerifier<'a> {
    checkpoints: &'a [SignedCheckpoint],
    next_checkpoint: usize,
    /// The previous entry as stored: its sequence and its hash.
    previous: Option<(u64, [u8; 32])>,
    /// The highest sequence seen.
    highest: u64,
    entries: u64,
    problems: Vec<TrailProblem>,
    more_problems: u64,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrailReport {
    pub entries: u64,
    /// The last entry's sequence and hash.
    pub head: ChainHead,
    pub checkpoints: usize,
    pub problems: Vec<TrailProblem>,
    /// Problems beyond [`MAX_PROBLEMS`], counted only.
    pub more_problems: u64,
}

impl TrailReport {
    /// Whether nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

impl<'a> TrailVerifier<'a> {
    /// A verifier against `checkpoints` (sorted by sequence; each must verify).
    pub fn new(checkpoints: &'a [SignedCheckpoint]) -> Self {
        let mut verifier = Self {
            checkpoints,
            next_checkpoint: 0,
            previous: None,
            highest: 0,
            entries: 0,
            problems: Vec::new(),
            more_problems: 0,
        };
        for checkpoint in checkpoints {
            if !checkpoint.verifies() {
                verifier.problem(TrailProblem::BadCheckpoint {
                    sequence: checkpoint.checkpoint.sequence,
                });
            }
        }
        verifier
    }

    fn problem(&mut self, problem: TrailProblem) {
        // One damage is reported once (an altered entry breaks its link and its checkpoint).
        if self.problems.last() == Some(&problem) {
            return;
        }
        // Two neighbours swapped look like one removed, then one out of order: say the
        // latter only.
        if let TrailProblem::Reordered { sequence } = problem {
            if self.problems.last()
                == Some(&TrailProblem::Removed {
                    before: sequence + 1,
                    missing: 1,
                })
            {
                self.problems.pop();
            }
        }
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.more_problems += 1;
        }
    }

    /// Takes the next stored entry.
    pub fn push(&mut self, entry: &AuditEntry) {
        self.entries += 1;
        let hash = entry.hash();
        let sequence = entry.sequence;
        match self.previous {
            None => {
                if sequence != 1 {
                    self.problem(TrailProblem::Removed {
                        before: sequence,
                        missing: sequence.saturating_sub(1),
                    });
                } else if entry.previous != GENESIS {
                    self.problem(TrailProblem::Altered { sequence });
                }
            }
            Some((previous_sequence, previous_hash)) => {
                if sequence <= self.highest {
                    if sequence == previous_sequence || self.is_repeat(sequence) {
                        self.problem(TrailProblem::Inserted { sequence });
                    } else {
                        self.problem(TrailProblem::Reordered { sequence });
                    }
                } else if sequence > previous_sequence + 1 && sequence > self.highest + 1 {
                    self.problem(TrailProblem::Removed {
                        before: sequence,
                        missing: sequence - self.highest - 1,
                    });
                } else if sequence == previous_sequence + 1 && entry.previous != previous_hash {
                    // The link is broken: the entry before changed (its hash is not what
                    // this one names), or this entry's link did.
                    self.problem(TrailProblem::Altered {
                        sequence: previous_sequence,
                    });
                }
            }
        }
        // Checkpoints at this sequence name this entry's hash.
        while let Some(checkpoint) = self.checkpoints.get(self.next_checkpoint) {
            let at = checkpoint.checkpoint.sequence;
            if at > sequence {
                break;
            }
            if at == sequence && checkpoint.checkpoint.hash != hash && checkpoint.verifies() {
                self.problem(TrailProblem::Altered { sequence });
            }
            self.next_checkpoint += 1;
        }
        self.highest = self.highest.max(sequence);
        self.previous = Some((sequence, hash));
    }

    /// A sequence that went backwards by one from a run: an entry copied in again.
    fn is_repeat(&self, sequence: u64) -> bool {
        self.previous.is_some_and(|(s, _)| s == sequence)
    }

    /// The verdict: also a trail that ends before a signed checkpoint.
    pub fn finish(mut self) -> TrailReport {
        let head = self
            .previous
            .map(|(sequence, hash)| ChainHead { sequence, hash })
            .unwrap_or_default();
        if let Some(last) = self
            .checkpoints
            .iter()
            .filter(|c| c.verifies())
            .map(|c| c.checkpoint.sequence)
            .max()
        {
            if last > self.highest {
                self.problem(TrailProblem::Truncated {
                    after: self.highest,
                    checkpoint: last,
                });
            }
        }
        TrailReport {
            entries: self.entries,
            head,
            checkpoints: self.checkpoints.len(),
            problems: self.problems,
            more_problems: self.more_problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> AuditRecord {
        AuditRecord {
            at_ms: 1_767_225_600_000 + n,
            action: AuditAction::Dossier,
            outcome: AuditOutcome::Success,
            actor: "epd-umcg".into(),
            organisation: "00001234".into(),
            person: Some(Practitioner {
                id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789".into(),
                role: "01.015".into(),
                name: "J. Jansen".into(),
            }),
            purpose: Some(PurposeOfUse::Treatment),
            patient: Some(PatientKey([n as u8; 32])),
            what: format!("{n} resources"),
            detail: String::new(),
        }
    }

    /// A trail of `n` entries with a checkpoint every `every` entries.
    fn trail(n: u64, every: u64) -> (Vec<AuditEntry>, Vec<SignedCheckpoint>) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let node = NodeId(key.verifying_key().to_bytes());
        let mut head = ChainHead::default();
        let mut entries = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 1..=n {
            let (entry, next) = head.append(record(i));
            head = next;
            entries.push(entry);
            if i.is_multiple_of(every) {
                checkpoints.push(
                    Checkpoint {
                        node,
                        sequence: head.sequence,
                        hash: head.hash,
                        at_ms: 0,
                    }
                    .sign(&key),
                );
            }
        }
        (entries, checkpoints)
    }

    fn verify(entries: &[AuditEntry], checkpoints: &[SignedCheckpoint]) -> Vec<TrailProblem> {
        let mut verifier = TrailVerifier::new(checkpoints);
        for entry in entries {
            verifier.push(entry);
        }
        verifier.finish().problems
    }

    #[test]
    fn each_tampering_is_found_and_named() {
        let (entries, checkpoints) = trail(20, 5);
        assert_eq!(verify(&entries, &checkpoints), vec![]);

        type Tamper = fn(&mut Vec<AuditEntry>, &mut Vec<SignedCheckpoint>);
        let cases: Vec<(&str, Tamper, Vec<TrailProblem>)> = vec![
            (
                "altered in the middle",
                |e, _| e[6].record.what = "nothing to see".into(),
                vec![TrailProblem::Altered { sequence: 7 }],
            ),
            (
                "altered at a checkpoint",
                |e, _| e[9].record.outcome = AuditOutcome::Denied,
                vec![TrailProblem::Altered { sequence: 10 }],
            ),
            (
                "the last entry altered (caught by no link, by its checkpoint)",
                |e, _| e[19].record.actor = "someone else".into(),
                vec![TrailProblem::Altered { sequence: 20 }],
            ),
            (
                "removed",
                |e, _| {
                    e.remove(11);
                },
                vec![TrailProblem::Removed {
                    before: 13,
                    missing: 1,
                }],
            ),
            (
                "three removed",
                |e, _| {
                    e.drain(3..6);
                },
                vec![TrailProblem::Removed {
                    before: 7,
                    missing: 3,
                }],
            ),
            (
                "inserted (a copy of an entry)",
                |e, _| {
                    let copy = e[4].clone();
                    e.insert(5, copy);
                },
                vec![TrailProblem::Inserted { sequence: 5 }],
            ),
            (
                "reordered",
                |e, _| e.swap(7, 8),
                vec![TrailProblem::Reordered { sequence: 8 }],
            ),
            (
                "the end cut off",
                |e, _| e.truncate(17),
                vec![TrailProblem::Truncated {
                    after: 17,
                    checkpoint: 20,
                }],
            ),
            (
                "a forged checkpoint",
                |_, c| c[1].checkpoint.hash = [1; 32],
                vec![TrailProblem::BadCheckpoint { sequence: 10 }],
            ),
        ];
        for (name, tamper, expected) in cases {
            let (mut entries, mut checkpoints) = trail(20, 5);
            tamper(&mut entries, &mut checkpoints);
            assert_eq!(verify(&entries, &checkpoints), expected, "{name}");
        }
    }

    #[test]
    fn a_rewritten_chain_is_caught_by_the_signed_checkpoints() {
        // Whoever rewrites an entry and recomputes every link after it still cannot sign.
        let (mut entries, checkpoints) = trail(20, 5);
        entries[2].record.what = "rewritten".into();
        let mut head = ChainHead {
            sequence: 2,
            hash: entries[1].hash(),
        };
        for entry in entries.iter_mut().skip(2) {
            entry.previous = head.hash;
            head = ChainHead {
                sequence: entry.sequence,
                hash: entry.hash(),
            };
        }
        let problems = verify(&entries, &checkpoints);
        assert!(
            problems.contains(&TrailProblem::Altered { sequence: 5 }),
            "{problems:?}"
        );
    }

    #[test]
    fn entries_round_trip_within_their_bound() {
        let (entries, _) = trail(2, 5);
        let bytes = entries[1].to_bytes();
        assert!(bytes.len() < MAX_ENTRY_BYTES);
        assert_eq!(AuditEntry::from_bytes(&bytes).unwrap(), entries[1]);
        for problem in [
            TrailProblem::Altered { sequence: 3 },
            TrailProblem::Removed {
                before: 4,
                missing: 2,
            },
            TrailProblem::Truncated {
                after: 1,
                checkpoint: 5,
            },
        ] {
            assert!(!problem.to_string().is_empty());
        }
    }
}
