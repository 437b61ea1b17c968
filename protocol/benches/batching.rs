//! Why locators travel in signed batches: the cost of publishing and indexing 1024 locator
//! entries as one signed batch, against the baseline of one signed message per entry; and
//! ed25519 batch verification against verifying signatures one by one.
//!
//! Run: `cargo bench -p zorgmesh-protocol --bench batching`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use zorgmesh_protocol::index::IndexLimits;
use zorgmesh_protocol::publisher::{BatchPolicy, PublisherLog};
use zorgmesh_protocol::{
    LocatorEntry, LocatorIndex, NodeId, NodeRole, PatientKey, PublisherInfo, SignedBatch,
};

const ENTRIES: usize = 1024;

fn entry(key: &SigningKey, i: usize) -> LocatorEntry {
    let mut patient = [0u8; 32];
    patient[..8].copy_from_slice(&(i as u64).to_be_bytes());
    LocatorEntry {
        patient: PatientKey(patient),
        holder: NodeId(key.verifying_key().to_bytes()),
        categories: zorgmesh_protocol::locator::category::ADMINISTRATIVE
            | zorgmesh_protocol::locator::category::PROBLEMS
            | zorgmesh_protocol::locator::category::OBSERVATIONS,
        commitment: [7; 32],
        updated_at_ms: 1_767_225_600_000,
        retracted: false,
    }
}

fn signed_batches(key: &SigningKey, per_batch: usize) -> Vec<SignedBatch> {
    // A window far in the future: only the size limit cuts batches.
    let policy = BatchPolicy {
        max_entries: per_batch,
        window_ms: 1_000_000,
    };
    let mut log = PublisherLog::new(NodeId(key.verifying_key().to_bytes()), policy, None);
    let mut out = Vec::new();
    for i in 0..ENTRIES {
        log.stage(entry(key, i), 0);
        while let Some(batch) = log.poll(1, key) {
            out.push(batch);
        }
    }
    while let Some(batch) = log.flush(1, key) {
        out.push(batch);
    }
    out
}

fn info(key: &SigningKey) -> PublisherInfo {
    PublisherInfo {
        node: NodeId(key.verifying_key().to_bytes()),
        name: "bench".into(),
        organisation_ura: "00000001".into(),
        organisation_name: "Bench".into(),
        region: "noord".into(),
        role: NodeRole::Institution,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
    }
}

fn publish_and_index(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[3; 32]);
    let mut group = c.benchmark_group("1024 locator entries");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    for per_batch in [1usize, 64, 1024] {
        group.bench_with_input(
            BenchmarkId::new("sign", format!("{per_batch} per batch")),
            &per_batch,
            |b, &n| b.iter(|| signed_batches(&key, n)),
        );
        let batches = signed_batches(&key, per_batch);
        group.bench_with_input(
            BenchmarkId::new("decode+verify+index", format!("{per_batch} per batch")),
            &batches,
            |b, batches| {
                let encoded: Vec<Vec<u8>> = batches.iter().map(SignedBatch::to_bytes).collect();
                b.iter(|| {
                    let mut index = LocatorIndex::new(IndexLimits::default());
                    index.admit_publisher(info(&key));
                    for bytes in &encoded {
                        let batch = SignedBatch::from_bytes(bytes).unwrap();
                        index.receive_batch(batch, 2).unwrap();
                    }
                    assert_eq!(index.live_entries(), ENTRIES);
                })
            },
        );
    }
    group.finish();
}

fn verification(c: &mut Criterion) {
    let keys: Vec<SigningKey> = (0..64u8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    let batches: Vec<SignedBatch> = keys
        .iter()
        .map(|k| signed_batches(k, 16).remove(0))
        .collect();
    let refs: Vec<&SignedBatch> = batches.iter().collect();
    let mut group = c.benchmark_group("verify 64 batches");
    group.throughput(Throughput::Elements(64));
    group.bench_function("one by one", |b| {
        b.iter(|| refs.iter().all(|x| x.verify().is_ok()))
    });
    group.bench_function("ed25519 batch verification", |b| {
        b.iter(|| SignedBatch::verify_many(&refs).iter().all(Result::is_ok))
    });
    group.finish();
}

criterion_group!(benches, publish_and_index, verification);
criterion_main!(benches);
