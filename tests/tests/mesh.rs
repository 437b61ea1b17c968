//! Multi-node meshes on loopback: real sled, libp2p gossipsub, quinn with mutual TLS and
//! axum, four or more nodes in two regions.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use zorgmesh_tests::{created_patient_id, patient_bundle, summarise, wait_until, TestMesh};

const BSN: &str = "999911120";
const OTHER_BSN: &str = "111222333";
const NODES: &[(&str, &str)] = &[
    ("noord-a", "noord"),
    ("noord-b", "noord"),
    ("zuid-a", "zuid"),
    ("zuid-b", "zuid"),
];

/// `(origin node, type, id)` of every resource in a dossier, one row per origin tag.
fn dossier_rows(dossier: &Value) -> BTreeSet<(String, String, String)> {
    let mut rows = BTreeSet::new();
    for entry in dossier["entry"].as_array().unwrap() {
        if entry["search"]["mode"] == "outcome" {
            continue;
        }
        let resource = &entry["resource"];
        assert!(
            resource["meta"]["source"]
                .as_str()
                .unwrap()
                .starts_with("urn:zorgmesh:"),
            "{resource}"
        );
        let origins: Vec<&str> = resource["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["system"] == "urn:zorgmesh:origin-node")
            .map(|t| t["code"].as_str().unwrap())
            .collect();
        assert!(!origins.is_empty(), "resource without origin: {resource}");
        for origin in origins {
            rows.insert((
                origin.to_owned(),
                resource["resourceType"].as_str().unwrap().to_owned(),
                resource["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    rows
}

/// Loads one patient on holders 0, 1 (noord) and 2 (zuid) and another patient on holder 0.
/// Returns the expected `(origin, type, id)` rows from each holder's own `$everything`.
async fn load_split_patient(mesh: &TestMesh) -> BTreeSet<(String, String, String)> {
    let mut expected = BTreeSet::new();
    for (holder, observations) in [(0usize, 2usize), (1, 1), (2, 3)] {
        let response = mesh
            .post_bundle(
                holder,
                &patient_bundle(BSN, mesh.node(holder).name(), observations),
            )
            .await
            .unwrap();
        let patient_id = created_patient_id(&response);
        let (status, everything) = mesh
            .get(holder, &format!("Patient/{patient_id}/$everything"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        for entry in everything["entry"].as_array().unwrap() {
            let r = &entry["resource"];
            expected.insert((
                mesh.node(holder).name().to_owned(),
                r["resourceType"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    mesh.post_bundle(0, &patient_bundle(OTHER_BSN, "other", 1))
        .await
        .unwrap();
    // 3 entries for BSN, 1 for OTHER_BSN, on every node.
    mesh.wait_for_entries(4).await.unwrap();
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dossier_is_exactly_the_union_of_its_holders_and_survives_a_stopped_holder() {
    let mut mesh = TestMesh::start("testnet", NODES).await.unwrap();
    let expected = load_split_patient(&mesh).await;

    // Resolve from the 4th node (zuid-b), which holds nothing for the patient.
    let dossier = mesh.dossier(3, BSN).await.unwrap();
    let rows = dossier_rows(&dossier);
    assert_eq!(
        rows, expected,
        "dossier differs from the union of the holders' records"
    );
    let summary = summarise(&dossier);
    assert!(summary.unreachable.is_empty());
    assert!(summary.unverified.is_empty(), "{:?}", summary.unverified);
    // Per type: 3 Patients, 3 Conditions, 6 Observations, 3 own Organizations + 1 shared, merged.
    let per_type: BTreeMap<&str, usize> = summary
        .per_type
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        per_type,
        BTreeMap::from([
            ("Condition", 3),
            ("Observation", 6),
            ("Organization", 4),
            ("Patient", 3)
        ])
    );
    // The shared Organization appears once, with all three origins.
    let shared: Vec<&Value> = dossier["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["id"] == "shared-gp")
        .collect();
    assert_eq!(shared.len(), 1);
    let shared_origins = shared[0]["resource"]["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["system"] == "urn:zorgmesh:origin-node")
        .count();
    assert_eq!(shared_origins, 3);
    // The other patient's data does not leak into this dossier.
    assert!(!rows.iter().any(|(_, _, id)| id.is_empty()));

    // Stop a holder: the dossier names it as unreachable and still has the others' data.
    mesh.stop(1).await;
    let dossier = mesh.dossier(3, BSN).await.unwrap();
    let summary = summarise(&dossier);
    assert_eq!(summary.unreachable, vec!["noord-b".to_owned()]);
    let origins: BTreeSet<&str> = summary.origins.iter().map(String::as_str).collect();
    assert_eq!(origins, BTreeSet::from(["noord-a", "zuid-a"]));

    // Back up: complete again.
    mesh.restart(1).await.unwrap();
    let dossier = mesh.dossier(3, BSN).await.unwrap();
    assert!(summarise(&dossier).unreachable.is_empty());
    assert!(summarise(&dossier).unverified.is_empty());
    assert_eq!(dossier_rows(&dossier), expected);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_index_and_log_survive_a_restart() {
    let mut mesh = TestMesh::start("testnet", NODES).await.unwrap();
    let expected = load_split_patient(&mesh).await;
    let response = mesh
        .post_bundle(2, &patient_bundle("123456782", "restart", 2))
        .await
        .unwrap();
    let patient_id = created_patient_id(&response);
    mesh.wait_for_entries(5).await.unwrap();
    let (_, before) = mesh
        .get(2, &format!("Patient/{patient_id}/$everything"))
        .await
        .unwrap();
    let head_before = mesh.node(0).mesh.heads()[&mesh.node(2).identity.node];

    mesh.restart(2).await.unwrap();
    // Resources and versions are back.
    let (status, after) = mesh
        .get(2, &format!("Patient/{patient_id}/$everything"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(before["total"], after["total"]);
    let (status, patient) = mesh.get(2, &format!("Patient/{patient_id}")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(patient["meta"]["versionId"], "1");
    // The index is back without any network traffic being needed, and from its own
    // directory: no kept batch had to be applied again.
    assert_eq!(mesh.node(2).mesh.live_entries(), 5);
    let restored = mesh.node(2).mesh.last_restore();
    assert_eq!(restored.remote_batches, 0, "{restored:?}");
    assert_eq!(restored.logs_applied_again, 0, "{restored:?}");
    assert_eq!(dossier_rows(&mesh.dossier(2, BSN).await.unwrap()), expected);
    // The restarted node continues its log: the next batch is accepted everywhere (no fork).
    mesh.post_bundle(2, &patient_bundle("100000009", "after-restart", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(6).await.unwrap();
    // Its log went on from where it was (a re-staged entry that was still marked dirty at
    // the stop may add one batch), and every node holds the same head for it.
    let own = mesh.node(2).identity.node;
    let own_head = mesh.node(2).mesh.heads()[&own];
    assert!(own_head > head_before, "{own_head} after {head_before}");
    let converged = wait_until(Duration::from_secs(30), || {
        mesh.running()
            .all(|n| n.mesh.heads().get(&own) == Some(&own_head))
    })
    .await;
    assert!(
        converged,
        "peers do not hold the restarted node's head {own_head}"
    );
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
async fn a_node_certified_by_another_ca_is_refused_at_the_connection_and_hears_nothing() {
    let mesh = TestMesh::start("testnet", &NODES[..3]).await.unwrap();
    // A rogue node of the same network name, certified by another CA, dials every node.
    let rogue_mesh_dir = tempfile::tempdir().unwrap();
    let rogue_topology = zorgmesh_tests::topology("testnet", &[("rogue", "zuid")]);
    let rogue = zorgmesh_node::provision::generate_material(
        &rogue_topology,
        rogue_mesh_dir.path(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .remove(0);
    let bootstrap = mesh.running().map(|n| n.gossip_addr.to_string()).collect();
    let mut config = zorgmesh_node::provision::node_config(&rogue.spec, bootstrap, rogue.evaluator);
    config.publishing.batch_window_ms = 20;
    config.resolve_paths(&rogue.dir);
    let mut rogue_client =
        zorgmesh_tests::register_client(&rogue.dir, "rogue-ehr", "system/*.cruds", None, None)
            .unwrap()
            .unwrap();
    let rogue_node = zorgmesh_node::node::RunningNode::start(config)
        .await
        .unwrap();
    rogue_client.token_endpoint = format!(
        "http://{}{}",
        rogue_node.http_addr,
        zorgmesh_node::auth::TOKEN_PATH
    );
    let rogue_id = rogue_node.identity.node;
    let refused = || {
        mesh.running()
            .map(|n| {
                n.gossip_status
                    .refused_connections
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<usize>()
    };
    // Every member refuses the rogue's dial in the membership handshake.
    assert!(
        wait_until(Duration::from_secs(30), || refused() >= 3).await,
        "members refused {} connections",
        refused()
    );
    // The rogue writes; members write. Nothing crosses either way.
    let client = reqwest::Client::new();
    let rogue_token = zorgmesh_node::auth::request_token(&client, &rogue_client, None)
        .await
        .unwrap()
        .access_token;
    let response = client
        .post(rogue_node.base_url())
        .bearer_auth(rogue_token)
        .header("content-type", "application/fhir+json")
        .body(patient_bundle(BSN, "rogue", 1).to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    mesh.post_bundle(0, &patient_bundle(OTHER_BSN, "legit", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    assert_eq!(
        rogue_node
            .gossip_status
            .connected_peers
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        rogue_node
            .gossip_status
            .topic_peers
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    for node in mesh.running() {
        assert!(
            !node.mesh.knows_publisher(&rogue_id),
            "{} admitted the rogue",
            node.name()
        );
        assert!(
            !rogue_node.mesh.knows_publisher(&node.identity.node),
            "the rogue learned of {}",
            node.name()
        );
        assert_eq!(node.mesh.live_entries(), 1, "{}", node.name());
    }
    let dossier = mesh.dossier(2, BSN).await.unwrap();
    assert_eq!(summarise(&dossier).total, 0);
    rogue_node.shutdown().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_batch_for_an_older_sequence_is_detected_as_a_fork() {
    use zorgmesh_node::mesh::Verdict;
    use zorgmesh_protocol::batch::{BatchBody, GENESIS_HASH};
    use zorgmesh_protocol::fetch::FetchFrame;
    use zorgmesh_protocol::gossip::GossipMessage;
    use zorgmesh_protocol::locator::{category, LocatorEntry};
    use zorgmesh_protocol::record::NodeRecord;

    let mesh = TestMesh::start("testnet", &NODES[..2]).await.unwrap();
    // Three batches from noord-a, one at a time.
    for (n, bsn) in [BSN, OTHER_BSN, "123456782"].iter().enumerate() {
        mesh.post_bundle(0, &patient_bundle(bsn, "noord-a", 1))
            .await
            .unwrap();
        mesh.wait_for_entries(n + 1).await.unwrap();
    }
    let publisher = mesh.node(0).identity.node;
    let receiver = &mesh.node(1).mesh;
    assert!(receiver.heads()[&publisher] >= 3);

    // The very batch 1 again: a duplicate, ignored.
    let frames = receiver.batch_frames(&publisher, 1, 1).unwrap();
    let [FetchFrame::Message { bytes: original }] = frames.as_slice() else {
        panic!("expected batch 1 as one message, got {frames:?}");
    };
    assert_eq!(
        receiver.handle_gossip(original, Some(publisher.0)),
        Verdict::Ignore
    );

    // A different batch 1 signed by the publisher's own key: a fork, two heads back.
    let key = zorgmesh_certs::read_signing_key(&mesh.node_dir(0).join("node.key")).unwrap();
    let certificate_der =
        zorgmesh_certs::read_certificate(&mesh.node_dir(0).join("node.crt")).unwrap();
    let forged = BatchBody {
        publisher,
        sequence: 1,
        previous_hash: GENESIS_HASH,
        created_at_ms: 1,
        entries: vec![LocatorEntry {
            patient: zorgmesh_protocol::PatientKey([3; 32]),
            holder: publisher,
            categories: category::ADMINISTRATIVE,
            commitment: [5; 32],
            updated_at_ms: 1,
            retracted: false,
        }],
    }
    .sign(&key);
    let record = NodeRecord {
        handovers: Vec::new(),
        node: publisher,
        certificate_der,
        data_address: "127.0.0.1:1".into(),
        issued_at_ms: 1,
    }
    .sign(&key);
    let message = GossipMessage::Batch {
        record,
        batch: forged,
    }
    .to_bytes();
    let verdict = receiver.handle_gossip(&message, Some(publisher.0));
    assert!(
        matches!(&verdict, Verdict::Reject(reason) if reason.contains("forked")),
        "{verdict:?}"
    );
    assert_eq!(receiver.forks_detected(), 1);
    // The index is untouched.
    assert_eq!(receiver.live_entries(), 3);
    mesh.shutdown().await;
}

/// A certified node that claims a patient it does not hold: the resolver fetches from it,
/// gets nothing, names it in the dossier as a false claim and lowers its gossip peer score.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_claims_a_patient_and_serves_nothing_is_named_and_scored_down() {
    use zorgmesh_node::mesh::Verdict;
    use zorgmesh_protocol::batch::{BatchBody, GENESIS_HASH};
    use zorgmesh_protocol::gossip::GossipMessage;
    use zorgmesh_protocol::locator::{category, LocatorEntry};
    use zorgmesh_protocol::record::NodeRecord;

    let mesh = TestMesh::start("claimnet", &NODES[..2]).await.unwrap();
    mesh.post_bundle(0, &patient_bundle(BSN, "noord-a", 2))
        .await
        .unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    let honest = summarise(&mesh.dossier(0, BSN).await.unwrap()).total;
    assert!(honest >= 3, "{honest}");

    // noord-b signs, with its own key and at its own data address, an entry for a patient
    // it holds nothing of; noord-a's gossip validation takes it (it is well signed).
    let liar = mesh.node(1).identity.node;
    let key = zorgmesh_certs::read_signing_key(&mesh.node_dir(1).join("node.key")).unwrap();
    let certificate_der =
        zorgmesh_certs::read_certificate(&mesh.node_dir(1).join("node.crt")).unwrap();
    let patient = zorgmesh_tests::patient_key_from_shares(&mesh.root, BSN);
    let claim = BatchBody {
        publisher: liar,
        sequence: 1,
        previous_hash: GENESIS_HASH,
        created_at_ms: 1,
        entries: vec![LocatorEntry {
            patient,
            holder: liar,
            categories: category::ADMINISTRATIVE | category::OBSERVATIONS,
            commitment: [5; 32],
            updated_at_ms: 1,
            retracted: false,
        }],
    }
    .sign(&key);
    let record = NodeRecord {
        handovers: Vec::new(),
        node: liar,
        certificate_der,
        data_address: mesh.node(1).data_addr.to_string(),
        issued_at_ms: zorgmesh_node::fhir::service::now_ms(),
    }
    .sign(&key);
    let message = GossipMessage::Batch {
        record,
        batch: claim,
    }
    .to_bytes();
    // noord-b's gossip peer score at noord-a before it lies.
    let liar_peer = zorgmesh_node::gossip::peer_id(&liar.0).unwrap().to_string();
    let score = || {
        mesh.node(0)
            .gossip_status
            .peer_scores
            .lock()
            .unwrap()
            .get(&liar_peer)
            .copied()
    };
    assert!(wait_until(Duration::from_secs(10), || score().is_some()).await);
    let before = score().unwrap();
    let resolver = &mesh.node(0).mesh;
    assert_eq!(
        resolver.handle_gossip(&message, Some(liar.0)),
        Verdict::Accept
    );
    assert_eq!(resolver.holders(&patient).unwrap().len(), 2);

    // Every resolution names it, and counts it.
    for round in 1..=3u64 {
        let dossier = mesh.dossier(0, BSN).await.unwrap();
        let summary = summarise(&dossier);
        assert_eq!(summary.total, honest, "{dossier}");
        assert_eq!(summary.unverified, vec!["noord-b".to_owned()], "{dossier}");
        assert!(
            dossier.to_string().contains("served none (a false claim"),
            "{dossier}"
        );
        let standing = resolver
            .holder_standings()
            .into_iter()
            .find(|(id, _)| *id == liar)
            .map(|(_, s)| s)
            .unwrap();
        assert_eq!(standing.false_claims, round);
    }
    // The gossip layer applies it: three false claims take 30 off noord-b's peer score
    // (its other parts move a little meanwhile).
    let scored = wait_until(Duration::from_secs(10), || {
        score().is_some_and(|now| now <= before - 20.0)
    })
    .await;
    assert!(scored, "{before} -> {:?}", score());
    let (_, status) = mesh.get(0, "../admin/status").await.unwrap();
    assert_eq!(status["holders"]["noord-b"]["false_claims"], 3, "{status}");
    mesh.shutdown().await;
}

/// The locator index on disk is derived from the kept logs: a node whose index directory
/// is gone rebuilds it from them at start, and a node whose index is ahead of a log (that
/// log lost, here by dropping it from the store while the node was down) applies that log
/// again from its start and gets the rest from its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_lost_or_ahead_of_its_log_is_rebuilt_from_the_logs() {
    let mut mesh = TestMesh::start("testnet", NODES).await.unwrap();
    let expected = load_split_patient(&mesh).await;
    mesh.wait_for_entries(4).await.unwrap();

    mesh.stop(1).await;
    std::fs::remove_dir_all(mesh.data_dir(1).join(zorgmesh_node::index_store::INDEX_DIR)).unwrap();
    mesh.start_node(1).await.unwrap();
    assert_eq!(
        mesh.node(1).mesh.live_entries(),
        4,
        "rebuilt from the kept logs"
    );
    let restored = mesh.node(1).mesh.last_restore();
    assert!(restored.remote_batches > 0, "{restored:?}");
    assert_eq!(dossier_rows(&mesh.dossier(1, BSN).await.unwrap()), expected);

    mesh.stop(1).await;
    let zuid = mesh.node_id(2);
    {
        let storage = zorgmesh_node::storage::Storage::open(&mesh.data_dir(1)).unwrap();
        storage.forget_publisher(&zuid.0).unwrap();
    }
    mesh.start_node(1).await.unwrap();
    let restored = mesh.node(1).mesh.last_restore();
    assert_eq!(restored.logs_applied_again, 1, "{restored:?}");
    // Anti-entropy brings zuid-a's log back from the peers that keep it.
    mesh.wait_for_entries(4).await.unwrap();
    assert_eq!(dossier_rows(&mesh.dossier(1, BSN).await.unwrap()), expected);
    mesh.shutdown().await;
}
