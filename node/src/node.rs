//! A running node: starts storage, index, publishing, gossip, data plane and HTTP API, and
//! stops them all on shutdown (releasing ports and the data directory).

use crate::anti_entropy::SyncStats;
use crate::config::NodeConfig;
use crate::data_plane::{DataPlane, TlsIdentity};
use crate::dossier::DossierResolver;
use crate::fhir::api::{router, ApiState};
use crate::fhir::FhirService;
use crate::gossip::{self, GossipSettings, GossipStatus};
use crate::mesh::Mesh;
use crate::pseudonym::evaluator::Evaluator;
use crate::pseudonym::PatientKeys;
use crate::publishing::Publisher;
use crate::rotation::{KeyFiles, NodeKeys, Rotator};
use crate::storage::Storage;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use zorgmesh_certs::{read_certificate, TrustAnchor, VerifiedNode};
use zorgmesh_protocol::gossip::GossipMessage;
use zorgmesh_protocol::record::NodeRecord;
use zorgmesh_protocol::{BatchPolicy, NodeId};

/// Batches waiting between the publisher and the gossip task.
const OUTBOX_DEPTH: usize = 64;
/// How often a node re-announces its record (certificate and data-plane address).
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(60);

/// A running node.
pub struct RunningNode {
    /// The certificate facts of the key the node started with (a key rotation replaces the
    /// key; the node's lasting id is its log id, `mesh.own()`).
    pub identity: VerifiedNode,
    /// Bound FHIR API address.
    pub http_addr: SocketAddr,
    /// Bound QUIC address.
    pub data_addr: SocketAddr,
    /// Gossip address with `/p2p/<peer id>` at start (the peer id follows the key).
    pub gossip_addr: libp2p::Multiaddr,
    /// The index and its validation.
    pub mesh: Arc<Mesh>,
    /// Gossip counters.
    pub gossip_status: Arc<GossipStatus>,
    /// Anti-entropy counters.
    pub sync_stats: Arc<SyncStats>,
    /// The access trail.
    pub audit: crate::audit::AuditTrail,
    shutdown: watch::Sender<bool>,
    /// Stops the trail's writer, after every task that appends to it stopped.
    audit_stop: watch::Sender<bool>,
    audit_task: tokio::task::JoinHandle<()>,
    /// Why the node must stop on its own (its certificate was revoked or expired).
    fatal: mpsc::Receiver<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often the node checks its own certificate's expiry.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Warn this long before the node certificate expires.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// What the node says about its own certificate.
pub fn certificate_status(not_after: i64, now_secs: i64) -> serde_json::Value {
    let days_left = (not_after - now_secs).div_euclid(86_400);
    serde_json::json!({
        "not_after": not_after,
        "days_left": days_left,
        "expiring_soon": days_left < EXPIRY_WARNING_DAYS,
        "expired": now_secs > not_after,
    })
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("name", &self.identity.identity.name)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

async fn open_storage(config: &NodeConfig) -> anyhow::Result<Storage> {
    // A node that was just stopped in this process may still be releasing the lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Storage::open_with(&config.data_dir, config.storage_engine) {
            Ok(storage) => return Ok(storage),
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot open data directory {}", config.data_dir.display())
                })
            }
        }
    }
}

/// How often the store's seal follows its writes.
const SEAL_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the store's seal (see `storage/seal.rs`) within about a second of its writes, and
/// seals once more at shutdown.
async fn seal_periodically(storage: Arc<Storage>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SEAL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let sealing = storage.clone();
        match tokio::task::spawn_blocking(move || sealing.seal()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot seal the store"),
            Err(e) => tracing::error!(error = %e, "the sealing task failed"),
        }
        if stopping {
            break;
        }
    }
}

/// How often the index on disk is swept of invisible entries, and how many entries one
/// step reads (the index is held for one step at a time).
const INDEX_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
const INDEX_SWEEP_STEP: usize = 50_000;

/// Sweeps the locator index on disk: a snapshot that replaced a publisher's entries, or a
/// revocation, leaves the old entries invisible but on disk until a sweep deletes them.
async fn sweep_index_periodically(mesh: Arc<Mesh>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(INDEX_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut from = None;
        let mut dropped = 0;
        loop {
            let sweeping = mesh.clone();
            let step =
                tokio::task::spawn_blocking(move || sweeping.sweep_index(from, INDEX_SWEEP_STEP))
                    .await;
            match step {
                Ok(Ok((gone, next))) => {
                    dropped += gone;
                    match next {
                        Some(next) => from = Some(next),
                        None => break,
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot sweep the locator index");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the index sweep failed");
                    break;
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
        if dropped > 0 {
            tracing::info!(dropped, "locator index swept of replaced entries");
        }
    }
}

/// The patient-key side of a node's status.
pub struct KeyStatus {
    /// The OPRF client.
    pub keys: Arc<PatientKeys>,
    /// Patients waiting for their keys (as last counted by the key deriver).
    pub pending: Arc<AtomicU64>,
    /// The evaluator, on evaluator nodes.
    pub evaluator: Option<Arc<Evaluator>>,
}

/// The node's status: index heads per publisher, entry count, gossip, sync and patient-key
/// counters, and on an evaluator its evaluation audit.
pub fn status_document(
    name: &str,
    signing: &crate::rotation::NodeKeys,
    mesh: &Mesh,
    gossip: &GossipStatus,
    sync: &SyncStats,
    keys: &KeyStatus,
) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let active = signing.current();
    let not_after = active.certificate.not_after;
    let names: std::collections::HashMap<NodeId, String> = mesh.publishers().into_iter().collect();
    let heads: serde_json::Map<String, serde_json::Value> = mesh
        .heads()
        .into_iter()
        .map(|(id, seq)| {
            (
                names.get(&id).cloned().unwrap_or_else(|| id.to_hex()),
                seq.into(),
            )
        })
        .collect();
    let now_ms = crate::fhir::service::now_ms();
    let holders: serde_json::Map<String, serde_json::Value> = mesh
        .holder_standings()
        .into_iter()
        .map(|(id, standing)| {
            (
                names.get(&id).cloned().unwrap_or_else(|| id.to_hex()),
                serde_json::json!({
                    "false_claims": standing.false_claims,
                    "recent_false_claims": standing.recent_false_claims(now_ms),
                    "answers_with_data": standing.answers_with_data,
                    "unverified_answers": standing.unverified_answers,
                    "gossip_score": standing.gossip_score(now_ms),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "node": name,
        "certificate": certificate_status(not_after, (crate::fhir::service::now_ms() / 1000) as i64),
        "signing_key": {
            "log": signing.log().to_hex(),
            "key_in_force": active.id().to_hex(),
            "handovers": active.handovers.len(),
            "from_sequence": active.handovers.last().map(|h| h.body.from_sequence),
        },
        "revocations": {
            "sequence": mesh.revocation_sequence(),
            "revoked_nodes": mesh.revoked_nodes().len(),
        },
        "forks_detected": mesh.forks_detected(),
        "http": { "body_budget": crate::fhir::api::body_budget_status() },
        "live_entries": mesh.live_entries(),
        "own_log_batches": mesh.own_log_len(),
        "heads": heads,
        "gossip": {
            "connected_peers": gossip.connected_peers.load(Relaxed),
            "topic_peers": gossip.topic_peers.load(Relaxed),
            "accepted": gossip.accepted.load(Relaxed),
            "rejected": gossip.rejected.load(Relaxed),
            "refused_connections": gossip.refused_connections.load(Relaxed),
            "peer_scores": gossip.peer_scores.lock().map(|s| s.clone()).unwrap_or_default(),
        },
        "holders": holders,
        "sync": {
            "rounds": sync.rounds.load(Relaxed),
            "in_sync": sync.in_sync.load(Relaxed),
            "batches_applied": sync.batches_applied.load(Relaxed),
            "failures": sync.failures.load(Relaxed),
        },
        "patient_keys": {
            "threshold": keys.keys.set().threshold(),
            "evaluators": keys.keys.set().evaluators().map(|e| e.name.clone()).collect::<Vec<_>>(),
            "derived": keys.keys.stats.derived.load(Relaxed),
            "failures": keys.keys.stats.failures.load(Relaxed),
            "pending_patients": keys.pending.load(Relaxed),
        },
        "evaluator": keys.evaluator.as_ref().map(|e| serde_json::json!({
            "evaluated": e.stats.evaluated.load(Relaxed),
            "refused": e.stats.refused.load(Relaxed),
            "audit": e.audit(),
        })),
    })
}

impl RunningNode {
    /// Starts a node from its config.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let trust = &config.trust;
        let anchor_der = read_certificate(&trust.ca_certificate)?;
        let anchor = TrustAnchor::from_der(&anchor_der).with_context(|| {
            format!(
                "{} is not a usable network CA",
                trust.ca_certificate.display()
            )
        })?;
        crate::at_rest::restrict_new_files();
        let descriptors = crate::limits::raise_descriptor_limit();
        crate::at_rest::secure_data_dir(&config.data_dir)?;
        let storage = Arc::new(open_storage(&config).await?);
        let now = (crate::fhir::service::now_ms() / 1000) as i64;
        let key_files = KeyFiles {
            key: trust.node_key.clone(),
            certificate: trust.node_certificate.clone(),
        };
        let active = crate::rotation::load_own_keys(&key_files, &anchor, &storage, now)?;
        let identity = active.certificate.clone();
        let key = active.key.clone();
        let certificate_der = active.certificate_der.clone();
        let handovers = active.handovers.clone();
        let keys = Arc::new(NodeKeys::new(active));
        if identity.identity.name != config.name {
            anyhow::bail!(
                "config name {:?} differs from the certificate's node name {:?}",
                config.name,
                identity.identity.name
            );
        }
        let (evaluator_set, own_share) = crate::pseudonym::load_trust(&config, &anchor)?;
        let evaluator = own_share.map(|share| {
            Arc::new(Evaluator::new(
                share,
                config.evaluator.clone(),
                storage.clone(),
            ))
        });

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (audit_stop, audit_stop_rx) = watch::channel(false);
        let (audit, audit_task) = crate::audit::AuditTrail::open(
            &config.data_dir,
            {
                let keys = keys.clone();
                Arc::new(move || keys.current().key.clone())
            },
            audit_stop_rx,
        )?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(seal_periodically(
            storage.clone(),
            shutdown_rx.clone(),
        )));

        let data_plane = DataPlane::bind(
            &TlsIdentity {
                anchor: anchor.clone(),
                certificate_der: certificate_der.clone(),
                key: key.clone(),
                endpoint_secret: storage.endpoint_secret(),
            },
            config.data_listen,
        )?;
        data_plane.set_dial_policy(crate::data_plane::DialPolicy::new(
            config.data_dial_allow.clone(),
        ));
        let data_addr = data_plane.local_addr()?;
        let advertised = config
            .data_advertise
            .clone()
            .unwrap_or_else(|| data_addr.to_string());

        let (sync_nudge, sync_nudges) = mpsc::channel(crate::anti_entropy::NUDGE_QUEUE);
        let index_store = crate::index_store::DiskEntries::open(
            &config.data_dir.join(crate::index_store::INDEX_DIR),
            crate::index_store::MemoryBudget(config.index_memory_mib << 20),
        )?;
        let mesh = Arc::new(Mesh::new(
            anchor.clone(),
            storage.clone(),
            &identity,
            &handovers,
            Some(sync_nudge),
            index_store,
        ));
        let (consent_nudge, consent_nudges) = mpsc::channel(crate::consent::sync::NUDGE_QUEUE);
        mesh.set_consent_nudge(consent_nudge);
        let restored = mesh.restore(&advertised)?;
        mesh.set_own_address(&advertised);
        tasks.push(tokio::spawn(sweep_index_periodically(
            mesh.clone(),
            shutdown_rx.clone(),
        )));
        if mesh.is_revoked(&identity.node) {
            anyhow::bail!(
                "the network CA revoked this node's certificate ({}): it may not rejoin the mesh; ask the CA for a new certificate for a new key",
                trust.node_certificate.display()
            );
        }
        tracing::info!(node = %config.name, own_batches = restored.own_batches, remote_batches = restored.remote_batches, logs_applied_again = restored.logs_applied_again, "index restored");

        let publisher = Publisher::new(
            storage.clone(),
            keys.clone(),
            BatchPolicy {
                max_entries: config.publishing.batch_max_entries,
                window_ms: config.publishing.batch_window_ms,
            },
        )?;
        let fhir = FhirService::new(storage.clone(), publisher.clone());

        let bootstrap = config
            .bootstrap
            .iter()
            .map(|b| b.parse())
            .collect::<Result<Vec<libp2p::Multiaddr>, _>>()?;
        let (announce_now, mut announce_requests) = mpsc::channel::<()>(1);
        let gossip = gossip::start(
            GossipSettings {
                key: key.clone(),
                certificate_der: certificate_der.clone(),
                network: anchor.network().to_owned(),
                listen: config.gossip_listen,
                bootstrap,
                announce_now: announce_now.clone(),
            },
            mesh.clone(),
            shutdown_rx.clone(),
        )
        .await?;
        tasks.push(gossip.task);
        let span = tracing::info_span!("node", name = %config.name);
        let spawn = |future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
            tokio::spawn(future.instrument(span.clone()))
        };

        // Trust watcher: spread and enforce each newer revocation list; stop the node when
        // its own certificate is revoked or expires.
        let (fatal_tx, fatal) = mpsc::channel::<String>(1);
        {
            let mesh = mesh.clone();
            let data_plane = data_plane.clone();
            let publish = gossip.publish.clone();
            let keys = keys.clone();
            let mut revocations = mesh.watch_revocations();
            let mut shutdown = shutdown_rx.clone();
            tasks.push(spawn(Box::pin(async move {
                let mut warned = false;
                let mut stopping = false;
                let mut first = true;
                loop {
                    // The key in force (a rotation replaces it).
                    let active = keys.current();
                    let own = active.id();
                    let not_after = active.certificate.not_after;
                    // Check every minute, and right after the certificate's notAfter.
                    let now = (crate::fhir::service::now_ms() / 1000) as i64;
                    let until_expiry = Duration::from_secs((not_after - now + 1).max(0) as u64);
                    let next_check = if first {
                        Duration::ZERO
                    } else if stopping {
                        CERTIFICATE_CHECK_INTERVAL
                    } else {
                        until_expiry.min(CERTIFICATE_CHECK_INTERVAL)
                    };
                    first = false;
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        changed = revocations.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            let revoked = mesh.revoked_nodes();
                            let closed = data_plane.close_revoked(&revoked).await;
                            if closed > 0 {
                                tracing::warn!(closed, "closed data-plane connections to revoked nodes");
                            }
                            if let Some(list) = mesh.revocation_list() {
                                let message = GossipMessage::Revocations { list };
                                let _ = publish.try_send(message.to_bytes());
                            }
                            if revoked.contains(&own) {
                                let reason = "the network CA revoked this node's certificate: it may no longer take part in the mesh; ask the CA for a new certificate for a new key ('zorgmesh certs issue') and start the node with it".to_owned();
                                tracing::error!("{reason}");
                                let _ = fatal_tx.try_send(reason);
                            }
                        }
                        _ = tokio::time::sleep(next_check) => {
                            let now = (crate::fhir::service::now_ms() / 1000) as i64;
                            let status = certificate_status(not_after, now);
                            if status["expired"] == true && !stopping {
                                stopping = true;
                                let reason = format!("this node's certificate expired (notAfter {not_after} s since the epoch): peers refuse it now; have the network CA issue a new certificate ('zorgmesh certs issue') and restart the node with it");
                                tracing::error!("{reason}");
                                let _ = fatal_tx.try_send(reason);
                            } else if status["expiring_soon"] == true && !warned {
                                warned = true;
                                tracing::warn!(days_left = %status["days_left"], "this node's certificate expires soon: have the network CA issue a new one ('zorgmesh certs issue') before it does");
                            }
                        }
                    }
                }
            })));
        }

        // Publisher → own index + gossip.
        let (outbox, mut batches) = mpsc::channel(OUTBOX_DEPTH);
        tasks.push(tokio::spawn(
            publisher.clone().run(outbox, shutdown_rx.clone()),
        ));
        let record_keys = keys.clone();
        let forward_mesh = mesh.clone();
        let publish = gossip.publish.clone();
        let record_address = advertised.clone();
        let make_record = move || {
            let active = record_keys.current();
            NodeRecord {
                node: record_keys.log(),
                handovers: active.handovers.clone(),
                certificate_der: active.certificate_der.clone(),
                data_address: record_address.clone(),
                issued_at_ms: crate::fhir::service::now_ms(),
            }
            .sign(&active.key)
        };
        let own_address = advertised.clone();
        let compact_storage = storage.clone();
        let compact_keys = keys.clone();
        let compact_after = config.publishing.compact_after_batches;
        let mut announce_shutdown = shutdown_rx.clone();
        tasks.push(spawn(Box::pin(async move {
            // Announce at start (queued until peers subscribe), then periodically; forward
            // every own batch with a fresh record.
            let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
            loop {
                let message = tokio::select! {
                    _ = announce_shutdown.changed() => break,
                    _ = announce.tick() => {
                        let record = make_record();
                        forward_mesh.set_own_record(record.clone());
                        GossipMessage::Announce { record }
                    }
                    Some(()) = announce_requests.recv() => GossipMessage::Announce { record: make_record() },
                    batch = batches.recv() => match batch {
                        None => break,
                        Some(batch) => {
                            forward_mesh.apply_own(batch.clone(), &own_address);
                            if compact_storage.own_log_len() > compact_after {
                                match forward_mesh.compact_own_log(&compact_keys).await {
                                    Ok(Some(upto)) => tracing::info!(upto, "own log compacted into a snapshot"),
                                    Ok(None) => {}
                                    Err(e) => tracing::error!(error = %e, "log compaction failed"),
                                }
                            }
                            let record = make_record();
                            forward_mesh.set_own_record(record.clone());
                            GossipMessage::Batch { record, batch }
                        }
                    },
                };
                if publish.send(message.to_bytes()).await.is_err() {
                    break;
                }
            }
        })));
        // Nothing is signed until the node knows its own log's head from a peer.
        {
            let (mesh, data_plane, publisher) =
                (mesh.clone(), data_plane.clone(), publisher.clone());
            let own_address = advertised.clone();
            let wait = Duration::from_millis(config.sync.own_head_wait_ms);
            let mut stop = shutdown_rx.clone();
            tasks.push(spawn(Box::pin(async move {
                // A node stopped while it still waits for peers signs nothing on.
                tokio::select! {
                    _ = stop.changed() => {}
                    outcome = crate::own_log::learn_own_head(
                        &mesh,
                        &data_plane,
                        &publisher,
                        &own_address,
                        wait,
                    ) => tracing::info!(?outcome, "own log head learnt"),
                }
            })));
        }
        let recovered = publisher.recover().await?;
        if recovered > 0 {
            tracing::info!(
                patients = recovered,
                "re-staged locator entries that were not yet published"
            );
        }

        tasks.push(tokio::spawn(data_plane.clone().serve(
            fhir.clone(),
            mesh.clone(),
            evaluator.clone(),
            audit.clone(),
            crate::consent::ConsentEnforcer {
                policy: config.consent,
                holder_ura: identity.identity.organisation_ura.clone(),
                holder_category: identity.identity.category,
            },
            shutdown_rx.clone(),
        )));
        tasks.push(spawn(Box::pin(crate::consent::sync::run(
            mesh.clone(),
            data_plane.clone(),
            fhir.clone(),
            consent_nudges,
            shutdown_rx.clone(),
        ))));
        let patient_keys = Arc::new(PatientKeys::new(
            evaluator_set,
            config.name.clone(),
            evaluator.clone(),
            mesh.clone(),
            data_plane.clone(),
            Duration::from_millis(config.keys.evaluator_timeout_ms),
        ));
        let pending_keys = Arc::new(AtomicU64::new(0));
        tasks.push(spawn(Box::pin(crate::pseudonym::run_key_deriver(
            storage.clone(),
            publisher.clone(),
            patient_keys.clone(),
            pending_keys.clone(),
            shutdown_rx.clone(),
        ))));
        let sync_stats = Arc::new(SyncStats::default());
        tasks.push(spawn(Box::pin(crate::anti_entropy::run(
            mesh.clone(),
            data_plane.clone(),
            Duration::from_millis(config.sync.interval_ms),
            config.publishing.compact_after_batches as u64,
            sync_nudges,
            sync_stats.clone(),
            shutdown_rx.clone(),
        ))));

        // A node that was down asks a peer at once what it missed.
        mesh.request_sync();

        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot bind the FHIR API on {}", config.http_listen))?;
        let http_addr = listener.local_addr()?;
        let public_url = config.public_url(http_addr);
        let auth = Arc::new(crate::auth::Authenticator::open(
            &config.auth.clients_file,
            &config.auth.token_key,
            &public_url,
            config.auth.access_token_lifetime_secs,
        )?);
        let state = ApiState {
            auth,
            fhir: fhir.clone(),
            dossier: DossierResolver {
                mesh: mesh.clone(),
                data_plane: data_plane.clone(),
                fhir,
                keys: patient_keys.clone(),
                network: anchor.network().to_owned(),
                holder_timeout_ms: config.resolve.holder_timeout_ms,
                audit: audit.clone(),
                organisation: identity.identity.organisation_ura.clone(),
            },
            audit: audit.clone(),
            organisation: identity.identity.organisation_ura.clone(),
            base: format!("{public_url}/fhir"),
            cors: crate::fhir::api::cors_layer(&config.http_cors_origins)?,
            node_name: config.name.clone(),
            rotator: Some(Arc::new(Rotator {
                keys: keys.clone(),
                files: key_files.clone(),
                anchor: anchor.clone(),
                storage: storage.clone(),
                publisher: publisher.clone(),
                mesh: mesh.clone(),
                data_plane: data_plane.clone(),
                gossip_rekey: gossip.rekey.clone(),
                announce_now: announce_now.clone(),
                running: tokio::sync::Mutex::new(()),
            })),
            backups: Some(Arc::new(crate::storage::BackupTaker::new(
                storage.clone(),
                config.backup_dir(),
                config.name.clone(),
            ))),
            status: {
                let mesh = mesh.clone();
                let gossip_status = gossip.status.clone();
                let sync_stats = sync_stats.clone();
                let name = config.name.clone();
                let signing = keys.clone();
                let key_status = KeyStatus {
                    keys: patient_keys.clone(),
                    pending: pending_keys.clone(),
                    evaluator: evaluator.clone(),
                };
                std::sync::Arc::new(move || {
                    status_document(
                        &name,
                        &signing,
                        &mesh,
                        &gossip_status,
                        &sync_stats,
                        &key_status,
                    )
                })
            },
        };
        let http_limits = crate::fhir::listener::HttpLimits::for_descriptors(descriptors);
        tasks.push(spawn(Box::pin(crate::fhir::listener::serve(
            listener,
            router(state),
            http_limits,
            shutdown_rx.clone(),
        ))));
        tracing::info!(node = %config.name, http = %http_addr, data = %data_addr, gossip = %gossip.listen_addr, "node running");
        Ok(Self {
            identity,
            http_addr,
            data_addr,
            gossip_addr: gossip.listen_addr,
            mesh,
            gossip_status: gossip.status,
            sync_stats,
            audit,
            shutdown,
            audit_stop,
            audit_task,
            fatal,
            tasks,
        })
    }

    /// The FHIR base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.http_addr)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.identity.identity.name
    }

    /// Waits until the node must stop on its own (revoked or expired certificate) and says why.
    pub async fn fatal(&mut self) -> Option<String> {
        self.fatal.recv().await
    }

    /// Stops every task and waits for them, releasing ports and the data directory.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(_) => {}
                Err(_) => tracing::warn!("a node task did not stop within 10 s"),
            }
        }
        // Last: the trail signs its head once nothing appends any more.
        let _ = self.audit_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(10), self.audit_task)
            .await
            .is_err()
        {
            tracing::warn!("the access trail did not close within 10 s");
        }
    }

    /// Waits for ctrl-c or SIGTERM (as `docker stop` and systemd send), then shuts down.
    pub async fn run_until_ctrl_c(self) -> anyhow::Result<()> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut node = self;
        let fatal = tokio::select! {
            result = tokio::signal::ctrl_c() => { result?; None }
            _ = terminate.recv() => None,
            reason = node.fatal.recv() => reason,
        };
        tracing::info!("shutting down");
        node.shutdown().await;
        match fatal {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        }
    }
}
