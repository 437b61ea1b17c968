//! FHIRPath Patch and validation (`PATCH /fhir/{type}/{id}` with a Parameters body, and
//! every write): any body is either a patch or refused with a reason, never a panic; a patch
//! either applies or says why; validation of whatever it made never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use zorgmesh_node::fhir::fhirpath_patch::FhirpathPatch;
use zorgmesh_node::fhir::validation::validate;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The body itself as a resource to validate.
    let _ = validate(&body);
    let patch = match FhirpathPatch::parse(&body) {
        Ok(patch) => patch,
        Err(reason) => {
            assert!(!reason.is_empty());
            return;
        }
    };
    let mut patient = json!({"resourceType": "Patient", "id": "p1", "gender": "female",
        "name": [{"family": "Jansen", "given": ["Anna", "Maria"]}, {"use": "nickname"}],
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
        "contact": [{"name": {"family": "Visser"}}]});
    match patch.apply(&mut patient) {
        Ok(()) => {
            let _ = validate(&patient);
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
