//! Key rotation without downtime.
//!
//! The network CA issues a certificate for the same node name and a new key
//! (`zorgmesh certs rotate`), written beside the node's files as `<name>.next.key` and
//! `<name>.next.crt`. Asked to rotate (`POST /admin/rotate`), the running node:
//!
//! 1. pauses signing and signs a [`HandOverBody`] with the old and the new key: from the next
//!    sequence on, its log is signed by the new key, continuing from the last batch;
//! 2. keeps the hand-over chain durably (from then on the node is the new key);
//! 3. moves the files: the new key and certificate take the configured paths, the old
//!    certificate becomes `<name>.retired.crt` (for `certs revoke` once peers have caught
//!    up), the old key is gone;
//! 4. switches its QUIC server and client certificate in place and restarts its gossip
//!    swarm under the new identity, then announces a record carrying the chain.
//!
//! Peers keep accepting connections with the old certificate until it expires or is
//! revoked; batches are judged by the key in force at their sequence.

use crate::storage::Storage;
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use zorgmesh_certs::{read_certificate, read_signing_key, TrustAnchor, VerifiedNode};
use zorgmesh_protocol::codec;
use zorgmesh_protocol::handover::{
    verify_chain, HandOverBody, SignedHandOver, MAX_HANDOVERS, MAX_HANDOVER_BYTES,
};
use zorgmesh_protocol::NodeId;

/// The key a node signs with now, its certificate, and its log's hand-over chain.
#[derive(Clone, Debug)]
pub struct ActiveKey {
    /// The signing key in force.
    pub key: SigningKey,
    /// Its certificate (DER).
    pub certificate_der: Vec<u8>,
    /// The certificate, verified.
    pub certificate: VerifiedNode,
    /// The log's hand-overs, oldest first.
    pub handovers: Vec<SignedHandOver>,
}

impl ActiveKey {
    /// The key's id.
    pub fn id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }
}

/// The node's keys, shared by everything that signs; a hand-over replaces them.
#[derive(Debug)]
pub struct NodeKeys {
    log: NodeId,
    active: RwLock<Arc<ActiveKey>>,
}

impl NodeKeys {
    /// Keys for a node whose log id is the first hand-over's log, or the key itself.
    pub fn new(active: ActiveKey) -> Self {
        let log = active.handovers.first().map_or(active.id(), |h| h.body.log);
        Self {
            log,
            active: RwLock::new(Arc::new(active)),
        }
    }

    /// The node's log id (the key that signed its first batch).
    pub fn log(&self) -> NodeId {
        self.log
    }

    /// The key in force now.
    pub fn current(&self) -> Arc<ActiveKey> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, active: ActiveKey) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
    }
}

/// Where a node's key material lives: the configured files, the next ones `certs rotate`
/// writes, and where the retired certificate goes.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    /// The configured key file.
    pub key: PathBuf,
    /// The configured certificate file.
    pub certificate: PathBuf,
}

/// `dir/<stem>.<tag>.<ext>` for `dir/<stem>.<ext>`.
fn tagged(path: &Path, tag: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    path.with_file_name(name)
}

impl KeyFiles {
    /// Where `certs rotate` puts the next key.
    pub fn next_key(&self) -> PathBuf {
        tagged(&self.key, "next")
    }

    /// Where `certs rotate` puts the next certificate.
    pub fn next_certificate(&self) -> PathBuf {
        tagged(&self.certificate, "next")
    }

    /// Where the old certificate goes after a hand-over.
    pub fn retired_certificate(&self) -> PathBuf {
        tagged(&self.certificate, "retired")
    }

    /// Moves the next key and certificate into place and keeps the old certificate as
    /// `retired`. Each rename is atomic; a crash between them is finished at the next
    /// start ([`load_own_keys`]).
    pub fn promote_next(&self) -> std::io::Result<()> {
        if self.certificate.exists() && self.next_certificate().exists() {
            std::fs::rename(&self.certificate, self.retired_certificate())?;
        }
        if self.next_certificate().exists() {
            std::fs::rename(self.next_certificate(), &self.certificate)?;
        }
        if self.next_key().exists() {
            std::fs::rename(self.next_key(), &self.key)?;
        }
        Ok(())
    }
}

/// `zorgmesh certs rotate`: the network CA (in `ca_dir`) issues a certificate for the node
/// of `certificate` (same identity) and a new key, valid `days` days, and writes them as the
/// node's next files beside `certificate` (the key file is `certificate` with `.key`).
pub fn issue_next(ca_dir: &Path, certificate: &Path, days: i64) -> anyhow::Result<KeyFiles> {
    use anyhow::Context;
    let ca_files = zorgmesh_certs::CaFiles::in_dir(ca_dir);
    let ca = ca_files.load_authority()?;
    let anchor = ca_files.load_anchor()?;
    let current = read_certificate(certificate)?;
    let verified = anchor
        .verify_node_certificate(&current, None)
        .with_context(|| {
            format!(
                "{} is not a certificate of this network",
                certificate.display()
            )
        })?;
    if days <= 0 {
        anyhow::bail!("--days must be positive");
    }
    let files = KeyFiles {
        key: certificate.with_extension("key"),
        certificate: certificate.to_path_buf(),
    };
    if files.next_key().exists() {
        anyhow::bail!(
            "{} already exists: a rotation is prepared and not yet activated (activate it with POST /admin/rotate, or remove both next files to start over)",
            files.next_key().display()
        );
    }
    let now = time::OffsetDateTime::now_utc();
    let key = crate::provision::new_key();
    let der = ca
        .issue(
            &verified.identity,
            &key,
            now - time::Duration::minutes(5),
            now + time::Duration::days(days),
        )
        .map_err(anyhow::Error::msg)?;
    zorgmesh_certs::write_signing_key(&files.next_key(), &key)?;
    zorgmesh_certs::write_certificate(&files.next_certificate(), &der)?;
    Ok(files)
}

/// Why a rotation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// No next key or certificate, or they do not fit together or with this node.
    #[error("{0}")]
    NextKey(String),
    /// The log was handed over as often as it may be.
    #[error("this log has been handed over {MAX_HANDOVERS} times, the most it may: issue a new certificate for a new key ('zorgmesh certs issue') and start the node on a fresh data directory")]
    ChainFull,
    /// Keeping the hand-over failed; nothing changed.
    #[error("cannot keep the hand-over: {0}")]
    Storage(String),
}

/// Reads and checks the next key and certificate against the network CA and this node.
pub fn load_next(
    files: &KeyFiles,
    anchor: &TrustAnchor,
    current: &ActiveKey,
    now_secs: i64,
) -> Result<(SigningKey, Vec<u8>, VerifiedNode), RotationError> {
    let next = |m: String| RotationError::NextKey(m);
    if !files.next_key().exists() || !files.next_certificate().exists() {
        return Err(next(format!(
            "no next key: run 'zorgmesh certs rotate' first; it writes {} and {}",
            files.next_key().display(),
            files.next_certificate().display()
        )));
    }
    crate::at_rest::check_private_file(&files.next_key()).map_err(|e| next(e.to_string()))?;
    let key = read_signing_key(&files.next_key()).map_err(|e| next(e.to_string()))?;
    let der = read_certificate(&files.next_certificate()).map_err(|e| next(e.to_string()))?;
    let certificate = anchor
        .verify_node_certificate(&der, Some(now_secs))
        .map_err(|e| next(format!("{}: {e}", files.next_certificate().display())))?;
    if certificate.node != NodeId(key.verifying_key().to_bytes()) {
        return Err(next(format!(
            "{} does not belong to {}",
            files.next_key().display(),
            files.next_certificate().display()
        )));
    }
    if certificate.identity.name != current.certificate.identity.name {
        return Err(next(format!(
            "the next certificate is for node {:?}, this node is {:?}",
            certificate.identity.name, current.certificate.identity.name
        )));
    }
    if certificate.node == current.id() {
        return Err(next("the next key is the key in force".into()));
    }
    Ok((key, der, certificate))
}

/// Signs the hand-over from `current` to the next key at `from_sequence` (the last batch
/// having hash `previous_hash`), keeps the chain in `storage` and returns the new active
/// key. Nothing changes when keeping fails.
#[allow(clippy::too_many_arguments)]
pub fn hand_over(
    storage: &Storage,
    network: &str,
    log: NodeId,
    current: &ActiveKey,
    next: (SigningKey, Vec<u8>, VerifiedNode),
    from_sequence: u64,
    previous_hash: [u8; 32],
    now_ms: u64,
) -> Result<ActiveKey, RotationError> {
    if current.handovers.len() >= MAX_HANDOVERS {
        return Err(RotationError::ChainFull);
    }
    let (key, certificate_der, certificate) = next;
    let handover = HandOverBody {
        version: 1,
        network: network.to_owned(),
        log,
        old_key: current.id(),
        new_key: certificate.node,
        new_certificate_der: certificate_der.clone(),
        from_sequence,
        previous_hash,
        issued_at_ms: now_ms,
    }
    .sign(&current.key, &key);
    let mut handovers = current.handovers.clone();
    handovers.push(handover);
    verify_chain(log, network, &handovers)
        .map_err(|e| RotationError::NextKey(format!("the hand-over does not verify: {e}")))?;
    storage
        .store_own_handovers(&codec::encode(&handovers))
        .map_err(|e| RotationError::Storage(e.to_string()))?;
    Ok(ActiveKey {
        key,
        certificate_der,
        certificate,
        handovers,
    })
}

/// The node's keys at start: the configured key and certificate, and the hand-over chain
/// kept in storage. When the chain says the node already handed over to the key in the
/// next files (a crash between keeping the hand-over and moving the files), the move is
/// finished first.
pub fn load_own_keys(
    files: &KeyFiles,
    anchor: &TrustAnchor,
    storage: &Storage,
    now_secs: i64,
) -> anyhow::Result<ActiveKey> {
    let handovers: Vec<SignedHandOver> = match storage.own_handovers()? {
        None => Vec::new(),
        Some(bytes) => codec::decode(&bytes, MAX_HANDOVERS * MAX_HANDOVER_BYTES + 16)
            .map_err(|e| anyhow::anyhow!("this node's kept hand-over chain cannot be read: {e}"))?,
    };
    let in_force = handovers.last().map(|h| h.body.new_key);
    crate::at_rest::check_private_file(&files.key)?;
    let read_key = || read_signing_key(&files.key);
    let mut key = read_key()?;
    if let Some(expected) = in_force {
        if NodeId(key.verifying_key().to_bytes()) != expected {
            let next_matches = files.next_key().exists()
                && read_signing_key(&files.next_key())
                    .is_ok_and(|k| NodeId(k.verifying_key().to_bytes()) == expected);
            if !next_matches {
                anyhow::bail!(
                    "this node handed its log over to key {expected}, but {} holds another key; restore the key the node rotated to",
                    files.key.display()
                );
            }
            tracing::warn!("finishing a key rotation that a crash interrupted");
            files.promote_next()?;
            key = read_key()?;
        }
    }
    let certificate_der = read_certificate(&files.certificate)?;
    let certificate = anchor
        .verify_node_certificate(&certificate_der, Some(now_secs))
        .map_err(|e| anyhow::anyhow!("node certificate {}: {e}", files.certificate.display()))?;
    if certificate.node != NodeId(key.verifying_key().to_bytes()) {
        anyhow::bail!(
            "{} does not belong to the certificate {}",
            files.key.display(),
            files.certificate.display()
        );
    }
    if let Some(first) = handovers.first() {
        verify_chain(first.body.log, anchor.network(), &handovers)
            .map_err(|e| anyhow::anyhow!("this node's kept hand-over chain: {e}"))?;
    }
    Ok(ActiveKey {
        key,
        certificate_der,
        certificate,
        handovers,
    })
}

/// What a rotation did (the answer of `POST /admin/rotate`).
#[derive(Debug, serde::Serialize)]
pub struct RotationReport {
    /// The node's log id (unchanged).
    pub log: String,
    /// The key handed over from.
    pub old_key: String,
    /// The key in force now.
    pub new_key: String,
    /// First sequence signed by the new key.
    pub from_sequence: u64,
    /// Hand-overs in the log's chain now.
    pub handovers: usize,
    /// The new gossip address (the libp2p peer id follows the key).
    pub gossip_address: String,
    /// Where the old certificate went: revoke it once peers have caught up.
    pub retired_certificate: String,
}

/// Everything a running node switches when it rotates its key.
pub struct Rotator {
    /// The node's keys.
    pub keys: Arc<NodeKeys>,
    /// Its key files.
    pub files: KeyFiles,
    /// The network trust anchor.
    pub anchor: TrustAnchor,
    /// Its storage (the chain is kept there).
    pub storage: Arc<Storage>,
    /// Its publisher (signing pauses during the hand-over).
    pub publisher: crate::publishing::Publisher,
    /// Its mesh view.
    pub mesh: Arc<crate::mesh::Mesh>,
    /// Its data plane (certificate switched in place).
    pub data_plane: crate::data_plane::DataPlane,
    /// Its gossip task (restarted under the new key).
    pub gossip_rekey: tokio::sync::mpsc::Sender<crate::gossip::Rekey>,
    /// Asks the node to announce its record now.
    pub announce_now: tokio::sync::mpsc::Sender<()>,
    /// One rotation at a time.
    pub running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator").finish_non_exhaustive()
    }
}

impl Rotator {
    /// Hands the node's log over to the next key and switches every part of the node to it.
    pub async fn rotate(&self) -> Result<RotationReport, RotationError> {
        let _one = self.running.lock().await;
        let now_ms = crate::fhir::service::now_ms();
        let current = self.keys.current();
        let next = load_next(&self.files, &self.anchor, &current, (now_ms / 1000) as i64)?;
        if self.mesh.is_revoked(&next.2.node) {
            return Err(RotationError::NextKey(
                "the network CA revoked the next certificate".into(),
            ));
        }
        let (storage, network, log) = (&self.storage, self.anchor.network(), self.keys.log());
        let active = self
            .publisher
            .with_signing_paused(|from, previous| {
                let active = hand_over(
                    storage, network, log, &current, next, from, previous, now_ms,
                )?;
                self.keys.replace(active.clone());
                Ok::<_, RotationError>(active)
            })
            .await?;
        let handover = active.handovers.last().expect("just added").body.clone();
        tracing::warn!(
            log = %log,
            old_key = %handover.old_key,
            new_key = %handover.new_key,
            from_sequence = handover.from_sequence,
            "log handed over to the new key"
        );
        // From here on the node is the new key; what follows switches the transports.
        if let Err(e) = self
            .mesh
            .hand_over_own(&active.handovers, &active.certificate)
        {
            tracing::error!(error = %e, "own index refused the hand-over");
        }
        if let Err(e) = self.files.promote_next() {
            tracing::error!(error = %e, "cannot move the new key files into place; the next start finishes it");
        }
        if let Err(e) = self
            .data_plane
            .set_identity(&crate::data_plane::TlsIdentity {
                anchor: self.anchor.clone(),
                certificate_der: active.certificate_der.clone(),
                key: active.key.clone(),
                endpoint_secret: self.storage.endpoint_secret(),
            })
        {
            tracing::error!(error = %e, "cannot switch the data-plane certificate");
        }
        let (done, rebound) = tokio::sync::oneshot::channel();
        let gossip_address = match self
            .gossip_rekey
            .send(crate::gossip::Rekey {
                key: active.key.clone(),
                certificate_der: active.certificate_der.clone(),
                done,
            })
            .await
        {
            Err(_) => "gossip stopped".to_owned(),
            Ok(()) => match tokio::time::timeout(std::time::Duration::from_secs(10), rebound).await
            {
                Ok(Ok(Ok(address))) => address.to_string(),
                Ok(Ok(Err(e))) => {
                    tracing::error!(error = %e, "gossip did not restart under the new key");
                    format!("gossip failed: {e}")
                }
                _ => "gossip did not confirm the restart in time".to_owned(),
            },
        };
        let _ = self.announce_now.try_send(());
        Ok(RotationReport {
            log: log.to_hex(),
            old_key: handover.old_key.to_hex(),
            new_key: handover.new_key.to_hex(),
            from_sequence: handover.from_sequence,
            handovers: active.handovers.len(),
            gossip_address,
            retired_certificate: self.files.retired_certificate().display().to_string(),
        })
    }
}
