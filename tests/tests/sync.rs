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
    // Sync brings what it missed; gossipsub may also offer (IHAVE) the messages of its
    // last 1.5 s to a peer that just joined, so a quick restart can get some that way.
    mesh.wait_for_entries(BSNS.len()).await.unwrap();
    let restarted = mesh.node(3);
    let by_sync = restarted
        .sync_stats
        .batches_applied
        .load(std::sync::atomic::Ordering::Relaxed);
    let by_gossip = restarted
        .gossip_status
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(by_sync + by_gossip as u64 >= 1, "{by_sync} {by_gossip}");
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
        .unwrap()
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

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_restored_or_lost_store_never_forks_its_log() {
    const NODE: usize = 1;
    let mut mesh = TestMesh::start("wipenet", &NODES[..3]).await.unwrap();
    let log = mesh.node(NODE).mesh.own();
    let write = |k: usize| patient_bundle(BSNS[k], "noord-b", 1);
    for k in 0..2 {
        mesh.post_bundle(NODE, &write(k)).await.unwrap();
        mesh.wait_for_entries(k + 1).await.unwrap();
    }
    // A backup of the stopped node's store; then the node goes on signing.
    mesh.stop(NODE).await;
    let data = mesh.node_dir(NODE).join("data");
    let backup = mesh.node_dir(NODE).join("backup");
    copy_dir(&data, &backup);
    mesh.start_node(NODE).await.unwrap();
    for k in 2..4 {
        mesh.post_bundle(NODE, &write(k)).await.unwrap();
        mesh.wait_for_entries(k + 1).await.unwrap();
    }
    let signed = mesh.node(0).mesh.heads()[&log];

    // The older backup comes back. The node takes the batches it lost back from its peers,
    // signs on after them, and republishes what its store holds of the patients they name.
    mesh.stop(NODE).await;
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    mesh.start_node(NODE).await.unwrap();
    mesh.post_bundle(NODE, &write(4)).await.unwrap();
    // Patients 0, 1 (in the backup) and 4 (new) are live; 2 and 3 are gone from its store.
    mesh.wait_for_entries(3).await.unwrap();
    let after_restore = mesh.node(0).mesh.heads()[&log];
    assert!(after_restore > signed, "{after_restore} <= {signed}");

    // The store is lost altogether: the same, from nothing.
    mesh.stop(NODE).await;
    std::fs::remove_dir_all(&data).unwrap();
    mesh.start_node(NODE).await.unwrap();
    mesh.post_bundle(NODE, &write(2)).await.unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    let after_wipe = mesh.node(0).mesh.heads()[&log];
    assert!(
        after_wipe > after_restore,
        "{after_wipe} <= {after_restore}"
    );

    // Nobody ever saw a fork, and every node agrees on the log's head.
    for node in mesh.running() {
        assert_eq!(node.mesh.forks_detected(), 0, "{} saw a fork", node.name());
        assert_eq!(node.mesh.heads()[&log], after_wipe, "{}", node.name());
    }
    mesh.shutdown().await;
}
