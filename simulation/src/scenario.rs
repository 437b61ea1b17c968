//! What an operator writes: a scenario in TOML (see `simulation/scenarios/`).

use serde::Deserialize;

/// Most nodes a scenario may have.
pub const MAX_NODES: usize = 100_000;
/// Most simulated time.
pub const MAX_DURATION_S: u64 = 7 * 24 * 3600;

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
    /// Chance that a message is lost (0 to 1).
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
}

impl Default for Gossip {
    fn default() -> Self {
        Self { mesh_degree: 6 }
    }
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
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Distinct patients.
    pub patients: u64,
    /// Locator updates in all.
    pub updates: u64,
}

/// A fault over time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Every link between the two regions drops everything from `at_s` until `heal_s`.
    Partition {
        /// The two regions.
        regions: [String; 2],
        /// When the cut starts.
        at_s: u64,
        /// When it heals.
        heal_s: u64,
    },
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
        let mut names = std::collections::BTreeSet::new();
        for region in &self.regions {
            if !names.insert(region.name.as_str()) {
                return invalid(format!("region {} is named twice", region.name));
            }
        }
        let loss_ok = |l: f64| (0.0..=1.0).contains(&l);
        if !loss_ok(self.links.loss) {
            return invalid("links.loss between 0 and 1".into());
        }
        for pair in &self.links.between {
            for name in &pair.regions {
                if self.region_index(name).is_none() {
                    return invalid(format!("links.between names unknown region {name}"));
                }
            }
            if !loss_ok(pair.loss) {
                return invalid("links.between.loss between 0 and 1".into());
            }
        }
        for fault in &self.faults {
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
            }
        }
        Ok(())
    }
}
