//! The node's access trail (NEN 7513): every access to patient data, every consent
//! decision and every failed authentication, appended to a hash chain on disk
//! ([`zorgmesh_protocol::audit`] defines the entries and checkpoints) before the access is
//! answered.
//!
//! **Group commit**: appenders hand their record to one writer task over a bounded queue
//! and wait; the writer takes every record waiting (up to [`MAX_GROUP`]), chains them,
//! writes them with one `fdatasync`, and then answers them all. An access whose entry could
//! not be made durable is not answered (its request fails), so an answered access is in the
//! trail.
//!
//! **Checkpoints**: the writer signs the chain's head with the node's key every
//! [`CHECKPOINT_EVERY`] entries, after a quiet [`CHECKPOINT_INTERVAL`] with new entries, and
//! when the node stops.

pub mod events;
pub mod mesh_log;
pub mod trail_file;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use trail_file::{push_frame, TrailFileError, TrailFiles};
use zorgmesh_protocol::audit::{AuditEntry, AuditRecord, Checkpoint, MAX_TEXT};
use zorgmesh_protocol::locator::NodeId;
use zorgmesh_protocol::PatientKey;

pub use zorgmesh_protocol::audit::{AuditAction, AuditOutcome};

/// Records waiting for the writer, at most.
pub const QUEUE_DEPTH: usize = 16 * 1024;
/// Records written with one sync, at most.
pub const MAX_GROUP: usize = 4096;
/// A checkpoint at least every so many entries.
pub const CHECKPOINT_EVERY: u64 = 10_000;
/// A checkpoint after this long with new entries since the last one.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// Entries one query returns, at most.
pub const MAX_QUERY_RESULTS: usize = 1000;

/// Why an entry was not made durable.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    /// The trail's files failed (disk full, I/O error).
    #[error("the access trail cannot be written: {0}")]
    Write(String),
    /// The writer has stopped (the node is stopping, or the trail failed before).
    #[error("the access trail is closed")]
    Closed,
}

/// Signs checkpoints: the node's key in force.
pub type CheckpointSigner = Arc<dyn Fn() -> ed25519_dalek::SigningKey + Send + Sync>;

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

/// The access trail of one node. Cheap to clone.
#[derive(Clone)]
pub struct AuditTrail {
    queue: mpsc::Sender<Pending>,
    /// Bytes of `trail.log` that are durable (what readers may read).
    durable_len: Arc<AtomicU64>,
    trail_path: PathBuf,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("path", &self.trail_path)
            .finish_non_exhaustive()
    }
}

/// Cuts `text` to at most [`MAX_TEXT`] bytes, at a character boundary.
pub fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn bounded_record(mut record: AuditRecord) -> AuditRecord {
    record.actor = bounded(record.actor);
    record.organisation = bounded(record.organisation);
    record.what = bounded(record.what);
    record.detail = bounded(record.detail);
    if let Some(person) = record.person.as_mut() {
        person.id = bounded(std::mem::take(&mut person.id));
        person.role = bounded(std::mem::take(&mut person.role));
        person.name = bounded(std::mem::take(&mut person.name));
    }
    record
}

/// Which entries a query wants.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only entries about this patient.
    pub patient: Option<PatientKey>,
    /// Only entries at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only entries of these actions (empty: all).
    pub actions: Vec<AuditAction>,
}

impl AuditQuery {
    fn matches(&self, entry: &AuditEntry) -> bool {
        let record = &entry.record;
        self.patient.is_none_or(|p| record.patient == Some(p))
            && self.since_ms.is_none_or(|t| record.at_ms >= t)
            && (self.actions.is_empty() || self.actions.contains(&record.action))
    }
}

impl AuditTrail {
    /// Opens the trail in `data_dir/audit` and starts its writer, which runs until
    /// `shutdown` (then signs a last checkpoint).
    pub fn open(
        data_dir: &Path,
        signer: CheckpointSigner,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), TrailFileError> {
        let files = TrailFiles::open(data_dir)?;
        let durable_len = Arc::new(AtomicU64::new(files.entries.acknowledged_bytes()));
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        tracing::info!(
            entries = files.head.sequence,
            checkpointed = files.checkpointed,
            "access trail opened"
        );
        let task = tokio::spawn(write_groups(
            files,
            pending,
            signer,
            durable_len.clone(),
            shutdown,
        ));
        Ok((
            Self {
                queue,
                durable_len,
                trail_path: trail_file::trail_paths(data_dir).0,
            },
            task,
        ))
    }

    /// Queues `record` for the writer; the receiver answers once it is on disk.
    async fn enqueue(
        &self,
        record: AuditRecord,
    ) -> Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                record: bounded_record(record),
                done,
            })
            .await
            .map_err(|_| AuditError::Closed)?;
        Ok(answer)
    }

    /// Appends `record` and returns its sequence once it is on disk.
    pub async fn append(&self, record: AuditRecord) -> Result<u64, AuditError> {
        self.enqueue(record)
            .await?
            .await
            .map_err(|_| AuditError::Closed)?
    }

    /// Appends `records` in order (usually in one group, one sync) and returns once all are
    /// on disk.
    pub async fn append_all(&self, records: Vec<AuditRecord>) -> Result<(), AuditError> {
        let mut answers = Vec::with_capacity(records.len());
        for record in records {
            answers.push(self.enqueue(record).await?);
        }
        for answer in answers {
            answer.await.map_err(|_| AuditError::Closed)??;
        }
        Ok(())
    }

    /// The newest entries (at most `limit`, at most [`MAX_QUERY_RESULTS`]) that `query`
    /// wants, oldest first. Reads the durable part of the trail.
    pub async fn query(
        &self,
        query: AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let path = self.trail_path.clone();
        let durable = self.durable_len.load(Ordering::Acquire);
        let limit = limit.min(MAX_QUERY_RESULTS);
        tokio::task::spawn_blocking(move || {
            let mut newest = std::collections::VecDeque::with_capacity(limit);
            for entry in trail_file::read_entries(&path, durable)
                .map_err(|e| AuditError::Write(e.to_string()))?
            {
                let entry = entry.map_err(|e| AuditError::Write(e.to_string()))?;
                if query.matches(&entry) {
                    if newest.len() == limit {
                        newest.pop_front();
                    }
                    if limit > 0 {
                        newest.push_back(entry);
                    }
                }
            }
            Ok(newest.into_iter().collect())
        })
        .await
        .map_err(|e| AuditError::Write(e.to_string()))?
    }
}

/// Signs a checkpoint of the chain's head and appends it durably.
fn checkpoint(files: &mut TrailFiles, signer: &CheckpointSigner) -> Result<(), TrailFileError> {
    if files.head.sequence == files.checkpointed {
        return Ok(());
    }
    let key = signer();
    let signed = Checkpoint {
        node: NodeId(key.verifying_key().to_bytes()),
        sequence: files.head.sequence,
        hash: files.head.hash,
        at_ms: crate::fhir::service::now_ms(),
    }
    .sign(&key);
    let mut frame = Vec::new();
    push_frame(&mut frame, &zorgmesh_protocol::codec::encode(&signed));
    files.checkpoints.append_durably(&frame)?;
    files.checkpointed = files.head.sequence;
    Ok(())
}

/// Chains `records` after the head, writes them with one sync, and checkpoints when due.
/// On failure the head stays where it was (the files hold nothing of the group).
fn write_group(
    files: &mut TrailFiles,
    records: Vec<AuditRecord>,
    signer: &CheckpointSigner,
) -> Result<Vec<u64>, TrailFileError> {
    let mut head = files.head;
    let mut frames = Vec::with_capacity(records.len() * 256);
    let mut sequences = Vec::with_capacity(records.len());
    for record in records {
        let (entry, next) = head.append(record);
        push_frame(&mut frames, &entry.to_bytes());
        sequences.push(entry.sequence);
        head = next;
    }
    files.entries.append_durably(&frames)?;
    files.head = head;
    if files.head.sequence - files.checkpointed >= CHECKPOINT_EVERY {
        checkpoint(files, signer)?;
    }
    Ok(sequences)
}

async fn write_groups(
    mut files: TrailFiles,
    mut pending: mpsc::Receiver<Pending>,
    signer: CheckpointSigner,
    durable_len: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_checkpoint = Instant::now();
    loop {
        let first = tokio::select! {
            first = pending.recv() => match first {
                Some(first) => first,
                None => break,
            },
            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {
                if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                    let signed = tokio::task::spawn_blocking({
                        let signer = signer.clone();
                        move || { let result = checkpoint(&mut files, &signer); (files, result) }
                    }).await;
                    let Ok((back, result)) = signed else {
                        tracing::error!("the access trail's checkpoint task failed: the trail is closed, and accesses are refused");
                        return;
                    };
                    files = back;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "cannot write an access-trail checkpoint");
                    }
                    last_checkpoint = Instant::now();
                }
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match pending.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (records, answers): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.record, p.done)).unzip();
        let before = files.checkpointed;
        let written = tokio::task::spawn_blocking({
            let signer = signer.clone();
            move || {
                let result = write_group(&mut files, records, &signer);
                (files, result)
            }
        })
        .await;
        let Ok((back, result)) = written else {
            // The files went with the failed task: answer nothing more (the waiting
            // appenders see the trail closed, so their accesses are refused).
            tracing::error!("the access trail's writer task failed: the trail is closed, and accesses are refused");
            return;
        };
        files = back;
        if files.checkpointed != before {
            last_checkpoint = Instant::now();
        }
        durable_len.store(files.entries.acknowledged_bytes(), Ordering::Release);
        match result {
            Ok(sequences) => {
                for (answer, sequence) in answers.into_iter().zip(sequences) {
                    let _ = answer.send(Ok(sequence));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the access trail cannot be written: the accesses waiting for it are refused");
                let error = AuditError::Write(e.to_string());
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
    // Whatever is still queued was not answered: refuse it, then sign the head.
    pending.close();
    while let Ok(rest) = pending.try_recv() {
        let _ = rest.done.send(Err(AuditError::Closed));
    }
    let signed = tokio::task::spawn_blocking(move || checkpoint(&mut files, &signer)).await;
    match signed {
        Ok(Ok(())) => tracing::debug!("access trail closed with a checkpoint"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot write the access trail's last checkpoint")
        }
        Err(e) => tracing::error!(error = %e, "the access trail's last checkpoint failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zorgmesh_protocol::audit::{AuditEntry, TrailProblem};

    fn signer() -> CheckpointSigner {
        Arc::new(|| ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
    }

    fn record(n: u64) -> AuditRecord {
        AuditRecord {
            at_ms: 1_767_225_600_000 + n,
            action: if n.is_multiple_of(2) {
                AuditAction::Read
            } else {
                AuditAction::PullServed
            },
            outcome: AuditOutcome::Success,
            actor: format!("client-{n}"),
            organisation: "00001234".into(),
            person: None,
            purpose: Some(zorgmesh_protocol::claims::PurposeOfUse::Treatment),
            patient: Some(PatientKey([(n % 3) as u8; 32])),
            what: "x".repeat(MAX_TEXT + 10),
            detail: String::new(),
        }
    }

    fn rewrite(dir: &Path, tamper: impl FnOnce(&mut Vec<AuditEntry>)) {
        let (path, _) = trail_file::trail_paths(dir);
        let mut entries: Vec<AuditEntry> = trail_file::read_entries(&path, u64::MAX)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tamper(&mut entries);
        let mut bytes = Vec::new();
        for entry in &entries {
            push_frame(&mut bytes, &entry.to_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
    }

    async fn write_trail(dir: &Path, n: u64) {
        let (stop, shutdown) = watch::channel(false);
        let (trail, task) = AuditTrail::open(dir, signer(), shutdown).unwrap();
        let mut appends = tokio::task::JoinSet::new();
        for i in 1..=n {
            let trail = trail.clone();
            appends.spawn(async move { trail.append(record(i)).await.unwrap() });
        }
        let mut sequences: Vec<u64> = appends.join_all().await;
        sequences.sort_unstable();
        let first = sequences[0];
        assert_eq!(
            sequences,
            (first..first + n).collect::<Vec<_>>(),
            "each append has its own place"
        );
        let about = trail
            .query(
                AuditQuery {
                    patient: Some(PatientKey([1; 32])),
                    ..Default::default()
                },
                5,
            )
            .await
            .unwrap();
        assert!(!about.is_empty() && about.len() <= 5, "{}", about.len());
        assert!(about
            .iter()
            .all(|e| e.record.patient == Some(PatientKey([1; 32]))));
        assert!(
            about.iter().all(|e| e.record.what.len() == MAX_TEXT),
            "text is bounded"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_appends_form_one_chain_that_verifies_and_continues_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        write_trail(dir.path(), 50).await;
        write_trail(dir.path(), 30).await;
        let report = verify::verify_dir(dir.path(), None).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.trail.entries, 80);
        assert_eq!(report.trail.checkpoints, 2, "one checkpoint at each stop");
        assert_eq!(report.signers.len(), 1);
        let mine = BTreeSet::from([NodeId(signer()().verifying_key().to_bytes())]);
        assert!(verify::verify_dir(dir.path(), Some(&mine))
            .unwrap()
            .is_intact());
        let other = BTreeSet::from([NodeId([5; 32])]);
        let foreign = verify::verify_dir(dir.path(), Some(&other)).unwrap();
        assert_eq!(foreign.foreign_checkpoints.len(), 2, "{foreign}");
    }

    use std::collections::BTreeSet;

    #[tokio::test]
    async fn an_altered_a_removed_and_a_reordered_entry_are_each_named() {
        type Tamper = fn(&mut Vec<AuditEntry>);
        let cases: [(&str, Tamper, TrailProblem); 4] = [
            (
                "altered",
                |e| e[9].record.actor = "nobody".into(),
                TrailProblem::Altered { sequence: 10 },
            ),
            (
                "removed",
                |e| {
                    e.remove(14);
                },
                TrailProblem::Removed {
                    before: 16,
                    missing: 1,
                },
            ),
            (
                "reordered",
                |e| e.swap(3, 4),
                TrailProblem::Reordered { sequence: 4 },
            ),
            (
                "last altered",
                |e| e[19].record.outcome = AuditOutcome::Denied,
                TrailProblem::Altered { sequence: 20 },
            ),
        ];
        for (name, tamper, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write_trail(dir.path(), 20).await;
            rewrite(dir.path(), tamper);
            let report = verify::verify_dir(dir.path(), None).unwrap();
            assert_eq!(
                report.trail.problems,
                vec![expected.clone()],
                "{name}: {report}"
            );
            assert!(report.to_string().contains(&expected.to_string()), "{name}");
        }
    }

    #[tokio::test]
    async fn a_torn_last_frame_is_cut_off_and_a_damaged_middle_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        write_trail(dir.path(), 6).await;
        let (path, _) = trail_file::trail_paths(dir.path());
        let whole = std::fs::read(&path).unwrap();
        // A crash in the middle of a write: half a frame at the end.
        let mut torn = whole.clone();
        torn.extend_from_slice(&200u32.to_be_bytes());
        torn.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &torn).unwrap();
        write_trail(dir.path(), 3).await;
        let report = verify::verify_dir(dir.path(), None).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.trail.entries, 9);
        // An entry that no longer decodes, before the end.
        let mut damaged = std::fs::read(&path).unwrap();
        let first_len = u32::from_be_bytes(damaged[..4].try_into().unwrap()) as usize;
        damaged[4..4 + first_len].fill(0xff);
        std::fs::write(&path, &damaged).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let refused = AuditTrail::open(dir.path(), signer(), shutdown).unwrap_err();
        assert!(
            refused.to_string().contains("damaged at byte 0"),
            "{refused}"
        );
        let report = verify::verify_dir(dir.path(), None).unwrap();
        assert!(!report.is_intact());
        assert!(report.to_string().contains("does not decode"), "{report}");
    }

    #[test]
    fn every_action_has_an_audit_event_shape() {
        for action in events::ALL_ACTIONS {
            assert_eq!(
                events::action_of_code(events::action_code(action)),
                Some(action)
            );
            let mut r = record(1);
            r.action = action;
            r.person = Some(zorgmesh_protocol::claims::Practitioner {
                id: "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123".into(),
                role: "01.015".into(),
                name: "J. Jansen".into(),
            });
            let (entry, _) = zorgmesh_protocol::audit::ChainHead::default().append(r);
            let event = events::audit_event("node-a", &entry);
            assert_eq!(event["resourceType"], "AuditEvent");
            assert_eq!(event["id"], "node-a-1");
            assert_eq!(event["recorded"], "2026-01-01T00:00:00.001Z");
            assert_eq!(
                event["entity"][0]["what"]["identifier"]["value"],
                hex::encode([1u8; 32])
            );
            assert_eq!(event["agent"][1]["who"]["identifier"]["value"], "123");
            assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        }
    }
}
