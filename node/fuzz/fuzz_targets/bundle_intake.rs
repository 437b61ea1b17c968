//! The FHIR Bundle intake (`POST /fhir`): any body is either planned or refused with an
//! error a client can read, never a panic; a planned transaction has an id for every entry
//! and no reference left to a `urn:` that names no entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zorgmesh_node::fhir::bundle::{intake, BundlePlan};

fuzz_target!(|data: &[u8]| {
    match intake(data) {
        Ok(BundlePlan::Transaction(entries)) => {
            for entry in &entries {
                assert!(entry.id().is_some(), "a planned transaction entry without an id");
                assert!(
                    !entry.refers_to_unknown_entry(),
                    "a planned transaction entry still refers to a urn"
                );
            }
        }
        Ok(BundlePlan::Batch(_)) => {}
        Err(error) => assert!(!error.diagnostics.is_empty()),
    }
});
