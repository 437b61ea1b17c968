//! How well the simulator predicts a real mesh: the same scenario run as real
//! `zorgmesh node run` processes and in `zorgmesh_simulation`, side by side.
//!
//! The real run: every node in its own network namespace, reached through a TUN device; a
//! switch in this process carries every packet from one namespace to another after a fixed
//! one-way delay (the kernel's netem is not available on every machine; a userspace switch
//! is, and delays TCP and UDP alike). The switch also counts every node's bytes by protocol
//! (gossip: TCP port 9000; data plane: UDP 7000). Each node logs how long after its holder
//! staged it each entry reached its index (`zorgmesh::propagation`); writes come from this
//! process over HTTP, through a TUN device of its own that the switch does not delay.
//!
//! The simulated run: a scenario of the same nodes, regions, delay, batch window, sync
//! interval, mesh degree and number of writes over the same span.
//!
//! ```text
//! scripts/sim-fidelity.sh [--nodes 20] [--latency-ms 10] [--updates 600] [--seconds 30]
//! ```
//!
//! Needs root (namespaces, TUN devices) and `ip` (iproute2). Everything it creates is
//! removed when it ends, also on failure.

use anyhow::{bail, Context};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use zorgmesh_protocol::{Bsn, NodeRole};
use zorgmesh_topology::{NodeSpec, Region, Topology};

/// The test network: the harness is `.0.2`, node `i` is `.0.(10 + i)`.
const NET: [u8; 2] = [10, 213];
const HTTP_PORT: u16 = 8080;
const GOSSIP_PORT: u16 = 9000;
const DATA_PORT: u16 = 7000;
/// Packets the switch holds at most (a full switch drops, as a router's queue does).
const MAX_QUEUED_PACKETS: usize = 100_000;
/// The batch window and sync interval of both runs (the node's defaults).
const BATCH_WINDOW_MS: u64 = 200;
const SYNC_INTERVAL_MS: u64 = 10_000;
/// gossipsub's mesh degree (`mesh_n`, the default the node keeps).
const MESH_DEGREE: usize = 6;

struct Args {
    nodes: usize,
    latency_ms: u64,
    updates: usize,
    seconds: u64,
    seed: u64,
    binary: PathBuf,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: 20,
        latency_ms: 10,
        updates: 600,
        seconds: 30,
        seed: 1,
        binary: std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("the example's directory")?
            .join("zorgmesh"),
        out: PathBuf::from("target/fidelity"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => args.nodes = value()?.parse()?,
            "--latency-ms" => args.latency_ms = value()?.parse()?,
            "--updates" => args.updates = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--binary" => args.binary = value()?.into(),
            "--out" => args.out = value()?.into(),
            other => bail!(
                "unknown flag {other}; flags: --nodes N --latency-ms MS --updates N \
                 --seconds S --seed N --binary PATH --out DIR"
            ),
        }
    }
    if !(4..=200).contains(&args.nodes) {
        bail!("--nodes between 4 and 200");
    }
    if args.latency_ms > 1000 || args.seconds == 0 || args.seconds > 600 {
        bail!("--latency-ms at most 1000, --seconds between 1 and 600");
    }
    if args.updates == 0 || args.updates > 100_000 {
        bail!("--updates between 1 and 100000");
    }
    if !args.binary.exists() {
        bail!(
            "{} not found: build it with cargo build --release --bin zorgmesh",
            args.binary.display()
        );
    }
    Ok(args)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn host_address(host: usize) -> [u8; 4] {
    [
        NET[0],
        NET[1],
        0,
        if host == 0 { 2 } else { 9 + host as u8 },
    ]
}

fn node_address(i: usize) -> String {
    let a = host_address(i + 1);
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The host (0 the harness, `1 + i` node `i`) an IPv4 address is.
fn host_of(address: &[u8]) -> Option<usize> {
    if address[0] != NET[0] || address[1] != NET[1] || address[2] != 0 {
        return None;
    }
    match address[3] {
        2 => Some(0),
        a if a >= 10 => Some(a as usize - 9),
        _ => None,
    }
}

/// What a packet carries: 0 gossip, 1 data plane, 2 anything else.
fn class_of(packet: &[u8]) -> usize {
    let header = usize::from(packet[0] & 0x0f) * 4;
    if packet.len() < header + 4 {
        return 2;
    }
    let port = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let (from, to) = (port(header), port(header + 2));
    match packet[9] {
        6 if from == GOSSIP_PORT || to == GOSSIP_PORT => 0,
        17 if from == DATA_PORT || to == DATA_PORT => 1,
        _ => 2,
    }
}

/// Bytes each host sent and received to and from other nodes, by class.
struct Counters {
    sent: Vec<[AtomicU64; 3]>,
    received: Vec<[AtomicU64; 3]>,
    dropped: AtomicU64,
}

/// A packet waiting in the switch: when it is due, its order of arrival, its destination.
type Queued = (Instant, u64, usize, Vec<u8>);

/// The switch: one reader thread per TUN device, one thread that writes each packet to its
/// destination's device when it is due.
struct Switch {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Switch {
    fn start(devices: Vec<tun::Device>, latency: Duration) -> Self {
        let hosts = devices.len();
        let devices: Vec<Arc<tun::Device>> = devices.into_iter().map(Arc::new).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters {
            sent: (0..hosts).map(|_| Default::default()).collect(),
            received: (0..hosts).map(|_| Default::default()).collect(),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel::<(Instant, usize, Vec<u8>)>(MAX_QUEUED_PACKETS);
        let mut threads = Vec::new();
        for (from, device) in devices.iter().enumerate() {
            let (device, tx, stop, counters) =
                (device.clone(), tx.clone(), stop.clone(), counters.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let n = match device.recv_timeout(&mut buf, Duration::from_millis(100)) {
                        Ok(n) => n,
                        Err(_) => continue,
                    };
                    let packet = &buf[..n];
                    if n < 20 || packet[0] >> 4 != 4 {
                        continue;
                    }
                    let Some(to) = host_of(&packet[16..20]) else {
                        continue;
                    };
                    if to >= counters.sent.len() || to == from {
                        continue;
                    }
                    let between_nodes = from != 0 && to != 0;
                    if between_nodes {
                        let class = class_of(packet);
                        counters.sent[from][class].fetch_add(n as u64, Ordering::Relaxed);
                        counters.received[to][class].fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let delay = if between_nodes {
                        latency
                    } else {
                        Duration::ZERO
                    };
                    let item = (Instant::now() + delay, to, packet.to_vec());
                    if tx.try_send(item).is_err() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        drop(tx);
        let writer_stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            // Earliest first; `order` keeps packets of the same instant in arrival order.
            let mut queue: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
            let mut order = 0u64;
            while !writer_stop.load(Ordering::Relaxed) {
                let wait = queue
                    .peek()
                    .map_or(Duration::from_millis(100), |Reverse(q)| {
                        q.0.saturating_duration_since(Instant::now())
                    });
                match rx.recv_timeout(wait) {
                    Ok((due, to, packet)) => {
                        order += 1;
                        queue.push(Reverse((due, order, to, packet)));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                let now = Instant::now();
                while queue.peek().is_some_and(|Reverse(q)| q.0 <= now) {
                    let Some(Reverse((_, _, to, packet))) = queue.pop() else {
                        break;
                    };
                    let _ = devices[to].send(&packet);
                }
            }
        }));
        Self {
            stop,
            counters,
            threads,
        }
    }

    fn bytes(&self, host: usize, class: usize) -> (u64, u64) {
        (
            self.counters.sent[host][class].load(Ordering::Relaxed),
            self.counters.received[host][class].load(Ordering::Relaxed),
        )
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The namespaces, devices and node processes of the real run; removed on drop.
struct Lab {
    tag: String,
    nodes: usize,
    children: Vec<Child>,
}

impl Lab {
    fn namespace(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn device(&self, host: usize) -> String {
        format!("{}d{host}", self.tag)
    }

    /// Makes every namespace and TUN device (the devices are opened here, then moved).
    fn build(tag: String, nodes: usize) -> anyhow::Result<(Self, Vec<tun::Device>)> {
        let lab = Self {
            tag,
            nodes,
            children: Vec::new(),
        };
        let mut devices = Vec::new();
        for host in 0..=nodes {
            let mut config = tun::Configuration::default();
            config.tun_name(lab.device(host)).mtu(1500);
            let device = tun::create(&config)
                .with_context(|| format!("creating TUN device {}", lab.device(host)))?;
            devices.push(device);
            let address = host_address(host);
            let cidr = format!(
                "{}.{}.{}.{}/16",
                address[0], address[1], address[2], address[3]
            );
            let dev = lab.device(host);
            if host == 0 {
                ip(&["addr", "add", &cidr, "dev", &dev])?;
                ip(&["link", "set", &dev, "up"])?;
            } else {
                let ns = lab.namespace(host - 1);
                ip(&["netns", "add", &ns])?;
                ip(&["link", "set", &dev, "netns", &ns])?;
                ip(&["-n", &ns, "addr", "add", &cidr, "dev", &dev])?;
                ip(&["-n", &ns, "link", "set", &dev, "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
        }
        Ok((lab, devices))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
    }
}

fn topology(nodes: usize) -> Topology {
    let listen = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let regions = ["noord", "zuid"];
    Topology {
        network: "fidelity".into(),
        regions: regions
            .iter()
            .map(|r| Region {
                name: (*r).into(),
                description: String::new(),
            })
            .collect(),
        nodes: (0..nodes)
            .map(|i| NodeSpec {
                category: Default::default(),
                name: format!("{}-{}", regions[i % 2], i / 2 + 1),
                region: regions[i % 2].into(),
                role: NodeRole::Institution,
                organisation_ura: format!("{:08}", 3000 + i),
                organisation_name: format!("Organisatie {i}"),
                http: listen(HTTP_PORT),
                gossip: listen(GOSSIP_PORT),
                data: listen(DATA_PORT),
                host: Some(node_address(i)),
                evaluator: false,
            })
            .collect(),
        evaluator_threshold: None,
    }
}

/// Percentile `p` of sorted `values`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Every entry's lag in the nodes' propagation lines.
fn lags_in(log: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| l.contains("batch applied")) {
        let Some(start) = line.find("lags_ms=[") else {
            continue;
        };
        let rest = &line[start + "lags_ms=[".len()..];
        let Some(end) = rest.find(']') else { continue };
        out.extend(
            rest[..end]
                .split(',')
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    out
}

struct Harness {
    http: reqwest::Client,
    client: zorgmesh_node::auth::assertion::ClientCredentials,
    tokens: Vec<Option<String>>,
}

impl Harness {
    fn base(i: usize) -> String {
        format!("http://{}:{HTTP_PORT}", node_address(i))
    }

    async fn token(&mut self, i: usize) -> anyhow::Result<String> {
        if let Some(token) = &self.tokens[i] {
            return Ok(token.clone());
        }
        let mut credentials = self.client.clone();
        credentials.token_endpoint =
            format!("{}{}", Self::base(i), zorgmesh_node::auth::TOKEN_PATH);
        let via = credentials.token_endpoint.clone();
        let token = zorgmesh_node::auth::request_token_via(&self.http, &credentials, &via, None)
            .await?
            .access_token;
        self.tokens[i] = Some(token.clone());
        Ok(token)
    }

    async fn status(&mut self, i: usize) -> anyhow::Result<Value> {
        let token = self.token(i).await?;
        Ok(self
            .http
            .get(format!("{}/admin/status", Self::base(i)))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn post(&mut self, i: usize, bundle: &Value) -> anyhow::Result<()> {
        let token = self.token(i).await?;
        self.http
            .post(format!("{}/fhir", Self::base(i)))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Polls `ready` over every node's status until it holds for all, or `bound` passes.
    async fn wait_all(
        &mut self,
        nodes: usize,
        bound: Duration,
        what: &str,
        ready: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let mut all = Vec::new();
            for i in 0..nodes {
                match self.status(i).await {
                    Ok(status) => all.push(status),
                    Err(_) => break,
                }
            }
            if all.len() == nodes && ready(&all) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > bound {
                let seen: Vec<String> = all
                    .iter()
                    .map(|s| {
                        format!(
                            "{}: {} topic peers, {} entries",
                            s["node"], s["gossip"]["topic_peers"], s["live_entries"]
                        )
                    })
                    .collect();
                bail!("{what}: not within {bound:?}\n{}", seen.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let logs = args.out.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    std::fs::create_dir_all(&logs)?;
    let tag = format!("zf{}", std::process::id() % 100_000);
    let (mut lab, devices) = Lab::build(tag, args.nodes)
        .context("setting up namespaces and TUN devices (this needs root and iproute2)")?;
    let switch = Switch::start(devices, Duration::from_millis(args.latency_ms));
    let dir = tempfile::Builder::new()
        .prefix("zorgmesh-fidelity-")
        .tempdir()?;
    let topology = topology(args.nodes);
    topology.check()?;
    let provisioned =
        zorgmesh_node::provision::generate(&topology, dir.path(), time::OffsetDateTime::now_utc())?;
    let (client, key) =
        zorgmesh_node::auth::assertion::ClientCredentials::generate("fidelity", "unset")?;
    for node in &provisioned {
        zorgmesh_tests::register_client(
            &node.dir,
            "fidelity",
            zorgmesh_tests::TEST_CLIENT_SCOPES,
            None,
            Some(jsonwebtoken::jwk::JwkSet {
                keys: vec![key.clone()],
            }),
        )?;
    }
    for (i, node) in provisioned.iter().enumerate() {
        let log = std::fs::File::create(logs.join(format!("{}.log", node.spec.name)))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.namespace(i)])
            .arg(&args.binary)
            .args(["node", "run", "--config"])
            .arg(node.config_path())
            .env("RUST_LOG", "warn,zorgmesh::propagation=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        lab.children.push(child);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let real = runtime.block_on(drive(&args, client, &switch))?;
    drop(lab);
    drop(switch);

    // The same scenario, simulated.
    let scenario_text = scenario_toml(&args);
    std::fs::write(args.out.join("scenario.toml"), &scenario_text)?;
    let scenario = zorgmesh_simulation::Scenario::parse(&scenario_text)?;
    let report = zorgmesh_simulation::run(&scenario, args.seed);
    std::fs::write(args.out.join("sim-report.json"), report.to_json())?;
    let sim = &report.propagation;
    let sim_gossip_received = report.traffic.received_per_node;

    let mut lags = real.lags;
    lags.sort_unstable();
    let (p50, p95, p99) = (
        percentile(&lags, 50.0),
        percentile(&lags, 95.0),
        percentile(&lags, 99.0),
    );
    let ratio = |real: f64, sim: f64| if sim > 0.0 { real / sim } else { f64::NAN };
    let table = format!(
        "# Simulator fidelity: {} nodes, {} ms one-way delay, {} writes over {} s\n\n\
         | | real nodes | simulator | real / sim |\n|---|---|---|---|\n\
         | entries measured | {} | {} | |\n\
         | propagation p50 (ms) | {p50} | {} | {:.2} |\n\
         | propagation p95 (ms) | {p95} | {} | {:.2} |\n\
         | propagation p99 (ms) | {p99} | {} | {:.2} |\n\
         | gossip bytes received per node, during the writes (less idle) | {:.0} | {:.0} | {:.2} |\n\
         | data-plane bytes received per node, during the writes (less idle) | {:.0} | | |\n\n\
         Idle traffic of the real mesh before the writes (heartbeats, announcements, syncs): \
         {:.0} gossip bytes and {:.0} data-plane bytes per node per second. Packets the switch \
         dropped: {}. Node logs, the scenario and the simulator's report are in {}.\n",
        args.nodes,
        args.latency_ms,
        args.updates,
        args.seconds,
        lags.len(),
        sim.samples,
        sim.p50_ms,
        ratio(p50 as f64, sim.p50_ms as f64),
        sim.p95_ms,
        ratio(p95 as f64, sim.p95_ms as f64),
        sim.p99_ms,
        ratio(p99 as f64, sim.p99_ms as f64),
        real.gossip_received_per_node,
        sim_gossip_received,
        ratio(real.gossip_received_per_node, sim_gossip_received),
        real.data_received_per_node,
        real.idle_gossip_per_node_s,
        real.idle_data_per_node_s,
        real.dropped,
        args.out.display(),
    );
    std::fs::write(args.out.join("fidelity.md"), &table)?;
    println!("{table}");
    Ok(())
}

fn scenario_toml(args: &Args) -> String {
    let per_region = args.nodes / 2;
    format!(
        "name = \"fidelity\"\nduration_s = {seconds}\nsync_interval_ms = {SYNC_INTERVAL_MS}\n\
         regions = [{{ name = \"noord\", nodes = {a} }}, {{ name = \"zuid\", nodes = {b} }}]\n\n\
         [links]\nlatency_ms = {latency}\njitter_ms = 0\n\n\
         [gossip]\nmesh_degree = {degree}\nconnections = \"bootstrap\"\n\n\
         [publishing]\nbatch_window_ms = {BATCH_WINDOW_MS}\nbatch_max_entries = 1024\n\n\
         [workload]\npatients = 1000000000\nupdates = {updates}\n",
        seconds = args.seconds,
        a = args.nodes - per_region,
        b = per_region,
        latency = args.latency_ms,
        degree = MESH_DEGREE.min(args.nodes - 1),
        updates = args.updates,
    )
}

struct RealRun {
    lags: Vec<u64>,
    gossip_received_per_node: f64,
    data_received_per_node: f64,
    idle_gossip_per_node_s: f64,
    idle_data_per_node_s: f64,
    dropped: u64,
}

async fn drive(
    args: &Args,
    client: zorgmesh_node::auth::assertion::ClientCredentials,
    switch: &Switch,
) -> anyhow::Result<RealRun> {
    let n = args.nodes;
    let mut harness = Harness {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        client,
        tokens: vec![None; n],
    };
    // Up, then a gossip mesh of everyone.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        loop {
            let health = harness
                .http
                .get(format!("{}/health", Harness::base(i)))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {i} did not answer on HTTP within 60 s (see its log)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every node with all the peers it dials at start (and that dial it) in the topic.
    let topology = topology(n);
    let expected: Vec<u64> = topology
        .nodes
        .iter()
        .map(|node| {
            let dials = zorgmesh_topology::bootstrap_peers(&topology, node);
            let dialled_by = topology
                .nodes
                .iter()
                .filter(|other| {
                    other.name != node.name
                        && !dials.iter().any(|d| d.name == other.name)
                        && zorgmesh_topology::bootstrap_peers(&topology, other)
                            .iter()
                            .any(|d| d.name == node.name)
                })
                .count();
            (dials.len() + dialled_by) as u64
        })
        .collect();
    harness
        .wait_all(
            n,
            Duration::from_secs(60),
            "every node in the gossip topic",
            |all| {
                all.iter()
                    .zip(&expected)
                    .all(|(s, e)| s["gossip"]["topic_peers"].as_u64().unwrap_or(0) >= *e)
            },
        )
        .await?;
    // The gossipsub meshes have settled when their GRAFT/PRUNE traffic stops: no gossip
    // bytes for a second (polled, at most 30 s).
    let gossip_total = || -> u64 { (1..=n).map(|h| switch.bytes(h, 0).1).sum() };
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut quiet_since) = (gossip_total(), Instant::now());
    while quiet_since.elapsed() < Duration::from_secs(1) && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = gossip_total();
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
    }
    // Idle traffic, to take off the figures of the run.
    let total = |class: usize| -> u64 { (1..=n).map(|h| switch.bytes(h, class).1).sum() };
    let idle_from = (total(0), total(1), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_s = idle_from.2.elapsed().as_secs_f64();
    let idle_rate = (
        (total(0) - idle_from.0) as f64 / idle_s,
        (total(1) - idle_from.1) as f64 / idle_s,
    );
    // The writes: new patients at random nodes, spread evenly with jitter (as the
    // simulator spreads its workload). Each write is one transaction.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let started = Instant::now();
    let at_start = (total(0), total(1));
    let step = Duration::from_secs(args.seconds).as_secs_f64() / args.updates as f64;
    // A new patient each write (the first eight digits of the BSNs, in order).
    let mut next_bsn: u32 = 10_000_000;
    for k in 0..args.updates {
        let due = Duration::from_secs_f64(step * (k as f64 + rng.gen::<f64>()));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let node = rng.gen_range(0..n);
        let bsn = loop {
            next_bsn += 1;
            if let Some(bsn) = Bsn::from_first_eight(next_bsn) {
                break bsn;
            }
        };
        harness
            .post(
                node,
                &zorgmesh_tests::patient_bundle(bsn.as_str(), "fidelity", 1),
            )
            .await
            .with_context(|| format!("write {k} at node {node}"))?;
    }
    // Until every index holds every write.
    let writes = args.updates as u64;
    harness
        .wait_all(
            n,
            Duration::from_secs(120),
            "every index holds every write",
            |all| {
                all.iter()
                    .all(|s| s["live_entries"].as_u64().unwrap_or(0) >= writes)
            },
        )
        .await?;
    let span = started.elapsed().as_secs_f64();
    let during = (total(0) - at_start.0, total(1) - at_start.1);
    let per_node = |bytes: u64, idle: f64| ((bytes as f64 - idle * span) / n as f64).max(0.0);
    let mut lags = Vec::new();
    for entry in std::fs::read_dir(args.out.join("logs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            lags.extend(lags_in(&std::fs::read_to_string(&path)?));
        }
    }
    Ok(RealRun {
        lags,
        gossip_received_per_node: per_node(during.0, idle_rate.0),
        data_received_per_node: per_node(during.1, idle_rate.1),
        idle_gossip_per_node_s: idle_rate.0 / n as f64,
        idle_data_per_node_s: idle_rate.1 / n as f64,
        dropped: switch.counters.dropped.load(Ordering::Relaxed),
    })
}
