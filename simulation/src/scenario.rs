//! What an operator writes: a scenario in TOML (see `simulation/scenarios/`).

use serde::Deserialize;

/// Most nodes a scenario may have.
pub const MAX_NODES: usize = 100_000;
/// Most simulated time.
pub const MAX_DURATION_S: u64 = 7 * 24 * 3600;
/// The most entries a scenario preloads (`workload.holders_per_patient` × patients): twice
/// the national index.
pub const MAX_PRELOADED_ENTRIES: u64 = 200_000_000;

/// A scenario: regions of nodes, links, gossip and publishing settings, a workload and
/// faults over time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for the report.
    pub name: String,
    /// Simulated time the workload spans; the run goes on after it until every index has
    /// converged (or for as long again at most).
    pub duration_s: u64,
    /// Anti-entropy interval of every node.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_ms: u64,
    /// The regions and how many nodes each has.
    pub regions: Vec<Region>,
    /// Link latency, jitter and loss.
    pub links: Links,
    /// Gossip settings.
    #[serde(default)]
    pub gossip: Gossip,
    /// How holders cut their batches.
    #[serde(default)]
    pub publishing: Publishing,
    /// What is published.
    pub workload: Workload,
    /// Faults over time.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// How many nodes' indexes keep every entry and are measured (spread evenly over the
    /// nodes, the first included); the others run the same index on a store that keeps
    /// nothing, which changes no verdict, so propagation, traffic and convergence stay
    /// exact for every node. Default: every node.
    #[serde(default)]
    pub measured_indexes: Option<usize>,
}

fn default_sync_interval() -> u64 {
    30_000
}

/// One region.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Its name.
    pub name: String,
    /// Its nodes (each holds data and publishes).
    pub nodes: usize,
}

/// One kind of link.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One-way latency.
    pub latency_ms: u64,
    /// Uniform jitter added to the latency, at most this much.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Chance that a packet is lost (0 to 1). Gossip and fetches run over reliable
    /// streams, so a loss delays a message by a retransmission timeout (one round trip
    /// plus 25 ms, QUIC's probe timeout) rather than dropping it.
    #[serde(default)]
    pub loss: f64,
}

/// Links within regions (the default) and between named pairs of regions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Links {
    /// Latency within a region, and between regions no pair names.
    pub latency_ms: u64,
    /// Jitter of those links.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Loss of those links.
    #[serde(default)]
    pub loss: f64,
    /// Links between two regions.
    #[serde(default)]
    pub between: Vec<RegionPair>,
}

/// The link between two regions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPair {
    /// The two regions.
    pub regions: [String; 2],
    /// One-way latency.
    pub latency_ms: u64,
    /// Jitter.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Loss.
    #[serde(default)]
    pub loss: f64,
}

/// Gossip settings (gossipsub's eager push over a mesh of peers).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gossip {
    /// Mesh peers of each node (gossipsub's D).
    pub mesh_degree: usize,
    /// Which nodes are connected (see [`Connections`]).
    #[serde(default)]
    pub connections: Connections,
}

impl Default for Gossip {
    fn default() -> Self {
        Self {
            mesh_degree: 6,
            connections: Connections::default(),
        }
    }
}

/// Which nodes hold a gossip connection to which.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Connections {
    /// Each node is connected to about `mesh_degree` random others, and its gossipsub mesh
    /// is those connections.
    #[default]
    Random,
    /// As real nodes connect: each dials the peers `zorgmesh topology generate` gives it
    /// (everyone in a mesh of up to nine nodes; else three of its own region and the first
    /// node of every other region), and is dialled back. Its gossipsub mesh is up to
    /// `mesh_degree` of its connections (a node takes no more than twice that, gossipsub's
    /// `mesh_n_high`); a holder publishes its own batches to every connection (gossipsub's
    /// flood publishing) and forwards to its mesh.
    Bootstrap,
}

/// How holders cut batches.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publishing {
    /// A batch is cut this long after its first entry was staged.
    pub batch_window_ms: u64,
    /// ... or when it holds this many entries.
    pub batch_max_entries: usize,
}

impl Default for Publishing {
    fn default() -> Self {
        Self {
            batch_window_ms: 200,
            batch_max_entries: 1024,
        }
    }
}

/// What is published: `updates` locator updates, spread evenly (with seeded jitter) over
/// the duration, each for a patient drawn from `patients`, at a holder drawn from every
/// node.
///
/// `holders_per_patient = H` starts the mesh as it stands after the load: every patient
/// already has an entry at `H` distinct holders (drawn from every node), in every measured
/// index. These entries are written straight into the measured stores (the real
/// `MemoryEntries`) and are not gossiped: no index's verdict reads its entries, so what
/// the run measures of propagation, traffic, faults and convergence is exactly what it
/// would be without them (`tests/scenarios.rs` checks this), while the index figures are
/// those of an index holding the whole national load.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Distinct patients.
    pub patients: u64,
    /// Locator updates in all.
    pub updates: u64,
    /// Holders every patient already has entries at when the run starts.
    #[serde(default)]
    pub holders_per_patient: u32,
}

/// A fault over time. Nodes are named `<region>-<n>`, `n` counting from 1 within the
/// region (`noord-1` is the first node of region `noord`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Every link between the two regions drops everything from `at_s` until `heal_s`
    /// (connections break: what was in flight is lost, anti-entropy fills it in).
    Partition {
        /// The two regions.
        regions: [String; 2],
        /// When the cut starts.
        at_s: u64,
        /// When it heals.
        heal_s: u64,
    },
    /// A node goes down at `at_s` and starts again at `restart_s` with what it had kept
    /// durably (its index and its log); writes sent to it meanwhile are retried by their
    /// source after the restart.
    Crash {
        /// The node.
        node: String,
        /// When it goes down.
        at_s: u64,
        /// When it is back.
        restart_s: u64,
    },
    /// A node joins the network at `at_s` with an empty index (before, it is not in
    /// service and receives no writes).
    LateJoin {
        /// The node.
        node: String,
        /// When it joins.
        at_s: u64,
    },
    /// The network CA revokes a node at `at_s`: a new revocation list is handed to one
    /// other node and spreads by gossip and anti-entropy; every node that applies it drops
    /// the revoked node's entries and connections.
    Revoke {
        /// The revoked node.
        node: String,
        /// When the CA issues the list.
        at_s: u64,
    },
    /// Too few evaluators answer from `at_s` until `until_s`: a holder cannot derive the
    /// key of a patient it has not held before, and retries as the node's key deriver
    /// does (100 ms, doubling up to 10 s); updates for patients it already holds go on.
    EvaluatorOutage {
        /// When the outage starts.
        at_s: u64,
        /// When enough evaluators answer again.
        until_s: u64,
    },
}

impl Fault {
    /// When the fault's effect ends (heal, restart, join, the list issued, the outage
    /// over), in seconds: convergence after it is measured from then.
    pub fn ends_at_s(&self) -> u64 {
        match self {
            Fault::Partition { heal_s, .. } => *heal_s,
            Fault::Crash { restart_s, .. } => *restart_s,
            Fault::LateJoin { at_s, .. } | Fault::Revoke { at_s, .. } => *at_s,
            Fault::EvaluatorOutage { until_s, .. } => *until_s,
        }
    }

    /// A short description for the report.
    pub fn describe(&self) -> String {
        match self {
            Fault::Partition {
                regions,
                at_s,
                heal_s,
            } => format!(
                "partition {} | {} from {at_s} s to {heal_s} s",
                regions[0], regions[1]
            ),
            Fault::Crash {
                node,
                at_s,
                restart_s,
            } => format!("{node} down from {at_s} s to {restart_s} s"),
            Fault::LateJoin { node, at_s } => format!("{node} joins at {at_s} s"),
            Fault::Revoke { node, at_s } => format!("{node} revoked at {at_s} s"),
            Fault::EvaluatorOutage { at_s, until_s } => {
                format!("evaluators out from {at_s} s to {until_s} s")
            }
        }
    }
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML, or not a scenario.
    #[error("the scenario is not valid: {0}")]
    Parse(toml::de::Error),
    /// A value out of range or a name that is not defined.
    #[error("the scenario is not valid: {0}")]
    Invalid(String),
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(ScenarioError::Parse)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Every node's region index, in node order.
    pub fn node_regions(&self) -> Vec<usize> {
        self.regions
            .iter()
            .enumerate()
            .flat_map(|(r, region)| std::iter::repeat_n(r, region.nodes))
            .collect()
    }

    /// Every node's name, `<region>-<n>`, in node order.
    pub fn node_names(&self) -> Vec<String> {
        self.regions
            .iter()
            .flat_map(|region| (1..=region.nodes).map(move |n| format!("{}-{n}", region.name)))
            .collect()
    }

    /// The index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        let (region, n) = name.rsplit_once('-')?;
        let n: usize = n.parse().ok()?;
        let r = self.region_index(region)?;
        if n == 0 || n > self.regions[r].nodes {
            return None;
        }
        Some(self.regions[..r].iter().map(|r| r.nodes).sum::<usize>() + n - 1)
    }

    /// The index of a region by name.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        let nodes: usize = self.regions.iter().map(|r| r.nodes).sum();
        if !(2..=MAX_NODES).contains(&nodes) {
            return invalid(format!("between 2 and {MAX_NODES} nodes, not {nodes}"));
        }
        if self.duration_s == 0 || self.duration_s > MAX_DURATION_S {
            return invalid(format!("duration_s between 1 and {MAX_DURATION_S}"));
        }
        if !(100..=3_600_000).contains(&self.sync_interval_ms) {
            return invalid("sync_interval_ms between 100 and 3600000".into());
        }
        if self.gossip.mesh_degree == 0 || self.gossip.mesh_degree >= nodes {
            return invalid(format!(
                "gossip.mesh_degree between 1 and {} (the nodes less one)",
                nodes - 1
            ));
        }
        if !(1..=zorgmesh_protocol::batch::MAX_ENTRIES_PER_BATCH)
            .contains(&self.publishing.batch_max_entries)
        {
            return invalid(format!(
                "publishing.batch_max_entries between 1 and {}",
                zorgmesh_protocol::batch::MAX_ENTRIES_PER_BATCH
            ));
        }
        if self.workload.patients == 0 || self.workload.updates > 100_000_000 {
            return invalid("workload.patients at least 1, workload.updates at most 10^8".into());
        }
        let holders = u64::from(self.workload.holders_per_patient);
        if holders > nodes as u64 || holders * self.workload.patients > MAX_PRELOADED_ENTRIES {
            return invalid(format!(
                "workload.holders_per_patient at most the nodes ({nodes}), and at most \
                 {MAX_PRELOADED_ENTRIES} preloaded entries (patients × holders) in all"
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for region in &self.regions {
            if !names.insert(region.name.as_str()) {
                return invalid(format!("region {} is named twice", region.name));
            }
        }
        let loss_ok = |l: f64| (0.0..1.0).contains(&l);
        if !loss_ok(self.links.loss) {
            return invalid("links.loss at least 0 and below 1".into());
        }
        for pair in &self.links.between {
            for name in &pair.regions {
                if self.region_index(name).is_none() {
                    return invalid(format!("links.between names unknown region {name}"));
                }
            }
            if !loss_ok(pair.loss) {
                return invalid("links.between.loss at least 0 and below 1".into());
            }
        }
        if let Some(measured) = self.measured_indexes {
            if !(1..=nodes).contains(&measured) {
                return invalid(format!("measured_indexes between 1 and {nodes}"));
            }
        }
        let mut revoked = std::collections::BTreeSet::new();
        for fault in &self.faults {
            let node_known = |name: &String| {
                if self.node_index(name).is_none() {
                    Err(ScenarioError::Invalid(format!(
                        "a fault names unknown node {name} (nodes are named <region>-<n>, n from 1)"
                    )))
                } else {
                    Ok(())
                }
            };
            match fault {
                Fault::Partition {
                    regions,
                    at_s,
                    heal_s,
                } => {
                    for name in regions {
                        if self.region_index(name).is_none() {
                            return invalid(format!("a partition names unknown region {name}"));
                        }
                    }
                    if heal_s <= at_s {
                        return invalid("a partition heals after it starts".into());
                    }
                }
                Fault::Crash {
                    node,
                    at_s,
                    restart_s,
                } => {
                    node_known(node)?;
                    if restart_s <= at_s {
                        return invalid(format!("{node} restarts after it crashes"));
                    }
                }
                Fault::LateJoin { node, .. } => node_known(node)?,
                Fault::Revoke { node, .. } => {
                    node_known(node)?;
                    if !revoked.insert(node.clone()) {
                        return invalid(format!("{node} is revoked twice"));
                    }
                }
                Fault::EvaluatorOutage { at_s, until_s } => {
                    if until_s <= at_s {
                        return invalid("an evaluator outage ends after it starts".into());
                    }
                }
            }
            if fault.ends_at_s() > MAX_DURATION_S {
                return invalid(format!("a fault ends after {MAX_DURATION_S} s"));
            }
        }
        if revoked.len() >= nodes {
            return invalid("at least one node is not revoked".into());
        }
        Ok(())
    }
}
