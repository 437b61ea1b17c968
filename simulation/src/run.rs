//! The simulation loop: virtual time, an event queue, and per node the protocol's own
//! [`PublisherLog`], [`LocatorIndex`], [`RevocationState`] and [`SyncSession`].
//!
//! - Gossip is gossipsub's eager push over a mesh of `mesh_degree` peers per node,
//!   forwarding what the index accepted (as the node does), with the seen-message cache
//!   dropping copies before the index sees them.
//! - Anti-entropy is the node's: every `sync_interval_ms` a node syncs with a random peer
//!   by driving a [`SyncSession`], one request and answer per step (revocations, digest,
//!   heads, one fetch per range).
//! - Links: latency plus uniform jitter; a lost packet delays its message by one
//!   retransmission timeout (streams are reliable); a partition or a node that is down
//!   drops it.
//!
//! Everything is drawn from one seeded generator and every tie in the queue is broken by
//! insertion order, so a scenario and a seed give the same report, byte for byte.

use crate::report::{FaultOutcome, Histogram, Report};
use crate::scenario::{Connections, Fault, Scenario};
use crate::store::{DiscardEntries, SimStore};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use zorgmesh_protocol::batch::SignedBatch;
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::index::{BatchOutcome, EntryStore, HashedBatch, IndexLimits};
use zorgmesh_protocol::record::{NodeRecord, SignedNodeRecord};
use zorgmesh_protocol::revocation::{
    Revocation, RevocationListBody, RevocationState, SignedRevocationList,
};
use zorgmesh_protocol::sync::{PublisherHead, RangeRequest, SyncSession, SyncStep};
use zorgmesh_protocol::{
    BatchPolicy, LocatorEntry, LocatorIndex, NodeId, NodeRole, PatientKey, PublisherInfo,
    PublisherLog,
};

/// Virtual time in microseconds.
type Micros = u64;

const MS: Micros = 1_000;
const SECOND: Micros = 1_000 * MS;
/// The wall-clock epoch virtual time starts at (certificates are valid around it).
const EPOCH_MS: u64 = 1_767_225_600_000;
/// The simulated network's name (revocation lists are signed for it).
const NETWORK: &str = "simnet";
/// Bytes of a fetch request on the wire (a request frame with its range).
const REQUEST_BYTES: u64 = 64;
/// Most retransmissions of one message on a lossy link before it is counted lost.
const MAX_RETRANSMISSIONS: u32 = 8;
/// QUIC's probe timeout adds the peer's maximum ACK delay to a round trip.
const MAX_ACK_DELAY: Micros = 25 * MS;
/// Linux's minimum retransmission timeout, which its tail loss probe adds when one segment
/// is in flight.
const TCP_RTO_MIN: Micros = 200 * MS;
/// How often convergence after a fault is checked.
const CHECK_EVERY: Micros = 100 * MS;
/// gossipsub's heartbeat, as the node sets it.
const HEARTBEAT: Micros = 500 * MS;
/// gossipsub's defaults: IHAVE goes to at least `gossip_lazy` peers outside the mesh, or a
/// `gossip_factor` of them, and names the messages of the last `history_gossip` heartbeats.
const GOSSIP_LAZY: usize = 6;
const GOSSIP_FACTOR: f64 = 0.25;
const HISTORY_GOSSIP: usize = 3;
/// How long a node remembers when a batch first reached it, for IDONTWANT (by then every
/// copy but a retransmitted one has been sent); older arrivals are forgotten every as long.
const ARRIVAL_MEMORY: Micros = 2 * SECOND;
/// The key deriver's first and longest pause after the evaluators failed it.
const DERIVE_PAUSE_FIRST: Micros = 100 * MS;
const DERIVE_PAUSE_MAX: Micros = 10 * SECOND;

/// A request of a sync, as it reaches the peer.
enum SyncRequest {
    Revocations { held: u64 },
    Digest,
    Heads,
    Range(RangeRequest),
}

/// The peer's answer.
enum SyncAnswer {
    Revocations(Option<Arc<SignedRevocationList>>),
    Digest([u8; 32]),
    Heads(Vec<PublisherHead>),
    Batches(Vec<usize>),
}

enum Event {
    /// A source system writes an update for `patient` to holder `node`.
    Write {
        node: usize,
        patient: u64,
        written_ms: u64,
    },
    /// A holder's publisher log may cut a batch.
    Poll {
        node: usize,
    },
    /// A batch reaches `to` from `from` by gossip.
    Deliver {
        to: usize,
        from: usize,
        batch: usize,
    },
    /// A revocation list reaches `to` from `from` by gossip.
    DeliverRevocations {
        to: usize,
        from: usize,
        list: Arc<SignedRevocationList>,
    },
    /// A node starts an anti-entropy sync.
    SyncTick {
        node: usize,
    },
    /// A sync request reaches the peer.
    SyncAsk {
        node: usize,
        peer: usize,
        sync: u64,
        request: SyncRequest,
    },
    /// The peer's answer reaches the node that asked.
    SyncReply {
        node: usize,
        sync: u64,
        answer: SyncAnswer,
    },
    /// A node's gossipsub heartbeat: IHAVE to some of its peers outside its mesh.
    Heartbeat {
        node: usize,
    },
    /// A holder's key deriver tries the evaluators again.
    DeriveRetry {
        node: usize,
    },
    /// Fault `fault` begins (crash, revocation, outage) or ends (restart, join).
    FaultStart {
        fault: usize,
    },
    FaultEnd {
        fault: usize,
    },
}

/// An event in the queue: earliest first, ties in the order they were scheduled.
struct Queued {
    at: Micros,
    order: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap pops the greatest: the earliest must compare greatest.
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

fn is_set(bits: &[u64], n: usize) -> bool {
    bits.get(n / 64)
        .is_some_and(|word| word & (1u64 << (n % 64)) != 0)
}

/// One direction of a link between two regions.
#[derive(Clone, Copy)]
struct Link {
    latency: Micros,
    jitter: Micros,
    loss: f64,
}

/// A sync in progress at a node.
struct SyncInProgress {
    id: u64,
    peer: usize,
    session: SyncSession,
    /// Ranges still to fetch in this round, and whether the round applied anything.
    ranges: VecDeque<RangeRequest>,
    progressed: bool,
}

struct SimNode {
    region: usize,
    key: SigningKey,
    log: PublisherLog,
    poll_at: Option<Micros>,
    index: LocatorIndex<SimStore>,
    revocations: RevocationState,
    /// What the sim knows this node's index holds of each publisher's log (last sequence).
    heads: Vec<u64>,
    mesh: Vec<usize>,
    /// Every peer it has a gossip connection to (its mesh among them): its own batches go
    /// to all of them.
    connections: Vec<usize>,
    /// Its connections outside its mesh (where IHAVE goes).
    outside_mesh: Vec<usize>,
    /// Messages it had first in each of the last heartbeats, newest first (what its IHAVE
    /// names).
    recent: [u32; HISTORY_GOSSIP],
    /// gossipsub's seen-message cache: batch ids this node has had (a bit each).
    seen: Vec<u64>,
    /// When recent batches first reached it (for its peers' IDONTWANT notices).
    arrived: HashMap<usize, Micros, ahash::RandomState>,
    /// When it next forgets old arrivals.
    forget_arrivals_at: Micros,
    /// Batches on their way to this node by gossip, with their earliest arrival.
    in_flight: HashMap<usize, Micros, ahash::RandomState>,
    up: bool,
    sync: Option<SyncInProgress>,
    /// Writes refused while the node was down, retried by their sources at restart.
    refused_writes: Vec<(u64, u64)>,
    /// Writes of patients waiting for their keys (evaluators out), and the deriver's pause.
    waiting_for_keys: Vec<(u64, u64)>,
    derive_pause: Option<Micros>,
    /// Patients this holder has keys for.
    keyed: HashSet<u64>,
    sent_bytes: u64,
    received_bytes: u64,
    useful_bytes: u64,
}

/// Counters of a run.
#[derive(Default)]
pub(crate) struct Counters {
    pub delivered: u64,
    pub duplicates: u64,
    /// Copies not sent because the receiver's IDONTWANT had arrived.
    pub spared: u64,
    pub lost: u64,
    pub retransmissions: u64,
    pub refused: u64,
    pub sync_rounds: u64,
    pub sync_batches: u64,
    pub writes_deferred: u64,
    pub writes_waiting_for_keys: u64,
}

struct PendingCheck {
    fault: usize,
    from: Micros,
    /// Each publisher's log length when the fault's effect ended.
    target: Vec<u64>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    rng: ChaCha8Rng,
    now: Micros,
    queue: BinaryHeap<Queued>,
    next_event: u64,
    next_sync: u64,
    nodes: Vec<SimNode>,
    /// The link from region `a` to region `b` at `a * regions + b`, and when it is cut.
    links: Vec<Link>,
    cuts: Vec<Vec<(Micros, Micros)>>,
    node_ids: Vec<NodeId>,
    node_names: Vec<String>,
    publisher_of: HashMap<NodeId, usize>,
    ca: SigningKey,
    /// The CA's newest list (what the next one builds on).
    ca_list: RevocationListBody,
    /// Nodes the CA revoked.
    revoked: Vec<bool>,
    /// Whether the CA revoked anyone yet.
    anyone_revoked: bool,
    evaluators_out: bool,
    /// Every batch cut, with its encoded size; by publisher, the batch ids in sequence order.
    batches: Vec<(HashedBatch, u64)>,
    /// What each batch costs on the wire as gossip (see [`crate::wire`]).
    batch_wire: Vec<crate::wire::Transfer>,
    /// Whether each batch's gossip message is large enough for IDONTWANT.
    batch_large: Vec<bool>,
    /// Each node's signed record (with its real certificate), which its batches carry.
    records: Vec<SignedNodeRecord>,
    /// Bytes of the gossip topic's name.
    topic_len: u64,
    /// The publisher (node number) of each batch.
    batch_publisher: Vec<u32>,
    log_of: Vec<Vec<usize>>,
    propagation: Histogram,
    counters: Counters,
    checks: Vec<PendingCheck>,
    outcomes: Vec<FaultOutcome>,
}

impl<'a> Sim<'a> {
    fn schedule(&mut self, at: Micros, event: Event) {
        let order = self.next_event;
        self.next_event += 1;
        self.queue.push(Queued { at, order, event });
    }

    fn link(&self, a: usize, b: usize) -> Link {
        let regions = self.scenario.regions.len();
        self.links[self.nodes[a].region * regions + self.nodes[b].region]
    }

    fn cut_off(&self, a: usize, b: usize) -> bool {
        let regions = self.scenario.regions.len();
        self.cuts[self.nodes[a].region * regions + self.nodes[b].region]
            .iter()
            .any(|(from, until)| self.now >= *from && self.now < *until)
    }

    /// True when `a` talks to `b` at all: both up, and neither has cut the other off for
    /// a revocation.
    fn connected(&self, a: usize, b: usize) -> bool {
        if !self.nodes[a].up || !self.nodes[b].up {
            return false;
        }
        // Before the CA revoked anyone, no node refuses another (the common case, and the
        // check costs two lookups per message).
        if !self.anyone_revoked {
            return true;
        }
        let refuses = |x: usize, y: usize| self.nodes[x].revocations.is_revoked(&self.node_ids[y]);
        !refuses(a, b) && !refuses(b, a)
    }

    /// When a message sent now from `a` reaches `b`, or `None` when it is lost. A lost
    /// packet costs a retransmission: `retransmit_after` plus twice the latency.
    fn transit_over(&mut self, a: usize, b: usize, retransmit_after: Micros) -> Option<Micros> {
        if !self.connected(a, b) || self.cut_off(a, b) {
            self.counters.lost += 1;
            return None;
        }
        let link = self.link(a, b);
        let mut delay = link.latency;
        if link.jitter > 0 {
            delay += self.rng.gen_range(0..=link.jitter);
        }
        if link.loss > 0.0 {
            let mut tries = 0;
            while self.rng.gen_bool(link.loss) {
                tries += 1;
                if tries > MAX_RETRANSMISSIONS {
                    self.counters.lost += 1;
                    return None;
                }
                self.counters.retransmissions += 1;
                delay += 2 * link.latency + retransmit_after;
            }
        }
        Some(self.now + delay)
    }

    /// A request or answer over the data plane (QUIC: a loss is resent after the probe
    /// timeout, a round trip plus the peer's ACK delay).
    fn transit(&mut self, a: usize, b: usize) -> Option<Micros> {
        self.transit_over(a, b, MAX_ACK_DELAY)
    }

    /// A gossip message (TCP with yamux, as the node's libp2p runs it: a lone lost
    /// segment is resent by Linux's tail loss probe after two round trips plus its 200 ms
    /// minimum).
    fn send_batch(&mut self, from: usize, to: usize, batch: usize) {
        // The receiver's IDONTWANT (sent when its first copy arrived) has reached this node:
        // it does not send.
        if self.batch_large[batch] {
            if let Some(&arrived) = self.nodes[to].arrived.get(&batch) {
                if arrived + self.link(to, from).latency <= self.now {
                    self.counters.spared += 1;
                    return;
                }
            }
        }
        let wire = self.batch_wire[batch];
        self.nodes[from].sent_bytes += wire.forward;
        let Some(at) = self.transit_over(from, to, TCP_RTO_MIN) else {
            return;
        };
        // The receiver's TCP acknowledgements.
        self.nodes[to].sent_bytes += wire.back;
        self.nodes[from].received_bytes += wire.back;
        // A copy that arrives after one the node has, or one already on its way, is a
        // duplicate gossipsub drops: it is counted, not queued.
        let receiver = &mut self.nodes[to];
        let first = !is_set(&receiver.seen, batch)
            && receiver
                .in_flight
                .get(&batch)
                .is_none_or(|earliest| at < *earliest);
        if first {
            receiver.in_flight.insert(batch, at);
            self.schedule(at, Event::Deliver { to, from, batch });
        } else {
            receiver.received_bytes += wire.forward;
            self.counters.delivered += 1;
            self.counters.duplicates += 1;
            self.send_idontwant(to, from, batch);
        }
    }

    /// gossipsub's IDONTWANT: a node that receives a copy of a large message tells its other
    /// mesh peers not to send it (a peer that has the notice before it forwards does not).
    fn send_idontwant(&mut self, node: usize, from: usize, batch: usize) {
        if !self.batch_large[batch] {
            return;
        }
        let author = self.batch_publisher[batch] as usize;
        let wire = crate::wire::idontwant();
        for i in 0..self.nodes[node].mesh.len() {
            let peer = self.nodes[node].mesh[i];
            if peer == from
                || peer == author
                || !self.connected(node, peer)
                || self.cut_off(node, peer)
            {
                continue;
            }
            self.nodes[node].sent_bytes += wire.forward;
            self.nodes[peer].received_bytes += wire.forward;
            self.nodes[peer].sent_bytes += wire.back;
            self.nodes[node].received_bytes += wire.back;
        }
    }

    /// A heartbeat: IHAVE with the messages of the last heartbeats to some peers outside the
    /// mesh (who have nearly always had them: no IWANT follows).
    fn heartbeat(&mut self, node: usize) {
        let ids: u32 = self.nodes[node].recent.iter().sum();
        let recent = &mut self.nodes[node].recent;
        recent.rotate_right(1);
        recent[0] = 0;
        let outside = self.nodes[node].outside_mesh.len();
        if ids == 0 || outside == 0 || !self.nodes[node].up {
            return;
        }
        let targets = ((outside as f64 * GOSSIP_FACTOR).ceil() as usize)
            .max(GOSSIP_LAZY)
            .min(outside);
        let wire = crate::wire::ihave(u64::from(ids), self.topic_len);
        for k in 0..targets {
            // A partial shuffle picks `targets` distinct peers.
            let pick = self.rng.gen_range(k..outside);
            self.nodes[node].outside_mesh.swap(k, pick);
            let peer = self.nodes[node].outside_mesh[k];
            if !self.connected(node, peer) || self.cut_off(node, peer) {
                continue;
            }
            self.nodes[node].sent_bytes += wire.forward;
            self.nodes[peer].received_bytes += wire.forward;
            self.nodes[peer].sent_bytes += wire.back;
            self.nodes[node].received_bytes += wire.back;
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

    /// Sets `batch` in `node`'s seen cache; true when it was not set.
    fn mark_seen(&mut self, node: usize, batch: usize) -> bool {
        let (word, bit) = (batch / 64, 1u64 << (batch % 64));
        let seen = &mut self.nodes[node].seen;
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        let new = seen[word] & bit == 0;
        seen[word] |= bit;
        new
    }

    /// A holder's new batch: into its own index, then pushed to its mesh.
    fn publish(&mut self, node: usize, batch: SignedBatch) {
        // As the node gossips it: with the publisher's current record.
        let message = GossipMessage::Batch {
            record: self.records[node].clone(),
            batch: batch.clone(),
        };
        let bytes = message.to_bytes().len() as u64;
        self.batch_wire
            .push(crate::wire::gossip(bytes, self.topic_len));
        self.batch_large.push(
            crate::wire::message_protobuf_len(bytes, self.topic_len)
                > crate::wire::IDONTWANT_THRESHOLD,
        );
        self.nodes[node].recent[0] += 1;
        let id = self.batches.len();
        self.log_of[node].push(id);
        let hashed = HashedBatch::new(batch);
        self.batches.push((hashed.clone(), bytes));
        self.batch_publisher.push(node as u32);
        self.mark_seen(node, id);
        let now_ms = self.now_ms();
        if let Err(e) = self.nodes[node].index.receive_hashed(hashed, now_ms) {
            panic!("a holder's own batch was refused by its index: {e}");
        }
        self.nodes[node].heads[node] = self.log_of[node].len() as u64;
        for i in 0..self.nodes[node].connections.len() {
            let peer = self.nodes[node].connections[i];
            self.send_batch(node, peer, id);
        }
    }

    /// Feeds a batch to `node`'s index; returns whether it was new (to forward).
    fn apply(&mut self, node: usize, batch: usize) -> bool {
        let hashed = self.batches[batch].0.clone();
        let now_ms = self.now_ms();
        match self.nodes[node].index.receive_hashed(hashed, now_ms) {
            Ok(BatchOutcome::Applied { sequences, .. }) => {
                let publisher = self.batch_publisher[batch] as usize;
                for sequence in sequences {
                    let id = self.log_of[publisher][(sequence - 1) as usize];
                    let applied = self.batches[id].0.batch();
                    self.nodes[node].useful_bytes += applied.body.entries.len() as u64
                        * zorgmesh_protocol::locator::ENTRY_BYTES as u64;
                    for entry in &applied.body.entries {
                        self.propagation
                            .record(now_ms.saturating_sub(entry.updated_at_ms));
                    }
                    let head = &mut self.nodes[node].heads[publisher];
                    *head = (*head).max(sequence);
                }
                true
            }
            Ok(BatchOutcome::Buffered { .. }) => true,
            Ok(BatchOutcome::Duplicate) => {
                self.counters.duplicates += 1;
                false
            }
            Err(_) => {
                // A revoked publisher's batch, at a node that already applied the list.
                self.counters.refused += 1;
                false
            }
        }
    }

    /// Stages a write's locator entry at its holder.
    fn stage(&mut self, node: usize, patient: u64, written_ms: u64) {
        let now_ms = self.now_ms();
        let entry = sim_entry(patient, self.node_ids[node], written_ms);
        self.nodes[node].log.stage(entry, now_ms);
        self.schedule_poll(node);
    }

    fn write(&mut self, node: usize, patient: u64, written_ms: u64) {
        if !self.nodes[node].up {
            self.counters.writes_deferred += 1;
            self.nodes[node].refused_writes.push((patient, written_ms));
            return;
        }
        if self.nodes[node].keyed.contains(&patient) {
            self.stage(node, patient, written_ms);
        } else if self.evaluators_out {
            self.counters.writes_waiting_for_keys += 1;
            self.nodes[node]
                .waiting_for_keys
                .push((patient, written_ms));
            if self.nodes[node].derive_pause.is_none() {
                self.nodes[node].derive_pause = Some(DERIVE_PAUSE_FIRST);
                self.schedule(self.now + DERIVE_PAUSE_FIRST, Event::DeriveRetry { node });
            }
        } else {
            self.nodes[node].keyed.insert(patient);
            self.stage(node, patient, written_ms);
        }
    }

    /// Applies a revocation list at `node`; true when it was newer (to forward).
    fn take_revocations(&mut self, node: usize, list: &SignedRevocationList) -> bool {
        let ca = self.ca.verifying_key().to_bytes();
        let sim_node = &mut self.nodes[node];
        match sim_node.revocations.check(list, &ca, NETWORK) {
            Ok(true) => {
                let applied = sim_node
                    .revocations
                    .apply(list.clone(), &mut sim_node.index);
                for log in applied.revoked_logs {
                    if let Some(&p) = self.publisher_of.get(&log) {
                        self.nodes[node].heads[p] = 0;
                    }
                }
                true
            }
            Ok(false) => false,
            Err(e) => panic!("the CA's own list was refused: {e}"),
        }
    }

    fn counts(&self, node: usize, publisher: &NodeId) -> bool {
        *publisher != self.node_ids[node]
            && !self.nodes[node].index.is_revoked(publisher)
            && !self.nodes[node].revocations.is_revoked(publisher)
    }

    /// Sends a sync request from `node` to `peer`, or ends the sync when it cannot go.
    fn ask(&mut self, node: usize, peer: usize, sync: u64, request: SyncRequest) {
        self.nodes[node].sent_bytes += crate::wire::quic(REQUEST_BYTES).forward;
        match self.transit(node, peer) {
            Some(at) => self.schedule(
                at,
                Event::SyncAsk {
                    node,
                    peer,
                    sync,
                    request,
                },
            ),
            None => self.nodes[node].sync = None,
        }
    }

    /// Takes the session's next step: a request to the peer, or the end of the sync.
    fn step(&mut self, node: usize, step: SyncStep) {
        let Some(sync) = self.nodes[node].sync.as_mut() else {
            return;
        };
        let (peer, id) = (sync.peer, sync.id);
        let request = match step {
            SyncStep::AskRevocations { held } => SyncRequest::Revocations { held },
            SyncStep::AskDigest => {
                self.counters.sync_rounds += 1;
                SyncRequest::Digest
            }
            SyncStep::AskHeads => SyncRequest::Heads,
            SyncStep::Fetch(requests) => {
                sync.ranges = requests.into();
                sync.progressed = false;
                let first = sync.ranges.pop_front().expect("a fetch has a range");
                SyncRequest::Range(first)
            }
            SyncStep::Done(_) => {
                self.nodes[node].sync = None;
                return;
            }
        };
        self.ask(node, peer, id, request);
    }

    /// The frames of a data-plane answer (each with its 4-byte length, `End` last), as the
    /// node sends them.
    fn answer_bytes(&self, answer: &SyncAnswer) -> u64 {
        const FRAME: u64 = 4;
        const END: u64 = FRAME + 1 + 4;
        END + match answer {
            SyncAnswer::Revocations(list) => list
                .as_ref()
                .map_or(0, |l| FRAME + 2 + l.to_bytes().len() as u64),
            SyncAnswer::Digest(_) => FRAME + 1 + 32,
            SyncAnswer::Heads(heads) => FRAME + 1 + 8 + 40 * heads.len() as u64,
            SyncAnswer::Batches(ids) => ids
                .iter()
                .map(|id| FRAME + 1 + 8 + self.batches[*id].1)
                .sum(),
        }
    }

    fn answer(&mut self, peer: usize, request: SyncRequest) -> SyncAnswer {
        match request {
            SyncRequest::Revocations { held } => {
                let list = self.nodes[peer]
                    .revocations
                    .list()
                    .filter(|l| l.body.sequence > held)
                    .cloned();
                SyncAnswer::Revocations(list.map(Arc::new))
            }
            SyncRequest::Digest => {
                let heads = self.nodes[peer].index.publisher_heads();
                SyncAnswer::Digest(zorgmesh_protocol::sync::heads_digest(&heads))
            }
            SyncRequest::Heads => {
                let heads = self.nodes[peer].index.publisher_heads();
                SyncAnswer::Heads(zorgmesh_protocol::sync::heads_vector(&heads))
            }
            SyncRequest::Range(range) => {
                let mut ids = Vec::new();
                if let Some(&publisher) = self.publisher_of.get(&range.publisher) {
                    let held = self.nodes[peer].heads[publisher];
                    let last = (range.from + u64::from(range.limit)).min(held + 1);
                    for sequence in range.from..last {
                        ids.push(self.log_of[publisher][(sequence - 1) as usize]);
                    }
                }
                SyncAnswer::Batches(ids)
            }
        }
    }

    fn on_reply(&mut self, node: usize, answer: SyncAnswer) {
        let step = match answer {
            SyncAnswer::Revocations(list) => {
                if let Some(list) = list {
                    if self.take_revocations(node, &list) {
                        self.gossip_revocations(node, None, list);
                    }
                }
                let sync = self.nodes[node].sync.as_mut().expect("a sync is on");
                sync.session.on_revocations()
            }
            SyncAnswer::Digest(digest) => {
                let local = self.nodes[node].index.publisher_heads();
                let sync = self.nodes[node].sync.as_mut().expect("a sync is on");
                sync.session.on_digest(&digest, &local)
            }
            SyncAnswer::Heads(heads) => {
                let local = self.nodes[node].index.publisher_heads();
                let counted: Vec<PublisherHead> = heads
                    .into_iter()
                    .filter(|h| self.counts(node, &h.publisher))
                    .collect();
                let sync = self.nodes[node].sync.as_mut().expect("a sync is on");
                sync.session.on_heads(&local, counted, |_| true)
            }
            SyncAnswer::Batches(ids) => {
                let mut progressed = false;
                for id in ids {
                    self.counters.sync_batches += 1;
                    self.mark_seen(node, id);
                    progressed |= self.apply(node, id);
                }
                let sync = self.nodes[node].sync.as_mut().expect("a sync is on");
                sync.progressed |= progressed;
                if let Some(next) = sync.ranges.pop_front() {
                    let (peer, id) = (sync.peer, sync.id);
                    self.ask(node, peer, id, SyncRequest::Range(next));
                    return;
                }
                let progressed = sync.progressed;
                sync.session.on_fetched(progressed)
            }
        };
        self.step(node, step);
    }

    fn gossip_revocations(
        &mut self,
        node: usize,
        except: Option<usize>,
        list: Arc<SignedRevocationList>,
    ) {
        let wire = crate::wire::gossip(list.to_bytes().len() as u64 + 1, self.topic_len);
        for peer in self.nodes[node].mesh.clone() {
            if Some(peer) == except {
                continue;
            }
            self.nodes[node].sent_bytes += wire.forward;
            if let Some(at) = self.transit(node, peer) {
                self.nodes[peer].sent_bytes += wire.back;
                self.nodes[node].received_bytes += wire.back;
                self.schedule(
                    at,
                    Event::DeliverRevocations {
                        to: peer,
                        from: node,
                        list: list.clone(),
                    },
                );
            }
        }
    }

    fn start_sync(&mut self, node: usize) {
        if !self.nodes[node].up || self.nodes[node].sync.is_some() {
            return;
        }
        let peer = loop {
            let p = self.rng.gen_range(0..self.nodes.len());
            if p != node {
                break p;
            }
        };
        let id = self.next_sync;
        self.next_sync += 1;
        let (session, first) = SyncSession::start(self.nodes[node].revocations.sequence());
        self.nodes[node].sync = Some(SyncInProgress {
            id,
            peer,
            session,
            ranges: VecDeque::new(),
            progressed: false,
        });
        self.step(node, first);
    }

    fn fault_node(&self, fault: usize) -> Option<usize> {
        match &self.scenario.faults[fault] {
            Fault::Crash { node, .. }
            | Fault::LateJoin { node, .. }
            | Fault::Revoke { node, .. } => self.scenario.node_index(node),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Write {
                node,
                patient,
                written_ms,
            } => self.write(node, patient, written_ms),
            Event::Poll { node } => {
                self.nodes[node].poll_at = None;
                if !self.nodes[node].up {
                    return;
                }
                let now_ms = self.now_ms();
                let key = self.nodes[node].key.clone();
                while let Some(batch) = self.nodes[node].log.poll(now_ms, &key) {
                    self.publish(node, batch);
                }
                self.schedule_poll(node);
            }
            Event::Deliver { to, from, batch } => {
                if self.nodes[to].in_flight.get(&batch) == Some(&self.now) {
                    self.nodes[to].in_flight.remove(&batch);
                }
                if !self.nodes[to].up {
                    self.counters.lost += 1;
                    return;
                }
                self.counters.delivered += 1;
                self.nodes[to].received_bytes += self.batch_wire[batch].forward;
                self.send_idontwant(to, from, batch);
                // gossipsub drops a message it has seen before the node sees it.
                if !self.mark_seen(to, batch) {
                    self.counters.duplicates += 1;
                    return;
                }
                self.nodes[to].recent[0] += 1;
                let now = self.now;
                let receiver = &mut self.nodes[to];
                if now >= receiver.forget_arrivals_at {
                    receiver.arrived.retain(|_, at| *at + ARRIVAL_MEMORY > now);
                    receiver.forget_arrivals_at = now + ARRIVAL_MEMORY;
                }
                receiver.arrived.insert(batch, now);
                if self.apply(to, batch) {
                    for i in 0..self.nodes[to].mesh.len() {
                        let peer = self.nodes[to].mesh[i];
                        if peer != from {
                            self.send_batch(to, peer, batch);
                        }
                    }
                }
            }
            Event::DeliverRevocations { to, from, list } => {
                if !self.nodes[to].up {
                    return;
                }
                self.nodes[to].received_bytes +=
                    crate::wire::gossip(list.to_bytes().len() as u64 + 1, self.topic_len).forward;
                if self.take_revocations(to, &list) {
                    self.gossip_revocations(to, Some(from), list);
                }
            }
            Event::SyncTick { node } => {
                self.start_sync(node);
                let next = self.now + self.scenario.sync_interval_ms * MS;
                self.schedule(next, Event::SyncTick { node });
            }
            Event::SyncAsk {
                node,
                peer,
                sync,
                request,
            } => {
                if !self.nodes[peer].up {
                    self.nodes[node].sync = None;
                    return;
                }
                let request_wire = crate::wire::quic(REQUEST_BYTES);
                self.nodes[peer].received_bytes += request_wire.forward;
                self.nodes[peer].sent_bytes += request_wire.back;
                self.nodes[node].received_bytes += request_wire.back;
                let answer = self.answer(peer, request);
                let wire = crate::wire::quic(self.answer_bytes(&answer));
                self.nodes[peer].sent_bytes += wire.forward;
                self.nodes[node].sent_bytes += wire.back;
                self.nodes[peer].received_bytes += wire.back;
                match self.transit(peer, node) {
                    Some(at) => self.schedule(at, Event::SyncReply { node, sync, answer }),
                    None => self.nodes[node].sync = None,
                }
            }
            Event::SyncReply { node, sync, answer } => {
                let current = self.nodes[node].sync.as_ref().map(|s| s.id);
                if !self.nodes[node].up || current != Some(sync) {
                    return;
                }
                let bytes = self.answer_bytes(&answer);
                self.nodes[node].received_bytes += crate::wire::quic(bytes).forward;
                self.on_reply(node, answer);
            }
            Event::Heartbeat { node } => {
                self.heartbeat(node);
                self.schedule(self.now + HEARTBEAT, Event::Heartbeat { node });
            }
            Event::DeriveRetry { node } => {
                if self.evaluators_out || !self.nodes[node].up {
                    let pause = self.nodes[node]
                        .derive_pause
                        .map_or(DERIVE_PAUSE_FIRST, |p| (p * 2).min(DERIVE_PAUSE_MAX));
                    self.nodes[node].derive_pause = Some(pause);
                    self.schedule(self.now + pause, Event::DeriveRetry { node });
                    return;
                }
                self.nodes[node].derive_pause = None;
                for (patient, written_ms) in std::mem::take(&mut self.nodes[node].waiting_for_keys)
                {
                    self.nodes[node].keyed.insert(patient);
                    self.stage(node, patient, written_ms);
                }
            }
            Event::FaultStart { fault } => match &self.scenario.faults[fault] {
                Fault::Crash { .. } => {
                    let node = self.fault_node(fault).expect("validated");
                    self.nodes[node].up = false;
                    self.nodes[node].sync = None;
                }
                Fault::Revoke { .. } => {
                    let node = self.fault_node(fault).expect("validated");
                    self.revoked[node] = true;
                    self.anyone_revoked = true;
                    let revocation = Revocation {
                        node: self.node_ids[node],
                        name: self.node_names[node].clone(),
                        revoked_at_ms: self.now_ms(),
                        not_after: i64::MAX,
                        reason: "revoked in the scenario".into(),
                    };
                    let body = self.ca_list.successor(vec![revocation], self.now_ms());
                    self.ca_list = body.clone();
                    let list = Arc::new(SignedRevocationList::sign(body, &self.ca));
                    // The operator hands it to the first node that is up and not revoked.
                    if let Some(first) =
                        (0..self.nodes.len()).find(|&n| self.nodes[n].up && !self.revoked[n])
                    {
                        self.take_revocations(first, &list);
                        self.gossip_revocations(first, None, list);
                    }
                    self.begin_check(fault);
                }
                Fault::EvaluatorOutage { .. } => self.evaluators_out = true,
                Fault::Partition { .. } | Fault::LateJoin { .. } => {}
            },
            Event::FaultEnd { fault } => {
                match &self.scenario.faults[fault] {
                    Fault::Crash { .. } | Fault::LateJoin { .. } => {
                        let node = self.fault_node(fault).expect("validated");
                        self.nodes[node].up = true;
                        // A starting node syncs at once, and its sources retry their writes.
                        self.start_sync(node);
                        for (patient, written_ms) in
                            std::mem::take(&mut self.nodes[node].refused_writes)
                        {
                            self.write(node, patient, written_ms);
                        }
                        self.schedule_poll(node);
                    }
                    Fault::EvaluatorOutage { .. } => self.evaluators_out = false,
                    Fault::Partition { .. } | Fault::Revoke { .. } => {}
                }
                self.begin_check(fault);
            }
        }
    }

    /// Starts measuring how long the network takes to absorb fault `fault`.
    fn begin_check(&mut self, fault: usize) {
        let target = self.log_of.iter().map(|l| l.len() as u64).collect();
        self.checks.push(PendingCheck {
            fault,
            from: self.now,
            target,
        });
    }

    /// True when every node that is up and not revoked holds at least `target` of every
    /// publisher that is not revoked, and the CA's newest list.
    fn holds(&self, target: &[u64]) -> bool {
        let sequence = self.ca_list.sequence;
        self.nodes.iter().enumerate().all(|(n, node)| {
            if !node.up || self.revoked[n] {
                return true;
            }
            node.revocations.sequence() >= sequence
                && target
                    .iter()
                    .enumerate()
                    .all(|(p, t)| self.revoked[p] || node.heads[p] >= *t)
        })
    }

    fn run_checks(&mut self) {
        let mut i = 0;
        while i < self.checks.len() {
            if self.holds(&self.checks[i].target) {
                let check = self.checks.swap_remove(i);
                let fault = &self.scenario.faults[check.fault];
                self.outcomes.push(FaultOutcome {
                    fault: fault.describe(),
                    effect_ends_s: check.from as f64 / 1e6,
                    absorbed_after_s: Some(round((self.now - check.from) as f64 / 1e6)),
                });
            } else {
                i += 1;
            }
        }
    }

    /// True when every node holds every publisher's last batch.
    fn converged(&self) -> bool {
        let target: Vec<u64> = self.log_of.iter().map(|l| l.len() as u64).collect();
        self.nodes.iter().all(|n| n.up) && self.holds(&target)
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
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

/// How far a run is, told about once per simulated second.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Simulated seconds done.
    pub simulated_s: u64,
    /// Simulated seconds the run is expected to take: the workload and the last fault
    /// (it goes on until it converges, for as long again at most).
    pub expected_s: u64,
}

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    run_observed(scenario, seed, &mut |_| {})
}

/// Runs `scenario` with `seed`, telling `observe` how far it is.
pub fn run_observed(scenario: &Scenario, seed: u64, observe: &mut dyn FnMut(Progress)) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let regions = scenario.node_regions();
    let node_names = scenario.node_names();
    let count = regions.len();
    let ca = SigningKey::from_bytes(&rng.gen::<[u8; 32]>());
    let keys: Vec<SigningKey> = (0..count)
        .map(|_| SigningKey::from_bytes(&rng.gen::<[u8; 32]>()))
        .collect();
    let node_ids: Vec<NodeId> = keys
        .iter()
        .map(|k| NodeId(k.verifying_key().to_bytes()))
        .collect();
    // One allocation per publisher, shared by every index.
    let infos: Vec<Arc<PublisherInfo>> = node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Arc::new(publisher_info(
                *id,
                node_names[i].clone(),
                &scenario.regions[regions[i]].name,
            ))
        })
        .collect();
    let (connections, mesh) = match scenario.gossip.connections {
        Connections::Random => {
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
            (mesh.clone(), mesh)
        }
        Connections::Bootstrap => bootstrap_mesh(scenario, &node_names, &mut rng),
    };
    let policy = BatchPolicy {
        max_entries: scenario.publishing.batch_max_entries,
        window_ms: scenario.publishing.batch_window_ms,
    };
    let late: Vec<bool> = (0..count)
        .map(|n| {
            scenario.faults.iter().any(|f| {
                matches!(f, Fault::LateJoin { node, .. } if scenario.node_index(node) == Some(n))
            })
        })
        .collect();
    let measured_count = scenario.measured_indexes.unwrap_or(count);
    let mut measured = vec![false; count];
    for k in 0..measured_count {
        measured[k * count / measured_count] = true;
    }
    let nodes: Vec<SimNode> = (0..count)
        .map(|i| {
            let mut index = LocatorIndex::with_store(
                IndexLimits {
                    max_publishers: count + 1,
                    ..IndexLimits::default()
                },
                if measured[i] {
                    SimStore::Full(zorgmesh_protocol::index::MemoryEntries::seeded(
                        seed ^ i as u64,
                    ))
                } else {
                    SimStore::Discard(DiscardEntries::default())
                },
            );
            for info in &infos {
                index.admit_publisher(info.clone());
            }
            let mut peers = mesh[i].clone();
            peers.sort_unstable();
            let mut connected = connections[i].clone();
            connected.sort_unstable();
            SimNode {
                region: regions[i],
                key: keys[i].clone(),
                log: PublisherLog::new(node_ids[i], policy, None),
                poll_at: None,
                index,
                revocations: RevocationState::default(),
                heads: vec![0; count],
                outside_mesh: connected
                    .iter()
                    .copied()
                    .filter(|p| !peers.contains(p))
                    .collect(),
                recent: [0; HISTORY_GOSSIP],
                mesh: peers,
                connections: connected,
                seen: Vec::new(),
                in_flight: HashMap::with_hasher(ahash::RandomState::with_seeds(1, 2, 3, 4)),
                arrived: HashMap::with_hasher(ahash::RandomState::with_seeds(5, 6, 7, 8)),
                forget_arrivals_at: ARRIVAL_MEMORY,
                up: !late[i],
                sync: None,
                refused_writes: Vec::new(),
                waiting_for_keys: Vec::new(),
                derive_pause: None,
                keyed: HashSet::new(),
                sent_bytes: 0,
                received_bytes: 0,
                useful_bytes: 0,
            }
        })
        .collect();
    let mut nodes = nodes;
    preload(scenario, seed, &node_ids, &mut nodes);
    let records = node_records(scenario, &ca, &keys, &node_names);
    let publisher_of = node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    let region_count = scenario.regions.len();
    let mut links = Vec::with_capacity(region_count * region_count);
    let mut cuts = vec![Vec::new(); region_count * region_count];
    for a in 0..region_count {
        for b in 0..region_count {
            let (na, nb) = (&scenario.regions[a].name, &scenario.regions[b].name);
            let l = &scenario.links;
            let pair = l.between.iter().find(|p| {
                (&p.regions[0] == na && &p.regions[1] == nb)
                    || (&p.regions[0] == nb && &p.regions[1] == na)
            });
            let (latency, jitter, loss) = match pair {
                Some(p) if a != b => (p.latency_ms, p.jitter_ms, p.loss),
                _ => (l.latency_ms, l.jitter_ms, l.loss),
            };
            links.push(Link {
                latency: latency * MS,
                jitter: jitter * MS,
                loss,
            });
            for fault in &scenario.faults {
                if let Fault::Partition {
                    regions,
                    at_s,
                    heal_s,
                } = fault
                {
                    if (&regions[0] == na && &regions[1] == nb)
                        || (&regions[0] == nb && &regions[1] == na)
                    {
                        cuts[a * region_count + b].push((at_s * SECOND, heal_s * SECOND));
                    }
                }
            }
        }
    }
    let mut sim = Sim {
        links,
        cuts,
        scenario,
        rng,
        now: 0,
        queue: BinaryHeap::new(),
        next_event: 0,
        next_sync: 0,
        nodes,
        node_ids,
        node_names,
        publisher_of,
        ca,
        ca_list: RevocationListBody::empty(NETWORK),
        revoked: vec![false; count],
        anyone_revoked: false,
        evaluators_out: false,
        batches: Vec::new(),
        batch_wire: Vec::new(),
        batch_large: Vec::new(),
        records,
        topic_len: zorgmesh_protocol::gossip::locator_topic(NETWORK).len() as u64,
        batch_publisher: Vec::new(),
        log_of: vec![Vec::new(); count],
        propagation: Histogram::default(),
        counters: Counters::default(),
        checks: Vec::new(),
        outcomes: Vec::new(),
    };
    // The workload, spread evenly with jitter over the duration.
    let span = scenario.duration_s * SECOND;
    let step = span / scenario.workload.updates.max(1);
    for n in 0..scenario.workload.updates {
        let at = n * step + sim.rng.gen_range(0..step.max(1));
        let node = sim.rng.gen_range(0..count);
        let patient = sim.rng.gen_range(0..scenario.workload.patients);
        sim.schedule(
            at,
            Event::Write {
                node,
                patient,
                written_ms: EPOCH_MS + at / MS,
            },
        );
    }
    for node in 0..count {
        let first = sim.rng.gen_range(0..scenario.sync_interval_ms * MS);
        sim.schedule(first, Event::SyncTick { node });
    }
    // Heartbeats matter only where a node has peers outside its mesh.
    for node in 0..count {
        if !sim.nodes[node].outside_mesh.is_empty() {
            let first = sim.rng.gen_range(0..HEARTBEAT);
            sim.schedule(first, Event::Heartbeat { node });
        }
    }
    for (i, fault) in scenario.faults.iter().enumerate() {
        let starts = match fault {
            Fault::Partition { at_s, .. }
            | Fault::Crash { at_s, .. }
            | Fault::Revoke { at_s, .. }
            | Fault::EvaluatorOutage { at_s, .. } => Some(*at_s),
            Fault::LateJoin { .. } => None,
        };
        if let Some(at) = starts {
            if !matches!(fault, Fault::Partition { .. }) {
                sim.schedule(at * SECOND, Event::FaultStart { fault: i });
            }
        }
        if !matches!(fault, Fault::Revoke { .. }) {
            sim.schedule(fault.ends_at_s() * SECOND, Event::FaultEnd { fault: i });
        }
    }
    // Run through the workload, then until every index converged (at most as long again).
    let last_fault = scenario
        .faults
        .iter()
        .map(|f| f.ends_at_s() * SECOND)
        .max()
        .unwrap_or(0);
    let settle_from = span.max(last_fault) + scenario.publishing.batch_window_ms * MS;
    let give_up = settle_from + span.max(60 * SECOND);
    let mut converged_at = None;
    let mut next_check = 0;
    let mut next_progress = 0;
    let expected_s = settle_from.div_ceil(SECOND);
    while let Some(Queued { at, event, .. }) = sim.queue.pop() {
        if at > give_up {
            break;
        }
        sim.now = at;
        if sim.now >= next_progress {
            next_progress = sim.now + SECOND;
            observe(Progress {
                simulated_s: sim.now / SECOND,
                expected_s,
            });
        }
        sim.handle(event);
        if sim.now >= next_check {
            next_check = sim.now + CHECK_EVERY;
            if !sim.checks.is_empty() {
                sim.run_checks();
            }
            if sim.now >= settle_from && sim.converged() {
                converged_at = Some(sim.now);
                break;
            }
        }
    }
    for check in std::mem::take(&mut sim.checks) {
        sim.outcomes.push(FaultOutcome {
            fault: scenario.faults[check.fault].describe(),
            effect_ends_s: check.from as f64 / 1e6,
            absorbed_after_s: None,
        });
    }
    let mut outcomes = std::mem::take(&mut sim.outcomes);
    outcomes.sort_by(|a, b| {
        a.effect_ends_s
            .total_cmp(&b.effect_ends_s)
            .then(a.fault.cmp(&b.fault))
    });
    let revoked_entries_left = sim
        .revoked
        .iter()
        .enumerate()
        .filter(|(_, r)| **r)
        .map(|(p, _)| {
            sim.nodes
                .iter()
                .enumerate()
                .filter(|(n, _)| !sim.revoked[*n])
                .filter_map(|(_, node)| node.index.store().full())
                .map(|store| store.publisher_entries(&sim.node_ids[p]).len())
                .sum::<usize>()
        })
        .sum();
    crate::report::assemble(crate::report::RunResult {
        scenario,
        seed,
        nodes: &sim.nodes_view(),
        batches: sim.batches.len(),
        propagation: &sim.propagation,
        counters: &sim.counters,
        converged_at,
        settle_from,
        faults: outcomes,
        revoked_entries_left,
    })
}

/// The connections and gossipsub meshes of [`Connections::Bootstrap`]: the bootstrap rule
/// of `zorgmesh topology generate` over the scenario's nodes, both ways; then each node in
/// turn grafts up to `mesh_degree` of its connections, in random order, onto peers that
/// have fewer than twice that.
fn bootstrap_mesh(
    scenario: &Scenario,
    node_names: &[String],
    rng: &mut ChaCha8Rng,
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    use zorgmesh_topology::{NodeSpec, Region, Topology};
    let listen = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let regions = scenario.node_regions();
    let topology = Topology {
        network: NETWORK.into(),
        regions: scenario
            .regions
            .iter()
            .map(|r| Region {
                name: r.name.clone(),
                description: String::new(),
            })
            .collect(),
        nodes: node_names
            .iter()
            .zip(&regions)
            .map(|(name, region)| NodeSpec {
                category: Default::default(),
                name: name.clone(),
                region: scenario.regions[*region].name.clone(),
                role: zorgmesh_protocol::NodeRole::Institution,
                organisation_ura: String::new(),
                organisation_name: String::new(),
                http: listen,
                gossip: listen,
                data: listen,
                host: None,
                evaluator: false,
            })
            .collect(),
        evaluator_threshold: None,
    };
    let count = node_names.len();
    let index: HashMap<&str, usize> = node_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut connections: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (node, spec) in topology.nodes.iter().enumerate() {
        for peer in zorgmesh_topology::bootstrap_peers(&topology, spec) {
            let peer = index[peer.name.as_str()];
            if !connections[node].contains(&peer) {
                connections[node].push(peer);
                connections[peer].push(node);
            }
        }
    }
    let degree = scenario.gossip.mesh_degree;
    let mut mesh: Vec<Vec<usize>> = vec![Vec::new(); count];
    for node in 0..count {
        let mut candidates = connections[node].clone();
        candidates.sort_unstable();
        for i in (1..candidates.len()).rev() {
            candidates.swap(i, rng.gen_range(0..=i));
        }
        for peer in candidates {
            if mesh[node].len() >= degree {
                break;
            }
            if !mesh[node].contains(&peer) && mesh[peer].len() < 2 * degree {
                mesh[node].push(peer);
                mesh[peer].push(node);
            }
        }
    }
    (connections, mesh)
}

/// Every node's signed record, with a certificate the network CA issued it for the run
/// (real DER, so that batches weigh on the wire what the node's do).
fn node_records(
    scenario: &Scenario,
    ca: &SigningKey,
    keys: &[SigningKey],
    node_names: &[String],
) -> Vec<SignedNodeRecord> {
    let epoch = time::OffsetDateTime::from_unix_timestamp((EPOCH_MS / 1000) as i64)
        .expect("the epoch is a valid time");
    let authority = zorgmesh_certs::CertificateAuthority::create(NETWORK, ca.clone(), epoch, 3650)
        .expect("the simulated network's CA");
    let regions = scenario.node_regions();
    keys.iter()
        .zip(node_names)
        .enumerate()
        .map(|(i, (key, name))| {
            let identity = zorgmesh_certs::NodeIdentity {
                name: name.clone(),
                organisation_ura: format!("{:08}", i % 100_000_000),
                organisation_name: format!("Zorgorganisatie {name}"),
                region: scenario.regions[regions[i]].name.clone(),
                role: NodeRole::Institution,
                category: Default::default(),
            };
            let certificate_der = authority
                .issue(&identity, key, epoch, epoch + time::Duration::days(365))
                .expect("a certificate for every simulated node");
            NodeRecord {
                node: NodeId(key.verifying_key().to_bytes()),
                handovers: Vec::new(),
                certificate_der,
                data_address: format!("10.{}.{}.{}:7000", i >> 16 & 255, i >> 8 & 255, i & 255),
                issued_at_ms: EPOCH_MS,
            }
            .sign(key)
        })
        .collect()
}

/// Patients handled per pass of [`preload`] (bounds the entries held at once).
const PRELOAD_PATIENTS_PER_PASS: u64 = 1 << 20;

/// Writes `workload.holders_per_patient` entries of every patient, at distinct holders,
/// into every measured store, as the state after the load (see [`crate::scenario::Workload`]).
/// Heads do not move: the first batch each holder cuts in the run is its log's first. Its
/// own generator, so the run's draws are those of the same scenario without a preload.
fn preload(scenario: &Scenario, seed: u64, node_ids: &[NodeId], nodes: &mut [SimNode]) {
    let holders = scenario.workload.holders_per_patient as usize;
    if holders == 0 || !nodes.iter().any(|n| n.index.store().full().is_some()) {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7072_656c_6f61_6400);
    let count = nodes.len();
    let head = zorgmesh_protocol::index::PublisherHead {
        sequence: 0,
        hash: zorgmesh_protocol::batch::GENESIS_HASH,
    };
    let mut by_holder: Vec<Vec<LocatorEntry>> = vec![Vec::new(); count];
    let mut chosen = Vec::with_capacity(holders);
    let mut first = 0;
    while first < scenario.workload.patients {
        let end = (first + PRELOAD_PATIENTS_PER_PASS).min(scenario.workload.patients);
        for patient in first..end {
            chosen.clear();
            while chosen.len() < holders {
                let holder = rng.gen_range(0..count);
                if !chosen.contains(&holder) {
                    chosen.push(holder);
                }
            }
            for &holder in &chosen {
                by_holder[holder].push(sim_entry(patient, node_ids[holder], EPOCH_MS));
            }
        }
        for (holder, entries) in by_holder.iter_mut().enumerate() {
            for node in nodes.iter_mut() {
                if let SimStore::Full(store) = node.index.store_mut() {
                    store
                        .apply_batch(&node_ids[holder], entries, head)
                        .expect("the memory store takes every batch");
                }
            }
            entries.clear();
        }
        first = end;
    }
}

/// The locator entry a simulated write of `patient` at `holder` stages.
fn sim_entry(patient: u64, holder: NodeId, written_ms: u64) -> LocatorEntry {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&patient.to_be_bytes());
    LocatorEntry {
        patient: PatientKey(key),
        holder,
        categories: zorgmesh_protocol::locator::category::OBSERVATIONS,
        commitment: [(patient % 251) as u8; 32],
        // Propagation is measured from the source's write, so that a write waiting for a
        // restart or for the evaluators shows in it.
        updated_at_ms: written_ms,
        retracted: false,
    }
}

/// What the report needs of each node.
pub(crate) struct NodeView {
    pub name: String,
    pub region: String,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub useful_bytes: u64,
    /// Of a node whose index keeps every entry.
    pub live_entries: Option<usize>,
    pub index_bytes_per_entry: Option<f64>,
    pub revoked: bool,
}

impl Sim<'_> {
    fn nodes_view(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                name: self.node_names[i].clone(),
                region: self.scenario.regions[n.region].name.clone(),
                sent_bytes: n.sent_bytes,
                received_bytes: n.received_bytes,
                useful_bytes: n.useful_bytes,
                live_entries: n.index.store().full().map(|_| n.index.live_entries()),
                index_bytes_per_entry: n.index.store().full().map(|s| s.bytes_per_entry()),
                revoked: self.revoked[i],
            })
            .collect()
    }
}
