//! # zorgmesh-simulation
//!
//! A deterministic, virtual-time simulation of a zorgmesh network for operators: *if these
//! regions and links, this batch window and sync interval, these faults — how fast is new
//! data findable everywhere, what does each node receive?*
//!
//! It drives the protocol crate's own code, not a second implementation: every simulated
//! node has a real [`zorgmesh_protocol::PublisherLog`] that cuts and signs batches (ed25519)
//! and a real [`zorgmesh_protocol::LocatorIndex`] that verifies and applies them, with its
//! verdicts (applied, buffered behind a gap, duplicate) deciding what gossip forwards, and
//! anti-entropy driven by the node's own [`zorgmesh_protocol::sync::SyncSession`], and
//! revocation lists applied by [`zorgmesh_protocol::revocation::RevocationState`]. What is
//! modelled: links (latency, jitter, packet loss as retransmission delay, partitions),
//! gossipsub's eager push over a mesh of `mesh_degree` peers (random, or connected as real
//! nodes connect, with flood publishing), the bytes every message takes on the wire (see
//! [`wire`]), faults over time (region partitions, node crashes and restarts, late joiners,
//! revoked nodes, evaluator outages), and a national load preloaded into the measured
//! indexes. Not yet modelled: gossipsub's lazy IHAVE/IWANT and peer scoring, and link
//! bandwidth. `scripts/sim-fidelity.sh` compares a scenario with real node processes.
//!
//! ```text
//! zorgmesh sim run simulation/scenarios/small.toml --seed 1 --out target/sim
//! ```

pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod store;
pub mod sweep;
pub mod wire;

pub use report::Report;
pub use run::{run, run_observed, Progress};
pub use scenario::{Scenario, ScenarioError};
