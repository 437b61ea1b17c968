//! # zorgmesh-topology
//!
//! A mesh description: a network, its regions and its nodes, as a TOML file an operator
//! writes. [`Topology::check`] names every problem at once; `zorgmesh topology generate`
//! (in `zorgmesh-node`) turns a checked topology into trust material and node configs.
//!
//! ```toml
//! network = "zorgnet"
//!
//! [[region]]
//! name = "noord"
//!
//! [[node]]
//! name = "umcg"
//! region = "noord"
//! role = "institution"            # or "replication-platform"
//! organisation_ura = "00001001"
//! organisation_name = "UMC Groningen"
//! http = "127.0.0.1:8101"         # FHIR API (TCP)
//! gossip = "127.0.0.1:9101"       # libp2p gossip (TCP)
//! data = "127.0.0.1:7101"         # QUIC data plane (UDP)
//! # host = "umcg.example.net"     # optional: the DNS name peers dial instead of the IPs
//! ```

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use zorgmesh_protocol::NodeRole;

/// A whole mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Network name (DNS label); part of the gossip topic and the CA's name.
    pub network: String,
    /// Regions.
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
    /// Nodes.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeSpec>,
    /// Partial evaluations needed for a patient key (the OPRF threshold t). Without it: a
    /// majority of the evaluators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluator_threshold: Option<u16>,
}

/// A region of the network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Region name (DNS label).
    pub name: String,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
}

/// One node of the mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name (DNS label), unique in the network.
    pub name: String,
    /// One of the topology's regions.
    pub region: String,
    /// `institution` or `replication-platform`.
    pub role: NodeRole,
    /// URA of the responsible organisation (8 digits).
    pub organisation_ura: String,
    /// Name of the responsible organisation.
    pub organisation_name: String,
    /// FHIR API listen address.
    pub http: SocketAddr,
    /// libp2p gossip listen address (TCP).
    pub gossip: SocketAddr,
    /// QUIC data-plane listen address (UDP).
    pub data: SocketAddr,
    /// DNS name other nodes use to reach this node (containers, real hosts); without it
    /// they dial the listen IPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// True if the node holds a share of the network's OPRF key. When no node is marked,
    /// [`Topology::evaluators`] picks one per region (at least three where there are three).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evaluator: bool,
    /// Kind of care organisation, certified in the node's certificate (consent rules name
    /// categories): hospital, general-practice, pharmacy, mental-health, laboratory, care
    /// or other (the default).
    #[serde(default)]
    pub category: zorgmesh_protocol::consent::OrganisationCategory,
}

/// Why a topology file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a topology.
    #[error("{path} is not a valid topology: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The topology parsed but has problems.
    #[error("{} problem(s) in the topology:\n  - {}", .0.len(), .0.join("\n  - "))]
    Problems(Vec<String>),
}

fn label_problem(kind: &str, value: &str) -> Option<String> {
    zorgmesh_protocol::identity::validate_label(kind, value).err()
}

impl Topology {
    /// Parses TOML text.
    pub fn parse(text: &str, path: &str) -> Result<Self, TopologyError> {
        toml::from_str(text).map_err(|e| TopologyError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a file (does not check it).
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Reads, parses and checks a file.
    pub fn load_checked(path: &Path) -> Result<Self, TopologyError> {
        let topology = Self::load(path)?;
        topology.check()?;
        Ok(topology)
    }

    /// Names every problem: bad names, duplicates, unknown regions, clashing addresses.
    pub fn check(&self) -> Result<(), TopologyError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TopologyError::Problems(problems))
        }
    }

    /// Every problem, as readable sentences.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(label_problem("network name", &self.network));
        let mut regions = BTreeSet::new();
        for region in &self.regions {
            problems.extend(label_problem("region name", &region.name));
            if !regions.insert(region.name.as_str()) {
                problems.push(format!("region {:?} is listed twice", region.name));
            }
        }
        if self.nodes.is_empty() {
            problems.push("the topology has no nodes".into());
        }
        let mut names = BTreeSet::new();
        // (protocol, address) -> first user, so TCP and UDP on the same port do not clash.
        let mut tcp: BTreeMap<(String, SocketAddr), String> = BTreeMap::new();
        let mut udp: BTreeMap<(String, SocketAddr), String> = BTreeMap::new();
        for node in &self.nodes {
            problems.extend(label_problem("node name", &node.name));
            if let Some(host) = &node.host {
                let valid = host.len() <= 253
                    && host
                        .split('.')
                        .all(|label| label_problem("host label", label).is_none());
                if !valid {
                    problems.push(format!(
                        "node {:?}: host {host:?} is not a lower-case DNS name",
                        node.name
                    ));
                }
            }
            if !names.insert(node.name.as_str()) {
                problems.push(format!("node name {:?} is used twice", node.name));
            }
            if !regions.contains(node.region.as_str()) {
                problems.push(format!(
                    "node {:?} is in unknown region {:?} (known: {})",
                    node.name,
                    node.region,
                    regions.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
            if node.organisation_ura.len() != 8
                || !node.organisation_ura.bytes().all(|b| b.is_ascii_digit())
            {
                problems.push(format!(
                    "node {:?}: organisation_ura {:?} must be 8 digits",
                    node.name, node.organisation_ura
                ));
            }
            if node.organisation_name.trim().is_empty() {
                problems.push(format!("node {:?}: organisation_name is empty", node.name));
            }
            for (what, addr, is_udp) in [
                ("http", node.http, false),
                ("gossip", node.gossip, false),
                ("data", node.data, true),
            ] {
                let table = if is_udp { &mut udp } else { &mut tcp };
                let user = format!("{}.{what}", node.name);
                if addr.port() == 0 {
                    problems.push(format!("{user} = {addr} needs a fixed port"));
                    continue;
                }
                // Nodes on their own hosts cannot clash with each other.
                let place = node.host.clone().unwrap_or_default();
                let clash = table.iter().find(|((other_place, other), _)| {
                    *other_place == place
                        && other.port() == addr.port()
                        && (other.ip() == addr.ip()
                            || other.ip().is_unspecified()
                            || addr.ip().is_unspecified())
                });
                if let Some(((_, other_addr), other_user)) = clash {
                    problems.push(format!(
                        "{user} = {addr} clashes with {other_user} = {other_addr}"
                    ));
                } else {
                    table.insert((place, addr), user);
                }
            }
        }
        let (evaluators, threshold) = self.evaluators();
        if !self.nodes.is_empty() && (threshold == 0 || usize::from(threshold) > evaluators.len()) {
            problems.push(format!(
                "evaluator_threshold = {threshold} with {} evaluator node(s): it must be between 1 and the number of evaluators",
                evaluators.len()
            ));
        }
        if evaluators.len() > zorgmesh_protocol::oprf::MAX_EVALUATORS {
            problems.push(format!(
                "{} evaluators; at most {} are allowed",
                evaluators.len(),
                zorgmesh_protocol::oprf::MAX_EVALUATORS
            ));
        }
        problems
    }

    /// The evaluator nodes (by name, in share-index order) and the threshold: the nodes
    /// marked `evaluator = true`, or else the first node of every region, topped up round
    /// robin over the regions to three where the mesh has three nodes; the threshold is
    /// `evaluator_threshold` or a majority.
    pub fn evaluators(&self) -> (Vec<String>, u16) {
        let marked: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.evaluator)
            .map(|n| n.name.clone())
            .collect();
        let chosen = if marked.is_empty() {
            let mut per_region: Vec<Vec<&NodeSpec>> = self
                .regions
                .iter()
                .map(|r| self.nodes_in(&r.name).collect())
                .collect();
            per_region.retain(|nodes| !nodes.is_empty());
            let want = per_region.len().max(3.min(self.nodes.len()));
            let mut chosen = Vec::new();
            let mut round = 0;
            while chosen.len() < want && per_region.iter().any(|n| n.len() > round) {
                for nodes in &per_region {
                    if chosen.len() < want {
                        if let Some(node) = nodes.get(round) {
                            chosen.push(node.name.clone());
                        }
                    }
                }
                round += 1;
            }
            chosen
        } else {
            marked
        };
        let n = chosen.len() as u16;
        let threshold = self.evaluator_threshold.unwrap_or(n / 2 + 1);
        (chosen, threshold)
    }

    /// Nodes of a region.
    pub fn nodes_in<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a NodeSpec> + 'a {
        self.nodes.iter().filter(move |n| n.region == region)
    }
}

/// Which peers a node dials at start: everyone in small meshes; otherwise up to three of
/// its own region and the first node of every other region.
pub fn bootstrap_peers<'a>(topology: &'a Topology, node: &NodeSpec) -> Vec<&'a NodeSpec> {
    let others: Vec<&NodeSpec> = topology
        .nodes
        .iter()
        .filter(|n| n.name != node.name)
        .collect();
    if others.len() <= 8 {
        return others;
    }
    let mut chosen: Vec<&NodeSpec> = others
        .iter()
        .filter(|n| n.region == node.region)
        .take(3)
        .copied()
        .collect();
    for region in &topology.regions {
        if region.name != node.region {
            if let Some(first) = others.iter().find(|n| n.region == region.name) {
                chosen.push(first);
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
network = "zorgnet"
[[region]]
name = "noord"
[[region]]
name = "zuid"
[[node]]
name = "umcg"
region = "noord"
role = "institution"
organisation_ura = "00001001"
organisation_name = "UMCG"
http = "127.0.0.1:8101"
gossip = "127.0.0.1:9101"
data = "127.0.0.1:9101"
[[node]]
name = "rp-zuid"
region = "zuid"
role = "replication-platform"
organisation_ura = "00001002"
organisation_name = "RP Zuid"
http = "127.0.0.1:8102"
gossip = "127.0.0.1:9102"
data = "127.0.0.1:7102"
"#;

    #[test]
    fn a_good_topology_passes() {
        Topology::parse(GOOD, "t.toml").unwrap().check().unwrap();
    }

    #[test]
    fn every_problem_is_named() {
        let bad = GOOD
            .replace("name = \"rp-zuid\"", "name = \"umcg\"")
            .replace("region = \"zuid\"\nrole", "region = \"oost\"\nrole")
            .replace("8102", "8101");
        let problems = Topology::parse(&bad, "t.toml").unwrap().problems();
        let text = problems.join("\n");
        assert!(text.contains("\"umcg\" is used twice"), "{text}");
        assert!(text.contains("unknown region \"oost\""), "{text}");
        assert!(
            text.contains("umcg.http = 127.0.0.1:8101 clashes"),
            "{text}"
        );
        assert_eq!(problems.len(), 3, "{text}");
    }

    #[test]
    fn unknown_fields_and_bad_roles_are_parse_errors() {
        let err = Topology::parse(&GOOD.replace("network =", "netwerk ="), "t.toml").unwrap_err();
        assert!(err.to_string().contains("netwerk"), "{err}");
        let err =
            Topology::parse(&GOOD.replace("\"institution\"", "\"clinic\""), "t.toml").unwrap_err();
        assert!(err.to_string().contains("clinic"), "{err}");
    }
}
