//! The trail on disk: two append-only files in `<data_dir>/audit/`.
//!
//! - `trail.log`: the entries, each framed as a 4-byte big-endian length and the entry's
//!   encoding (at most [`MAX_ENTRY_BYTES`]).
//! - `checkpoints.log`: the signed checkpoints, framed the same way.
//!
//! A write is a whole group of frames followed by `fdatasync`; a failed write is cut off
//! again, so a file never keeps a frame that was not acknowledged, except that a crash in
//! the middle of a write can leave a torn last frame, which the next open cuts off (it was
//! never acknowledged: the sync comes after the write).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
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

/// Reads the frames of a file, up to `limit` bytes of it.
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

/// Appends `bytes` as one frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// An append-only file of frames, open for writing.
pub struct AppendFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl AppendFile {
    /// Opens (or creates) `path`, cuts off a torn last frame, and hands each whole frame's
    /// bytes to `each`. A frame that cannot be read before the end is an error.
    fn open(
        path: &Path,
        max: usize,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Self, TrailFileError> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        let total = file.metadata().map_err(io_error(path))?.len();
        let mut good = 0u64;
        for frame in FrameReader::open(path, u64::MAX, max)? {
            match frame.map_err(io_error(path))? {
                Frame::Whole { offset, bytes } => {
                    each(offset, &bytes).map_err(|message| TrailFileError::Damaged {
                        path: path.display().to_string(),
                        offset,
                        message,
                    })?;
                    good = offset + 4 + bytes.len() as u64;
                }
                Frame::Torn { offset } => {
                    tracing::warn!(path = %path.display(), offset, cut = total - offset, "the audit trail ends in a torn frame (a write cut short by a crash, never acknowledged): cutting it off");
                }
                Frame::Oversized { offset, length } => {
                    return Err(TrailFileError::Damaged {
                        path: path.display().to_string(),
                        offset,
                        message: format!("a frame claims {length} bytes, more than any entry"),
                    })
                }
            }
        }
        if good < total {
            file.set_len(good).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: good,
        })
    }

    /// Writes `frames` (whole frames) and syncs them to disk. On failure the file is cut
    /// back to where it was, so it holds nothing that was not acknowledged.
    pub fn append_durably(&mut self, frames: &[u8]) -> Result<(), TrailFileError> {
        let written = self
            .file
            .write_all(frames)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(io_error(&self.path)(e));
        }
        self.len += frames.len() as u64;
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
