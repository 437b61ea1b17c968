//! The embedded storage engines behind the store: sled 0.34 (the default so far), redb 2
//! (a single file, maintained, copy-on-write B-trees) and fjall 3 (a maintained LSM tree:
//! many small writes, such as search index entries, are cheap). Only `sealed_tree.rs` uses
//! these types; everything above sees checksummed trees.
//!
//! Both engines get the same use: atomic multi-key writes to one tree that need not be
//! durable at once, and a flush that makes every earlier write durable (a write is
//! acknowledged after it). sled: `apply_batch` and `flush`. redb: a commit with durability
//! `None` per write and an empty commit with durability `Immediate` per flush. fjall: a
//! write batch per write (atomic, in its journal) and `persist(SyncAll)` per flush.

use super::StorageError;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// Which engine a store uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// sled 0.34: a log-structured engine in a directory of files.
    #[default]
    Sled,
    /// redb 2: one file of copy-on-write B-trees.
    Redb,
    /// fjall 3: a log-structured merge tree in a directory of files.
    Fjall,
}

impl EngineKind {
    /// The engine of the store in `dir`, if there is one.
    pub fn of_store(dir: &Path) -> Option<Self> {
        if dir.join(REDB_FILE).exists() {
            Some(Self::Redb)
        } else if dir.join(FJALL_DIR).exists() {
            Some(Self::Fjall)
        } else if dir.join("db").exists() {
            Some(Self::Sled)
        } else {
            None
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sled => "sled",
            Self::Redb => "redb",
            Self::Fjall => "fjall",
        })
    }
}

/// redb's file inside the data directory.
pub const REDB_FILE: &str = "zorgmesh.redb";
/// fjall's directory inside the data directory.
pub const FJALL_DIR: &str = "fjall";

type RedbTable = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;

/// An open engine.
#[derive(Clone)]
pub enum Engine {
    /// sled.
    Sled(sled::Db),
    /// redb.
    Redb(Arc<redb::Database>),
    /// fjall.
    Fjall(fjall::Database),
}

/// One tree (sled) or table (redb) of an engine.
pub enum EngineTree {
    /// A sled tree.
    Sled(sled::Tree),
    /// A redb table.
    Redb {
        /// The database.
        db: Arc<redb::Database>,
        /// The table.
        table: RedbTable,
    },
    /// A fjall keyspace, with its database (for atomic batches).
    Fjall {
        /// The database.
        db: fjall::Database,
        /// The keyspace.
        keyspace: fjall::Keyspace,
    },
}

/// A key-value pair read from an engine.
pub type Pair = (Vec<u8>, Vec<u8>);
/// What engine iterators yield.
pub type PairResult = Result<Pair, StorageError>;

fn redb_error(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Engine(e.into().to_string())
}

fn fjall_error(e: fjall::Error) -> StorageError {
    StorageError::Engine(e.to_string())
}

/// fjall refuses an empty key (a tree's state record has one): every key is stored after
/// one zero byte, which keeps their order.
fn fjall_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(0);
    stored.extend_from_slice(key);
    stored
}

fn fjall_bound(bound: Bound<&[u8]>, start: bool) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(fjall_key(k)),
        Bound::Excluded(k) => Bound::Excluded(fjall_key(k)),
        Bound::Unbounded if start => Bound::Included(vec![0]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// How long an open waits for sled's file lock: sled lets go of it from a background
/// thread shortly after the last handle drops, so a store this process just closed (a check
/// before a start) can still be locked for a moment. Another process's lock outlasts it.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Engine {
    /// Opens (or creates) the engine's store in `dir`. `Err` carries whether the store is
    /// in use by another process.
    pub fn open(dir: &Path, kind: EngineKind) -> Result<Self, OpenFailure> {
        match kind {
            EngineKind::Sled => match open_sled(dir) {
                Ok(db) => Ok(Self::Sled(db)),
                Err(sled::Error::Io(e)) if e.to_string().contains("lock") => {
                    Err(OpenFailure::InUse(e.to_string()))
                }
                Err(sled::Error::Io(e)) => Err(OpenFailure::Io(e.to_string())),
                Err(e) => Err(OpenFailure::Damaged(e.to_string())),
            },
            EngineKind::Redb => {
                std::fs::create_dir_all(dir).map_err(|e| OpenFailure::Io(e.to_string()))?;
                match redb::Database::create(dir.join(REDB_FILE)) {
                    Ok(db) => Ok(Self::Redb(Arc::new(db))),
                    Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                        Err(OpenFailure::InUse("the database is already open".into()))
                    }
                    Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) => {
                        Err(OpenFailure::Io(e.to_string()))
                    }
                    Err(e) => Err(OpenFailure::Damaged(e.to_string())),
                }
            }
            EngineKind::Fjall => match fjall::Database::builder(dir.join(FJALL_DIR)).open() {
                Ok(db) => Ok(Self::Fjall(db)),
                Err(fjall::Error::Locked) => {
                    Err(OpenFailure::InUse("the database is locked".into()))
                }
                Err(fjall::Error::Io(e)) => Err(OpenFailure::Io(e.to_string())),
                Err(e) => Err(OpenFailure::Damaged(e.to_string())),
            },
        }
    }

    /// The engine's kind.
    pub fn kind(&self) -> EngineKind {
        match self {
            Self::Sled(_) => EngineKind::Sled,
            Self::Redb(_) => EngineKind::Redb,
            Self::Fjall(_) => EngineKind::Fjall,
        }
    }

    /// Opens (or creates) a tree.
    pub fn open_tree(&self, name: &'static str) -> Result<EngineTree, StorageError> {
        match self {
            Self::Sled(db) => Ok(EngineTree::Sled(db.open_tree(name)?)),
            Self::Redb(db) => {
                let table = RedbTable::new(name);
                let exists = db
                    .begin_read()
                    .map_err(redb_error)?
                    .open_table(table)
                    .is_ok();
                if !exists {
                    let tx = db.begin_write().map_err(redb_error)?;
                    tx.open_table(table).map_err(redb_error)?;
                    tx.commit().map_err(redb_error)?;
                }
                Ok(EngineTree::Redb {
                    db: db.clone(),
                    table,
                })
            }
            Self::Fjall(db) => Ok(EngineTree::Fjall {
                db: db.clone(),
                keyspace: db
                    .keyspace(name, fjall::KeyspaceCreateOptions::default)
                    .map_err(fjall_error)?,
            }),
        }
    }

    /// Makes every earlier write durable. Blocks on disk I/O.
    pub fn flush(&self) -> Result<(), StorageError> {
        match self {
            Self::Sled(db) => {
                db.flush()?;
            }
            Self::Redb(db) => {
                let mut tx = db.begin_write().map_err(redb_error)?;
                tx.set_durability(redb::Durability::Immediate);
                tx.commit().map_err(redb_error)?;
            }
            Self::Fjall(db) => db
                .persist(fjall::PersistMode::SyncAll)
                .map_err(fjall_error)?,
        }
        Ok(())
    }

    /// [`Engine::flush`] without blocking the async runtime.
    pub async fn flush_async(&self) -> Result<(), StorageError> {
        match self {
            Self::Sled(db) => {
                db.flush_async().await?;
                Ok(())
            }
            Self::Redb(_) | Self::Fjall(_) => {
                let engine = self.clone();
                tokio::task::spawn_blocking(move || engine.flush())
                    .await
                    .map_err(|e| StorageError::Engine(format!("the flush task failed: {e}")))?
            }
        }
    }
}

/// Why an engine did not open.
#[derive(Debug)]
pub enum OpenFailure {
    /// Another process holds it.
    InUse(String),
    /// The file system refused.
    Io(String),
    /// The engine found its files damaged.
    Damaged(String),
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn owned_bound(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl EngineTree {
    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Self::Sled(tree) => Ok(tree.get(key)?.map(|v| v.to_vec())),
            Self::Redb { db, table } => {
                let read = db.begin_read().map_err(redb_error)?;
                let table = read.open_table(*table).map_err(redb_error)?;
                Ok(table
                    .get(key)
                    .map_err(redb_error)?
                    .map(|v| v.value().to_vec()))
            }
            Self::Fjall { keyspace, .. } => Ok(keyspace
                .get(fjall_key(key))
                .map_err(fjall_error)?
                .map(|v| v.to_vec())),
        }
    }

    /// Whether a key is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.get(key)?.is_some())
    }

    /// Whether the tree holds nothing.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self
            .range(Bound::Unbounded, Bound::Unbounded)
            .next()
            .is_none())
    }

    /// Applies puts and removals as one atomic write (durable at the next flush).
    pub fn apply(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StorageError> {
        match self {
            Self::Sled(tree) => {
                let mut batch = sled::Batch::default();
                for (key, value) in ops {
                    match value {
                        Some(value) => batch.insert(key, value),
                        None => batch.remove(key),
                    }
                }
                tree.apply_batch(batch)?;
            }
            Self::Redb { db, table } => {
                let mut tx = db.begin_write().map_err(redb_error)?;
                tx.set_durability(redb::Durability::None);
                {
                    let mut table = tx.open_table(*table).map_err(redb_error)?;
                    for (key, value) in &ops {
                        match value {
                            Some(value) => {
                                table
                                    .insert(key.as_slice(), value.as_slice())
                                    .map_err(redb_error)?;
                            }
                            None => {
                                table.remove(key.as_slice()).map_err(redb_error)?;
                            }
                        }
                    }
                }
                tx.commit().map_err(redb_error)?;
            }
            Self::Fjall { db, keyspace } => {
                let mut batch = db.batch();
                for (key, value) in ops {
                    match value {
                        Some(value) => batch.insert(keyspace, fjall_key(&key), value),
                        None => batch.remove(keyspace, fjall_key(&key)),
                    }
                }
                batch.commit().map_err(fjall_error)?;
            }
        }
        Ok(())
    }

    /// Pairs with keys in the range, in key order.
    pub fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Box<dyn DoubleEndedIterator<Item = PairResult> + Send + '_> {
        match self {
            Self::Sled(tree) => Box::new(
                tree.range::<Vec<u8>, _>((owned_bound(start), owned_bound(end)))
                    .map(|item| {
                        item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                            .map_err(StorageError::from)
                    }),
            ),
            Self::Redb { db, table } => {
                let opened = db
                    .begin_read()
                    .map_err(redb_error)
                    .and_then(|read| read.open_table(*table).map_err(redb_error))
                    .and_then(|table| table.range::<&[u8]>((start, end)).map_err(redb_error));
                match opened {
                    Err(e) => Box::new(std::iter::once(Err(e))),
                    Ok(range) => Box::new(range.map(|item| {
                        item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                            .map_err(redb_error)
                    })),
                }
            }
            Self::Fjall { keyspace, .. } => Box::new(
                keyspace
                    .range::<Vec<u8>, _>((fjall_bound(start, true), fjall_bound(end, false)))
                    .map(|guard| {
                        guard
                            .into_inner()
                            .map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                            .map_err(fjall_error)
                    }),
            ),
        }
    }

    /// Pairs whose keys start with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> Box<dyn DoubleEndedIterator<Item = PairResult> + Send + '_> {
        let end = prefix_end(prefix);
        self.range(
            Bound::Included(prefix),
            end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_scans_prefixes_and_ranges_alike() {
        for kind in [EngineKind::Sled, EngineKind::Redb, EngineKind::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path(), kind).unwrap();
            let tree = engine.open_tree("t").unwrap();
            assert!(tree.is_empty().unwrap());
            tree.apply(vec![
                (b"a\xff".to_vec(), Some(b"1".to_vec())),
                (b"a\xff\x00".to_vec(), Some(b"2".to_vec())),
                (b"b".to_vec(), Some(b"3".to_vec())),
                (b"c".to_vec(), Some(b"4".to_vec())),
            ])
            .unwrap();
            tree.apply(vec![(b"c".to_vec(), None)]).unwrap();
            tree.apply(vec![(Vec::new(), Some(b"state".to_vec()))])
                .unwrap();
            assert_eq!(tree.get(b"").unwrap(), Some(b"state".to_vec()), "{kind}");
            tree.apply(vec![(Vec::new(), None)]).unwrap();
            engine.flush().unwrap();
            let keys = |items: Box<dyn DoubleEndedIterator<Item = PairResult> + Send + '_>| {
                items.map(|i| i.unwrap().0).collect::<Vec<_>>()
            };
            assert_eq!(
                keys(tree.scan_prefix(b"a\xff")),
                vec![b"a\xff".to_vec(), b"a\xff\x00".to_vec()],
                "{kind}"
            );
            assert_eq!(
                keys(tree.range(Bound::Excluded(b"a\xff\x00"), Bound::Unbounded)),
                vec![b"b".to_vec()],
                "{kind}"
            );
            assert_eq!(
                tree.scan_prefix(b"").next_back().unwrap().unwrap().0,
                b"b".to_vec()
            );
            assert_eq!(tree.get(b"b").unwrap(), Some(b"3".to_vec()));
            assert!(!tree.contains_key(b"c").unwrap());
        }
    }
}
