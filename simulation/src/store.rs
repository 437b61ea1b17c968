//! The index stores of simulated nodes.
//!
//! The index's verdicts (applied, buffered behind a gap, duplicate, fork, refused) come from
//! its per-publisher state, never from its entry store: the store is only written to (and
//! read for a head when an index restarts from disk, which a simulated index never does).
//! So a node whose index contents are not measured can run the very same
//! [`LocatorIndex`](zorgmesh_protocol::LocatorIndex) on [`DiscardEntries`], and propagation,
//! traffic and convergence stay exact for every node. The nodes that are measured hold
//! every entry in the node's own compact store, [`MemoryEntries`]; since every converged
//! index holds the same entries, their figures stand for the others.

use zorgmesh_protocol::index::{EntryStore, MemoryEntries, PublisherHead, StoreError};
use zorgmesh_protocol::{LocatorEntry, NodeId, PatientKey};

/// A store that keeps nothing: for simulated nodes whose index contents are not measured.
/// It counts the entries written to it (not replacements), and has no heads to restart
/// from.
#[derive(Debug, Default)]
pub struct DiscardEntries {
    written: u64,
}

impl EntryStore for DiscardEntries {
    fn holders_of(&self, _patient: &PatientKey) -> Result<Vec<LocatorEntry>, StoreError> {
        Err(StoreError("this simulated node keeps no entries".into()))
    }

    fn apply_batch(
        &mut self,
        _publisher: &NodeId,
        entries: &[LocatorEntry],
        _head: PublisherHead,
    ) -> Result<(), StoreError> {
        self.written += entries.len() as u64;
        Ok(())
    }

    fn replace_publisher(
        &mut self,
        _publisher: &NodeId,
        entries: &[LocatorEntry],
        _head: PublisherHead,
    ) -> Result<(), StoreError> {
        self.written += entries.len() as u64;
        Ok(())
    }

    fn remove_publisher(&mut self, _publisher: &NodeId) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn head(&self, _publisher: &NodeId) -> Result<Option<PublisherHead>, StoreError> {
        Ok(None)
    }

    fn live_entries(&self) -> u64 {
        0
    }
}

/// A simulated node's store: every entry (measured), or none.
#[derive(Debug)]
pub enum SimStore {
    /// The node's own compact in-memory store.
    Full(MemoryEntries),
    /// Nothing kept.
    Discard(DiscardEntries),
}

impl SimStore {
    /// The full store, when this node keeps one.
    pub fn full(&self) -> Option<&MemoryEntries> {
        match self {
            SimStore::Full(store) => Some(store),
            SimStore::Discard(_) => None,
        }
    }
}

impl EntryStore for SimStore {
    fn holders_of(&self, patient: &PatientKey) -> Result<Vec<LocatorEntry>, StoreError> {
        match self {
            SimStore::Full(s) => s.holders_of(patient),
            SimStore::Discard(s) => s.holders_of(patient),
        }
    }

    fn apply_batch(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError> {
        match self {
            SimStore::Full(s) => s.apply_batch(publisher, entries, head),
            SimStore::Discard(s) => s.apply_batch(publisher, entries, head),
        }
    }

    fn replace_publisher(
        &mut self,
        publisher: &NodeId,
        entries: &[LocatorEntry],
        head: PublisherHead,
    ) -> Result<(), StoreError> {
        match self {
            SimStore::Full(s) => s.replace_publisher(publisher, entries, head),
            SimStore::Discard(s) => s.replace_publisher(publisher, entries, head),
        }
    }

    fn remove_publisher(&mut self, publisher: &NodeId) -> Result<u64, StoreError> {
        match self {
            SimStore::Full(s) => s.remove_publisher(publisher),
            SimStore::Discard(s) => s.remove_publisher(publisher),
        }
    }

    fn head(&self, publisher: &NodeId) -> Result<Option<PublisherHead>, StoreError> {
        match self {
            SimStore::Full(s) => s.head(publisher),
            SimStore::Discard(s) => s.head(publisher),
        }
    }

    fn live_entries(&self) -> u64 {
        match self {
            SimStore::Full(s) => s.live_entries(),
            SimStore::Discard(s) => s.live_entries(),
        }
    }
}
