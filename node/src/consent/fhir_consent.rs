//! FHIR R4 `Consent` resources as consent rules, after the shape the Generic Function
//! Consent implementation guide names (IHE PCF, explicit intermediate consent): a base
//! `provision` that permits or denies, and nested provisions as its exceptions.
//!
//! | rule | from |
//! |---|---|
//! | permit / objection | `provision.type` (`permit`, `deny`) |
//! | data user | `provision.actor` with role `IRCP` (information recipient): `reference.identifier` of system URA (one organisation) or [`ORGANISATION_CATEGORY_SYSTEM`] (a category) |
//! | data holder | `provision.actor` with role `CST` (custodian), the same way |
//! | purpose | `provision.purpose`: v3 ActReason `TREAT`, `ETREAT`, `PATRQT`, `HRESCH` |
//! | data | `provision.class` (FHIR resource types) or `provision.code` of [`DATA_CATEGORY_SYSTEM`] (the locator's categories) |
//! | validity | `provision.period` |
//!
//! A nested provision takes what it does not say from the base. Only an `active` Consent of
//! scope `patient-privacy` makes rules (others, such as advance directives, decide nothing
//! here).

use serde_json::Value;
use zorgmesh_protocol::claims::PurposeOfUse;
use zorgmesh_protocol::consent::{ConsentRule, OrganisationCategory, Party, Provision};
use zorgmesh_protocol::locator::category;

/// The identifier system of an organisation category in a Consent's actor.
pub const ORGANISATION_CATEGORY_SYSTEM: &str =
    "https://zorgmesh.nl/fhir/CodeSystem/organisation-category";
/// The code system of the data categories in `provision.code`.
pub const DATA_CATEGORY_SYSTEM: &str = "https://zorgmesh.nl/fhir/CodeSystem/data-category";
/// The URA identifier system.
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
/// Rules one Consent makes, at most.
pub const MAX_RULES_PER_CONSENT: usize = 64;

fn purpose_of_code(code: &str) -> Option<PurposeOfUse> {
    match code {
        "TREAT" => Some(PurposeOfUse::Treatment),
        "ETREAT" => Some(PurposeOfUse::Emergency),
        "PATRQT" => Some(PurposeOfUse::PatientSelfAccess),
        "HRESCH" => Some(PurposeOfUse::Research),
        _ => None,
    }
}

/// Milliseconds since the epoch of a FHIR date or dateTime; a date's end is the end of
/// its day.
fn instant_ms(text: &str, end: bool) -> Result<u64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((at.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, &format)
        .map_err(|_| format!("{text:?} is not a FHIR date or dateTime"))?;
    let day = date.midnight().assume_utc().unix_timestamp().max(0) as u64 * 1000;
    Ok(if end { day + 86_400_000 - 1 } else { day })
}

/// What one provision says (absent: taken from the base).
#[derive(Clone, Default)]
struct Scope {
    provision: Option<Provision>,
    users: Option<Vec<Party>>,
    holders: Option<Vec<Party>>,
    purposes: Option<Vec<PurposeOfUse>>,
    categories: Option<u16>,
    from_ms: Option<Option<u64>>,
    until_ms: Option<Option<u64>>,
}

fn party(actor: &Value) -> Result<Party, String> {
    let identifier = &actor["reference"]["identifier"];
    let system = identifier["system"].as_str().unwrap_or_default();
    let value = identifier["value"].as_str().unwrap_or_default();
    match system {
        URA_SYSTEM if value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Party::Organisation(value.to_owned()))
        }
        URA_SYSTEM => Err(format!("actor URA {value:?} is not 8 digits")),
        ORGANISATION_CATEGORY_SYSTEM => Ok(Party::Category(
            value.parse::<OrganisationCategory>()?,
        )),
        _ => Err(format!(
            "an actor is named by reference.identifier of system {URA_SYSTEM} or {ORGANISATION_CATEGORY_SYSTEM}"
        )),
    }
}

fn scope(provision: &Value) -> Result<Scope, String> {
    if !provision.is_object() {
        return Err("provision must be an object".into());
    }
    let mut scope = Scope {
        provision: match provision["type"].as_str() {
            None => None,
            Some("permit") => Some(Provision::Permit),
            Some("deny") => Some(Provision::Deny),
            Some(other) => return Err(format!("provision.type {other:?} is not permit or deny")),
        },
        ..Scope::default()
    };
    if let Some(actors) = provision["actor"].as_array() {
        let (mut users, mut holders) = (Vec::new(), Vec::new());
        for actor in actors {
            let role = actor["role"]["coding"]
                .as_array()
                .and_then(|c| c.iter().find_map(|c| c["code"].as_str()))
                .unwrap_or_default();
            match role {
                "IRCP" => users.push(party(actor)?),
                "CST" => holders.push(party(actor)?),
                other => {
                    return Err(format!(
                        "actor role {other:?} is not IRCP (who would see the data) or CST (who holds it)"
                    ))
                }
            }
        }
        if !users.is_empty() {
            scope.users = Some(users);
        }
        if !holders.is_empty() {
            scope.holders = Some(holders);
        }
    }
    if let Some(purposes) = provision["purpose"].as_array() {
        let parsed = purposes
            .iter()
            .map(|p| {
                let code = p["code"].as_str().unwrap_or_default();
                purpose_of_code(code).ok_or_else(|| {
                    format!("purpose {code:?} is not one of TREAT, ETREAT, PATRQT, HRESCH")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !parsed.is_empty() {
            scope.purposes = Some(parsed);
        }
    }
    let mut mask = 0u16;
    for class in provision["class"].as_array().into_iter().flatten() {
        let code = class["code"].as_str().unwrap_or_default();
        if code.is_empty() {
            return Err("provision.class needs a resource type code".into());
        }
        mask |= zorgmesh_protocol::locator::category_of(code);
    }
    for code in provision["code"].as_array().into_iter().flatten() {
        for coding in code["coding"].as_array().into_iter().flatten() {
            if coding["system"] != DATA_CATEGORY_SYSTEM {
                continue;
            }
            let name = coding["code"].as_str().unwrap_or_default();
            let bit = category::NAMES
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(bit, _)| *bit)
                .ok_or_else(|| format!("data category {name:?} is not known"))?;
            mask |= bit;
        }
    }
    if mask != 0 {
        scope.categories = Some(mask);
    }
    if provision["period"].is_object() {
        let period = &provision["period"];
        scope.from_ms = Some(
            period["start"]
                .as_str()
                .map(|t| instant_ms(t, false))
                .transpose()?,
        );
        scope.until_ms = Some(
            period["end"]
                .as_str()
                .map(|t| instant_ms(t, true))
                .transpose()?,
        );
    }
    Ok(scope)
}

fn expand(id: &str, base: &Scope, this: &Scope, out: &mut Vec<ConsentRule>) -> Result<(), String> {
    let provision = this
        .provision
        .or(base.provision)
        .ok_or("a provision needs a type (permit or deny)")?;
    let any = vec![Party::Any];
    let users = this.users.as_ref().or(base.users.as_ref()).unwrap_or(&any);
    let holders = this
        .holders
        .as_ref()
        .or(base.holders.as_ref())
        .unwrap_or(&any);
    let purposes: Vec<Option<PurposeOfUse>> =
        match this.purposes.as_ref().or(base.purposes.as_ref()) {
            Some(list) => list.iter().copied().map(Some).collect(),
            None => vec![None],
        };
    let categories = this.categories.or(base.categories);
    let from = this.from_ms.or(base.from_ms).flatten();
    let until = this.until_ms.or(base.until_ms).flatten();
    for user in users {
        for holder in holders {
            for purpose in &purposes {
                if out.len() >= MAX_RULES_PER_CONSENT {
                    return Err(format!(
                        "a Consent makes at most {MAX_RULES_PER_CONSENT} rules (actors × purposes)"
                    ));
                }
                out.push(ConsentRule {
                    id: id.to_owned(),
                    provision,
                    data_user: user.clone(),
                    data_holder: holder.clone(),
                    purpose: *purpose,
                    categories,
                    valid_from_ms: from,
                    valid_until_ms: until,
                });
            }
        }
    }
    Ok(())
}

/// Whether a Consent is a privacy consent (scope `patient-privacy`).
pub fn is_privacy_consent(consent: &Value) -> bool {
    consent["scope"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["code"] == "patient-privacy")
}

/// The rules of a Consent resource (none unless it is `active`), or why it cannot be read.
pub fn rules_of(consent: &Value) -> Result<Vec<ConsentRule>, String> {
    if consent["resourceType"] != "Consent" {
        return Err("not a Consent".into());
    }
    let id = consent["id"].as_str().unwrap_or_default();
    if consent["patient"]["reference"]
        .as_str()
        .is_none_or(|r| !r.starts_with("Patient/") && !r.starts_with("urn:uuid:"))
    {
        return Err("Consent.patient must reference the Patient (Patient/<id>)".into());
    }
    // Only a privacy consent says who may see data; an advance directive, a research or a
    // treatment consent is stored as any resource and decides nothing here.
    if !is_privacy_consent(consent) {
        return Ok(Vec::new());
    }
    let status = consent["status"].as_str().unwrap_or_default();
    let base_value = &consent["provision"];
    if base_value.is_null() {
        return Err("Consent.provision says what is permitted or denied".into());
    }
    let base = scope(base_value)?;
    let mut rules = Vec::new();
    if base.provision.is_some() {
        expand(
            &format!("Consent/{id}"),
            &Scope::default(),
            &base,
            &mut rules,
        )?;
    }
    for (n, nested) in base_value["provision"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let this = scope(nested)?;
        expand(&format!("Consent/{id}#{}", n + 1), &base, &this, &mut rules)?;
    }
    if rules.is_empty() {
        return Err("a Consent needs a provision with a type (permit or deny)".into());
    }
    Ok(if status == "active" {
        rules
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor(role: &str, system: &str, value: &str) -> Value {
        json!({"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": role}]},
               "reference": {"identifier": {"system": system, "value": value}}})
    }

    fn privacy() -> Value {
        json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]})
    }

    #[test]
    fn a_consent_with_an_exception_becomes_a_base_rule_and_a_more_specific_one() {
        let consent = json!({
            "resourceType": "Consent", "id": "c1", "status": "active", "scope": privacy(),
            "patient": {"reference": "Patient/p1"},
            "provision": {
                "type": "permit",
                "actor": [actor("IRCP", ORGANISATION_CATEGORY_SYSTEM, "hospital")],
                "period": {"start": "2026-01-01", "end": "2026-12-31"},
                "provision": [{
                    "type": "deny",
                    "actor": [actor("IRCP", URA_SYSTEM, "00001111")],
                    "code": [{"coding": [{"system": DATA_CATEGORY_SYSTEM, "code": "observations"}]}],
                    "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}],
                    "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                }],
            },
        });
        let rules = rules_of(&consent).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, "Consent/c1");
        assert_eq!(rules[0].provision, Provision::Permit);
        assert_eq!(
            rules[0].data_user,
            Party::Category(OrganisationCategory::Hospital)
        );
        assert_eq!(rules[0].categories, None);
        assert_eq!(rules[0].valid_from_ms, Some(1_767_225_600_000));
        assert_eq!(rules[0].valid_until_ms, Some(1_798_761_599_999));
        assert_eq!(rules[1].id, "Consent/c1#1");
        assert_eq!(rules[1].provision, Provision::Deny);
        assert_eq!(rules[1].data_user, Party::Organisation("00001111".into()));
        assert_eq!(rules[1].purpose, Some(PurposeOfUse::Treatment));
        assert_eq!(
            rules[1].categories,
            Some(category::OBSERVATIONS | category::PROBLEMS)
        );
        assert_eq!(
            rules[1].valid_until_ms, rules[0].valid_until_ms,
            "inherited"
        );

        let mut directive = consent.clone();
        directive["scope"]["coding"][0]["code"] = json!("adr");
        directive["provision"]["actor"][0]["role"]["coding"][0]["code"] = json!("RESPRSN");
        assert!(
            rules_of(&directive).unwrap().is_empty(),
            "an advance directive decides nothing"
        );
        let mut inactive = consent.clone();
        inactive["status"] = json!("inactive");
        assert!(rules_of(&inactive).unwrap().is_empty());
    }

    #[test]
    fn a_consent_that_says_nothing_clear_is_refused_with_the_reason() {
        let base = json!({"resourceType": "Consent", "id": "c", "status": "active", "scope": privacy(),
            "patient": {"reference": "Patient/p"}, "provision": {"type": "deny"}});
        assert_eq!(rules_of(&base).unwrap().len(), 1);
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("provision says", Box::new(|c| c["provision"] = Value::Null)),
            (
                "permit or deny",
                Box::new(|c| c["provision"]["type"] = json!("maybe")),
            ),
            (
                "reference the Patient",
                Box::new(|c| c["patient"] = json!({"reference": "Group/g"})),
            ),
            (
                "not 8 digits",
                Box::new(|c| c["provision"]["actor"] = json!([actor("IRCP", URA_SYSTEM, "12")])),
            ),
            (
                "is not one of",
                Box::new(|c| {
                    c["provision"]["actor"] =
                        json!([actor("IRCP", ORGANISATION_CATEGORY_SYSTEM, "bakery")])
                }),
            ),
            (
                "IRCP",
                Box::new(|c| {
                    c["provision"]["actor"] = json!([actor("AUT", URA_SYSTEM, "00001111")])
                }),
            ),
            (
                "TREAT",
                Box::new(|c| c["provision"]["purpose"] = json!([{"code": "MARKETING"}])),
            ),
            (
                "not known",
                Box::new(|c| {
                    c["provision"]["code"] =
                        json!([{"coding": [{"system": DATA_CATEGORY_SYSTEM, "code": "gossip"}]}])
                }),
            ),
            (
                "FHIR date",
                Box::new(|c| c["provision"]["period"] = json!({"start": "yesterday"})),
            ),
            (
                "at most",
                Box::new(|c| {
                    let many: Vec<Value> = (0..70)
                        .map(|i| actor("IRCP", URA_SYSTEM, &format!("{:08}", i)))
                        .collect();
                    c["provision"]["actor"] = json!(many);
                }),
            ),
        ];
        for (says, change) in cases {
            let mut consent = base.clone();
            change(&mut consent);
            let error = rules_of(&consent).unwrap_err();
            assert!(error.contains(says), "{says}: {error}");
        }
    }
}
