//! Search latency on a store of `N` generated Observations (`common/observations.rs`: 1,000
//! per patient, 40 codes, ten years): the patient-scoped clinical query
//! `Observation?patient=X&code=http://loinc.org|Y&date=geZ` answered from the search index
//! (`Q` queries: p50, p90, p99, with the first page of resources read as a search does),
//! against a full scan of the same data that extracts and matches every Observation (`S`
//! queries, the same results required); then the index's size per resource.
//!
//! `cargo bench -p zorgmesh-node --bench search_latency -- [N] [Q] [S]`
//! (default 100000 1000 5); the engine is `ZORGMESH_BENCH_ENGINE` (`sled`, the default,
//! `redb` or `fjall`).

#[path = "common/observations.rs"]
mod observations;

use std::time::{Duration, Instant};
use zorgmesh_node::fhir::search::{matching_ids, query, scan_matching_ids};
use zorgmesh_node::storage::{EngineKind, Storage, StorageError};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = match std::env::var("ZORGMESH_BENCH_ENGINE").as_deref() {
        Ok("redb") => EngineKind::Redb,
        Ok("fjall") => EngineKind::Fjall,
        Ok("sled") | Err(_) => EngineKind::Sled,
        Ok(other) => return Err(format!("unknown engine {other}").into()),
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let total: usize = args.first().map_or(Ok(100_000), |a| a.parse())?;
    let queries: usize = args.get(1).map_or(Ok(1000), |a| a.parse())?;
    let scans: usize = args.get(2).map_or(Ok(5), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let storage = runtime.block_on(async {
        let storage = Storage::open_with(dir.path(), engine)?;
        let mut n = 0;
        while n < total {
            let end = (n + 500).min(total);
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
        Ok::<_, StorageError>(storage)
    })?;
    let patients = observations::patients(total);
    let query_of = |k: usize| {
        let params = vec![
            (
                "patient".to_owned(),
                format!("patient-{}", (k * 7919) % patients),
            ),
            (
                "code".to_owned(),
                format!(
                    "http://loinc.org|{}",
                    observations::loinc((k * 31) % observations::CODES)
                ),
            ),
            ("date".to_owned(), format!("ge{}-01-01", 2015 + k % 10)),
        ];
        query::parse("Observation", &params, true, "http://bench/fhir").expect("a valid query")
    };
    let page = |ids: &std::collections::BTreeSet<String>| -> Result<usize, StorageError> {
        let mut read = 0;
        for id in ids.iter().take(50) {
            if storage.current("Observation", id)?.is_some() {
                read += 1;
            }
        }
        Ok(read)
    };
    let mut times = Vec::with_capacity(queries);
    let mut matched = 0usize;
    for k in 0..queries + 50 {
        let q = query_of(k);
        let started = Instant::now();
        let ids = matching_ids(&storage, "Observation", &q).map_err(|e| format!("{e:?}"))?;
        page(&ids)?;
        if k >= 50 {
            times.push(started.elapsed());
            matched += ids.len();
        }
    }
    times.sort();
    println!(
        "index: {queries} patient-scoped queries on {total} Observations ({patients} patients): p50 {:.3} p90 {:.3} p99 {:.3} ms, {:.1} matches per query",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        matched as f64 / queries as f64
    );
    let mut scan_times = Vec::with_capacity(scans);
    for k in 0..scans {
        let q = query_of(k);
        let started = Instant::now();
        let scanned =
            scan_matching_ids(&storage, "Observation", &q).map_err(|e| format!("{e:?}"))?;
        page(&scanned)?;
        scan_times.push(started.elapsed());
        let indexed = matching_ids(&storage, "Observation", &q).map_err(|e| format!("{e:?}"))?;
        if scanned != indexed {
            return Err(format!("query {k}: the index and the scan disagree").into());
        }
    }
    scan_times.sort();
    if !scan_times.is_empty() {
        let p50 = percentile(&scan_times, 0.5);
        println!(
            "full scan: {scans} of the same queries: p50 {p50:.1} ms (index p50 is {:.0}x faster)",
            p50 / percentile(&times, 0.5)
        );
    }
    let (records, bytes) = storage.search_index_size()?;
    println!(
        "index: {:.1} records and {:.0} bytes (keys and payloads) per resource",
        records as f64 / total as f64,
        bytes as f64 / total as f64
    );
    Ok(())
}
