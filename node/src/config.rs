//! The node's configuration: a documented TOML file with defaults that work.
//!
//! ```toml
//! # Name of this node; must match its certificate.
//! name = "umcg"
//! # Where the node keeps its data (resources, logs, index). Relative paths are relative to
//! # this file.
//! data_dir = "data"
//! # Where `zorgmesh node backup` (POST /admin/backup) writes backups; default: `backups`
//! # beside `data_dir`. Put it on another disk.
//! # backup_dir = "/var/backups/zorgmesh"
//! # The embedded engine of a new store: "sled" (default), "redb" or "fjall". An existing store
//! # keeps the engine it was created with.
//! # storage_engine = "redb"
//! # Memory the locator index (kept on disk in `data_dir/locator-index`) may use, in MiB.
//! # index_memory_mib = 1024
//! # FHIR API (HTTP). Every endpoint but discovery needs an access token (see [auth]).
//! http_listen = "127.0.0.1:8080"
//! # libp2p gossip (TCP).
//! gossip_listen = "127.0.0.1:9000"
//! # QUIC data plane (UDP); `data_advertise` is the address other nodes dial.
//! data_listen = "127.0.0.1:7000"
//! # data_advertise = "umcg.example.net:7000"
//! # Peers to dial at start, as libp2p multiaddrs ending in /p2p/<peer id>.
//! bootstrap = ["/ip4/127.0.0.1/tcp/9001/p2p/12D3KooW..."]
//!
//! [trust]
//! ca_certificate = "ca.crt"
//! node_certificate = "node.crt"
//! node_key = "node.key"
//! evaluator_set = "evaluators.pem"   # the CA-signed threshold-OPRF evaluator set
//! # oprf_share = "node.share"        # only on evaluator nodes: this node's key share
//!
//! [auth]
//! clients_file = "clients.json"   # the registered clients (`zorgmesh client add`)
//! token_key = "token.key"         # the secret access tokens are signed with (made at start)
//! # public_url = "https://umcg.example.net:8080"   # how clients reach this node; default
//! #                                                # http://<http_listen>
//! access_token_lifetime_secs = 300
//!
//! [publishing]
//! batch_max_entries = 1024   # cut a batch at this many patients
//! batch_window_ms = 200      # or when the oldest staged entry is this old
//! compact_after_batches = 1000  # then replace the log prefix with a signed snapshot
//!
//! [resolve]
//! holder_timeout_ms = 5000   # per-holder deadline when resolving a dossier
//!
//! [sync]
//! interval_ms = 10000        # compare the index with a random peer this often
//!
//! [keys]
//! evaluator_timeout_ms = 3000   # per-evaluator deadline when deriving patient keys
//!
//! [evaluator]                 # only used on evaluator nodes
//! keys_per_second = 20        # sustained patient keys per requesting node
//! burst = 1024                # short bursts above the sustained rate
//! initial_load = 250000       # one-time allowance per requesting node (a holder's first load)
//! ```

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole node configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name; must equal the name in the node certificate.
    pub name: String,
    /// Data directory (sled database).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where online backups go (default: `backups` beside `data_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<PathBuf>,
    /// The embedded engine of a new store (an existing store keeps its own).
    #[serde(default)]
    pub storage_engine: crate::storage::EngineKind,
    /// Memory the locator index may use, in MiB (its entries are on disk, in
    /// `data_dir/locator-index`); at least 8.
    #[serde(default = "default_index_memory")]
    pub index_memory_mib: u64,
    /// FHIR API listen address.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// Origins of browser apps that may call the FHIR API (CORS), such as
    /// `https://viewer.example.org`; `*` allows every origin. Empty (the default): no CORS
    /// headers, so browsers keep other origins' scripts out. Tokens are sent as bearer
    /// headers, never cookies, so no origin gets credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_cors_origins: Vec<String>,
    /// Gossip listen address (TCP).
    #[serde(default = "default_gossip")]
    pub gossip_listen: SocketAddr,
    /// QUIC data-plane listen address (UDP).
    #[serde(default = "default_data")]
    pub data_listen: SocketAddr,
    /// Address other nodes use to reach the data plane, as `host:port` (a DNS name or an
    /// IP); defaults to `data_listen` (after binding, so port 0 works).
    #[serde(default)]
    pub data_advertise: Option<String>,
    /// Address ranges (CIDR) this node may dial on the data plane, whatever a node record
    /// says. Unset: every address except loopback, link-local (cloud metadata services),
    /// unspecified, multicast and broadcast. Set it to the health network's ranges in
    /// production; topologies on loopback set `["127.0.0.0/8", "::1/128"]`.
    #[serde(default)]
    pub data_dial_allow: Option<Vec<ipnet::IpNet>>,
    /// Bootstrap peers (multiaddrs with `/p2p/<peer id>`).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Trust material.
    pub trust: TrustConfig,
    /// Client authentication (SMART Backend Services).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Locator publishing.
    #[serde(default)]
    pub publishing: PublishingConfig,
    /// Dossier resolution.
    #[serde(default)]
    pub resolve: ResolveConfig,
    /// Index anti-entropy.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Patient-key derivation (the OPRF client).
    #[serde(default)]
    pub keys: KeysConfig,
    /// Serving partial evaluations (evaluator nodes only).
    #[serde(default)]
    pub evaluator: EvaluatorConfig,
    /// The network's consent policy, as this holder enforces it.
    #[serde(default)]
    pub consent: crate::consent::ConsentConfig,
}

/// Client authentication: the registered clients and the node's access tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The registered clients (written by `zorgmesh client add|revoke`, read by the node
    /// whenever it changes).
    #[serde(default = "default_clients_file")]
    pub clients_file: PathBuf,
    /// The secret the node signs its access tokens with; made, owner-only, when missing.
    #[serde(default = "default_token_key")]
    pub token_key: PathBuf,
    /// The URL clients reach this node's API at (`https://host:port`, no path): the issuer of
    /// its tokens and the audience of client assertions. Default `http://<http_listen>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// How long an access token is valid (seconds, 60 to 3600).
    #[serde(default = "default_token_lifetime")]
    pub access_token_lifetime_secs: u64,
}

fn default_clients_file() -> PathBuf {
    PathBuf::from("clients.json")
}
fn default_token_key() -> PathBuf {
    PathBuf::from("token.key")
}
fn default_token_lifetime() -> u64 {
    300
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            clients_file: default_clients_file(),
            token_key: default_token_key(),
            public_url: None,
            access_token_lifetime_secs: default_token_lifetime(),
        }
    }
}

/// Patient-key derivation settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Deadline for one evaluator's answer (ms); the next evaluator is asked after it.
    #[serde(default = "default_evaluator_timeout")]
    pub evaluator_timeout_ms: u64,
}

fn default_evaluator_timeout() -> u64 {
    3000
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            evaluator_timeout_ms: default_evaluator_timeout(),
        }
    }
}

/// Rate limits of an evaluator, per requesting node: a token bucket of `burst` keys refilled
/// at `keys_per_second`, plus a one-time `initial_load` allowance for a holder's first load.
/// An enumeration attempt therefore runs at `keys_per_second` after the allowance: at 20/s,
/// the 90.9 million BSNs take 52 days, and every refused request is logged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// Sustained keys per second per requesting node.
    #[serde(default = "default_keys_per_second")]
    pub keys_per_second: u32,
    /// Bucket size (keys).
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// One-time allowance per requesting node (keys), used before the bucket.
    #[serde(default = "default_initial_load")]
    pub initial_load: u64,
}

fn default_keys_per_second() -> u32 {
    20
}
fn default_burst() -> u32 {
    1024
}
fn default_initial_load() -> u64 {
    250_000
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self {
            keys_per_second: default_keys_per_second(),
            burst: default_burst(),
            initial_load: default_initial_load(),
        }
    }
}

/// Index anti-entropy settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// How often the node compares its index with a random peer (ms); gaps and new
    /// publishers trigger a round at once.
    #[serde(default = "default_sync_interval")]
    pub interval_ms: u64,
    /// At start, how long the node waits for a peer to tell it its own log's head before it
    /// signs on from its store's head (ms): only a node alone in the mesh waits this long.
    #[serde(default = "default_own_head_wait")]
    pub own_head_wait_ms: u64,
}

fn default_sync_interval() -> u64 {
    10_000
}
fn default_own_head_wait() -> u64 {
    5_000
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_sync_interval(),
            own_head_wait_ms: default_own_head_wait(),
        }
    }
}

/// Paths of the trust material.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// The network CA certificate (PEM).
    pub ca_certificate: PathBuf,
    /// This node's certificate (PEM).
    pub node_certificate: PathBuf,
    /// This node's ed25519 key (PKCS#8 PEM).
    pub node_key: PathBuf,
    /// The CA-signed evaluator set of the network's threshold OPRF key (PEM).
    pub evaluator_set: PathBuf,
    /// This node's share of the OPRF key (PEM, owner-only); only on evaluator nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oprf_share: Option<PathBuf>,
}

/// How locator entries are batched.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishingConfig {
    /// Cut a batch at this many patients (1..=4096).
    #[serde(default = "default_batch_max")]
    pub batch_max_entries: usize,
    /// Cut a batch when the oldest staged entry is this old (ms).
    #[serde(default = "default_batch_window")]
    pub batch_window_ms: u64,
    /// Compact the own log into a signed snapshot when it holds more batches than this.
    #[serde(default = "default_compact_after")]
    pub compact_after_batches: usize,
}

fn default_compact_after() -> usize {
    1000
}

/// Dossier resolution settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveConfig {
    /// Per-holder deadline (ms).
    #[serde(default = "default_holder_timeout")]
    pub holder_timeout_ms: u64,
}

fn default_index_memory() -> u64 {
    1024
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_http() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid")
}
fn default_gossip() -> SocketAddr {
    "127.0.0.1:9000".parse().expect("valid")
}
fn default_data() -> SocketAddr {
    "127.0.0.1:7000".parse().expect("valid")
}
fn default_batch_max() -> usize {
    1024
}
fn default_batch_window() -> u64 {
    200
}
fn default_holder_timeout() -> u64 {
    5000
}

impl Default for PublishingConfig {
    fn default() -> Self {
        Self {
            batch_max_entries: default_batch_max(),
            batch_window_ms: default_batch_window(),
            compact_after_batches: default_compact_after(),
        }
    }
}

impl Default for ResolveConfig {
    fn default() -> Self {
        Self {
            holder_timeout_ms: default_holder_timeout(),
        }
    }
}

impl NodeConfig {
    /// Where online backups go.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| {
            self.data_dir
                .parent()
                .unwrap_or(Path::new("."))
                .join("backups")
        })
    }

    /// Reads a config file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: NodeConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid node config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Makes relative paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [
            &mut self.data_dir,
            &mut self.trust.ca_certificate,
            &mut self.trust.node_certificate,
            &mut self.trust.node_key,
            &mut self.trust.evaluator_set,
            &mut self.auth.clients_file,
            &mut self.auth.token_key,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(backups) = &mut self.backup_dir {
            if backups.is_relative() {
                *backups = base.join(&*backups);
            }
        }
        if let Some(share) = &mut self.trust.oprf_share {
            if share.is_relative() {
                *share = base.join(&*share);
            }
        }
    }

    /// Checks values; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        zorgmesh_certs::validate_label("name", &self.name).map_err(anyhow::Error::msg)?;
        crate::fhir::api::cors_layer(&self.http_cors_origins)?;
        if !(1..=zorgmesh_protocol::batch::MAX_ENTRIES_PER_BATCH)
            .contains(&self.publishing.batch_max_entries)
        {
            anyhow::bail!(
                "publishing.batch_max_entries must be between 1 and {}",
                zorgmesh_protocol::batch::MAX_ENTRIES_PER_BATCH
            );
        }
        if !(8..=1 << 20).contains(&self.index_memory_mib) {
            anyhow::bail!("index_memory_mib must be between 8 and 1048576");
        }
        if self.publishing.compact_after_batches == 0 {
            anyhow::bail!("publishing.compact_after_batches must be at least 1");
        }
        if self.publishing.batch_window_ms > 60_000 {
            anyhow::bail!("publishing.batch_window_ms must be at most 60000");
        }
        if !(100..=120_000).contains(&self.resolve.holder_timeout_ms) {
            anyhow::bail!("resolve.holder_timeout_ms must be between 100 and 120000");
        }
        if !(100..=3_600_000).contains(&self.sync.interval_ms) {
            anyhow::bail!("sync.interval_ms must be between 100 and 3600000");
        }
        if !(100..=60_000).contains(&self.keys.evaluator_timeout_ms) {
            anyhow::bail!("keys.evaluator_timeout_ms must be between 100 and 60000");
        }
        if self.evaluator.keys_per_second == 0 || self.evaluator.burst == 0 {
            anyhow::bail!("evaluator.keys_per_second and evaluator.burst must be at least 1");
        }
        if (self.evaluator.burst as usize) < zorgmesh_protocol::oprf::MAX_ELEMENTS_PER_REQUEST {
            anyhow::bail!(
                "evaluator.burst must be at least {} (one full request)",
                zorgmesh_protocol::oprf::MAX_ELEMENTS_PER_REQUEST
            );
        }
        if let Some(advertise) = &self.data_advertise {
            let port_ok = advertise.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok || advertise.len() > zorgmesh_protocol::record::MAX_ADDRESS_LEN {
                anyhow::bail!("data_advertise {advertise:?} must be host:port");
            }
        }
        if self.data_listen.ip().is_unspecified() && self.data_advertise.is_none() {
            anyhow::bail!(
                "data_listen = {} listens on every interface: set data_advertise to the address other nodes should dial",
                self.data_listen
            );
        }
        if !(60..=3600).contains(&self.auth.access_token_lifetime_secs) {
            anyhow::bail!("auth.access_token_lifetime_secs must be between 60 and 3600");
        }
        if let Some(url) = &self.auth.public_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.trim_end_matches('/').contains('/')) {
                anyhow::bail!(
                    "auth.public_url {url:?} must be http(s)://host[:port], without a path"
                );
            }
        } else if self.http_listen.ip().is_unspecified() {
            anyhow::bail!(
                "http_listen = {} listens on every interface: set auth.public_url to the URL clients reach the API at",
                self.http_listen
            );
        }
        for peer in &self.bootstrap {
            peer.parse::<libp2p::Multiaddr>()
                .with_context(|| format!("bootstrap entry {peer:?} is not a multiaddr"))?;
        }
        Ok(())
    }

    /// The URL clients reach the API at, given the address it is bound to.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.auth.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{bound}"),
        }
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialize")
    }
}
