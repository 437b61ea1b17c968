//! The trail on disk: two files of frames in `<data_dir>/audit/`.
//!
//! - `trail.log`: the entries, each framed as a 4-byte big-endian length and the entry's
//!   encoding (at most [`MAX_ENTRY_BYTES`]).
//! - `checkpoints.log`: the signed checkpoints, framed the same way.
//!
//! **Preallocated.** A file is grown ahead of its frames in zero-filled extents (doubling
//! from [`FIRST_EXTENT`] to [`MAX_EXTENT`], each written and synced once), and frames
//! overwrite the zeros in place: the `fdatasync` after a write then has no size or block
//! allocation to commit, only the data (one device write instead of two). The written part
//! of a file ends at the first zero length prefix (no frame is empty), or at the end of the
//! file.
//!
//! **Torn writes.** A write is at most [`MAX_WRITE_BYTES`] of whole frames followed by
//! `fdatasync`; a failed write is zeroed again, so a file never keeps a frame that was not
//! acknowledged, except after a crash in the middle of a write: then some of its sectors may
//! be on disk and others still zero. At the next open such a tail is recognised, and zeroed
//! (it was never acknowledged: the sync comes after the write), when the first frame that
//! cannot be read shows a zero sector (or is a zero length prefix) and nothing but zeros
//! lies more than one write beyond it. Anything else that cannot be read is damage: the
//! node does not continue a trail it cannot read.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zorgmesh_protocol::audit::{AuditEntry, ChainHead, SignedCheckpoint, MAX_ENTRY_BYTES};
use zorgmesh_protocol::codec;

/// The folder of the trail inside a data directory.
pub const AUDIT_DIR: &str = "audit";
/// The entries.
pub const TRAIL_FILE: &str = "trail.log";
/// The signed checkpoints.
pub const CHECKPOINT_FILE: &str = "checkpoints.log";
/// Largest encoded checkpoint.
pub const MAX_CHECKPOINT_BYTES: usize = 256;
/// Bytes of frames one write carries, at most (a larger group is written in several): the
/// reach of a write torn by a crash.
pub const MAX_WRITE_BYTES: usize = 256 * 1024;
/// The first zero-filled extent of a new file.
pub const FIRST_EXTENT: u64 = 64 * 1024;
/// The largest extent a file grows by at once.
pub const MAX_EXTENT: u64 = 8 * 1024 * 1024;
/// The granule of a torn write: a crash leaves each sector of a write whole or zero.
const SECTOR: u64 = 512;

/// Why the trail cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrailFileError {
    #[error("audit trail {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A frame before the end cannot be read: the file was damaged or edited.
    #[error("audit trail {path} is damaged at byte {offset}: {message}; 'zorgmesh audit verify --data DIR' says more; to go on, move the audit folder aside (keep it: it is evidence) and start the node again")]
    Damaged {
        path: String,
        offset: u64,
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrailFileError + '_ {
    move |source| TrailFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One frame read from a file.
pub enum Frame {
    /// A whole frame: its offset and bytes.
    Whole { offset: u64, bytes: Vec<u8> },
    /// The file ends inside a frame that starts at `offset`.
    Torn { offset: u64 },
    /// A length prefix beyond the bound.
    Oversized { offset: u64, length: u32 },
}

/// Reads the frames of a file, up to `limit` bytes of it or its first zero length prefix.
pub struct FrameReader {
    reader: BufReader<std::io::Take<File>>,
    offset: u64,
    max: usize,
    done: bool,
}

impl FrameReader {
    /// Frames of `path` up to byte `limit` (all of it: `u64::MAX`), each at most `max`.
    pub fn open(path: &Path, limit: u64, max: usize) -> Result<Self, TrailFileError> {
        let file = File::open(path).map_err(io_error(path))?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, file.take(limit)),
            offset: 0,
            max,
            done: false,
        })
    }
}

impl Iterator for FrameReader {
    type Item = std::io::Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let offset = self.offset;
        let mut prefix = [0u8; 4];
        match read_full(&mut self.reader, &mut prefix) {
            Ok(0) => return None,
            Ok(4) => {}
            Ok(_) => {
                self.done = true;
                return Some(Ok(Frame::Torn { offset }));
            }
            Err(e) => return Some(Err(e)),
        }
        let length = u32::from_be_bytes(prefix);
        if length == 0 {
            // The end of the written part (the zeros of a preallocated extent).
            self.done = true;
            return None;
        }
        if length as usize > self.max {
            self.done = true;
            return Some(Ok(Frame::Oversized { offset, length }));
        }
        let mut bytes = vec![0u8; length as usize];
        match read_full(&mut self.reader, &mut bytes) {
            Ok(n) if n == bytes.len() => {
                self.offset += 4 + u64::from(length);
                Some(Ok(Frame::Whole { offset, bytes }))
            }
            Ok(_) => {
                self.done = true;
                Some(Ok(Frame::Torn { offset }))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Appends `bytes` (never empty: a zero length ends a file's written part) as one frame to
/// `out`.
pub fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(!bytes.is_empty());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// An append-only file of frames, open for writing.
pub struct AppendFile {
    path: PathBuf,
    file: File,
    /// Bytes of frames acknowledged (where the next write goes).
    len: u64,
    /// Bytes of the file (zeros after `len`).
    allocated: u64,
    /// Set when a failed write could not be zeroed again: nothing more is written.
    broken: bool,
}

/// Whether `bytes` holds no 1 bit.
fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Reads `[from, to)` of `file` (clipped to its length) in pieces, handing each to `each`
/// with its offset; stops early when `each` says so.
fn scan(
    file: &File,
    from: u64,
    to: u64,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        if !each(at, &buf[..n]) {
            break;
        }
        at += n as u64;
    }
    Ok(())
}

/// Whether `[from, to)` of `file` is all zeros.
fn zeros_between(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut zero = true;
    scan(file, from, to, |_, piece| {
        zero = all_zero(piece);
        zero
    })?;
    Ok(zero)
}

/// Whether `[from, to)` of `file` has a whole zero sector, or ends in a zero part of one: the
/// mark a crash leaves in a write it cut short.
fn has_zero_sector(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut sector = from.div_ceil(SECTOR) * SECTOR;
    while sector < to {
        let end = (sector + SECTOR).min(to);
        // A short run at the very end of a frame is no mark (an encoding may end in zeros).
        if end - sector >= 8 && zeros_between(file, sector, end)? {
            return Ok(true);
        }
        sector += SECTOR;
    }
    Ok(false)
}

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Why the frames of a file stop before its end: a frame that cannot be read.
struct Stop {
    offset: u64,
    /// How far the unreadable frame claims to reach.
    claimed_end: u64,
    message: String,
}

impl AppendFile {
    /// Opens (or creates) `path`, zeroes a tail torn by a crash, and hands each whole frame's
    /// bytes to `each` (which says why a frame is not acceptable). A frame that cannot be
    /// read, other than in a torn tail, is an error.
    fn open(
        path: &Path,
        max: usize,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Self, TrailFileError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let total = file.metadata().map_err(io_error(path))?.len();
        let mut good = 0u64;
        let mut stop: Option<Stop> = None;
        for frame in FrameReader::open(path, u64::MAX, max)? {
            match frame.map_err(io_error(path))? {
                Frame::Whole { offset, bytes } => {
                    if let Err(message) = each(offset, &bytes) {
                        stop = Some(Stop {
                            offset,
                            claimed_end: offset + 4 + bytes.len() as u64,
                            message,
                        });
                        break;
                    }
                    good = offset + 4 + bytes.len() as u64;
                }
                Frame::Torn { offset } => {
                    stop = Some(Stop {
                        offset,
                        claimed_end: total,
                        message: "the file ends inside a frame".into(),
                    });
                }
                Frame::Oversized { offset, length } => {
                    stop = Some(Stop {
                        offset,
                        claimed_end: offset + 4,
                        message: format!("a frame claims {length} bytes, more than any entry"),
                    });
                }
            }
        }
        let damaged = |offset: u64, message: String| TrailFileError::Damaged {
            path: path.display().to_string(),
            offset,
            message,
        };
        // What lies beyond the last whole frame: zeros, the remains of one torn write, or
        // damage.
        let reach = good + MAX_WRITE_BYTES as u64;
        let beyond_is_clear = zeros_between(&file, reach, total).map_err(io_error(path))?;
        let torn = match &stop {
            Some(stop) => {
                let torn_mark = has_zero_sector(&file, stop.offset, stop.claimed_end.min(total))
                    .map_err(io_error(path))?
                    || stop.claimed_end >= total;
                if !(beyond_is_clear && torn_mark) {
                    return Err(damaged(stop.offset, stop.message.clone()));
                }
                true
            }
            None => {
                if !beyond_is_clear {
                    return Err(damaged(
                        good,
                        "bytes lie beyond the end of the trail's frames".into(),
                    ));
                }
                !zeros_between(&file, good, reach.min(total)).map_err(io_error(path))?
            }
        };
        if torn {
            let cut_to = reach.min(total);
            tracing::warn!(path = %path.display(), offset = good, cut = cut_to - good, "the audit trail ends in a write cut short by a crash (never acknowledged): zeroing it");
            write_zeros(&file, good, cut_to).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: good,
            allocated: total,
            broken: false,
        })
    }

    /// Grows the file with zero-filled extents until `needed` bytes fit, and syncs them.
    fn allocate(&mut self, needed: u64) -> std::io::Result<()> {
        if needed <= self.allocated {
            return Ok(());
        }
        let mut target = self.allocated;
        while target < needed {
            target += target.clamp(FIRST_EXTENT, MAX_EXTENT);
        }
        write_zeros(&self.file, self.allocated, target)?;
        self.file.sync_data()?;
        self.allocated = target;
        Ok(())
    }

    /// Writes `frames` (whole frames, at most [`MAX_WRITE_BYTES`]) and syncs them to disk. On
    /// failure the bytes are zeroed again, so the file holds nothing that was not
    /// acknowledged.
    pub fn append_durably(&mut self, frames: &[u8]) -> Result<(), TrailFileError> {
        debug_assert!(frames.len() <= MAX_WRITE_BYTES);
        if self.broken {
            return Err(io_error(&self.path)(std::io::Error::other(
                "an earlier failed write could not be undone; restart the node",
            )));
        }
        let end = self.len + frames.len() as u64;
        let written = self
            .allocate(end)
            .and_then(|()| self.file.write_all_at(frames, self.len))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let undone = write_zeros(&self.file, self.len, end.min(self.allocated))
                .and_then(|()| self.file.sync_data());
            if undone.is_err() {
                self.broken = true;
            }
            return Err(io_error(&self.path)(e));
        }
        self.len = end;
        Ok(())
    }

    /// Bytes acknowledged so far.
    pub fn acknowledged_bytes(&self) -> u64 {
        self.len
    }
}

/// The trail's two files, open for appending, and where the chain stands.
pub struct TrailFiles {
    pub entries: AppendFile,
    pub checkpoints: AppendFile,
    /// The last entry.
    pub head: ChainHead,
    /// The last checkpoint's sequence (0: none).
    pub checkpointed: u64,
}

/// The paths of a data directory's trail.
pub fn trail_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join(AUDIT_DIR);
    (dir.join(TRAIL_FILE), dir.join(CHECKPOINT_FILE))
}

impl TrailFiles {
    /// Opens the trail of `data_dir` (creating it), finding its head. An entry that does
    /// not decode, or a chain whose sequence does not rise by one, stops the open: the
    /// node does not append to a trail it cannot continue (`audit verify` names the
    /// damage).
    pub fn open(data_dir: &Path) -> Result<Self, TrailFileError> {
        let dir = data_dir.join(AUDIT_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let (trail_path, checkpoint_path) = trail_paths(data_dir);
        let mut head = ChainHead::default();
        let entries = AppendFile::open(&trail_path, MAX_ENTRY_BYTES, |_, bytes| {
            let entry = AuditEntry::from_bytes(bytes)
                .map_err(|e| format!("an entry does not decode: {e}"))?;
            if entry.sequence != head.sequence + 1 {
                return Err(format!(
                    "entry {} follows entry {}",
                    entry.sequence, head.sequence
                ));
            }
            head = ChainHead {
                sequence: entry.sequence,
                hash: entry.hash(),
            };
            Ok(())
        })?;
        let mut checkpointed = 0;
        let checkpoints = AppendFile::open(&checkpoint_path, MAX_CHECKPOINT_BYTES, |_, bytes| {
            let checkpoint: SignedCheckpoint = codec::decode(bytes, MAX_CHECKPOINT_BYTES)
                .map_err(|e| format!("a checkpoint does not decode: {e}"))?;
            checkpointed = checkpointed.max(checkpoint.checkpoint.sequence);
            Ok(())
        })?;
        if checkpointed > head.sequence {
            return Err(TrailFileError::Damaged {
                path: trail_path.display().to_string(),
                offset: entries.acknowledged_bytes(),
                message: format!(
                    "the trail ends at entry {}, but the node signed a checkpoint at entry {checkpointed}: entries at its end were removed",
                    head.sequence
                ),
            });
        }
        Ok(Self {
            entries,
            checkpoints,
            head,
            checkpointed,
        })
    }
}

/// Reads the entries of a trail up to byte `limit`, decoding each; stops at the first frame
/// that cannot be read (a torn end is not an error).
pub fn read_entries(
    path: &Path,
    limit: u64,
) -> Result<impl Iterator<Item = Result<AuditEntry, TrailFileError>>, TrailFileError> {
    let reader = FrameReader::open(path, limit, MAX_ENTRY_BYTES)?;
    let path = path.to_path_buf();
    Ok(reader.map_while(move |frame| match frame {
        Ok(Frame::Whole { offset, bytes }) => {
            Some(
                AuditEntry::from_bytes(&bytes).map_err(|e| TrailFileError::Damaged {
                    path: path.display().to_string(),
                    offset,
                    message: format!("an entry does not decode: {e}"),
                }),
            )
        }
        Ok(Frame::Torn { .. }) => None,
        Ok(Frame::Oversized { offset, length }) => Some(Err(TrailFileError::Damaged {
            path: path.display().to_string(),
            offset,
            message: format!("a frame claims {length} bytes, more than any entry"),
        })),
        Err(e) => Some(Err(io_error(&path)(e))),
    }))
}
