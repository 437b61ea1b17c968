//! The load client of `scripts/bench-trust-overhead.sh`: `$dossier` latency at one node of
//! a running demo mesh, for patients found at another.
//!
//! `cargo bench -p zorgmesh-node --bench dossier_latency -- SEARCH_BASE RESOLVE_BASE N
//! [SEARCH_TOKEN RESOLVE_TOKEN]`: takes up to 50 BSNs from `SEARCH_BASE/Patient`, resolves
//! them round robin at `RESOLVE_BASE` (20 unmeasured first, then `N` measured, one at a
//! time) and prints p50, p90, p99 and the mean in ms.

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 3 {
        eprintln!("usage: dossier_latency SEARCH_BASE RESOLVE_BASE N [SEARCH_TOKEN RESOLVE_TOKEN]");
        std::process::exit(2);
    }
    let (search_base, resolve_base) = (&args[0], &args[1]);
    let requests: usize = args[2].parse()?;
    let search_token = args.get(3).cloned();
    let resolve_token = args.get(4).cloned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let with = |request: reqwest::RequestBuilder, token: &Option<String>| match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let found: serde_json::Value = with(
            client.get(format!("{search_base}/Patient?_count=50")),
            &search_token,
        )
        .send()
        .await?
        .json()
        .await?;
        let bsns: Vec<String> = found["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e["resource"]["identifier"]
                    .as_array()?
                    .iter()
                    .find_map(|i| {
                        (i["system"] == zorgmesh_protocol::patient::BSN_SYSTEM)
                            .then(|| i["value"].as_str().map(str::to_owned))
                            .flatten()
                    })
            })
            .collect();
        if bsns.is_empty() {
            return Err(format!("no Patient with a BSN at {search_base}: {found}").into());
        }
        let mut times = Vec::with_capacity(requests);
        for n in 0..requests + 20 {
            let bsn = &bsns[n % bsns.len()];
            let url = format!(
                "{resolve_base}/Patient/$dossier?identifier={}|{bsn}",
                zorgmesh_protocol::patient::BSN_SYSTEM
            );
            let started = Instant::now();
            let response = with(client.get(&url), &resolve_token).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            let took = started.elapsed();
            if !status.is_success() {
                return Err(format!(
                    "$dossier answered {status}: {}",
                    String::from_utf8_lossy(&body)
                )
                .into());
            }
            if n >= 20 {
                times.push(took);
            }
        }
        times.sort();
        let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len() as f64;
        println!(
            "dossiers {} patients {} p50 {:.2} p90 {:.2} p99 {:.2} mean {:.2} ms",
            times.len(),
            bsns.len(),
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 0.99),
            mean * 1000.0
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
