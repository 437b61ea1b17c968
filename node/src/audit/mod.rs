//! The node's access trail (NEN 7513): every access to patient data, every consent
//! decision and every failed authentication, appended to a hash chain on disk
//! ([`zorgmesh_protocol::audit`] defines the entries and checkpoints) before the access is
//! answered.
//!
//! **Group commit**: appenders hand their record to one writer thread over a bounded queue
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
/// Records one queued message carries, at most (the queue is bounded in messages).
pub const MAX_RECORDS_PER_MESSAGE: usize = 64;
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

/// Records handed to the writer, not yet known to be durable.
#[must_use = "an access is answered only once its entries are durable"]
pub struct PendingAppend {
    answers: Vec<oneshot::Receiver<Result<u64, AuditError>>>,
    /// Why some of the records could not even be queued.
    refused: Option<AuditError>,
}

impl PendingAppend {
    /// Waits until every record is on disk (or the first that cannot be).
    pub async fn durable(self) -> Result<(), AuditError> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        for answer in self.answers {
            answer.await.map_err(|_| AuditError::Closed)??;
        }
        Ok(())
    }
}

/// The access trail of one node. Cheap to clone.
#[derive(Clone)]
pub struct AuditTrail {
    queue: mpsc::Sender<WriterMessage>,
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
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), TrailFileError> {
        let files = TrailFiles::open(data_dir)?;
        let durable_len = Arc::new(AtomicU64::new(files.entries.acknowledged_bytes()));
        let (queue, messages) = mpsc::channel(QUEUE_DEPTH);
        tracing::info!(
            entries = files.head.sequence,
            checkpointed = files.checkpointed,
            "access trail opened"
        );
        let (finished, writer_done) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn({
                let durable_len = durable_len.clone();
                move || {
                    write_groups(files, messages, signer, durable_len);
                    let _ = finished.send(());
                }
            })
            .map_err(|source| TrailFileError::Io {
                path: data_dir.display().to_string(),
                source,
            })?;
        // Tells the writer when a checkpoint may be due and when the node stops, and ends
        // when the writer has signed its last checkpoint (or failed).
        let task = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut writer_done = writer_done;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {
                            if queue.send(WriterMessage::Tick).await.is_err() {
                                break;
                            }
                        }
                        _ = shutdown.changed() => {
                            let _ = queue.send(WriterMessage::Stop).await;
                            break;
                        }
                        _ = &mut writer_done => return,
                    }
                }
                drop(queue);
                if writer_done.await.is_err() {
                    tracing::error!("the access trail's writer failed: the trail is closed, and accesses are refused");
                }
            }
        });
        Ok((
            Self {
                queue,
                durable_len,
                trail_path: trail_file::trail_paths(data_dir).0,
            },
            task,
        ))
    }

    /// Queues `records` for the writer as one message (so that they go in one group, one
    /// sync); each receiver answers once its record is on disk.
    async fn enqueue(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<oneshot::Receiver<Result<u64, AuditError>>>, AuditError> {
        let mut answers = Vec::with_capacity(records.len());
        let pending = records
            .into_iter()
            .map(|record| {
                let (done, answer) = oneshot::channel();
                answers.push(answer);
                Pending {
                    record: bounded_record(record),
                    done,
                }
            })
            .collect();
        self.queue
            .send(WriterMessage::Records(pending))
            .await
            .map_err(|_| AuditError::Closed)?;
        Ok(answers)
    }

    /// Closes the trail now, as when its disk fails: the writer signs a last checkpoint and
    /// stops, and every access is refused from then on (records queued after this are
    /// refused).
    pub async fn close(&self) {
        let _ = self.queue.send(WriterMessage::Stop).await;
    }

    /// Appends `record` and returns its sequence once it is on disk.
    pub async fn append(&self, record: AuditRecord) -> Result<u64, AuditError> {
        let answer = self.enqueue(vec![record]).await?.pop();
        answer
            .ok_or(AuditError::Closed)?
            .await
            .map_err(|_| AuditError::Closed)?
    }

    /// Appends `records` in order (in one group, one sync, when they are few) and returns
    /// once all are on disk.
    pub async fn append_all(&self, records: Vec<AuditRecord>) -> Result<(), AuditError> {
        self.begin_all(records).await.durable().await
    }

    /// Hands `records` to the writer and returns at once; [`PendingAppend::durable`] says
    /// when they are on disk, or why not. (The write goes on while the caller does other
    /// work.)
    pub async fn begin_all(&self, records: Vec<AuditRecord>) -> PendingAppend {
        let mut answers = Vec::with_capacity(records.len());
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let message: Vec<AuditRecord> =
                records.by_ref().take(MAX_RECORDS_PER_MESSAGE).collect();
            match self.enqueue(message).await {
                Ok(more) => answers.extend(more),
                Err(refused) => {
                    return PendingAppend {
                        answers,
                        refused: Some(refused),
                    }
                }
            }
        }
        PendingAppend {
            answers,
            refused: None,
        }
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

/// Chains the records of `group` after the head and writes them, in writes of at most
/// [`trail_file::MAX_WRITE_BYTES`] each followed by a sync (usually one), answering each
/// write's records once it is durable; checkpoints when due. A failed write leaves the head
/// where the last durable write put it, and refuses its records and the rest of the group.
fn write_group(
    files: &mut TrailFiles,
    group: Vec<Pending>,
    signer: &CheckpointSigner,
    durable_len: &AtomicU64,
) {
    let mut frames = Vec::with_capacity(group.len().min(64) * 512);
    let mut head = files.head;
    let mut waiting: Vec<(oneshot::Sender<Result<u64, AuditError>>, u64)> = Vec::new();
    let mut rest = group.into_iter().peekable();
    while let Some(pending) = rest.next() {
        let (entry, next) = head.append(pending.record);
        let bytes = entry.to_bytes();
        if !frames.is_empty() && frames.len() + 4 + bytes.len() > trail_file::MAX_WRITE_BYTES {
            // This write is full: make it durable first, and chain the entry after it.
            if let Err(e) = flush(files, &mut frames, head, &mut waiting, durable_len) {
                let _ = pending.done.send(Err(e.clone()));
                refuse(e, rest);
                return;
            }
            let (entry, next) = files.head.append(entry.record);
            push_frame(&mut frames, &entry.to_bytes());
            waiting.push((pending.done, entry.sequence));
            head = next;
        } else {
            push_frame(&mut frames, &bytes);
            waiting.push((pending.done, entry.sequence));
            head = next;
        }
        if rest.peek().is_none() {
            if let Err(e) = flush(files, &mut frames, head, &mut waiting, durable_len) {
                refuse(e, std::iter::empty());
                return;
            }
        }
    }
    if files.head.sequence - files.checkpointed >= CHECKPOINT_EVERY {
        if let Err(e) = checkpoint(files, signer) {
            tracing::error!(error = %e, "cannot write an access-trail checkpoint");
        }
    }
}

/// Writes `frames` durably; then the head is `head` and the records waiting are answered
/// with their sequences. On failure they are refused (and the error returned).
fn flush(
    files: &mut TrailFiles,
    frames: &mut Vec<u8>,
    head: zorgmesh_protocol::audit::ChainHead,
    waiting: &mut Vec<(oneshot::Sender<Result<u64, AuditError>>, u64)>,
    durable_len: &AtomicU64,
) -> Result<(), AuditError> {
    let written = files.entries.append_durably(frames);
    frames.clear();
    match written {
        Ok(()) => {
            files.head = head;
            // Readers may read what is answered.
            durable_len.store(files.entries.acknowledged_bytes(), Ordering::Release);
            for (done, sequence) in waiting.drain(..) {
                let _ = done.send(Ok(sequence));
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "the access trail cannot be written: the accesses waiting for it are refused");
            let error = AuditError::Write(e.to_string());
            for (done, _) in waiting.drain(..) {
                let _ = done.send(Err(error.clone()));
            }
            Err(error)
        }
    }
}

/// Refuses records that were not written.
fn refuse(error: AuditError, rest: impl Iterator<Item = Pending>) {
    for pending in rest {
        let _ = pending.done.send(Err(error.clone()));
    }
}

/// What the writer thread is told.
enum WriterMessage {
    /// Records to append, in order.
    Records(Vec<Pending>),
    /// Time for a checkpoint, if entries came since the last.
    Tick,
    /// The node is stopping.
    Stop,
}

/// The writer: one thread that takes every record waiting (up to [`MAX_GROUP`]), writes
/// them as a group, answers them, and goes on; it signs a checkpoint when one is due and a
/// last one when the node stops. (A thread of its own, not a task: an append then costs one
/// hand-over each way, not four.)
fn write_groups(
    mut files: TrailFiles,
    mut messages: mpsc::Receiver<WriterMessage>,
    signer: CheckpointSigner,
    durable_len: Arc<AtomicU64>,
) {
    let mut last_checkpoint = Instant::now();
    let mut carried: Option<WriterMessage> = None;
    loop {
        let message = match carried.take() {
            Some(message) => message,
            None => match messages.blocking_recv() {
                Some(message) => message,
                None => break,
            },
        };
        let mut group = match message {
            WriterMessage::Records(first) => first,
            WriterMessage::Tick => {
                if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                    if let Err(e) = checkpoint(&mut files, &signer) {
                        tracing::error!(error = %e, "cannot write an access-trail checkpoint");
                    }
                    last_checkpoint = Instant::now();
                }
                continue;
            }
            WriterMessage::Stop => break,
        };
        while group.len() < MAX_GROUP {
            match messages.try_recv() {
                Ok(WriterMessage::Records(next)) => group.extend(next),
                Ok(other) => {
                    carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let before = files.checkpointed;
        write_group(&mut files, group, &signer, &durable_len);
        if files.checkpointed != before {
            last_checkpoint = Instant::now();
        }
    }
    // Whatever is still queued was not answered: refuse it, then sign the head.
    messages.close();
    for message in carried
        .into_iter()
        .chain(std::iter::from_fn(|| messages.try_recv().ok()))
    {
        if let WriterMessage::Records(rest) = message {
            for pending in rest {
                let _ = pending.done.send(Err(AuditError::Closed));
            }
        }
    }
    match checkpoint(&mut files, &signer) {
        Ok(()) => tracing::debug!("access trail closed with a checkpoint"),
        Err(e) => tracing::error!(error = %e, "cannot write the access trail's last checkpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zorgmesh_protocol::audit::{AuditEntry, TrailProblem};

    pub(super) fn signer() -> CheckpointSigner {
        Arc::new(|| ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
    }

    pub(super) fn record(n: u64) -> AuditRecord {
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

    pub(super) async fn write_trail(dir: &Path, n: u64) {
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

#[cfg(test)]
mod preallocated_file_tests {
    use super::tests::{record, signer, write_trail};
    use super::*;
    use zorgmesh_protocol::audit::AuditEntry;

    /// The trail's bytes, the end of its frames, and its size.
    fn layout(dir: &Path) -> (Vec<u8>, usize) {
        let (path, _) = trail_file::trail_paths(dir);
        let bytes = std::fs::read(&path).unwrap();
        let mut end = 0;
        while end + 4 <= bytes.len() {
            let length = u32::from_be_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
            if length == 0 {
                break;
            }
            end += 4 + length;
        }
        (bytes, end)
    }

    #[tokio::test]
    async fn the_file_is_grown_in_zeroed_extents_and_its_frames_end_at_the_first_zero_length() {
        let dir = tempfile::tempdir().unwrap();
        write_trail(dir.path(), 40).await;
        let (bytes, end) = layout(dir.path());
        assert_eq!(bytes.len() as u64, trail_file::FIRST_EXTENT, "one extent");
        assert!(end > 0 && bytes[end..].iter().all(|b| *b == 0));
        write_trail(dir.path(), 300).await;
        let (bytes, end) = layout(dir.path());
        assert!(bytes.len() > end && (bytes.len() as u64).is_multiple_of(trail_file::FIRST_EXTENT));
        let report = verify::verify_dir(dir.path(), None).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.trail.entries, 340);
    }

    #[tokio::test]
    async fn a_write_torn_by_a_crash_is_zeroed_at_the_next_open_and_the_chain_goes_on() {
        // Two crashes: one that lost a sector in the middle of the last write, one that lost
        // the write's first sector but not a later one.
        // Where a lost sector leaves an earlier entry of the write whole (zeros in its text
        // still decode and chain), that entry stays: it was never acknowledged, so it records
        // an access that may not have been answered, which the trail allows; what cannot be
        // read is zeroed.
        for (lost, kept) in [("a middle sector", 1), ("the first sector", 0)] {
            let dir = tempfile::tempdir().unwrap();
            write_trail(dir.path(), 5).await;
            let (mut bytes, end) = layout(dir.path());
            // The write the crash cut short: three big entries after the end.
            let (entries, _) = {
                let (path, _) = trail_file::trail_paths(dir.path());
                let last = trail_file::read_entries(&path, u64::MAX)
                    .unwrap()
                    .last()
                    .unwrap()
                    .unwrap();
                let mut head = zorgmesh_protocol::audit::ChainHead {
                    sequence: last.sequence,
                    hash: last.hash(),
                };
                let mut frames = Vec::new();
                for n in 0..3 {
                    let (entry, next) = head.append(bounded_record(record(100 + n)));
                    push_frame(&mut frames, &entry.to_bytes());
                    head = next;
                }
                (frames, head)
            };
            bytes[end..end + entries.len()].copy_from_slice(&entries);
            let sector = match lost {
                "a middle sector" => (end / 512 + 2) * 512,
                _ => end,
            };
            let upto = ((sector / 512 + 1) * 512).min(end + entries.len());
            bytes[sector..upto].fill(0);
            let (path, _) = trail_file::trail_paths(dir.path());
            std::fs::write(&path, &bytes).unwrap();
            write_trail(dir.path(), 4).await;
            let report = verify::verify_dir(dir.path(), None).unwrap();
            assert!(report.is_intact(), "{lost}: {report}");
            assert_eq!(
                report.trail.entries,
                9 + kept,
                "{lost}: what cannot be read of the torn write is gone"
            );
        }
    }

    #[tokio::test]
    async fn bytes_beyond_one_write_after_the_end_are_damage_not_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        write_trail(dir.path(), 5).await;
        let (mut bytes, end) = layout(dir.path());
        let far = end + trail_file::MAX_WRITE_BYTES + 10;
        if bytes.len() < far + 1 {
            bytes.resize(far + 1, 0);
        }
        bytes[far] = 7;
        let (path, _) = trail_file::trail_paths(dir.path());
        std::fs::write(&path, &bytes).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let refused = AuditTrail::open(dir.path(), signer(), shutdown).unwrap_err();
        assert!(refused.to_string().contains("beyond the end"), "{refused}");
        // An entry altered into garbage right at the end is damage too (a crash leaves
        // zeros, not other bytes).
        let dir = tempfile::tempdir().unwrap();
        write_trail(dir.path(), 5).await;
        let (mut bytes, end) = layout(dir.path());
        let last_len = {
            let mut at = 0;
            let mut last = 0;
            while at < end {
                last = at;
                at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            }
            last
        };
        bytes[last_len + 4..end].fill(0xee);
        std::fs::write(path_of(dir.path()), &bytes).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let refused = AuditTrail::open(dir.path(), signer(), shutdown).unwrap_err();
        assert!(refused.to_string().contains("damaged"), "{refused}");
    }

    /// SPEC.md, "Golden vectors", "Access trail": the entries, and the file they make.
    const SPEC_ENTRY_1: &str = "0100000000000000000000000000000000000000000000000000000000000000000000000000000000a8da769b01000005000000000000000400000000000000756d636708000000000000003030303031323334013600000000000000687474703a2f2f666869722e6e6c2f666869722f4e616d696e6753797374656d2f757a692d6e722d706572737c313233343536373839060000000000000030312e30313509000000000000004a2e204a616e73656e010000000001d994d9719e73094e2b7c0587c23b569788f9013a6a407bf58c6599e7c002894a250000000000000032207265736f75726365733a204f62736572766174696f6e20312c2050617469656e7420310e0000000000000073657276656420746f20756d6367";
    const SPEC_ENTRY_2: &str = "0200000000000000337439df377f977c0741f459be9d1a300324a6b9485af1abb317072bcefc71a3e8abda769b0100000900000001000000000000000000000000000000000000000000001100000000000000474554202f666869722f50617469656e7407000000000000004d697373696e67";

    #[tokio::test]
    async fn the_trail_file_of_the_spec_vector() {
        let entries = [SPEC_ENTRY_1, SPEC_ENTRY_2].map(|h| hex::decode(h).unwrap());
        let records: Vec<AuditRecord> = entries
            .iter()
            .map(|bytes| AuditEntry::from_bytes(bytes).unwrap().record)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (trail, task) = AuditTrail::open(dir.path(), signer(), shutdown).unwrap();
        trail.append_all(records).await.unwrap();
        stop.send(true).unwrap();
        task.await.unwrap();
        let bytes = std::fs::read(path_of(dir.path())).unwrap();
        let mut expected = hex::decode("0000011b").unwrap();
        expected.extend_from_slice(&entries[0]);
        expected.extend_from_slice(&hex::decode("00000073").unwrap());
        expected.extend_from_slice(&entries[1]);
        assert_eq!(expected.len(), 406);
        assert_eq!(bytes.len(), 65_536);
        assert_eq!(hex::encode(&bytes[..406]), hex::encode(&expected));
        assert!(bytes[406..].iter().all(|b| *b == 0));
    }

    fn path_of(dir: &Path) -> std::path::PathBuf {
        trail_file::trail_paths(dir).0
    }
}
