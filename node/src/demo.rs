//! `zorgmesh demo`: a local mesh on loopback, end to end.
//!
//! Six nodes in two regions (university hospitals, a general hospital, a GP practice, a
//! pharmacy and a replication platform) get certificates from a fresh network CA and start
//! on ephemeral ports. Synthetic patients from [`crate::synth`] are loaded into the
//! institutions that treated them through the FHIR API (transaction Bundles); the demo waits
//! until every node's index has every publisher's log, then resolves dossiers through
//! `$dossier` on a node that holds none of the patient's data, preferably in another region,
//! and prints what came back from where and how long it took.

use crate::config::NodeConfig;
use crate::node::RunningNode;
use crate::provision;
use crate::synth::{self, CareKind, Institution, SyntheticPatient};
use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use zorgmesh_protocol::consent::OrganisationCategory;
use zorgmesh_protocol::NodeRole;
use zorgmesh_topology::{NodeSpec, Region, Topology};

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Seed of the patient generator.
    pub seed: u64,
    /// Number of patients.
    pub patients: usize,
    /// Number of dossiers to resolve.
    pub resolve: usize,
    /// Keep the mesh running after the summary.
    pub keep_running: bool,
    /// Where to keep the mesh's files (a temporary directory when absent).
    pub dir: Option<PathBuf>,
}

struct DemoNode {
    name: &'static str,
    organisation: &'static str,
    ura: &'static str,
    region: &'static str,
    role: NodeRole,
    kind: CareKind,
    description: &'static str,
}

const NODES: &[DemoNode] = &[
    DemoNode {
        name: "umcg",
        organisation: "Universitair Medisch Centrum Groningen",
        ura: "00010001",
        region: "noord",
        role: NodeRole::Institution,
        kind: CareKind::Hospital,
        description: "university hospital",
    },
    DemoNode {
        name: "martini",
        organisation: "Martini Ziekenhuis",
        ura: "00010002",
        region: "noord",
        role: NodeRole::Institution,
        kind: CareKind::Hospital,
        description: "general hospital",
    },
    DemoNode {
        name: "huisarts-haren",
        organisation: "Huisartsenpraktijk Haren",
        ura: "00010003",
        region: "noord",
        role: NodeRole::Institution,
        kind: CareKind::GeneralPractice,
        description: "GP practice",
    },
    DemoNode {
        name: "erasmusmc",
        organisation: "Erasmus MC",
        ura: "00020001",
        region: "zuid-west",
        role: NodeRole::Institution,
        kind: CareKind::Hospital,
        description: "university hospital",
    },
    DemoNode {
        name: "apotheek-delfshaven",
        organisation: "Apotheek Delfshaven",
        ura: "00020002",
        region: "zuid-west",
        role: NodeRole::Institution,
        kind: CareKind::Pharmacy,
        description: "pharmacy",
    },
    DemoNode {
        name: "rp-zuidwest",
        organisation: "Replicatieplatform Zuid-West",
        ura: "00020003",
        region: "zuid-west",
        role: NodeRole::ReplicationPlatform,
        kind: CareKind::ReplicationPlatform,
        description: "replication platform",
    },
];

fn loopback_any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid")
}

fn demo_topology() -> Topology {
    Topology {
        network: "demonet".into(),
        regions: vec![
            Region {
                name: "noord".into(),
                description: "Groningen, Friesland, Drenthe".into(),
            },
            Region {
                name: "zuid-west".into(),
                description: "Rotterdam, Zeeland".into(),
            },
        ],
        nodes: NODES
            .iter()
            .map(|n| NodeSpec {
                name: n.name.into(),
                region: n.region.into(),
                role: n.role,
                organisation_ura: n.ura.into(),
                organisation_name: n.organisation.into(),
                http: loopback_any(),
                gossip: loopback_any(),
                data: loopback_any(),
                host: None,
                evaluator: false,
                category: match n.kind {
                    CareKind::Hospital => OrganisationCategory::Hospital,
                    CareKind::GeneralPractice => OrganisationCategory::GeneralPractice,
                    CareKind::Pharmacy => OrganisationCategory::Pharmacy,
                    CareKind::ReplicationPlatform => OrganisationCategory::Other,
                },
            })
            .collect(),
        evaluator_threshold: None,
    }
}

/// Polls `check` every 25 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True when every node's index holds every publisher's full log.
pub fn converged(nodes: &[RunningNode]) -> bool {
    let own_heads: BTreeMap<_, _> = nodes
        .iter()
        .map(|n| {
            (
                n.mesh.own(),
                n.mesh.heads().get(&n.mesh.own()).copied().unwrap_or(0),
            )
        })
        .collect();
    nodes.iter().all(|n| {
        let heads = n.mesh.heads();
        own_heads
            .iter()
            .all(|(publisher, head)| *head == 0 || heads.get(publisher) == Some(head))
    })
}

/// Starts the nodes of `provisioned` in order, each dialling those started before it.
pub async fn start_mesh(
    provisioned: &[provision::ProvisionedNode],
) -> anyhow::Result<Vec<RunningNode>> {
    let mut running: Vec<RunningNode> = Vec::new();
    for node in provisioned {
        let bootstrap = running.iter().map(|r| r.gossip_addr.to_string()).collect();
        let mut config: NodeConfig = provision::node_config(&node.spec, bootstrap, node.evaluator);
        config.resolve_paths(&node.dir);
        running.push(
            RunningNode::start(config)
                .await
                .with_context(|| format!("starting {}", node.spec.name))?,
        );
    }
    Ok(running)
}

/// The demo's client, registered on every node.
pub const DEMO_CLIENT: &str = "demo-ehr";

/// Runs the demo.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let temp;
    let dir = match &options.dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{} is not empty: give the demo an empty or new directory",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("zorgmesh-demo-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let topology = demo_topology();
    println!(
        "zorgmesh demo: network {:?}, {} nodes in {} regions, {} synthetic patients (seed {})",
        topology.network,
        topology.nodes.len(),
        topology.regions.len(),
        options.patients,
        options.seed
    );
    let total_started = Instant::now();
    let provisioned =
        provision::generate_material(&topology, &dir, time::OffsetDateTime::now_utc())?;
    // One system client, registered on every node (as `zorgmesh client add` does): an EHR
    // that writes and reads everything.
    let (demo_client, demo_key) =
        crate::auth::assertion::ClientCredentials::generate(DEMO_CLIENT, "unset")?;
    for node in &provisioned {
        crate::auth::registration::add_client(
            &node.dir.join("clients.json"),
            crate::auth::registration::NewClient {
                client_id: DEMO_CLIENT.to_owned(),
                name: "demo EHR".to_owned(),
                scopes: "system/*.cruds".to_owned(),
                patient_bsn: None,
                public_keys: Some(jsonwebtoken::jwk::JwkSet {
                    keys: vec![demo_key.clone()],
                }),
            },
            "unset",
            crate::auth::now_secs(),
        )?;
    }
    let started = Instant::now();
    let nodes = start_mesh(&provisioned).await?;
    for (node, spec) in nodes.iter().zip(NODES) {
        println!(
            "  started {:<20} {:<22} region {:<10} {}",
            node.name(),
            spec.description,
            spec.region,
            node.base_url()
        );
    }
    let peers = nodes.len() - 1;
    if !wait_until(Duration::from_secs(30), || {
        nodes
            .iter()
            .all(|n| n.gossip_status.topic_peers.load(Ordering::Relaxed) >= peers)
    })
    .await
    {
        bail!("the gossip mesh did not connect within 30 s");
    }
    println!(
        "mesh up: every node sees {peers} peers on the locator topic ({:.2} s)",
        started.elapsed().as_secs_f64()
    );

    let institutions: Vec<Institution> = NODES
        .iter()
        .map(|n| Institution {
            node: n.name.into(),
            organisation_name: n.organisation.into(),
            ura: n.ura.into(),
            region: n.region.into(),
            kind: n.kind,
        })
        .collect();
    let patients = synth::generate(options.seed, options.patients, &institutions);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    // Its credentials per node (the token endpoint differs), and a token from each.
    let mut tokens = Vec::new();
    let mut credential_files = Vec::new();
    for (node, provisioned) in nodes.iter().zip(&provisioned) {
        let mut credentials = demo_client.clone();
        credentials.token_endpoint = format!(
            "{}{}",
            node.base_url().trim_end_matches("/fhir"),
            crate::auth::TOKEN_PATH
        );
        let file = provisioned
            .dir
            .join(format!("{DEMO_CLIENT}.credentials.json"));
        crate::auth::registration::write_credentials(&file, &credentials)?;
        credential_files.push(file);
        tokens.push(
            crate::auth::request_token(&client, &credentials, None)
                .await
                .with_context(|| format!("a token from {}", node.name()))?
                .access_token,
        );
    }
    println!(
        "client {DEMO_CLIENT:?} registered on every node; an access token from each node's {} (SMART Backend Services)",
        crate::auth::TOKEN_PATH
    );
    let (resources, transactions, ingest_time) =
        ingest(&client, &nodes, &tokens, &patients).await?;
    println!(
        "ingested {resources} resources in {transactions} transaction Bundles in {:.2} s ({:.0} resources/s)",
        ingest_time.as_secs_f64(),
        resources as f64 / ingest_time.as_secs_f64().max(1e-9)
    );

    let converge_start = Instant::now();
    let expected_entries: usize = patients.iter().map(|p| p.records.len()).sum();
    if !wait_until(Duration::from_secs(60), || {
        converged(&nodes)
            && nodes
                .iter()
                .all(|n| n.mesh.live_entries() == expected_entries)
    })
    .await
    {
        bail!("the locator index did not converge within 60 s");
    }
    let entries = nodes[0].mesh.live_entries();
    println!(
        "index converged on all {} nodes in {:.2} s after the last write: {entries} locator entries for {} patients",
        nodes.len(),
        converge_start.elapsed().as_secs_f64(),
        patients.len()
    );

    println!("dossiers resolved with $dossier on a node that holds none of the patient's data:");
    let mut times = Vec::new();
    for patient in patients.iter().take(options.resolve) {
        let holders: BTreeSet<usize> = patient.records.iter().map(|(i, _)| *i).collect();
        let resolver = pick_resolver(&holders);
        let node = &nodes[resolver];
        let url = format!(
            "{}/Patient/$dossier?identifier={}|{}",
            node.base_url(),
            zorgmesh_protocol::patient::BSN_SYSTEM,
            patient.bsn.as_str()
        );
        let t = Instant::now();
        let response = client
            .get(&url)
            .bearer_auth(&tokens[resolver])
            .send()
            .await?;
        let status = response.status();
        let bundle: Value = response.json().await?;
        let elapsed = t.elapsed();
        if !status.is_success() {
            bail!("$dossier on {} answered {status}: {bundle}", node.name());
        }
        times.push(elapsed);
        let summary = summarise(&bundle);
        let expected: BTreeSet<&str> = holders.iter().map(|&i| NODES[i].name).collect();
        let got: BTreeSet<&str> = summary.origins.iter().map(String::as_str).collect();
        println!(
            "  {} (BSN ***{}) from {} ({}): {} resources from {} in {:.1} ms",
            patient.name,
            &patient.bsn.as_str()[6..],
            node.name(),
            NODES[resolver].region,
            summary.total,
            summary
                .origins
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            elapsed.as_secs_f64() * 1000.0
        );
        println!(
            "      {}",
            summary
                .per_type
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !summary.unreachable.is_empty() || !summary.unverified.is_empty() || got != expected {
            bail!(
                "dossier of ***{} is incomplete: expected holders {expected:?}, got {got:?}, unreachable {:?}, not matching their locator entry {:?}",
                &patient.bsn.as_str()[6..],
                summary.unreachable,
                summary.unverified
            );
        }
    }
    if !times.is_empty() {
        times.sort();
        let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len() as f64;
        println!(
            "resolve time: mean {:.1} ms, max {:.1} ms over {} dossiers; whole demo {:.2} s",
            mean * 1000.0,
            times.last().expect("non-empty").as_secs_f64() * 1000.0,
            times.len(),
            total_started.elapsed().as_secs_f64()
        );
    }

    if let Some(patient) = patients.get(1).filter(|_| options.resolve > 1) {
        // The patient objects to the resolving hospital seeing their data: recorded at one
        // of their holders, enforced by every holder.
        let holders: BTreeSet<usize> = patient.records.iter().map(|(i, _)| *i).collect();
        let resolver = pick_resolver(&holders);
        let at = *holders.iter().next().expect("a patient has a holder");
        let objection = consent_objection(patient.bsn.as_str(), NODES[resolver].ura);
        let recorded = Instant::now();
        let response = client
            .post(nodes[at].base_url())
            .bearer_auth(&tokens[at])
            .header("content-type", "application/fhir+json")
            .body(objection.to_string())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "recording the consent at {} failed: {}",
                nodes[at].name(),
                response.text().await?
            );
        }
        let url = format!(
            "{}/Patient/$dossier?identifier={}|{}",
            nodes[resolver].base_url(),
            zorgmesh_protocol::patient::BSN_SYSTEM,
            patient.bsn.as_str()
        );
        loop {
            let bundle: Value = client
                .get(&url)
                .bearer_auth(&tokens[resolver])
                .send()
                .await?
                .json()
                .await?;
            let summary = summarise(&bundle);
            let withheld_by: Vec<String> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e["resource"]["issue"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|i| i["code"] == "suppressed")
                .filter_map(|i| {
                    i["details"]["coding"][0]["code"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect();
            if summary.total == 0 && withheld_by.len() == holders.len() {
                println!(
                    "{} objected to {} ({}) seeing their data, recorded at {}: enforced by all {} holders after {:.0} ms; {} now gets nothing, and is told only \"withheld by consent\" by {}",
                    patient.name,
                    NODES[resolver].organisation,
                    NODES[resolver].ura,
                    nodes[at].name(),
                    holders.len(),
                    recorded.elapsed().as_secs_f64() * 1000.0,
                    nodes[resolver].name(),
                    withheld_by.join(", ")
                );
                break;
            }
            if recorded.elapsed() > Duration::from_secs(30) {
                bail!("the objection was not enforced within 30 s: {bundle}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    if let Some(patient) = patients.first().filter(|_| options.resolve > 0) {
        // Who looked at the first patient's data, asked at one of its holders by a privacy
        // officer: every holder's and every resolver's trail, across the mesh.
        let at = patient.records.first().map_or(0, |(i, _)| *i);
        let url = format!(
            "{}/Patient/$access-log?identifier={}|{}",
            nodes[at].base_url(),
            zorgmesh_protocol::patient::BSN_SYSTEM,
            patient.bsn.as_str()
        );
        let response = client
            .get(&url)
            .bearer_auth(&tokens[at])
            .header(
                crate::auth::PRACTITIONER_HEADER,
                "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|900099999",
            )
            .header(crate::auth::NAME_HEADER, "demo privacy officer")
            .send()
            .await?;
        let status = response.status();
        let log: Value = response.json().await?;
        if !status.is_success() {
            bail!(
                "$access-log on {} answered {status}: {log}",
                nodes[at].name()
            );
        }
        println!(
            "who accessed {}'s data (Patient/$access-log at {}, {} events):",
            patient.name,
            nodes[at].name(),
            log["total"]
        );
        for entry in log["entry"].as_array().into_iter().flatten() {
            let event = &entry["resource"];
            if event["resourceType"] == "OperationOutcome" {
                for issue in event["issue"].as_array().into_iter().flatten() {
                    println!(
                        "      {}",
                        issue["diagnostics"].as_str().unwrap_or_default()
                    );
                }
                continue;
            }
            println!(
                "  {:<24} {:<16} {:<12} by {} ({})",
                event["recorded"].as_str().unwrap_or_default(),
                event["source"]["observer"]["display"]
                    .as_str()
                    .unwrap_or_default(),
                event["subtype"][0]["code"].as_str().unwrap_or_default(),
                event["agent"][0]["who"]["identifier"]["value"]
                    .as_str()
                    .unwrap_or_default(),
                event["entity"][1]["description"]
                    .as_str()
                    .unwrap_or_default(),
            );
        }
    }

    if options.keep_running {
        println!("the mesh keeps running; FHIR base URLs:");
        for node in &nodes {
            println!("  {:<20} {}", node.name(), node.base_url());
        }
        println!("try:");
        println!(
            "  TOKEN=$(zorgmesh client token --credentials {})",
            credential_files[3].display()
        );
        println!(
            "  curl -H \"Authorization: Bearer $TOKEN\" '{}/Patient/$dossier?identifier={}|{}'",
            nodes[3].base_url(),
            zorgmesh_protocol::patient::BSN_SYSTEM,
            patients
                .first()
                .map(|p| p.bsn.as_str())
                .unwrap_or("999911120")
        );
        println!(
            "  curl -H \"Authorization: Bearer $TOKEN\" '{}/AuditEvent?_count=20'    # who accessed what here",
            nodes[3].base_url(),
        );
        println!("press ctrl-c to stop");
        tokio::signal::ctrl_c().await?;
    }
    for node in nodes {
        node.shutdown().await;
    }
    println!("demo finished");
    Ok(())
}

/// A transaction that records, with the patient's Patient (by BSN), a privacy Consent
/// objecting to the organisation `ura` seeing any of their data.
fn consent_objection(bsn: &str, ura: &str) -> Value {
    serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6b1e2d4c-0000-4000-8000-00000000c001",
         "resource": {"resourceType": "Patient",
            "identifier": [{"system": zorgmesh_protocol::patient::BSN_SYSTEM, "value": bsn}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:6b1e2d4c-0000-4000-8000-00000000c002",
         "resource": {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "urn:uuid:6b1e2d4c-0000-4000-8000-00000000c001"},
            "provision": {"type": "deny", "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"identifier": {"system": crate::consent::fhir_consent::URA_SYSTEM, "value": ura}}}]}},
         "request": {"method": "POST", "url": "Consent"}},
    ]})
}

/// A node that holds none of the patient's data, from a region that holds least of it.
fn pick_resolver(holders: &BTreeSet<usize>) -> usize {
    let region_load = |region: &str| {
        holders
            .iter()
            .filter(|&&i| NODES[i].region == region)
            .count()
    };
    (0..NODES.len())
        .filter(|i| !holders.contains(i))
        .min_by_key(|&i| (region_load(NODES[i].region), i))
        .unwrap_or(0)
}

async fn ingest(
    client: &reqwest::Client,
    nodes: &[RunningNode],
    tokens: &[String],
    patients: &[SyntheticPatient],
) -> anyhow::Result<(usize, usize, Duration)> {
    let started = Instant::now();
    let mut per_node: Vec<Vec<&Value>> = vec![Vec::new(); nodes.len()];
    let mut resources = 0;
    for patient in patients {
        resources += patient.resource_count();
        for (index, bundle) in &patient.records {
            per_node[*index].push(bundle);
        }
    }
    let transactions: usize = per_node.iter().map(Vec::len).sum();
    let uploads =
        per_node
            .iter()
            .zip(nodes)
            .zip(tokens)
            .map(|((bundles, node), token)| async move {
                for bundle in bundles {
                    let response = client
                        .post(node.base_url())
                        .bearer_auth(token)
                        .header("content-type", "application/fhir+json")
                        .body(bundle.to_string())
                        .send()
                        .await?;
                    if !response.status().is_success() {
                        let status = response.status();
                        bail!(
                            "{} refused a transaction: {status} {}",
                            node.name(),
                            response.text().await?
                        );
                    }
                }
                Ok(())
            });
    for result in futures::future::join_all(uploads).await {
        result?;
    }
    Ok((resources, transactions, started.elapsed()))
}

/// What a `$dossier` Bundle holds.
#[derive(Debug, Default)]
pub struct DossierSummary {
    /// Number of resources.
    pub total: usize,
    /// Resources per type.
    pub per_type: BTreeMap<String, usize>,
    /// Names of the nodes resources came from.
    pub origins: BTreeSet<String>,
    /// Names of holders reported unreachable.
    pub unreachable: Vec<String>,
    /// Names of holders whose answer did not match their locator entry's commitment.
    pub unverified: Vec<String>,
}

/// Reads a `$dossier` Bundle.
pub fn summarise(bundle: &Value) -> DossierSummary {
    let mut summary = DossierSummary::default();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        if entry["search"]["mode"] == "outcome" {
            for issue in resource["issue"].as_array().into_iter().flatten() {
                let name = issue["details"]["coding"][0]["code"].as_str();
                match (issue["code"].as_str(), name) {
                    (Some("incomplete"), Some(name)) => summary.unreachable.push(name.to_owned()),
                    (Some("conflict"), Some(name)) => summary.unverified.push(name.to_owned()),
                    _ => {}
                }
            }
            continue;
        }
        summary.total += 1;
        *summary
            .per_type
            .entry(
                resource["resourceType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
        for tag in resource["meta"]["tag"].as_array().into_iter().flatten() {
            if tag["system"] == crate::dossier::ORIGIN_SYSTEM {
                if let Some(code) = tag["code"].as_str() {
                    summary.origins.insert(code.to_owned());
                }
            }
        }
    }
    summary
}
