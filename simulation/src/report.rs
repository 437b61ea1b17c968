//! The report of a run: JSON for tools, a summary for people.

use crate::run::{Counters, NodeView};
use crate::scenario::Scenario;
use serde::Serialize;

/// Propagation times in whole milliseconds, counted exactly up to 10 minutes (one bucket
/// per millisecond), beyond that in one overflow bucket: percentiles are exact, memory is
/// fixed (600,001 counters) whatever the number of samples.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    samples: u64,
    max: u64,
}

const HISTOGRAM_MS: usize = 600_000;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; HISTOGRAM_MS + 1],
            samples: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Counts one sample.
    pub fn record(&mut self, ms: u64) {
        self.counts[(ms as usize).min(HISTOGRAM_MS)] += 1;
        self.samples += 1;
        self.max = self.max.max(ms);
    }

    /// [`Histogram::percentile`] of each share in `shares` (ascending), in one pass.
    pub fn percentiles(&self, shares: &[f64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(shares.len());
        if self.samples == 0 {
            return vec![0; shares.len()];
        }
        let mut wanted = shares
            .iter()
            .map(|p| ((self.samples as f64) * p).ceil().max(1.0) as u64)
            .peekable();
        let mut seen = 0;
        for (ms, count) in self.counts.iter().enumerate() {
            seen += count;
            while wanted.next_if(|w| *w <= seen).is_some() {
                out.push(if ms == HISTOGRAM_MS {
                    self.max
                } else {
                    ms as u64
                });
            }
        }
        out.resize(shares.len(), self.max);
        out
    }

    /// The smallest value at or below which a share `p` of the samples lie.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        let wanted = ((self.samples as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return if ms == HISTOGRAM_MS {
                    self.max
                } else {
                    ms as u64
                };
            }
        }
        self.max
    }
}

/// Percentiles of the time from a locator update being staged at its holder to its entry
/// being in another node's index.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Propagation {
    /// Samples (entries × nodes that applied them, the holder itself included).
    pub samples: u64,
    /// Median, ms.
    pub p50_ms: u64,
    /// 95th percentile, ms.
    pub p95_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Slowest, ms.
    pub max_ms: u64,
    /// The distribution: entry `i` is the time within which `i / 2` percent of the samples
    /// had arrived (201 points, 0 % to 100 %).
    pub cdf_ms: Vec<u64>,
}

/// One node's figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeFigures {
    /// Its name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// Bytes it sent.
    pub sent_bytes: u64,
    /// Bytes it received.
    pub received_bytes: u64,
    /// Live entries in its index (`None`: its index is not measured).
    pub live_entries: Option<usize>,
    /// Bytes its in-memory index store holds, from its allocations (`None`: not
    /// measured).
    pub index_bytes: Option<u64>,
    /// Whether the CA revoked it.
    pub revoked: bool,
}

/// Traffic per node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Traffic {
    /// Mean bytes sent per node.
    pub sent_per_node: f64,
    /// Mean bytes received per node.
    pub received_per_node: f64,
    /// Most bytes received by one node.
    pub received_max: u64,
    /// Bytes received per byte of locator entry that entered an index.
    pub received_per_useful_byte: f64,
}

/// How the network absorbed one fault.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultOutcome {
    /// The fault.
    pub fault: String,
    /// When its effect ended (heal, restart, join, revocation issued, outage over), in
    /// simulated seconds.
    pub effect_ends_s: f64,
    /// How long after that every node that is up (and not revoked) held everything
    /// published until then and the newest revocation list; `None` when that never
    /// happened before the run ended.
    pub absorbed_after_s: Option<f64>,
}

/// The report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Locator updates published.
    pub updates: u64,
    /// Signed batches cut.
    pub batches: usize,
    /// Propagation times.
    pub propagation: Propagation,
    /// Traffic (batch encodings and heads vectors; gossip framing is not counted).
    pub traffic: Traffic,
    /// Gossip and anti-entropy messages.
    pub delivered: u64,
    /// Deliveries the index called duplicates.
    pub duplicates: u64,
    /// Gossip copies not sent because the receiver's IDONTWANT had arrived first.
    pub spared_by_idontwant: u64,
    /// Messages lost to partitions, nodes that were down or cut off, or a link that lost
    /// every retransmission.
    pub lost: u64,
    /// Retransmissions after packet loss.
    pub retransmissions: u64,
    /// Batches an index refused (a revoked publisher's).
    pub refused: u64,
    /// Writes sent to a node that was down, retried at its restart.
    pub writes_deferred: u64,
    /// Writes whose patient key waited for the evaluators.
    pub writes_waiting_for_keys: u64,
    /// Anti-entropy rounds.
    pub sync_rounds: u64,
    /// Batches sent by anti-entropy.
    pub sync_batches: u64,
    /// Whether every index held every batch before the run gave up.
    pub converged: bool,
    /// When that was, in simulated seconds.
    pub converged_at_s: Option<f64>,
    /// From when convergence was checked (after the workload and the last heal), seconds.
    pub settle_from_s: f64,
    /// How each fault was absorbed, in the order their effects ended.
    pub faults: Vec<FaultOutcome>,
    /// Entries of revoked nodes still in the index of any node that is not revoked (0
    /// once every node applied the revocation).
    pub revoked_entries_left: usize,
    /// Nodes whose index kept every entry and was measured (the others ran the same index
    /// on a store that keeps nothing; see the `store` module).
    pub measured_indexes: usize,
    /// Live entries in each node's index (the same everywhere once converged), from the
    /// first measured node that is not revoked.
    pub live_entries_per_node: usize,
    /// Bytes per entry the in-memory store of the first node that is not revoked holds, from
    /// its allocations.
    pub index_bytes_per_entry: f64,
    /// Every node's figures, in node order.
    pub per_node: Vec<NodeFigures>,
}

/// What a run hands the report.
pub(crate) struct RunResult<'a> {
    pub scenario: &'a Scenario,
    pub seed: u64,
    pub nodes: &'a [NodeView],
    pub batches: usize,
    pub propagation: &'a Histogram,
    pub counters: &'a Counters,
    pub converged_at: Option<u64>,
    pub settle_from: u64,
    pub faults: Vec<FaultOutcome>,
    pub revoked_entries_left: usize,
}

pub(crate) fn assemble(run: RunResult<'_>) -> Report {
    let RunResult {
        scenario,
        seed,
        nodes,
        batches,
        propagation,
        counters,
        converged_at,
        settle_from,
        faults,
        revoked_entries_left,
    } = run;
    let count = nodes.len().max(1) as f64;
    let received: u64 = nodes.iter().map(|n| n.received_bytes).sum();
    let useful: u64 = nodes.iter().map(|n| n.useful_bytes).sum();
    let reference = nodes
        .iter()
        .find(|n| !n.revoked && n.live_entries.is_some());
    Report {
        scenario: scenario.name.clone(),
        seed,
        nodes: nodes.len(),
        updates: scenario.workload.updates,
        batches,
        propagation: Propagation {
            samples: propagation.samples,
            p50_ms: propagation.percentile(0.50),
            p95_ms: propagation.percentile(0.95),
            p99_ms: propagation.percentile(0.99),
            max_ms: propagation.max,
            cdf_ms: propagation
                .percentiles(&(0..=200).map(|i| i as f64 / 200.0).collect::<Vec<_>>()),
        },
        traffic: Traffic {
            sent_per_node: round(nodes.iter().map(|n| n.sent_bytes).sum::<u64>() as f64 / count),
            received_per_node: round(received as f64 / count),
            received_max: nodes.iter().map(|n| n.received_bytes).max().unwrap_or(0),
            received_per_useful_byte: round(received as f64 / useful.max(1) as f64),
        },
        delivered: counters.delivered,
        duplicates: counters.duplicates,
        spared_by_idontwant: counters.spared,
        lost: counters.lost,
        retransmissions: counters.retransmissions,
        refused: counters.refused,
        writes_deferred: counters.writes_deferred,
        writes_waiting_for_keys: counters.writes_waiting_for_keys,
        sync_rounds: counters.sync_rounds,
        sync_batches: counters.sync_batches,
        converged: converged_at.is_some(),
        converged_at_s: converged_at.map(|us| round(us as f64 / 1e6)),
        settle_from_s: round(settle_from as f64 / 1e6),
        faults,
        revoked_entries_left,
        measured_indexes: nodes.iter().filter(|n| n.live_entries.is_some()).count(),
        live_entries_per_node: reference.and_then(|n| n.live_entries).unwrap_or(0),
        index_bytes_per_entry: round(
            reference
                .and_then(|n| n.index_bytes_per_entry)
                .unwrap_or(0.0),
        ),
        per_node: nodes
            .iter()
            .map(|n| NodeFigures {
                name: n.name.clone(),
                region: n.region.clone(),
                sent_bytes: n.sent_bytes,
                received_bytes: n.received_bytes,
                live_entries: n.live_entries,
                index_bytes: n
                    .live_entries
                    .zip(n.index_bytes_per_entry)
                    .map(|(live, per)| (per * live as f64).round() as u64),
                revoked: n.revoked,
            })
            .collect(),
    }
}

/// Three decimals, so that the JSON is the same on every machine.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        format!(
            "scenario {} (seed {}): {} nodes, {} updates in {} batches\n\
             propagation: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms\n\
             traffic: {:.0} bytes received per node, {:.2} per useful locator byte; {} duplicates ({} spared by IDONTWANT), {} lost\n\
             anti-entropy: {} rounds, {} batches fetched\n\
             {}",
            self.scenario,
            self.seed,
            self.nodes,
            self.updates,
            self.batches,
            self.propagation.p50_ms,
            self.propagation.p95_ms,
            self.propagation.p99_ms,
            self.propagation.max_ms,
            self.traffic.received_per_node,
            self.traffic.received_per_useful_byte,
            self.duplicates,
            self.spared_by_idontwant,
            self.lost,
            self.sync_rounds,
            self.sync_batches,
            match self.converged_at_s {
                Some(at) => format!(
                    "converged at {at:.1} s ({:.1} s after the workload and the last heal); {} live entries per index, {:.0} bytes each in memory",
                    at - self.settle_from_s,
                    self.live_entries_per_node,
                    self.index_bytes_per_entry
                ),
                None => "did NOT converge".into(),
            }
        ) + &self
            .faults
            .iter()
            .map(|f| match f.absorbed_after_s {
                Some(after) => format!("\nfault: {}: absorbed {after:.3} s after it ended", f.fault),
                None => format!("\nfault: {}: NOT absorbed", f.fault),
            })
            .collect::<String>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_one_pass_agree_with_each_percentile() {
        let mut histogram = Histogram::default();
        for ms in [3, 3, 5, 8, 13, 21, 34, 55, 700_000, 89] {
            histogram.record(ms);
        }
        let shares: Vec<f64> = (0..=200).map(|i| i as f64 / 200.0).collect();
        let all = histogram.percentiles(&shares);
        for (share, ms) in shares.iter().zip(&all) {
            assert_eq!(*ms, histogram.percentile(*share), "at {share}");
        }
        assert_eq!(*all.last().unwrap(), 700_000);
        assert_eq!(Histogram::default().percentiles(&[0.5]), vec![0]);
    }
}
