//! The node's storage, behind a narrow interface so that the engine (sled 0.34 today) can be
//! replaced if the crash tests say so. Nothing outside this module names sled.
//!
//! One sled tree, `fhir`, holds resource state under prefixed keys, so that every FHIR write
//! (a single resource or a whole transaction Bundle) lands with one atomic `apply_batch`:
//!
//! | key | value |
//! |---|---|
//! | `r\0{type}\0{id}` | current version record (JSON) |
//! | `h\0{type}\0{id}\0{version u64 BE}` | every version record |
//! | `l\0{patient id}\0{type}\0{id}` | compartment link: the resource belongs to the patient |
//! | `p\0{patient id}` | patient key (32 bytes) of a local Patient with a BSN |
//! | `k\0{patient key}{patient id}` | reverse: local Patients of a patient key |
//! | `d\0{patient key}` | the patient's locator entry still has to be published |
//! | `q\0{patient id}` | the Patient's BSN (digits) still waits for its patient key |
//! | `b\0{bsn}` | the patient key of a BSN this node holds a Patient for (its own key cache) |
//! | `c\0{patient key}{node name}` | the privacy Consents another holder of the patient keeps (JSON [`ConsentCopy`]) |
//!
//! **Patient keys** come from the evaluators' threshold OPRF, which is a network exchange,
//! so a write never waits for one: a Patient whose BSN has no cached key gets a `q` mark in
//! the same atomic write, and [`Storage::assign_patient_keys`] settles the marks later (the
//! node's key deriver asks the evaluators in batches). Until then its data is stored and
//! searchable locally but not yet in the mesh index.
//!
//! Two more trees hold logs: `own_log` (this node's signed batches by sequence) and
//! `remote_log` (accepted gossip messages by publisher and sequence).
//!
//! **Durability**: a write is acknowledged only after `flush_async` returned, i.e. after sled
//! wrote it to its log on disk. Writers are serialised by one mutex; flushes run outside it,
//! so concurrent writers share a flush (group commit).

mod backup;
mod check;
pub mod engine;
mod seal;
mod sealed_tree;
pub mod search_index;

pub use backup::{BackupRefused, BackupSummary, BackupTaker, RestoreError, TakenBackup};
pub use check::CheckReport;
pub use engine::EngineKind;
use sealed_tree::SealedTree;
pub use sealed_tree::TreeState;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zorgmesh_protocol::locator::HeldResource;
use zorgmesh_protocol::{Bsn, PatientKey};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine failed (disk full, corruption, I/O error).
    #[error("storage engine: {0}")]
    Engine(String),
    /// The store is damaged: the start-up check or `zorgmesh node check` found records
    /// that fail their checksums, records lost or added outside a write, or an engine that
    /// went back to an older commit. The node does not serve a damaged store.
    #[error("{0}")]
    Damaged(Box<CheckReport>),
    /// The store cannot be opened (in use by another process, unreadable, or the engine
    /// refused it).
    #[error("cannot open the store in {dir}: {message}")]
    Unavailable {
        /// The data directory.
        dir: String,
        /// Why.
        message: String,
    },
    /// A backup cannot be written.
    #[error("{0}")]
    Backup(String),
    /// The seal file cannot be written.
    #[error("cannot write the seal of the store: {0}")]
    Seal(std::io::Error),
    /// A stored record could not be decoded or fails its checksum.
    #[error("damaged record {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What went wrong.
        message: String,
    },
}

/// A stored snapshot of another publisher: its encoded gossip `Announce` (the record) and
/// its encoded chunks in part order.
pub type StoredSnapshot = (Vec<u8>, Vec<Vec<u8>>);

/// One version of a resource.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Version number, from 1.
    pub version: u64,
    /// When the version was written (ms since the Unix epoch).
    pub last_updated_ms: u64,
    /// True for a delete marker.
    pub deleted: bool,
    /// The resource (absent for a delete marker).
    pub resource: Option<Value>,
}

const SEP: u8 = 0;

fn resource_key(resource_type: &str, id: &str) -> Vec<u8> {
    [b"r\0", resource_type.as_bytes(), &[SEP], id.as_bytes()].concat()
}
/// `h\0<type>\0<id>\0`: every version key of a resource starts so.
fn history_prefix(resource_type: &str, id: &str) -> Vec<u8> {
    [
        b"h\0",
        resource_type.as_bytes(),
        &[SEP],
        id.as_bytes(),
        &[SEP],
    ]
    .concat()
}
fn history_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    [
        history_prefix(resource_type, id),
        version.to_be_bytes().to_vec(),
    ]
    .concat()
}
/// `t\0 <ms, 8 bytes> <type> \0 <id> \0 <version, 8 bytes>`: every version in write
/// order, for system-level history.
fn changes_key(last_updated_ms: u64, resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    [
        b"t\0".as_slice(),
        &last_updated_ms.to_be_bytes(),
        resource_type.as_bytes(),
        &[SEP],
        id.as_bytes(),
        &[SEP],
        &version.to_be_bytes(),
    ]
    .concat()
}
/// `u\0 <type> \0 <ms, 8 bytes> <id> \0 <version, 8 bytes>`: a type's versions in write
/// order, for type-level history.
fn type_changes_key(last_updated_ms: u64, resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    [
        type_changes_prefix(resource_type).as_slice(),
        &last_updated_ms.to_be_bytes(),
        id.as_bytes(),
        &[SEP],
        &version.to_be_bytes(),
    ]
    .concat()
}
fn type_changes_prefix(resource_type: &str) -> Vec<u8> {
    [b"u\0".as_slice(), resource_type.as_bytes(), &[SEP]].concat()
}
const CHANGES_PREFIX: &[u8] = b"t\0";

/// The first key after every key that starts with `prefix`.
fn prefix_after(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One version in a history across resources.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resource type.
    pub resource_type: String,
    /// The id.
    pub id: String,
    /// The version.
    pub record: VersionRecord,
    /// Where the next page (older) starts: pass it as `before`.
    pub cursor: Vec<u8>,
}

fn link_key(patient_id: &str, resource_type: &str, id: &str) -> Vec<u8> {
    [
        b"l\0",
        patient_id.as_bytes(),
        &[SEP],
        resource_type.as_bytes(),
        &[SEP],
        id.as_bytes(),
    ]
    .concat()
}
fn link_prefix(patient_id: &str) -> Vec<u8> {
    [b"l\0", patient_id.as_bytes(), &[SEP]].concat()
}
fn patient_key_key(patient_id: &str) -> Vec<u8> {
    [b"p\0", patient_id.as_bytes()].concat()
}
fn reverse_key(key: &PatientKey, patient_id: &str) -> Vec<u8> {
    [b"k\0", &key.0[..], patient_id.as_bytes()].concat()
}
fn dirty_key(key: &PatientKey) -> Vec<u8> {
    [b"d\0", &key.0[..]].concat()
}
fn pending_key(patient_id: &str) -> Vec<u8> {
    [b"q\0", patient_id.as_bytes()].concat()
}
fn consent_copy_key(patient: &PatientKey, source: &str) -> Vec<u8> {
    [b"c\0".as_slice(), &patient.0, source.as_bytes()].concat()
}

/// The privacy Consents another holder keeps for a patient, as last read from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsentCopy {
    /// The `updated_at_ms` of the holder's locator entry when they were read.
    pub entry_updated_at_ms: u64,
    /// The Consent resources.
    pub consents: Vec<Value>,
}

fn bsn_cache_key(bsn: &Bsn) -> Vec<u8> {
    [b"b\0", bsn.as_str().as_bytes()].concat()
}

/// The local patient id a resource belongs to (its patient compartment), if any: the
/// Patient itself, or the `Patient/{id}` that `subject`, `patient` or `beneficiary` names.
pub fn compartment_patient(resource_type: &str, id: &str, resource: &Value) -> Option<String> {
    if resource_type == "Patient" {
        return Some(id.to_owned());
    }
    for field in ["subject", "patient", "beneficiary"] {
        let reference = resource
            .get(field)
            .and_then(|f| f.get("reference"))
            .and_then(Value::as_str);
        if let Some(rest) = reference.and_then(|r| r.strip_prefix("Patient/")) {
            let id = rest.split('/').next().unwrap_or(rest);
            if !id.is_empty() {
                return Some(id.to_owned());
            }
        }
    }
    None
}

/// The BSN of a Patient resource, if it carries a valid one.
pub fn patient_bsn(resource: &Value) -> Option<Bsn> {
    resource
        .get("identifier")?
        .as_array()?
        .iter()
        .filter(|i| {
            i.get("system").and_then(Value::as_str) == Some(zorgmesh_protocol::patient::BSN_SYSTEM)
        })
        .find_map(|i| Bsn::parse(i.get("value")?.as_str()?).ok())
}

fn compartment_patient_of(
    record: Option<&VersionRecord>,
    resource_type: &str,
    id: &str,
) -> Option<String> {
    record
        .and_then(|r| r.resource.as_ref())
        .and_then(|res| compartment_patient(resource_type, id, res))
}

/// Whether resources of this type are part of the record the mesh shares about a patient.
/// `Consent` is not: a patient's consent governs the sharing and stays with the node it was
/// recorded at (an objection shown to the organisation it keeps out would tell it what was
/// withheld).
pub fn is_shared_record(resource_type: &str) -> bool {
    resource_type != "Consent"
}

/// The evaluation audit of one requesting node (kept by evaluator nodes).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EvaluationAudit {
    /// The requester's node id (hex).
    pub node: String,
    /// The requester's node name (from its certificate).
    pub name: String,
    /// Patient keys evaluated for it.
    pub granted: u64,
    /// Patient keys refused (over its rate limit).
    pub refused: u64,
    /// Requests.
    pub requests: u64,
    /// Time of the last request (ms since the Unix epoch).
    pub last_ms: u64,
}

/// The storage of one node.
pub struct Storage {
    dir: PathBuf,
    engine: engine::Engine,
    fhir: SealedTree,
    own_log: SealedTree,
    own_snapshot: SealedTree,
    remote_log: SealedTree,
    remote_snapshots: SealedTree,
    oprf_audit: SealedTree,
    /// Trust material learned from the mesh (the newest revocation list) and this node's
    /// holding secret.
    trust: SealedTree,
    /// The seal last written.
    sealed: Mutex<Option<seal::Seal>>,
    /// The secret behind the salts of this node's holding commitments (never leaves it).
    holding_secret: ring::hmac::Key,
    writer: Mutex<()>,
    pending_keys: tokio::sync::Notify,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Engine(e.to_string())
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Err(e) = self.seal() {
            tracing::warn!(error = %e, "cannot seal the store on close");
        }
    }
}

/// An atomic write in progress: reads see the writes made so far; nothing reaches disk
/// until [`Storage::write`] commits the whole set.
pub struct WriteTransaction<'a> {
    tree: &'a SealedTree,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the tree held before this transaction under keys the transaction derived from
    /// records it read (index records, from a values record): not read again on commit.
    held_before: HashMap<Vec<u8>, Option<Vec<u8>>>,
    dirty: BTreeSet<PatientKey>,
    added_pending: bool,
    now_ms: u64,
}

/// What a put did.
#[derive(Clone, Debug)]
pub struct PutOutcome {
    /// The new version number.
    pub version: u64,
    /// True when the resource did not exist (or was deleted) before.
    pub created: bool,
}

impl WriteTransaction<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(value) = self.overlay.get(key) {
            return Ok(value.clone());
        }
        self.tree.get(key)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    /// The time the transaction writes as `lastUpdated`.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The current record of a resource, including delete markers.
    pub fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, StorageError> {
        let key = resource_key(resource_type, id);
        self.get(&key)?
            .map(|bytes| decode_record(&key, &bytes))
            .transpose()
    }

    fn patient_key_of(&self, patient_id: &str) -> Result<Option<PatientKey>, StorageError> {
        Ok(self
            .get(&patient_key_key(patient_id))?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(PatientKey))
    }

    fn cached_key(&self, bsn: &Bsn) -> Result<Option<PatientKey>, StorageError> {
        Ok(self
            .get(&bsn_cache_key(bsn))?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(PatientKey))
    }

    fn mark_dirty(&mut self, patient_id: Option<&str>) -> Result<(), StorageError> {
        if let Some(pid) = patient_id {
            if let Some(key) = self.patient_key_of(pid)? {
                // The mark holds the write time, so that a batch computed before this write
                // does not clear it (see `append_own_batch`).
                self.set(dirty_key(&key), self.now_ms.to_be_bytes().to_vec());
                self.dirty.insert(key);
            }
        }
        Ok(())
    }

    /// Writes a new version of a resource. `resource` must already carry `id` and `meta`
    /// with the version the caller got from [`WriteTransaction::next_version`].
    pub fn put(
        &mut self,
        resource_type: &str,
        id: &str,
        resource: Value,
    ) -> Result<PutOutcome, StorageError> {
        let previous = self.current(resource_type, id)?;
        let version = previous.as_ref().map_or(1, |p| p.version + 1);
        let created = previous.as_ref().is_none_or(|p| p.deleted);
        let old_patient = compartment_patient_of(previous.as_ref(), resource_type, id);
        let new_patient = compartment_patient(resource_type, id, &resource);

        if resource_type == "Patient" {
            let old_key = self.patient_key_of(id)?;
            let new_bsn = patient_bsn(&resource);
            let cached = match &new_bsn {
                Some(bsn) => self.cached_key(bsn)?,
                None => None,
            };
            let unchanged = old_key.is_some() && old_key == cached;
            if !unchanged {
                if let Some(old) = old_key {
                    self.mark_dirty(Some(id))?;
                    self.remove(reverse_key(&old, id));
                    self.remove(patient_key_key(id));
                }
                self.remove(pending_key(id));
                match (new_bsn, cached) {
                    (Some(_), Some(key)) => {
                        self.set(patient_key_key(id), key.0.to_vec());
                        self.set(reverse_key(&key, id), Vec::new());
                    }
                    (Some(bsn), None) => {
                        self.set(pending_key(id), bsn.as_str().as_bytes().to_vec());
                        self.added_pending = true;
                    }
                    (None, _) => {}
                }
            }
        }
        if old_patient != new_patient {
            if let Some(old) = &old_patient {
                self.remove(link_key(old, resource_type, id));
                self.mark_dirty(Some(old))?;
            }
        }
        if let Some(new) = &new_patient {
            if resource_type != "Patient" {
                self.set(link_key(new, resource_type, id), Vec::new());
            }
        }
        self.mark_dirty(new_patient.as_deref())?;
        let values = search_index::values_of(resource_type, &resource);
        self.replace_index(resource_type, id, previous.as_ref(), Some(values))?;

        let record = VersionRecord {
            version,
            last_updated_ms: self.now_ms,
            deleted: false,
            resource: Some(resource),
        };
        let bytes = serde_json::to_vec(&record).expect("records serialize");
        self.set(history_key(resource_type, id, version), bytes.clone());
        self.set(resource_key(resource_type, id), bytes);
        self.record_change(resource_type, id, version);
        Ok(PutOutcome { version, created })
    }

    /// Marks a new version in the system-level and type-level change order.
    fn record_change(&mut self, resource_type: &str, id: &str, version: u64) {
        self.set(
            changes_key(self.now_ms, resource_type, id, version),
            Vec::new(),
        );
        self.set(
            type_changes_key(self.now_ms, resource_type, id, version),
            Vec::new(),
        );
    }

    /// Replaces a resource's search index records: those of its previous version (from its
    /// values record, or from the version itself when the record is missing) by those of
    /// `values` (`None`: deleted). Removes what is gone, writes what is new or changed.
    fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        previous: Option<&VersionRecord>,
        values: Option<search_index::ResourceValues>,
    ) -> Result<(), StorageError> {
        let values_key = search_index::values_key(resource_type, id);
        // Only the tree's own values record says exactly which index records the tree
        // holds for this resource; then none of them is read again on commit.
        let from_tree = !self.overlay.contains_key(&values_key);
        let (old_values, vouch) = match self.get(&values_key)? {
            Some(bytes) => (
                search_index::decode_values(&bytes).map_err(|message| StorageError::Corrupt {
                    key: String::from_utf8_lossy(&values_key).replace('\0', "/"),
                    message,
                })?,
                from_tree,
            ),
            None => (
                previous
                    .and_then(|p| p.resource.as_ref())
                    .map(|old| search_index::values_of(resource_type, old))
                    .unwrap_or_default(),
                from_tree && previous.is_none(),
            ),
        };
        let old: BTreeMap<Vec<u8>, Vec<u8>> =
            search_index::entries_of(resource_type, id, &old_values)
                .into_iter()
                .collect();
        let new: BTreeMap<Vec<u8>, Vec<u8>> = values
            .as_ref()
            .map(|v| search_index::entries_of(resource_type, id, v))
            .unwrap_or_default()
            .into_iter()
            .collect();
        if vouch {
            for (key, payload) in &old {
                self.held_before
                    .entry(key.clone())
                    .or_insert_with(|| Some(payload.clone()));
            }
            for key in new.keys() {
                if !old.contains_key(key) {
                    self.held_before.entry(key.clone()).or_insert(None);
                }
            }
        }
        for key in old.keys() {
            if !new.contains_key(key) {
                self.remove(key.clone());
            }
        }
        for (key, payload) in new {
            if old.get(&key) != Some(&payload) {
                self.set(key, payload);
            }
        }
        match values {
            Some(values) => self.set(values_key, search_index::encode_values(&values)),
            None => self.remove(values_key),
        }
        Ok(())
    }

    /// The version number the next put of this resource will get.
    pub fn next_version(&self, resource_type: &str, id: &str) -> Result<u64, StorageError> {
        Ok(self
            .current(resource_type, id)?
            .map_or(1, |p| p.version + 1))
    }

    /// Deletes a resource (writes a delete marker). Returns the marker's version, or `None`
    /// when there was nothing to delete.
    pub fn delete(&mut self, resource_type: &str, id: &str) -> Result<Option<u64>, StorageError> {
        let Some(previous) = self.current(resource_type, id)? else {
            return Ok(None);
        };
        if previous.deleted {
            return Ok(None);
        }
        let old_patient = compartment_patient_of(Some(&previous), resource_type, id);
        if let Some(old) = &old_patient {
            self.mark_dirty(Some(old))?;
            if resource_type != "Patient" {
                self.remove(link_key(old, resource_type, id));
            }
        }
        if resource_type == "Patient" {
            if let Some(key) = self.patient_key_of(id)? {
                self.remove(reverse_key(&key, id));
                self.remove(patient_key_key(id));
            }
            self.remove(pending_key(id));
        }
        self.replace_index(resource_type, id, Some(&previous), None)?;
        let version = previous.version + 1;
        let record = VersionRecord {
            version,
            last_updated_ms: self.now_ms,
            deleted: true,
            resource: None,
        };
        let bytes = serde_json::to_vec(&record).expect("records serialize");
        self.set(history_key(resource_type, id, version), bytes.clone());
        self.set(resource_key(resource_type, id), bytes);
        self.record_change(resource_type, id, version);
        Ok(Some(version))
    }
}

fn decode_record(key: &[u8], bytes: &[u8]) -> Result<VersionRecord, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        message: e.to_string(),
    })
}

impl Storage {
    /// Opens (or creates, with the default engine) the storage in `dir`, after checking
    /// all of it: a damaged store is refused ([`StorageError::Damaged`] says what is
    /// damaged), never served in part.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, EngineKind::default())
    }

    /// Like [`Storage::open`]; a new store uses `engine` (an existing one keeps its own).
    pub fn open_with(dir: &Path, engine: EngineKind) -> Result<Self, StorageError> {
        let started = std::time::Instant::now();
        let kind = EngineKind::of_store(dir).unwrap_or(engine);
        let (db, trees) = check::open_engine(dir, kind)?;
        let report = check::inspect(dir, &trees, started);
        if report.is_damaged() {
            return Err(StorageError::Damaged(Box::new(report)));
        }
        tracing::info!(
            records = report.records(),
            bytes = report.bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store checked"
        );
        if report.unsealed {
            // A seal first (every tree at commit 0, true of a new store), so that a crash
            // right after the first writes below leaves a sealed store, not one whose seal
            // is missing.
            let zero: seal::Seal = trees
                .iter()
                .map(|tree| (tree.name().to_owned(), TreeState::default()))
                .collect();
            seal::write_seal(dir, &zero).map_err(StorageError::Seal)?;
            // Written before records carried checksums (or new): give each tree its state.
            for tree in &trees {
                if !tree.is_untouched()? && !tree.has_state_record()? {
                    tree.upgrade_unchecked_records()?;
                }
            }
        }
        let [fhir, own_log, own_snapshot, remote_log, remote_snapshots, oprf_audit, trust] = trees;
        let secret = match trust.get(b"holding-secret")? {
            Some(secret) => secret,
            None => {
                let mut secret = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
                trust.insert(b"holding-secret", &secret)?;
                secret.to_vec()
            }
        };
        let storage = Self {
            dir: dir.to_path_buf(),
            fhir,
            own_log,
            own_snapshot,
            remote_log,
            remote_snapshots,
            oprf_audit,
            trust,
            sealed: Mutex::new(None),
            holding_secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            engine: db,
            writer: Mutex::new(()),
            pending_keys: tokio::sync::Notify::new(),
        };
        storage.seal()?;
        storage.upgrade_search_index()?;
        Ok(storage)
    }

    /// Re-indexes every current resource when the index was made by another version of the
    /// extraction rules (or before there was one). The version record goes first and comes
    /// back last, so a crash part-way leaves a store that is re-indexed on the next open.
    fn upgrade_search_index(&self) -> Result<(), StorageError> {
        let current = search_index::INDEX_VERSION.to_be_bytes();
        if self.fhir.get(search_index::VERSION_KEY)?.as_deref() == Some(&current[..]) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.fhir
            .apply([(search_index::VERSION_KEY.to_vec(), None)])?;
        const CHUNK: usize = 4096;
        for prefix in [
            search_index::INDEX_PREFIX,
            search_index::PATIENT_PREFIX,
            search_index::VALUES_PREFIX,
            CHANGES_PREFIX,
            b"u\0",
        ] {
            let mut removals = Vec::with_capacity(CHUNK);
            for key in self.fhir.keys_with_prefix(prefix) {
                removals.push((key?, None));
                if removals.len() == CHUNK {
                    self.fhir.apply(std::mem::take(&mut removals))?;
                }
            }
            self.fhir.apply(removals)?;
        }
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(CHUNK);
        let mut resources = 0u64;
        for item in self.fhir.scan_prefix(b"r\0") {
            let (key, bytes) = item?;
            let record = decode_record(&key, &bytes)?;
            let Some(resource) = &record.resource else {
                continue;
            };
            let mut parts = key[2..].splitn(2, |b| *b == SEP);
            let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(resource_type), Ok(id)) =
                (std::str::from_utf8(resource_type), std::str::from_utf8(id))
            else {
                continue;
            };
            resources += 1;
            let values = search_index::values_of(resource_type, resource);
            for (key, payload) in search_index::entries_of(resource_type, id, &values) {
                batch.push((key, Some(payload)));
            }
            batch.push((
                search_index::values_key(resource_type, id),
                Some(search_index::encode_values(&values)),
            ));
            if batch.len() >= CHUNK {
                self.fhir.apply(std::mem::take(&mut batch))?;
            }
        }
        self.fhir.apply(batch)?;
        // The change order, from every version kept.
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(CHUNK);
        for item in self.fhir.scan_prefix(b"h\0") {
            let (key, bytes) = item?;
            if key.len() < 2 + 8 + 2 {
                continue;
            }
            let record = decode_record(&key, &bytes)?;
            let middle = &key[2..key.len() - 9];
            let mut parts = middle.splitn(2, |b| *b == SEP);
            let (Some(t), Some(i)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(t), Ok(i)) = (std::str::from_utf8(t), std::str::from_utf8(i)) else {
                continue;
            };
            batch.push((
                changes_key(record.last_updated_ms, t, i, record.version),
                Some(Vec::new()),
            ));
            batch.push((
                type_changes_key(record.last_updated_ms, t, i, record.version),
                Some(Vec::new()),
            ));
            if batch.len() >= CHUNK {
                self.fhir.apply(std::mem::take(&mut batch))?;
            }
        }
        self.fhir.apply(batch)?;
        self.fhir
            .apply([(search_index::VERSION_KEY.to_vec(), Some(current.to_vec()))])?;
        self.engine.flush()?;
        self.seal()?;
        tracing::info!(
            resources,
            version = search_index::INDEX_VERSION,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "search index built"
        );
        Ok(())
    }

    /// Checks the store in `dir` without serving it (`zorgmesh node check`): opens the
    /// engine, reads and verifies every record. Fails only when the store cannot be opened.
    pub fn check(dir: &Path) -> Result<CheckReport, StorageError> {
        let started = std::time::Instant::now();
        let kind = EngineKind::of_store(dir).ok_or_else(|| StorageError::Unavailable {
            dir: dir.display().to_string(),
            message: "it holds no store".into(),
        })?;
        let (_db, trees) = check::open_engine(dir, kind)?;
        Ok(check::inspect(dir, &trees, started))
    }

    fn trees(&self) -> [&SealedTree; 7] {
        [
            &self.fhir,
            &self.own_log,
            &self.own_snapshot,
            &self.remote_log,
            &self.remote_snapshots,
            &self.oprf_audit,
            &self.trust,
        ]
    }

    /// Writes the seal if the store changed since the last one: the trees' states are read
    /// first, then flushed, then sealed, so the seal never claims more than the disk holds.
    /// Blocks on disk I/O.
    pub fn seal(&self) -> Result<(), StorageError> {
        let states: seal::Seal = self
            .trees()
            .iter()
            .map(|tree| (tree.name().to_owned(), tree.state()))
            .collect();
        let mut sealed = self.sealed.lock().unwrap_or_else(|e| e.into_inner());
        if sealed.as_ref() == Some(&states) {
            return Ok(());
        }
        self.engine.flush()?;
        seal::write_seal(&self.dir, &states).map_err(StorageError::Seal)?;
        *sealed = Some(states);
        Ok(())
    }

    /// Runs `work` as one atomic, durable write. If `work` fails, nothing is written.
    /// Returns `work`'s value and the patient keys whose locator entries changed.
    pub async fn write<T, E>(
        &self,
        now_ms: u64,
        work: impl FnOnce(&mut WriteTransaction<'_>) -> Result<T, E>,
    ) -> Result<(T, BTreeSet<PatientKey>), E>
    where
        E: From<StorageError>,
    {
        let (value, dirty, added_pending) = {
            let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let mut tx = WriteTransaction {
                tree: &self.fhir,
                overlay: BTreeMap::new(),
                held_before: HashMap::new(),
                dirty: BTreeSet::new(),
                added_pending: false,
                now_ms,
            };
            let value = work(&mut tx)?;
            self.fhir.apply_vouched(tx.overlay, &tx.held_before)?;
            (value, tx.dirty, tx.added_pending)
        };
        self.engine.flush_async().await?;
        if added_pending {
            self.pending_keys.notify_one();
        }
        Ok((value, dirty))
    }

    /// Waits until a write leaves a Patient waiting for its key (or returns at once if one
    /// did since the last call).
    pub async fn pending_keys_added(&self) {
        self.pending_keys.notified().await;
    }

    /// Up to `limit` Patients that wait for their patient key: `(patient id, BSN)`.
    pub fn pending_patient_keys(&self, limit: usize) -> Result<Vec<(String, Bsn)>, StorageError> {
        let mut out = Vec::new();
        for item in self.fhir.scan_prefix(b"q\0").take(limit) {
            let (key, value) = item?;
            let id = String::from_utf8_lossy(&key[2..]).into_owned();
            let bsn = std::str::from_utf8(&value)
                .ok()
                .and_then(|text| Bsn::parse(text).ok())
                .ok_or_else(|| StorageError::Corrupt {
                    key: format!("q/{id}"),
                    message: "pending mark does not hold a BSN".into(),
                })?;
            out.push((id, bsn));
        }
        Ok(out)
    }

    /// Gives the waiting Patients their keys (`keys` maps BSNs to the keys the evaluators'
    /// OPRF produced), caches the keys, and returns the patient keys whose locator entries
    /// must now be published. A Patient whose BSN changed meanwhile keeps waiting.
    pub async fn assign_patient_keys(
        &self,
        now_ms: u64,
        waiting: &[(String, Bsn)],
        keys: &BTreeMap<Bsn, PatientKey>,
    ) -> Result<BTreeSet<PatientKey>, StorageError> {
        let ((), dirty) = self
            .write(now_ms, |tx| {
                for (bsn, key) in keys {
                    tx.set(bsn_cache_key(bsn), key.0.to_vec());
                }
                for (id, bsn) in waiting {
                    let Some(key) = keys.get(bsn) else { continue };
                    // Still waiting with the same BSN inside this write?
                    if tx.get(&pending_key(id))?.as_deref() != Some(bsn.as_str().as_bytes()) {
                        continue;
                    }
                    tx.remove(pending_key(id));
                    tx.set(patient_key_key(id), key.0.to_vec());
                    tx.set(reverse_key(key, id), Vec::new());
                    tx.mark_dirty(Some(id))?;
                }
                Ok::<(), StorageError>(())
            })
            .await?;
        Ok(dirty)
    }

    /// Adds to the evaluation audit of `requester`.
    pub fn record_evaluations(
        &self,
        requester: &zorgmesh_protocol::NodeId,
        name: &str,
        granted: u64,
        refused: u64,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        self.oprf_audit.update(&requester.0, |old| {
            let mut audit: EvaluationAudit = old
                .and_then(|bytes| serde_json::from_slice(bytes).ok())
                .unwrap_or_default();
            audit.node = requester.to_hex();
            audit.name = name.to_owned();
            audit.granted += granted;
            audit.refused += refused;
            audit.requests += 1;
            audit.last_ms = now_ms;
            serde_json::to_vec(&audit).map_err(|e| StorageError::Corrupt {
                key: "oprf_audit".into(),
                message: e.to_string(),
            })
        })
    }

    /// The evaluation audit of one requester.
    pub fn evaluation_audit_of(
        &self,
        requester: &zorgmesh_protocol::NodeId,
    ) -> Result<Option<EvaluationAudit>, StorageError> {
        self.oprf_audit
            .get(&requester.0)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                    key: format!("oprf_audit/{}", requester.to_hex()),
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    /// Every requester's evaluation audit.
    pub fn evaluation_audit(&self) -> Result<Vec<EvaluationAudit>, StorageError> {
        self.oprf_audit
            .iter()
            .map(|item| {
                let (_, bytes) = item?;
                serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                    key: "oprf_audit".into(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The cached patient key of a BSN this node holds (or held) a Patient for.
    pub fn cached_patient_key(&self, bsn: &Bsn) -> Result<Option<PatientKey>, StorageError> {
        Ok(self
            .fhir
            .get(&bsn_cache_key(bsn))?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(PatientKey))
    }

    /// Keeps (durably) the privacy Consents `source` holds for `patient`.
    pub async fn store_consent_copy(
        &self,
        patient: &PatientKey,
        source: &str,
        copy: &ConsentCopy,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(copy).map_err(|e| StorageError::Corrupt {
            key: "consent copy".into(),
            message: e.to_string(),
        })?;
        self.write(crate::fhir::service::now_ms(), |tx| {
            tx.set(consent_copy_key(patient, source), bytes);
            Ok::<(), StorageError>(())
        })
        .await?;
        Ok(())
    }

    /// The consent copies kept for `patient`, by source node name.
    pub fn consent_copies(
        &self,
        patient: &PatientKey,
    ) -> Result<BTreeMap<String, ConsentCopy>, StorageError> {
        let prefix = [b"c\0".as_slice(), &patient.0].concat();
        let mut out = BTreeMap::new();
        for item in self.fhir.scan_prefix(&prefix) {
            let (key, value) = item?;
            let source = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let copy = serde_json::from_slice(&value).map_err(|e| StorageError::Corrupt {
                key: format!("c/{}/{source}", patient.to_hex()),
                message: e.to_string(),
            })?;
            out.insert(source, copy);
        }
        Ok(out)
    }

    /// The patient keys of the local Patients.
    pub fn held_patient_keys(&self) -> Result<BTreeSet<PatientKey>, StorageError> {
        let mut out = BTreeSet::new();
        for item in self.fhir.scan_prefix(b"k\0") {
            let (key, _) = item?;
            if let Ok(bytes) = <[u8; 32]>::try_from(&key[2..key.len().min(34)]) {
                out.insert(PatientKey(bytes));
            }
        }
        Ok(out)
    }

    /// The patient key of a local Patient (none while it has no BSN or waits for its key).
    pub fn patient_key_of(&self, patient_id: &str) -> Result<Option<PatientKey>, StorageError> {
        Ok(self
            .fhir
            .get(&patient_key_key(patient_id))?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(PatientKey))
    }

    /// The current record of a resource.
    pub fn current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRecord>, StorageError> {
        let key = resource_key(resource_type, id);
        self.fhir
            .get(&key)?
            .map(|bytes| decode_record(&key, &bytes))
            .transpose()
    }

    /// The current resource, if it exists and is not deleted.
    pub fn read(&self, resource_type: &str, id: &str) -> Result<Option<Value>, StorageError> {
        Ok(self
            .current(resource_type, id)?
            .filter(|r| !r.deleted)
            .and_then(|r| r.resource))
    }

    /// One version of a resource.
    pub fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, StorageError> {
        let key = history_key(resource_type, id, version);
        self.fhir
            .get(&key)?
            .map(|bytes| decode_record(&key, &bytes))
            .transpose()
    }

    /// Every version of a resource, oldest first.
    pub fn history(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<VersionRecord>, StorageError> {
        let prefix = history_prefix(resource_type, id);
        let mut out = Vec::new();
        for item in self.fhir.scan_prefix(&prefix) {
            let (key, bytes) = item?;
            // Only this id: the version suffix is exactly 8 bytes.
            if key.len() == prefix.len() + 8 {
                out.push(decode_record(&key, &bytes)?);
            }
        }
        Ok(out)
    }

    /// Versions across resources (of `resource_type`, or all), newest first, written at or
    /// after `since_ms`, starting before `before` (a [`Change::cursor`]); at most `limit`.
    pub fn changes(
        &self,
        resource_type: Option<&str>,
        since_ms: u64,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Change>, StorageError> {
        let prefix = match resource_type {
            Some(t) => type_changes_prefix(t),
            None => CHANGES_PREFIX.to_vec(),
        };
        let lowest = [prefix.as_slice(), &since_ms.to_be_bytes()].concat();
        let end = match before {
            Some(cursor) if cursor.starts_with(&prefix) => {
                std::ops::Bound::Excluded(cursor.to_vec())
            }
            _ => match prefix_after(&prefix) {
                Some(end) => std::ops::Bound::Excluded(end),
                None => std::ops::Bound::Unbounded,
            },
        };
        let mut out = Vec::new();
        for item in self
            .fhir
            .range((std::ops::Bound::Included(lowest), end))
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item?;
            let rest = &key[prefix.len() + 8..key.len().saturating_sub(9).max(prefix.len() + 8)];
            let (t, i) = match resource_type {
                Some(t) => (t.to_owned(), String::from_utf8_lossy(rest).into_owned()),
                None => {
                    let mut parts = rest.splitn(2, |b| *b == SEP);
                    let t = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let i = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    (t, i)
                }
            };
            let version = u64::from_be_bytes(
                key[key.len() - 8..]
                    .try_into()
                    .expect("a change key ends in its version"),
            );
            if let Some(record) = self.version(&t, &i, version)? {
                out.push(Change {
                    resource_type: t,
                    id: i,
                    record,
                    cursor: key,
                });
            }
        }
        Ok(out)
    }

    /// Current, not deleted resources of a type, in id order, with their update times.
    pub fn scan_type(
        &self,
        resource_type: &str,
    ) -> impl Iterator<Item = Result<(u64, Value), StorageError>> + '_ {
        let prefix = [b"r\0", resource_type.as_bytes(), &[SEP]].concat();
        self.fhir
            .scan_prefix(&prefix)
            .filter_map(|item| match item {
                Err(e) => Some(Err(e)),
                Ok((key, bytes)) => match decode_record(&key, &bytes) {
                    Err(e) => Some(Err(e)),
                    Ok(record) if record.deleted => None,
                    Ok(record) => record.resource.map(|r| Ok((record.last_updated_ms, r))),
                },
            })
    }

    /// Search index records (see [`search_index`]) whose keys lie between `start` and `end`,
    /// in key order.
    pub fn index_range(
        &self,
        start: std::ops::Bound<Vec<u8>>,
        end: std::ops::Bound<Vec<u8>>,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        let start = match start {
            std::ops::Bound::Unbounded => {
                std::ops::Bound::Included(search_index::INDEX_PREFIX.to_vec())
            }
            bound => bound,
        };
        self.fhir.range((start, end))
    }

    /// The index values of a current resource (its values record), if it has one.
    pub fn index_values(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<search_index::ResourceValues>, StorageError> {
        let key = search_index::values_key(resource_type, id);
        self.fhir
            .get(&key)?
            .map(|bytes| {
                search_index::decode_values(&bytes).map_err(|message| StorageError::Corrupt {
                    key: String::from_utf8_lossy(&key).replace('\0', "/"),
                    message,
                })
            })
            .transpose()
    }

    /// How many search index records (entries and values records) the store holds, and
    /// their bytes (keys and payloads).
    pub fn search_index_size(&self) -> Result<(u64, u64), StorageError> {
        let (mut records, mut bytes) = (0u64, 0u64);
        for prefix in [
            search_index::INDEX_PREFIX,
            search_index::PATIENT_PREFIX,
            search_index::VALUES_PREFIX,
        ] {
            for item in self.fhir.scan_prefix(prefix) {
                let (key, payload) = item?;
                records += 1;
                bytes += (key.len() + payload.len()) as u64;
            }
        }
        Ok((records, bytes))
    }

    /// Search index records whose keys start with `prefix`.
    pub fn index_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        debug_assert!(
            prefix.starts_with(search_index::INDEX_PREFIX)
                || prefix.starts_with(search_index::PATIENT_PREFIX)
        );
        self.fhir.scan_prefix(prefix)
    }

    /// `(type, id)` of every resource linked to a local patient's compartment.
    pub fn compartment(&self, patient_id: &str) -> Result<Vec<(String, String)>, StorageError> {
        let prefix = link_prefix(patient_id);
        let mut out = Vec::new();
        for key in self.fhir.keys_with_prefix(&prefix) {
            let key = key?;
            let rest = &key[prefix.len()..];
            let mut parts = rest.splitn(2, |b| *b == SEP);
            let resource_type =
                String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            out.push((resource_type, id));
        }
        Ok(out)
    }

    /// The node's QUIC endpoint secret (stateless-reset and connection-ID keys): derived
    /// from the holding secret, so it outlives key rotations.
    pub fn endpoint_secret(&self) -> [u8; 32] {
        let mut context = ring::hmac::Context::with_key(&self.holding_secret);
        context.update(b"zorgmesh/quic-endpoint-secret/v1\n");
        context
            .sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    /// The salt of this node's holding commitment for a patient: HMAC-SHA256 under the
    /// node's holding secret over `"zorgmesh/holding-salt/v1\n" || key`.
    pub fn holding_salt(&self, key: &PatientKey) -> [u8; 32] {
        let mut context = ring::hmac::Context::with_key(&self.holding_secret);
        context.update(b"zorgmesh/holding-salt/v1\n");
        context.update(&key.0);
        context
            .sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    /// The current version of a resource, from its newest history key (no record is read).
    fn current_version(&self, resource_type: &str, id: &str) -> Result<Option<u64>, StorageError> {
        let prefix = history_prefix(resource_type, id);
        let Some(key) = self.fhir.keys_with_prefix(&prefix).next_back() else {
            return Ok(None);
        };
        let key = key?;
        Ok(<[u8; 8]>::try_from(&key[prefix.len()..])
            .ok()
            .map(u64::from_be_bytes))
    }

    /// What the holding commitment of `patient_ids` covers: each current Patient and every
    /// resource linked to its compartment, each once, with its current version.
    pub fn holdings(&self, patient_ids: &[String]) -> Result<Vec<HeldResource>, StorageError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for pid in patient_ids {
            let mut members = Vec::new();
            if self.current("Patient", pid)?.is_some_and(|r| !r.deleted) {
                members.push(("Patient".to_owned(), pid.clone()));
            }
            members.extend(self.compartment(pid)?);
            for (resource_type, id) in members {
                if !is_shared_record(&resource_type)
                    || !seen.insert((resource_type.clone(), id.clone()))
                {
                    continue;
                }
                if let Some(version) = self.current_version(&resource_type, &id)? {
                    out.push(HeldResource {
                        resource_type,
                        id,
                        version,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Local Patient ids that carry the BSN behind `key`.
    pub fn patients_with_key(&self, key: &PatientKey) -> Result<Vec<String>, StorageError> {
        let prefix = [b"k\0", &key.0[..]].concat();
        let mut out = Vec::new();
        for key in self.fhir.scan_prefix(&prefix) {
            let (k, _) = key?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Patient keys whose locator entries are not yet in a persisted batch.
    pub fn dirty_patient_keys(&self) -> Result<Vec<PatientKey>, StorageError> {
        let mut out = Vec::new();
        for item in self.fhir.scan_prefix(b"d\0") {
            let (k, _) = item?;
            if let Ok(bytes) = <[u8; 32]>::try_from(&k[2..]) {
                out.push(PatientKey(bytes));
            }
        }
        Ok(out)
    }

    /// Persists one of this node's own signed batches (durable before it is published) and
    /// clears the dirty marks it settles: `covered` holds each patient and the time its
    /// entry in the batch was computed.
    pub async fn append_own_batch(
        &self,
        sequence: u64,
        bytes: &[u8],
        covered: &[(PatientKey, u64)],
    ) -> Result<(), StorageError> {
        self.own_log.insert(&sequence.to_be_bytes(), bytes)?;
        self.engine.flush_async().await?;
        // Clear a patient's mark only if it is older than the entry the batch carries: a
        // write after the entry was computed keeps its mark, so a crash before the next
        // batch re-stages it at start. Compare-and-swap keeps a concurrent write's mark.
        for (key, entry_time) in covered {
            let dirty = dirty_key(key);
            self.fhir.remove_unless(&dirty, |mark| {
                let written = <[u8; 8]>::try_from(mark)
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                written >= *entry_time
            })?;
        }
        Ok(())
    }

    /// This node's own batches, in sequence order.
    pub fn own_batches(&self) -> impl Iterator<Item = Result<Vec<u8>, StorageError>> + '_ {
        self.own_log.iter().map(|item| item.map(|(_, v)| v))
    }

    /// Persists an accepted gossip message of another publisher.
    pub fn append_remote(
        &self,
        publisher: &[u8; 32],
        sequence: u64,
        message: &[u8],
    ) -> Result<(), StorageError> {
        let key = [&publisher[..], &sequence.to_be_bytes()].concat();
        self.remote_log.insert(&key, message)?;
        Ok(())
    }

    /// Up to `limit` of this node's own batches from sequence `from` on, in order.
    pub fn own_range(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out = Vec::new();
        for item in self.own_log.range(from.to_be_bytes()..).take(limit) {
            out.push(item?.1);
        }
        Ok(out)
    }

    /// Up to `limit` accepted gossip messages of `publisher` from sequence `from` on.
    pub fn remote_range(
        &self,
        publisher: &[u8; 32],
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let start = [&publisher[..], &from.to_be_bytes()].concat();
        let end = [&publisher[..], &u64::MAX.to_be_bytes()].concat();
        let mut out = Vec::new();
        for item in self.remote_log.range(start..end).take(limit) {
            out.push(item?.1);
        }
        Ok(out)
    }

    /// The highest sequence of `publisher`'s log this store can serve: its last kept batch,
    /// or the sequence of its kept snapshot (0: nothing). For this node's own log when
    /// `publisher` is `None`.
    pub fn log_coverage(&self, publisher: Option<&[u8; 32]>) -> Result<u64, StorageError> {
        let (last_batch, snapshot) = match publisher {
            None => (
                self.own_log
                    .iter()
                    .next_back()
                    .transpose()?
                    .and_then(|(k, _)| <[u8; 8]>::try_from(&k[..]).ok())
                    .map(u64::from_be_bytes),
                self.own_snapshot.iter().next().transpose()?.map(|(_, v)| v),
            ),
            Some(publisher) => {
                let start = [&publisher[..], &0u64.to_be_bytes()].concat();
                // The publisher's newest record is kept under sequence u64::MAX.
                let end = [&publisher[..], &u64::MAX.to_be_bytes()].concat();
                let last = self
                    .remote_log
                    .range(start..end)
                    .next_back()
                    .transpose()?
                    .and_then(|(k, _)| <[u8; 8]>::try_from(&k[32..]).ok())
                    .map(u64::from_be_bytes);
                let first_chunk = [&publisher[..], b"s", &0u32.to_be_bytes()].concat();
                (last, self.remote_snapshots.get(&first_chunk)?)
            }
        };
        let snapshot_sequence = match snapshot {
            Some(bytes) => {
                zorgmesh_protocol::snapshot::SignedSnapshotChunk::from_bytes(&bytes)
                    .map_err(|e| StorageError::Corrupt {
                        key: "snapshot".into(),
                        message: format!("a kept snapshot cannot be read: {e}"),
                    })?
                    .body
                    .sequence
            }
            None => 0,
        };
        Ok(last_batch.unwrap_or(0).max(snapshot_sequence))
    }

    /// Every accepted gossip message, by publisher then sequence.
    pub fn remote_messages(&self) -> impl Iterator<Item = Result<Vec<u8>, StorageError>> + '_ {
        self.remote_log.iter().map(|item| item.map(|(_, v)| v))
    }

    /// Number of own batches kept (not yet compacted into the snapshot).
    pub fn own_log_len(&self) -> usize {
        self.own_log.len() as usize
    }

    /// Sequence of the oldest own batch kept.
    pub fn oldest_own_sequence(&self) -> Result<Option<u64>, StorageError> {
        Ok(self
            .own_log
            .iter()
            .next()
            .transpose()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(&k[..]).ok())
            .map(u64::from_be_bytes))
    }

    /// Replaces this node's snapshot with `chunks` (covering batches up to `upto`) and drops
    /// those batches from the log. The new snapshot is durable before any batch is dropped.
    pub async fn compact_own_log(&self, chunks: &[Vec<u8>], upto: u64) -> Result<(), StorageError> {
        let mut snapshot = BTreeMap::new();
        for item in self.own_snapshot.iter() {
            snapshot.insert(item?.0, None);
        }
        for (part, bytes) in chunks.iter().enumerate() {
            snapshot.insert((part as u32).to_be_bytes().to_vec(), Some(bytes.clone()));
        }
        self.own_snapshot.apply(snapshot)?;
        self.engine.flush_async().await?;
        let mut prune = Vec::new();
        for item in self.own_log.range(..=upto.to_be_bytes()) {
            prune.push((item?.0, None));
        }
        self.own_log.apply(prune)?;
        self.engine.flush_async().await?;
        Ok(())
    }

    /// This node's snapshot chunks, in part order (empty when it never compacted).
    pub fn own_snapshot(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        self.own_snapshot.iter().map(|i| Ok(i?.1)).collect()
    }

    /// Stores another publisher's snapshot (with its record, an encoded gossip announce)
    /// and drops the stored batches it covers.
    pub fn store_remote_snapshot(
        &self,
        publisher: &[u8; 32],
        record: &[u8],
        chunks: &[Vec<u8>],
        upto: u64,
    ) -> Result<(), StorageError> {
        let mut snapshot = BTreeMap::new();
        for key in self.remote_snapshots.keys_with_prefix(publisher) {
            snapshot.insert(key?, None);
        }
        snapshot.insert([&publisher[..], b"r"].concat(), Some(record.to_vec()));
        for (part, bytes) in chunks.iter().enumerate() {
            snapshot.insert(
                [&publisher[..], b"s", &(part as u32).to_be_bytes()].concat(),
                Some(bytes.clone()),
            );
        }
        self.remote_snapshots.apply(snapshot)?;
        let mut prune = Vec::new();
        let start = [&publisher[..], &0u64.to_be_bytes()].concat();
        let end = [&publisher[..], &upto.to_be_bytes()].concat();
        for item in self.remote_log.range(start..=end) {
            prune.push((item?.0, None));
        }
        self.remote_log.apply(prune)?;
        Ok(())
    }

    /// Every stored remote snapshot: `(record, chunks)` per publisher.
    pub fn remote_snapshots(&self) -> Result<Vec<StoredSnapshot>, StorageError> {
        let mut out: Vec<StoredSnapshot> = Vec::new();
        let mut current: Option<[u8; 32]> = None;
        for item in self.remote_snapshots.iter() {
            let (key, value) = item?;
            let Ok(publisher) = <[u8; 32]>::try_from(&key[..32.min(key.len())]) else {
                continue;
            };
            if current != Some(publisher) {
                current = Some(publisher);
                out.push((Vec::new(), Vec::new()));
            }
            let last = out.last_mut().expect("pushed above");
            match key.get(32) {
                Some(b'r') => last.0 = value,
                Some(b's') => last.1.push(value),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Sequence of the oldest stored batch of a remote publisher.
    pub fn oldest_remote_sequence(
        &self,
        publisher: &[u8; 32],
    ) -> Result<Option<u64>, StorageError> {
        let start = [&publisher[..], &0u64.to_be_bytes()].concat();
        let end = [&publisher[..], &u64::MAX.to_be_bytes()].concat();
        Ok(self
            .remote_log
            .range(start..end)
            .next()
            .transpose()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(&k[32..]).ok())
            .map(u64::from_be_bytes))
    }

    /// A remote publisher's stored snapshot `(record, chunks)`, if any.
    pub fn remote_snapshot(
        &self,
        publisher: &[u8; 32],
    ) -> Result<Option<StoredSnapshot>, StorageError> {
        let mut record = None;
        let mut chunks = Vec::new();
        for item in self.remote_snapshots.scan_prefix(publisher) {
            let (key, value) = item?;
            match key.get(32) {
                Some(b'r') => record = Some(value),
                Some(b's') => chunks.push(value),
                _ => {}
            }
        }
        Ok(record.map(|r| (r, chunks)))
    }

    /// The stored accepted gossip message of `publisher` at `sequence`, if still kept.
    pub fn remote_message_at(
        &self,
        publisher: &[u8; 32],
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let key = [&publisher[..], &sequence.to_be_bytes()].concat();
        self.remote_log.get(&key)
    }

    /// This node's own batch at `sequence`, if still kept (not compacted).
    pub fn own_batch_at(&self, sequence: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.own_log.get(&sequence.to_be_bytes())
    }

    /// Drops everything kept of a revoked publisher: its batches, its announcement and its
    /// snapshot.
    pub fn forget_publisher(&self, publisher: &[u8; 32]) -> Result<(), StorageError> {
        let log: Vec<_> = self
            .remote_log
            .keys_with_prefix(publisher)
            .map(|key| key.map(|key| (key, None)))
            .collect::<Result<_, _>>()?;
        self.remote_log.apply(log)?;
        let snapshots: Vec<_> = self
            .remote_snapshots
            .keys_with_prefix(publisher)
            .map(|key| key.map(|key| (key, None)))
            .collect::<Result<_, _>>()?;
        self.remote_snapshots.apply(snapshots)?;
        Ok(())
    }

    /// Durably keeps the newest revocation list (encoded), replacing the one held.
    pub fn store_revocations(&self, list: &[u8]) -> Result<(), StorageError> {
        self.trust.insert(b"revocations", list)?;
        self.engine.flush()?;
        Ok(())
    }

    /// The revocation list kept, if any (encoded).
    pub fn revocations(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.trust.get(b"revocations")
    }

    /// Keeps this node's hand-over chain (encoded `Vec<SignedHandOver>`) durably: from
    /// the moment it is kept, the node signs with the new key.
    pub fn store_own_handovers(&self, chain: &[u8]) -> Result<(), StorageError> {
        self.trust.insert(b"own-handovers", chain)?;
        self.engine.flush()?;
        Ok(())
    }

    /// This node's kept hand-over chain.
    pub fn own_handovers(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.trust.get(b"own-handovers")
    }

    /// Flushes everything to disk.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.engine.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index_ids(storage: &Storage, prefix: &[u8]) -> Vec<String> {
        storage
            .index_prefix(prefix)
            .map(|item| {
                search_index::id_of_key(&item.unwrap().0)
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_search_index_follows_each_version_and_is_rebuilt_for_an_older_store() {
        let dir = tempfile::tempdir().unwrap();
        let active = [
            search_index::parameter_prefix("MedicationRequest", "status"),
            b"tactive\0".to_vec(),
        ]
        .concat();
        let stopped = [
            search_index::parameter_prefix("MedicationRequest", "status"),
            b"tstopped\0".to_vec(),
        ]
        .concat();
        {
            let storage = Storage::open(dir.path()).unwrap();
            let request = |status: &str| {
                json!({"resourceType": "MedicationRequest", "id": "m1", "status": status,
                    "intent": "order", "subject": {"reference": "Patient/p"}})
            };
            storage
                .write(1, |tx| tx.put("MedicationRequest", "m1", request("active")))
                .await
                .unwrap();
            assert_eq!(index_ids(&storage, &active), vec!["m1"]);
            storage
                .write(2, |tx| {
                    tx.put("MedicationRequest", "m1", request("stopped"))
                })
                .await
                .unwrap();
            assert!(
                index_ids(&storage, &active).is_empty(),
                "the old value stays"
            );
            assert_eq!(index_ids(&storage, &stopped), vec!["m1"]);
            storage
                .write(3, |tx| tx.delete("MedicationRequest", "m1"))
                .await
                .unwrap();
            assert!(index_ids(&storage, search_index::INDEX_PREFIX).is_empty());
            storage
                .write(4, |tx| {
                    tx.put("MedicationRequest", "m2", {
                        let mut r = request("active");
                        r["id"] = json!("m2");
                        r
                    })
                })
                .await
                .unwrap();
            // A store from before the index (or of an older index version): no version record
            // and no entries.
            let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = storage
                .fhir
                .keys_with_prefix(search_index::INDEX_PREFIX)
                .map(|k| (k.unwrap(), None))
                .chain([(search_index::VERSION_KEY.to_vec(), None)])
                .collect();
            storage.fhir.apply(entries).unwrap();
            assert!(index_ids(&storage, &active).is_empty());
        }
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(index_ids(&storage, &active), vec!["m2"], "rebuilt on open");
        assert_eq!(
            storage.fhir.get(search_index::VERSION_KEY).unwrap(),
            Some(search_index::INDEX_VERSION.to_be_bytes().to_vec())
        );
    }

    /// Index records are written without reading them first (their previous state is
    /// vouched for from the values record): after creates, changes, several versions in one
    /// transaction and deletes, a full check still finds every tree's digest and count right.
    #[tokio::test]
    async fn index_writes_that_skip_their_reads_keep_every_digest_right() {
        for kind in [EngineKind::Sled, EngineKind::Redb, EngineKind::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let observation = |id: &str, code: &str, patient: &str| {
                json!({"resourceType": "Observation", "id": id, "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": format!("Patient/{patient}")},
                    "effectiveDateTime": "2021-03-04"})
            };
            {
                let storage = Storage::open_with(dir.path(), kind).unwrap();
                storage
                    .write(1, |tx| {
                        tx.put("Observation", "o1", observation("o1", "1-1", "p1"))?;
                        tx.put("Observation", "o2", observation("o2", "2-2", "p1"))
                    })
                    .await
                    .unwrap();
                storage
                    .write(2, |tx| {
                        // Two versions in one write, the second moving to another patient.
                        tx.put("Observation", "o1", observation("o1", "3-3", "p1"))?;
                        tx.put("Observation", "o1", observation("o1", "4-4", "p2"))?;
                        tx.delete("Observation", "o2")?;
                        tx.put("Observation", "o3", observation("o3", "1-1", "p2"))
                    })
                    .await
                    .unwrap();
                storage
                    .write(3, |tx| {
                        tx.put("Observation", "o2", observation("o2", "2-2", "p3"))?;
                        tx.delete("Observation", "o1")
                    })
                    .await
                    .unwrap();
                let code = |value: &str| {
                    [
                        search_index::parameter_prefix("Observation", "code"),
                        format!("t{value}\0").into_bytes(),
                    ]
                    .concat()
                };
                assert!(index_ids(&storage, &code("4-4")).is_empty());
                assert_eq!(index_ids(&storage, &code("1-1")), vec!["o3"]);
                assert_eq!(index_ids(&storage, &code("2-2")), vec!["o2"]);
                storage.flush().await.unwrap();
            }
            let report = Storage::check(dir.path()).unwrap();
            assert!(!report.is_damaged(), "{kind}: {:?}", report.trees);
        }
    }

    #[tokio::test]
    async fn a_batch_clears_only_dirty_marks_older_than_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let patient = json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": zorgmesh_protocol::patient::BSN_SYSTEM, "value": "999911120"}]});
        let ((), dirty) = storage
            .write(900, |tx| {
                tx.put("Patient", "p", patient.clone()).map(|_| ())
            })
            .await
            .unwrap();
        assert!(
            dirty.is_empty(),
            "without a key the Patient is not yet dirty"
        );
        let waiting = storage.pending_patient_keys(10).unwrap();
        assert_eq!(waiting.len(), 1);
        let bsn = waiting[0].1.clone();
        let keys = BTreeMap::from([(bsn.clone(), PatientKey([3; 32]))]);
        let dirty = storage
            .assign_patient_keys(1_000, &waiting, &keys)
            .await
            .unwrap();
        assert!(storage.pending_patient_keys(10).unwrap().is_empty());
        assert_eq!(
            storage.cached_patient_key(&bsn).unwrap(),
            Some(PatientKey([3; 32]))
        );
        // A second Patient with the same BSN takes the cached key at once.
        let ((), again) = storage
            .write(1_000, |tx| {
                let mut other = patient.clone();
                other["id"] = json!("p2");
                tx.put("Patient", "p2", other).map(|_| ())
            })
            .await
            .unwrap();
        assert_eq!(
            again.iter().copied().collect::<Vec<_>>(),
            vec![PatientKey([3; 32])]
        );
        let key = *dirty
            .iter()
            .next()
            .expect("the Patient with a BSN is dirty");
        // An entry computed before the write (older) leaves the mark ...
        storage
            .append_own_batch(1, b"batch-1", &[(key, 999)])
            .await
            .unwrap();
        assert_eq!(storage.dirty_patient_keys().unwrap(), vec![key]);
        // ... one computed after it clears it.
        storage
            .append_own_batch(2, b"batch-2", &[(key, 1_001)])
            .await
            .unwrap();
        assert!(storage.dirty_patient_keys().unwrap().is_empty());
    }

    #[test]
    fn a_store_written_before_checksums_is_upgraded_once_and_then_sealed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let record = VersionRecord {
                version: 1,
                last_updated_ms: 5,
                deleted: false,
                resource: Some(json!({"resourceType": "Patient", "id": "old"})),
            };
            db.open_tree("fhir")
                .unwrap()
                .insert(
                    resource_key("Patient", "old"),
                    serde_json::to_vec(&record).unwrap(),
                )
                .unwrap();
            db.flush().unwrap();
        }
        let report = Storage::check(dir.path()).unwrap();
        assert!(report.unsealed && !report.is_damaged(), "{report}");
        {
            let storage = Storage::open(dir.path()).unwrap();
            assert_eq!(
                storage.read("Patient", "old").unwrap().unwrap()["id"],
                "old"
            );
        }
        let report = Storage::check(dir.path()).unwrap();
        assert!(!report.unsealed && !report.is_damaged(), "{report}");
        assert!(dir.path().join(seal::SEAL_FILE).exists());
    }

    #[test]
    fn a_crash_during_the_first_open_leaves_a_store_that_opens() {
        let dir = tempfile::tempdir().unwrap();
        drop(Storage::open(dir.path()).unwrap());
        // As if the process died after the first writes, before the seal that follows them.
        let zero: seal::Seal = check::TREE_NAMES
            .iter()
            .map(|name| (name.to_string(), TreeState::default()))
            .collect();
        seal::write_seal(dir.path(), &zero).unwrap();
        let report = Storage::check(dir.path()).unwrap();
        assert!(!report.is_damaged(), "{report}");
        drop(Storage::open(dir.path()).unwrap());
    }

    #[test]
    fn compartment_follows_subject_patient_and_beneficiary() {
        let cases = [
            (json!({"subject": {"reference": "Patient/a"}}), Some("a")),
            (json!({"patient": {"reference": "Patient/b"}}), Some("b")),
            (
                json!({"beneficiary": {"reference": "Patient/c/_history/2"}}),
                Some("c"),
            ),
            (
                json!({"subject": {"reference": "Group/g"}, "patient": {"reference": "Patient/d"}}),
                Some("d"),
            ),
            (json!({"performer": [{"reference": "Patient/e"}]}), None),
        ];
        for (resource, expected) in cases {
            assert_eq!(
                compartment_patient("Observation", "x", &resource).as_deref(),
                expected,
                "{resource}"
            );
        }
        assert_eq!(
            compartment_patient("Patient", "p", &json!({})).as_deref(),
            Some("p")
        );
    }
}
