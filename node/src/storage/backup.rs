//! Backups: a consistent copy of a store in one file, and its restore into a new data
//! directory.
//!
//! **Consistency.** A backup holds every tree's writers off (in a fixed order) while it
//! reads, so it is one cut of the whole store: writes wait, reads go on. It writes a
//! temporary file beside the target, fsyncs it and renames it into place, so a backup file
//! is complete or absent.
//!
//! **Format** (version 1): the 8 bytes `ZMBACKUP`, a `u32` LE version, then frames of
//! `[tag u8][length u32 LE][body]`:
//!
//! | tag | body |
//! |---|---|
//! | 1 | header: JSON `{"created_ms": …, "trees": 7}` |
//! | 2 | a tree begins: its name (UTF-8) |
//! | 3 | a record: key length (`u32` LE), key, payload |
//! | 4 | the tree ends: records (`u64` LE), digest (`u64` LE, as in `sealed_tree.rs`) |
//! | 5 | the end: XXH3-64 (`u64` LE) of every byte before this frame |
//!
//! A restore recomputes every record's checksum into the tree's digest and compares it and
//! the count with frame 4, and the whole file with frame 5: a damaged or cut backup is
//! refused, and nothing is left in the target directory.

use super::check::TREE_NAMES;
use super::{Storage, StorageError};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"ZMBACKUP";
const VERSION: u32 = 1;
const TAG_HEADER: u8 = 1;
const TAG_TREE: u8 = 2;
const TAG_RECORD: u8 = 3;
const TAG_TREE_END: u8 = 4;
const TAG_END: u8 = 5;
/// No frame is larger (a record holds at most one FHIR resource version or one snapshot
/// chunk, both far smaller).
const MAX_FRAME_BYTES: u32 = 256 * 1024 * 1024;
/// Records restored per atomic write.
const RESTORE_BATCH: usize = 4096;

/// What a backup or a restore handled.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BackupSummary {
    /// Records copied.
    pub records: u64,
    /// Bytes of the backup file.
    pub bytes: u64,
    /// How long writers were held off (backup) or the restore took, in ms.
    pub elapsed_ms: u64,
    /// The store's content digest (as `zorgmesh node check` prints it).
    pub content_digest: String,
}

/// Why a backup could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup file cannot be read.
    #[error("cannot read the backup {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a zorgmesh backup, or it is damaged or cut short.
    #[error("{path} is not a sound zorgmesh backup: {message}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The target directory already holds something.
    #[error("{0} is not empty: restore into a new directory (move the damaged store aside first)")]
    TargetNotEmpty(String),
    /// The new store could not be written.
    #[error("cannot write the restored store: {0}")]
    Storage(#[from] StorageError),
    /// The target directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Target {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Xxh3,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn frame(&mut self, tag: u8, body: &[&[u8]]) -> std::io::Result<()> {
        let length: usize = body.iter().map(|part| part.len()).sum();
        self.put(&[tag])?;
        self.put(&(length as u32).to_le_bytes())?;
        for part in body {
            self.put(part)?;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

impl Storage {
    /// Writes a consistent backup of the whole store to `out` (a new file, owner-only).
    /// Blocks on disk I/O; the store's writers wait until the copy is complete.
    pub fn backup_to(&self, out: &Path, now_ms: u64) -> Result<BackupSummary, StorageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = StorageError::Backup;
        let temporary = out.with_extension("partial");
        let file = std::fs::OpenOptions::new()
            .mode(0o600)
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(|e| io(format!("cannot create {}: {e}", temporary.display())))?;
        let result = self.write_backup(file, now_ms);
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(e);
            }
        };
        std::fs::rename(&temporary, out)
            .map_err(|e| io(format!("cannot move the backup to {}: {e}", out.display())))?;
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(summary)
    }

    fn write_backup(
        &self,
        file: std::fs::File,
        now_ms: u64,
    ) -> Result<BackupSummary, StorageError> {
        let io = |e: std::io::Error| StorageError::Backup(format!("cannot write the backup: {e}"));
        let started = std::time::Instant::now();
        let mut out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Xxh3::new(),
            bytes: 0,
        };
        out.put(MAGIC).map_err(io)?;
        out.put(&VERSION.to_le_bytes()).map_err(io)?;
        let header = serde_json::json!({"created_ms": now_ms, "trees": TREE_NAMES.len()});
        out.frame(TAG_HEADER, &[header.to_string().as_bytes()])
            .map_err(io)?;
        // One cut of the whole store: every tree's writers wait from here until the end.
        let trees = self.trees();
        let held: Vec<_> = trees.iter().map(|tree| tree.hold_writers()).collect();
        let mut records = 0u64;
        let mut states = Vec::new();
        for (tree, state) in trees.iter().zip(&held) {
            out.frame(TAG_TREE, &[tree.name().as_bytes()]).map_err(io)?;
            for item in tree.iter() {
                let (key, payload) = item?;
                out.frame(
                    TAG_RECORD,
                    &[&(key.len() as u32).to_le_bytes(), &key, &payload],
                )
                .map_err(io)?;
                records += 1;
            }
            out.frame(
                TAG_TREE_END,
                &[&state.records.to_le_bytes(), &state.digest.to_le_bytes()],
            )
            .map_err(io)?;
            states.push((tree.name(), **state));
        }
        drop(held);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let whole = out.hasher.digest();
        out.frame(TAG_END, &[&whole.to_le_bytes()]).map_err(io)?;
        let bytes = out.bytes;
        let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(BackupSummary {
            records,
            bytes,
            elapsed_ms,
            content_digest: super::check::content_digest_of(&states),
        })
    }

    /// Restores a backup into `dir`, which must be absent or empty, as a store of `engine`
    /// (a backup is engine-neutral: backup and restore move a store to another engine). The
    /// store is built in a temporary directory beside `dir` and moved into place only when
    /// every tree matched its count and digest, so a failed restore leaves nothing behind.
    pub fn restore(
        from: &Path,
        dir: &Path,
        engine: super::EngineKind,
    ) -> Result<BackupSummary, RestoreError> {
        let started = std::time::Instant::now();
        if let Ok(mut entries) = std::fs::read_dir(dir) {
            if entries.next().is_some() {
                return Err(RestoreError::TargetNotEmpty(dir.display().to_string()));
            }
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".into());
        let building = dir.with_file_name(format!(".{name}.restoring"));
        let target = |source| RestoreError::Target {
            path: building.display().to_string(),
            source,
        };
        if building.exists() {
            std::fs::remove_dir_all(&building).map_err(target)?;
        }
        crate::at_rest::secure_data_dir(&building).map_err(|e| RestoreError::Target {
            path: building.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let result = (|| {
            let storage = Storage::open_with(&building, engine)?;
            let summary = read_backup(from, &storage)?;
            storage.seal()?;
            drop(storage);
            Ok::<_, RestoreError>(summary)
        })();
        let mut summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&building);
                return Err(e);
            }
        };
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|source| RestoreError::Target {
                path: dir.display().to_string(),
                source,
            })?;
        }
        std::fs::rename(&building, dir).map_err(|source| RestoreError::Target {
            path: dir.display().to_string(),
            source,
        })?;
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(summary)
    }
}

/// Reads a backup into a new, empty store.
fn read_backup(from: &Path, storage: &Storage) -> Result<BackupSummary, RestoreError> {
    let path = from.display().to_string();
    let damaged = |message: String| RestoreError::Damaged {
        path: path.clone(),
        message,
    };
    let file = std::fs::File::open(from).map_err(|source| RestoreError::Read {
        path: path.clone(),
        source,
    })?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Xxh3::new();
    let mut read = |buffer: &mut [u8], hasher: &mut Xxh3| -> Result<(), RestoreError> {
        input.read_exact(buffer).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                damaged("it ends early (cut short?)".into())
            } else {
                RestoreError::Read {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        hasher.update(buffer);
        Ok(())
    };
    let mut head = [0u8; 12];
    read(&mut head, &mut hasher)?;
    if &head[..8] != MAGIC {
        return Err(damaged("it does not start with ZMBACKUP".into()));
    }
    let version = u32::from_le_bytes(head[8..].try_into().unwrap());
    if version != VERSION {
        return Err(damaged(format!(
            "format version {version}; this zorgmesh reads version {VERSION}"
        )));
    }
    let trees: BTreeMap<&str, &super::SealedTree> = storage
        .trees()
        .into_iter()
        .map(|tree| (tree.name(), tree))
        .collect();
    let mut current: Option<&super::SealedTree> = None;
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut restored: Vec<(&'static str, super::TreeState)> = Vec::new();
    let mut records = 0u64;
    let mut seen_header = false;
    loop {
        let before = hasher.digest();
        let mut frame = [0u8; 5];
        read(&mut frame, &mut hasher)?;
        let (tag, length) = (frame[0], u32::from_le_bytes(frame[1..].try_into().unwrap()));
        if length > MAX_FRAME_BYTES {
            return Err(damaged(format!("a frame of {length} bytes")));
        }
        let mut body = vec![0u8; length as usize];
        read(&mut body, &mut hasher)?;
        match tag {
            TAG_HEADER if !seen_header => seen_header = true,
            TAG_TREE if seen_header && current.is_none() => {
                let name = std::str::from_utf8(&body).unwrap_or("?");
                current = Some(
                    *trees
                        .get(name)
                        .ok_or_else(|| damaged(format!("unknown tree {name:?}")))?,
                );
            }
            TAG_RECORD if current.is_some() => {
                if body.len() < 4 {
                    return Err(damaged("a record frame too short".into()));
                }
                let key_length = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
                if key_length == 0 || key_length > body.len() - 4 {
                    return Err(damaged("a record with a bad key length".into()));
                }
                let payload = body.split_off(4 + key_length);
                let key = body[4..].to_vec();
                pending.push((key, Some(payload)));
                records += 1;
                if pending.len() >= RESTORE_BATCH {
                    current
                        .expect("checked above")
                        .apply(std::mem::take(&mut pending))?;
                }
            }
            TAG_TREE_END if current.is_some() && body.len() == 16 => {
                let tree = current.take().expect("checked above");
                tree.apply(std::mem::take(&mut pending))?;
                let expected_records = u64::from_le_bytes(body[..8].try_into().unwrap());
                let expected_digest = u64::from_le_bytes(body[8..].try_into().unwrap());
                let state = tree.state();
                if state.records != expected_records || state.digest != expected_digest {
                    return Err(damaged(format!(
                        "tree {} restored {} records that do not match the {} it should hold",
                        tree.name(),
                        state.records,
                        expected_records
                    )));
                }
                restored.push((tree.name(), state));
            }
            TAG_END if current.is_none() && body.len() == 8 => {
                if u64::from_le_bytes(body[..].try_into().unwrap()) != before {
                    return Err(damaged("its checksum does not match its content".into()));
                }
                if restored.len() != TREE_NAMES.len() {
                    return Err(damaged(format!(
                        "it holds {} of the {} trees",
                        restored.len(),
                        TREE_NAMES.len()
                    )));
                }
                break;
            }
            _ => return Err(damaged(format!("an unexpected frame (tag {tag})"))),
        }
    }
    Ok(BackupSummary {
        records,
        bytes,
        elapsed_ms: 0,
        content_digest: super::check::content_digest_of(&restored),
    })
}

/// Why an online backup was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BackupRefused {
    /// Another backup is running.
    #[error("a backup is being taken already")]
    Busy,
    /// The backup directory cannot be prepared.
    #[error("cannot prepare the backup directory {path}: {message}")]
    Directory {
        /// The directory.
        path: String,
        /// Why.
        message: String,
    },
    /// The store could not be copied.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A backup taken by a running node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TakenBackup {
    /// The backup file.
    pub path: String,
    /// What it holds.
    #[serde(flatten)]
    pub summary: BackupSummary,
}

/// Takes online backups of a running node's store, one at a time, into its backup
/// directory, named `<node>-<UTC time>.zmbackup`.
pub struct BackupTaker {
    storage: std::sync::Arc<Storage>,
    dir: std::path::PathBuf,
    node: String,
    running: tokio::sync::Mutex<()>,
}

impl BackupTaker {
    /// A taker for `storage` that writes into `dir`.
    pub fn new(storage: std::sync::Arc<Storage>, dir: std::path::PathBuf, node: String) -> Self {
        Self {
            storage,
            dir,
            node,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes one backup (on a blocking thread: the copy is disk I/O).
    pub async fn take(&self) -> Result<TakenBackup, BackupRefused> {
        let Ok(_running) = self.running.try_lock() else {
            return Err(BackupRefused::Busy);
        };
        crate::at_rest::secure_data_dir(&self.dir).map_err(|e| BackupRefused::Directory {
            path: self.dir.display().to_string(),
            message: format!("{e:#}"),
        })?;
        let now = time::OffsetDateTime::now_utc();
        let stamp = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        );
        let path = self.dir.join(format!("{}-{stamp}.zmbackup", self.node));
        let storage = self.storage.clone();
        let target = path.clone();
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as u64;
        let summary = tokio::task::spawn_blocking(move || storage.backup_to(&target, now_ms))
            .await
            .map_err(|e| StorageError::Backup(format!("the backup task failed: {e}")))??;
        tracing::info!(
            path = %path.display(),
            records = summary.records,
            bytes = summary.bytes,
            writers_held_ms = summary.elapsed_ms,
            "backup taken"
        );
        Ok(TakenBackup {
            path: path.display().to_string(),
            summary,
        })
    }
}
