//! Test harness for multi-node meshes on loopback: real nodes (sled, libp2p, quinn, axum) in
//! this process, each on its own ephemeral ports, with certificates from a fresh CA.

use anyhow::Context;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use zorgmesh_node::auth::assertion::ClientCredentials;
use zorgmesh_node::config::NodeConfig;
use zorgmesh_node::node::RunningNode;
use zorgmesh_node::provision::{self, ProvisionedNode};
use zorgmesh_protocol::NodeRole;
use zorgmesh_topology::{NodeSpec, Region, Topology};

pub use zorgmesh_node::demo::{summarise, wait_until, DossierSummary};

/// A mesh of in-process nodes.
pub struct TestMesh {
    _dir: tempfile::TempDir,
    /// Where the mesh's files are.
    pub root: PathBuf,
    provisioned: Vec<ProvisionedNode>,
    nodes: Vec<Option<RunningNode>>,
    /// Per-holder timeout used by every node's `$dossier`.
    pub holder_timeout_ms: u64,
    /// Anti-entropy interval of every node (long by default, so that tests see the
    /// event-driven rounds: start, gaps, new publishers).
    pub sync_interval_ms: u64,
    /// Own-log length after which every node compacts its log into a snapshot.
    pub compact_after_batches: usize,
    /// A node's consent policy other than the default (opt-out, break-the-glass allowed),
    /// taken at its next (re)start.
    pub consent: std::collections::HashMap<usize, zorgmesh_node::consent::ConsentConfig>,
    /// Browser origins every node's FHIR API allows (CORS), taken at a node's next
    /// (re)start.
    pub cors_origins: Vec<String>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The tests' own client, registered on every node with every scope and the admin
    /// scope (its token endpoint follows the node asked).
    client: ClientCredentials,
    /// Access tokens of [`Self::client`] per node: the node's address when it was issued
    /// (a restart changes it), the token and when it was issued.
    tokens: std::sync::Mutex<
        std::collections::HashMap<usize, (std::net::SocketAddr, String, std::time::Instant)>,
    >,
}

/// The id of the tests' own client on every node.
pub const TEST_CLIENT: &str = "tests";
/// Its scopes.
pub const TEST_CLIENT_SCOPES: &str = "system/*.cruds zorgmesh.admin";

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("valid")
}

/// The organisation category a test node's name suggests: `umc*`, `mst`, `*ziekenhuis*`
/// are hospitals, `huisarts*` general practices, `apotheek*` pharmacies; the rest other.
pub fn category_of_name(name: &str) -> zorgmesh_protocol::consent::OrganisationCategory {
    use zorgmesh_protocol::consent::OrganisationCategory::*;
    if name.starts_with("umc") || name == "mst" || name.contains("ziekenhuis") {
        Hospital
    } else if name.starts_with("huisarts") {
        GeneralPractice
    } else if name.starts_with("apotheek") {
        Pharmacy
    } else {
        Other
    }
}

/// A topology with ephemeral ports.
pub fn topology(network: &str, nodes: &[(&str, &str)]) -> Topology {
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
        network: network.into(),
        regions,
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, (name, region))| NodeSpec {
                category: category_of_name(name),
                name: (*name).into(),
                region: (*region).into(),
                role: NodeRole::Institution,
                organisation_ura: format!("{:08}", 1000 + i),
                organisation_name: format!("Organisation {name}"),
                http: loopback(),
                gossip: loopback(),
                data: loopback(),
                host: None,
                evaluator: false,
            })
            .collect(),
        evaluator_threshold: None,
    }
}

impl TestMesh {
    /// Provisions and starts `nodes` (`(name, region)`), waiting until every node sees every
    /// other on the locator topic.
    pub async fn start(network: &str, nodes: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_first(network, nodes, nodes.len()).await
    }

    /// Provisions all `nodes` but starts only the first `running` (the rest can join later
    /// with [`TestMesh::start_node`]).
    pub async fn start_first(
        network: &str,
        nodes: &[(&str, &str)],
        running: usize,
    ) -> anyhow::Result<Self> {
        Self::start_topology(topology(network, nodes), running).await
    }

    /// Provisions `topology` and starts its first `running` nodes.
    pub async fn start_topology(topology: Topology, running: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("zorgmesh-test-")
            .tempdir()?;
        let root = dir.path().to_owned();
        let provisioned =
            provision::generate_material(&topology, &root, time::OffsetDateTime::now_utc())?;
        // One key pair for the tests' client, registered on every node.
        let (client, jwk) = ClientCredentials::generate(TEST_CLIENT, "unset")?;
        for node in &provisioned {
            register_client(
                &node.dir,
                TEST_CLIENT,
                TEST_CLIENT_SCOPES,
                None,
                Some(jsonwebtoken::jwk::JwkSet {
                    keys: vec![jwk.clone()],
                }),
            )?;
        }
        let mut mesh = Self {
            client,
            tokens: Default::default(),
            _dir: dir,
            root,
            provisioned,
            nodes: Vec::new(),
            holder_timeout_ms: 1500,
            sync_interval_ms: 600_000,
            compact_after_batches: 1000,
            consent: Default::default(),
            cors_origins: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        for i in 0..running {
            let node = mesh.launch(i).await?;
            mesh.nodes.push(Some(node));
        }
        mesh.wait_connected().await?;
        Ok(mesh)
    }

    /// The network CA's directory (ca.crt, ca.key, evaluators.pem, revocations.pem).
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// Node `i`'s directory (node.crt, node.key, ...).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.provisioned[i].dir.clone()
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.config(i).data_dir
    }

    /// Node `i`'s key (whether it runs or not).
    pub fn node_id(&self, i: usize) -> zorgmesh_protocol::NodeId {
        self.provisioned[i].node_id
    }

    /// Node `i` if it runs.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut RunningNode> {
        self.nodes.get_mut(i).and_then(Option::as_mut)
    }

    fn config(&self, i: usize) -> NodeConfig {
        let bootstrap = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.gossip_addr.to_string())
            .collect();
        let node = &self.provisioned[i];
        let mut config = provision::node_config(&node.spec, bootstrap, node.evaluator);
        config.resolve.holder_timeout_ms = self.holder_timeout_ms;
        config.sync.interval_ms = self.sync_interval_ms;
        config.publishing.compact_after_batches = self.compact_after_batches;
        config.publishing.batch_window_ms = 50;
        // Many nodes share the test machine: a small index budget each.
        config.index_memory_mib = 16;
        config.http_cors_origins = self.cors_origins.clone();
        if let Some(consent) = self.consent.get(&i) {
            config.consent = *consent;
        }
        config.resolve_paths(&node.dir);
        config
    }

    async fn launch(&self, i: usize) -> anyhow::Result<RunningNode> {
        RunningNode::start(self.config(i))
            .await
            .with_context(|| format!("starting {}", self.provisioned[i].spec.name))
    }

    /// Waits until every running node sees every other running node on the topic.
    pub async fn wait_connected(&self) -> anyhow::Result<()> {
        let running = self.nodes.iter().flatten().count();
        let ok = wait_until(Duration::from_secs(30), || {
            self.nodes.iter().flatten().all(|n| {
                n.gossip_status
                    .topic_peers
                    .load(std::sync::atomic::Ordering::Relaxed)
                    + 1
                    >= running
            })
        })
        .await;
        anyhow::ensure!(ok, "the mesh did not connect within 30 s");
        Ok(())
    }

    /// A running node.
    pub fn node(&self, i: usize) -> &RunningNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// All running nodes.
    pub fn running(&self) -> impl Iterator<Item = &RunningNode> {
        self.nodes.iter().flatten()
    }

    /// Stops node `i`.
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// Starts node `i` when it was never started (a late joiner) or after a stop.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.launch(i).await?;
        if i < self.nodes.len() {
            self.nodes[i] = Some(node);
        } else {
            self.nodes.push(Some(node));
        }
        self.wait_connected().await
    }

    /// Starts node `i` again on the same data directory (new ports).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop(i).await;
        let node = self.launch(i).await?;
        let (id, address) = (node.mesh.own(), node.data_addr.to_string());
        self.nodes[i] = Some(node);
        self.wait_connected().await?;
        // Its announcement carries the new data-plane address to every peer.
        let ok = wait_until(Duration::from_secs(30), || {
            self.running()
                .all(|n| n.mesh.data_address(&id).as_deref() == Some(address.as_str()))
        })
        .await;
        anyhow::ensure!(ok, "peers did not learn the restarted node's new address");
        Ok(())
    }

    /// An access token of the tests' client for node `i` (every scope and admin), fetched
    /// from the node's token endpoint and reused while it is fresh.
    pub async fn token(&self, i: usize) -> anyhow::Result<String> {
        let addr = self.node(i).http_addr;
        if let Some((at, token, issued)) = self.tokens.lock().unwrap().get(&i) {
            if *at == addr && issued.elapsed() < Duration::from_secs(120) {
                return Ok(token.clone());
            }
        }
        let token = self.token_for(i, &self.client, None).await?;
        self.tokens
            .lock()
            .unwrap()
            .insert(i, (addr, token.clone(), std::time::Instant::now()));
        Ok(token)
    }

    /// A fresh access token for `credentials` from node `i` (whatever endpoint the
    /// credentials name), with `scope` or every registered scope.
    pub async fn token_for(
        &self,
        i: usize,
        credentials: &ClientCredentials,
        scope: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut credentials = credentials.clone();
        credentials.token_endpoint = self.token_endpoint(i);
        Ok(
            zorgmesh_node::auth::request_token(&self.http, &credentials, scope)
                .await?
                .access_token,
        )
    }

    /// Node `i`'s token endpoint.
    pub fn token_endpoint(&self, i: usize) -> String {
        format!(
            "http://{}{}",
            self.node(i).http_addr,
            zorgmesh_node::auth::TOKEN_PATH
        )
    }

    /// Registers another client on node `i` (running or not) with a key made here; its
    /// credentials point at the node's current token endpoint when it runs.
    pub fn add_client(
        &self,
        i: usize,
        client_id: &str,
        scopes: &str,
        patient_bsn: Option<&str>,
    ) -> anyhow::Result<ClientCredentials> {
        let registered = register_client(&self.node_dir(i), client_id, scopes, patient_bsn, None)?;
        let mut credentials = registered.context("a made key has credentials")?;
        if let Some(Some(node)) = self.nodes.get(i) {
            credentials.token_endpoint = format!(
                "http://{}{}",
                node.http_addr,
                zorgmesh_node::auth::TOKEN_PATH
            );
        }
        Ok(credentials)
    }

    /// `request` with the tests' client's token for node `i`.
    pub async fn authorized(
        &self,
        i: usize,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(request.bearer_auth(self.token(i).await?))
    }

    /// Hands a CA-signed revocation list (PEM) to node `i` (`POST /admin/revocations`); its
    /// answer, or an error when the node refused the list.
    pub async fn post_revocations(&self, i: usize, pem: Vec<u8>) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!(
                "http://{}/admin/revocations",
                self.node(i).http_addr
            ))
            .bearer_auth(self.token(i).await?)
            .body(pem)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(
            status.is_success(),
            "the list was refused ({status}): {body}"
        );
        Ok(body)
    }

    /// HTTP DELETE under node `i`'s base URL; returns the status.
    pub async fn delete(&self, i: usize, path: &str) -> anyhow::Result<u16> {
        let response = self
            .http
            .delete(format!("{}/{path}", self.node(i).base_url()))
            .bearer_auth(self.token(i).await?)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Waits until every running node's index holds `entries` live entries.
    pub async fn wait_for_entries(&self, entries: usize) -> anyhow::Result<()> {
        let ok = wait_until(Duration::from_secs(30), || {
            self.running().all(|n| n.mesh.live_entries() == entries)
        })
        .await;
        let counts: Vec<(String, usize)> = self
            .running()
            .map(|n| (n.name().to_owned(), n.mesh.live_entries()))
            .collect();
        anyhow::ensure!(
            ok,
            "index did not reach {entries} entries on every node: {counts:?}"
        );
        Ok(())
    }

    /// POSTs a Bundle to node `i` and returns the response Bundle.
    pub async fn post_bundle(&self, i: usize, bundle: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.node(i).base_url())
            .bearer_auth(self.token(i).await?)
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "bundle refused: {status} {body}");
        Ok(body)
    }

    /// GETs a path under node `i`'s base URL.
    pub async fn get(&self, i: usize, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}/{path}", self.node(i).base_url()))
            .bearer_auth(self.token(i).await?)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Resolves a dossier on node `i`.
    pub async fn dossier(&self, i: usize, bsn: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .get(
                i,
                &format!("Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}"),
            )
            .await?;
        anyhow::ensure!(status == 200, "$dossier answered {status}: {body}");
        Ok(body)
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// Registers a client in the clients file of the node whose files are in `node_dir`, as
/// `zorgmesh client add` does: with `public_keys`, or with a key made here, whose
/// credentials are returned (their token endpoint still to be set).
pub fn register_client(
    node_dir: &std::path::Path,
    client_id: &str,
    scopes: &str,
    patient_bsn: Option<&str>,
    public_keys: Option<jsonwebtoken::jwk::JwkSet>,
) -> anyhow::Result<Option<ClientCredentials>> {
    let registered = zorgmesh_node::auth::registration::add_client(
        &node_dir.join("clients.json"),
        zorgmesh_node::auth::registration::NewClient {
            client_id: client_id.to_owned(),
            name: String::new(),
            scopes: scopes.to_owned(),
            patient_bsn: patient_bsn.map(str::to_owned),
            public_keys,
        },
        "unset",
        zorgmesh_node::auth::now_secs(),
    )?;
    Ok(registered.credentials)
}

/// Revokes the node whose files are in `node_dir` with the CA in `ca_dir`, as
/// `zorgmesh certs revoke` does: returns the new list and its PEM (what a node's
/// `POST /admin/revocations` takes).
pub fn revoke_node(
    ca_dir: &std::path::Path,
    node_dir: &std::path::Path,
    reason: &str,
) -> anyhow::Result<(zorgmesh_protocol::revocation::SignedRevocationList, Vec<u8>)> {
    let ca = zorgmesh_certs::CaFiles::in_dir(ca_dir);
    let der = zorgmesh_certs::read_certificate(&node_dir.join("node.crt"))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let list = ca.revoke(&der, reason, now_ms)?;
    let pem = std::fs::read(&ca.revocations)?;
    Ok((list, pem))
}

/// A small transaction Bundle for one patient at one institution: the Patient (with BSN), a
/// shared Organization (same id and URA everywhere), an own Organization, `observations`
/// Observations and one Condition.
pub fn patient_bundle(bsn: &str, institution: &str, observations: usize) -> Value {
    let mut entries = vec![
        json!({
            "fullUrl": "Organization/shared-gp",
            "resource": {"resourceType": "Organization", "id": "shared-gp",
                "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "00099999"}], "name": "Huisartsenpraktijk Gedeeld"},
            "request": {"method": "PUT", "url": "Organization/shared-gp"}
        }),
        json!({
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Organization",
                "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": format!("own-{institution}")}], "name": institution},
            "request": {"method": "POST", "url": "Organization"}
        }),
        json!({
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
            "resource": {"resourceType": "Patient",
                "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}],
                "name": [{"family": "Test", "given": [institution]}],
                "generalPractitioner": [{"reference": "Organization/shared-gp"}],
                "managingOrganization": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}},
            "request": {"method": "POST", "url": "Patient"}
        }),
        json!({
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000003",
            "resource": {"resourceType": "Condition", "code": {"text": format!("condition at {institution}")},
                "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"}},
            "request": {"method": "POST", "url": "Condition"}
        }),
    ];
    for n in 0..observations {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-1000000000{n:02}"),
            "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": format!("observation {n} at {institution}")},
                "valueQuantity": {"value": n, "unit": "kg"},
                "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"}},
            "request": {"method": "POST", "url": "Observation"}
        }));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The local Patient id a transaction response created (the third entry of
/// [`patient_bundle`]).
pub fn created_patient_id(response: &Value) -> String {
    response["entry"][2]["response"]["location"]
        .as_str()
        .and_then(|l| l.split('/').nth(1))
        .expect("location of the Patient")
        .to_owned()
}

/// The patient key of `bsn` in the mesh generated under `root`, computed by recombining the
/// evaluators' shares from the node directories: what t colluding evaluators could do. Tests
/// use it to check indexes from outside; no node can.
pub fn patient_key_from_shares(root: &std::path::Path, bsn: &str) -> zorgmesh_protocol::PatientKey {
    use zorgmesh_protocol::oprf;
    let signed = zorgmesh_certs::read_evaluator_set(&root.join("ca/evaluators.pem")).unwrap();
    let set = oprf::EvaluatorSet::from_body(&signed.body).unwrap();
    let shares: Vec<oprf::KeyShare> = std::fs::read_dir(root.join("nodes"))
        .unwrap()
        .filter_map(|dir| zorgmesh_certs::read_key_share(&dir.ok()?.path().join("node.share")).ok())
        .collect();
    let key = oprf::recombine_key(&set, &shares).unwrap();
    oprf::patient_key_with_whole_key(&key, &zorgmesh_protocol::Bsn::parse(bsn).unwrap())
}

/// The Python of the outside clients' virtual environment (py-libp2p, PyJWT; made by
/// `scripts/setup-outside-clients.sh`, run here once when missing), or `ZORGMESH_PYTHON`.
/// `None` (and a SKIPPED line) when it cannot be had, unless
/// `ZORGMESH_REQUIRE_OUTSIDE_CLIENTS=1` (as in CI), when that panics.
pub fn outside_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("ZORGMESH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/outside-clients/bin/python"));
    if !python.exists() && std::env::var_os("ZORGMESH_PYTHON").is_none() {
        // The README's test command sets up what it needs: install py-libp2p (pinned) once.
        eprintln!("installing the outside clients with scripts/setup-outside-clients.sh");
        let status =
            std::process::Command::new(root.join("scripts/setup-outside-clients.sh")).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("scripts/setup-outside-clients.sh failed: {status:?}");
        }
    }
    if python.exists() {
        return Some(python);
    }
    let message = format!(
        "the outside clients are not installed at {} (scripts/setup-outside-clients.sh needs python3 and PyPI; or set ZORGMESH_PYTHON)",
        python.display()
    );
    if std::env::var("ZORGMESH_REQUIRE_OUTSIDE_CLIENTS").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// The FHIR corpus (`../shared/testdata`, or `ZORGMESH_TESTDATA`). `None`, said on stderr,
/// when it is absent; a panic instead under `ZORGMESH_REQUIRE_CORPUS=1` (as in CI).
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ZORGMESH_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    if dir.join("fhir-r4").is_dir() {
        return Some(dir);
    }
    let message = format!(
        "the FHIR corpus is not at {} (set ZORGMESH_TESTDATA or put ../shared/testdata beside the checkout)",
        dir.display()
    );
    if std::env::var("ZORGMESH_REQUIRE_CORPUS").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// Every `.json` file in `dir`, sorted by name, parsed.
pub fn json_files(dir: PathBuf) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect()
}
