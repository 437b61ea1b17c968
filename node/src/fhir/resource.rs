//! Rules for resources: known types, ids, meta, references and times.

use super::FhirError;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Every FHIR R4 (4.0.1) resource type.
pub const RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Largest resource the API accepts (bytes of JSON).
pub const MAX_RESOURCE_BYTES: usize = 8 * 1024 * 1024;

/// Checks that `name` is a FHIR R4 resource type.
pub fn check_type(name: &str) -> Result<(), FhirError> {
    if RESOURCE_TYPES.binary_search(&name).is_ok() {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "{name:?} is not a FHIR R4 resource type"
        )))
    }
}

/// Checks a logical id: `[A-Za-z0-9-.]{1,64}`.
pub fn check_id(id: &str) -> Result<(), FhirError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(FhirError::invalid(format!(
            "{id:?} is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')"
        )))
    }
}

/// Checks that `value` is a resource of `expected_type` (if given) and valid R4 (422 with
/// every problem and its path otherwise; see [`super::validation`]), and returns its type.
pub fn check_resource(value: &Value, expected_type: Option<&str>) -> Result<String, FhirError> {
    let object = value
        .as_object()
        .ok_or_else(|| FhirError::invalid("a resource must be a JSON object"))?;
    let resource_type = object
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::invalid("the resource has no resourceType"))?;
    RESOURCE_TYPES.binary_search(&resource_type).map_err(|_| {
        FhirError::invalid(format!("{resource_type:?} is not a FHIR R4 resource type"))
    })?;
    if let Some(expected) = expected_type {
        if resource_type != expected {
            return Err(FhirError::invalid(format!(
                "the body is a {resource_type} but the URL names {expected}"
            )));
        }
    }
    if let Some(id) = object.get("id") {
        let id = id
            .as_str()
            .ok_or_else(|| FhirError::invalid("id must be a string"))?;
        check_id(id)?;
    }
    if resource_type == "Patient" {
        check_bsn_identifiers(value)?;
    }
    if resource_type == "Consent" {
        // Holders decide by it: a Consent that cannot be read as rules is refused here.
        crate::consent::fhir_consent::rules_of(value)
            .map_err(|e| FhirError::invalid(format!("Consent: {e}")))?;
    }
    let issues = super::validation::validate(value);
    if super::validation::errors(&issues).next().is_some() {
        return Err(FhirError::invalid_resource(resource_type, issues));
    }
    Ok(resource_type.to_owned())
}

/// A Patient's BSN identifiers must be real BSNs: a wrong one would be stored but could never
/// be found on the mesh, so it is refused with the reason.
fn check_bsn_identifiers(patient: &Value) -> Result<(), FhirError> {
    let Some(identifiers) = patient.get("identifier").and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, identifier) in identifiers.iter().enumerate() {
        if identifier.get("system").and_then(Value::as_str)
            != Some(zorgmesh_protocol::patient::BSN_SYSTEM)
        {
            continue;
        }
        let value = identifier
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default();
        zorgmesh_protocol::Bsn::parse(value).map_err(|e| {
            FhirError::invalid(format!(
                "Patient.identifier[{i}]: {value:?} is not a valid BSN: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Formats ms since the epoch as a FHIR instant (UTC, milliseconds).
pub fn instant(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut text = t.format(&Rfc3339).unwrap_or_default();
    // Rfc3339 prints nanoseconds only when present; normalise to milliseconds.
    if let Some(dot) = text.find('.') {
        let end = text.len() - 1; // 'Z'
        let mut fraction = text[dot + 1..end].to_owned();
        fraction.truncate(3);
        while fraction.len() < 3 {
            fraction.push('0');
        }
        text = format!("{}.{}Z", &text[..dot], fraction);
    } else {
        text = text.replace('Z', ".000Z");
    }
    text
}

/// HTTP date for `Last-Modified`.
pub fn http_date(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&format).unwrap_or_default()
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping the other meta fields.
pub fn stamp(resource: &mut Value, id: &str, version: u64, last_updated_ms: u64) {
    if let Some(object) = resource.as_object_mut() {
        object.insert("id".into(), Value::String(id.to_owned()));
        let meta = object
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        let meta = meta.as_object_mut().expect("made an object above");
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(instant(last_updated_ms)),
        );
        // Keep FHIR's element order readable: resourceType, id, meta first.
        let mut ordered = Map::new();
        for key in ["resourceType", "id", "meta"] {
            if let Some(v) = object.remove(key) {
                ordered.insert(key.into(), v);
            }
        }
        ordered.append(object);
        *object = ordered;
    }
}

/// Calls `f` on every `reference` string in a resource.
pub fn for_each_reference(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "reference" {
                    if let Some(text) = v.as_str() {
                        f(text);
                        continue;
                    }
                }
                for_each_reference(v, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| for_each_reference(v, f)),
        _ => {}
    }
}

/// Rewrites every `reference` string for which `map` has a replacement.
pub fn rewrite_references(value: &mut Value, map: &impl Fn(&str) -> Option<String>) {
    match value {
        Value::Object(object) => {
            for (key, v) in object.iter_mut() {
                if key == "reference" {
                    if let Some(new) = v.as_str().and_then(map) {
                        *v = Value::String(new);
                        continue;
                    }
                }
                rewrite_references(v, map);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, map)),
        _ => {}
    }
}

/// Splits a relative literal reference `Type/id` (optionally `/_history/n`).
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let mut parts = reference.split('/');
    let resource_type = parts.next()?;
    let id = parts.next()?;
    if RESOURCE_TYPES.binary_search(&resource_type).is_err() || check_id(id).is_err() {
        return None;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Some((resource_type, id)),
        (Some("_history"), Some(_), None) => Some((resource_type, id)),
        _ => None,
    }
}

/// Parses a FHIR date or dateTime search value to an inclusive ms range.
pub fn parse_date_range(text: &str) -> Option<(u64, u64)> {
    use time::{Date, Month, PrimitiveDateTime, Time};
    let to_ms = |t: OffsetDateTime| -> u64 { (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64 };
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        let ms = to_ms(t);
        return Some((ms, ms + 999));
    }
    let parts: Vec<&str> = text.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    let (start, end) = match parts.len() {
        1 => (
            Date::from_calendar_date(year, Month::January, 1).ok()?,
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
        ),
        2 => {
            let month = Month::try_from(parts[1].parse::<u8>().ok()?).ok()?;
            let start = Date::from_calendar_date(year, month, 1).ok()?;
            let next = if month == Month::December {
                Date::from_calendar_date(year + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(year, month.next(), 1).ok()?
            };
            (start, next)
        }
        3 => {
            let month = Month::try_from(parts[1].parse::<u8>().ok()?).ok()?;
            let start = Date::from_calendar_date(year, month, parts[2].parse().ok()?).ok()?;
            (start, start.next_day()?)
        }
        _ => return None,
    };
    let start = to_ms(PrimitiveDateTime::new(start, Time::MIDNIGHT).assume_utc());
    let end = to_ms(PrimitiveDateTime::new(end, Time::MIDNIGHT).assume_utc());
    Some((start, end - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_sorted_for_binary_search() {
        assert!(RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(RESOURCE_TYPES.len(), 146);
    }

    #[test]
    fn instants_have_milliseconds() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(1_500), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn date_ranges() {
        let (a, b) = parse_date_range("2024").unwrap();
        assert_eq!(instant(a), "2024-01-01T00:00:00.000Z");
        assert_eq!(instant(b), "2024-12-31T23:59:59.999Z");
        let (a, _) = parse_date_range("2024-02-03T04:05:06Z").unwrap();
        assert_eq!(instant(a), "2024-02-03T04:05:06.000Z");
        assert!(parse_date_range("yesterday").is_none());
    }

    #[test]
    fn references_split() {
        assert_eq!(split_reference("Patient/123"), Some(("Patient", "123")));
        assert_eq!(
            split_reference("Patient/1/_history/2"),
            Some(("Patient", "1"))
        );
        assert_eq!(split_reference("urn:uuid:abc"), None);
        assert_eq!(split_reference("http://x/Patient/1"), None);
    }
}
