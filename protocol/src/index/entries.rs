//! Where a [`LocatorIndex`](super::LocatorIndex) keeps its entries: behind [`EntryStore`],
//! so that a node can keep them on disk within a memory budget and a simulator can keep
//! thousands of indexes in one process, while both run the same index rules.
//!
//! A store keeps, per patient, at most one live entry per holder, and per publisher its
//! head (the last batch applied and its hash), written in the same atomic step as the
//! batch's entries: after a restart the index goes on from the head without replaying the
//! log. A retracted entry is not kept: the patient simply has no entry of that holder.
//!
//! [`MemoryEntries`] is the compact in-memory store: about 64 bytes per entry at five
//! holders per patient (see `bytes_per_entry`), against ~1.9 KB per entry of the maps the
//! index used before.

use crate::locator::{LocatorEntry, NodeId};
use crate::patient::PatientKey;
use std::collections::HashMap;

/// A publisher's position in its log, as the index has applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherHead {
    /// The last sequence applied (0: none yet).
    pub sequence: u64,
    /// The hash of that batch ([`crate::batch::GENESIS_HASH`] when none).
    pub hash: [u8; 32],
}

/// The store failed to read or write; the index did not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the locator index store failed: {0}")]
pub struct StoreError(pub String);

/// What keeps a locator index's entries and publisher heads.
///
/// Every method that changes the store does all of its change or none of it.
pub trait EntryStore {
    /// The live entries of `patient`, one per holder, ordered by holder.
    fn holders_of(&self, patient: &PatientKey) -> Result<Vec<LocatorEntry>, StoreError>;

    /// Applies one batch of `publisher` (every entry's holder is `publisher`; a patient
    /// appears at most once): each live entry replaces the publisher's entry for its
    /// patient, each retracted one removes it; and records `head`. Atomic.
    fn apply_batch(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError>;

    /// Replaces every entry of `publisher` by `entries` (live, one per patient: a
    /// snapshot) and records `head`. Atomic.
    fn replace_publisher(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError>;

    /// Removes every entry of `publisher` and its head; returns how many live entries
    /// went. Atomic.
    fn remove_publisher(&mut self, publisher: &NodeId) -> Result<u64, StoreError>;

    /// The head recorded for `publisher`.
    fn head(&self, publisher: &NodeId) -> Result<Option<PublisherHead>, StoreError>;

    /// Number of live entries.
    fn live_entries(&self) -> u64;
}

/// A publisher as [`MemoryEntries`] numbers it.
#[derive(Clone, Debug)]
struct Slot {
    node: NodeId,
    head: PublisherHead,
    /// Entries written under an older epoch were replaced by a snapshot: they no longer
    /// count and are dropped when their patient is next written.
    epoch: u16,
    live: u64,
}

/// One entry without its patient (the map's key) and with its holder as a slot number.
#[derive(Clone, Copy, Debug)]
struct CompactEntry {
    slot: u32,
    epoch: u16,
    categories: u16,
    updated_at_ms: u64,
    commitment: [u8; 32],
}

impl CompactEntry {
    fn of(entry: &LocatorEntry, slot: u32, epoch: u16) -> Self {
        Self {
            slot,
            epoch,
            categories: entry.categories,
            updated_at_ms: entry.updated_at_ms,
            commitment: entry.commitment,
        }
    }
}

/// The compact in-memory [`EntryStore`]: per patient a small vector of fixed-size entries
/// naming their holder by a 4-byte slot. A snapshot that replaces a publisher's entries
/// starts a new epoch of that publisher instead of finding its old entries: those are
/// invisible at once and leave when their patient is next written, or by
/// [`MemoryEntries::sweep`]. A removed publisher's entries go at once.
#[derive(Debug, Default)]
pub struct MemoryEntries {
    slots: Vec<Option<Slot>>,
    slot_of: HashMap<NodeId, u32, ahash::RandomState>,
    patients: HashMap<PatientKey, Vec<CompactEntry>, ahash::RandomState>,
    live: u64,
}

impl MemoryEntries {
    /// An empty store, its maps keyed at random (a publisher cannot choose patient keys
    /// that collide).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose maps are keyed from `seed`: the same writes then give the same
    /// layout and the same [`MemoryEntries::bytes_per_entry`] (for a simulator's
    /// byte-identical reports).
    pub fn seeded(seed: u64) -> Self {
        let hasher = || {
            ahash::RandomState::with_seeds(
                seed,
                seed ^ 0x9e37_79b9_7f4a_7c15,
                seed.rotate_left(17),
                !seed,
            )
        };
        Self {
            slots: Vec::new(),
            slot_of: HashMap::with_hasher(hasher()),
            patients: HashMap::with_hasher(hasher()),
            live: 0,
        }
    }

    fn is_current(&self, entry: &CompactEntry) -> bool {
        matches!(&self.slots[entry.slot as usize], Some(slot) if slot.epoch == entry.epoch)
    }

    fn slot_for(&mut self, publisher: &NodeId) -> Result<u32, StoreError> {
        if let Some(&slot) = self.slot_of.get(publisher) {
            if self.slots[slot as usize].is_some() {
                return Ok(slot);
            }
        }
        let slot = u32::try_from(self.slots.len())
            .map_err(|_| StoreError("more than 2^32 publishers".into()))?;
        self.slots.push(Some(Slot {
            node: *publisher,
            head: PublisherHead {
                sequence: 0,
                hash: crate::batch::GENESIS_HASH,
            },
            epoch: 0,
            live: 0,
        }));
        self.slot_of.insert(*publisher, slot);
        Ok(slot)
    }

    fn expand(&self, patient: &PatientKey, entry: &CompactEntry) -> Option<LocatorEntry> {
        let slot = self.slots[entry.slot as usize].as_ref()?;
        (slot.epoch == entry.epoch).then_some(LocatorEntry {
            patient: *patient,
            holder: slot.node,
            categories: entry.categories,
            commitment: entry.commitment,
            updated_at_ms: entry.updated_at_ms,
            retracted: false,
        })
    }

    /// Writes (or with `None` removes) the entry of `slot` for `patient`, dropping the
    /// patient's invisible entries on the way. Returns whether a current entry was there.
    fn write(&mut self, patient: PatientKey, slot: u32, value: Option<CompactEntry>) -> bool {
        let slots = &self.slots;
        let current =
            |e: &CompactEntry| matches!(&slots[e.slot as usize], Some(s) if s.epoch == e.epoch);
        let list = self.patients.entry(patient).or_default();
        list.retain(|e| current(e));
        let at = list.iter().position(|e| e.slot == slot);
        let was_there = at.is_some();
        match (at, value) {
            (Some(i), Some(v)) => list[i] = v,
            (Some(i), None) => {
                list.remove(i);
            }
            (None, Some(v)) => {
                let at = list.partition_point(|e| e.slot < slot);
                list.insert(at, v);
            }
            (None, None) => {}
        }
        if list.is_empty() {
            self.patients.remove(&patient);
        } else {
            list.shrink_to_fit();
        }
        was_there
    }

    /// Drops up to `limit` patients' invisible entries (of replaced epochs or removed
    /// publishers); returns how many entries went. Bounded work, for a periodic tidy-up.
    pub fn sweep(&mut self, limit: usize) -> usize {
        let slots = &self.slots;
        let current =
            |e: &CompactEntry| matches!(&slots[e.slot as usize], Some(s) if s.epoch == e.epoch);
        let mut dropped = 0;
        let mut emptied = Vec::new();
        for (patient, list) in self.patients.iter_mut().take(limit) {
            let before = list.len();
            list.retain(|e| current(e));
            dropped += before - list.len();
            if list.is_empty() {
                emptied.push(*patient);
            }
        }
        for patient in emptied {
            self.patients.remove(&patient);
        }
        dropped
    }

    /// The live entries of `publisher`, sorted by patient key (what its snapshot holds).
    /// A scan of every patient: for tests and tools, not for a node's hot path.
    pub fn publisher_entries(&self, publisher: &NodeId) -> Vec<LocatorEntry> {
        let Some(&slot) = self.slot_of.get(publisher) else {
            return Vec::new();
        };
        let mut out: Vec<LocatorEntry> = self
            .patients
            .iter()
            .flat_map(|(patient, list)| {
                list.iter()
                    .filter(|e| e.slot == slot && self.is_current(e))
                    .filter_map(|e| self.expand(patient, e))
            })
            .collect();
        out.sort_by_key(|e| e.patient);
        out
    }

    /// Patients with at least one entry (visible or not yet swept).
    pub fn patient_count(&self) -> usize {
        self.patients.len()
    }

    /// Heap bytes this store holds per live entry, from its own allocations (the map's
    /// buckets and control bytes, each patient's vector) — what a node or a simulator
    /// spends, not an estimate of the entry's encoding.
    pub fn bytes_per_entry(&self) -> f64 {
        let bucket = std::mem::size_of::<(PatientKey, Vec<CompactEntry>)>() + 1;
        let map = self.patients.capacity() * bucket;
        let vectors: usize = self
            .patients
            .values()
            .map(|v| v.capacity() * std::mem::size_of::<CompactEntry>())
            .sum();
        let slots = self.slots.capacity() * std::mem::size_of::<Option<Slot>>()
            + self.slot_of.capacity() * (std::mem::size_of::<(NodeId, u32)>() + 1);
        (map + vectors + slots) as f64 / self.live.max(1) as f64
    }
}

impl EntryStore for MemoryEntries {
    fn holders_of(&self, patient: &PatientKey) -> Result<Vec<LocatorEntry>, StoreError> {
        let mut out: Vec<LocatorEntry> = self
            .patients
            .get(patient)
            .into_iter()
            .flatten()
            .filter_map(|e| self.expand(patient, e))
            .collect();
        out.sort_by_key(|e| e.holder);
        Ok(out)
    }

    fn apply_batch(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError> {
        let slot = self.slot_for(publisher)?;
        let epoch = self.slots[slot as usize].as_ref().map_or(0, |s| s.epoch);
        let mut live = self.slots[slot as usize].as_ref().map_or(0, |s| s.live);
        for entry in entries {
            let value = (!entry.retracted).then(|| CompactEntry::of(entry, slot, epoch));
            let is_live = value.is_some();
            let was_live = self.write(entry.patient, slot, value);
            match (was_live, is_live) {
                (false, true) => live += 1,
                (true, false) => live -= 1,
                _ => {}
            }
        }
        let state = self.slots[slot as usize].as_mut().expect("slot just made");
        self.live = self.live - state.live + live;
        state.live = live;
        state.head = head;
        Ok(())
    }

    fn replace_publisher(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError> {
        let slot = self.slot_for(publisher)?;
        let state = self.slots[slot as usize].as_mut().expect("slot just made");
        // A new epoch hides every older entry at once.
        state.epoch = state.epoch.wrapping_add(1);
        let (epoch, old_live) = (state.epoch, state.live);
        state.live = 0;
        self.live -= old_live;
        if epoch == 0 {
            // The epoch wrapped: entries from 65,536 snapshots ago would show again, so
            // every entry of the slot goes now (once in 65,536 snapshots).
            self.patients.retain(|_, list| {
                list.retain(|e| e.slot != slot);
                !list.is_empty()
            });
        }
        let live_entries: Vec<&LocatorEntry> = entries.iter().filter(|e| !e.retracted).collect();
        for entry in &live_entries {
            self.write(
                entry.patient,
                slot,
                Some(CompactEntry::of(entry, slot, epoch)),
            );
        }
        let count = live_entries.len() as u64;
        let state = self.slots[slot as usize].as_mut().expect("slot just made");
        state.live = count;
        state.head = head;
        self.live += count;
        Ok(())
    }

    fn remove_publisher(&mut self, publisher: &NodeId) -> Result<u64, StoreError> {
        let Some(slot) = self.slot_of.remove(publisher) else {
            return Ok(0);
        };
        let removed = self.slots[slot as usize].take().map_or(0, |s| s.live);
        self.live -= removed;
        // Revocation is rare: its entries go at once rather than waiting for a sweep.
        self.patients.retain(|_, list| {
            list.retain(|e| e.slot != slot);
            !list.is_empty()
        });
        Ok(removed)
    }

    fn head(&self, publisher: &NodeId) -> Result<Option<PublisherHead>, StoreError> {
        Ok(self
            .slot_of
            .get(publisher)
            .and_then(|&slot| self.slots[slot as usize].as_ref())
            .map(|s| s.head))
    }

    fn live_entries(&self) -> u64 {
        self.live
    }
}

/// A model-based check any [`EntryStore`] must pass: `steps` seeded random batches,
/// snapshots and removals of a few publishers over a few patients, applied to `store` and
/// to a plain map, comparing every patient's holders, every publisher's head, and the live
/// count after each step. Panics, naming the step, at the first difference.
/// The node runs it against its on-disk store; the protocol's tests against
/// [`MemoryEntries`].
pub fn check_against_model<S: EntryStore>(store: &mut S, seed: u64, steps: usize) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut state = seed;
    let mut next = move || {
        // splitmix64: enough for a seeded sequence of choices, no dependency.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let publishers: Vec<NodeId> = (1..=4u8).map(|i| NodeId([i; 32])).collect();
    let patients: Vec<PatientKey> = (1..=12u8).map(|i| PatientKey([i; 32])).collect();
    // (patient, publisher) → entry; publisher → head.
    let mut model: BTreeMap<(PatientKey, NodeId), LocatorEntry> = BTreeMap::new();
    let mut heads: BTreeMap<NodeId, PublisherHead> = BTreeMap::new();
    for step in 0..steps {
        let publisher = publishers[(next() % publishers.len() as u64) as usize];
        let head = PublisherHead {
            sequence: step as u64 + 1,
            hash: [(step % 251) as u8; 32],
        };
        let mut chosen: BTreeSet<PatientKey> = BTreeSet::new();
        for _ in 0..(next() % 6) {
            chosen.insert(patients[(next() % patients.len() as u64) as usize]);
        }
        let entries: Vec<LocatorEntry> = chosen
            .iter()
            .map(|patient| {
                let retracted = next() % 4 == 0;
                LocatorEntry {
                    patient: *patient,
                    holder: publisher,
                    categories: if retracted {
                        0
                    } else {
                        1 + (next() % 7) as u16
                    },
                    commitment: if retracted {
                        [0; 32]
                    } else {
                        [next() as u8; 32]
                    },
                    updated_at_ms: next() % 1_000_000,
                    retracted,
                }
            })
            .collect();
        match next() % 10 {
            0 => {
                let removed = store.remove_publisher(&publisher).expect("remove");
                let before = model.len();
                model.retain(|(_, p), _| *p != publisher);
                assert_eq!(
                    removed as usize,
                    before - model.len(),
                    "step {step}: removed"
                );
                heads.remove(&publisher);
            }
            1 | 2 => {
                let live: Vec<LocatorEntry> =
                    entries.iter().filter(|e| !e.retracted).cloned().collect();
                store
                    .replace_publisher(&publisher, &live, head)
                    .expect("replace");
                model.retain(|(_, p), _| *p != publisher);
                for entry in live {
                    model.insert((entry.patient, publisher), entry);
                }
                heads.insert(publisher, head);
            }
            _ => {
                store
                    .apply_batch(&publisher, &entries, head)
                    .expect("apply");
                for entry in entries {
                    if entry.retracted {
                        model.remove(&(entry.patient, publisher));
                    } else {
                        model.insert((entry.patient, publisher), entry);
                    }
                }
                heads.insert(publisher, head);
            }
        }
        assert_eq!(
            store.live_entries() as usize,
            model.len(),
            "step {step}: live"
        );
        for patient in &patients {
            let wanted: Vec<LocatorEntry> = model
                .range((*patient, NodeId([0; 32]))..=(*patient, NodeId([255; 32])))
                .map(|(_, e)| e.clone())
                .collect();
            assert_eq!(
                store.holders_of(patient).expect("holders"),
                wanted,
                "step {step}: holders"
            );
        }
        for publisher in &publishers {
            assert_eq!(
                store.head(publisher).expect("head"),
                heads.get(publisher).copied(),
                "step {step}: head"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_store_behaves_as_the_model_under_seeded_work() {
        for seed in 0..20 {
            check_against_model(&mut MemoryEntries::new(), seed, 400);
        }
    }

    #[test]
    fn a_snapshot_hides_the_old_epoch_and_a_sweep_drops_it() {
        let mut store = MemoryEntries::new();
        let publisher = NodeId([9; 32]);
        let entry = |patient: u8| LocatorEntry {
            patient: PatientKey([patient; 32]),
            holder: publisher,
            categories: 1,
            commitment: [patient; 32],
            updated_at_ms: 5,
            retracted: false,
        };
        let head = |sequence| PublisherHead {
            sequence,
            hash: [0; 32],
        };
        store
            .apply_batch(&publisher, &[entry(1), entry(2), entry(3)], head(1))
            .unwrap();
        store
            .replace_publisher(&publisher, &[entry(2)], head(9))
            .unwrap();
        assert_eq!(store.live_entries(), 1);
        assert!(store.holders_of(&PatientKey([1; 32])).unwrap().is_empty());
        assert_eq!(
            store.holders_of(&PatientKey([2; 32])).unwrap(),
            vec![entry(2)]
        );
        assert_eq!(store.patient_count(), 3, "the old epoch waits for a sweep");
        assert_eq!(store.sweep(usize::MAX), 2);
        assert_eq!(store.patient_count(), 1);
        assert_eq!(store.head(&publisher).unwrap(), Some(head(9)));
    }
}
