//! Publishing this node's locator entries: when a write changes a patient's data, the
//! patient's entry is recomputed from storage and staged in the sans-IO
//! [`PublisherLog`]; a task cuts batches by size or time window, persists each batch
//! *before* it leaves the node (so a restart never signs a second batch with the same
//! sequence number), clears the patients' dirty marks, and hands the batch on.

use crate::rotation::NodeKeys;
use crate::storage::Storage;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Mutex, Notify};
use zorgmesh_protocol::locator::{category_of, holding_commitment};
use zorgmesh_protocol::{BatchPolicy, LocatorEntry, NodeId, PatientKey, PublisherLog, SignedBatch};

/// Publishes this node's locator entries.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<Storage>,
    node: NodeId,
    keys: Arc<NodeKeys>,
    log: Mutex<PublisherLog>,
    /// Held while a batch is signed and persisted, and while the key changes: a hand-over
    /// names the last batch the old key signed, which is durable by then.
    signing: Mutex<()>,
    /// False until the node knows its log's head from the mesh (see
    /// [`crate::own_log::learn_own_head`]): nothing is signed before.
    ready: watch::Sender<bool>,
    wake: Notify,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("node", &self.inner.node)
            .finish()
    }
}

/// The current locator entry of a patient on this node: the data categories of the
/// patient's compartment (its Patient records and what references them) and the holding
/// commitment to exactly those resources and versions, read from the storage's link and
/// history keys without reading any resource. Retracted when nothing is left.
pub fn entry_for(
    storage: &Storage,
    node: NodeId,
    patient: PatientKey,
    now_ms: u64,
) -> Result<LocatorEntry, crate::fhir::FhirError> {
    let patients = storage.patients_with_key(&patient)?;
    let held = storage.holdings(&patients)?;
    let retracted = held.is_empty();
    // A privacy consent record is not part of the shared record, but the patient's other
    // holders must learn that it exists, to read it.
    let consent = if !retracted && crate::consent::holds_privacy_consent(storage, &patients)? {
        zorgmesh_protocol::locator::category::CONSENT
    } else {
        0
    };
    Ok(LocatorEntry {
        patient,
        holder: node,
        categories: held
            .iter()
            .fold(consent, |bits, r| bits | category_of(&r.resource_type)),
        commitment: if retracted {
            [0; 32]
        } else {
            holding_commitment(&storage.holding_salt(&patient), &held)
        },
        retracted,
        updated_at_ms: now_ms,
    })
}

impl Publisher {
    /// A publisher that continues the log stored in `storage`, signing with the key in
    /// force in `keys`.
    pub fn new(
        storage: Arc<Storage>,
        keys: Arc<NodeKeys>,
        policy: BatchPolicy,
    ) -> Result<Self, crate::storage::StorageError> {
        let node = keys.log();
        let mut head = storage
            .own_snapshot()?
            .first()
            .and_then(|c| zorgmesh_protocol::snapshot::SignedSnapshotChunk::from_bytes(c).ok())
            .map(|c| (c.body.sequence, c.body.head_hash));
        for bytes in storage.own_batches() {
            if let Ok(batch) = SignedBatch::from_bytes(&bytes?) {
                head = Some((batch.body.sequence, batch.body.hash()));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                log: Mutex::new(PublisherLog::new(node, policy, head)),
                storage,
                node,
                keys,
                wake: Notify::new(),
                signing: Mutex::new(()),
                ready: watch::channel(false).0,
            }),
        })
    }

    /// Recomputes and stages the entries of `patients`.
    pub async fn stage(&self, patients: BTreeSet<PatientKey>) {
        let now = crate::fhir::service::now_ms();
        let mut entries = Vec::with_capacity(patients.len());
        for patient in patients {
            match entry_for(&self.inner.storage, self.inner.node, patient, now) {
                Ok(entry) => entries.push(entry),
                Err(e) => tracing::error!(error = %e, "cannot compute locator entry"),
            }
        }
        let mut log = self.inner.log.lock().await;
        for entry in entries {
            log.stage(entry, now);
        }
        drop(log);
        self.inner.wake.notify_one();
    }

    /// The store the publisher keeps its log in.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The last sequence this node's log has signed (0: none).
    pub async fn head(&self) -> u64 {
        self.inner.log.lock().await.next_sequence() - 1
    }

    /// Signing may begin: the log's head is known.
    pub fn set_ready(&self) {
        self.inner.ready.send_replace(true);
    }

    /// Continues the log after `sequence` (hash `hash`) when that is ahead of what this
    /// node signed (its store lost batches its peers hold). Returns whether it moved.
    pub async fn continue_after(&self, sequence: u64, hash: [u8; 32]) -> bool {
        let _signing = self.inner.signing.lock().await;
        self.inner.log.lock().await.continue_after(sequence, hash)
    }

    /// Runs `change` with signing paused, giving it the next sequence and the hash of the
    /// last batch signed (and persisted): a key hand-over happens inside, so that no batch
    /// is signed between naming the hand-over point and switching the key.
    pub async fn with_signing_paused<R>(&self, change: impl FnOnce(u64, [u8; 32]) -> R) -> R {
        let _signing = self.inner.signing.lock().await;
        let (next, head) = {
            let log = self.inner.log.lock().await;
            (log.next_sequence(), log.head_hash())
        };
        change(next, head)
    }

    /// Stages every patient whose entry was changed but not yet published (after a restart).
    pub async fn recover(&self) -> Result<usize, crate::storage::StorageError> {
        let dirty: BTreeSet<PatientKey> = self
            .inner
            .storage
            .dirty_patient_keys()?
            .into_iter()
            .collect();
        let n = dirty.len();
        if n > 0 {
            self.stage(dirty).await;
        }
        Ok(n)
    }

    /// Cuts batches when due, persists them and sends them to `out`, until `shutdown`.
    pub async fn run(self, out: mpsc::Sender<SignedBatch>, mut shutdown: watch::Receiver<bool>) {
        let mut ready = self.inner.ready.subscribe();
        tokio::select! {
            _ = shutdown.changed() => return,
            outcome = ready.wait_for(|ready| *ready) => if outcome.is_err() { return },
        }
        loop {
            let deadline = self.inner.log.lock().await.next_deadline();
            let now = crate::fhir::service::now_ms();
            let wait = match deadline {
                Some(d) if d <= now => std::time::Duration::ZERO,
                Some(d) => std::time::Duration::from_millis(d - now),
                None => std::time::Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.inner.wake.notified() => continue,
                _ = tokio::time::sleep(wait) => {}
            }
            loop {
                let now = crate::fhir::service::now_ms();
                let signing = self.inner.signing.lock().await;
                let key = self.inner.keys.current().key.clone();
                let batch = self.inner.log.lock().await.poll(now, &key);
                let Some(batch) = batch else { break };
                let covered: Vec<(PatientKey, u64)> = batch
                    .body
                    .entries
                    .iter()
                    .map(|e| (e.patient, e.updated_at_ms))
                    .collect();
                if let Err(e) = self
                    .inner
                    .storage
                    .append_own_batch(batch.body.sequence, &batch.to_bytes(), &covered)
                    .await
                {
                    // Without a durable log we must not publish: stop publishing loudly.
                    tracing::error!(error = %e, "cannot persist own batch; publishing stops");
                    return;
                }
                drop(signing);
                tracing::debug!(
                    sequence = batch.body.sequence,
                    entries = batch.body.entries.len(),
                    "batch signed"
                );
                if out.send(batch).await.is_err() {
                    return;
                }
            }
        }
        // Flush what is staged so that a clean shutdown loses nothing (dirty marks cover a crash).
        let now = crate::fhir::service::now_ms();
        let _signing = self.inner.signing.lock().await;
        let key = self.inner.keys.current().key.clone();
        let batch = self.inner.log.lock().await.flush(now, &key);
        if let Some(batch) = batch {
            let covered: Vec<(PatientKey, u64)> = batch
                .body
                .entries
                .iter()
                .map(|e| (e.patient, e.updated_at_ms))
                .collect();
            if self
                .inner
                .storage
                .append_own_batch(batch.body.sequence, &batch.to_bytes(), &covered)
                .await
                .is_ok()
            {
                let _ = out.try_send(batch);
            }
        }
    }
}
