//! The locator index on disk: an [`EntryStore`] in its own fjall database (an LSM tree),
//! so that a node carries the national index in a bounded amount of memory (fjall's block
//! cache and write buffers, sized from one budget) and goes on after a restart from the
//! heads it recorded, without replaying its peers' logs.
//!
//! The index is derived data: every entry came from a signed batch or snapshot that the
//! node's store keeps, so a damaged or missing index directory is rebuilt from them. fjall
//! checksums every block it writes (XXH3-128) and checks it on every read, so damage on
//! disk is an error, never a wrong holder; values are checked for their length.
//!
//! Two keyspaces, written together in one atomic batch per change:
//!
//! ```text
//! entries     patient key's first 16 bytes ‖ slot (u32 BE)
//!                 →  epoch (u16 BE) ‖ categories (u16 BE) ‖ updated_at_ms (u64 BE) ‖ commitment (32)
//! publishers  node id (32)
//!                 →  slot (u32 BE) ‖ epoch (u16 BE) ‖ live (u64 BE) ‖ head sequence (u64 BE) ‖ head hash (32)
//!             "next-slot"  →  next slot (u32 BE)
//! ```
//!
//! An entry is 64 bytes of key and value. Its key holds 16 of the patient key's 32 bytes:
//! two of the 18 million patients sharing a 128-bit prefix is a chance of about 10^-24;
//! and a publisher that made up a key with another patient's prefix (keys are not checked
//! to come from the OPRF) only writes under its own slot, so it can claim to hold that
//! patient, which it could do with the patient's key itself, but never hide or replace
//! another holder's entry. A lookup returns the key it was asked for.
//!
//! A publisher is numbered by a slot that is never reused, so that an entry names its
//! holder in 4 bytes. Its record holds its head and live count, so the live total and the
//! heads are known at open from the few thousand publisher records alone. A snapshot that
//! replaces a publisher's entries starts a new epoch instead of finding the old entries;
//! removing a publisher deletes its record. Entries of a past epoch or of a slot without a
//! record are invisible, and [`DiskEntries::sweep`] deletes them in bounded steps.

use std::collections::HashMap;
use std::path::Path;
use zorgmesh_protocol::index::{EntryStore, PublisherHead, StoreError};
use zorgmesh_protocol::{LocatorEntry, NodeId, PatientKey};

/// The index's directory inside a node's data directory.
pub const INDEX_DIR: &str = "locator-index";

/// Bytes of the patient key an entry's key holds.
const PATIENT_PREFIX: usize = 16;
const ENTRY_KEY: usize = PATIENT_PREFIX + 4;
const ENTRY_VALUE: usize = 2 + 2 + 8 + 32;
const PUBLISHER_VALUE: usize = 4 + 2 + 8 + 8 + 32;
const NEXT_SLOT_KEY: &[u8] = b"next-slot";

/// How much memory the index may use: half of it is fjall's block cache, a sixteenth (1 to
/// 64 MiB) the entries' memtable; the rest is headroom for the memtables being flushed,
/// the filters and the publisher table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget(pub u64);

impl Default for MemoryBudget {
    /// 1 GiB.
    fn default() -> Self {
        Self(1 << 30)
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    node: NodeId,
    number: u32,
    epoch: u16,
    live: u64,
    head: PublisherHead,
}

/// Where a [`DiskEntries::sweep`] goes on: the first entry it did not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepCursor([u8; ENTRY_KEY]);

/// The on-disk [`EntryStore`].
pub struct DiskEntries {
    db: fjall::Database,
    entries: fjall::Keyspace,
    publishers: fjall::Keyspace,
    /// Every publisher with a record, by node id.
    slots: HashMap<NodeId, Slot>,
    /// The node and epoch of each slot in use, by slot number (`None`: removed).
    by_number: Vec<Option<(NodeId, u16)>>,
    next_slot: u32,
    live: u64,
}

impl std::fmt::Debug for DiskEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskEntries")
            .field("publishers", &self.slots.len())
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

/// The value, or what is wrong with it.
fn opened<'a>(
    space: &str,
    key: &[u8],
    stored: &'a [u8],
    len: usize,
) -> Result<&'a [u8], StoreError> {
    if stored.len() != len || (space == "entries" && key.len() != ENTRY_KEY) {
        return Err(StoreError(format!(
            "{space} record {} has {} bytes, {len} expected",
            hex::encode(key),
            stored.len()
        )));
    }
    Ok(stored)
}

fn entry_key(patient: &PatientKey, slot: u32) -> [u8; ENTRY_KEY] {
    let mut key = [0u8; ENTRY_KEY];
    key[..PATIENT_PREFIX].copy_from_slice(&patient.0[..PATIENT_PREFIX]);
    key[PATIENT_PREFIX..].copy_from_slice(&slot.to_be_bytes());
    key
}

fn encode_entry(epoch: u16, entry: &LocatorEntry) -> Vec<u8> {
    let mut value = Vec::with_capacity(ENTRY_VALUE);
    value.extend_from_slice(&epoch.to_be_bytes());
    value.extend_from_slice(&entry.categories.to_be_bytes());
    value.extend_from_slice(&entry.updated_at_ms.to_be_bytes());
    value.extend_from_slice(&entry.commitment);
    value
}

/// `(epoch, categories, updated_at_ms, commitment)` of a stored entry.
fn decode_entry(key: &[u8], stored: &[u8]) -> Result<(u16, u16, u64, [u8; 32]), StoreError> {
    let v = opened("entries", key, stored, ENTRY_VALUE)?;
    Ok((
        u16::from_be_bytes([v[0], v[1]]),
        u16::from_be_bytes([v[2], v[3]]),
        u64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
        v[12..44].try_into().expect("32 bytes"),
    ))
}

fn encode_slot(slot: &Slot) -> Vec<u8> {
    let mut value = Vec::with_capacity(PUBLISHER_VALUE);
    value.extend_from_slice(&slot.number.to_be_bytes());
    value.extend_from_slice(&slot.epoch.to_be_bytes());
    value.extend_from_slice(&slot.live.to_be_bytes());
    value.extend_from_slice(&slot.head.sequence.to_be_bytes());
    value.extend_from_slice(&slot.head.hash);
    value
}

fn decode_slot(key: &[u8], stored: &[u8]) -> Result<Slot, StoreError> {
    let v = opened("publishers", key, stored, PUBLISHER_VALUE)?;
    let node = NodeId(key.try_into().map_err(|_| {
        StoreError(format!(
            "publisher key {} is not a node id",
            hex::encode(key)
        ))
    })?);
    Ok(Slot {
        node,
        number: u32::from_be_bytes(v[0..4].try_into().expect("4 bytes")),
        epoch: u16::from_be_bytes([v[4], v[5]]),
        live: u64::from_be_bytes(v[6..14].try_into().expect("8 bytes")),
        head: PublisherHead {
            sequence: u64::from_be_bytes(v[14..22].try_into().expect("8 bytes")),
            hash: v[22..54].try_into().expect("32 bytes"),
        },
    })
}

impl DiskEntries {
    /// Opens (or creates) the index in `dir` within `budget`.
    pub fn open(dir: &Path, budget: MemoryBudget) -> Result<Self, StoreError> {
        let db = fjall::Database::builder(dir)
            .cache_size(budget.0 / 2)
            .open()
            .map_err(|e| {
                failed(
                    &format!("cannot open the locator index in {}", dir.display()),
                    e,
                )
            })?;
        let memtable = (budget.0 / 16).clamp(1 << 20, 64 << 20);
        let entries = db
            .keyspace("entries", || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(|e| failed("cannot open the entries", e))?;
        let publishers = db
            .keyspace("publishers", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| failed("cannot open the publishers", e))?;
        let mut store = Self {
            db,
            entries,
            publishers,
            slots: HashMap::new(),
            by_number: Vec::new(),
            next_slot: 0,
            live: 0,
        };
        store.load()?;
        Ok(store)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        for item in self.publishers.iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| failed("cannot read the publishers", e))?;
            if &key[..] == NEXT_SLOT_KEY {
                let v = opened("publishers", &key, &value, 4)?;
                self.next_slot = u32::from_be_bytes(v.try_into().expect("4 bytes"));
                continue;
            }
            let slot = decode_slot(&key, &value)?;
            self.live += slot.live;
            self.place(slot);
        }
        if let Some(highest) = self.slots.values().map(|s| s.number).max() {
            if highest >= self.next_slot {
                return Err(StoreError(format!(
                    "slot {highest} is in use but the next free slot is {}",
                    self.next_slot
                )));
            }
        }
        Ok(())
    }

    fn place(&mut self, slot: Slot) {
        let at = slot.number as usize;
        if self.by_number.len() <= at {
            self.by_number.resize(at + 1, None);
        }
        self.by_number[at] = Some((slot.node, slot.epoch));
        self.slots.insert(slot.node, slot);
    }

    /// The publisher's slot, or a new one (its record and the next-slot counter are then
    /// written with the caller's batch).
    fn slot_for(&self, publisher: &NodeId) -> (Slot, bool) {
        match self.slots.get(publisher) {
            Some(slot) => (*slot, false),
            None => (
                Slot {
                    node: *publisher,
                    number: self.next_slot,
                    epoch: 0,
                    live: 0,
                    head: PublisherHead {
                        sequence: 0,
                        hash: zorgmesh_protocol::batch::GENESIS_HASH,
                    },
                },
                true,
            ),
        }
    }

    fn is_current(&self, number: u32, epoch: u16) -> Option<NodeId> {
        match self.by_number.get(number as usize) {
            Some(Some((node, current))) if *current == epoch => Some(*node),
            _ => None,
        }
    }

    /// Whether the stored entry under `key` is live and current.
    fn current_at(&self, key: &[u8; ENTRY_KEY], slot: &Slot) -> Result<bool, StoreError> {
        match self
            .entries
            .get(key)
            .map_err(|e| failed("cannot read an entry", e))?
        {
            Some(stored) => Ok(decode_entry(key, &stored)?.0 == slot.epoch),
            None => Ok(false),
        }
    }

    /// Writes `slot`'s record (and the counter when it is new) with `batch` and commits.
    fn commit(
        &mut self,
        mut batch: fjall::OwnedWriteBatch,
        slot: Slot,
        new: bool,
    ) -> Result<(), StoreError> {
        batch.insert(&self.publishers, slot.node.0, encode_slot(&slot));
        if new {
            let next = slot
                .number
                .checked_add(1)
                .ok_or_else(|| StoreError("no slot left".into()))?;
            batch.insert(&self.publishers, NEXT_SLOT_KEY, next.to_be_bytes());
        }
        batch
            .commit()
            .map_err(|e| failed("cannot write the index", e))?;
        if new {
            self.next_slot = slot.number + 1;
        }
        let before = self.slots.get(&slot.node).map_or(0, |s| s.live);
        self.live = self.live - before + slot.live;
        self.place(slot);
        Ok(())
    }

    /// Deletes up to `limit` invisible entries (of a past epoch or a removed publisher)
    /// from `from` on; returns how many went and where the next sweep starts (`None`: the
    /// end was reached). Bounded work, for a periodic tidy-up.
    pub fn sweep(
        &mut self,
        from: Option<SweepCursor>,
        limit: usize,
    ) -> Result<(usize, Option<SweepCursor>), StoreError> {
        let start = from.map_or([0u8; ENTRY_KEY], |c| c.0);
        let mut batch = self.write_batch();
        let mut dropped = 0;
        let mut next = None;
        for (seen, item) in self.entries.range(start.to_vec()..).enumerate() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| failed("cannot read the entries", e))?;
            let malformed = || StoreError(format!("entry key {} is malformed", hex::encode(&key)));
            let whole: [u8; ENTRY_KEY] = key[..].try_into().map_err(|_| malformed())?;
            if seen >= limit {
                next = Some(SweepCursor(whole));
                break;
            }
            let number = u32::from_be_bytes(
                whole[PATIENT_PREFIX..]
                    .try_into()
                    .map_err(|_| malformed())?,
            );
            let (epoch, ..) = decode_entry(&key, &value)?;
            if self.is_current(number, epoch).is_none() {
                batch.remove(&self.entries, key.to_vec());
                dropped += 1;
            }
        }
        batch
            .commit()
            .map_err(|e| failed("cannot write the index", e))?;
        Ok((dropped, next))
    }

    /// A batch handed to the operating system when it commits, not synced: it survives a
    /// crash of the process; after a power loss the index may be behind or ahead of the
    /// kept logs, and the node's restore reconciles the two.
    fn write_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(fjall::PersistMode::Buffer))
    }

    /// Every publisher the store holds a head for.
    pub fn heads(&self) -> Vec<(NodeId, PublisherHead)> {
        self.slots.values().map(|s| (s.node, s.head)).collect()
    }

    /// Makes every write so far durable.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| failed("cannot persist the index", e))
    }

    /// Bytes the index's files take on disk: all of them (journals included), and the
    /// entries' tables alone.
    pub fn disk_bytes(&self) -> (u64, u64) {
        (self.db.disk_space().unwrap_or(0), self.entries.disk_space())
    }
}

impl EntryStore for DiskEntries {
    fn holders_of(&self, patient: &PatientKey) -> Result<Vec<LocatorEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.entries.prefix(&patient.0[..PATIENT_PREFIX]) {
            let (key, value) = item
                .into_inner()
                .map_err(|e| failed("cannot read the entries", e))?;
            if key.len() != ENTRY_KEY {
                return Err(StoreError(format!(
                    "entry key {} is malformed",
                    hex::encode(&key)
                )));
            }
            let number =
                u32::from_be_bytes(key[PATIENT_PREFIX..ENTRY_KEY].try_into().expect("4 bytes"));
            let (epoch, categories, updated_at_ms, commitment) = decode_entry(&key, &value)?;
            if let Some(holder) = self.is_current(number, epoch) {
                out.push(LocatorEntry {
                    patient: *patient,
                    holder,
                    categories,
                    commitment,
                    updated_at_ms,
                    retracted: false,
                });
            }
        }
        out.sort_by_key(|e| e.holder);
        Ok(out)
    }

    fn apply_batch(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError> {
        let (mut slot, new) = self.slot_for(publisher);
        let mut batch = self.write_batch();
        for entry in entries {
            let key = entry_key(&entry.patient, slot.number);
            let was_live = !new && self.current_at(&key, &slot)?;
            if entry.retracted {
                if was_live {
                    batch.remove(&self.entries, key.to_vec());
                    slot.live -= 1;
                }
            } else {
                batch.insert(&self.entries, key.to_vec(), encode_entry(slot.epoch, entry));
                if !was_live {
                    slot.live += 1;
                }
            }
        }
        slot.head = head;
        self.commit(batch, slot, new)
    }

    fn replace_publisher(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError> {
        let (mut slot, new) = self.slot_for(publisher);
        let mut batch = self.write_batch();
        if !new {
            slot.epoch = slot.epoch.wrapping_add(1);
            if slot.epoch == 0 {
                // The epoch wrapped: entries of 65,536 snapshots ago would show again, so
                // the slot's entries go now (once in 65,536 snapshots: a full scan).
                for item in self.entries.iter() {
                    let key = item
                        .key()
                        .map_err(|e| failed("cannot read the entries", e))?;
                    if key.len() == ENTRY_KEY
                        && key[PATIENT_PREFIX..ENTRY_KEY] == slot.number.to_be_bytes()
                    {
                        batch.remove(&self.entries, key.to_vec());
                    }
                }
            }
        }
        slot.live = 0;
        for entry in entries.iter().filter(|e| !e.retracted) {
            let key = entry_key(&entry.patient, slot.number);
            batch.insert(&self.entries, key.to_vec(), encode_entry(slot.epoch, entry));
            slot.live += 1;
        }
        slot.head = head;
        self.commit(batch, slot, new)
    }

    fn remove_publisher(&mut self, publisher: &NodeId) -> Result<u64, StoreError> {
        let Some(slot) = self.slots.get(publisher).copied() else {
            return Ok(0);
        };
        let mut batch = self.write_batch();
        batch.remove(&self.publishers, publisher.0);
        batch
            .commit()
            .map_err(|e| failed("cannot write the index", e))?;
        self.slots.remove(publisher);
        self.by_number[slot.number as usize] = None;
        self.live -= slot.live;
        Ok(slot.live)
    }

    fn head(&self, publisher: &NodeId) -> Result<Option<PublisherHead>, StoreError> {
        Ok(self.slots.get(publisher).map(|s| s.head))
    }

    fn live_entries(&self) -> u64 {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_store_behaves_as_the_model_and_keeps_it_across_a_reopen() {
        for seed in 0..6 {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut store = DiskEntries::open(dir.path(), MemoryBudget(8 << 20)).unwrap();
                zorgmesh_protocol::index::entries::check_against_model(&mut store, seed, 300);
            }
            // Reopened, it holds what a store that never closed would: the model check
            // goes on from it (a fresh model would disagree, so compare with a run that
            // did the same steps in memory).
            let reopened = DiskEntries::open(dir.path(), MemoryBudget(8 << 20)).unwrap();
            let mut memory = zorgmesh_protocol::index::MemoryEntries::new();
            zorgmesh_protocol::index::entries::check_against_model(&mut memory, seed, 300);
            assert_eq!(
                reopened.live_entries(),
                memory.live_entries(),
                "seed {seed}"
            );
            for i in 1..=12u8 {
                let patient = PatientKey([i; 32]);
                assert_eq!(
                    reopened.holders_of(&patient).unwrap(),
                    memory.holders_of(&patient).unwrap(),
                    "seed {seed}, patient {i}"
                );
            }
            for i in 1..=4u8 {
                let node = NodeId([i; 32]);
                assert_eq!(reopened.head(&node).unwrap(), memory.head(&node).unwrap());
            }
        }
    }

    #[test]
    fn a_malformed_entry_is_an_error_and_a_sweep_drops_what_is_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskEntries::open(dir.path(), MemoryBudget(8 << 20)).unwrap();
        let publisher = NodeId([3; 32]);
        let entry = |patient: u8| LocatorEntry {
            patient: PatientKey([patient; 32]),
            holder: publisher,
            categories: 1,
            commitment: [patient; 32],
            updated_at_ms: 5,
            retracted: false,
        };
        let head = PublisherHead {
            sequence: 1,
            hash: [1; 32],
        };
        store
            .apply_batch(&publisher, &[entry(1), entry(2)], head)
            .unwrap();
        store
            .replace_publisher(&publisher, &[entry(2)], head)
            .unwrap();
        assert!(store.holders_of(&PatientKey([1; 32])).unwrap().is_empty());
        assert_eq!(store.sweep(None, 100).unwrap(), (1, None));
        // In steps of one entry, a sweep still reaches the end, also past a patient with
        // entries of two publishers.
        store
            .replace_publisher(&publisher, &[entry(3)], head)
            .unwrap();
        let second = NodeId([4; 32]);
        let theirs = LocatorEntry {
            holder: second,
            ..entry(3)
        };
        store
            .apply_batch(&second, std::slice::from_ref(&theirs), head)
            .unwrap();
        let (mut dropped, mut cursor, mut steps) = (0, None, 0);
        loop {
            let (gone, next) = store.sweep(cursor, 1).unwrap();
            dropped += gone;
            steps += 1;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(steps < 10, "the sweep does not advance");
        }
        assert_eq!(dropped, 1);
        let mut both = vec![entry(3), theirs];
        both.sort_by_key(|e| e.holder);
        assert_eq!(store.holders_of(&PatientKey([3; 32])).unwrap(), both);
        let key = entry_key(&PatientKey([3; 32]), 0);
        let mut stored = store.entries.get(key).unwrap().unwrap().to_vec();
        stored.pop();
        store.entries.insert(key, stored).unwrap();
        let error = store
            .holders_of(&PatientKey([3; 32]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("43 bytes, 44 expected"), "{error}");
    }
}
