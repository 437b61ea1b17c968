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

/// `GET Patient/$access-log` at node `i` with `token` and optional headers.
async fn access_log(
    mesh: &TestMesh,
    i: usize,
    token: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = mesh
        .http
        .get(format!(
            "{}/Patient/$access-log?identifier={BSN_PARAM}",
            mesh.node(i).base_url()
        ))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// (observing node, action code, actor) of each AuditEvent in a Bundle.
fn seen(bundle: &Value) -> Vec<(String, String, String)> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "AuditEvent")
        .map(|r| {
            (
                r["source"]["observer"]["display"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                subtype(r).to_owned(),
                r["agent"][0]["who"]["identifier"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn outcome_text(bundle: &Value) -> String {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .map(|e| e["resource"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_sees_every_access_to_their_data_across_the_mesh() {
    let mut mesh = TestMesh::start(
        "whonet",
        &[("umcg", "noord"), ("mst", "oost"), ("rp-app", "west")],
    )
    .await
    .unwrap();
    mesh.post_bundle(1, &patient_bundle(BSN, "mst", 2))
        .await
        .unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    // umcg resolves the dossier: it pulls from mst.
    mesh.dossier(0, BSN).await.unwrap();

    // The patient's app, at a node that never touched the data, asks who accessed it: the
    // holder mst answers (it served umcg), so umcg is asked too (it made the pull).
    let app = mesh
        .add_client(2, "my-app", "patient/*.rs", Some(BSN))
        .unwrap();
    let app_token = mesh.token_for(2, &app, None).await.unwrap();
    let (status, log) = access_log(&mesh, 2, &app_token, &[]).await;
    assert_eq!(status, 200, "{log}");
    let events = seen(&log);
    let has = |node: &str, action: &str, actor: &str| {
        events
            .iter()
            .any(|(n, a, who)| n == node && a == action && who == actor)
    };
    assert!(has("mst", "pull-served", "umcg"), "{events:?} {log}");
    assert!(
        has("umcg", "pull-made", zorgmesh_tests::TEST_CLIENT),
        "{events:?}"
    );
    assert!(
        has("umcg", "dossier", zorgmesh_tests::TEST_CLIENT),
        "{events:?}"
    );
    assert!(
        outcome_text(&log).contains("3 node(s)"),
        "{}",
        outcome_text(&log)
    );
    assert!(!log.to_string().contains(BSN), "no BSN in the log");
    // Another patient's log is not the app's to read.
    let (status, _) = mesh
        .http
        .get(format!(
            "{}/Patient/$access-log?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999990019",
            mesh.node(2).base_url()
        ))
        .bearer_auth(&app_token)
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 403);

    // A privacy officer at mst: needs AuditEvent read and names themself.
    let officer = mesh
        .add_client(1, "privacy", "system/AuditEvent.rs", None)
        .unwrap();
    let officer_token = mesh.token_for(1, &officer, None).await.unwrap();
    let (status, answer) = access_log(&mesh, 1, &officer_token, &[]).await;
    assert_eq!(status, 400, "{answer}");
    let narrow = mesh
        .add_client(1, "narrow", "system/Patient.rs", None)
        .unwrap();
    let narrow_token = mesh.token_for(1, &narrow, None).await.unwrap();
    let officer_header = [(
        "zorgmesh-practitioner",
        "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|900055555",
    )];
    assert_eq!(
        access_log(&mesh, 1, &narrow_token, &officer_header).await.0,
        403
    );
    let (status, log) = access_log(&mesh, 1, &officer_token, &officer_header).await;
    assert_eq!(status, 200, "{log}");
    let events = seen(&log);
    assert!(
        events
            .iter()
            .any(|(n, a, _)| n == "umcg" && a == "pull-made"),
        "{events:?}"
    );
    // The app's look at the log is in the trails of the nodes it asked, too.
    assert!(
        events
            .iter()
            .any(|(n, a, who)| n == "mst" && a == "read" && who == "rp-app"),
        "{events:?}"
    );

    // A node that does not answer is named, and the rest still comes.
    mesh.stop(0).await;
    let (status, log) = access_log(&mesh, 2, &app_token, &[]).await;
    assert_eq!(status, 200, "{log}");
    assert!(seen(&log)
        .iter()
        .any(|(n, a, _)| n == "mst" && a == "pull-served"));
    let said = outcome_text(&log);
    assert!(said.contains("umcg did not answer"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_record_its_answer_is_left_out_of_the_dossier() {
    let mesh = TestMesh::start(
        "unrecorded",
        &[("umcg", "noord"), ("mst", "oost"), ("zgt", "oost")],
    )
    .await
    .unwrap();
    mesh.post_bundle(1, &patient_bundle(BSN, "mst", 2))
        .await
        .unwrap();
    mesh.post_bundle(2, &patient_bundle(BSN, "zgt", 3))
        .await
        .unwrap();
    mesh.wait_for_entries(2).await.unwrap();
    // zgt's trail closes (as when its disk fails): it still sends what it would release
    // and its proof, but not the End that makes its answer count.
    mesh.node(2).audit.close().await;
    let dossier = mesh.dossier(0, BSN).await.unwrap();
    let origins: Vec<String> = dossier["entry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["resource"]["meta"]["tag"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|tag| tag["system"] == zorgmesh_node::dossier::ORIGIN_SYSTEM)
        .map(|tag| tag["code"].as_str().unwrap().to_owned())
        .collect();
    assert!(origins.iter().any(|o| o == "mst"), "{dossier}");
    assert!(
        origins.iter().all(|o| o != "zgt"),
        "no resource from the holder that did not record its answer: {dossier}"
    );
    let outcome = outcome_text(&dossier);
    assert!(
        outcome.contains("zgt") && outcome.contains("did not confirm that it recorded"),
        "{outcome}"
    );
    // umcg's trail records the discarded answer as a failed pull from zgt.
    let pulls = audit_events(
        &mesh,
        0,
        &format!("patient.identifier={BSN_PARAM}&subtype=pull-made"),
    )
    .await;
    let discarded: Vec<&Value> = pulls
        .iter()
        .filter(|e| e.to_string().contains("the answer was discarded"))
        .collect();
    assert_eq!(discarded.len(), 1, "{pulls:?}");
    assert_ne!(discarded[0]["outcome"], "0", "{}", discarded[0]);
    assert!(discarded[0].to_string().contains("zgt"));
    mesh.shutdown().await;
}
