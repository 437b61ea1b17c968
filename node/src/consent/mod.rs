//! Consent at the holder: before a patient's data leaves this node for another
//! organisation, each data category is decided under the patient's consent rules (FHIR
//! `Consent` resources, [`fhir_consent`]), the network's default policy and its
//! break-the-glass policy ([`zorgmesh_protocol::consent::decide`]); what is not permitted
//! stays here, and the requester learns only that something was withheld by consent.

pub mod fhir_consent;

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
        rules: &[ConsentRule],
        requester: &Requester<'_>,
        now_ms: u64,
    ) -> Release {
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

/// The consent rules this node knows for a patient: from the `Consent` resources in the
/// compartments of its local Patients with that key. A Consent that cannot be read makes
/// no rule (it was checked when written; a warning says which).
pub fn rules_for(fhir: &FhirService, patient: &PatientKey) -> Result<Vec<ConsentRule>, String> {
    let storage = fhir.storage();
    let mut rules = Vec::new();
    for patient_id in storage
        .patients_with_key(patient)
        .map_err(|e| e.to_string())?
    {
        for (resource_type, id) in storage
            .compartment(&patient_id)
            .map_err(|e| e.to_string())?
        {
            if resource_type != "Consent" {
                continue;
            }
            let Some(consent) = storage.read("Consent", &id).map_err(|e| e.to_string())? else {
                continue;
            };
            match fhir_consent::rules_of(&consent) {
                Ok(found) => rules.extend(found),
                Err(e) => {
                    tracing::warn!(consent = %id, error = %e, "a stored Consent makes no rule")
                }
            }
        }
    }
    Ok(rules)
}
