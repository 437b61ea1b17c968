//! Container fault tests: real `zorgmesh node run` processes in containers built from the
//! locally built image (`scripts/build-node-image.sh`), on a private Docker network, with
//! topology and certificates from `zorgmesh topology generate`'s code path. Scenarios:
//! partition and heal, kill -9 during ingest, a late joiner behind 100,000 locator entries,
//! and a holder that is down while a dossier is resolved.
//!
//! Run: `scripts/container-tests.sh` (builds the image, runs these, removes the image).
//! Containers are removed when their handles drop and the network by its guard, also when a
//! test fails.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use zorgmesh_protocol::{Bsn, NodeRole};
use zorgmesh_topology::{NodeSpec, Region, Topology};

const IMAGE: &str = "zorgmesh-node";
const TAG: &str = "dev";
/// How long a healed mesh may take to converge (sync runs every 2 s in these configs).
const CONVERGENCE_BOUND: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

fn docker_ok(args: &[&str]) {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private network, removed on drop.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

struct ClusterNode {
    name: String,
    container: ContainerAsync<GenericImage>,
}

/// Nodes in containers. Field order matters: containers drop (and are removed) before the
/// network.
struct Cluster {
    nodes: Vec<ClusterNode>,
    network: Network,
    dir: tempfile::TempDir,
    provisioned: Vec<zorgmesh_node::provision::ProvisionedNode>,
    http: reqwest::Client,
    /// The tests' client, registered on every node (its token endpoint is set per node).
    client: zorgmesh_node::auth::assertion::ClientCredentials,
    /// Access tokens per node name, with when they were issued.
    tokens: std::sync::Mutex<std::collections::HashMap<String, (String, Instant)>>,
}

fn topology(nodes: &[(&str, &str)], subnet_prefix: &str) -> Topology {
    let listen = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let mut regions: Vec<Region> = Vec::new();
    for (_, region) in nodes {
        if !regions.iter().any(|r| r.name == *region) {
            regions.push(Region {
                name: (*region).into(),
                description: String::new(),
            });
        }
    }
    Topology {
        network: "containernet".into(),
        regions,
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, (name, region))| NodeSpec {
                category: Default::default(),
                name: (*name).into(),
                region: (*region).into(),
                role: if i == 0 {
                    NodeRole::ReplicationPlatform
                } else {
                    NodeRole::Institution
                },
                organisation_ura: format!("{:08}", 2000 + i),
                organisation_name: format!("Organisatie {name}"),
                http: listen(8080),
                gossip: listen(9000),
                data: listen(7000),
                host: Some(node_ip(subnet_prefix, i)),
                evaluator: false,
            })
            .collect(),
        evaluator_threshold: None,
    }
}

/// The static address of node `i` on the test network (`<prefix>.<10 + i>`).
fn node_ip(subnet_prefix: &str, i: usize) -> String {
    format!("{subnet_prefix}.{}", 10 + i)
}

/// Creates a private network with a fixed subnet (so nodes get static addresses), trying a
/// few candidate subnets in case one is taken.
fn create_network(name: &str) -> (Network, String) {
    let seed = std::process::id() as usize;
    for attempt in 0..32 {
        let prefix = format!(
            "172.{}.{}",
            28 + (seed + attempt) % 4,
            (seed / 4 + attempt * 7) % 256
        );
        let out = docker(&[
            "network",
            "create",
            "--subnet",
            &format!("{prefix}.0/24"),
            name,
        ]);
        if out.status.success() {
            return (Network(name.to_owned()), prefix);
        }
    }
    panic!("could not create a Docker network for {name}");
}

impl Cluster {
    /// Provisions all `nodes`, starts the first `running`.
    async fn start(test: &str, nodes: &[(&str, &str)], running: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("zorgmesh-containers-")
            .tempdir()
            .unwrap();
        let (network, prefix) = create_network(&format!("zorgmesh-{test}-{}", std::process::id()));
        let topology = topology(nodes, &prefix);
        topology.check().unwrap();
        let provisioned = zorgmesh_node::provision::generate(
            &topology,
            dir.path(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        for node in &provisioned {
            // Faster rounds than the defaults, so that tests finish quickly.
            let path = node.config_path();
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .replace("interval_ms = 10000", "interval_ms = 2000")
                .replace("holder_timeout_ms = 5000", "holder_timeout_ms = 3000");
            std::fs::write(&path, text).unwrap();
        }
        let (client, key) =
            zorgmesh_node::auth::assertion::ClientCredentials::generate("tests", "unset").unwrap();
        for node in &provisioned {
            zorgmesh_tests::register_client(
                &node.dir,
                "tests",
                zorgmesh_tests::TEST_CLIENT_SCOPES,
                None,
                Some(jsonwebtoken::jwk::JwkSet {
                    keys: vec![key.clone()],
                }),
            )
            .unwrap();
        }
        let mut cluster = Self {
            client,
            tokens: Default::default(),
            nodes: Vec::new(),
            network,
            dir,
            provisioned,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        for i in 0..running {
            cluster.start_node(i).await;
        }
        cluster
    }

    async fn start_node(&mut self, i: usize) {
        let node = &self.provisioned[i];
        let container = GenericImage::new(IMAGE, TAG)
            .with_exposed_port(8080.tcp())
            .with_wait_for(WaitFor::message_on_stderr("node running"))
            .with_mount(Mount::bind_mount(
                node.dir.to_string_lossy().into_owned(),
                "/node",
            ))
            .with_env_var(
                "RUST_LOG",
                std::env::var("ZORGMESH_CONTAINER_LOG")
                    .unwrap_or_else(|_| "warn,zorgmesh_node=info".into()),
            )
            .with_cmd(["node", "run", "--config", "/node/node.toml"])
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (did scripts/build-node-image.sh run?)",
                    node.spec.name
                )
            });
        let ip = node.spec.host.clone().expect("container nodes have a host");
        docker_ok(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &self.network.0,
            container.id(),
        ]);
        self.nodes.push(ClusterNode {
            name: node.spec.name.clone(),
            container,
        });
        let index = self.nodes.len() - 1;
        self.wait_http(index).await;
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    async fn base(&self, i: usize) -> String {
        let port = self.nodes[i]
            .container
            .get_host_port_ipv4(8080)
            .await
            .unwrap();
        format!("http://127.0.0.1:{port}")
    }

    /// An access token of the tests' client for node `i`, reused while fresh. The assertion
    /// names the node's own token endpoint (its address on the test network); the request
    /// goes through the mapped port.
    async fn token(&self, i: usize) -> String {
        let name = self.nodes[i].name.clone();
        if let Some((token, issued)) = self.tokens.lock().unwrap().get(&name) {
            if issued.elapsed() < Duration::from_secs(120) {
                return token.clone();
            }
        }
        let spec = &self
            .provisioned
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap()
            .spec;
        let mut credentials = self.client.clone();
        credentials.token_endpoint = format!(
            "http://{}:{}{}",
            spec.host.as_deref().unwrap(),
            spec.http.port(),
            zorgmesh_node::auth::TOKEN_PATH
        );
        let via = format!("{}{}", self.base(i).await, zorgmesh_node::auth::TOKEN_PATH);
        let token = zorgmesh_node::auth::request_token_via(&self.http, &credentials, &via, None)
            .await
            .unwrap_or_else(|e| panic!("no token from {name}: {e:#}"))
            .access_token;
        self.tokens
            .lock()
            .unwrap()
            .insert(name, (token.clone(), Instant::now()));
        token
    }

    async fn wait_http(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(port) = self.nodes[i].container.get_host_port_ipv4(8080).await {
                let url = format!("http://127.0.0.1:{port}/health");
                if let Ok(r) = self.http.get(&url).send().await {
                    if r.status().is_success() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer on HTTP",
                self.nodes[i].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("{}/admin/status", self.base(i).await);
        let token = self.token(i).await;
        self.http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    async fn post(&self, i: usize, bundle: &Value) -> Value {
        let url = format!("{}/fhir", self.base(i).await);
        let response = self
            .http
            .post(url)
            .bearer_auth(self.token(i).await)
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(
            status.is_success(),
            "{} refused a bundle: {status} {body}",
            self.nodes[i].name
        );
        body
    }

    async fn dossier(&self, i: usize, bsn: &str) -> zorgmesh_node::demo::DossierSummary {
        let url = format!(
            "{}/fhir/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}",
            self.base(i).await
        );
        let bundle: Value = self
            .http
            .get(url)
            .bearer_auth(self.token(i).await)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let summary = zorgmesh_node::demo::summarise(&bundle);
        if !summary.unreachable.is_empty() {
            let outcome = bundle["entry"]
                .as_array()
                .and_then(|e| e.last())
                .map(|e| e["resource"].to_string());
            eprintln!(
                "dossier from {} lists unreachable holders: {}",
                self.nodes[i].name,
                outcome.unwrap_or_default()
            );
            if std::env::var("ZORGMESH_CONTAINER_LOG").is_ok() {
                let log = self.nodes[i]
                    .container
                    .stderr_to_vec()
                    .await
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&log);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!(
                    "--- {} log (last 40 lines, newest first) ---\n{}",
                    self.nodes[i].name,
                    tail.join("\n")
                );
            }
        }
        summary
    }

    fn disconnect(&self, i: usize) {
        docker_ok(&[
            "network",
            "disconnect",
            &self.network.0,
            self.nodes[i].container.id(),
        ]);
    }

    fn reconnect(&self, i: usize) {
        let index = self
            .provisioned
            .iter()
            .position(|p| p.spec.name == self.nodes[i].name)
            .unwrap();
        let ip = self.provisioned[index].spec.host.clone().unwrap();
        docker_ok(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &self.network.0,
            self.nodes[i].container.id(),
        ]);
    }

    /// Waits until every node's index equals every other's and holds `entries` live
    /// entries (when given). Returns how long it took.
    async fn converge(&self, entries: Option<u64>, bound: Duration) -> Duration {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.converge_nodes(&all, entries, bound).await
    }

    /// [`Cluster::converge`] over the nodes `which` only.
    async fn converge_nodes(
        &self,
        which: &[usize],
        entries: Option<u64>,
        bound: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let mut statuses = Vec::new();
            for &i in which {
                statuses.push(self.status(i).await);
            }
            let all: Option<Vec<Value>> = statuses.into_iter().collect();
            if let Some(all) = all {
                let heads_agree = all.windows(2).all(|w| w[0]["heads"] == w[1]["heads"]);
                let count_ok = entries.is_none_or(|n| all.iter().all(|s| s["live_entries"] == n));
                // Every publisher's own head is what the others hold (no node missing its own).
                let own_ok = all.iter().all(|s| {
                    let name = s["node"].as_str().unwrap_or_default();
                    all.iter().all(|o| {
                        o["heads"].get(name).is_none() || o["heads"][name] == s["heads"][name]
                    })
                });
                if heads_agree && count_ok && own_ok {
                    return started.elapsed();
                }
                if started.elapsed() > bound {
                    let summary: Vec<String> = all
                        .iter()
                        .map(|s| {
                            format!(
                                "{}: {} entries, heads {}",
                                s["node"], s["live_entries"], s["heads"]
                            )
                        })
                        .collect();
                    panic!("no convergence within {bound:?}:\n{}", summary.join("\n"));
                }
            } else if started.elapsed() > bound {
                panic!("a node did not answer within {bound:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.provisioned[i].dir.join("data")
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

fn bsn(n: u32) -> String {
    (n..)
        .find_map(Bsn::from_first_eight)
        .unwrap()
        .as_str()
        .to_owned()
}

fn patient_bundle(bsn: &str, label: &str, observations: usize) -> Value {
    zorgmesh_tests::patient_bundle(bsn, label, observations)
}

fn assert_complete(summary: &zorgmesh_node::demo::DossierSummary, holders: &[&str]) {
    assert!(
        summary.unreachable.is_empty(),
        "unreachable holders: {:?}",
        summary.unreachable
    );
    assert!(
        summary.unverified.is_empty(),
        "answers that do not match their locator entry: {:?}",
        summary.unverified
    );
    let origins: Vec<&str> = summary.origins.iter().map(String::as_str).collect();
    let mut expected = holders.to_vec();
    expected.sort_unstable();
    assert_eq!(origins, expected);
}

const FIVE: &[(&str, &str)] = &[
    ("noord-a", "noord"),
    ("noord-b", "noord"),
    ("noord-c", "noord"),
    ("zuid-a", "zuid"),
    ("zuid-b", "zuid"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_then_heal_converges() {
    let cluster = Cluster::start("partition", FIVE, 5).await;
    cluster
        .post(0, &patient_bundle(&bsn(10_000_000), "before", 1))
        .await;
    cluster.converge(Some(1), CONVERGENCE_BOUND).await;

    // Cut region zuid off and write on both sides.
    let zuid = [cluster.index_of("zuid-a"), cluster.index_of("zuid-b")];
    for &i in &zuid {
        cluster.disconnect(i);
    }
    let mut expected: Vec<(String, Vec<&str>)> = vec![(bsn(10_000_000), vec!["noord-a"])];
    for (k, (node, label)) in [
        (1usize, "noord-b"),
        (2, "noord-c"),
        (zuid[0], "zuid-a"),
        (zuid[1], "zuid-b"),
    ]
    .into_iter()
    .enumerate()
    {
        let b = bsn(20_000_000 + k as u32 * 1000);
        cluster.post(node, &patient_bundle(&b, label, 2)).await;
        expected.push((b, vec![label]));
    }
    // One patient treated on both sides during the partition.
    let shared = bsn(30_000_000);
    cluster
        .post(1, &patient_bundle(&shared, "noord-b", 1))
        .await;
    cluster
        .post(zuid[0], &patient_bundle(&shared, "zuid-a", 1))
        .await;
    expected.push((shared, vec!["noord-b", "zuid-a"]));

    // During the partition the CA revokes noord-c; only the noord side hears of it.
    let revoked = cluster.index_of("noord-c");
    let (_, pem) = zorgmesh_tests::revoke_node(
        &cluster.root().join("ca"),
        &cluster.provisioned[revoked].dir,
        "key compromised",
    )
    .unwrap();
    let answer: Value = cluster
        .http
        .post(format!("{}/admin/revocations", cluster.base(0).await))
        .bearer_auth(cluster.token(0).await)
        .body(pem)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["applied"], true, "{answer}");
    expected.retain(|(_, holders)| holders != &vec!["noord-c"]);

    for &i in &zuid {
        cluster.reconnect(i);
    }
    let healed = Instant::now();
    let others: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != revoked).collect();
    // Every other node, zuid included, applies the list and drops noord-c's entry.
    let took = cluster
        .converge_nodes(&others, Some(6), CONVERGENCE_BOUND)
        .await;
    for &i in &others {
        let status = cluster.status(i).await.unwrap();
        assert_eq!(status["revocations"]["sequence"], 1, "{}", status["node"]);
        assert!(
            status["heads"].get("noord-c").is_none(),
            "{}",
            status["node"]
        );
    }
    println!(
        "partition healed: converged in {:.1} s, noord-c's revocation everywhere {:.1} s after the heal",
        took.as_secs_f64(),
        healed.elapsed().as_secs_f64()
    );
    for (b, holders) in &expected {
        for resolver in [0, zuid[1]] {
            assert_complete(&cluster.dossier(resolver, b).await, holders);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_no_acknowledged_write_and_forks_no_log() {
    let cluster = Cluster::start("crash", &FIVE[..3], 3).await;
    let victim = 2;
    let patient_bsn = bsn(40_000_000);
    let created = cluster
        .post(victim, &patient_bundle(&patient_bsn, "victim", 0))
        .await;
    let patient_id = zorgmesh_tests::created_patient_id(&created);
    cluster.converge(Some(1), CONVERGENCE_BOUND).await;

    // Stream single writes; kill -9 once 40 are acknowledged, while the stream goes on.
    let base = cluster.base(victim).await;
    let http = cluster.http.clone();
    let token = cluster.token(victim).await;
    let container_id = cluster.nodes[victim].container.id().to_owned();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for n in 0..10_000u32 {
            let id = format!("crash-{n}");
            let body = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": format!("stream {n}")}, "subject": {"reference": format!("Patient/{patient_id}")}});
            let sent = http
                .put(format!("{base}/fhir/Observation/{id}"))
                .bearer_auth(&token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => acknowledged.push(id),
                _ => break,
            }
            if acknowledged.len() == 40 {
                docker_ok(&["kill", "--signal", "KILL", &container_id]);
            }
        }
        acknowledged
    });
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 40,
        "the stream stopped before the kill: {}",
        acknowledged.len()
    );

    // Restart on the same volume; every acknowledged write must be there.
    cluster.nodes[victim].container.start().await.unwrap();
    cluster.wait_http(victim).await;
    let base = cluster.base(victim).await;
    for id in &acknowledged {
        let r = cluster
            .http
            .get(format!("{base}/fhir/Observation/{id}"))
            .bearer_auth(cluster.token(victim).await)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "acknowledged Observation/{id} lost in the crash"
        );
    }
    println!(
        "kill -9 after {} acknowledged writes: none lost",
        acknowledged.len()
    );
    // The log continues without a fork: new batches are accepted everywhere.
    cluster
        .post(victim, &patient_bundle(&bsn(41_000_000), "after-crash", 1))
        .await;
    cluster.converge(Some(2), CONVERGENCE_BOUND).await;
    for i in 0..cluster.nodes.len() {
        let status = cluster.status(i).await.unwrap();
        assert_eq!(
            status["gossip"]["rejected"], 0,
            "{}: {status}",
            cluster.nodes[i].name
        );
    }
    assert!(cluster.data_dir(victim).exists());
    let summary = cluster.dossier(0, &patient_bsn).await;
    assert_complete(&summary, &["noord-c"]);
    // Every acknowledged write reaches the dossier (a write in flight at the kill may too).
    assert!(summary.per_type.get("Observation").copied().unwrap_or(0) >= acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_with_100_000_entries() {
    const PATIENTS: u32 = 100_000;
    const PER_BUNDLE: u32 = 2_500;
    let nodes: &[(&str, &str)] = &[
        ("noord-a", "noord"),
        ("noord-b", "noord"),
        ("zuid-a", "zuid"),
        ("zuid-b", "zuid"),
        ("laat", "zuid"),
    ];
    let mut cluster = Cluster::start("latejoin", nodes, 4).await;
    let started = Instant::now();
    let uploads = (0..PATIENTS / PER_BUNDLE).map(|chunk| {
        let entries: Vec<Value> = (0..PER_BUNDLE)
            .map(|k| {
                let n = chunk * PER_BUNDLE + k;
                json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{n:012}"),
                       "resource": {"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn(10_000_000 + n * 20)}]},
                       "request": {"method": "POST", "url": "Patient"}})
            })
            .collect();
        (chunk as usize % 4, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    });
    let cluster_ref = &cluster;
    futures::future::join_all(
        uploads
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|group| async move {
                for (node, bundle) in group {
                    cluster_ref.post(*node, bundle).await;
                }
            }),
    )
    .await;
    println!(
        "ingested {PATIENTS} patients in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cluster
        .converge(Some(u64::from(PATIENTS)), Duration::from_secs(300))
        .await;

    let joined = Instant::now();
    cluster.start_node(4).await;
    let took = cluster
        .converge(Some(u64::from(PATIENTS)), Duration::from_secs(300))
        .await;
    println!("late joiner caught up with {PATIENTS} entries in {:.1} s after start ({:.1} s since start of its container)", took.as_secs_f64(), joined.elapsed().as_secs_f64());
    let status = cluster.status(4).await.unwrap();
    assert!(
        status["sync"]["batches_applied"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_complete(
        &cluster.dossier(4, &bsn(10_000_000 + 77_777 * 20)).await,
        &[nodes[(77_777 / PER_BUNDLE) as usize % 4].0],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dossier_names_a_stopped_holder_and_completes_after_its_restart() {
    let cluster = Cluster::start("holderdown", &FIVE[..4], 4).await;
    let b = bsn(50_000_000);
    cluster.post(0, &patient_bundle(&b, "noord-a", 1)).await;
    cluster.post(3, &patient_bundle(&b, "zuid-a", 2)).await;
    cluster.converge(Some(2), CONVERGENCE_BOUND).await;
    assert_complete(&cluster.dossier(1, &b).await, &["noord-a", "zuid-a"]);

    cluster.nodes[3].container.stop().await.unwrap();
    let summary = cluster.dossier(1, &b).await;
    assert_eq!(summary.unreachable, vec!["zuid-a".to_owned()]);
    assert_eq!(
        summary
            .origins
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["noord-a"]
    );

    cluster.nodes[3].container.start().await.unwrap();
    cluster.wait_http(3).await;
    let deadline = Instant::now() + CONVERGENCE_BOUND;
    loop {
        let summary = cluster.dossier(1, &b).await;
        if summary.unreachable.is_empty() {
            assert_complete(&summary, &["noord-a", "zuid-a"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "holder still unreachable after its restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
