//! The simulation loop: virtual time, an event queue, and per node the protocol's own
//! [`PublisherLog`] and [`LocatorIndex`]. Gossip is modelled as gossipsub's eager push
//! over a mesh of `mesh_degree` peers per node, forwarding what the index accepted (as the
//! node does); anti-entropy as the node's: every `sync_interval_ms` a node asks a random
//! peer for its heads and fetches what it lacks (`sync::plan_requests`).
//!
//! Everything is drawn from one seeded generator and every tie in the queue is broken by
//! insertion order, so a scenario and a seed give the same report, byte for byte.

use crate::report::{Histogram, Report};
use crate::scenario::{Fault, Scenario};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use zorgmesh_protocol::batch::SignedBatch;
use zorgmesh_protocol::index::{BatchOutcome, IndexLimits};
use zorgmesh_protocol::{
    BatchPolicy, LocatorEntry, LocatorIndex, NodeId, NodeRole, PatientKey, PublisherInfo,
    PublisherLog,
};

/// Virtual time in microseconds.
type Micros = u64;

const MS: Micros = 1_000;
/// The wall-clock epoch virtual time starts at (certificates are valid around it).
const EPOCH_MS: u64 = 1_767_225_600_000;

enum Event {
    /// A locator update for `patient` at holder `node`.
    Stage { node: usize, patient: u64 },
    /// A holder's publisher log may cut a batch.
    Poll { node: usize },
    /// A batch reaches `to` from `from`.
    Deliver {
        to: usize,
        from: usize,
        batch: usize,
    },
    /// A node starts an anti-entropy round.
    SyncTick { node: usize },
    /// A peer's heads reach the node that asked.
    Heads {
        node: usize,
        peer: usize,
        heads: BTreeMap<NodeId, u64>,
    },
}

struct SimNode {
    region: usize,
    key: SigningKey,
    log: PublisherLog,
    poll_at: Option<Micros>,
    index: LocatorIndex,
    mesh: Vec<usize>,
    /// gossipsub's seen-message cache: batch ids this node has had (a bit each).
    seen: Vec<u64>,
    sent_bytes: u64,
    received_bytes: u64,
    useful_bytes: u64,
}

/// Counters of a run.
#[derive(Default)]
pub(crate) struct Counters {
    pub delivered: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub sync_rounds: u64,
    pub sync_batches: u64,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    rng: ChaCha8Rng,
    now: Micros,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    nodes: Vec<SimNode>,
    node_ids: Vec<NodeId>,
    publisher_of: BTreeMap<NodeId, usize>,
    /// Every batch cut, with its encoded size; by publisher, the batch ids in sequence order.
    batches: Vec<(Arc<SignedBatch>, u64)>,
    log_of: Vec<Vec<usize>>,
    propagation: Histogram,
    counters: Counters,
}

impl<'a> Sim<'a> {
    fn schedule(&mut self, at: Micros, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    fn link(&self, a: usize, b: usize) -> (Micros, Micros, f64) {
        let (ra, rb) = (self.nodes[a].region, self.nodes[b].region);
        let links = &self.scenario.links;
        let mut spec = (links.latency_ms, links.jitter_ms, links.loss);
        if ra != rb {
            let (na, nb) = (
                &self.scenario.regions[ra].name,
                &self.scenario.regions[rb].name,
            );
            if let Some(pair) = links.between.iter().find(|p| {
                (&p.regions[0] == na && &p.regions[1] == nb)
                    || (&p.regions[0] == nb && &p.regions[1] == na)
            }) {
                spec = (pair.latency_ms, pair.jitter_ms, pair.loss);
            }
        }
        (spec.0 * MS, spec.1 * MS, spec.2)
    }

    fn cut_off(&self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.nodes[a].region, self.nodes[b].region);
        self.scenario.faults.iter().any(|fault| match fault {
            Fault::Partition {
                regions,
                at_s,
                heal_s,
            } => {
                let (x, y) = (
                    self.scenario.region_index(&regions[0]),
                    self.scenario.region_index(&regions[1]),
                );
                let pair = (Some(ra) == x && Some(rb) == y) || (Some(ra) == y && Some(rb) == x);
                pair && self.now >= at_s * 1_000 * MS && self.now < heal_s * 1_000 * MS
            }
        })
    }

    /// When a message sent now from `a` reaches `b`, or `None` when it is lost.
    fn transit(&mut self, a: usize, b: usize) -> Option<Micros> {
        if self.cut_off(a, b) {
            self.counters.lost += 1;
            return None;
        }
        let (latency, jitter, loss) = self.link(a, b);
        if loss > 0.0 && self.rng.gen_bool(loss) {
            self.counters.lost += 1;
            return None;
        }
        let jitter = if jitter > 0 {
            self.rng.gen_range(0..=jitter)
        } else {
            0
        };
        Some(self.now + latency + jitter)
    }

    fn send_batch(&mut self, from: usize, to: usize, batch: usize) {
        let bytes = self.batches[batch].1;
        self.nodes[from].sent_bytes += bytes;
        if let Some(at) = self.transit(from, to) {
            self.schedule(at, Event::Deliver { to, from, batch });
        }
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.now / MS
    }

    fn schedule_poll(&mut self, node: usize) {
        if let Some(deadline) = self.nodes[node].log.next_deadline() {
            let at = (deadline.saturating_sub(EPOCH_MS)) * MS;
            let at = at.max(self.now);
            if self.nodes[node].poll_at.is_none_or(|p| p > at) {
                self.nodes[node].poll_at = Some(at);
                self.schedule(at, Event::Poll { node });
            }
        }
    }

    /// A holder's new batch: into its own index, then pushed to its mesh.
    fn publish(&mut self, node: usize, batch: SignedBatch) {
        let bytes = batch.to_bytes().len() as u64;
        let id = self.batches.len();
        let publisher = self.publisher_of[&batch.body.publisher];
        self.log_of[publisher].push(id);
        let own = batch.clone();
        self.batches.push((Arc::new(batch), bytes));
        let (word, bit) = (id / 64, 1u64 << (id % 64));
        let seen = &mut self.nodes[node].seen;
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        seen[word] |= bit;
        let now_ms = self.now_ms();
        if let Err(e) = self.nodes[node].index.receive_batch(own, now_ms) {
            panic!("a holder's own batch was refused by its index: {e}");
        }
        for peer in self.nodes[node].mesh.clone() {
            self.send_batch(node, peer, id);
        }
    }

    /// Feeds a batch to `node`'s index; returns whether it was new (to forward).
    fn apply(&mut self, node: usize, batch: usize, bytes: u64) -> bool {
        let signed = (*self.batches[batch].0).clone();
        let now_ms = self.now_ms();
        self.nodes[node].received_bytes += bytes;
        match self.nodes[node].index.receive_batch(signed, now_ms) {
            Ok(BatchOutcome::Applied { sequences, .. }) => {
                let publisher = self.publisher_of[&self.batches[batch].0.body.publisher];
                for sequence in sequences {
                    let id = self.log_of[publisher][(sequence - 1) as usize];
                    let applied = &self.batches[id].0;
                    self.nodes[node].useful_bytes += applied.body.entries.len() as u64
                        * zorgmesh_protocol::locator::ENTRY_BYTES as u64;
                    for entry in &applied.body.entries {
                        self.propagation
                            .record(now_ms.saturating_sub(entry.updated_at_ms));
                    }
                }
                true
            }
            Ok(BatchOutcome::Buffered { .. }) => true,
            Ok(BatchOutcome::Duplicate) => {
                self.counters.duplicates += 1;
                false
            }
            Err(e) => panic!("a valid batch was refused: {e}"),
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Stage { node, patient } => {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&patient.to_be_bytes());
                let now_ms = self.now_ms();
                let holder = self.node_ids[node];
                self.nodes[node].log.stage(
                    LocatorEntry {
                        patient: PatientKey(key),
                        holder,
                        categories: zorgmesh_protocol::locator::category::OBSERVATIONS,
                        commitment: [(patient % 251) as u8; 32],
                        updated_at_ms: now_ms,
                        retracted: false,
                    },
                    now_ms,
                );
                self.schedule_poll(node);
            }
            Event::Poll { node } => {
                self.nodes[node].poll_at = None;
                let now_ms = self.now_ms();
                let key = self.nodes[node].key.clone();
                while let Some(batch) = self.nodes[node].log.poll(now_ms, &key) {
                    self.publish(node, batch);
                }
                self.schedule_poll(node);
            }
            Event::Deliver { to, from, batch } => {
                self.counters.delivered += 1;
                let bytes = self.batches[batch].1;
                // gossipsub drops a message it has seen before the node sees it.
                let (word, bit) = (batch / 64, 1u64 << (batch % 64));
                let seen = &mut self.nodes[to].seen;
                if seen.len() <= word {
                    seen.resize(word + 1, 0);
                }
                if seen[word] & bit != 0 {
                    self.nodes[to].received_bytes += bytes;
                    self.counters.duplicates += 1;
                    return;
                }
                seen[word] |= bit;
                if self.apply(to, batch, bytes) {
                    for peer in self.nodes[to].mesh.clone() {
                        if peer != from {
                            self.send_batch(to, peer, batch);
                        }
                    }
                }
            }
            Event::SyncTick { node } => {
                self.counters.sync_rounds += 1;
                let peer = loop {
                    let p = self.rng.gen_range(0..self.nodes.len());
                    if p != node {
                        break p;
                    }
                };
                // The peer answers with its heads after a round trip.
                if let Some(there) = self.transit(node, peer) {
                    let heads = self.nodes[peer].index.publisher_heads();
                    let saved = self.now;
                    self.now = there;
                    let back = self.transit(peer, node);
                    self.now = saved;
                    if let Some(back) = back {
                        let bytes = 40 * heads.len() as u64;
                        self.nodes[peer].sent_bytes += bytes;
                        self.nodes[node].received_bytes += bytes;
                        self.schedule(back, Event::Heads { node, peer, heads });
                    }
                }
                let next = self.now + self.scenario.sync_interval_ms * MS;
                self.schedule(next, Event::SyncTick { node });
            }
            Event::Heads { node, peer, heads } => {
                let ours = self.nodes[node].index.publisher_heads();
                let remote = zorgmesh_protocol::sync::heads_vector(&heads);
                for request in zorgmesh_protocol::sync::plan_requests(&ours, &remote) {
                    let publisher = self.publisher_of[&request.publisher];
                    let upto = heads[&request.publisher];
                    for sequence in
                        request.from..(request.from + u64::from(request.limit)).min(upto + 1)
                    {
                        let id = self.log_of[publisher][(sequence - 1) as usize];
                        self.counters.sync_batches += 1;
                        self.send_batch(peer, node, id);
                    }
                }
            }
        }
    }

    /// True when every node holds every publisher's last batch.
    fn converged(&self) -> bool {
        let heads: BTreeMap<NodeId, u64> = self
            .node_ids
            .iter()
            .enumerate()
            .map(|(p, id)| (*id, self.log_of[p].len() as u64))
            .filter(|(_, s)| *s > 0)
            .collect();
        self.nodes.iter().all(|n| {
            let held = n.index.publisher_heads();
            heads.iter().all(|(id, s)| held.get(id) == Some(s))
        })
    }
}

fn publisher_info(node: NodeId, name: String, region: &str) -> PublisherInfo {
    PublisherInfo {
        node,
        name,
        organisation_ura: "00000000".into(),
        organisation_name: "simulated".into(),
        region: region.into(),
        role: NodeRole::Institution,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
    }
}

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let regions = scenario.node_regions();
    let count = regions.len();
    let keys: Vec<SigningKey> = (0..count)
        .map(|_| SigningKey::from_bytes(&rng.gen::<[u8; 32]>()))
        .collect();
    let node_ids: Vec<NodeId> = keys
        .iter()
        .map(|k| NodeId(k.verifying_key().to_bytes()))
        .collect();
    let infos: Vec<PublisherInfo> = node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| publisher_info(*id, format!("node-{i}"), &scenario.regions[regions[i]].name))
        .collect();
    // A mesh of about `mesh_degree` peers each, made symmetric.
    let mut mesh: Vec<Vec<usize>> = vec![Vec::new(); count];
    for node in 0..count {
        while mesh[node].len() < scenario.gossip.mesh_degree {
            let peer = rng.gen_range(0..count);
            if peer != node && !mesh[node].contains(&peer) {
                mesh[node].push(peer);
                if !mesh[peer].contains(&node) {
                    mesh[peer].push(node);
                }
            }
        }
    }
    let policy = BatchPolicy {
        max_entries: scenario.publishing.batch_max_entries,
        window_ms: scenario.publishing.batch_window_ms,
    };
    // Each batch's signature is checked once for all simulated nodes (same verdicts).
    let verified = zorgmesh_protocol::index::VerifiedSignatures::new();
    let nodes: Vec<SimNode> = (0..count)
        .map(|i| {
            let mut index = LocatorIndex::new(IndexLimits {
                max_publishers: count + 1,
                ..IndexLimits::default()
            });
            index.share_verified_signatures(verified.clone());
            for info in &infos {
                index.admit_publisher(info.clone());
            }
            let mut peers = mesh[i].clone();
            peers.sort_unstable();
            SimNode {
                region: regions[i],
                key: keys[i].clone(),
                log: PublisherLog::new(node_ids[i], policy, None),
                poll_at: None,
                index,
                mesh: peers,
                seen: Vec::new(),
                sent_bytes: 0,
                received_bytes: 0,
                useful_bytes: 0,
            }
        })
        .collect();
    let publisher_of = node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    let mut sim = Sim {
        scenario,
        rng,
        now: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        next_event: 0,
        nodes,
        node_ids,
        publisher_of,
        batches: Vec::new(),
        log_of: vec![Vec::new(); count],
        propagation: Histogram::default(),
        counters: Counters::default(),
    };
    // The workload, spread evenly with jitter over the duration.
    let span = scenario.duration_s * 1_000 * MS;
    let step = span / scenario.workload.updates.max(1);
    for n in 0..scenario.workload.updates {
        let at = n * step + sim.rng.gen_range(0..step.max(1));
        let node = sim.rng.gen_range(0..count);
        let patient = sim.rng.gen_range(0..scenario.workload.patients);
        sim.schedule(at, Event::Stage { node, patient });
    }
    for node in 0..count {
        let first = sim.rng.gen_range(0..scenario.sync_interval_ms * MS);
        sim.schedule(first, Event::SyncTick { node });
    }
    // Run through the workload, then until every index converged (at most as long again).
    let last_heal = scenario
        .faults
        .iter()
        .map(|Fault::Partition { heal_s, .. }| heal_s * 1_000 * MS)
        .max()
        .unwrap_or(0);
    let settle_from = span.max(last_heal) + scenario.publishing.batch_window_ms * MS;
    let give_up = settle_from + span.max(60_000 * MS);
    let mut converged_at = None;
    let mut next_check = settle_from;
    while let Some(Reverse((at, id))) = sim.queue.pop() {
        if at > give_up {
            break;
        }
        sim.now = at;
        let event = sim.events.remove(&id).expect("every queued event is kept");
        sim.handle(event);
        if sim.now >= next_check {
            next_check = sim.now + 100 * MS;
            if sim.converged() {
                converged_at = Some(sim.now);
                break;
            }
        }
    }
    crate::report::assemble(
        scenario,
        seed,
        &sim.nodes_view(),
        sim.batches.len(),
        &sim.propagation,
        &sim.counters,
        converged_at,
        settle_from,
    )
}

/// What the report needs of each node.
pub(crate) struct NodeView {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub useful_bytes: u64,
    pub live_entries: usize,
    pub index_bytes_per_entry: f64,
}

impl Sim<'_> {
    fn nodes_view(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|n| NodeView {
                sent_bytes: n.sent_bytes,
                received_bytes: n.received_bytes,
                useful_bytes: n.useful_bytes,
                live_entries: n.index.live_entries(),
                index_bytes_per_entry: n.index.store().bytes_per_entry(),
            })
            .collect()
    }
}
