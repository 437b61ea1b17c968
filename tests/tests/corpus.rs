//! The FHIR corpus in `../shared/testdata` (real, licensed data written outside this
//! project): all 49 Synthea patients load as transactions and `$everything` returns as many
//! resources as each bundle holds; the 271 nl-core examples load by batch PUT and read back
//! unchanged apart from `meta`.
//!
//! Without the corpus these tests say so and pass, unless `ZORGMESH_REQUIRE_CORPUS=1`
//! (as in CI), when they fail.

use serde_json::Value;
use std::time::Instant;
use zorgmesh_tests::{corpus_dir, json_files, TestMesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_synthea_bundles_load_as_transactions_and_everything_returns_every_resource() {
    let Some(corpus) = corpus_dir() else { return };
    let bundles = json_files(corpus.join("fhir-r4/synthea"));
    assert_eq!(
        bundles.len(),
        49,
        "the corpus README promises 49 Synthea bundles"
    );
    let mesh = TestMesh::start("corpus", &[("corpus-node", "noord")])
        .await
        .unwrap();
    let started = Instant::now();
    let mut total = 0;
    let mut loaded = Vec::new();
    for (name, bundle) in &bundles {
        let response = mesh
            .post_bundle(0, bundle)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let entries = bundle["entry"].as_array().unwrap();
        total += entries.len();
        let responses = response["entry"].as_array().unwrap();
        assert_eq!(responses.len(), entries.len(), "{name}");
        let patient_id = responses
            .iter()
            .filter_map(|e| e["response"]["location"].as_str())
            .find(|l| l.starts_with("Patient/"))
            .and_then(|l| l.split('/').nth(1))
            .unwrap_or_else(|| panic!("{name}: no Patient created"))
            .to_owned();
        loaded.push((name.clone(), entries.len(), patient_id));
    }
    let elapsed = started.elapsed();
    println!(
        "loaded {total} resources in {} transactions in {:.2} s: {:.0} resources/s",
        bundles.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for (name, count, patient_id) in loaded {
        let (status, everything) = mesh
            .get(0, &format!("Patient/{patient_id}/$everything"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            everything["total"].as_u64(),
            Some(count as u64),
            "{name}: $everything total differs from the bundle"
        );
        // No urn:uuid reference survived the transaction.
        assert!(
            !everything.to_string().contains("urn:uuid:"),
            "{name}: unresolved urn:uuid reference"
        );
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nl_core_examples_load_by_batch_put_and_read_back_unchanged() {
    let Some(corpus) = corpus_dir() else { return };
    let examples = json_files(corpus.join("fhir-r4/nl-core/json"));
    assert_eq!(
        examples.len(),
        271,
        "the corpus README promises 271 nl-core examples"
    );
    let mesh = TestMesh::start("corpus", &[("corpus-node", "noord")])
        .await
        .unwrap();
    let entries: Vec<Value> = examples
        .iter()
        .map(|(_, r)| {
            let url = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            serde_json::json!({"fullUrl": url, "resource": r, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    let batch = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let response = mesh.post_bundle(0, &batch).await.unwrap();
    for (entry, (name, _)) in response["entry"].as_array().unwrap().iter().zip(&examples) {
        assert_eq!(
            entry["response"]["status"], "201 Created",
            "{name}: {entry}"
        );
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("meta");
        v
    };
    for (name, original) in &examples {
        let path = format!(
            "{}/{}",
            original["resourceType"].as_str().unwrap(),
            original["id"].as_str().unwrap()
        );
        let (status, stored) = mesh.get(0, &path).await.unwrap();
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            strip(&stored),
            strip(original),
            "{name} changed on the way through"
        );
        assert_eq!(stored["meta"]["versionId"], "1", "{name}");
        if let Some(profile) = original["meta"].get("profile") {
            assert_eq!(
                &stored["meta"]["profile"], profile,
                "{name}: meta.profile lost"
            );
        }
    }
    // The linked Dutch dossier: the main example patient gathers what references it.
    let (status, everything) = mesh
        .get(0, "Patient/nl-core-Patient-01/$everything")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        everything["total"].as_u64().unwrap() > 100,
        "{}",
        everything["total"]
    );
    mesh.shutdown().await;
}
