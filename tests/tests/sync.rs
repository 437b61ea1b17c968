//! Catch-up without gossip: a node that was down, a node that joins late, and a retraction
//! made while a node was offline all reach the index through anti-entropy (gossip does not
//! replay what a node missed). The periodic sync interval is 10 minutes here, so what these
//! tests see is the event-driven sync: at start, on a gap, on a new publisher.

use zorgmesh_tests::{created_patient_id, patient_bundle, summarise, wait_until, TestMesh};

const NODES: &[(&str, &str)] = &[
    ("noord-a", "noord"),
    ("noord-b", "noord"),
    ("zuid-a", "zuid"),
    ("zuid-b", "zuid"),
];
const BSNS: &[&str] = &[
    "999911120",
    "111222333",
    "123456782",
    "100000009",
    "100000010",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_was_down_catches_up() {
    let mut mesh = TestMesh::start("synctest", NODES).await.unwrap();
    mesh.post_bundle(0, &patient_bundle(BSNS[0], "before", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    mesh.stop(3).await;
    for (i, bsn) in BSNS[1..].iter().enumerate() {
        mesh.post_bundle(i % 3, &patient_bundle(bsn, "while-down", 1))
            .await
            .unwrap();
    }
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    mesh.restart(3).await.unwrap();
    // Gossip never replays: only sync can bring these.
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    assert!(
        mesh.node(3)
            .sync_stats
            .batches_applied
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let dossier = mesh.dossier(3, BSNS[4]).await.unwrap();
    assert_eq!(summarise(&dossier).origins.len(), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_joiner_catches_up() {
    let mut mesh = TestMesh::start_first("synctest", NODES, 3).await.unwrap();
    for (i, bsn) in BSNS.iter().enumerate() {
        mesh.post_bundle(i % 3, &patient_bundle(bsn, "early", 2))
            .await
            .unwrap();
    }
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    mesh.start_node(3).await.unwrap();
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    let heads: Vec<_> = mesh.running().map(|n| n.mesh.heads()).collect();
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "indexes differ: {heads:?}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retraction_reaches_a_node_that_was_offline() {
    let mut mesh = TestMesh::start("synctest", NODES).await.unwrap();
    mesh.post_bundle(0, &patient_bundle(BSNS[0], "keeps", 1))
        .await
        .unwrap();
    let response = mesh
        .post_bundle(1, &patient_bundle(BSNS[0], "erases", 2))
        .await
        .unwrap();
    mesh.wait_for_entries(2).await.unwrap();
    mesh.stop(3).await;

    // Erasure at noord-b: every resource of the patient there is deleted.
    let patient = created_patient_id(&response);
    let (_, everything) = mesh
        .get(1, &format!("Patient/{patient}/$everything"))
        .await
        .unwrap();
    for entry in everything["entry"].as_array().unwrap() {
        let r = &entry["resource"];
        if r["resourceType"] == "Organization" {
            continue; // shared reference data, not the patient's
        }
        let path = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        assert_eq!(mesh.delete(1, &path).await.unwrap(), 204);
    }
    mesh.wait_for_entries(1).await.unwrap();

    mesh.restart(3).await.unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    let holders: Vec<String> = mesh
        .node(3)
        .mesh
        .holders(&patient_key(BSNS[0], &mesh))
        .iter()
        .map(|h| h.info.name.clone())
        .collect();
    assert_eq!(holders, ["noord-a"]);
    let summary = summarise(&mesh.dossier(3, BSNS[0]).await.unwrap());
    assert_eq!(
        summary
            .origins
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["noord-a"]
    );
    assert!(summary.unreachable.is_empty());
    assert!(summary.unverified.is_empty(), "{:?}", summary.unverified);
    mesh.shutdown().await;
}

fn patient_key(bsn: &str, mesh: &TestMesh) -> zorgmesh_protocol::PatientKey {
    zorgmesh_tests::patient_key_from_shares(&mesh.root, bsn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compacted_log_is_synced_from_its_snapshot_and_continues_after_a_restart() {
    // Node 0 must publish alone, so it is the one evaluator (t = 1) of this mesh.
    let mut topology = zorgmesh_tests::topology("synctest", NODES);
    topology.nodes[0].evaluator = true;
    let mut mesh = TestMesh::start_topology(topology, 1).await.unwrap();
    mesh.compact_after_batches = 2;
    mesh.restart(0).await.unwrap(); // take the setting
    for (i, bsn) in BSNS.iter().enumerate() {
        mesh.post_bundle(0, &patient_bundle(bsn, "compacting", 1))
            .await
            .unwrap();
        mesh.wait_for_entries(i + 1).await.unwrap(); // one batch per patient
    }
    let own = mesh.node(0).identity.node;
    let head = mesh.node(0).mesh.heads()[&own];
    assert_eq!(head, BSNS.len() as u64);
    assert!(
        mesh.node(0).mesh.own_log_len() <= 2,
        "own log was not compacted: {}",
        mesh.node(0).mesh.own_log_len()
    );

    // The only source for a late joiner is the compacted node: snapshot plus tail.
    mesh.start_node(1).await.unwrap();
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    assert_eq!(mesh.node(1).mesh.heads().get(&own), Some(&head));
    assert_eq!(
        summarise(&mesh.dossier(1, BSNS[2]).await.unwrap())
            .origins
            .len(),
        1
    );

    // After a restart the compacted node continues its log from the snapshot's head.
    mesh.restart(0).await.unwrap();
    mesh.post_bundle(0, &patient_bundle("100000022", "after-restart", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(BSNS.len() + 1).await.unwrap();
    assert_eq!(mesh.node(1).mesh.heads()[&own], head + 1);
    for node in mesh.running() {
        assert_eq!(
            node.gossip_status
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{}",
            node.name()
        );
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_prune_their_copies_of_a_compacted_log_and_serve_its_snapshot() {
    let mut mesh = TestMesh::start_first("synctest", NODES, 0).await.unwrap();
    mesh.compact_after_batches = 2;
    mesh.sync_interval_ms = 200;
    mesh.start_node(0).await.unwrap();
    mesh.start_node(1).await.unwrap();
    for (i, bsn) in BSNS.iter().enumerate() {
        mesh.post_bundle(0, &patient_bundle(bsn, "compacting", 1))
            .await
            .unwrap();
        mesh.wait_for_entries(i + 1).await.unwrap();
    }
    let publisher = mesh.node(0).identity.node;
    // Node 1 got every batch by gossip; its copy shrinks once it fetched the snapshot.
    assert!(
        wait_until(std::time::Duration::from_secs(30), || mesh
            .node(1)
            .mesh
            .remote_log_len(&publisher)
            <= 2)
        .await,
        "copy not pruned: {} batches",
        mesh.node(1).mesh.remote_log_len(&publisher)
    );
    assert_eq!(mesh.node(1).mesh.live_entries(), BSNS.len());

    // With the publisher down, a newcomer gets its entries from node 1's kept snapshot.
    mesh.stop(0).await;
    mesh.start_node(2).await.unwrap();
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    assert_eq!(
        mesh.node(2).mesh.heads().get(&publisher),
        mesh.node(1).mesh.heads().get(&publisher)
    );
    mesh.shutdown().await;
}
