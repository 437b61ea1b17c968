//! Locator entries: "node H holds data of these categories for patient P", with a salted
//! commitment to exactly which resources, so that a resolver can check an answer's
//! completeness while the index reveals no counts.

use crate::codec::DecodeError;
use crate::patient::PatientKey;
use std::fmt;

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

/// The data categories an entry may name, one bit each in [`LocatorEntry::categories`], in the
/// spirit of the national localisation record (holder organisation and data category) and the
/// sections of the Dutch patient summary (BgZ). [`category_of`] maps FHIR R4 resource types.
pub mod category {
    /// Administrative: Patient, practitioners, organisations, coverage and the like.
    pub const ADMINISTRATIVE: u16 = 1 << 0;
    /// Contacts: Encounter, EpisodeOfCare, Appointment.
    pub const CONTACTS: u16 = 1 << 1;
    /// Problems: Condition.
    pub const PROBLEMS: u16 = 1 << 2;
    /// Allergies and intolerances.
    pub const ALLERGIES: u16 = 1 << 3;
    /// Medication: Medication, its requests, statements, dispenses, administrations.
    pub const MEDICATION: u16 = 1 << 4;
    /// Observations: measurements and results (Observation).
    pub const OBSERVATIONS: u16 = 1 << 5;
    /// Reports: DiagnosticReport, Specimen.
    pub const REPORTS: u16 = 1 << 6;
    /// Imaging: ImagingStudy, Media.
    pub const IMAGING: u16 = 1 << 7;
    /// Procedures.
    pub const PROCEDURES: u16 = 1 << 8;
    /// Vaccinations: Immunization.
    pub const VACCINATIONS: u16 = 1 << 9;
    /// Care planning: CarePlan, CareTeam, Goal, ServiceRequest, NutritionOrder.
    pub const CARE_PLANS: u16 = 1 << 10;
    /// Documents: DocumentReference, Composition, Binary.
    pub const DOCUMENTS: u16 = 1 << 11;
    /// Devices: Device, DeviceUseStatement.
    pub const DEVICES: u16 = 1 << 12;
    /// Questionnaire responses.
    pub const QUESTIONNAIRES: u16 = 1 << 13;
    /// The holder keeps a privacy consent record of the patient (never served with the
    /// data: holders of the patient read it with a `ConsentRecords` request).
    pub const CONSENT: u16 = 1 << 14;
    /// Any other resource type.
    pub const OTHER: u16 = 1 << 15;
    /// Every bit a valid entry may set.
    pub const ALL: u16 = 0b1111_1111_1111_1111;
    /// Names of the bits, lowest first.
    pub const NAMES: [(u16, &str); 16] = [
        (ADMINISTRATIVE, "administrative"),
        (CONTACTS, "contacts"),
        (PROBLEMS, "problems"),
        (ALLERGIES, "allergies"),
        (MEDICATION, "medication"),
        (OBSERVATIONS, "observations"),
        (REPORTS, "reports"),
        (IMAGING, "imaging"),
        (PROCEDURES, "procedures"),
        (VACCINATIONS, "vaccinations"),
        (CARE_PLANS, "care plans"),
        (DOCUMENTS, "documents"),
        (DEVICES, "devices"),
        (QUESTIONNAIRES, "questionnaires"),
        (CONSENT, "consent"),
        (OTHER, "other"),
    ];
}

/// The data category of a FHIR R4 resource type.
pub fn category_of(resource_type: &str) -> u16 {
    use category::*;
    match resource_type {
        "Patient" | "RelatedPerson" | "Practitioner" | "PractitionerRole" | "Organization"
        | "Location" | "Coverage" | "Account" | "Person" | "Consent" => ADMINISTRATIVE,
        "Encounter" | "EpisodeOfCare" | "Appointment" => CONTACTS,
        "Condition" => PROBLEMS,
        "AllergyIntolerance" => ALLERGIES,
        "Medication"
        | "MedicationRequest"
        | "MedicationStatement"
        | "MedicationDispense"
        | "MedicationAdministration" => MEDICATION,
        "Observation" => OBSERVATIONS,
        "DiagnosticReport" | "Specimen" => REPORTS,
        "ImagingStudy" | "Media" => IMAGING,
        "Procedure" => PROCEDURES,
        "Immunization" => VACCINATIONS,
        "CarePlan" | "CareTeam" | "Goal" | "ServiceRequest" | "NutritionOrder" => CARE_PLANS,
        "DocumentReference" | "Composition" | "Binary" => DOCUMENTS,
        "Device" | "DeviceUseStatement" => DEVICES,
        "QuestionnaireResponse" => QUESTIONNAIRES,
        _ => OTHER,
    }
}

/// The names of the categories set in `bits`.
pub fn category_names(bits: u16) -> Vec<&'static str> {
    category::NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Domain of a holding commitment.
pub const HOLDING_COMMITMENT_DOMAIN: &[u8] = b"zorgmesh/holding-commitment/v1\n";

/// One resource as a holding commitment covers it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldResource {
    /// FHIR resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Version (`meta.versionId`).
    pub version: u64,
}

/// The holder's commitment to exactly what it holds for a patient:
/// SHA-256(domain || salt || for each resource, sorted by type then id: type || 0x00 || id ||
/// 0x00 || version (u64 LE)). The salt is the holder's secret per patient; it travels only
/// with the resources, to the resolver, which recomputes the commitment from what it received
/// and so checks that the answer is complete without the index revealing any count.
pub fn holding_commitment(salt: &[u8; 32], resources: &[HeldResource]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&HeldResource> = resources.iter().collect();
    sorted.sort();
    let mut hash = Sha256::new();
    hash.update(HOLDING_COMMITMENT_DOMAIN);
    hash.update(salt);
    for resource in sorted {
        hash.update(resource.resource_type.as_bytes());
        hash.update([0]);
        hash.update(resource.id.as_bytes());
        hash.update([0]);
        hash.update(resource.version.to_le_bytes());
    }
    hash.finalize().into()
}

/// One holder's claim about one patient: which categories of data it holds, and a
/// commitment to exactly which resources, without counts.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct LocatorEntry {
    /// Pseudonym of the patient.
    pub patient: PatientKey,
    /// The node that holds the data; must equal the batch's publisher.
    pub holder: NodeId,
    /// Data categories held ([`category`] bits); 0 when retracted.
    pub categories: u16,
    /// [`holding_commitment`] of the resources held; 32 zero bytes when retracted.
    pub commitment: [u8; 32],
    /// When the holder's data for this patient last changed (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// True when the holder no longer has data for the patient.
    pub retracted: bool,
}

/// Length of an encoded [`LocatorEntry`].
pub const ENTRY_BYTES: usize = 32 + 32 + 2 + 32 + 8 + 1;

impl LocatorEntry {
    /// Length of this entry's encoding (fixed).
    pub fn encoded_len(&self) -> usize {
        ENTRY_BYTES
    }

    /// Checks the canonical-form rules that the decoder cannot express.
    pub fn validate(&self) -> Result<(), DecodeError> {
        // Every bit of `categories` names a category (see [`category::ALL`]).
        if self.retracted && (self.categories != 0 || self.commitment != [0; 32]) {
            return Err(DecodeError::Invalid(
                "a retracted entry carries no categories and no commitment".into(),
            ));
        }
        if !self.retracted && self.categories == 0 {
            return Err(DecodeError::Invalid(
                "a live entry names at least one category".into(),
            ));
        }
        Ok(())
    }
}
