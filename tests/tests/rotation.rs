//! Key rotation without downtime: a node hands its log over to a new key while another node
//! resolves a dossier it holds data for, over and over, and while it takes writes. Every
//! resolve stays complete, every write reaches every index, the log continues under the new
//! key, revoking the retired certificate leaves the log alone, and the node restarts on the
//! new key.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use zorgmesh_protocol::{Bsn, NodeId};
use zorgmesh_tests::{patient_bundle, summarise, wait_until, TestMesh};

const NODES: &[(&str, &str)] = &[
    ("noord-a", "noord"),
    ("noord-b", "noord"),
    ("zuid-a", "zuid"),
    ("zuid-b", "zuid"),
    ("zuid-c", "zuid"),
];
/// Joins only after the rotation and the revocation of the retired certificate.
const LATE: usize = 4;
const ROTATING: usize = 1;
const READER: usize = 2;
const SHARED_BSN: &str = "999911120";
/// Upper bounds of the background loops (they stop earlier when told).
const MAX_RESOLVES: usize = 2000;
const MAX_WRITES: u32 = 400;

fn written_bsn(k: u32) -> String {
    Bsn::from_first_eight(20_000_000 + k * 7)
        .or_else(|| Bsn::from_first_eight(20_000_000 + k * 7 + 1))
        .expect("a valid BSN near every number")
        .as_str()
        .to_owned()
}

async fn post_rotate(mesh: &TestMesh, i: usize) -> (u16, Value) {
    let response = mesh
        .http
        .post(format!("http://{}/admin/rotate", mesh.node(i).http_addr))
        .bearer_auth(mesh.token(i).await.unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_rotates_its_key_while_dossiers_resolve_and_no_write_is_lost() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mesh = Arc::new(TestMesh::start_first("testnet", NODES, LATE).await.unwrap());
    let log = mesh.node_id(ROTATING);
    mesh.post_bundle(ROTATING, &patient_bundle(SHARED_BSN, "noord-b", 2))
        .await
        .unwrap();
    mesh.post_bundle(0, &patient_bundle(SHARED_BSN, "noord-a", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(2).await.unwrap();
    let baseline = summarise(&mesh.dossier(READER, SHARED_BSN).await.unwrap());
    assert!(
        baseline.unreachable.is_empty() && baseline.total > 0,
        "{baseline:?}"
    );

    // Without prepared files the node refuses to rotate and changes nothing.
    let (status, answer) = post_rotate(&mesh, ROTATING).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("certs rotate"),
        "{answer}"
    );

    // Continuous resolving from another node, and continuous writes to the rotating node.
    let stop = Arc::new(AtomicBool::new(false));
    let resolves = Arc::new(AtomicUsize::new(0));
    let writes = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (mesh, stop, resolves) = (mesh.clone(), stop.clone(), resolves.clone());
        let expected = baseline.total;
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..MAX_RESOLVES {
                if stop.load(Relaxed) {
                    break;
                }
                match mesh.dossier(READER, SHARED_BSN).await {
                    Ok(bundle) => {
                        let summary = summarise(&bundle);
                        if !summary.unreachable.is_empty()
                            || !summary.unverified.is_empty()
                            || summary.total != expected
                        {
                            failures.push(format!("resolve {i}: {summary:?}"));
                        }
                    }
                    Err(e) => failures.push(format!("resolve {i}: {e}")),
                }
                resolves.fetch_add(1, Relaxed);
            }
            failures
        })
    };
    let writer = {
        let (mesh, stop, writes) = (mesh.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            for k in 0..MAX_WRITES {
                if stop.load(Relaxed) {
                    break;
                }
                let bsn = written_bsn(k);
                mesh.post_bundle(ROTATING, &patient_bundle(&bsn, "noord-b", 1))
                    .await
                    .unwrap_or_else(|e| panic!("write {k} failed: {e}"));
                written.push(bsn);
                writes.fetch_add(1, Relaxed);
            }
            written
        })
    };
    let busy = |r: usize, w: usize| {
        let (resolves, writes) = (resolves.clone(), writes.clone());
        move || resolves.load(Relaxed) >= r && writes.load(Relaxed) >= w
    };
    assert!(wait_until(Duration::from_secs(60), busy(5, 3)).await);
    // The old key has signed a few batches by now.
    let signed = wait_until(Duration::from_secs(30), || {
        mesh.node(ROTATING)
            .mesh
            .heads()
            .get(&log)
            .copied()
            .unwrap_or(0)
            >= 3
    })
    .await;
    assert!(signed);

    // The CA issues the next key and certificate; the node switches to them.
    let certificate = mesh.node_dir(ROTATING).join("node.crt");
    let files = zorgmesh_node::rotation::issue_next(&mesh.ca_dir(), &certificate, 30).unwrap();
    let (status, answer) = post_rotate(&mesh, ROTATING).await;
    assert_eq!(status, 200, "{answer}");
    let report = &answer["report"];
    let new_key = NodeId::from_hex(report["new_key"].as_str().unwrap()).unwrap();
    let from_sequence = report["from_sequence"].as_u64().unwrap();
    assert_eq!(report["log"], log.to_hex());
    assert_eq!(report["old_key"], log.to_hex());
    assert!(from_sequence > 1, "{report}");
    eprintln!("rotation: {report}");

    // The files moved: the configured paths hold the new key, the old certificate is kept
    // for revocation, nothing is left prepared.
    let anchor = zorgmesh_certs::CaFiles::in_dir(&mesh.ca_dir())
        .load_anchor()
        .unwrap();
    let now_cert = zorgmesh_certs::read_certificate(&certificate).unwrap();
    assert_eq!(
        anchor
            .verify_node_certificate(&now_cert, None)
            .unwrap()
            .node,
        new_key
    );
    assert!(files.retired_certificate().exists());
    assert!(!files.next_key().exists() && !files.next_certificate().exists());

    // Resolving and writing go on; every node learns the hand-over.
    let (r, w) = (resolves.load(Relaxed), writes.load(Relaxed));
    assert!(wait_until(Duration::from_secs(60), busy(r + 20, w + 5)).await);
    let learnt = wait_until(Duration::from_secs(30), || {
        mesh.running()
            .all(|node| node.mesh.key_in_force(&log) == Some(new_key))
    })
    .await;
    assert!(learnt, "not every node learnt the hand-over");
    stop.store(true, Relaxed);
    let failures = reader.await.unwrap();
    let written = writer.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} resolves were incomplete during the rotation: {failures:?}",
        failures.len(),
        resolves.load(Relaxed)
    );
    eprintln!(
        "{} complete resolves and {} writes across the rotation",
        resolves.load(Relaxed),
        written.len()
    );

    // No lost write: every patient written reaches every index, and the log continued
    // under the new key past the hand-over point, the same head everywhere.
    let entries = 2 + written.len();
    mesh.wait_for_entries(entries).await.unwrap();
    let heads: Vec<u64> = mesh.running().map(|node| node.mesh.heads()[&log]).collect();
    assert!(
        heads.iter().all(|h| *h == heads[0] && *h >= from_sequence),
        "{heads:?}"
    );
    let last = summarise(&mesh.dossier(READER, written.last().unwrap()).await.unwrap());
    assert!(last.total > 0 && last.unreachable.is_empty(), "{last:?}");

    // The CA revokes the retired certificate: the old key is cut off, the log stays.
    let der = zorgmesh_certs::read_certificate(&files.retired_certificate()).unwrap();
    let ca = zorgmesh_certs::CaFiles::in_dir(&mesh.ca_dir());
    ca.revoke(&der, "superseded", 1).unwrap();
    let pem = std::fs::read(&ca.revocations).unwrap();
    mesh.post_revocations(0, pem).await.unwrap();
    let applied = wait_until(Duration::from_secs(10), || {
        mesh.running().all(|node| node.mesh.is_revoked(&log))
    })
    .await;
    assert!(applied);
    for node in mesh.running() {
        assert!(node.mesh.knows_publisher(&log));
        assert_eq!(node.mesh.live_entries(), entries);
    }
    let after = summarise(&mesh.dossier(READER, SHARED_BSN).await.unwrap());
    assert_eq!(after.total, baseline.total, "{after:?}");
    assert!(after.unreachable.is_empty());

    // A restart comes up on the new key and the log goes on.
    let mut mesh = Arc::try_unwrap(mesh).ok().expect("background tasks ended");
    mesh.restart(ROTATING).await.unwrap();
    assert_eq!(mesh.node(ROTATING).mesh.key_in_force(&log), Some(new_key));
    mesh.post_bundle(ROTATING, &patient_bundle("123456782", "noord-b", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(entries + 1).await.unwrap();

    // A node that joins now catches the rotated log up from peers (batches the retired key
    // signed come wrapped in the log's newest record), and a peer that restarts rebuilds
    // it from what it kept, though the retired key is revoked.
    mesh.start_node(LATE).await.unwrap();
    mesh.wait_for_entries(entries + 1).await.unwrap();
    assert_eq!(mesh.node(LATE).mesh.key_in_force(&log), Some(new_key));
    mesh.restart(0).await.unwrap();
    mesh.wait_for_entries(entries + 1).await.unwrap();

    // A crash between keeping the hand-over and moving the files: the configured paths
    // still hold the retired certificate (and some key other than the new one), the new
    // files wait as next files. The start finishes the move.
    mesh.stop(ROTATING).await;
    let key_path = mesh.node_dir(ROTATING).join("node.key");
    std::fs::rename(&key_path, files.next_key()).unwrap();
    std::fs::rename(&certificate, files.next_certificate()).unwrap();
    std::fs::rename(files.retired_certificate(), &certificate).unwrap();
    zorgmesh_certs::write_signing_key(&key_path, &ed25519_dalek::SigningKey::from_bytes(&[3; 32]))
        .unwrap();
    mesh.start_node(ROTATING).await.unwrap();
    assert_eq!(mesh.node(ROTATING).mesh.key_in_force(&log), Some(new_key));
    let now_cert = zorgmesh_certs::read_certificate(&certificate).unwrap();
    assert_eq!(
        anchor
            .verify_node_certificate(&now_cert, None)
            .unwrap()
            .node,
        new_key
    );
    assert!(!files.next_key().exists());
    mesh.shutdown().await;
}
