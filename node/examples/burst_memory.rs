//! Memory of a real `zorgmesh node run` process through a burst of large invalid Bundles:
//! resident memory idle, at the peak, and after the burst, side by side for two builds of
//! the binary (mimalloc, the default, and the system allocator as the baseline).
//!
//! ```sh
//! scripts/bench-burst-memory.sh      # builds both binaries and runs this for each
//! cargo run --release -p zorgmesh-node --example burst_memory -- --binary target/release/zorgmesh
//! ```
//!
//! The burst: 12 concurrent transaction Bundles of 30 MB whose last entry is invalid, so
//! each is read and parsed in full and refused (the node's body budget lets about four in
//! at once), while small writes go on. "After" is the lowest resident size seen in the 10 s
//! after the last answer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn run(binary: &Path, args: &[&str]) {
    let status = Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run zorgmesh");
    assert!(status.success(), "zorgmesh {args:?} failed");
}

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let mut binary = PathBuf::from("target/release/zorgmesh");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--binary" => binary = PathBuf::from(args.next().expect("--binary PATH")),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, gossip, data) = (free_port(), free_port(), free_port());
    let topology = dir.path().join("mesh.toml");
    std::fs::write(
        &topology,
        format!(
            r#"network = "burstnet"
[[region]]
name = "noord"
[[node]]
name = "solo"
region = "noord"
role = "institution"
organisation_ura = "00001001"
organisation_name = "Solo"
http = "127.0.0.1:{http}"
gossip = "127.0.0.1:{gossip}"
data = "127.0.0.1:{data}"
"#
        ),
    )
    .expect("write topology");
    let out = dir.path().join("mesh");
    run(
        &binary,
        &[
            "topology",
            "generate",
            topology.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let config = out.join("nodes").join("solo").join("node.toml");
    run(
        &binary,
        &[
            "client",
            "add",
            "--config",
            config.to_str().unwrap(),
            "--id",
            "bench",
            "--scope",
            "system/*.cruds",
        ],
    );
    let credentials = out
        .join("nodes")
        .join("solo")
        .join("bench.credentials.json");
    let node = Node(
        Command::new(&binary)
            .args(["node", "run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node"),
    );
    let pid = node.0.id();
    let base = format!("http://127.0.0.1:{http}/fhir");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{base}/metadata"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the node did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = {
        let out = Command::new(&binary)
            .args([
                "client",
                "token",
                "--credentials",
                credentials.to_str().unwrap(),
            ])
            .output()
            .expect("client token");
        assert!(out.status.success(), "client token failed");
        String::from_utf8(out.stdout)
            .expect("text")
            .trim()
            .to_owned()
    };
    let idle = resident_mib(pid);

    let filler = "x".repeat(30 * 1024 * 1024);
    let large = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Basic", "code": {"text": filler}}, "request": {"method": "POST", "url": "Basic"}},
        {"request": {"method": "FROB", "url": "Basic"}}
    ]})
    .to_string();
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, body) = (client.clone(), base.clone(), large.clone());
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = 0.0f64;
        // Bounded: at most 4 minutes of samples.
        for _ in 0..9_600 {
            if sampling.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            peak = peak.max(resident_mib(pid));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        peak
    });
    let started = Instant::now();
    let mut small_slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for request in burst {
        // A small write between the large ones: the legitimate client's latency.
        let began = Instant::now();
        let answer = client
            .post(format!("{base}/Patient"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient","active":true}"#)
            .send()
            .await
            .expect("small write");
        assert!(answer.status().is_success());
        small_slowest = small_slowest.max(began.elapsed());
        statuses.push(request.await.expect("task").expect("large request"));
    }
    let burst_secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    let mut after = f64::INFINITY;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10) {
        after = after.min(resident_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("binary: {}", binary.display());
    println!("burst: 12 x 30 MB invalid Bundles answered {statuses:?} in {burst_secs:.1} s; slowest small write {small_slowest:?}");
    println!(
        "resident: idle {idle:.0} MiB, peak {peak:.0} MiB, after the burst (lowest in 10 s) {after:.0} MiB: kept {:.0} MiB over idle",
        after - idle
    );
}
