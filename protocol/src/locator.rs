//! Locator entries: "node H holds data of these types for patient P".

use crate::codec::DecodeError;
use crate::patient::PatientKey;
use std::fmt;

/// Most resource types one entry may count.
pub const MAX_COUNTS_PER_ENTRY: usize = 64;
/// Longest resource type name (FHIR's longest is 35 characters).
pub const MAX_RESOURCE_TYPE_LEN: usize = 64;

/// A node's identity: its ed25519 public key (the same key signs batches, authenticates TLS
/// and is the libp2p peer identity).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bincode::Encode, bincode::Decode)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Lower-case hex of the public key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({}..)", &self.to_hex()[..12])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

/// How many resources of one type a holder has for a patient.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ResourceCount {
    /// FHIR resource type, e.g. `Observation`.
    pub resource_type: String,
    /// Number of current (not deleted) resources of that type.
    pub count: u32,
}

/// One holder's claim about one patient.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct LocatorEntry {
    /// Pseudonym of the patient.
    pub patient: PatientKey,
    /// The node that holds the data; must equal the batch's publisher.
    pub holder: NodeId,
    /// Resource counts per type, sorted by type name, each type once. Empty when retracted.
    pub counts: Vec<ResourceCount>,
    /// When the holder's data for this patient last changed (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// True when the holder no longer has data for the patient.
    pub retracted: bool,
}

impl LocatorEntry {
    /// Total number of resources the entry counts.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(c.count)).sum()
    }

    /// Length of this entry's encoding, computed without encoding it.
    pub fn encoded_len(&self) -> usize {
        let counts: usize = self
            .counts
            .iter()
            .map(|c| 8 + c.resource_type.len() + 4)
            .sum();
        32 + 32 + 8 + counts + 8 + 1
    }

    /// Checks the canonical-form rules that the decoder cannot express.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.counts.len() > MAX_COUNTS_PER_ENTRY {
            return Err(DecodeError::Invalid(format!(
                "entry counts {} resource types, at most {MAX_COUNTS_PER_ENTRY} allowed",
                self.counts.len()
            )));
        }
        if self.retracted && !self.counts.is_empty() {
            return Err(DecodeError::Invalid(
                "a retracted entry carries no counts".into(),
            ));
        }
        for count in &self.counts {
            let name = &count.resource_type;
            if name.is_empty()
                || name.len() > MAX_RESOURCE_TYPE_LEN
                || !name.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(DecodeError::Invalid(format!(
                    "resource type {name:?} is not a FHIR type name"
                )));
            }
        }
        if !self
            .counts
            .windows(2)
            .all(|w| w[0].resource_type < w[1].resource_type)
        {
            return Err(DecodeError::Invalid(
                "counts must be sorted by resource type, each type once".into(),
            ));
        }
        Ok(())
    }
}
