//! Crash-safety loop: a real `zorgmesh node run` process takes a stream of writes and is
//! killed with SIGKILL at a random moment, again and again. After every restart each write
//! the node had acknowledged must be there. Reports acknowledged writes lost (must be 0) and
//! recovery time (restart to the API answering).
//!
//! Run: `cargo build --release --bin zorgmesh && cargo run --release --example crash_loop -- --runs 100`
//! Options: `--runs N` (default 100), `--seed S` (default 1), `--binary PATH`
//! (default `target/release/zorgmesh`), `--engine sled|redb|fjall` (the store's engine, default
//! sled).

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A node process, killed and reaped when dropped (also on early returns).
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the node; its log goes to `node.log` beside its config.
fn start(binary: &str, config: &std::path::Path) -> NodeProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("node.log"))
        .expect("node log");
    NodeProcess(
        Command::new(binary)
            .args(["node", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start zorgmesh"),
    )
}

/// The last lines of the node's log.
fn log_tail(config: &std::path::Path) -> String {
    let text = std::fs::read_to_string(config.with_file_name("node.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A fresh access token for the loop's client (`zorgmesh client token`).
fn token(binary: &str, credentials: &std::path::Path) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .args(["client", "token", "--credentials"])
        .arg(credentials)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "client token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn wait_ready(http: &reqwest::Client, admin: &str, config: &std::path::Path) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{admin}/health")).send().await {
            if r.status().is_success() {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node did not come back within 60 s; its log ends:\n{}",
            log_tail(config)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = arg("--runs", "100").parse()?;
    let seed: u64 = arg("--seed", "1").parse()?;
    let binary = arg("--binary", "target/release/zorgmesh");
    anyhow::ensure!(
        std::path::Path::new(&binary).exists(),
        "{binary} not found: build it with cargo build --release --bin zorgmesh"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let topology = format!(
        "network = \"crashnet\"\n[[region]]\nname = \"noord\"\n[[node]]\nname = \"victim\"\nregion = \"noord\"\nrole = \"institution\"\norganisation_ura = \"00000001\"\norganisation_name = \"Crash\"\nhttp = \"127.0.0.1:{}\"\ngossip = \"127.0.0.1:{}\"\ndata = \"127.0.0.1:{}\"\n",
        ports[0], ports[1], ports[2]
    );
    std::fs::write(dir.path().join("mesh.toml"), topology)?;
    let status = Command::new(&binary)
        .args(["topology", "generate"])
        .arg(dir.path().join("mesh.toml"))
        .arg("--out")
        .arg(dir.path().join("mesh"))
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "topology generate failed");
    let config = dir.path().join("mesh/nodes/victim/node.toml");
    let engine = arg("--engine", "sled");
    anyhow::ensure!(
        engine == "sled" || engine == "redb" || engine == "fjall",
        "--engine is sled, redb or fjall"
    );
    // The generated config names its engine; a top-level key goes before its tables.
    let text: String = std::fs::read_to_string(&config)?
        .lines()
        .filter(|line| !line.starts_with("storage_engine"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&config, format!("storage_engine = \"{engine}\"\n{text}"))?;
    let status = Command::new(&binary)
        .args([
            "client",
            "add",
            "--id",
            "crash-loop",
            "--scope",
            "system/*.cruds",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "client add failed");
    let credentials = config.with_file_name("crash-loop.credentials.json");
    let base = format!("http://127.0.0.1:{}/fhir", ports[0]);
    let admin = format!("http://127.0.0.1:{}", ports[0]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut acknowledged: Vec<String> = Vec::new();
    let mut recovery = Vec::new();
    let mut lost = 0usize;
    let mut next = 0u64;
    let mut child = start(&binary, &config);
    wait_ready(&http, &admin, &config).await;
    let mut bearer = token(&binary, &credentials)?;
    let patient = json!({"resourceType": "Patient", "id": "crash-patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}]});
    http.put(format!("{base}/Patient/crash-patient"))
        .bearer_auth(&bearer)
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await?
        .error_for_status()?;

    for run in 0..runs {
        // Stream writes; a timer kills the process with SIGKILL after a random delay.
        let kill_after = Duration::from_millis(rng.gen_range(20..400));
        let pid = child.0.id();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        loop {
            let id = format!("w{next}");
            next += 1;
            let body = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "crash loop"}, "subject": {"reference": "Patient/crash-patient"}});
            let sent = http
                .put(format!("{base}/Observation/{id}"))
                .bearer_auth(&bearer)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => acknowledged.push(id),
                _ => break,
            }
        }
        killer.await?;
        let _ = child.0.wait();

        child = start(&binary, &config);
        let took = wait_ready(&http, &admin, &config).await;
        recovery.push(took);
        bearer = token(&binary, &credentials)?;
        // Every acknowledged write so far must be there: the latest 200 one by one, and all
        // of them by count.
        let total: Value = http
            .get(format!("{base}/Observation?_count=0"))
            .bearer_auth(&bearer)
            .send()
            .await?
            .json()
            .await?;
        let stored = total["total"].as_u64().unwrap_or(0) as usize;
        let mut lost_now = acknowledged.len().saturating_sub(stored);
        for id in acknowledged.iter().rev().take(200) {
            let r = http
                .get(format!("{base}/Observation/{id}"))
                .bearer_auth(&bearer)
                .send()
                .await?;
            if r.status().as_u16() != 200 {
                lost_now += 1;
            }
        }
        lost += lost_now;
        if (run + 1) % 10 == 0 || lost_now > 0 {
            println!(
                "run {:>3}: {} writes acknowledged so far, {} lost, recovery {:.0} ms",
                run + 1,
                acknowledged.len(),
                lost,
                took.as_secs_f64() * 1000.0
            );
        }
    }
    drop(child);
    recovery.sort();
    let mean = recovery.iter().map(Duration::as_secs_f64).sum::<f64>() / recovery.len() as f64;
    println!(
        "{runs} kill -9 runs: {} writes acknowledged, {lost} lost; recovery mean {:.0} ms, median {:.0} ms, max {:.0} ms",
        acknowledged.len(),
        mean * 1000.0,
        recovery[recovery.len() / 2].as_secs_f64() * 1000.0,
        recovery.last().unwrap().as_secs_f64() * 1000.0
    );
    anyhow::ensure!(lost == 0, "{lost} acknowledged writes were lost");
    Ok(())
}
