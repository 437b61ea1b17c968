//! Sync cost: two replicas of a large locator index that differ by 1,000 entries, brought
//! back in line (a) with zorgmesh's anti-entropy (heads digest, heads vector, missing
//! ranges) and (b) with the naive baseline that sends every entry id it holds. Prints round
//! trips, bytes each way and CPU time per side, measured on the real encodings and the real
//! index (signature checks included).
//!
//! Run: `cargo bench -p zorgmesh-protocol --bench sync_cost`
//! Larger: `ZM_ENTRIES=10000000 cargo bench -p zorgmesh-protocol --bench sync_cost`

use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use zorgmesh_protocol::fetch::{FetchFrame, FetchRequest};
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::index::IndexLimits;
use zorgmesh_protocol::publisher::{BatchPolicy, PublisherLog};
use zorgmesh_protocol::record::NodeRecord;
use zorgmesh_protocol::sync::{heads_digest, heads_vector, plan_requests, PublisherHead};
use zorgmesh_protocol::{LocatorEntry, LocatorIndex, NodeId, NodeRole, PatientKey, PublisherInfo};

const PUBLISHERS: usize = 1000;
const ENTRIES_PER_BATCH: usize = 100;
const DIFFERENCE: usize = 1000;

fn info(node: NodeId, i: usize) -> PublisherInfo {
    PublisherInfo {
        node,
        name: format!("node-{i}"),
        organisation_ura: format!("{i:08}"),
        organisation_name: format!("Organisation {i}"),
        region: "noord".into(),
        role: NodeRole::Institution,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
    }
}

fn framed(bytes: usize) -> usize {
    bytes + 4
}

struct Side {
    cpu: Duration,
    sent: usize,
}

fn main() {
    let entries: usize = std::env::var("ZM_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let per_publisher = entries / PUBLISHERS;
    let batches_per_publisher = per_publisher / ENTRIES_PER_BATCH;
    println!("building two replicas: {PUBLISHERS} publishers x {batches_per_publisher} batches x {ENTRIES_PER_BATCH} entries = {} entries", PUBLISHERS * per_publisher);

    // Every publisher's log, as gossip messages (batch + record), as nodes store them.
    let build = Instant::now();
    let mut logs: Vec<(PublisherInfo, Vec<Vec<u8>>)> = Vec::with_capacity(PUBLISHERS);
    for p in 0..PUBLISHERS {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(p as u64 + 1).to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let node = NodeId(key.verifying_key().to_bytes());
        let record = NodeRecord {
            handovers: Vec::new(),
            node,
            certificate_der: vec![0x30; 600],
            data_address: format!("node-{p}.zorgmesh:7000"),
            issued_at_ms: 1,
        }
        .sign(&key);
        let mut log = PublisherLog::new(
            node,
            BatchPolicy {
                max_entries: ENTRIES_PER_BATCH,
                window_ms: 1_000_000,
            },
            None,
        );
        let mut messages = Vec::with_capacity(batches_per_publisher);
        for e in 0..per_publisher {
            let mut patient = [0u8; 32];
            patient[..8].copy_from_slice(&((p * per_publisher + e) as u64).to_be_bytes());
            log.stage(
                LocatorEntry {
                    patient: PatientKey(patient),
                    holder: node,
                    categories: zorgmesh_protocol::locator::category::ADMINISTRATIVE
                        | zorgmesh_protocol::locator::category::PROBLEMS
                        | zorgmesh_protocol::locator::category::OBSERVATIONS,
                    commitment: [7; 32],
                    updated_at_ms: 1,
                    retracted: false,
                },
                0,
            );
            while let Some(batch) = log.poll(1, &key) {
                messages.push(
                    GossipMessage::Batch {
                        record: record.clone(),
                        batch,
                    }
                    .to_bytes(),
                );
            }
        }
        logs.push((info(node, p), messages));
    }
    // Replica A has everything; replica B lacks the last batch of DIFFERENCE / ENTRIES_PER_BATCH publishers.
    let lagging = DIFFERENCE / ENTRIES_PER_BATCH;
    let mut a = LocatorIndex::new(IndexLimits::default());
    let mut b = LocatorIndex::new(IndexLimits::default());
    for (p, (info, messages)) in logs.iter().enumerate() {
        a.admit_publisher(info.clone());
        b.admit_publisher(info.clone());
        for (i, bytes) in messages.iter().enumerate() {
            let GossipMessage::Batch { batch, .. } = GossipMessage::from_bytes(bytes).unwrap()
            else {
                unreachable!()
            };
            a.receive_batch(batch.clone(), 2).unwrap();
            if !(p < lagging && i + 1 == messages.len()) {
                b.receive_batch(batch, 2).unwrap();
            }
        }
    }
    println!(
        "replicas built in {:.1} s: A {} entries, B {} entries",
        build.elapsed().as_secs_f64(),
        a.live_entries(),
        b.live_entries()
    );
    let missing = a.live_entries() - b.live_entries();

    // (a) zorgmesh anti-entropy, B pulling from A.
    let mut client = Side {
        cpu: Duration::ZERO,
        sent: 0,
    };
    let mut server = Side {
        cpu: Duration::ZERO,
        sent: 0,
    };
    let mut round_trips = 0;
    // 1. digest
    client.sent += framed(FetchRequest::HeadsDigest.to_bytes().len());
    let t = Instant::now();
    let digest = heads_digest(&a.publisher_heads());
    server.cpu += t.elapsed();
    server.sent += framed(FetchFrame::HeadsDigest { digest }.to_bytes().len())
        + framed(FetchFrame::End { count: 0 }.to_bytes().len());
    round_trips += 1;
    let t = Instant::now();
    let b_heads = b.publisher_heads();
    let differs = heads_digest(&b_heads) != digest;
    client.cpu += t.elapsed();
    assert!(differs);
    // 2. heads vector
    client.sent += framed(FetchRequest::Heads.to_bytes().len());
    let t = Instant::now();
    let heads: Vec<PublisherHead> = heads_vector(&a.publisher_heads());
    let heads_frame = FetchFrame::Heads { heads }.to_bytes();
    server.cpu += t.elapsed();
    server.sent +=
        framed(heads_frame.len()) + framed(FetchFrame::End { count: 0 }.to_bytes().len());
    round_trips += 1;
    let t = Instant::now();
    let FetchFrame::Heads { heads } = FetchFrame::from_bytes(&heads_frame).unwrap() else {
        unreachable!()
    };
    let requests = plan_requests(&b_heads, &heads);
    client.cpu += t.elapsed();
    // 3. ranges
    let by_node: BTreeMap<NodeId, &Vec<Vec<u8>>> = logs.iter().map(|(i, m)| (i.node, m)).collect();
    let mut applied_entries = 0;
    for request in &requests {
        client.sent += framed(FetchRequest::Batches(*request).to_bytes().len());
        let t = Instant::now();
        let messages =
            &by_node[&request.publisher][(request.from - 1) as usize..][..request.limit as usize];
        let frames: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| FetchFrame::Message { bytes: m.clone() }.to_bytes())
            .collect();
        server.cpu += t.elapsed();
        server.sent += frames.iter().map(|f| framed(f.len())).sum::<usize>()
            + framed(
                FetchFrame::End {
                    count: frames.len() as u32,
                }
                .to_bytes()
                .len(),
            );
        round_trips += 1;
        let t = Instant::now();
        for frame in frames {
            let FetchFrame::Message { bytes } = FetchFrame::from_bytes(&frame).unwrap() else {
                unreachable!()
            };
            let GossipMessage::Batch { record, batch } = GossipMessage::from_bytes(&bytes).unwrap()
            else {
                unreachable!()
            };
            assert!(record.verify("bench").is_ok());
            applied_entries += batch.body.entries.len();
            b.receive_batch(batch, 3).unwrap();
        }
        client.cpu += t.elapsed();
    }
    assert_eq!(applied_entries, missing);
    assert_eq!(
        heads_digest(&b.publisher_heads()),
        digest,
        "replicas agree after sync"
    );

    // (b) naive: B sends every (patient, holder) id it holds; A answers with the missing
    // entries. Entries are pre-extracted (both sides hold them in memory), so only the naive
    // protocol's own work is timed.
    let mut a_entries: Vec<LocatorEntry> = Vec::with_capacity(a.live_entries());
    let mut b_entries: Vec<([u8; 32], [u8; 32])> = Vec::with_capacity(a.live_entries());
    for (p, (_, messages)) in logs.iter().enumerate() {
        for (i, bytes) in messages.iter().enumerate() {
            let GossipMessage::Batch { batch, .. } = GossipMessage::from_bytes(bytes).unwrap()
            else {
                unreachable!()
            };
            let lacking = p < lagging && i + 1 == messages.len();
            for entry in batch.body.entries {
                if !lacking {
                    b_entries.push((entry.patient.0, entry.holder.0));
                }
                a_entries.push(entry);
            }
        }
    }
    let t = Instant::now();
    let mut ids: Vec<u8> = Vec::with_capacity(b_entries.len() * 64);
    for (patient, holder) in &b_entries {
        ids.extend_from_slice(patient);
        ids.extend_from_slice(holder);
    }
    let naive_client_cpu = t.elapsed();
    let t = Instant::now();
    let have: HashSet<&[u8]> = ids.chunks(64).collect();
    let mut answer = 0usize;
    let mut missing_found = 0;
    let mut id = [0u8; 64];
    for entry in &a_entries {
        id[..32].copy_from_slice(&entry.patient.0);
        id[32..].copy_from_slice(&entry.holder.0);
        if !have.contains(&id[..]) {
            missing_found += 1;
            answer += zorgmesh_protocol::codec::encode(entry).len();
        }
    }
    let naive_server_cpu = t.elapsed();
    assert_eq!(missing_found, missing);

    println!();
    println!("replicas of {} entries, differing by {missing} entries ({} publishers, {} batches missing)", a.live_entries(), PUBLISHERS, requests.len());
    println!(
        "| approach | round trips | bytes B->A | bytes A->B | CPU client (B) | CPU server (A) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| zorgmesh anti-entropy | {round_trips} | {} | {} | {:.1} ms | {:.1} ms |",
        client.sent,
        server.sent,
        client.cpu.as_secs_f64() * 1e3,
        server.cpu.as_secs_f64() * 1e3
    );
    println!(
        "| naive: send every entry id | 1 | {} | {} (unsigned) | {:.1} ms | {:.1} ms |",
        ids.len() + 8,
        answer,
        naive_client_cpu.as_secs_f64() * 1e3,
        naive_server_cpu.as_secs_f64() * 1e3
    );
    println!(
        "naive/anti-entropy bytes B->A: {:.0}x",
        (ids.len() + 8) as f64 / client.sent as f64
    );
    println!(
        "(in-sync case for anti-entropy: 1 round trip, {} bytes each way)",
        framed(FetchRequest::HeadsDigest.to_bytes().len())
            .max(framed(FetchFrame::HeadsDigest { digest }.to_bytes().len()))
    );
}
