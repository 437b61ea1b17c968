//! Figures for issue 6 that need a running mesh (release build recommended):
//!
//! - **initial load**: one holder ingests `--patients` new patients (transaction bundles of
//!   2,500) with 2-of-3 evaluators on other nodes; measured until every key is derived and the
//!   whole index holds every entry. Keys are derived off the write path in batches of 1,024.
//! - **cold resolve**: node 0 resolves `--resolves` BSNs nobody holds (each needs a fresh
//!   patient key from 2 of 3 evaluators, then an index lookup), side by side with the same
//!   number of local searches by BSN (the same HTTP path, no patient key): the difference of
//!   the means is what the threshold OPRF adds to a cold resolve.
//! - **revocation**: on a `--nodes` mesh, the CA revokes one node and hands the list to one
//!   other; measured until every other index has dropped the revoked node's entries and no
//!   node is connected to it any more.
//!
//! Run: `cargo run --release -p zorgmesh-tests --example trust_timings -- --nodes 10 --patients 100000`

use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use zorgmesh_tests::{patient_bundle, wait_until, TestMesh};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn bsn(n: u32) -> String {
    (n..)
        .find_map(zorgmesh_protocol::Bsn::from_first_eight)
        .unwrap()
        .as_str()
        .to_owned()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let nodes = arg("--nodes", 10).max(4);
    let patients = arg("--patients", 100_000) as u32;
    let names: Vec<(String, &str)> = (0..nodes)
        .map(|i| {
            (
                format!("node-{i}"),
                if i % 2 == 0 { "noord" } else { "zuid" },
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = names.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let mut topology = zorgmesh_tests::topology("timings", &refs);
    // Evaluators on nodes 1..=3; the holder (node 0) is not one of them.
    for (i, node) in topology.nodes.iter_mut().enumerate() {
        node.evaluator = (1..=3).contains(&i);
    }
    topology.evaluator_threshold = Some(2);
    let mut mesh = TestMesh::start_topology(topology, nodes).await?;
    mesh.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    println!("{nodes}-node mesh up; evaluators node-1..node-3 (2 of 3)");

    // Cold resolve, side by side with a local search of the same BSN.
    let resolves = arg("--resolves", 200) as u32;
    let base = mesh.node(0).base_url();
    let (mut dossier_total, mut search_total) = (Duration::ZERO, Duration::ZERO);
    for k in 0..resolves {
        let bsn = bsn(90_000_000 + k * 13);
        let identifier = format!("http://fhir.nl/fhir/NamingSystem/bsn|{bsn}");
        let started = Instant::now();
        let response = mesh
            .http
            .get(format!("{base}/Patient?identifier={identifier}"))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "search failed");
        response.bytes().await?;
        search_total += started.elapsed();
        let started = Instant::now();
        let response = mesh
            .http
            .get(format!("{base}/Patient/$dossier?identifier={identifier}"))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "resolve failed");
        response.bytes().await?;
        dossier_total += started.elapsed();
    }
    let mean_ms = |total: Duration| total.as_secs_f64() * 1000.0 / f64::from(resolves.max(1));
    println!(
        "cold resolve of an unheld BSN: {:.2} ms mean; local search of the same BSN: {:.2} ms mean; the threshold OPRF adds {:.2} ms ({resolves} each)",
        mean_ms(dossier_total),
        mean_ms(search_total),
        mean_ms(dossier_total) - mean_ms(search_total)
    );

    // Initial load.
    const PER_BUNDLE: u32 = 2_500;
    let started = Instant::now();
    let mut posted = 0;
    while posted < patients {
        let count = PER_BUNDLE.min(patients - posted);
        let entries: Vec<Value> = (posted..posted + count)
            .map(|n| {
                json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{n:012}"),
                       "resource": {"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn(10_000_000 + n * 20)}]},
                       "request": {"method": "POST", "url": "Patient"}})
            })
            .collect();
        mesh.post_bundle(
            0,
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await?;
        posted += count;
    }
    let ingested = started.elapsed();
    let loaded = wait_until(Duration::from_secs(900), || {
        mesh.running()
            .all(|n| n.mesh.live_entries() == patients as usize)
    })
    .await;
    anyhow::ensure!(loaded, "the index did not reach {patients} entries");
    let total = started.elapsed();
    println!(
        "initial load: {patients} patients ingested in {:.1} s; every key derived and every index complete after {:.1} s ({:.0} keys/s)",
        ingested.as_secs_f64(),
        total.as_secs_f64(),
        f64::from(patients) / total.as_secs_f64()
    );

    // Key rotation of the holder of every patient: no entry is republished.
    let log = mesh.node(0).mesh.own();
    let head_before = mesh.node(1).mesh.heads()[&log];
    zorgmesh_node::rotation::issue_next(&mesh.ca_dir(), &mesh.node_dir(0).join("node.crt"), 30)?;
    let started = Instant::now();
    let response = mesh
        .http
        .post(format!("http://{}/admin/rotate", mesh.node(0).http_addr))
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "rotation refused");
    let rotated_after = started.elapsed();
    let new_key = mesh.node(0).mesh.key_in_force(&log);
    mesh.post_bundle(0, &patient_bundle(&bsn(95_000_000), "after-rotation", 1))
        .await?;
    let learnt = wait_until(Duration::from_secs(60), || {
        mesh.running().all(|n| {
            n.mesh.key_in_force(&log) == new_key && n.mesh.live_entries() == patients as usize + 1
        })
    })
    .await;
    anyhow::ensure!(learnt, "the hand-over did not reach every node");
    let spread_after = started.elapsed();
    let head_after = mesh.node(1).mesh.heads()[&log];
    println!(
        "key rotation of the holder of {patients} patients: switched in {:.0} ms; every node verified its next batch under the new key after {:.0} ms; the log went from {head_before} to {head_after} batches (nothing republished)",
        rotated_after.as_secs_f64() * 1000.0,
        spread_after.as_secs_f64() * 1000.0
    );
    let patients = patients + 1;

    // Revocation of the last node, which holds one patient.
    let revoked = nodes - 1;
    mesh.post_bundle(revoked, &patient_bundle("999911120", "revoked", 1))
        .await?;
    let expected = patients as usize + 1;
    anyhow::ensure!(
        wait_until(Duration::from_secs(60), || mesh
            .running()
            .all(|n| n.mesh.live_entries() == expected))
        .await,
        "the revoked node's entry did not spread"
    );
    let (_, pem) =
        zorgmesh_tests::revoke_node(&mesh.ca_dir(), &mesh.node_dir(revoked), "timing run")?;
    let revoked_id = mesh.node_id(revoked);
    let started = Instant::now();
    mesh.post_revocations(0, pem).await?;
    let others: Vec<usize> = (0..nodes).filter(|i| *i != revoked).collect();
    let gone = wait_until(Duration::from_secs(60), || {
        others.iter().all(|i| {
            let node = mesh.node(*i);
            !node.mesh.knows_publisher(&revoked_id) && node.mesh.live_entries() == patients as usize
        })
    })
    .await;
    let entries_gone = started.elapsed();
    let cut = wait_until(Duration::from_secs(60), || {
        mesh.node(revoked)
            .gossip_status
            .connected_peers
            .load(Relaxed)
            == 0
    })
    .await;
    let gossip_cut = started.elapsed();
    anyhow::ensure!(
        gone && cut,
        "the revocation did not take effect within 60 s"
    );
    println!(
        "revocation on {nodes} nodes: entries gone from every other index after {:.0} ms; gossip cut after {:.0} ms",
        entries_gone.as_secs_f64() * 1000.0,
        gossip_cut.as_secs_f64() * 1000.0
    );
    mesh.stop(revoked).await;
    mesh.shutdown().await;
    Ok(())
}
