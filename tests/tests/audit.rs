//! The access trail (NEN 7513) over a real mesh: a dossier resolved at one node leaves its
//! entries in the resolver's trail (the dossier, each pull made) and in each holder's trail
//! (the pull served), with who (client or node, organisation, practitioner), which patient
//! (its key, never the BSN), why and the outcome; both read back as FHIR `AuditEvent`s; and
//! an altered, a removed and a reordered entry in a stopped node's trail are each named.

use serde_json::Value;
use zorgmesh_node::audit::verify::verify_dir;
use zorgmesh_protocol::audit::{AuditEntry, TrailProblem};
use zorgmesh_tests::{patient_bundle, patient_key_from_shares, TestMesh};

const BSN: &str = "999911120";
const BSN_PARAM: &str = "http://fhir.nl/fhir/NamingSystem/bsn|999911120";
const UZI: &str = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|900012345";

async fn audit_events(mesh: &TestMesh, i: usize, query: &str) -> Vec<Value> {
    let (status, bundle) = mesh.get(i, &format!("AuditEvent?{query}")).await.unwrap();
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn agent_value(event: &Value, system: &str) -> Option<String> {
    event["agent"].as_array()?.iter().find_map(|a| {
        (a["who"]["identifier"]["system"] == system)
            .then(|| a["who"]["identifier"]["value"].as_str().unwrap().to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_dossier_is_in_the_resolvers_and_the_holders_trail() {
    let mut mesh = TestMesh::start("auditnet", &[("umcg", "noord"), ("mst", "oost")])
        .await
        .unwrap();
    mesh.post_bundle(1, &patient_bundle(BSN, "mst", 2))
        .await
        .unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    let patient_key = patient_key_from_shares(&mesh.root, BSN).to_hex();

    // A practitioner at umcg resolves the dossier through umcg's EHR client.
    let response = mesh
        .http
        .get(format!(
            "{}/Patient/$dossier?identifier={BSN_PARAM}",
            mesh.node(0).base_url()
        ))
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("zorgmesh-practitioner", UZI)
        .header("zorgmesh-practitioner-role", "01.015")
        .header("zorgmesh-practitioner-name", "J. Jansen")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let dossier: Value = response.json().await.unwrap();
    assert_eq!(dossier["total"], 6, "{dossier}");
    // Someone without a token knocks.
    let refused = mesh
        .http
        .get(format!("{}/Patient", mesh.node(0).base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // The resolver's trail: the dossier and the pull from mst, for the patient's key, with
    // the practitioner and the purpose.
    let at_umcg = audit_events(&mesh, 0, &format!("patient.identifier={BSN_PARAM}")).await;
    let kinds: Vec<&str> = at_umcg.iter().map(subtype).collect();
    assert!(
        kinds.contains(&"dossier") && kinds.contains(&"pull-made"),
        "{kinds:?}"
    );
    for event in &at_umcg {
        assert_eq!(
            event["entity"][0]["what"]["identifier"]["value"],
            patient_key.as_str()
        );
        assert_eq!(event["outcome"], "0", "{event}");
        assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(
            agent_value(event, "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers").as_deref(),
            Some("900012345")
        );
        assert_eq!(
            agent_value(event, zorgmesh_node::audit::events::CLIENT_SYSTEM).as_deref(),
            Some(zorgmesh_tests::TEST_CLIENT)
        );
        assert_eq!(event["source"]["observer"]["display"], "umcg");
        assert!(
            !event.to_string().contains(BSN),
            "the trail never holds a BSN: {event}"
        );
    }
    let pull = at_umcg.iter().find(|e| subtype(e) == "pull-made").unwrap();
    let described = pull["entity"][1]["description"].as_str().unwrap();
    assert!(described.contains("from mst: 6 resources"), "{described}");

    // The holder's trail: the pull it served, naming umcg (from its certificate), its
    // organisation and the practitioner from the signed claims.
    let at_mst = audit_events(
        &mesh,
        1,
        &format!("entity={patient_key}&subtype=pull-served"),
    )
    .await;
    assert_eq!(at_mst.len(), 1, "{at_mst:?}");
    let served = &at_mst[0];
    assert_eq!(
        agent_value(served, zorgmesh_node::audit::events::NODE_SYSTEM).as_deref(),
        Some("umcg")
    );
    assert!(agent_value(served, zorgmesh_node::audit::events::URA_SYSTEM).is_some());
    assert_eq!(
        agent_value(served, "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers").as_deref(),
        Some("900012345")
    );
    assert_eq!(served["type"]["code"], "110106", "an export");

    // The failed login, at umcg.
    let logins = audit_events(&mesh, 0, "subtype=authentication-failed").await;
    assert!(logins.iter().any(|e| e["outcome"] == "4"), "{logins:?}");
    // Bad search parameters get a clear 400.
    let (status, outcome) = mesh.get(0, "AuditEvent?entity=zz").await.unwrap();
    assert_eq!(status, 400, "{outcome}");

    // Stopped, each trail verifies against its signed checkpoints.
    mesh.stop(0).await;
    mesh.stop(1).await;
    let umcg_dir = mesh.data_dir(0);
    let report = verify_dir(&umcg_dir, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert!(report.trail.entries >= 4, "{report}");
    assert!(verify_dir(&mesh.data_dir(1), None).unwrap().is_intact());

    // Someone with disk access edits umcg's trail: each edit is found and named.
    let (trail_path, _) = zorgmesh_node::audit::trail_file::trail_paths(&umcg_dir);
    let original = std::fs::read(&trail_path).unwrap();
    let entries: Vec<AuditEntry> =
        zorgmesh_node::audit::trail_file::read_entries(&trail_path, u64::MAX)
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let write = |entries: &[AuditEntry]| {
        let mut bytes = Vec::new();
        for entry in entries {
            zorgmesh_node::audit::trail_file::push_frame(&mut bytes, &entry.to_bytes());
        }
        std::fs::write(&trail_path, bytes).unwrap();
    };
    let mut altered = entries.clone();
    altered[1].record.actor = "someone-else".into();
    write(&altered);
    assert_eq!(
        verify_dir(&umcg_dir, None).unwrap().trail.problems,
        vec![TrailProblem::Altered { sequence: 2 }]
    );
    let mut removed = entries.clone();
    removed.remove(1);
    write(&removed);
    assert_eq!(
        verify_dir(&umcg_dir, None).unwrap().trail.problems,
        vec![TrailProblem::Removed {
            before: 3,
            missing: 1
        }]
    );
    let mut reordered = entries.clone();
    reordered.swap(1, 2);
    write(&reordered);
    assert_eq!(
        verify_dir(&umcg_dir, None).unwrap().trail.problems,
        vec![TrailProblem::Reordered { sequence: 2 }]
    );
    std::fs::write(&trail_path, original).unwrap();
    assert!(verify_dir(&umcg_dir, None).unwrap().is_intact());
}
