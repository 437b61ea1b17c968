//! Threshold keys across a running mesh: with 3-of-5 evaluators, any 3 give every node the
//! same patient keys (the keys the recombined shares give), resolving works with n − t = 2
//! evaluators down, and with t − 1 up no key can be made and `$dossier` names the missing
//! evaluators.

use std::time::Duration;
use zorgmesh_tests::{patient_bundle, patient_key_from_shares, summarise, wait_until, TestMesh};

const NODES: &[(&str, &str)] = &[
    ("eval-noord-a", "noord"),
    ("eval-zuid-a", "zuid"),
    ("eval-noord-b", "noord"),
    ("eval-zuid-b", "zuid"),
    ("eval-oost", "oost"),
    ("huisarts", "zuid"),
];
const RESOLVER: usize = 5;

async fn wait_for_key(mesh: &TestMesh, bsn: &str) {
    let key = patient_key_from_shares(&mesh.root, bsn);
    let everywhere = wait_until(Duration::from_secs(30), || {
        mesh.running()
            .all(|n| !n.mesh.holders(&key).unwrap().is_empty())
    })
    .await;
    assert!(
        everywhere,
        "not every node indexed the patient under the key the shares give"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_t_of_n_evaluators_give_the_same_keys_and_t_minus_one_give_none() {
    let mut topology = zorgmesh_tests::topology("testnet", NODES);
    for node in topology.nodes.iter_mut().take(5) {
        node.evaluator = true;
    }
    topology.evaluator_threshold = Some(3);
    let mut mesh = TestMesh::start_topology(topology, NODES.len())
        .await
        .unwrap();

    // All evaluators up: a holder that is an evaluator.
    mesh.post_bundle(0, &patient_bundle("999911120", "eval-noord-a", 1))
        .await
        .unwrap();
    wait_for_key(&mesh, "999911120").await;

    // Two evaluators down (n − t = 2): the non-evaluator resolver still publishes and resolves.
    mesh.stop(1).await;
    mesh.stop(2).await;
    mesh.post_bundle(RESOLVER, &patient_bundle("111222333", "huisarts", 2))
        .await
        .unwrap();
    wait_for_key(&mesh, "111222333").await;
    let dossier = mesh.dossier(RESOLVER, "999911120").await.unwrap();
    assert_eq!(
        summarise(&dossier).origins,
        ["eval-noord-a".to_owned()].into()
    );

    // Another choice of three evaluators gives the same keys.
    mesh.start_node(1).await.unwrap();
    mesh.start_node(2).await.unwrap();
    mesh.stop(3).await;
    mesh.stop(4).await;
    mesh.post_bundle(RESOLVER, &patient_bundle("123456782", "huisarts", 1))
        .await
        .unwrap();
    wait_for_key(&mesh, "123456782").await;
    let dossier = mesh.dossier(1, "111222333").await.unwrap();
    assert_eq!(summarise(&dossier).origins, ["huisarts".to_owned()].into());

    // t − 1 evaluators: no key, and the error names the ones missing.
    mesh.stop(2).await;
    let (status, body) = mesh
        .get(
            RESOLVER,
            "Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|100000009",
        )
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    for missing in ["eval-noord-b", "eval-zuid-b", "eval-oost"] {
        assert!(text.contains(missing), "{missing} not named: {text}");
    }
    mesh.shutdown().await;
}
