//! Consent at the holder, over a real mesh: the patient's `Consent` resources at the holder
//! decide, per data category, what leaves it for which organisation and purpose; the
//! resolver learns only "withheld by consent"; both trails record each decision.
//!
//! Nodes: `umcg` and `mst` are hospitals (URA 00001000, 00001002), `huisarts` a general
//! practice (00001001) that holds the patients' data.

use serde_json::{json, Value};
use zorgmesh_node::consent::fhir_consent::{
    DATA_CATEGORY_SYSTEM, ORGANISATION_CATEGORY_SYSTEM, URA_SYSTEM,
};
use zorgmesh_node::consent::{BreakTheGlassSetting, ConsentConfig, DefaultSetting};
use zorgmesh_tests::{created_patient_id, patient_bundle, TestMesh};

const UMCG: usize = 0;
const HUISARTS: usize = 1;
const MST: usize = 2;
const UMCG_URA: &str = "00001000";
const UZI: &str = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|900012345";

fn actor(role: &str, system: &str, value: &str) -> Value {
    json!({"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": role}]},
           "reference": {"identifier": {"system": system, "value": value}}})
}

/// An active privacy Consent of the patient `patient_reference` with `provision`.
fn privacy_consent(patient_reference: &str, provision: Value) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient_reference},
        "provision": provision,
    })
}

/// Records a Consent for the patient at the holder; its id.
async fn record_consent(mesh: &TestMesh, patient_id: &str, provision: Value) -> String {
    let consent = privacy_consent(&format!("Patient/{patient_id}"), provision);
    let response = mesh
        .http
        .post(format!("{}/Consent", mesh.node(HUISARTS).base_url()))
        .bearer_auth(mesh.token(HUISARTS).await.unwrap())
        .header("content-type", "application/fhir+json")
        .body(consent.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Loads a patient at the holder; its local Patient id.
async fn load_patient(mesh: &TestMesh, bsn: &str, entries: usize) -> String {
    let response = mesh
        .post_bundle(HUISARTS, &patient_bundle(bsn, "huisarts", 2))
        .await
        .unwrap();
    mesh.wait_for_entries(entries).await.unwrap();
    created_patient_id(&response)
}

/// What a dossier at node `i` got from the holder: resource types, and whether the holder
/// is said to have withheld data by consent.
struct Got {
    status: u16,
    types: Vec<String>,
    withheld: bool,
    body: Value,
}

async fn dossier(mesh: &TestMesh, i: usize, bsn: &str, emergency: Option<&str>) -> Got {
    let mut request = mesh
        .http
        .get(format!(
            "{}/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}",
            mesh.node(i).base_url()
        ))
        .bearer_auth(mesh.token(i).await.unwrap())
        .header("zorgmesh-practitioner", UZI);
    if let Some(reason) = emergency {
        request = request
            .header("zorgmesh-purpose-of-use", "emergency")
            .header("zorgmesh-emergency-reason", reason);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let mut types: Vec<String> = body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    types.dedup();
    let withheld = body.to_string().contains("withheld by consent");
    Got {
        status,
        types,
        withheld,
        body,
    }
}

/// The newest trail entries of `subtype` at node `i`, as (outcome, description, outcomeDesc).
async fn decisions(mesh: &TestMesh, i: usize, subtype: &str) -> Vec<(String, String)> {
    let (status, bundle) = mesh
        .get(i, &format!("AuditEvent?subtype={subtype}&_count=1000"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let event = &e["resource"];
            (
                event["outcome"].as_str().unwrap().to_owned(),
                event["outcomeDesc"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

const EVERYTHING: [&str; 4] = ["Condition", "Observation", "Organization", "Patient"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_decides_by_the_patients_consent_and_the_network_policy() {
    let mut mesh = TestMesh::start(
        "consentnet",
        &[("umcg", "noord"), ("huisarts", "noord"), ("mst", "oost")],
    )
    .await
    .unwrap();

    // Opt-out, no record: everything flows.
    let objecting = "999911120";
    let objecting_id = load_patient(&mesh, objecting, 1).await;
    let got = dossier(&mesh, UMCG, objecting, None).await;
    assert_eq!(
        (got.status, got.types == EVERYTHING, got.withheld),
        (200, true, false),
        "{}",
        got.body
    );

    // An objection to umcg seeing observations: umcg gets the rest and "withheld by
    // consent"; mst everything.
    let objection = record_consent(
        &mesh,
        &objecting_id,
        json!({"type": "deny", "actor": [actor("IRCP", URA_SYSTEM, UMCG_URA)],
               "code": [{"coding": [{"system": DATA_CATEGORY_SYSTEM, "code": "observations"}]}]}),
    )
    .await;
    let got = dossier(&mesh, UMCG, objecting, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.types,
        ["Condition", "Organization", "Patient"],
        "{}",
        got.body
    );
    assert!(got.withheld, "{}", got.body);
    assert!(
        !got.body.to_string().contains("observations"),
        "never what was withheld"
    );
    let got = dossier(&mesh, MST, objecting, None).await;
    assert_eq!((got.types == EVERYTHING, got.withheld), (true, false));
    // Both trails: the holder names the rule; the resolver knows only that it was withheld.
    let at_holder = decisions(&mesh, HUISARTS, "consent-decision").await;
    assert!(
        at_holder.iter().any(|(outcome, why)| outcome == "4"
            && why.contains(&format!("observations: withheld (Consent/{objection})"))
            && why.contains("administrative: released (default opt-out)")),
        "{at_holder:?}"
    );
    let at_umcg = decisions(&mesh, UMCG, "consent-decision").await;
    assert!(
        at_umcg
            .iter()
            .any(|(o, why)| o == "4" && why.contains("huisarts withheld")),
        "{at_umcg:?}"
    );

    // A hospital permit with an individual objection (opt-in from here on).
    let permitted = "999990019";
    let permitted_id = load_patient(&mesh, permitted, 2).await;
    let expired = "999990020";
    let expired_id = load_patient(&mesh, expired, 3).await;
    let unrecorded = "999990032";
    load_patient(&mesh, unrecorded, 4).await;
    mesh.consent.insert(
        HUISARTS,
        ConsentConfig {
            default: DefaultSetting::OptIn,
            break_the_glass: BreakTheGlassSetting::Allowed,
        },
    );
    mesh.restart(HUISARTS).await.unwrap();
    record_consent(
        &mesh,
        &permitted_id,
        json!({"type": "permit", "actor": [actor("IRCP", ORGANISATION_CATEGORY_SYSTEM, "hospital")],
               "provision": [{"type": "deny", "actor": [actor("IRCP", URA_SYSTEM, UMCG_URA)]}]}),
    )
    .await;
    let got = dossier(&mesh, MST, permitted, None).await;
    assert_eq!(
        (got.types == EVERYTHING, got.withheld),
        (true, false),
        "{}",
        got.body
    );
    let got = dossier(&mesh, UMCG, permitted, None).await;
    assert_eq!(
        (got.status, got.types.len(), got.withheld),
        (200, 0, true),
        "{}",
        got.body
    );

    // An expired permit is no permit; opt-in without a record: nothing flows.
    record_consent(
        &mesh,
        &expired_id,
        json!({"type": "permit", "period": {"start": "2020-01-01", "end": "2021-12-31"}}),
    )
    .await;
    let got = dossier(&mesh, MST, expired, None).await;
    assert_eq!((got.types.len(), got.withheld), (0, true), "{}", got.body);
    let got = dossier(&mesh, MST, unrecorded, None).await;
    assert_eq!((got.types.len(), got.withheld), (0, true), "{}", got.body);

    // Break-the-glass, allowed by the policy: over the opt-in default, not over an
    // objection; flagged in both trails.
    let got = dossier(
        &mesh,
        MST,
        unrecorded,
        Some("unconscious at the emergency room"),
    )
    .await;
    assert_eq!(
        (got.types == EVERYTHING, got.withheld),
        (true, false),
        "{}",
        got.body
    );
    let got = dossier(
        &mesh,
        UMCG,
        permitted,
        Some("unconscious at the emergency room"),
    )
    .await;
    assert_eq!(
        (got.types.len(), got.withheld),
        (0, true),
        "an objection stands: {}",
        got.body
    );
    let glass_at_holder = decisions(&mesh, HUISARTS, "break-the-glass").await;
    assert!(
        glass_at_holder.iter().any(|(o, why)| o == "0"
            && why.contains("unconscious at the emergency room")
            && why.contains("break-the-glass over default opt-in")),
        "{glass_at_holder:?}"
    );
    let glass_at_mst = decisions(&mesh, MST, "break-the-glass").await;
    assert!(
        glass_at_mst
            .iter()
            .any(|(_, why)| why.contains("unconscious")),
        "{glass_at_mst:?}"
    );

    // Refused by the policy: an emergency gets what consent gives, nothing more.
    mesh.consent.insert(
        HUISARTS,
        ConsentConfig {
            default: DefaultSetting::OptIn,
            break_the_glass: BreakTheGlassSetting::Refused,
        },
    );
    mesh.restart(HUISARTS).await.unwrap();
    let got = dossier(
        &mesh,
        MST,
        unrecorded,
        Some("unconscious at the emergency room"),
    )
    .await;
    assert_eq!((got.types.len(), got.withheld), (0, true), "{}", got.body);
}

/// How long a consent recorded at one node may take to be enforced by another holder: the
/// gossip of the recording node's locator entry, then one data-plane read.
const ENFORCED_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_recorded_at_one_node_is_enforced_by_every_holder_and_survives_restarts() {
    let mut mesh = TestMesh::start(
        "spreadnet",
        &[("umcg", "noord"), ("huisarts", "noord"), ("mst", "oost")],
    )
    .await
    .unwrap();
    let bsn = "999911120";
    load_patient(&mesh, bsn, 1).await;
    let got = dossier(&mesh, UMCG, bsn, None).await;
    assert_eq!((got.types == EVERYTHING, got.withheld), (true, false));

    // The patient records an objection to umcg at mst (which holds nothing else of them).
    let recorded = std::time::Instant::now();
    let response = mesh
        .post_bundle(
            MST,
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000a01",
                 "resource": {"resourceType": "Patient",
                    "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}]},
                 "request": {"method": "POST", "url": "Patient"}},
                {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000a02",
                 "resource": privacy_consent(
                    "urn:uuid:00000000-0000-4000-8000-000000000a01",
                    json!({"type": "deny", "actor": [actor("IRCP", URA_SYSTEM, UMCG_URA)]}),
                 ),
                 "request": {"method": "POST", "url": "Consent"}},
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(response["type"], "transaction-response");
    // Enforced at the holder huisarts within the bound.
    let mut enforced = None;
    while recorded.elapsed() < ENFORCED_WITHIN {
        let got = dossier(&mesh, UMCG, bsn, None).await;
        if got.withheld && !got.types.iter().any(|t| t == "Condition") {
            enforced = Some(recorded.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let enforced = enforced
        .expect("the consent recorded at mst was not enforced at huisarts within the bound");
    println!(
        "consent recorded at mst enforced at huisarts after {} ms",
        enforced.as_millis()
    );
    // mst: another hospital, not named by the objection, still gets everything.
    let got = dossier(&mesh, MST, bsn, None).await;
    assert!(got.types.iter().any(|t| t == "Condition"), "{}", got.body);
    // huisarts read the record from mst: mst's trail says so.
    let reads = decisions(&mesh, MST, "read").await;
    assert!(
        reads
            .iter()
            .any(|(o, why)| o == "0" && why.contains("read by huisarts")),
        "{reads:?}"
    );

    // A restart of the holder, and then mst out of reach: the copy holds.
    mesh.restart(HUISARTS).await.unwrap();
    mesh.stop(MST).await;
    let got = dossier(&mesh, UMCG, bsn, None).await;
    assert!(
        got.withheld && !got.types.iter().any(|t| t == "Condition"),
        "{}",
        got.body
    );
}
