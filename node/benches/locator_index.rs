//! The locator index on disk (`index_store::DiskEntries`) at scale: `N` entries (five
//! holders per patient, `P` publishers) arrive as signed 1,024-entry batches through
//! `LocatorIndex::receive_batch`; then the index is closed and opened again (restart to
//! serving: the publishers' heads and counts are read, no log is replayed) and holders of
//! random patients are looked up. Reports apply rate, time per batch, disk bytes per
//! entry, the process's peak resident memory against the budget, restart time and lookup
//! p50/p99. Beside it, the same workload in the in-memory store.
//!
//! `cargo bench -p zorgmesh-node --bench locator_index -- [N] [P] [BUDGET_MIB]`
//! (default 1000000 1000 256). Set `TMPDIR` to put the index on the disk to measure.

#[path = "../../protocol/benches/common/synthetic_index.rs"]
mod synthetic_index;

use ed25519_dalek::SigningKey;
use std::time::{Duration, Instant};
use synthetic_index::{batches_of, info_of, key_of, patient_key, HOLDERS_PER_PATIENT, NOW_MS};
use zorgmesh_node::index_store::{DiskEntries, MemoryBudget};
use zorgmesh_protocol::index::{EntryStore, IndexLimits};
use zorgmesh_protocol::LocatorIndex;

fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

/// Feeds every publisher's log to `index`; returns (entries, batches, time applying,
/// slowest batch).
fn fill<S: EntryStore>(
    index: &mut LocatorIndex<S>,
    keys: &[SigningKey],
    patients: usize,
) -> (usize, usize, Duration, Duration) {
    let (mut applied, mut batches, mut applying, mut slowest) =
        (0, 0, Duration::ZERO, Duration::ZERO);
    for (p, key) in keys.iter().enumerate() {
        for batch in batches_of(p, key, keys.len(), patients) {
            applied += batch.body.entries.len();
            let started = Instant::now();
            index.receive_batch(batch, NOW_MS).expect("applied");
            let took = started.elapsed();
            applying += took;
            slowest = slowest.max(took);
            batches += 1;
        }
    }
    (applied, batches, applying, slowest)
}

fn lookups<S: EntryStore>(index: &LocatorIndex<S>, patients: usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(10_000);
    let mut found = 0;
    let mut x = 0x1234_5678u64;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let patient = patient_key((x % patients as u64) as usize);
        let started = Instant::now();
        found += index.holders(&patient).expect("lookup").len();
        times.push(started.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99), found)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let total: usize = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let publishers: usize = args.get(1).map_or(Ok(1000), |a| a.parse())?;
    let budget_mib: u64 = args.get(2).map_or(Ok(256), |a| a.parse())?;
    if !publishers.is_multiple_of(HOLDERS_PER_PATIENT) {
        return Err("P must be a multiple of 5".into());
    }
    let patients = total / HOLDERS_PER_PATIENT;
    let limits = IndexLimits {
        max_publishers: publishers + 1,
        ..IndexLimits::default()
    };
    let keys: Vec<SigningKey> = (0..publishers).map(key_of).collect();
    let dir = tempfile::tempdir()?;
    let budget = MemoryBudget(budget_mib << 20);
    let rss_start = resident_bytes();

    let (applied, batches, applying, slowest) = {
        let mut index = LocatorIndex::with_store(limits, DiskEntries::open(dir.path(), budget)?);
        for key in &keys {
            assert!(index.admit_publisher(info_of(key)));
        }
        let filled = fill(&mut index, &keys, patients);
        index.store().persist()?;
        filled
    };
    let peak_filling = peak_resident_bytes();
    let started = Instant::now();
    let mut index = LocatorIndex::with_store(limits, DiskEntries::open(dir.path(), budget)?);
    for key in &keys {
        assert!(index.admit_publisher(info_of(key)));
    }
    let restart = started.elapsed();
    assert_eq!(index.live_entries(), applied, "the counts come back");
    let (p50, p99, found) = lookups(&index, patients);
    let (disk, tables) = index.store().disk_bytes();
    println!(
        "on disk: {applied} entries ({patients} patients, {publishers} publishers, {batches} signed batches), budget {budget_mib} MiB:"
    );
    println!(
        "  apply: {:.0} entries/s, {:.2} ms per batch on average ({:.2} µs per entry), {:.1} ms the slowest",
        applied as f64 / applying.as_secs_f64(),
        applying.as_secs_f64() * 1000.0 / batches as f64,
        applying.as_secs_f64() * 1e6 / applied as f64,
        slowest.as_secs_f64() * 1000.0
    );
    println!(
        "  disk: {:.1} bytes per entry in the entries' tables, {:.1} with the journals ({} MiB); peak resident {} MiB (at start {} MiB)",
        tables as f64 / applied as f64,
        disk as f64 / applied as f64,
        disk >> 20,
        peak_filling >> 20,
        rss_start >> 20
    );
    println!(
        "  restart to serving: {:.1} ms; lookup p50 {p50:.1} µs, p99 {p99:.1} µs ({found} holders found in 10,000 lookups)",
        restart.as_secs_f64() * 1000.0
    );
    drop(index);

    if std::env::var_os("ZORGMESH_BENCH_SKIP_MEMORY").is_none() {
        let mut index = LocatorIndex::new(limits);
        for key in &keys {
            assert!(index.admit_publisher(info_of(key)));
        }
        let (applied, _, applying, _) = fill(&mut index, &keys, patients);
        let (p50, p99, _) = lookups(&index, patients);
        println!(
            "in memory: apply {:.0} entries/s; {:.0} bytes per entry held by the store; lookup p50 {p50:.1} µs, p99 {p99:.1} µs",
            applied as f64 / applying.as_secs_f64(),
            index.store().bytes_per_entry()
        );
    }
    Ok(())
}
