//! What validation costs a write: `N` generated Observations (the ingest bench's workload)
//! validated one by one, against the baseline of what every write does anyway (serialising
//! the resource to JSON text and parsing it back), run side by side.
//!
//! `cargo bench -p zorgmesh-node --bench validation -- [N]` (default 20000).

#[path = "common/observations.rs"]
#[allow(dead_code)] // shared with search_latency, which uses all of it
mod observations;

use std::time::Instant;
use zorgmesh_node::fhir::validation::validate;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map_or(Ok(20_000), |a| a.parse())?;
    let resources: Vec<serde_json::Value> = (0..total)
        .map(|i| observations::observation(i, total).1)
        .collect();
    let started = Instant::now();
    let mut bytes = 0;
    for resource in &resources {
        let text = serde_json::to_vec(resource)?;
        let parsed: serde_json::Value = serde_json::from_slice(&text)?;
        bytes += text.len() + usize::from(parsed.is_object());
    }
    let baseline = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut errors = 0;
    for resource in &resources {
        errors += validate(resource)
            .iter()
            .filter(|i| i.severity == "error")
            .count();
    }
    let validating = started.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "the workload is valid R4");
    let per = |s: f64| s * 1e6 / total as f64;
    println!(
        "validate {total} Observations ({:.0} B each): {:.1} µs each; baseline JSON round trip {:.1} µs each; ratio {:.1}×",
        bytes as f64 / total as f64,
        per(validating),
        per(baseline),
        validating / baseline
    );
    Ok(())
}
