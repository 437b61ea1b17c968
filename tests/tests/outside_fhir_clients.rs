//! Outside FHIR clients drive a node as a clinician's app would (`tests/outside/fhir_apps.py`,
//! with fhirpy and fhirclient installed from PyPI by `scripts/setup-outside-clients.sh`):
//! get_or_create, search with filters, sort, count, include and a chain, conditional
//! update, patch, strict handling, and the SMART Python models' search and read. Each step's
//! outcome is checked exactly.
//!
//! Without the outside clients the test says so and passes, unless
//! `ZORGMESH_REQUIRE_OUTSIDE_CLIENTS=1` (as in CI).

use serde_json::{json, Value};
use zorgmesh_tests::{outside_python, TestMesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_and_fhirclient_search_create_update_and_patch_unmodified() {
    let Some(python) = outside_python() else {
        return;
    };
    let mesh = TestMesh::start("appnet", &[("apps", "noord")])
        .await
        .unwrap();
    let app = mesh
        .add_client(0, "clinical-app", "system/*.cruds", None)
        .unwrap();
    let token = mesh.token_for(0, &app, None).await.unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("outside/fhir_apps.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(mesh.node(0).base_url())
        .arg(&token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    let wanted = json!({
        "get_or_create": [true, false, true],
        "heart_rates_newest_first": [95, 72, 61],
        "count": 3,
        "filtered": [72, 95],
        "first_page": ["2021-01-10", "2021-03-10"],
        "include": ["include:Patient", "match:Observation"],
        "by_bsn_chain": 1,
        "conditional_update": [true, false, "Jansen-de Vries"],
        "patched": [true, "3"],
        "many_matches": "412",
        "strict": "refused",
        "fhirclient_search": [37.2],
        "fhirclient_read": ["Jansen-de Vries", "1950-03-04"],
    });
    for (step, expected) in wanted.as_object().unwrap() {
        assert_eq!(&seen[step], expected, "{step}: {seen}");
    }
    mesh.shutdown().await;
}
