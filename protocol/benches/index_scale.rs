//! The locator index at scale: `N` entries (five holders per patient, `P` publishers)
//! arrive as signed 1,024-entry batches through `LocatorIndex::receive_batch`, as gossip
//! brings them; then holder lookups of random patients. Reports the apply rate, the time
//! per batch, the process's resident memory per entry, and lookup p50/p99.
//!
//! Uses only the index's public API of before and after the entry store, so that
//! `scripts/bench-index.sh` runs this same file against the index before it as the baseline.
//!
//! `cargo bench -p zorgmesh-protocol --bench index_scale -- [N] [P]` (default 1000000 1000)

#[path = "common/synthetic_index.rs"]
mod synthetic_index;

use ed25519_dalek::SigningKey;
use std::time::{Duration, Instant};
use synthetic_index::{
    batches_of, info_of, key_of, patient_key, BATCH, HOLDERS_PER_PATIENT, NOW_MS,
};
use zorgmesh_protocol::index::IndexLimits;
use zorgmesh_protocol::LocatorIndex;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let total: usize = args.first().map_or(1_000_000, |a| a.parse().expect("N"));
    let publishers: usize = args.get(1).map_or(1000, |a| a.parse().expect("P"));
    assert!(
        publishers.is_multiple_of(HOLDERS_PER_PATIENT),
        "P must be a multiple of 5"
    );
    let patients = total / HOLDERS_PER_PATIENT;
    let mut index = LocatorIndex::new(IndexLimits {
        max_publishers: publishers + 1,
        ..IndexLimits::default()
    });
    let keys: Vec<SigningKey> = (0..publishers).map(key_of).collect();
    for key in &keys {
        assert!(index.admit_publisher(info_of(key)));
    }
    let rss_before = resident_bytes();
    let mut applying = Duration::ZERO;
    let mut batches = 0usize;
    let mut applied = 0usize;
    let mut slowest = Duration::ZERO;
    for (p, key) in keys.iter().enumerate() {
        for batch in batches_of(p, key, publishers, patients) {
            applied += batch.body.entries.len();
            let started = Instant::now();
            index.receive_batch(batch, NOW_MS).expect("applied");
            let took = started.elapsed();
            applying += took;
            slowest = slowest.max(took);
            batches += 1;
        }
    }
    let rss_after = resident_bytes();
    assert_eq!(index.live_entries(), applied);
    let mut lookups = Vec::with_capacity(10_000);
    let mut x = 0x1234_5678u64;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let patient = patient_key((x % patients as u64) as usize);
        let started = Instant::now();
        let _ = std::hint::black_box(index.holders(&patient));
        lookups.push(started.elapsed());
    }
    lookups.sort();
    println!(
        "index of {applied} entries ({patients} patients, {publishers} publishers, {batches} signed batches of up to {BATCH}):"
    );
    println!(
        "  apply: {:.0} entries/s, {:.2} ms per batch on average, {:.2} ms the slowest (signature check included)",
        applied as f64 / applying.as_secs_f64(),
        applying.as_secs_f64() * 1000.0 / batches as f64,
        slowest.as_secs_f64() * 1000.0
    );
    println!(
        "  memory: {:.0} bytes resident per entry ({} MiB for the entries)",
        rss_after.saturating_sub(rss_before) as f64 / applied as f64,
        rss_after.saturating_sub(rss_before) >> 20
    );
    println!(
        "  lookup of a patient's holders: p50 {:.2} µs, p99 {:.2} µs",
        percentile(&lookups, 0.5),
        percentile(&lookups, 0.99)
    );
}
