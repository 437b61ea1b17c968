//! The CPU cost of a threshold-OPRF patient key (2 of 3 evaluators), per key, for one key at
//! a time (a cold `$dossier`) and in batches of 1024 (a holder's initial load), split into
//! the requester's side (blind, verify two proofs, combine, finalize) and one evaluator's
//! side (evaluate and prove); against the baseline of protocol v1, one HMAC-SHA256 per key.
//!
//! Run: `cargo bench -p zorgmesh-protocol --bench oprf`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use zorgmesh_protocol::oprf::{
    deal, evaluate, patient_input, BlindedBatch, EvaluatorEntry, EvaluatorSet, EvaluatorSetBody,
    SUITE_ID,
};
use zorgmesh_protocol::Bsn;

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (commitments, shares) = deal(2, 3, &mut rng).unwrap();
    let set = EvaluatorSet::from_body(&EvaluatorSetBody {
        version: 1,
        network: "bench".into(),
        suite: SUITE_ID.into(),
        threshold: 2,
        commitments,
        evaluators: (1..=3)
            .map(|index| EvaluatorEntry {
                index,
                name: format!("e{index}"),
            })
            .collect(),
        issued_at_ms: 0,
    })
    .unwrap();
    let bsns: Vec<Bsn> = (10_000_000..)
        .filter_map(Bsn::from_first_eight)
        .take(1024)
        .collect();
    let mut group = c.benchmark_group("patient_key");
    for size in [1usize, 1024] {
        let inputs: Vec<Vec<u8>> = bsns[..size].iter().map(patient_input).collect();
        group.throughput(Throughput::Elements(size as u64));
        // The evaluator's answers to one fixed request, for the requester's bench.
        let batch = BlindedBatch::blind(inputs.clone(), &mut rng).unwrap();
        let request = batch.request();
        group.bench_with_input(BenchmarkId::new("evaluator", size), &size, |b, _| {
            b.iter(|| evaluate(&shares[0], &request, &mut rng).unwrap())
        });
        let answers = [
            evaluate(&shares[0], &request, &mut rng).unwrap(),
            evaluate(&shares[1], &request, &mut rng).unwrap(),
        ];
        group.bench_with_input(BenchmarkId::new("requester_blind", size), &size, |b, _| {
            b.iter(|| BlindedBatch::blind(inputs.clone(), &mut rng).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("requester_verify_combine", size),
            &size,
            |b, _| {
                b.iter(|| {
                    let verified: Vec<_> = answers
                        .iter()
                        .map(|a| batch.verify(&set, a).unwrap())
                        .collect();
                    batch.combine(&set, &verified).unwrap()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("baseline_v1_hmac", size), &size, |b, _| {
            b.iter(|| {
                inputs
                    .iter()
                    .map(|input| {
                        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&[42; 32]).unwrap();
                        mac.update(input);
                        mac.finalize().into_bytes()
                    })
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
