//! The workload of the ingest and search benchmarks: Observations of many patients, a few
//! dozen LOINC codes and ten years of dates, generated from a seed (the same resources in
//! every run and every build).

use serde_json::{json, Value};

/// LOINC codes the generator draws from.
pub const CODES: usize = 40;
/// Patients per 1,000 Observations.
pub const PATIENTS_PER_THOUSAND: usize = 1;

/// The `n`-th Observation of a workload of `total`.
pub fn observation(n: usize, total: usize) -> (String, Value) {
    let patients = (total / 1000 * PATIENTS_PER_THOUSAND).max(1);
    // A small deterministic mix (splitmix64) instead of a generator per call.
    let mut x = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let patient = n % patients;
    let code = (x % CODES as u64) as usize;
    let day = (x >> 8) % 3650;
    let (year, day_of_year) = (2015 + day / 365, day % 365);
    let (month, day) = (1 + day_of_year / 31 % 12, 1 + day_of_year % 28);
    let id = format!("obs-{n}");
    let resource = json!({
        "resourceType": "Observation",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00.000Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc(code),
            "display": format!("measurement {code}")}]},
        "subject": {"reference": format!("Patient/patient-{patient}")},
        "effectiveDateTime": format!("{year}-{month:02}-{day:02}T08:30:00Z"),
        "valueQuantity": {"value": (x >> 20) % 200, "unit": "beats/minute",
            "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    (id, resource)
}

/// The `i`-th code of the workload.
pub fn loinc(i: usize) -> String {
    format!("{}-{}", 8000 + i * 7, i % 10)
}

/// The patients of a workload of `total`.
pub fn patients(total: usize) -> usize {
    (total / 1000 * PATIENTS_PER_THOUSAND).max(1)
}
