//! The data plane: QUIC (quinn) with TLS 1.3 mutual authentication. Both sides present
//! their node certificate and verify the other's chain to the network CA; the client also
//! checks that the server's key is the holder it meant to reach. Requests and responses
//! are `zorgmesh/fetch/3` frames (see `zorgmesh_protocol::fetch`), every one bounded. A
//! request for patient data carries the requester's signed claims, bound to the connection
//! (`zorgmesh_protocol::claims`), which the holder checks before anything leaves it.

use crate::audit::{AuditAction, AuditOutcome, AuditTrail};
use crate::fhir::FhirService;
use crate::mesh::Mesh;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use zorgmesh_certs::{TrustAnchor, VerifiedNode};
use zorgmesh_protocol::audit::AuditRecord;
use zorgmesh_protocol::claims::{
    ClaimsGuard, Practitioner, PurposeOfUse, RequesterClaims, SignedClaims, CHANNEL_LABEL,
    CLAIMS_VERSION,
};
use zorgmesh_protocol::fetch::{
    frame, FetchErrorCode, FetchFrame, FetchRequest, FETCH_ALPN, MAX_FRAME_BYTES,
    MAX_REQUEST_BYTES, MAX_RESOURCES_PER_RESPONSE,
};
use zorgmesh_protocol::oprf::{EvaluationRequest, PartialEvaluation};
use zorgmesh_protocol::sync::{
    heads_digest, heads_vector, PublisherHead, RangeRequest, MAX_BATCHES_PER_REQUEST, MAX_HEADS,
};
use zorgmesh_protocol::{NodeId, PatientKey};

/// What a resolver says about a request for patient data; the data plane adds the
/// requester, the patient, a nonce, the time and the connection's binding, and signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// The API client that asked (for this node's own trail; not sent to holders).
    pub client_id: String,
    /// The practitioner the request is for (none for a patient's own request).
    pub practitioner: Option<Practitioner>,
    /// Why.
    pub purpose: PurposeOfUse,
    /// The reason of an emergency request.
    pub emergency_reason: String,
}

impl RequestContext {
    /// A system's own request for treatment, naming no person.
    pub fn system_treatment() -> Self {
        Self {
            client_id: String::new(),
            practitioner: None,
            purpose: PurposeOfUse::Treatment,
            emergency_reason: String::new(),
        }
    }
}

/// The channel binding of a QUIC connection: its TLS exporter value under
/// [`CHANNEL_LABEL`]; both ends compute the same 32 bytes, which no third connection shares.
pub fn channel_binding(connection: &quinn::Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    connection
        .export_keying_material(&mut out, CHANNEL_LABEL, b"")
        .map_err(|e| format!("no channel binding: {e:?}"))?;
    Ok(out)
}

/// The evaluator this node runs, if it holds an OPRF key share.
pub type MaybeEvaluator = Option<Arc<crate::pseudonym::evaluator::Evaluator>>;

/// Connections the server serves at once (handshaking or established).
const MAX_CONNECTIONS: usize = 512;
/// Connections one source address may hold at once (handshaking or established): a single
/// host cannot take every slot.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// A handshake that has not finished by then is dropped, and its slot freed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams per connection at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The connection could not be set up.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The holder's address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The peer is not who it should be.
    #[error("holder identity check failed: {0}")]
    Identity(String),
    /// The stream broke.
    #[error("transport: {0}")]
    Transport(String),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The holder answered with an error.
    #[error("holder refused: {code:?}: {message}")]
    Remote {
        /// Its code.
        code: FetchErrorCode,
        /// Its message.
        message: String,
    },
}

/// A holder's answer to a request for a patient's data.
#[derive(Clone, Debug)]
pub struct PatientAnswer {
    /// What it sent.
    pub resources: Vec<serde_json::Value>,
    /// Its proof material, when it sent everything it holds.
    pub holding: Option<Holding>,
    /// True when the patient's consent kept some or all of its data back.
    pub withheld_by_consent: bool,
}

/// How far [`DataPlane::exchange`] reads an answer before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadUntil {
    /// Up to its `End`.
    End,
    /// Up to its proof (`Holding` or `ConsentWithheld`), when it has one.
    Proof,
}

/// The rest of a holder's answer to a patient request after its proof: the `End` the holder
/// sends once the entries it made of the access are durable in its trail (`SPEC.md`,
/// "Patient resources"). The answer may be used only once [`Self::recorded`] says so.
pub struct RecordConfirmation {
    recv: quinn::RecvStream,
    /// Items the answer held before its proof.
    items: usize,
}

impl std::fmt::Debug for RecordConfirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordConfirmation")
            .field("items", &self.items)
            .finish_non_exhaustive()
    }
}

impl RecordConfirmation {
    /// Waits for the holder's `End`: `Ok` when it came with the right count, the holder's
    /// error (such as "not recorded") or a broken stream otherwise.
    pub async fn recorded(mut self) -> Result<(), FetchError> {
        match read_answer_frame(&mut self.recv).await? {
            FetchFrame::End { count } => check_count(count, self.items),
            FetchFrame::Error { code, message } => Err(FetchError::Remote { code, message }),
            other => Err(FetchError::Protocol(format!(
                "expected End after the proof, got {other:?}"
            ))),
        }
    }
}

/// Reads one length-prefixed answer frame.
async fn read_answer_frame(recv: &mut quinn::RecvStream) -> Result<FetchFrame, FetchError> {
    let mut length = [0u8; 4];
    recv.read_exact(&mut length)
        .await
        .map_err(|e| FetchError::Transport(format!("response ended early: {e}")))?;
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FetchError::Protocol(format!(
            "frame of {length} bytes exceeds {MAX_FRAME_BYTES}"
        )));
    }
    let mut body = vec![0u8; length];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| FetchError::Transport(format!("frame cut short: {e}")))?;
    FetchFrame::from_bytes(&body).map_err(|e| FetchError::Protocol(e.to_string()))
}

/// The frames of an answer that its `End` counts.
fn counted_items(frames: &[FetchFrame]) -> usize {
    frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                FetchFrame::Resource { .. }
                    | FetchFrame::Message { .. }
                    | FetchFrame::Snapshot { .. }
                    | FetchFrame::AccessEntry { .. }
            )
        })
        .count()
}

/// Checks an `End`'s count against the items received.
fn check_count(count: u32, counted: usize) -> Result<(), FetchError> {
    if count as usize != counted {
        return Err(FetchError::Protocol(format!(
            "holder announced {count} items but sent {counted}"
        )));
    }
    Ok(())
}

/// What a holder sends with a patient's resources so that the resolver can check them
/// against the holder's locator entry: the salt of its holding commitment, and how many of
/// the resources (from the first) the commitment covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The commitment's salt.
    pub salt: [u8; 32],
    /// Compartment resources sent first.
    pub members: u32,
}

/// TLS material of a node.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The network trust anchor.
    pub anchor: TrustAnchor,
    /// This node's certificate (DER).
    pub certificate_der: Vec<u8>,
    /// This node's key.
    pub key: SigningKey,
    /// A secret that outlives key rotations and restarts (kept in the node's storage), from
    /// which the QUIC stateless-reset and connection-ID keys are derived.
    pub endpoint_secret: [u8; 32],
}

/// The QUIC stateless-reset key, derived from the node's endpoint secret so that a
/// restarted node (also after a key rotation) can reset connections its previous process
/// left open: peers learn at once that a crashed node's connections are gone instead of
/// waiting for an idle timeout.
fn reset_key(secret: &[u8; 32]) -> ring::hmac::Key {
    let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&derive, b"zorgmesh/quic-reset-key/v1");
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref())
}

/// The key of the connection-ID generator, derived from the endpoint secret: a restarted
/// node recognises its previous process's connection IDs as its own, which is what lets it
/// answer them with a stateless reset.
fn cid_key(secret: &[u8; 32]) -> u64 {
    let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&derive, b"zorgmesh/quic-cid-key/v1");
    u64::from_le_bytes(tag.as_ref()[..8].try_into().expect("32-byte tag"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(anchor: &TrustAnchor) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(anchor.der().to_vec()))?;
    Ok(Arc::new(roots))
}

fn private_key(key: &SigningKey) -> anyhow::Result<PrivateKeyDer<'static>> {
    let der = key
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encode key: {e}"))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        der.as_bytes().to_vec(),
    )))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("in range")));
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    Arc::new(transport)
}

/// The quinn server and client configurations for a node.
pub fn quic_configs(
    identity: &TlsIdentity,
) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let roots = roots(&identity.anchor)?;
    let chain = vec![CertificateDer::from(identity.certificate_der.clone())];
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private_key(&identity.key)?)?;
    server.alpn_protocols = vec![FETCH_ALPN.to_vec()];
    let mut server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server_config.transport_config(transport());

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private_key(&identity.key)?)?;
    client.alpn_protocols = vec![FETCH_ALPN.to_vec()];
    let mut client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client_config.transport_config(transport());
    Ok((server_config, client_config))
}

fn peer_certificate(
    connection: &quinn::Connection,
    anchor: &TrustAnchor,
) -> Result<VerifiedNode, String> {
    let identity = connection
        .peer_identity()
        .ok_or("peer presented no certificate")?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type")?;
    let leaf = chain.first().ok_or("empty certificate chain")?;
    let now = (crate::fhir::service::now_ms() / 1000) as i64;
    anchor
        .verify_node_certificate(leaf, Some(now))
        .map_err(|e| e.to_string())
}

/// Which addresses this node may dial on the data plane. A node record is signed by its
/// node, but a certified node could still name any address; this is the operator's bound
/// on where the node sends packets (no SSRF into the local network or a metadata service).
#[derive(Clone, Debug, Default)]
pub struct DialPolicy {
    allow: Option<Vec<ipnet::IpNet>>,
}

impl DialPolicy {
    /// Only `allow` when given; otherwise every address but the special ranges.
    pub fn new(allow: Option<Vec<ipnet::IpNet>>) -> Self {
        Self { allow }
    }

    /// Whether `ip` may be dialled.
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        match &self.allow {
            Some(ranges) => ranges.iter().any(|range| range.contains(&ip)),
            None => match ip {
                std::net::IpAddr::V4(v4) => {
                    !(v4.is_loopback()
                        || v4.is_link_local()
                        || v4.is_unspecified()
                        || v4.is_multicast()
                        || v4.is_broadcast())
                }
                std::net::IpAddr::V6(v6) => {
                    let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
                    let mapped_ok = v6
                        .to_ipv4_mapped()
                        .is_none_or(|v4| Self::default().permits(v4.into()));
                    !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || link_local)
                        && mapped_ok
                }
            },
        }
    }
}

/// Resolves a `host:port` data-plane address (DNS name or IP) to a socket address.
pub async fn resolve_address(address: &str) -> Result<SocketAddr, FetchError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let unresolved = |message: String| FetchError::Connect {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        message,
    };
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| unresolved(format!("cannot resolve {address}: {e}")))?
        .next()
        .ok_or_else(|| unresolved(format!("{address} resolves to no address")))
}

/// The data plane of one node: a QUIC endpoint that serves and fetches.
#[derive(Clone)]
pub struct DataPlane {
    endpoint: quinn::Endpoint,
    /// The client side's TLS config and the key of its certificate, which signs requester
    /// claims (both replaced by a key rotation).
    client_config: Arc<std::sync::RwLock<(quinn::ClientConfig, SigningKey)>>,
    /// Where the client may connect.
    dial_policy: Arc<std::sync::RwLock<DialPolicy>>,
    anchor: TrustAnchor,
    /// Open connections by holder, with the key whose certificate each presented.
    connections: Arc<tokio::sync::Mutex<HashMap<NodeId, (quinn::Connection, SigningKey)>>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane").finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Binds the endpoint.
    pub fn bind(identity: &TlsIdentity, listen: SocketAddr) -> anyhow::Result<Self> {
        let (server, client) = quic_configs(identity)?;
        let socket = std::net::UdpSocket::bind(listen)
            .map_err(|e| anyhow::anyhow!("cannot bind the QUIC data plane on {listen}: {e}"))?;
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(reset_key(&identity.endpoint_secret)));
        let cid_key = cid_key(&identity.endpoint_secret);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Self {
            endpoint,
            client_config: Arc::new(std::sync::RwLock::new((client, identity.key.clone()))),
            dial_policy: Arc::new(std::sync::RwLock::new(DialPolicy::default())),
            anchor: identity.anchor.clone(),
            connections: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Serves fetches from `fhir` until `shutdown`.
    pub async fn serve(
        self,
        fhir: FhirService,
        mesh: Arc<Mesh>,
        evaluator: MaybeEvaluator,
        audit: AuditTrail,
        consent: crate::consent::ConsentEnforcer,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let claims_guard = Arc::new(std::sync::Mutex::new(ClaimsGuard::default()));
        let per_address = crate::limits::AddressSlots::new(MAX_CONNECTIONS_PER_ADDRESS);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.changed() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(i) => i,
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            // A source that has not proved it receives at its address gets a stateless
            // Retry: a flood of Initial packets (spoofed or not) takes no slot.
            if !incoming.remote_address_validated() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            let Some(address_slot) = per_address.take(incoming.remote_address().ip()) else {
                incoming.refuse();
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let fhir = fhir.clone();
            let anchor = self.anchor.clone();
            let mesh = mesh.clone();
            let evaluator = evaluator.clone();
            let claims_guard = claims_guard.clone();
            let audit = audit.clone();
            let consent = consent.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let _address_slot = address_slot;
                let served = serve_connection(
                    incoming,
                    HolderServices {
                        fhir,
                        audit,
                        consent,
                    },
                    mesh,
                    evaluator,
                    anchor,
                    claims_guard,
                );
                if let Err(e) = served.await {
                    tracing::debug!(error = %e, "data-plane connection ended");
                }
            });
        }
        tasks.abort_all();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.connections.lock().await.clear();
    }

    /// A connection to `holder`: the cached one when it is alive and `reuse` is set (second
    /// value true), else a new one.
    async fn connection(
        &self,
        holder: NodeId,
        name: &str,
        addr: SocketAddr,
        reuse: bool,
    ) -> Result<(quinn::Connection, SigningKey, bool), FetchError> {
        // The cache lock is never held across a handshake: a holder that does not answer
        // must not hold up fetches from the others.
        if reuse {
            let cache = self.connections.lock().await;
            if let Some((connection, key)) = cache.get(&holder) {
                if connection.close_reason().is_none() && connection.remote_address() == addr {
                    return Ok((connection.clone(), key.clone(), true));
                }
            }
        }
        let permitted = self
            .dial_policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .permits(addr.ip());
        if !permitted {
            return Err(FetchError::Connect {
                addr,
                message: format!(
                    "{name}'s address {addr} is outside the ranges this node may dial (data_dial_allow)"
                ),
            });
        }
        let (client_config, key) = self
            .client_config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let connecting = self
            .endpoint
            .connect_with(client_config, addr, &zorgmesh_certs::node_dns_name(name))
            .map_err(|e| FetchError::Connect {
                addr,
                message: e.to_string(),
            })?;
        let connection = connecting.await.map_err(|e| FetchError::Connect {
            addr,
            message: e.to_string(),
        })?;
        let peer = peer_certificate(&connection, &self.anchor).map_err(FetchError::Identity)?;
        // The node is its name, which the network CA binds to each of the node's keys in
        // turn: a holder that rotated its key answers with the new certificate while this
        // node may not have seen the hand-over yet. (rustls checked the name against the
        // TLS server name already; the check here says so in the error.)
        if peer.identity.name != name {
            connection.close(1u32.into(), b"wrong node");
            return Err(FetchError::Identity(format!(
                "{addr} answered as {} ({}), not as the holder we asked for ({name})",
                peer.identity.name, peer.node
            )));
        }
        self.connections
            .lock()
            .await
            .insert(holder, (connection.clone(), key.clone()));
        Ok((connection, key, false))
    }

    /// Sends one request to `holder` and collects the answer's frames up to `End`. A
    /// request that fails on a cached connection (the holder restarted) is retried once on a
    /// new one.
    async fn request(
        &self,
        holder: NodeId,
        holder_name: &str,
        addr: SocketAddr,
        request: &FetchRequest,
    ) -> Result<Vec<FetchFrame>, FetchError> {
        self.request_built(holder, holder_name, addr, |_, _| Ok(request.clone()))
            .await
    }

    /// [`Self::request`] with a request made for the connection it goes on (claims are
    /// bound to the connection and signed by the key its certificate names).
    async fn request_built(
        &self,
        holder: NodeId,
        holder_name: &str,
        addr: SocketAddr,
        build: impl Fn(&quinn::Connection, &SigningKey) -> Result<FetchRequest, FetchError>,
    ) -> Result<Vec<FetchFrame>, FetchError> {
        let (frames, _) = self
            .request_until(holder, holder_name, addr, build, ReadUntil::End)
            .await?;
        Ok(frames)
    }

    /// [`Self::request_built`], reading the answer up to `until`; with
    /// [`ReadUntil::Proof`], the rest of the answer (its `End`) is left to the returned
    /// [`RecordConfirmation`].
    async fn request_until(
        &self,
        holder: NodeId,
        holder_name: &str,
        addr: SocketAddr,
        build: impl Fn(&quinn::Connection, &SigningKey) -> Result<FetchRequest, FetchError>,
        until: ReadUntil,
    ) -> Result<(Vec<FetchFrame>, Option<RecordConfirmation>), FetchError> {
        let (connection, key, reused) = self.connection(holder, holder_name, addr, true).await?;
        match self
            .exchange(&connection, &build(&connection, &key)?, until)
            .await
        {
            Err(FetchError::Transport(reason)) if reused => {
                tracing::debug!(holder = %holder_name, reason = %reason, "cached connection failed; reconnecting");
                let (connection, key, _) =
                    self.connection(holder, holder_name, addr, false).await?;
                self.exchange(&connection, &build(&connection, &key)?, until)
                    .await
            }
            other => other,
        }
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        request: &FetchRequest,
        until: ReadUntil,
    ) -> Result<(Vec<FetchFrame>, Option<RecordConfirmation>), FetchError> {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        send.write_all(&frame(&request.to_bytes()))
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        send.finish()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let mut frames = Vec::new();
        loop {
            match read_answer_frame(&mut recv).await? {
                FetchFrame::End { count } => {
                    check_count(count, counted_items(&frames))?;
                    return Ok((frames, None));
                }
                FetchFrame::Error { code, message } => {
                    return Err(FetchError::Remote { code, message })
                }
                other => {
                    if frames.len() >= MAX_RESOURCES_PER_RESPONSE as usize {
                        return Err(FetchError::Protocol("too many frames in one answer".into()));
                    }
                    let proof = matches!(
                        other,
                        FetchFrame::Holding { .. } | FetchFrame::ConsentWithheld
                    );
                    frames.push(other);
                    if proof && until == ReadUntil::Proof {
                        let items = counted_items(&frames);
                        return Ok((frames, Some(RecordConfirmation { recv, items })));
                    }
                }
            }
        }
    }

    /// Fetches every resource `holder` has for `patient` and the patient's consent
    /// releases to this node, with the holder's proof material for checking them against
    /// its locator entry (see [`Holding`]) when nothing was withheld.
    pub async fn fetch_patient(
        &self,
        holder: NodeId,
        holder_name: &str,
        addr: SocketAddr,
        patient: PatientKey,
        context: &RequestContext,
    ) -> Result<(PatientAnswer, Option<RecordConfirmation>), FetchError> {
        let network = self.anchor.network().to_owned();
        let (frames, confirmation) = self
            .request_until(
                holder,
                holder_name,
                addr,
                |connection, key| {
                    Ok(FetchRequest::PatientResources {
                        claims: Box::new(self.claims(connection, key, &network, patient, context)?),
                    })
                },
                ReadUntil::Proof,
            )
            .await?;
        let mut answer = PatientAnswer {
            resources: Vec::with_capacity(frames.len()),
            holding: None,
            withheld_by_consent: false,
        };
        for frame in frames {
            let proof_seen = answer.holding.is_some() || answer.withheld_by_consent;
            match frame {
                FetchFrame::Resource { json } => answer.resources.push(
                    serde_json::from_slice(&json)
                        .map_err(|e| FetchError::Protocol(format!("resource is not JSON: {e}")))?,
                ),
                FetchFrame::Holding { salt, members } if !proof_seen => {
                    answer.holding = Some(Holding { salt, members })
                }
                FetchFrame::ConsentWithheld if !proof_seen => answer.withheld_by_consent = true,
                other => return Err(FetchError::Protocol(format!("unexpected frame {other:?}"))),
            }
        }
        Ok((answer, confirmation))
    }

    /// Asks `node` for its access-trail entries about `patient` (purpose
    /// patient-self-access or compliance).
    pub async fn fetch_access_log(
        &self,
        node: NodeId,
        node_name: &str,
        addr: SocketAddr,
        patient: PatientKey,
        context: &RequestContext,
    ) -> Result<Vec<zorgmesh_protocol::audit::AuditEntry>, FetchError> {
        let network = self.anchor.network().to_owned();
        let frames = self
            .request_built(node, node_name, addr, |connection, key| {
                Ok(FetchRequest::AccessLog {
                    claims: Box::new(self.claims(connection, key, &network, patient, context)?),
                })
            })
            .await?;
        frames
            .into_iter()
            .map(|frame| match frame {
                FetchFrame::AccessEntry { bytes } => {
                    zorgmesh_protocol::audit::AuditEntry::from_bytes(&bytes).map_err(|e| {
                        FetchError::Protocol(format!("an access entry does not decode: {e}"))
                    })
                }
                other => Err(FetchError::Protocol(format!("unexpected frame {other:?}"))),
            })
            .collect()
    }

    /// Reads the privacy Consents `node` keeps for `patient` (this node must be another
    /// holder of the patient).
    pub async fn fetch_consent_records(
        &self,
        node: NodeId,
        node_name: &str,
        addr: SocketAddr,
        patient: PatientKey,
    ) -> Result<Vec<serde_json::Value>, FetchError> {
        let network = self.anchor.network().to_owned();
        let context = RequestContext::system_treatment();
        let frames = self
            .request_built(node, node_name, addr, |connection, key| {
                Ok(FetchRequest::ConsentRecords {
                    claims: Box::new(self.claims(connection, key, &network, patient, &context)?),
                })
            })
            .await?;
        frames
            .into_iter()
            .map(|frame| match frame {
                FetchFrame::Resource { json } => serde_json::from_slice(&json).map_err(|e| {
                    FetchError::Protocol(format!("a consent record is not JSON: {e}"))
                }),
                other => Err(FetchError::Protocol(format!("unexpected frame {other:?}"))),
            })
            .collect()
    }

    /// Fresh claims for a request on `connection`, signed with `key`.
    fn claims(
        &self,
        connection: &quinn::Connection,
        key: &SigningKey,
        network: &str,
        patient: PatientKey,
        context: &RequestContext,
    ) -> Result<SignedClaims, FetchError> {
        let channel = channel_binding(connection).map_err(FetchError::Transport)?;
        Ok(RequesterClaims {
            version: CLAIMS_VERSION,
            network: network.to_owned(),
            requester: NodeId(key.verifying_key().to_bytes()),
            practitioner: context.practitioner.clone(),
            purpose: context.purpose,
            emergency_reason: context.emergency_reason.clone(),
            patient,
            nonce: rand::random(),
            issued_at_ms: crate::fhir::service::now_ms(),
            channel,
        }
        .sign(key))
    }

    /// Asks evaluator `peer` for its partial evaluation of `request`.
    pub async fn evaluate(
        &self,
        peer: NodeId,
        name: &str,
        addr: SocketAddr,
        request: EvaluationRequest,
    ) -> Result<PartialEvaluation, FetchError> {
        let mut frames = self
            .request(peer, name, addr, &FetchRequest::Evaluate(request))
            .await?;
        match frames.pop() {
            Some(FetchFrame::Evaluated(partial)) if frames.is_empty() => Ok(partial),
            _ => Err(FetchError::Protocol(
                "expected one partial-evaluation frame".into(),
            )),
        }
    }

    /// The digest of a peer's index heads.
    pub async fn heads_digest(
        &self,
        peer: NodeId,
        name: &str,
        addr: SocketAddr,
    ) -> Result<[u8; 32], FetchError> {
        match self
            .request(peer, name, addr, &FetchRequest::HeadsDigest)
            .await?
            .as_slice()
        {
            [FetchFrame::HeadsDigest { digest }] => Ok(*digest),
            other => Err(FetchError::Protocol(format!(
                "expected one digest frame, got {}",
                other.len()
            ))),
        }
    }

    /// A peer's revocation list when it is newer than `have`.
    pub async fn revocations(
        &self,
        peer: NodeId,
        name: &str,
        addr: SocketAddr,
        have: u64,
    ) -> Result<Option<zorgmesh_protocol::revocation::SignedRevocationList>, FetchError> {
        let mut frames = self
            .request(peer, name, addr, &FetchRequest::Revocations { have })
            .await?;
        match (frames.pop(), frames.is_empty()) {
            (None, _) => Ok(None),
            (Some(FetchFrame::Message { bytes }), true) => {
                match zorgmesh_protocol::gossip::GossipMessage::from_bytes(&bytes) {
                    Ok(zorgmesh_protocol::gossip::GossipMessage::Revocations { list }) => {
                        Ok(Some(list))
                    }
                    _ => Err(FetchError::Protocol(
                        "expected a revocation list message".into(),
                    )),
                }
            }
            _ => Err(FetchError::Protocol(
                "expected at most one revocation list".into(),
            )),
        }
    }

    /// Sets where this node may connect (the operator's `data_dial_allow`).
    pub fn set_dial_policy(&self, policy: DialPolicy) {
        *self.dial_policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Switches this node's certificate and key for new connections, both ways (a key
    /// rotation). Connections already open keep the certificate they were made with.
    pub fn set_identity(&self, identity: &TlsIdentity) -> anyhow::Result<()> {
        let (server, client) = quic_configs(identity)?;
        self.endpoint.set_server_config(Some(server));
        *self
            .client_config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = (client, identity.key.clone());
        Ok(())
    }

    /// Closes cached connections to nodes whose certificate key is in `revoked`.
    pub async fn close_revoked(&self, revoked: &std::collections::BTreeSet<NodeId>) -> usize {
        let mut cache = self.connections.lock().await;
        let mut closed = 0;
        let anchor = self.anchor.clone();
        cache.retain(|node, (connection, _)| {
            let key = peer_certificate(connection, &anchor).map_or(*node, |peer| peer.node);
            if revoked.contains(&key) {
                connection.close(3u32.into(), b"revoked");
                closed += 1;
                false
            } else {
                true
            }
        });
        closed
    }

    /// A peer's heads vector.
    pub async fn heads(
        &self,
        peer: NodeId,
        name: &str,
        addr: SocketAddr,
    ) -> Result<Vec<PublisherHead>, FetchError> {
        let mut frames = self.request(peer, name, addr, &FetchRequest::Heads).await?;
        match frames.pop() {
            Some(FetchFrame::Heads { heads }) if frames.is_empty() && heads.len() <= MAX_HEADS => {
                Ok(heads)
            }
            _ => Err(FetchError::Protocol("expected one heads frame".into())),
        }
    }

    /// A range of one publisher's batches from a peer: `Message` frames (gossip messages),
    /// or, for a compacted range, an announce, the snapshot's `Snapshot` frames and the tail.
    pub async fn batches(
        &self,
        peer: NodeId,
        name: &str,
        addr: SocketAddr,
        range: RangeRequest,
    ) -> Result<Vec<FetchFrame>, FetchError> {
        let frames = self
            .request(peer, name, addr, &FetchRequest::Batches(range))
            .await?;
        if let Some(other) = frames
            .iter()
            .find(|f| !matches!(f, FetchFrame::Message { .. } | FetchFrame::Snapshot { .. }))
        {
            return Err(FetchError::Protocol(format!("unexpected frame {other:?}")));
        }
        Ok(frames)
    }
}

/// What a holder serves patient data from, and where it records each access.
#[derive(Clone)]
struct HolderServices {
    fhir: FhirService,
    audit: AuditTrail,
    consent: crate::consent::ConsentEnforcer,
}

/// What a holder knows of the peer on a connection, for checking its claims.
#[derive(Clone)]
struct Peer {
    name: String,
    /// Its organisation's URA (from its certificate).
    organisation: String,
    /// Its organisation's category (from its certificate).
    category: zorgmesh_protocol::consent::OrganisationCategory,
    key: NodeId,
    channel: [u8; 32],
    network: String,
    guard: Arc<std::sync::Mutex<ClaimsGuard>>,
}

async fn serve_connection(
    incoming: quinn::Incoming,
    holding: HolderServices,
    mesh: Arc<Mesh>,
    evaluator: MaybeEvaluator,
    anchor: TrustAnchor,
    claims_guard: Arc<std::sync::Mutex<ClaimsGuard>>,
) -> anyhow::Result<()> {
    let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| anyhow::anyhow!("handshake not finished within {HANDSHAKE_TIMEOUT:?}"))??;
    let peer = match peer_certificate(&connection, &anchor) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(remote = %connection.remote_address(), error = %e, "data-plane peer refused");
            connection.close(2u32.into(), b"certificate refused");
            return Ok(());
        }
    };
    let channel = match channel_binding(&connection) {
        Ok(channel) => channel,
        Err(e) => {
            connection.close(2u32.into(), b"no channel binding");
            return Err(anyhow::anyhow!(e));
        }
    };
    let mut revocations = mesh.watch_revocations();
    if mesh.is_revoked(&peer.node) {
        tracing::warn!(peer = %peer.identity.name, "data-plane connection from a revoked node refused");
        connection.close(3u32.into(), b"revoked");
        return Ok(());
    }
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept_bi() => accepted,
            changed = revocations.changed() => {
                if changed.is_err() || mesh.is_revoked(&peer.node) {
                    tracing::warn!(peer = %peer.identity.name, "closing the data-plane connection of a revoked node");
                    connection.close(3u32.into(), b"revoked");
                    return Ok(());
                }
                continue;
            }
        };
        let (send, recv) = match accepted {
            Ok(streams) => streams,
            Err(quinn::ConnectionError::ApplicationClosed(_))
            | Err(quinn::ConnectionError::TimedOut) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let holding = holding.clone();
        let mesh = mesh.clone();
        let evaluator = evaluator.clone();
        let requester = Peer {
            name: peer.identity.name.clone(),
            organisation: peer.identity.organisation_ura.clone(),
            category: peer.identity.category,
            key: peer.node,
            channel,
            network: anchor.network().to_owned(),
            guard: claims_guard.clone(),
        };
        tokio::spawn(async move {
            let served = serve_stream(send, recv, holding, mesh, evaluator, &requester);
            if let Err(e) = served.await {
                tracing::debug!(error = %e, requester = %requester.name, "data-plane stream failed");
            }
        });
    }
}

/// The id an evaluator keeps a requester's budget and audit under: derived from its node
/// name, so it survives key rotations.
fn requester_budget_id(name: &str) -> NodeId {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"zorgmesh/evaluation-requester/v1\n");
    hasher.update(name.as_bytes());
    NodeId(hasher.finalize().into())
}

async fn send_frame(send: &mut quinn::SendStream, frame_value: &FetchFrame) -> anyhow::Result<()> {
    send.write_all(&frame(&frame_value.to_bytes())).await?;
    Ok(())
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    holding: HolderServices,
    mesh: Arc<Mesh>,
    evaluator: MaybeEvaluator,
    peer: &Peer,
) -> anyhow::Result<()> {
    let requester = peer.name.as_str();
    let request = match recv.read_to_end(4 + MAX_REQUEST_BYTES).await {
        Ok(bytes) => parse_request(&bytes),
        Err(e) => Err(format!("request unreadable: {e}")),
    };
    let (patient, claims) = match request {
        Ok(FetchRequest::PatientResources { claims }) => {
            let admitted = peer.guard.lock().unwrap_or_else(|p| p.into_inner()).admit(
                &claims,
                &peer.network,
                &peer.key,
                &peer.channel,
                crate::fhir::service::now_ms(),
            );
            if let Err(e) = admitted {
                tracing::warn!(requester = %requester, reason = %e, "patient data request refused: its claims do not hold");
                let refused = served_record(
                    peer,
                    &claims.claims,
                    AuditOutcome::Denied,
                    String::new(),
                    e.to_string(),
                );
                if let Err(audit) = holding.audit.append(refused).await {
                    tracing::error!(error = %audit, "a refused patient data request could not be recorded");
                }
                send_frame(
                    &mut send,
                    &FetchFrame::Error {
                        code: e.code(),
                        message: e.to_string(),
                    },
                )
                .await?;
                send.finish()?;
                return Ok(());
            }
            (claims.claims.patient, claims)
        }
        Ok(FetchRequest::AccessLog { claims }) => {
            let answer = access_log_answer(&holding, peer, &claims).await;
            let count = answer.as_ref().map_or(0, Vec::len);
            let record = AuditRecord {
                action: AuditAction::Read,
                ..served_record(
                    peer,
                    &claims.claims,
                    outcome_of_answer(&answer),
                    format!("access log: {count} entries"),
                    answer
                        .as_ref()
                        .err()
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default(),
                )
            };
            let frames = answer.map(|entries| {
                entries
                    .iter()
                    .map(|entry| FetchFrame::AccessEntry {
                        bytes: entry.to_bytes(),
                    })
                    .collect()
            });
            return send_recorded(&mut send, frames, holding.audit.append(record).await).await;
        }
        Ok(FetchRequest::ConsentRecords { claims }) => {
            let answer = consent_records_answer(&holding, &mesh, peer, &claims).await;
            let count = answer.as_ref().map_or(0, Vec::len);
            let detail = match &answer {
                Ok(_) => format!("read by {}, another holder of the patient", peer.name),
                Err((_, m)) => m.clone(),
            };
            let record = AuditRecord {
                action: AuditAction::Read,
                ..served_record(
                    peer,
                    &claims.claims,
                    outcome_of_answer(&answer),
                    format!("consent records: {count}"),
                    detail,
                )
            };
            let frames = answer.and_then(|consents| {
                consents
                    .iter()
                    .map(|consent| {
                        serde_json::to_vec(consent)
                            .map(|json| FetchFrame::Resource { json })
                            .map_err(|e| (FetchErrorCode::Internal, e.to_string()))
                    })
                    .collect()
            });
            return send_recorded(&mut send, frames, holding.audit.append(record).await).await;
        }
        Ok(FetchRequest::HeadsDigest) => {
            let digest = heads_digest(&mesh.heads());
            send_frame(&mut send, &FetchFrame::HeadsDigest { digest }).await?;
            send_frame(&mut send, &FetchFrame::End { count: 0 }).await?;
            send.finish()?;
            return Ok(());
        }
        Ok(FetchRequest::Heads) => {
            let heads = heads_vector(&mesh.heads());
            send_frame(&mut send, &FetchFrame::Heads { heads }).await?;
            send_frame(&mut send, &FetchFrame::End { count: 0 }).await?;
            send.finish()?;
            return Ok(());
        }
        Ok(FetchRequest::Batches(range)) => {
            let limit = range.limit.min(MAX_BATCHES_PER_REQUEST) as usize;
            let source = mesh.clone();
            let frames = tokio::task::spawn_blocking(move || {
                source.batch_frames(&range.publisher, range.from, limit)
            })
            .await?;
            match frames {
                Ok(frames) => {
                    let count = frames.len() as u32;
                    for frame in frames {
                        send_frame(&mut send, &frame).await?;
                    }
                    send_frame(&mut send, &FetchFrame::End { count }).await?;
                }
                Err(e) => {
                    let code = match e {
                        crate::mesh::BatchRangeError::Gap { .. } => FetchErrorCode::NotFound,
                        crate::mesh::BatchRangeError::Storage(_) => FetchErrorCode::Internal,
                    };
                    send_frame(
                        &mut send,
                        &FetchFrame::Error {
                            code,
                            message: e.to_string(),
                        },
                    )
                    .await?
                }
            }
            send.finish()?;
            return Ok(());
        }
        Ok(FetchRequest::Revocations { have }) => {
            let newer = mesh
                .revocation_list()
                .filter(|list| list.body.sequence > have);
            let count = u32::from(newer.is_some());
            if let Some(list) = newer {
                let bytes =
                    zorgmesh_protocol::gossip::GossipMessage::Revocations { list }.to_bytes();
                send_frame(&mut send, &FetchFrame::Message { bytes }).await?;
            }
            send_frame(&mut send, &FetchFrame::End { count }).await?;
            send.finish()?;
            return Ok(());
        }
        Ok(FetchRequest::Evaluate(request)) => {
            let answer = match evaluator {
                None => Err((
                    FetchErrorCode::BadRequest,
                    "this node is not an evaluator".to_owned(),
                )),
                Some(evaluator) => {
                    let name = requester.to_owned();
                    let now = crate::fhir::service::now_ms();
                    // Budgets and audit follow the node (its CA-bound name), not its key:
                    // a node that rotates its key keeps what it has used.
                    let budget_holder = requester_budget_id(&name);
                    tokio::task::spawn_blocking(move || {
                        evaluator.evaluate_for(budget_holder, &name, &request, now)
                    })
                    .await?
                }
            };
            match answer {
                Ok(partial) => {
                    send_frame(&mut send, &FetchFrame::Evaluated(partial)).await?;
                    send_frame(&mut send, &FetchFrame::End { count: 0 }).await?;
                }
                Err((code, message)) => {
                    send_frame(&mut send, &FetchFrame::Error { code, message }).await?;
                }
            }
            send.finish()?;
            return Ok(());
        }
        Err(message) => {
            send_frame(
                &mut send,
                &FetchFrame::Error {
                    code: FetchErrorCode::BadRequest,
                    message,
                },
            )
            .await?;
            send.finish()?;
            return Ok(());
        }
    };
    // What the holder has for the patient, and what the patient's consent lets go to this
    // requester for this purpose.
    let storage_fhir = holding.fhir.clone();
    let consent = holding.consent.clone();
    let asking = (
        peer.organisation.clone(),
        peer.category,
        claims.claims.purpose,
    );
    let index = mesh.clone();
    let answer = run_blocking(move || {
        let (resources, members, salt) = storage_fhir.holding_for_key(&patient)?;
        let known = crate::consent::known_consent(
            &storage_fhir,
            &index
                .holders(&patient)
                .map_err(|e| crate::fhir::FhirError::internal(e.to_string()))?,
            index.own(),
            &patient,
        )
        .map_err(crate::fhir::FhirError::internal)?;
        let release = consent.release(
            resources,
            &known,
            &crate::consent::Requester {
                ura: &asking.0,
                category: asking.1,
                purpose: asking.2,
            },
            crate::fhir::service::now_ms(),
        );
        Ok::<_, crate::fhir::FhirError>((release, members, salt))
    })
    .await?;
    // An access is answered only once it is in the trail: the consent decision, then the
    // release.
    let records = match &answer {
        Ok((release, _, _)) => {
            let decision = AuditRecord {
                action: AuditAction::ConsentDecision,
                ..served_record(
                    peer,
                    &claims.claims,
                    if release.withheld == 0 {
                        AuditOutcome::Success
                    } else {
                        AuditOutcome::Denied
                    },
                    format!(
                        "{} resources released, {} withheld",
                        release.permitted.len(),
                        release.withheld
                    ),
                    release.summary(),
                )
            };
            let served = served_record(
                peer,
                &claims.claims,
                AuditOutcome::Success,
                resource_summary_of(release.permitted.iter()),
                if release.broke_the_glass() {
                    format!(
                        "served to {}: break-the-glass ({}): {}",
                        peer.name,
                        claims.claims.emergency_reason,
                        release.summary()
                    )
                } else {
                    String::new()
                },
            );
            vec![decision, served]
        }
        Err(e) => vec![served_record(
            peer,
            &claims.claims,
            AuditOutcome::Failed,
            String::new(),
            e.diagnostics.clone(),
        )],
    };
    // The entries go to disk while the resources and the proof go out; the answer ends (and
    // counts) only with the `End` sent once they are durable, so an answer the requester may
    // use is in the trail.
    let recording = holding.audit.begin_all(records).await;
    match answer {
        Ok((release, members, salt)) => {
            tracing::info!(
                requester = %requester,
                patient = ?patient,
                purpose = claims.claims.purpose.as_str(),
                practitioner = claims.claims.practitioner.as_ref().map(|p| p.id.as_str()).unwrap_or("-"),
                resources = release.permitted.len(),
                withheld = release.withheld,
                "served patient resources"
            );
            for resource in &release.permitted {
                let json = serde_json::to_vec(resource)?;
                send_frame(&mut send, &FetchFrame::Resource { json }).await?;
            }
            let proof = if release.withheld == 0 {
                FetchFrame::Holding {
                    salt,
                    members: members as u32,
                }
            } else {
                FetchFrame::ConsentWithheld
            };
            send_frame(&mut send, &proof).await?;
            match recording.durable().await {
                Ok(()) => {
                    send_frame(
                        &mut send,
                        &FetchFrame::End {
                            count: release.permitted.len() as u32,
                        },
                    )
                    .await?;
                }
                Err(e) => send_frame(&mut send, &not_recorded(e)).await?,
            }
        }
        Err(e) => {
            let frame = match recording.durable().await {
                Ok(()) => FetchFrame::Error {
                    code: FetchErrorCode::Internal,
                    message: e.diagnostics,
                },
                Err(e) => not_recorded(e),
            };
            send_frame(&mut send, &frame).await?;
        }
    }
    send.finish()?;
    Ok(())
}

/// Runs blocking storage work from an async task: in place on a multi-threaded runtime (the
/// worker hands its other tasks to another thread, and this task goes on without waiting
/// for a thread of the blocking pool to wake and answer), else on the blocking pool.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(work)),
        _ => tokio::task::spawn_blocking(work).await,
    }
}

/// How a holder's answer to a request ended, for its trail entry.
fn outcome_of_answer<T>(answer: &Result<T, (FetchErrorCode, String)>) -> AuditOutcome {
    match answer {
        Ok(_) => AuditOutcome::Success,
        Err((FetchErrorCode::Internal, _)) => AuditOutcome::Failed,
        Err(_) => AuditOutcome::Denied,
    }
}

/// The error a holder answers when it cannot record an access.
fn not_recorded(e: impl std::fmt::Display) -> FetchFrame {
    FetchFrame::Error {
        code: FetchErrorCode::Internal,
        message: format!("the holder cannot record the access, so its answer does not count: {e}"),
    }
}

/// Sends an answer whose access was recorded: its frames and `End` when the answer and its
/// trail entry both stand; else the answer's error, or `Internal` when the entry could not
/// be made durable.
async fn send_recorded(
    send: &mut quinn::SendStream,
    answer: Result<Vec<FetchFrame>, (FetchErrorCode, String)>,
    recorded: Result<u64, crate::audit::AuditError>,
) -> anyhow::Result<()> {
    match (answer, recorded) {
        (Ok(frames), Ok(_)) => {
            for frame in &frames {
                send_frame(send, frame).await?;
            }
            let count = frames.len() as u32;
            send_frame(send, &FetchFrame::End { count }).await?;
        }
        (Err((code, message)), _) => send_frame(send, &FetchFrame::Error { code, message }).await?,
        (Ok(_), Err(e)) => send_frame(send, &not_recorded(e)).await?,
    }
    send.finish()?;
    Ok(())
}

/// Admits a request's claims as the holder of this connection checks them.
fn admit(peer: &Peer, claims: &SignedClaims) -> Result<(), (FetchErrorCode, String)> {
    peer.guard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(
            claims,
            &peer.network,
            &peer.key,
            &peer.channel,
            crate::fhir::service::now_ms(),
        )
        .map_err(|e| (e.code(), e.to_string()))
}

/// A holder's answer to a consent-records request: its privacy Consents for the patient,
/// for another holder of the patient only.
async fn consent_records_answer(
    holding: &HolderServices,
    mesh: &Mesh,
    peer: &Peer,
    claims: &SignedClaims,
) -> Result<Vec<serde_json::Value>, (FetchErrorCode, String)> {
    admit(peer, claims)?;
    let patient = claims.claims.patient;
    if !mesh
        .holders(&patient)
        .map_err(|e| (FetchErrorCode::Internal, e.to_string()))?
        .iter()
        .any(|h| h.info.name == peer.name && !h.entry.retracted)
    {
        return Err((
            FetchErrorCode::NotPermitted,
            "consent records are given to the patient's other holders only".into(),
        ));
    }
    let fhir = holding.fhir.clone();
    tokio::task::spawn_blocking(move || {
        let storage = fhir.storage();
        let patients = storage.patients_with_key(&patient)?;
        crate::consent::privacy_consents(storage, &patients)
    })
    .await
    .map_err(|e| (FetchErrorCode::Internal, e.to_string()))?
    .map_err(|e| (FetchErrorCode::Internal, e.to_string()))
}

/// A holder's answer to an access-log request: its trail's entries about the patient, once
/// the claims hold and name a purpose that may ask.
async fn access_log_answer(
    holding: &HolderServices,
    peer: &Peer,
    claims: &SignedClaims,
) -> Result<Vec<zorgmesh_protocol::audit::AuditEntry>, (FetchErrorCode, String)> {
    admit(peer, claims)?;
    if !matches!(
        claims.claims.purpose,
        PurposeOfUse::PatientSelfAccess | PurposeOfUse::Compliance
    ) {
        return Err((
            FetchErrorCode::NotPermitted,
            format!(
                "an access log is given for patient-self-access or compliance, not for {}",
                claims.claims.purpose.as_str()
            ),
        ));
    }
    holding
        .audit
        .query(
            crate::audit::AuditQuery {
                patient: Some(claims.claims.patient),
                ..Default::default()
            },
            zorgmesh_protocol::fetch::MAX_ACCESS_ENTRIES,
        )
        .await
        .map_err(|e| (FetchErrorCode::Internal, e.to_string()))
}

/// The holder's trail entry of a patient data request from `peer`.
fn served_record(
    peer: &Peer,
    claims: &RequesterClaims,
    outcome: AuditOutcome,
    what: String,
    detail: String,
) -> AuditRecord {
    let action = if claims.purpose == PurposeOfUse::Emergency && outcome == AuditOutcome::Success {
        AuditAction::BreakTheGlass
    } else {
        AuditAction::PullServed
    };
    let detail = match (action, detail.is_empty()) {
        (AuditAction::BreakTheGlass, true) => format!(
            "served to {}: emergency: {}",
            peer.name, claims.emergency_reason
        ),
        (_, true) => format!("served to {}", peer.name),
        (_, false) => detail,
    };
    AuditRecord {
        at_ms: crate::fhir::service::now_ms(),
        action,
        outcome,
        actor: peer.name.clone(),
        organisation: peer.organisation.clone(),
        person: claims.practitioner.clone(),
        purpose: Some(claims.purpose),
        patient: Some(claims.patient),
        what,
        detail,
    }
}

/// "3 resources: Observation 2, Patient 1".
pub fn resource_summary_of<'a>(
    resources: impl IntoIterator<Item = &'a serde_json::Value>,
) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let mut total = 0;
    for resource in resources {
        total += 1;
        *counts
            .entry(resource["resourceType"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    format!("{total} resources: {}", parts.join(", "))
}

fn parse_request(bytes: &[u8]) -> Result<FetchRequest, String> {
    if bytes.len() < 4 {
        return Err("request shorter than its length prefix".into());
    }
    let length = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    if length != bytes.len() - 4 {
        return Err(format!(
            "length prefix says {length} bytes, stream carried {}",
            bytes.len() - 4
        ));
    }
    FetchRequest::from_bytes(&bytes[4..]).map_err(|e| e.to_string())
}
