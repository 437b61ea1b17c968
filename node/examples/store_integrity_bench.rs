//! The two storage engines side by side (sled, redb) on the same workload: fill rate, disk
//! use, the latency of one-resource durable writes, and how long the store check, a backup
//! and a restore take per GB (for sled also a plain engine scan without checksums, as the
//! check's baseline).
//!
//! ```sh
//! cargo run --release -p zorgmesh-node --example store_integrity_bench -- --gigabytes 1 [--engine sled|redb]
//! ```
//!
//! The store is filled with FHIR-sized JSON resources (~4 KiB, each written as its current
//! and its history record). Caches are warm unless the process may drop them (root), in
//! which case every timed pass starts cold; the output says which.

use std::time::Instant;
use zorgmesh_node::storage::{EngineKind, Storage};

fn drop_caches() -> bool {
    // Only root may; the output says whether it happened.
    sync_disks();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn sync_disks() {
    let _ = std::process::Command::new("sync").status();
}

fn plain_scan(dir: &std::path::Path) -> (u64, f64) {
    let started = Instant::now();
    let db = sled::Config::new().path(dir).open().expect("open");
    let mut bytes = 0u64;
    for name in db.tree_names() {
        let tree = db.open_tree(name).expect("tree");
        for item in tree.iter() {
            let (k, v) = item.expect("read");
            bytes += (k.len() + v.len()) as u64;
        }
    }
    (bytes, started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut gigabytes = 1.0f64;
    let mut engines = vec![EngineKind::Sled, EngineKind::Redb];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--gigabytes" => {
                gigabytes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--gigabytes N")
            }
            "--engine" => {
                engines = match args.next().as_deref() {
                    Some("sled") => vec![EngineKind::Sled],
                    Some("redb") => vec![EngineKind::Redb],
                    _ => panic!("--engine sled|redb"),
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    for engine in engines {
        measure(engine, gigabytes).await;
    }
}

async fn measure(engine: EngineKind, gigabytes: f64) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("data");
    let target = (gigabytes * 1e9) as u64;
    let padding = "x".repeat(4_000);
    let started = Instant::now();
    let mut single_writes = Vec::new();
    {
        let storage = Storage::open_with(&dir, engine).expect("open");
        let mut written = 0u64;
        let mut n = 0u64;
        while written < target {
            storage
                .write(n, |tx| {
                    for _ in 0..500 {
                        let id = format!("obs-{n}");
                        let resource = serde_json::json!({
                            "resourceType": "Observation", "id": id, "status": "final",
                            "subject": {"reference": format!("Patient/p{}", n % 10_000)},
                            "note": [{"text": padding}],
                        });
                        tx.put("Observation", &id, resource)?;
                        n += 1;
                    }
                    Ok::<(), zorgmesh_node::storage::StorageError>(())
                })
                .await
                .expect("write");
            written += 500 * 2 * 4_150;
        }
        // One resource per durable write, as a FHIR create is: the API's write latency.
        for k in 0..500 {
            let began = Instant::now();
            storage
                .write(k, |tx| {
                    let id = format!("single-{k}");
                    let resource = serde_json::json!({"resourceType": "Patient", "id": id});
                    tx.put("Patient", &id, resource).map(|_| ())
                })
                .await
                .expect("write");
            single_writes.push(began.elapsed());
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();
    single_writes.sort();
    let disk: u64 = walk(&dir);

    let cold = drop_caches();
    let (scanned, plain_secs) = if engine == EngineKind::Sled {
        plain_scan(&dir)
    } else {
        (0, f64::NAN)
    };
    if cold {
        drop_caches();
    }
    let started = Instant::now();
    let report = Storage::check(&dir).expect("check");
    let check_secs = started.elapsed().as_secs_f64();
    assert!(!report.is_damaged(), "{report}");
    let gb = report.bytes() as f64 / 1e9;
    let backup = scratch.path().join("store.zmbackup");
    let storage = Storage::open(&dir).expect("open");
    if cold {
        drop_caches();
    }
    let summary = storage.backup_to(&backup, 0).expect("backup");
    drop(storage);
    let restored = scratch.path().join("restored");
    if cold {
        drop_caches();
    }
    let restore = Storage::restore(&backup, &restored, engine).expect("restore");
    assert_eq!(restore.content_digest, summary.content_digest);

    println!("== {engine}");
    println!(
        "caches: {}",
        if cold {
            "dropped before each pass (cold)"
        } else {
            "warm (run as root to drop them)"
        }
    );
    println!(
        "store: {} records, {gb:.2} GB of keys and values, {:.2} GB on disk ({:.2}x), filled in {fill_secs:.1} s ({:.0} MB/s)",
        report.records(),
        disk as f64 / 1e9,
        disk as f64 / 1e9 / gb,
        gb * 1e3 / fill_secs
    );
    println!(
        "one-resource durable writes: median {:?}, p99 {:?}",
        single_writes[single_writes.len() / 2],
        single_writes[single_writes.len() * 99 / 100]
    );
    if engine == EngineKind::Sled {
        println!(
            "baseline, plain engine scan (no checksums): {plain_secs:.2} s = {:.2} s/GB",
            plain_secs / (scanned as f64 / 1e9)
        );
    }
    println!(
        "store check (every checksum, digests, seal): {check_secs:.2} s = {:.2} s/GB",
        check_secs / gb,
    );
    println!(
        "online backup: {:.2} s = {:.2} s/GB with writers held; file {:.2} GB",
        summary.elapsed_ms as f64 / 1e3,
        summary.elapsed_ms as f64 / 1e3 / gb,
        summary.bytes as f64 / 1e9
    );
    println!(
        "restore: {:.2} s = {:.2} s/GB",
        restore.elapsed_ms as f64 / 1e3,
        restore.elapsed_ms as f64 / 1e3 / gb
    );
}

fn walk(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let metadata = entry.metadata().expect("metadata");
        total += if metadata.is_dir() {
            walk(&entry.path())
        } else {
            metadata.len()
        };
    }
    total
}
