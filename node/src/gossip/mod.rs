//! The gossip mesh: libp2p gossipsub over TCP + members-only noise + yamux, with identify
//! and ping.
//!
//! Only members hear the mesh: every connection runs [`membership::MemberSecurity`], which
//! refuses a peer without a current certificate from the network CA before any topic
//! traffic.
//!
//! The node's libp2p identity is its ed25519 certificate key. All locator batches travel on
//! one national topic (see docs/ARCHITECTURE.md). Every message is validated by
//! [`crate::mesh::Mesh::handle_gossip`] before gossipsub forwards it; rejections lower the
//! sender's peer score, and a peer below the graylist threshold is ignored.

pub mod membership;

use crate::mesh::{Mesh, Verdict};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAcceptance, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, identity, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use membership::MemberSecurity;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Messages waiting for peers before they can be published.
const MAX_UNPUBLISHED: usize = 1024;
/// Depth of the command channel into the gossip task.
pub const COMMAND_QUEUE: usize = 256;

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// What the rest of the node can see of the gossip layer.
#[derive(Debug, Default)]
pub struct GossipStatus {
    /// Peers currently connected.
    pub connected_peers: AtomicUsize,
    /// Peers subscribed to the locator topic.
    pub topic_peers: AtomicUsize,
    /// Messages rejected by validation.
    pub rejected: AtomicUsize,
    /// Messages accepted.
    pub accepted: AtomicUsize,
    /// Connections refused by the membership handshake (either side refused).
    pub refused_connections: AtomicUsize,
    /// Gossipsub's score of each connected peer (by peer id), as of the last tick.
    pub peer_scores: std::sync::Mutex<std::collections::BTreeMap<String, f64>>,
}

/// Gives every connected holder the application score its false claims earned, and keeps
/// every connected peer's score for the status.
fn apply_holder_scores(swarm: &mut Swarm<Behaviour>, mesh: &Mesh, status: &GossipStatus) {
    let now = crate::fhir::service::now_ms();
    for (key, score) in mesh.gossip_scores(now) {
        if let Some(peer) = peer_id(&key.0) {
            swarm
                .behaviour_mut()
                .gossipsub
                .set_application_score(&peer, score);
        }
    }
    let connected: Vec<PeerId> = swarm.connected_peers().copied().collect();
    let mut scores = status.peer_scores.lock().unwrap_or_else(|e| e.into_inner());
    scores.clear();
    for peer in connected {
        if let Some(score) = swarm.behaviour().gossipsub.peer_score(&peer) {
            scores.insert(peer.to_string(), score);
        }
    }
}

/// Converts the node's ed25519 key into its libp2p identity.
pub fn libp2p_keypair(key: &SigningKey) -> identity::Keypair {
    identity::Keypair::ed25519_from_bytes(key.to_bytes()).expect("32-byte ed25519 secret")
}

/// The libp2p peer id of an ed25519 public key.
pub fn peer_id(public_key: &[u8; 32]) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(public_key).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// `/ip4/../tcp/../p2p/..` for a TCP socket address and peer.
pub fn multiaddr(addr: SocketAddr, peer: Option<PeerId>) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    let mut text = format!("{ip}/tcp/{}", addr.port());
    if let Some(peer) = peer {
        text.push_str(&format!("/p2p/{peer}"));
    }
    text.parse().expect("well-formed multiaddr")
}

/// Settings of the gossip task.
pub struct GossipSettings {
    /// The node key (libp2p identity).
    pub key: SigningKey,
    /// The node's certificate (DER), shown to peers in the membership handshake.
    pub certificate_der: Vec<u8>,
    /// Network name (part of the topic).
    pub network: String,
    /// TCP listen address.
    pub listen: SocketAddr,
    /// Peers to dial.
    pub bootstrap: Vec<Multiaddr>,
    /// Asks the node to announce its record now (a new peer joined the topic).
    pub announce_now: mpsc::Sender<()>,
}

/// Asks the gossip task to restart its swarm under a new key (a key rotation).
pub struct Rekey {
    /// The new node key.
    pub key: SigningKey,
    /// Its certificate (DER).
    pub certificate_der: Vec<u8>,
    /// Told the new listen address (with `/p2p/<new peer id>`) once the swarm listens.
    pub done: oneshot::Sender<anyhow::Result<Multiaddr>>,
}

/// Peers whose listen addresses identify told us, kept to re-dial after a rekey.
const MAX_KNOWN_PEERS: usize = 1024;

fn build_swarm(
    key: &SigningKey,
    certificate_der: &[u8],
    topic: &IdentTopic,
    mesh: &Arc<Mesh>,
) -> anyhow::Result<Swarm<Behaviour>> {
    let keypair = libp2p_keypair(key);
    let certificate = certificate_der.to_vec();
    let topic_hash = topic.hash();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            |key: &identity::Keypair| MemberSecurity::new(key, certificate, mesh.clone()),
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(zorgmesh_protocol::gossip::MAX_GOSSIP_BYTES)
                .message_id_fn(|message: &gossipsub::Message| {
                    gossipsub::MessageId::from(&Sha256::digest(&message.data)[..20])
                })
                .build()
                .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
                    .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
            let topic_params = TopicScoreParams {
                topic_weight: 1.0,
                time_in_mesh_weight: 0.01,
                first_message_deliveries_weight: 1.0,
                // The locator topic is quiet for long stretches: silence is no fault.
                mesh_message_deliveries_weight: 0.0,
                mesh_failure_penalty_weight: 0.0,
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.9,
                ..TopicScoreParams::default()
            };
            let mut params = PeerScoreParams::default();
            params.topics.insert(topic_hash.clone(), topic_params);
            // Test meshes and replication platforms put many nodes behind one address.
            params.ip_colocation_factor_threshold = 1000.0;
            // False claims (see `zorgmesh_protocol::standing`) count one for one.
            params.app_specific_weight = 1.0;
            let thresholds = PeerScoreThresholds {
                gossip_threshold: -10.0,
                publish_threshold: -50.0,
                graylist_threshold: -80.0,
                accept_px_threshold: 10.0,
                opportunistic_graft_threshold: 20.0,
            };
            gossipsub
                .with_peer_score(params, thresholds)
                .map_err(|e| anyhow::anyhow!("peer score: {e}"))?;
            Ok(Behaviour {
                gossipsub,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/zorgmesh/id/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// A running gossip task.
pub struct Gossip {
    /// Publish encoded [`zorgmesh_protocol::gossip::GossipMessage`]s.
    pub publish: mpsc::Sender<Vec<u8>>,
    /// Restart the swarm under a new key.
    pub rekey: mpsc::Sender<Rekey>,
    /// The bound listen address (with `/p2p/<peer id>`).
    pub listen_addr: Multiaddr,
    /// Live counters.
    pub status: Arc<GossipStatus>,
    /// The task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the gossip task.
pub async fn start(
    settings: GossipSettings,
    mesh: Arc<Mesh>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Gossip> {
    let topic = IdentTopic::new(zorgmesh_protocol::gossip::locator_topic(&settings.network));
    let mut swarm = build_swarm(&settings.key, &settings.certificate_der, &topic, &mesh)?;
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    swarm.listen_on(multiaddr(settings.listen, None))?;
    let (publish, commands) = mpsc::channel(COMMAND_QUEUE);
    let (rekey, rekeys) = mpsc::channel(1);
    let (bound_tx, bound_rx) = oneshot::channel();
    let status = Arc::new(GossipStatus::default());
    let local_peer = *swarm.local_peer_id();
    let task = tokio::spawn(run(
        swarm,
        topic,
        settings.bootstrap,
        mesh,
        commands,
        rekeys,
        status.clone(),
        bound_tx,
        settings.announce_now,
        shutdown,
    ));
    let listen = tokio::time::timeout(Duration::from_secs(10), bound_rx)
        .await
        .map_err(|_| anyhow::anyhow!("gossip listener did not come up on {}", settings.listen))?
        .map_err(|_| {
            anyhow::anyhow!("gossip task ended before listening on {}", settings.listen)
        })??;
    let listen_addr = listen.with(libp2p::multiaddr::Protocol::P2p(local_peer));
    Ok(Gossip {
        publish,
        rekey,
        listen_addr,
        status,
        task,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    bootstrap: Vec<Multiaddr>,
    mesh: Arc<Mesh>,
    mut commands: mpsc::Receiver<Vec<u8>>,
    mut rekeys: mpsc::Receiver<Rekey>,
    status: Arc<GossipStatus>,
    bound: oneshot::Sender<anyhow::Result<Multiaddr>>,
    announce_now: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut bound = Some(bound);
    let mut listening: Option<Multiaddr> = None;
    let mut rebound: Option<oneshot::Sender<anyhow::Result<Multiaddr>>> = None;
    // Bootstrap peers are dialled by address alone (the membership handshake proves who
    // answers), so a peer that rotated its key is still found; the peer id learnt from the
    // last connection tells whether it is connected.
    let mut bootstrap: Vec<(Multiaddr, Option<PeerId>)> = bootstrap
        .into_iter()
        .map(|addr| (without_peer_id(&addr), None))
        .collect();
    let mut known_peers: std::collections::HashMap<PeerId, Vec<Multiaddr>> =
        std::collections::HashMap::new();
    let mut revocations = mesh.watch_revocations();
    let mut unpublished: VecDeque<Vec<u8>> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks: u64 = 0;
    for (addr, _) in &bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            command = commands.recv() => match command {
                None => break,
                Some(bytes) => {
                    if unpublished.len() >= MAX_UNPUBLISHED {
                        unpublished.pop_front();
                        tracing::warn!("gossip backlog full: dropped the oldest unpublished batch (sync will repair)");
                    }
                    unpublished.push_back(bytes);
                    flush(&mut swarm, &topic, &mut unpublished);
                }
            },
            changed = revocations.changed() => {
                if changed.is_err() {
                    break;
                }
                cut_off_revoked(&mut swarm, &mesh);
            }
            Some(rekey) = rekeys.recv() => {
                let Some(address) = listening.clone() else {
                    let _ = rekey.done.send(Err(anyhow::anyhow!("gossip is not listening yet")));
                    continue;
                };
                let mut redial: Vec<Multiaddr> = known_peers
                    .iter()
                    .flat_map(|(peer, addrs)| addrs.iter().map(|a| without_peer_id(a).with(libp2p::multiaddr::Protocol::P2p(*peer))))
                    .collect();
                redial.extend(bootstrap.iter().map(|(a, _)| a.clone()));
                let fresh = match build_swarm(&rekey.key, &rekey.certificate_der, &topic, &mesh) {
                    Ok(fresh) => fresh,
                    Err(e) => {
                        let _ = rekey.done.send(Err(e));
                        continue;
                    }
                };
                // The old swarm goes first: its listener frees the port for the new one.
                drop(std::mem::replace(&mut swarm, fresh));
                known_peers.clear();
                for (_, peer) in bootstrap.iter_mut() {
                    *peer = None;
                }
                let relisten = swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&topic)
                    .map_err(anyhow::Error::from)
                    .and_then(|_| swarm.listen_on(address.clone()).map_err(anyhow::Error::from));
                if let Err(e) = relisten {
                    tracing::error!(error = %e, "gossip cannot listen again after the rekey");
                    let _ = rekey.done.send(Err(e));
                    continue;
                }
                for addr in redial {
                    let _ = swarm.dial(addr);
                }
                rebound = Some(rekey.done);
                tracing::info!(peer = %swarm.local_peer_id(), "gossip restarted under the new key");
                update_counts(&swarm, &topic, &status);
            }
            _ = tick.tick() => {
                ticks += 1;
                flush(&mut swarm, &topic, &mut unpublished);
                apply_holder_scores(&mut swarm, &mesh, &status);
                // Every 5 s, re-dial bootstrap peers we are not connected to (restarts,
                // healed partitions).
                if ticks.is_multiple_of(10) {
                    for (addr, peer) in &bootstrap {
                        let connected = peer.is_some_and(|peer| swarm.is_connected(&peer));
                        if !connected {
                            let _ = swarm.dial(addr.clone());
                        }
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "gossip listening");
                    listening = Some(address.clone());
                    if let Some(tx) = bound.take() {
                        let _ = tx.send(Ok(address.clone()));
                    }
                    if let Some(tx) = rebound.take() {
                        let _ = tx.send(Ok(address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()))));
                    }
                }
                SwarmEvent::ListenerError { error, .. } => {
                    tracing::error!(error = %error, "gossip listener failed");
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    if let Some(tx) = bound.take() {
                        let _ = tx.send(Err(anyhow::anyhow!("gossip listener closed: {reason:?}")));
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    tracing::debug!(%peer_id, "peer connected");
                    if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                        let dialled = without_peer_id(address);
                        for (addr, peer) in bootstrap.iter_mut() {
                            if *addr == dialled {
                                *peer = Some(peer_id);
                            }
                        }
                    }
                    update_counts(&swarm, &topic, &status);
                }
                SwarmEvent::ConnectionClosed { .. } => update_counts(&swarm, &topic, &status),
                SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                    status.refused_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer_addr = %send_back_addr, error = %error, "incoming gossip connection not admitted");
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(peer = ?peer_id, error = %error, "gossip dial failed");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => match event {
                    gossipsub::Event::Message { propagation_source, message_id, message } => {
                        let author = message.source.and_then(|p| author_key(&p));
                        let verdict = mesh.handle_gossip(&message.data, author);
                        let acceptance = match &verdict {
                            Verdict::Accept => {
                                status.accepted.fetch_add(1, Ordering::Relaxed);
                                MessageAcceptance::Accept
                            }
                            Verdict::Ignore => MessageAcceptance::Ignore,
                            Verdict::Reject(reason) => {
                                status.rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(peer = %propagation_source, reason = %reason, "gossip message rejected");
                                MessageAcceptance::Reject
                            }
                        };
                        swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, acceptance);
                    }
                    gossipsub::Event::Subscribed { .. } => {
                        update_counts(&swarm, &topic, &status);
                        flush(&mut swarm, &topic, &mut unpublished);
                        // A new peer on the topic learns our record at once.
                        let _ = announce_now.try_send(());
                    }
                    gossipsub::Event::Unsubscribed { .. } => update_counts(&swarm, &topic, &status),
                    _ => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                    if known_peers.len() < MAX_KNOWN_PEERS || known_peers.contains_key(&peer_id) =>
                {
                    let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(8).collect();
                    known_peers.insert(peer_id, addrs);
                }
                _ => {}
            }
        }
    }
}

/// Disconnects every connected peer whose key is revoked and blacklists it in gossipsub,
/// so nothing from it is accepted or forwarded even before the connection is gone. The
/// membership handshake refuses it from then on.
fn cut_off_revoked(swarm: &mut Swarm<Behaviour>, mesh: &Mesh) {
    let revoked: Vec<PeerId> = swarm
        .connected_peers()
        .filter(|peer| {
            author_key(peer).is_some_and(|key| mesh.is_revoked(&zorgmesh_protocol::NodeId(key)))
        })
        .copied()
        .collect();
    for peer in revoked {
        tracing::warn!(%peer, "disconnecting a revoked node from gossip");
        swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        let _ = swarm.disconnect_peer_id(peer);
    }
}

/// `addr` without its `/p2p/<peer id>` part.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

pub(crate) fn author_key(peer: &PeerId) -> Option<[u8; 32]> {
    // Ed25519 peer ids embed the public key (identity multihash).
    let public =
        identity::PublicKey::try_decode_protobuf(peer_identity_bytes(peer)?.as_slice()).ok()?;
    let ed = public.try_into_ed25519().ok()?;
    Some(ed.to_bytes())
}

fn peer_identity_bytes(peer: &PeerId) -> Option<Vec<u8>> {
    let multihash = peer.as_ref();
    (multihash.code() == 0).then(|| multihash.digest().to_vec())
}

fn update_counts(swarm: &Swarm<Behaviour>, topic: &IdentTopic, status: &GossipStatus) {
    let hash = topic.hash();
    status
        .connected_peers
        .store(swarm.connected_peers().count(), Ordering::Relaxed);
    let subscribed = swarm
        .behaviour()
        .gossipsub
        .all_peers()
        .filter(|(_, topics)| topics.contains(&&hash))
        .count();
    status.topic_peers.store(subscribed, Ordering::Relaxed);
}

fn flush(swarm: &mut Swarm<Behaviour>, topic: &IdentTopic, unpublished: &mut VecDeque<Vec<u8>>) {
    while let Some(bytes) = unpublished.front() {
        match swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), bytes.clone())
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                unpublished.pop_front();
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::AllQueuesFull(_)) => break,
            Err(e) => {
                tracing::error!(error = %e, "cannot publish batch");
                unpublished.pop_front();
            }
        }
    }
}
