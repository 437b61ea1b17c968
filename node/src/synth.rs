//! The project's own deterministic generator of synthetic Dutch patients (no real data):
//! the same seed gives the same patients, BSNs and records, byte for byte.
//!
//! Each patient is treated at two or three institutions, in at least two regions when the
//! mesh has them. Every institution gets a transaction Bundle for the patient with its own
//! Patient record (same BSN), its own Organization, the patient's GP practice (a shared
//! Organization that several holders keep, which a dossier merges), and the clinical
//! resources that fit the institution's kind, all linked by `urn:uuid:` references.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use zorgmesh_protocol::patient::BSN_SYSTEM;
use zorgmesh_protocol::Bsn;

/// What kind of care an institution gives (decides the resources it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CareKind {
    /// University or general hospital.
    Hospital,
    /// General practice.
    GeneralPractice,
    /// Pharmacy.
    Pharmacy,
    /// A replication platform hosting small institutions' data (GP-like records).
    ReplicationPlatform,
}

/// An institution patients can be treated at.
#[derive(Clone, Debug)]
pub struct Institution {
    /// Node name.
    pub node: String,
    /// Organisation name.
    pub organisation_name: String,
    /// URA.
    pub ura: String,
    /// Region.
    pub region: String,
    /// Kind of care.
    pub kind: CareKind,
}

/// One synthetic patient and the Bundles each institution loads.
#[derive(Clone, Debug)]
pub struct SyntheticPatient {
    /// The patient's BSN.
    pub bsn: Bsn,
    /// Display name.
    pub name: String,
    /// `(institution index, transaction Bundle)`.
    pub records: Vec<(usize, Value)>,
}

impl SyntheticPatient {
    /// Number of resources in all Bundles.
    pub fn resource_count(&self) -> usize {
        self.records
            .iter()
            .map(|(_, b)| b["entry"].as_array().map_or(0, Vec::len))
            .sum()
    }
}

const GIVEN: &[(&str, &str)] = &[
    ("Anna", "female"),
    ("Sanne", "female"),
    ("Fleur", "female"),
    ("Noor", "female"),
    ("Femke", "female"),
    ("Lotte", "female"),
    ("Esther", "female"),
    ("Ingrid", "female"),
    ("Daan", "male"),
    ("Sem", "male"),
    ("Lucas", "male"),
    ("Bram", "male"),
    ("Jan", "male"),
    ("Pieter", "male"),
    ("Kees", "male"),
    ("Ruben", "male"),
];
const FAMILY: &[&str] = &[
    "de Jong",
    "Jansen",
    "de Vries",
    "van den Berg",
    "van Dijk",
    "Bakker",
    "Janssen",
    "Visser",
    "Smit",
    "Meijer",
    "de Boer",
    "Mulder",
    "de Groot",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "van Leeuwen",
];
const CONDITIONS: &[(&str, &str)] = &[
    ("38341003", "Hypertensie"),
    ("44054006", "Diabetes mellitus type 2"),
    ("195967001", "Astma"),
    ("13645005", "COPD"),
    ("49436004", "Atriumfibrilleren"),
    ("35489007", "Depressie"),
    ("396275006", "Artrose"),
    ("84114007", "Hartfalen"),
];
const PROCEDURES: &[(&str, &str)] = &[
    ("80146002", "Appendectomie"),
    ("232717009", "Coronaire bypass"),
    ("179344006", "Heupvervanging"),
    ("73761001", "Colonoscopie"),
];
const MEDICATIONS: &[(&str, &str)] = &[
    ("197361", "Amlodipine 5 mg tablet"),
    ("860975", "Metformine 500 mg tablet"),
    ("745679", "Salbutamol 100 mcg inhalator"),
    ("197381", "Atenolol 50 mg tablet"),
    ("310965", "Ibuprofen 200 mg tablet"),
];
const ALLERGIES: &[(&str, &str)] = &[
    ("91936005", "Penicilline-allergie"),
    ("300916003", "Latexallergie"),
    ("91935009", "Pinda-allergie"),
];

struct Builder<'a> {
    rng: &'a mut ChaCha8Rng,
    entries: Vec<Value>,
}

impl Builder<'_> {
    fn uuid(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.gen();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    fn post(&mut self, resource: Value) -> String {
        let full_url = format!("urn:uuid:{}", self.uuid());
        let resource_type = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.entries.push(json!({
            "fullUrl": full_url,
            "resource": resource,
            "request": {"method": "POST", "url": resource_type},
        }));
        full_url
    }

    fn put(&mut self, resource: Value) -> String {
        let reference = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        self.entries.push(json!({
            "fullUrl": reference,
            "resource": resource,
            "request": {"method": "PUT", "url": reference},
        }));
        reference
    }

    fn date(&mut self, from_year: i32, to_year: i32) -> String {
        format!(
            "{}-{:02}-{:02}",
            self.rng.gen_range(from_year..=to_year),
            self.rng.gen_range(1..=12),
            self.rng.gen_range(1..=28)
        )
    }
}

fn organization(ura: &str, name: &str) -> Value {
    json!({
        "resourceType": "Organization",
        "id": format!("ura-{ura}"),
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": ura}],
        "name": name,
        "active": true,
    })
}

fn snomed(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}], "text": display})
}

/// Generates `count` patients over `institutions`, deterministically from `seed`.
pub fn generate(seed: u64, count: usize, institutions: &[Institution]) -> Vec<SyntheticPatient> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gp_practices: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                format!("0009{:04}", 100 + i),
                format!(
                    "Huisartsenpraktijk {}",
                    ["Centrum", "De Linde", "Oost", "Het Park"][i]
                ),
            )
        })
        .collect();
    let mut used = std::collections::BTreeSet::new();
    let mut patients = Vec::with_capacity(count);
    while patients.len() < count {
        let Some(bsn) = Bsn::from_first_eight(rng.gen_range(10_000_000..99_999_999)) else {
            continue;
        };
        if !used.insert(bsn.as_str().to_owned()) {
            continue;
        }
        let (given, gender) = *GIVEN.choose(&mut rng).expect("non-empty");
        let family = *FAMILY.choose(&mut rng).expect("non-empty");
        let birth = format!(
            "{}-{:02}-{:02}",
            rng.gen_range(1935..=2020),
            rng.gen_range(1..=12),
            rng.gen_range(1..=28)
        );
        let gp = gp_practices.choose(&mut rng).expect("non-empty").clone();
        let chosen = choose_institutions(&mut rng, institutions);
        let mut records = Vec::new();
        for index in chosen {
            let institution = &institutions[index];
            let mut b = Builder {
                rng: &mut rng,
                entries: Vec::new(),
            };
            let own_org = b.put(organization(
                &institution.ura,
                &institution.organisation_name,
            ));
            let gp_org = b.put(organization(&gp.0, &gp.1));
            let mrn = format!("{:07}", b.rng.gen_range(0..10_000_000));
            let patient = b.post(json!({
                "resourceType": "Patient",
                "identifier": [
                    {"system": BSN_SYSTEM, "value": bsn.as_str()},
                    {"system": format!("urn:zorgmesh:mrn:{}", institution.node), "value": mrn}
                ],
                "name": [{"use": "official", "family": family, "given": [given], "text": format!("{given} {family}")}],
                "gender": gender,
                "birthDate": birth,
                "generalPractitioner": [{"reference": gp_org, "display": gp.1}],
                "managingOrganization": {"reference": own_org},
            }));
            let encounters = b.rng.gen_range(1..=3);
            let mut encounter_refs = Vec::new();
            for _ in 0..encounters {
                let start = b.date(2019, 2026);
                let class = match institution.kind {
                    CareKind::Hospital => ("AMB", "ambulatory"),
                    _ => ("AMB", "ambulatory"),
                };
                encounter_refs.push(b.post(json!({
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class.0, "display": class.1},
                    "subject": {"reference": patient},
                    "period": {"start": start, "end": start},
                    "serviceProvider": {"reference": own_org},
                })));
            }
            let encounter = encounter_refs[0].clone();
            match institution.kind {
                CareKind::Hospital => {
                    for _ in 0..b.rng.gen_range(1..=3) {
                        let (code, display) = *CONDITIONS.choose(b.rng).expect("non-empty");
                        let onset = b.date(2010, 2025);
                        b.post(json!({
                            "resourceType": "Condition",
                            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                            "code": snomed(code, display),
                            "subject": {"reference": patient},
                            "encounter": {"reference": encounter},
                            "onsetDateTime": onset,
                        }));
                    }
                    let (code, display) = *PROCEDURES.choose(b.rng).expect("non-empty");
                    let performed = b.date(2015, 2026);
                    b.post(json!({
                        "resourceType": "Procedure",
                        "status": "completed",
                        "code": snomed(code, display),
                        "subject": {"reference": patient},
                        "encounter": {"reference": encounter},
                        "performedDateTime": performed,
                    }));
                    add_lab(&mut b, &patient, &encounter);
                }
                CareKind::GeneralPractice | CareKind::ReplicationPlatform => {
                    let (code, display) = *CONDITIONS.choose(b.rng).expect("non-empty");
                    let onset = b.date(2005, 2025);
                    b.post(json!({
                        "resourceType": "Condition",
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                        "code": snomed(code, display),
                        "subject": {"reference": patient},
                        "onsetDateTime": onset,
                    }));
                    add_vitals(&mut b, &patient, &encounter);
                    if b.rng.gen_bool(0.5) {
                        let (code, display) = *ALLERGIES.choose(b.rng).expect("non-empty");
                        b.post(json!({
                            "resourceType": "AllergyIntolerance",
                            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                            "code": snomed(code, display),
                            "patient": {"reference": patient},
                        }));
                    }
                }
                CareKind::Pharmacy => {
                    for _ in 0..b.rng.gen_range(1..=3) {
                        let (code, display) = *MEDICATIONS.choose(b.rng).expect("non-empty");
                        let authored = b.date(2020, 2026);
                        b.post(json!({
                            "resourceType": "MedicationRequest",
                            "status": "active",
                            "intent": "order",
                            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code, "display": display}], "text": display},
                            "subject": {"reference": patient},
                            "authoredOn": authored,
                            "dosageInstruction": [{"text": "1x per dag 1 tablet"}],
                        }));
                    }
                }
            }
            let bundle =
                json!({"resourceType": "Bundle", "type": "transaction", "entry": b.entries});
            records.push((index, bundle));
        }
        patients.push(SyntheticPatient {
            bsn,
            name: format!("{given} {family}"),
            records,
        });
    }
    patients
}

fn add_vitals(b: &mut Builder<'_>, patient: &str, encounter: &str) {
    let when = b.date(2022, 2026);
    let systolic = b.rng.gen_range(105..170);
    let diastolic = b.rng.gen_range(60..100);
    b.post(json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}], "text": "Bloeddruk"},
        "subject": {"reference": patient},
        "encounter": {"reference": encounter},
        "effectiveDateTime": when,
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": systolic, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": diastolic, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ],
    }));
    let weight = b.rng.gen_range(480..1100) as f64 / 10.0;
    b.post(json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}], "text": "Lichaamsgewicht"},
        "subject": {"reference": patient},
        "encounter": {"reference": encounter},
        "effectiveDateTime": when,
        "valueQuantity": {"value": weight, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }));
}

fn add_lab(b: &mut Builder<'_>, patient: &str, encounter: &str) {
    let when = b.date(2022, 2026);
    let hb = b.rng.gen_range(70..110) as f64 / 10.0;
    b.post(json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}], "text": "Hemoglobine"},
        "subject": {"reference": patient},
        "encounter": {"reference": encounter},
        "effectiveDateTime": when,
        "valueQuantity": {"value": hb, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }));
}

/// Two or three institutions, from at least two regions when there are.
fn choose_institutions(rng: &mut ChaCha8Rng, institutions: &[Institution]) -> Vec<usize> {
    let count = rng.gen_range(2..=3).min(institutions.len());
    let mut indexes: Vec<usize> = (0..institutions.len()).collect();
    indexes.shuffle(rng);
    let mut chosen: Vec<usize> = indexes[..count].to_vec();
    let first_region = &institutions[chosen[0]].region;
    if chosen
        .iter()
        .all(|&i| &institutions[i].region == first_region)
    {
        if let Some(&other) = indexes
            .iter()
            .find(|&&i| &institutions[i].region != first_region)
        {
            *chosen.last_mut().expect("non-empty") = other;
        }
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn institutions() -> Vec<Institution> {
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| Institution {
                node: (*n).into(),
                organisation_name: format!("Org {n}"),
                ura: format!("0000000{i}"),
                region: if i == 0 {
                    "noord".into()
                } else {
                    "zuid".into()
                },
                kind: [
                    CareKind::Hospital,
                    CareKind::GeneralPractice,
                    CareKind::Pharmacy,
                ][i],
            })
            .collect()
    }

    #[test]
    fn same_seed_same_patients() {
        let a = generate(7, 5, &institutions());
        let b = generate(7, 5, &institutions());
        let c = generate(8, 5, &institutions());
        let text = |p: &Vec<SyntheticPatient>| {
            format!(
                "{:?}",
                p.iter().map(|x| (&x.bsn, &x.records)).collect::<Vec<_>>()
            )
        };
        assert_eq!(text(&a), text(&b));
        assert_ne!(text(&a), text(&c));
    }

    #[test]
    fn patients_span_two_regions_and_have_valid_bsns() {
        let institutions = institutions();
        for patient in generate(1, 20, &institutions) {
            assert!(Bsn::parse(patient.bsn.as_str()).is_ok());
            let regions: std::collections::BTreeSet<_> = patient
                .records
                .iter()
                .map(|(i, _)| institutions[*i].region.clone())
                .collect();
            assert!(regions.len() >= 2);
        }
    }
}
