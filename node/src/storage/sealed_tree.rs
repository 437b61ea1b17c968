//! Checksummed trees: the only code that reads or writes the engine's trees.
//!
//! Every record is stored as `[format 1][checksum u64 LE][payload]`, where the checksum is
//! XXH3-64 over the tree's name, the key and the payload; every read verifies it, so a
//! damaged record is an error naming the tree and key, never a wrong answer.
//!
//! Every tree also keeps, under the empty key and in the same atomic batch as each write,
//! its **state**: a commit counter (`generation`), the number of records and a digest (the
//! XOR of every record's checksum). A full check recomputes records and digest from the
//! records themselves, which catches records that vanished or appeared without a write; the
//! seal file (see `seal.rs`) catches an engine that went back to an older commit.

use super::engine::{Engine, EngineTree, PairResult};
use super::StorageError;
use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, RangeBounds};
use std::sync::{Mutex, MutexGuard};
use xxhash_rust::xxh3::Xxh3;

/// The record format this code writes and reads.
const RECORD_FORMAT: u8 = 1;
/// The key of a tree's state record; no other record has an empty key.
const STATE_KEY: &[u8] = b"";
/// `[format][generation][digest][records][checksum]`.
const STATE_LEN: usize = 1 + 8 * 4;

/// A tree's commit counter, record count and digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeState {
    /// Atomic writes committed to the tree since it was created.
    pub generation: u64,
    /// XOR of the checksums of every record.
    pub digest: u64,
    /// Number of records.
    pub records: u64,
}

impl TreeState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.digest.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        let check = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&check.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != STATE_LEN || bytes[0] != RECORD_FORMAT {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().unwrap());
        if xxhash_rust::xxh3::xxh3_64(&bytes[..STATE_LEN - 8]) != word(3) {
            return None;
        }
        Some(Self {
            generation: word(0),
            digest: word(1),
            records: word(2),
        })
    }
}

/// A key as an operator can read it: text with `/` for the separators, or hex.
pub fn printable_key(key: &[u8]) -> String {
    if key.iter().all(|b| *b == 0 || b.is_ascii_graphic()) {
        String::from_utf8_lossy(key).replace('\0', "/")
    } else {
        format!("0x{}", hex::encode(key))
    }
}

fn checksum(tree: &str, key: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(tree.as_bytes());
    hasher.update(&[0xff]);
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(key);
    hasher.update(payload);
    hasher.digest()
}

/// One tree of the store, checksummed.
pub struct SealedTree {
    name: &'static str,
    tree: EngineTree,
    /// The state as last committed; its lock serialises the tree's writers.
    state: Mutex<TreeState>,
}

/// What a full check of one tree found.
#[derive(Clone, Debug, Default)]
pub struct TreeCheck {
    /// Records read.
    pub records: u64,
    /// Bytes read (keys and stored values).
    pub bytes: u64,
    /// The state the tree says it is in (`None` when its state record is missing or damaged).
    pub state: Option<TreeState>,
    /// What is wrong, for an operator (at most a few lines; `damaged_total` counts all).
    pub damage: Vec<String>,
    /// Number of problems found.
    pub damaged_total: u64,
}

/// At most this many problems are described per tree.
const DESCRIBED_DAMAGE: usize = 8;

impl TreeCheck {
    fn damaged(&mut self, what: String) {
        self.damaged_total += 1;
        if self.damage.len() < DESCRIBED_DAMAGE {
            self.damage.push(what);
        }
    }
}

impl SealedTree {
    /// Opens a tree. A tree without a state record is new (or written before checksums:
    /// see [`SealedTree::upgrade_unchecked_records`]).
    pub fn open(engine: &Engine, name: &'static str) -> Result<Self, StorageError> {
        let tree = engine.open_tree(name)?;
        let state = match tree.get(STATE_KEY)? {
            Some(bytes) => TreeState::decode(&bytes).ok_or_else(|| StorageError::Corrupt {
                key: format!("{name} (state record)"),
                message: "fails its checksum".into(),
            })?,
            None => TreeState::default(),
        };
        Ok(Self {
            name,
            tree,
            state: Mutex::new(state),
        })
    }

    /// The tree's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True when the tree holds a state record.
    pub fn has_state_record(&self) -> Result<bool, StorageError> {
        self.tree.contains_key(STATE_KEY)
    }

    /// True when the tree holds no records (and no state record).
    pub fn is_untouched(&self) -> Result<bool, StorageError> {
        self.tree.is_empty()
    }

    /// Rewrites every record of a tree written before records carried checksums, and gives
    /// the tree its state. Runs once, when a store without a seal file is opened.
    pub fn upgrade_unchecked_records(&self) -> Result<(), StorageError> {
        let mut state = self.lock();
        let mut batch = Vec::new();
        let mut next = TreeState::default();
        for item in self.tree.range(Bound::Unbounded, Bound::Unbounded) {
            let (key, payload) = item?;
            let sum = checksum(self.name, &key, &payload);
            batch.push((key, Some(self.encode_with(sum, &payload))));
            next.digest ^= sum;
            next.records += 1;
        }
        next.generation = 1;
        batch.push((STATE_KEY.to_vec(), Some(next.encode())));
        self.tree.apply(batch)?;
        *state = next;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, TreeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state as last committed.
    pub fn state(&self) -> TreeState {
        *self.lock()
    }

    fn encode_with(&self, sum: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + payload.len());
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The payload of a stored record and its checksum, or what is wrong with it.
    fn open_record<'a>(&self, key: &[u8], stored: &'a [u8]) -> Result<(&'a [u8], u64), String> {
        if stored.len() < 9 {
            return Err(format!("record of {} bytes is too short", stored.len()));
        }
        if stored[0] != RECORD_FORMAT {
            return Err(format!("unknown record format {}", stored[0]));
        }
        let sum = u64::from_le_bytes(stored[1..9].try_into().unwrap());
        let payload = &stored[9..];
        if checksum(self.name, key, payload) != sum {
            return Err("fails its checksum".into());
        }
        Ok((payload, sum))
    }

    fn damage(&self, key: &[u8], message: String) -> StorageError {
        StorageError::Corrupt {
            key: format!("{}/{}", self.name, printable_key(key)),
            message,
        }
    }

    fn payload_of(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StorageError> {
        self.open_record(key, stored)
            .map(|(payload, _)| payload.to_vec())
            .map_err(|message| self.damage(key, message))
    }

    /// The payload under `key`, verified.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if key.is_empty() {
            return Ok(None);
        }
        match self.tree.get(key)? {
            Some(stored) => self.payload_of(key, &stored).map(Some),
            None => Ok(None),
        }
    }

    /// Applies puts (`Some`) and removals (`None`) as one atomic write, with the tree's new
    /// state. A record about to be replaced must verify; a damaged one stops the write.
    pub fn apply(
        &self,
        ops: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StorageError> {
        let ops: BTreeMap<Vec<u8>, Option<Vec<u8>>> = ops.into_iter().collect();
        let mut state = self.lock();
        self.apply_locked(&mut state, ops, &HashMap::new())
    }

    /// [`apply`](Self::apply), where the caller vouches for what the tree holds before
    /// this write under the keys of `held_before` (`None`: nothing), so those are not read.
    /// For records derived from others the caller has read and verified (the search
    /// index, from a resource's values record): a write of thousands of new index records
    /// then costs no lookup of each. Were the caller wrong, the digest would no longer
    /// match the records and the next full check would say so.
    pub fn apply_vouched(
        &self,
        ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        held_before: &HashMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut state = self.lock();
        self.apply_locked(&mut state, ops, held_before)
    }

    fn apply_locked(
        &self,
        state: &mut TreeState,
        ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        held_before: &HashMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut next = *state;
        let mut batch = Vec::with_capacity(ops.len() + 1);
        for (key, value) in ops {
            if key.is_empty() {
                return Err(self.damage(&key, "a record may not have an empty key".into()));
            }
            let old_sum = match held_before.get(&key) {
                Some(vouched) => vouched
                    .as_ref()
                    .map(|payload| checksum(self.name, &key, payload)),
                None => match self.tree.get(&key)? {
                    Some(stored) => Some(
                        self.open_record(&key, &stored)
                            .map_err(|message| self.damage(&key, message))?
                            .1,
                    ),
                    None => None,
                },
            };
            if let Some(sum) = old_sum {
                next.digest ^= sum;
                // Saturating: a wrong voucher must not wrap the count (the check reports it).
                next.records = next.records.saturating_sub(1);
            }
            match value {
                Some(payload) => {
                    let sum = checksum(self.name, &key, &payload);
                    next.digest ^= sum;
                    next.records += 1;
                    let stored = self.encode_with(sum, &payload);
                    batch.push((key, Some(stored)));
                }
                None => batch.push((key, None)),
            }
        }
        next.generation += 1;
        batch.push((STATE_KEY.to_vec(), Some(next.encode())));
        self.tree.apply(batch)?;
        *state = next;
        Ok(())
    }

    /// Puts one record.
    pub fn insert(&self, key: &[u8], payload: &[u8]) -> Result<(), StorageError> {
        self.apply([(key.to_vec(), Some(payload.to_vec()))])
    }

    /// Removes the record under `key` if `keep` says no to its payload; true if it did.
    pub fn remove_unless(
        &self,
        key: &[u8],
        keep: impl FnOnce(&[u8]) -> bool,
    ) -> Result<bool, StorageError> {
        let mut state = self.lock();
        let Some(payload) = self.get(key)? else {
            return Ok(false);
        };
        if keep(&payload) {
            return Ok(false);
        }
        self.apply_locked(
            &mut state,
            BTreeMap::from([(key.to_vec(), None)]),
            &HashMap::new(),
        )?;
        Ok(true)
    }

    /// Replaces the record under `key` with what `update` makes of the current payload.
    pub fn update<E: From<StorageError>>(
        &self,
        key: &[u8],
        update: impl FnOnce(Option<&[u8]>) -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        let mut state = self.lock();
        let current = self.get(key)?;
        let next = update(current.as_deref())?;
        self.apply_locked(
            &mut state,
            BTreeMap::from([(key.to_vec(), Some(next))]),
            &HashMap::new(),
        )?;
        Ok(())
    }

    fn verified<'a>(
        &'a self,
        items: impl DoubleEndedIterator<Item = PairResult> + 'a,
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a {
        items.filter_map(move |item| match item {
            Err(e) => Some(Err(e)),
            Ok((key, _)) if key.is_empty() => None,
            Ok((key, stored)) => Some(self.payload_of(&key, &stored).map(|payload| (key, payload))),
        })
    }

    /// Records whose keys start with `prefix`, in key order, verified.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        self.verified(self.tree.scan_prefix(prefix))
    }

    /// Records in a key range, in key order, verified.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        self.verified(self.tree.range(
            range.start_bound().map(AsRef::as_ref),
            range.end_bound().map(AsRef::as_ref),
        ))
    }

    /// Every record, in key order, verified.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        self.verified(self.tree.range(Bound::Unbounded, Bound::Unbounded))
    }

    /// Keys of records whose keys start with `prefix` (their payloads are not read).
    pub fn keys_with_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Vec<u8>, StorageError>> + '_ {
        self.tree
            .scan_prefix(prefix)
            .map(|item| item.map(|(key, _)| key))
    }

    /// Number of records (from the state: no scan).
    pub fn len(&self) -> u64 {
        self.state().records
    }

    /// Reads every record, verifies each and the tree's state against them.
    pub fn check(&self) -> TreeCheck {
        let mut check = TreeCheck::default();
        let mut digest = 0u64;
        // Without a state record (it sorts first) the records are older than checksums:
        // they are counted, and the store check decides from the seal.
        let unchecked = match self.tree.contains_key(STATE_KEY) {
            Ok(has_state) => !has_state,
            Err(e) => {
                check.damaged(format!("{}: the engine cannot read it: {e}", self.name));
                return check;
            }
        };
        for item in self.tree.range(Bound::Unbounded, Bound::Unbounded) {
            let (key, stored) = match item {
                Ok(item) => item,
                Err(e) => {
                    check.damaged(format!("{}: the engine cannot read on: {e}", self.name));
                    return check;
                }
            };
            check.bytes += (key.len() + stored.len()) as u64;
            if key.is_empty() {
                match TreeState::decode(&stored) {
                    Some(state) => check.state = Some(state),
                    None => check.damaged(format!("{}: its state record is damaged", self.name)),
                }
                continue;
            }
            check.records += 1;
            if unchecked {
                continue;
            }
            match self.open_record(&key, &stored) {
                Ok((_, sum)) => digest ^= sum,
                Err(message) => check.damaged(format!(
                    "{}: record {} {message}",
                    self.name,
                    printable_key(&key)
                )),
            }
        }
        // A tree without a state record is new or older than checksums: the store check
        // decides which, from the seal.
        match check.state {
            None => {}
            Some(state) if check.damaged_total == 0 => {
                if state.records != check.records {
                    check.damaged(format!(
                        "{}: holds {} records where its state says {}: records were lost or added outside a write",
                        self.name, check.records, state.records
                    ));
                } else if state.digest != digest {
                    check.damaged(format!(
                        "{}: its records do not add up to its digest: records were replaced outside a write",
                        self.name
                    ));
                }
            }
            Some(_) => {}
        }
        check
    }

    /// Holds the tree's writers off until the guard is dropped (a backup's consistent
    /// cut); the tree's state at that moment.
    pub fn hold_writers(&self) -> MutexGuard<'_, TreeState> {
        self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::EngineKind;
    use super::*;

    const KINDS: [EngineKind; 3] = [EngineKind::Sled, EngineKind::Redb, EngineKind::Fjall];

    fn tree(kind: EngineKind) -> (tempfile::TempDir, Engine, SealedTree) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), kind).unwrap();
        let tree = SealedTree::open(&engine, "t").unwrap();
        (dir, engine, tree)
    }

    #[test]
    fn state_follows_every_write_and_a_check_agrees() {
        for kind in KINDS {
            let (_dir, _engine, tree) = tree(kind);
            tree.insert(b"a", b"1").unwrap();
            tree.insert(b"b", b"2").unwrap();
            tree.apply([(b"a".to_vec(), None), (b"c".to_vec(), Some(b"3".to_vec()))])
                .unwrap();
            assert_eq!(tree.state().generation, 3);
            assert_eq!(tree.len(), 2);
            let check = tree.check();
            assert!(check.damage.is_empty(), "{kind}: {:?}", check.damage);
            assert_eq!(check.records, 2);
            let keys: Vec<_> = tree.iter().map(|i| i.unwrap().0).collect();
            assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        }
    }

    #[test]
    fn a_changed_byte_is_an_error_naming_the_record() {
        for kind in KINDS {
            let (_dir, _engine, tree) = tree(kind);
            tree.insert(b"r\0Patient\0p1", b"{\"a\":1}").unwrap();
            let mut stored = tree.tree.get(b"r\0Patient\0p1").unwrap().unwrap();
            *stored.last_mut().unwrap() ^= 0x04;
            tree.tree
                .apply(vec![(b"r\0Patient\0p1".to_vec(), Some(stored))])
                .unwrap();
            let error = tree.get(b"r\0Patient\0p1").unwrap_err().to_string();
            assert!(error.contains("t/r/Patient/p1"), "{kind}: {error}");
            let check = tree.check();
            assert_eq!(check.damaged_total, 1, "{kind}: {:?}", check.damage);
            assert!(check.damage[0].contains("fails its checksum"));
        }
    }

    #[test]
    fn a_vanished_record_is_found_by_the_check() {
        for kind in KINDS {
            let (_dir, _engine, tree) = tree(kind);
            tree.insert(b"a", b"1").unwrap();
            tree.insert(b"b", b"2").unwrap();
            tree.tree.apply(vec![(b"a".to_vec(), None)]).unwrap();
            let check = tree.check();
            assert_eq!(check.damaged_total, 1, "{kind}");
            assert!(
                check.damage[0].contains("lost or added"),
                "{:?}",
                check.damage
            );
        }
    }
}
