//! Durable appends to the access trail, and `audit verify` of a large trail.
//!
//! `cargo bench -p zorgmesh-node --bench audit_append` (optionally `-- ENTRIES`, default
//! 200000). Each append returns only once its entry is on disk (`fdatasync`). The baseline
//! is the same trail with one appender at a time (every entry its own sync); the group
//! commit's gain is the ratio. Then a trail of 1,000,000 entries is written and verified as
//! `zorgmesh audit verify --data` does.

use std::sync::Arc;
use std::time::Instant;
use zorgmesh_node::audit::{AuditAction, AuditOutcome, AuditTrail};
use zorgmesh_protocol::audit::AuditRecord;
use zorgmesh_protocol::claims::{Practitioner, PurposeOfUse};
use zorgmesh_protocol::PatientKey;

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        at_ms: 1_767_225_600_000 + n,
        action: AuditAction::PullServed,
        outcome: AuditOutcome::Success,
        actor: "umcg-groningen".into(),
        organisation: "00001234".into(),
        person: Some(Practitioner {
            id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|900012345".into(),
            role: "01.015".into(),
            name: "J. Jansen".into(),
        }),
        purpose: Some(PurposeOfUse::Treatment),
        patient: Some(PatientKey([(n % 251) as u8; 32])),
        what: "6 resources: Condition 1, Observation 2, Organization 2, Patient 1".into(),
        detail: "served to umcg-groningen".into(),
    }
}

/// Appends `total` records with `appenders` concurrent appenders; entries per second.
async fn run(dir: &std::path::Path, total: u64, appenders: u64) -> f64 {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let signer: zorgmesh_node::audit::CheckpointSigner =
        Arc::new(|| ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
    let (trail, task) = AuditTrail::open(dir, signer, shutdown).unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for a in 0..appenders {
        let trail = trail.clone();
        tasks.spawn(async move {
            let mut n = a;
            while n < total {
                trail.append(record(n)).await.unwrap();
                n += appenders;
            }
        });
    }
    tasks.join_all().await;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stop.send(true).unwrap();
    task.await.unwrap();
    rate
}

fn main() {
    let total: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The target directory's disk, like a node's data directory.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"));
    std::fs::create_dir_all(&base).unwrap();
    runtime.block_on(async {
        let single_total = (total / 20).max(1000);
        let dir = tempfile::tempdir_in(&base).unwrap();
        let single = run(dir.path(), single_total, 1).await;
        println!("baseline: 1 appender, {single_total} durable appends: {single:>10.0} entries/s");
        for appenders in [64, 256, 1024] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let rate = run(dir.path(), total, appenders).await;
            println!(
                "{appenders:>4} appenders, {total} durable appends: {rate:>10.0} entries/s ({:.1}x the baseline)",
                rate / single
            );
        }
        let dir = tempfile::tempdir_in(&base).unwrap();
        let million = 1_000_000;
        let rate = run(dir.path(), million, 1024).await;
        println!("1024 appenders, {million} durable appends: {rate:>10.0} entries/s");
        let bytes = std::fs::metadata(zorgmesh_node::audit::trail_file::trail_paths(dir.path()).0)
            .unwrap()
            .len();
        let started = Instant::now();
        let report = zorgmesh_node::audit::verify::verify_dir(dir.path(), None).unwrap();
        let took = started.elapsed();
        assert!(report.is_intact(), "{report}");
        println!(
            "audit verify of {} entries ({} MB, {} checkpoints): {:.2} s",
            report.trail.entries,
            bytes / 1_000_000,
            report.trail.checkpoints,
            took.as_secs_f64()
        );
    });
}
