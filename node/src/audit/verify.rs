//! `zorgmesh audit verify`: checks a data directory's trail against its signed checkpoints,
//! reading the files only (the node may be running: its trail is append-only).

use super::trail_file::{self, Frame, FrameReader, TrailFileError, MAX_CHECKPOINT_BYTES};
use std::collections::BTreeSet;
use std::path::Path;
use zorgmesh_protocol::audit::{SignedCheckpoint, TrailProblem, TrailReport, TrailVerifier};
use zorgmesh_protocol::locator::NodeId;

/// What `audit verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    /// The chain checked against the checkpoints.
    pub trail: TrailReport,
    /// The keys that signed checkpoints.
    pub signers: BTreeSet<NodeId>,
    /// Checkpoints signed by a key the caller did not name as the node's (by sequence).
    pub foreign_checkpoints: Vec<(u64, NodeId)>,
    /// Frames that cannot be read: (file, byte offset, what).
    pub unreadable: Vec<(String, u64, String)>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.trail.is_intact() && self.foreign_checkpoints.is_empty() && self.unreadable.is_empty()
    }

    /// The problems, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .unreadable
            .iter()
            .map(|(file, offset, what)| format!("{file} at byte {offset}: {what}"))
            .collect();
        out.extend(self.trail.problems.iter().map(TrailProblem::to_string));
        if self.trail.more_problems > 0 {
            out.push(format!("... and {} more", self.trail.more_problems));
        }
        out.extend(self.foreign_checkpoints.iter().map(|(sequence, key)| {
            format!(
                "the checkpoint at entry {sequence} is signed by key {}, which is not this node's",
                key.to_hex()
            )
        }));
        out
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = &self.trail.head;
        if self.is_intact() {
            writeln!(
                f,
                "access trail intact: {} entries, head {} (entry {}), {} signed checkpoints",
                self.trail.entries,
                hex::encode(head.hash),
                head.sequence,
                self.trail.checkpoints
            )?;
        } else {
            writeln!(
                f,
                "access trail NOT intact ({} entries read, {} checkpoints):",
                self.trail.entries, self.trail.checkpoints
            )?;
            for problem in self.problems() {
                writeln!(f, "  - {problem}")?;
            }
        }
        for signer in &self.signers {
            writeln!(f, "checkpoints signed by node key {}", signer.to_hex())?;
        }
        Ok(())
    }
}

/// Verifies the trail in `data_dir/audit`. With `node_keys`, a checkpoint signed by any
/// other key is a problem.
pub fn verify_dir(
    data_dir: &Path,
    node_keys: Option<&BTreeSet<NodeId>>,
) -> Result<VerifyReport, TrailFileError> {
    let (trail_path, checkpoint_path) = trail_file::trail_paths(data_dir);
    if !trail_path.exists() {
        return Err(TrailFileError::Io {
            path: trail_path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no access trail here"),
        });
    }
    let mut unreadable = Vec::new();
    let mut checkpoints: Vec<SignedCheckpoint> = Vec::new();
    if checkpoint_path.exists() {
        for frame in FrameReader::open(&checkpoint_path, u64::MAX, MAX_CHECKPOINT_BYTES)? {
            let frame = frame.map_err(|source| TrailFileError::Io {
                path: checkpoint_path.display().to_string(),
                source,
            })?;
            match frame {
                Frame::Whole { offset, bytes } => {
                    match zorgmesh_protocol::codec::decode(&bytes, MAX_CHECKPOINT_BYTES) {
                        Ok(checkpoint) => checkpoints.push(checkpoint),
                        Err(e) => unreadable.push((
                            trail_file::CHECKPOINT_FILE.to_owned(),
                            offset,
                            format!("a checkpoint does not decode ({e})"),
                        )),
                    }
                }
                Frame::Torn { .. } => {}
                Frame::Oversized { offset, length } => {
                    unreadable.push((
                        trail_file::CHECKPOINT_FILE.to_owned(),
                        offset,
                        format!("a frame claims {length} bytes"),
                    ));
                }
            }
        }
    }
    checkpoints.sort_by_key(|c| c.checkpoint.sequence);
    let signers: BTreeSet<NodeId> = checkpoints
        .iter()
        .filter(|c| c.verifies())
        .map(|c| c.checkpoint.node)
        .collect();
    let foreign_checkpoints = match node_keys {
        Some(keys) => checkpoints
            .iter()
            .filter(|c| c.verifies() && !keys.contains(&c.checkpoint.node))
            .map(|c| (c.checkpoint.sequence, c.checkpoint.node))
            .collect(),
        None => Vec::new(),
    };
    let mut verifier = TrailVerifier::new(&checkpoints);
    let mut previous_sequence = 0;
    for frame in FrameReader::open(
        &trail_path,
        u64::MAX,
        zorgmesh_protocol::audit::MAX_ENTRY_BYTES,
    )? {
        let frame = frame.map_err(|source| TrailFileError::Io {
            path: trail_path.display().to_string(),
            source,
        })?;
        match frame {
            Frame::Whole { offset, bytes } => {
                match zorgmesh_protocol::audit::AuditEntry::from_bytes(&bytes) {
                    Ok(entry) => {
                        previous_sequence = entry.sequence;
                        verifier.push(&entry);
                    }
                    Err(e) => unreadable.push((
                        trail_file::TRAIL_FILE.to_owned(),
                        offset,
                        format!(
                            "the entry after entry {previous_sequence} does not decode: it was altered ({e})"
                        ),
                    )),
                }
            }
            Frame::Torn { offset } => unreadable.push((
                trail_file::TRAIL_FILE.to_owned(),
                offset,
                "the trail ends inside an entry (a write cut short, or the end was cut off)"
                    .into(),
            )),
            Frame::Oversized { offset, length } => {
                unreadable.push((
                    trail_file::TRAIL_FILE.to_owned(),
                    offset,
                    format!("a frame claims {length} bytes, more than any entry: the rest cannot be read"),
                ));
            }
        }
    }
    Ok(VerifyReport {
        trail: verifier.finish(),
        signers,
        foreign_checkpoints,
        unreadable,
    })
}
