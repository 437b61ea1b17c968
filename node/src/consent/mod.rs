//! Consent at the holder: before a patient's data leaves this node for another
//! organisation, each data category is decided under the patient's consent rules (FHIR
//! `Consent` resources, [`fhir_consent`]), the network's default policy and its
//! break-the-glass policy ([`zorgmesh_protocol::consent::decide`]); what is not permitted
//! stays here, and the requester learns only that something was withheld by consent.

pub mod fhir_consent;
pub mod sync;

use crate::fhir::FhirService;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use zorgmesh_protocol::claims::PurposeOfUse;
use zorgmesh_protocol::consent::{
    decide, BreakGlassPolicy, ConsentQuestion, ConsentRule, DefaultPolicy, Ground,
    OrganisationCategory, Verdict,
};
use zorgmesh_protocol::locator::{category, category_of};
use zorgmesh_protocol::PatientKey;

/// What flows when no consent rule applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultSetting {
    /// Nothing flows without a permit (as Mitz).
    OptIn,
    /// Everything flows unless the patient objected.
    #[default]
    OptOut,
}

/// Whether an emergency (break-the-glass) overrides a denial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakTheGlassSetting {
    /// Never.
    Refused,
    /// Over an opt-in default, not over a patient's objection.
    #[default]
    Allowed,
    /// Over a patient's objection too.
    AllowedOverObjection,
}

/// `[consent]` in the node config: the network's policy as this holder enforces it (every
/// node of a network should say the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// `opt-in` or `opt-out` (default).
    #[serde(default)]
    pub default: DefaultSetting,
    /// `refused`, `allowed` (default) or `allowed-over-objection`.
    #[serde(default)]
    pub break_the_glass: BreakTheGlassSetting,
}

impl ConsentConfig {
    fn default_policy(&self) -> DefaultPolicy {
        match self.default {
            DefaultSetting::OptIn => DefaultPolicy::OptIn,
            DefaultSetting::OptOut => DefaultPolicy::OptOut,
        }
    }

    fn break_glass(&self) -> BreakGlassPolicy {
        BreakGlassPolicy {
            allowed: self.break_the_glass != BreakTheGlassSetting::Refused,
            overrides_objection: self.break_the_glass == BreakTheGlassSetting::AllowedOverObjection,
        }
    }
}

/// A holder's consent enforcement: the policy, and who the holder is.
#[derive(Clone, Debug)]
pub struct ConsentEnforcer {
    pub policy: ConsentConfig,
    pub holder_ura: String,
    pub holder_category: OrganisationCategory,
}

/// Who asks, from the requester's certificate and claims.
pub struct Requester<'a> {
    pub ura: &'a str,
    pub category: OrganisationCategory,
    pub purpose: PurposeOfUse,
}

/// What may leave, and why.
pub struct Release {
    /// The resources that may leave, in their order.
    pub permitted: Vec<Value>,
    /// How many stay.
    pub withheld: usize,
    /// The decision per data category present, with its ground.
    pub decisions: BTreeMap<u16, Verdict>,
}

impl Release {
    /// Whether break-the-glass decided any category.
    pub fn broke_the_glass(&self) -> bool {
        self.decisions
            .values()
            .any(|v| matches!(v.ground, Ground::BreakTheGlass(_)))
    }

    /// "observations: withheld (Consent/c1); administrative: released (default opt-out)".
    pub fn summary(&self) -> String {
        if self.decisions.is_empty() {
            return "no consent decision (the patient's own request, or nothing to release)".into();
        }
        self.decisions
            .iter()
            .map(|(bit, verdict)| {
                let name = category::NAMES
                    .iter()
                    .find(|(b, _)| b == bit)
                    .map_or("other", |(_, n)| n);
                format!(
                    "{name}: {} ({})",
                    if verdict.permit {
                        "released"
                    } else {
                        "withheld"
                    },
                    ground_text(&verdict.ground)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn ground_text(ground: &Ground) -> String {
    match ground {
        Ground::Rule(id) => id.clone(),
        Ground::Default(DefaultPolicy::OptIn) => "default opt-in".into(),
        Ground::Default(DefaultPolicy::OptOut) => "default opt-out".into(),
        Ground::BreakTheGlass(inner) => format!("break-the-glass over {}", ground_text(inner)),
    }
}

impl ConsentEnforcer {
    /// Decides, per data category, which of `resources` may go to `requester`.
    pub fn release(
        &self,
        resources: Vec<Value>,
        known: &KnownConsent,
        requester: &Requester<'_>,
        now_ms: u64,
    ) -> Release {
        let rules = &known.rules;
        // The patient's own request: consent governs sharing between organisations, not
        // the patient's view of their own data.
        if requester.purpose == PurposeOfUse::PatientSelfAccess {
            return Release {
                permitted: resources,
                withheld: 0,
                decisions: BTreeMap::new(),
            };
        }
        let mut decisions = BTreeMap::new();
        for resource in &resources {
            let bit = category_of(resource["resourceType"].as_str().unwrap_or_default());
            decisions.entry(bit).or_insert_with(|| {
                if !known.unread.is_empty() {
                    // Fail closed: a consent this node has not read may object.
                    return Verdict {
                        permit: false,
                        ground: Ground::Rule(format!(
                            "the consent record at {} not read yet",
                            known.unread.join(", ")
                        )),
                    };
                }
                decide(
                    rules,
                    &ConsentQuestion {
                        data_user_ura: requester.ura,
                        data_user_category: requester.category,
                        holder_ura: &self.holder_ura,
                        holder_category: self.holder_category,
                        purpose: requester.purpose,
                        category: bit,
                        now_ms,
                    },
                    self.policy.default_policy(),
                    self.policy.break_glass(),
                )
            });
        }
        let total = resources.len();
        let permitted: Vec<Value> = resources
            .into_iter()
            .filter(|r| {
                let bit = category_of(r["resourceType"].as_str().unwrap_or_default());
                decisions.get(&bit).is_some_and(|v| v.permit)
            })
            .collect();
        Release {
            withheld: total - permitted.len(),
            permitted,
            decisions,
        }
    }
}

/// The privacy Consent resources in the compartments of the local Patients `patient_ids`.
pub fn privacy_consents(
    storage: &crate::storage::Storage,
    patient_ids: &[String],
) -> Result<Vec<Value>, crate::storage::StorageError> {
    let mut out = Vec::new();
    for patient_id in patient_ids {
        for (resource_type, id) in storage.compartment(patient_id)? {
            if resource_type != "Consent" {
                continue;
            }
            if let Some(consent) = storage.read("Consent", &id)? {
                if fhir_consent::is_privacy_consent(&consent) {
                    out.push(consent);
                }
            }
        }
    }
    Ok(out)
}

/// Whether the local Patients `patient_ids` have a privacy Consent here.
pub fn holds_privacy_consent(
    storage: &crate::storage::Storage,
    patient_ids: &[String],
) -> Result<bool, crate::storage::StorageError> {
    Ok(!privacy_consents(storage, patient_ids)?.is_empty())
}

/// What this holder knows of a patient's consent.
#[derive(Clone, Debug, Default)]
pub struct KnownConsent {
    /// The rules of the privacy Consents kept here and of those read from the patient's
    /// other holders.
    pub rules: Vec<ConsentRule>,
    /// Holders whose index entry says they keep a privacy Consent this node has not read
    /// (or not since it changed): until it has, nothing of the patient leaves this node.
    pub unread: Vec<String>,
}

/// What this node knows of `patient`'s consent: its own privacy Consents, and the copies
/// read from the other holders that `holders` (the index's entries for the patient) say
/// keep one. `own` is this node's log id.
pub fn known_consent(
    fhir: &FhirService,
    holders: &[zorgmesh_protocol::index::HolderLocation],
    own: zorgmesh_protocol::NodeId,
    patient: &PatientKey,
) -> Result<KnownConsent, String> {
    let storage = fhir.storage();
    let patients = storage
        .patients_with_key(patient)
        .map_err(|e| e.to_string())?;
    let mut consents = privacy_consents(storage, &patients).map_err(|e| e.to_string())?;
    let copies = storage.consent_copies(patient).map_err(|e| e.to_string())?;
    let mut unread = Vec::new();
    for holder in holders {
        if holder.info.node == own
            || holder.entry.retracted
            || holder.entry.categories & category::CONSENT == 0
        {
            continue;
        }
        match copies.get(&holder.info.name) {
            Some(copy) if copy.entry_updated_at_ms >= holder.entry.updated_at_ms => {
                consents.extend(copy.consents.iter().cloned())
            }
            _ => unread.push(holder.info.name.clone()),
        }
    }
    let mut rules = Vec::new();
    for consent in &consents {
        match fhir_consent::rules_of(consent) {
            Ok(found) => rules.extend(found),
            Err(e) => {
                tracing::warn!(consent = %consent["id"], error = %e, "a privacy Consent makes no rule")
            }
        }
    }
    Ok(KnownConsent { rules, unread })
}
