//! Ingest throughput of the store: `N` generated Observations written in transactions of
//! `BATCH` (each one atomic, durable write, as a transaction Bundle is), then the bytes on
//! disk per resource. Uses only `Storage::open`, `write` and `put`, so that
//! `scripts/bench-search.sh` runs the same file against the build before the search index.
//!
//! `cargo bench -p zorgmesh-node --bench ingest -- [N] [BATCH]` (default 100000 100); the
//! engine is `ZORGMESH_BENCH_ENGINE` (`sled`, the default, `redb` or `fjall`).

#[path = "common/observations.rs"]
#[allow(dead_code)] // shared with search_latency, which uses all of it
mod observations;

use std::time::Instant;
use zorgmesh_node::storage::{EngineKind, Storage, StorageError};

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += dir_bytes(&path);
        } else if let Ok(meta) = entry.metadata() {
            total += meta.len();
        }
    }
    total
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let total: usize = args.first().map_or(Ok(100_000), |a| a.parse())?;
    let batch: usize = args.get(1).map_or(Ok(100), |a| a.parse())?;
    // By name, through the engine's serde form: the baseline build that
    // `scripts/bench-search.sh` runs this file in knows fewer engines.
    let engine: EngineKind = match std::env::var("ZORGMESH_BENCH_ENGINE") {
        Err(_) => EngineKind::default(),
        Ok(name) => serde_json::from_value(serde_json::Value::String(name.clone()))
            .map_err(|_| format!("unknown engine {name}"))?,
    };
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(async {
        let storage = Storage::open_with(dir.path(), engine)?;
        let mut n = 0;
        while n < total {
            let end = (n + batch).min(total);
            storage
                .write(1_700_000_000_000, |tx| {
                    for i in n..end {
                        let (id, resource) = observations::observation(i, total);
                        tx.put("Observation", &id, resource)?;
                    }
                    Ok::<_, StorageError>(())
                })
                .await?;
            n = end;
        }
        storage.flush().await?;
        Ok::<_, StorageError>(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = dir_bytes(dir.path());
    println!(
        "ingest {total} Observations in transactions of {batch} ({engine}): {:.0} resources/s ({elapsed:.1} s), {:.0} bytes on disk per resource",
        total as f64 / elapsed,
        bytes as f64 / total as f64
    );
    Ok(())
}
