//! The node's registered clients: one JSON file (`[auth] clients_file`, owner-only), written
//! by `zorgmesh client add|revoke` and read by the node whenever it changes, so clients are
//! added and revoked while the node runs, the way ssh reads `authorized_keys`.
//!
//! A client is registered with its public keys (a JWKS; SMART Backend Services' "keys
//! registered per client"), the scopes it may be granted, and what it is: a system client
//! (an EHR, an ingest connector, a viewer) or a patient's app, bound to that patient's BSN.

use super::scope::Scopes;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Version of the file's format.
pub const CLIENTS_FILE_VERSION: u32 = 1;
/// Largest clients file the node reads.
pub const MAX_CLIENTS_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most keys one client may register.
pub const MAX_KEYS_PER_CLIENT: usize = 8;

/// What a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// A system acting for the organisation that runs the node (`system/…` scopes).
    System,
    /// A patient's own app, bound to that patient (`patient/…` scopes): it reads only the
    /// patient's own dossier and access log.
    PatientApp,
}

/// One registered client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// The OAuth `client_id`.
    pub client_id: String,
    /// A name people recognise ("EPD Martini ziekenhuis").
    #[serde(default)]
    pub name: String,
    pub kind: ClientKind,
    /// The scopes the client may be granted, space-separated.
    pub scopes: String,
    /// Its public keys, as a JWK Set.
    pub jwks: jsonwebtoken::jwk::JwkSet,
    /// For a patient app: the BSN of its patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_bsn: Option<String>,
    /// When it was registered (seconds since the epoch): a token issued before this belongs
    /// to an earlier client of the same id and is refused.
    pub registered_at: u64,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl Client {
    /// Its scopes, parsed (checked when it was registered).
    pub fn scopes(&self) -> Scopes {
        Scopes::parse(&self.scopes).unwrap_or_default()
    }

    /// Whether it may still get and use tokens.
    pub fn active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// Checks a client before it is written.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_client_id(&self.client_id)?;
        let scopes = Scopes::parse(&self.scopes)?;
        if scopes.is_empty() {
            anyhow::bail!("client {}: at least one scope is needed", self.client_id);
        }
        for scope in scopes.iter() {
            if let super::scope::Scope::Resource { context, .. } = scope {
                let fits = match self.kind {
                    ClientKind::System => *context == super::scope::Context::System,
                    ClientKind::PatientApp => *context == super::scope::Context::Patient,
                };
                if !fits {
                    anyhow::bail!(
                        "client {}: scope {scope} does not fit a {} client (system clients get system/… scopes, patient apps patient/… scopes)",
                        self.client_id,
                        match self.kind {
                            ClientKind::System => "system",
                            ClientKind::PatientApp => "patient-app",
                        }
                    );
                }
            } else if self.kind == ClientKind::PatientApp {
                anyhow::bail!(
                    "client {}: a patient app cannot be an administrator",
                    self.client_id
                );
            }
        }
        match (self.kind, &self.patient_bsn) {
            (ClientKind::PatientApp, None) => {
                anyhow::bail!(
                    "client {}: a patient app needs its patient's BSN",
                    self.client_id
                )
            }
            (ClientKind::PatientApp, Some(bsn)) => {
                zorgmesh_protocol::Bsn::parse(bsn)
                    .map_err(|e| anyhow::anyhow!("client {}: not a BSN: {e}", self.client_id))?;
            }
            (ClientKind::System, Some(_)) => {
                anyhow::bail!(
                    "client {}: only a patient app is bound to a patient",
                    self.client_id
                )
            }
            _ => {}
        }
        if self.jwks.keys.is_empty() || self.jwks.keys.len() > MAX_KEYS_PER_CLIENT {
            anyhow::bail!(
                "client {}: register between 1 and {MAX_KEYS_PER_CLIENT} public keys",
                self.client_id
            );
        }
        for key in &self.jwks.keys {
            super::assertion::usable_key(key)
                .with_context(|| format!("client {}: a registered key", self.client_id))?;
        }
        Ok(())
    }
}

/// Checks a `client_id`: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn validate_client_id(id: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        anyhow::bail!("client id {id:?} must be 1 to 64 of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// The file's contents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsFile {
    pub version: u32,
    pub clients: Vec<Client>,
}

impl ClientsFile {
    /// Reads the file; a missing file is an empty registry.
    pub fn read(path: &Path) -> anyhow::Result<ClientsFile> {
        let metadata = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ClientsFile {
                    version: CLIENTS_FILE_VERSION,
                    clients: Vec::new(),
                })
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        if metadata.len() > MAX_CLIENTS_FILE_BYTES {
            anyhow::bail!(
                "{} is larger than {MAX_CLIENTS_FILE_BYTES} bytes",
                path.display()
            );
        }
        crate::at_rest::check_private_file(path)?;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: ClientsFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a clients file", path.display()))?;
        if file.version != CLIENTS_FILE_VERSION {
            anyhow::bail!(
                "{} has format version {}; this node reads version {CLIENTS_FILE_VERSION}",
                path.display(),
                file.version
            );
        }
        for client in &file.clients {
            client
                .validate()
                .with_context(|| format!("in {}", path.display()))?;
        }
        Ok(file)
    }

    /// Writes the file owner-only and atomically (a temporary file renamed over it).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        let temporary = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("clients"),
            std::process::id()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// The client with this id, revoked or not.
    pub fn get(&self, client_id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }

    /// Adds a client; an active client of the same id is an error, a revoked one is
    /// replaced.
    pub fn add(&mut self, client: Client) -> anyhow::Result<()> {
        client.validate()?;
        if let Some(existing) = self.get(&client.client_id) {
            if existing.active() {
                anyhow::bail!(
                    "client {} is registered already: revoke it first",
                    client.client_id
                );
            }
        }
        self.clients.retain(|c| c.client_id != client.client_id);
        self.clients.push(client);
        Ok(())
    }

    /// Revokes a client; says whether it was active.
    pub fn revoke(&mut self, client_id: &str, now: u64) -> anyhow::Result<bool> {
        let client = self
            .clients
            .iter_mut()
            .find(|c| c.client_id == client_id)
            .ok_or_else(|| anyhow::anyhow!("no client {client_id:?} is registered"))?;
        let was_active = client.active();
        client.revoked_at.get_or_insert(now);
        Ok(was_active)
    }
}

/// The registry as the node sees it: the file, read again when it changes (its metadata is
/// looked at on every use, a microsecond), so an added client or a revocation takes effect
/// at the next request.
pub struct ClientRegistry {
    path: PathBuf,
    cache: Mutex<Cached>,
}

impl std::fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistry")
            .field("path", &self.path)
            .finish()
    }
}

struct Cached {
    modified: Option<(SystemTime, u64, u64)>,
    file: std::sync::Arc<ClientsFile>,
    error: Option<String>,
}

impl ClientRegistry {
    /// A registry over `path`; reads it once now, so a broken file stops the node at start.
    pub fn open(path: PathBuf) -> anyhow::Result<ClientRegistry> {
        let file = ClientsFile::read(&path)?;
        let modified = stamp(&path);
        Ok(ClientRegistry {
            path,
            cache: Mutex::new(Cached {
                modified,
                file: std::sync::Arc::new(file),
                error: None,
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current clients. A file that became unreadable keeps the last good registry in
    /// force (and is logged), so a half-edited file never opens or closes the node.
    pub fn current(&self) -> std::sync::Arc<ClientsFile> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let modified = stamp(&self.path);
        if modified != cache.modified {
            match ClientsFile::read(&self.path) {
                Ok(file) => {
                    tracing::info!(clients = file.clients.len(), file = %self.path.display(), "clients file read");
                    cache.file = std::sync::Arc::new(file);
                    cache.modified = modified;
                    cache.error = None;
                }
                Err(e) => {
                    // Not read again until it changes again.
                    cache.modified = modified;
                    let text = format!("{e:#}");
                    if cache.error.as_deref() != Some(&text) {
                        tracing::error!(error = %text, "the clients file cannot be read: the clients read before stay in force");
                        cache.error = Some(text);
                    }
                }
            }
        }
        cache.file.clone()
    }
}

/// What tells a changed file: its modification time, length and inode (a rewrite is a
/// rename, so a new inode).
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}
