//! The store check: opening the engine without letting its failures escape as panics, and
//! reading every record of every tree against its checksum, its tree's state and the seal.
//! The node runs it at every start (and refuses a damaged store); `zorgmesh node check`
//! runs it on a stopped node's directory.

use super::engine::{Engine, EngineKind, OpenFailure};
use super::seal;
use super::sealed_tree::{SealedTree, TreeCheck, TreeState};
use super::StorageError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The trees of a store, in a fixed order.
pub const TREE_NAMES: [&str; 7] = [
    "fhir",
    "own_log",
    "own_snapshot",
    "remote_log",
    "remote_snapshots",
    "oprf_audit",
    "trust",
];

/// What a check of a whole store found.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The data directory.
    pub dir: PathBuf,
    /// Each tree's findings.
    pub trees: Vec<(&'static str, TreeCheck)>,
    /// Problems found against the seal (or with the seal itself).
    pub seal_damage: Vec<String>,
    /// True when the store has no seal and no tree has a state: it is new, or it was
    /// written before records carried checksums (opening it upgrades it).
    pub unsealed: bool,
    /// How long the check took.
    pub elapsed: Duration,
}

impl CheckReport {
    /// True when anything is damaged.
    pub fn is_damaged(&self) -> bool {
        !self.seal_damage.is_empty() || self.trees.iter().any(|(_, t)| t.damaged_total > 0)
    }

    /// Records read.
    pub fn records(&self) -> u64 {
        self.trees.iter().map(|(_, t)| t.records).sum()
    }

    /// Bytes read.
    pub fn bytes(&self) -> u64 {
        self.trees.iter().map(|(_, t)| t.bytes).sum()
    }

    /// Every problem, one line each.
    pub fn damage(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .trees
            .iter()
            .flat_map(|(_, t)| {
                let mut lines = t.damage.clone();
                let more = t.damaged_total.saturating_sub(t.damage.len() as u64);
                if more > 0 {
                    lines.push(format!("… and {more} more in this tree"));
                }
                lines
            })
            .collect();
        out.extend(self.seal_damage.iter().cloned());
        out
    }

    /// A combined digest of every tree's content (equal digests: equal content).
    pub fn content_digest(&self) -> String {
        let states: Vec<(&str, TreeState)> = self
            .trees
            .iter()
            .map(|(name, t)| (*name, t.state.unwrap_or_default()))
            .collect();
        content_digest_of(&states)
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_damaged() {
            writeln!(
                f,
                "the store in {} is damaged and will not be served:",
                self.dir.display()
            )?;
            for line in self.damage() {
                writeln!(f, "  - {line}")?;
            }
            write!(
                f,
                "restore the newest backup ('zorgmesh node restore', see the README's \"Backup and restore\"); \
                 the node learns what it signed since from its peers"
            )
        } else {
            write!(
                f,
                "the store in {} is sound: {} records, {} bytes, checked in {} ms",
                self.dir.display(),
                self.records(),
                self.bytes(),
                self.elapsed.as_millis()
            )
        }
    }
}

/// A combined digest of trees' contents: their names, record counts and digests.
pub fn content_digest_of(states: &[(&str, TreeState)]) -> String {
    let parts: Vec<String> = states
        .iter()
        .map(|(name, state)| format!("{name}:{}:{:016x}", state.records, state.digest))
        .collect();
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(parts.join(",").as_bytes())
    )
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".into())
}

/// Opens the engine and its trees. The engine's own refusals (and panics, which sled 0.34
/// raises on some damaged files) become a [`StorageError`] that names the directory.
pub fn open_engine(
    dir: &Path,
    kind: EngineKind,
) -> Result<(Engine, [SealedTree; 7]), StorageError> {
    let unavailable = |message: String| StorageError::Unavailable {
        dir: dir.display().to_string(),
        message,
    };
    let damaged = |what: String| {
        unavailable(format!(
            "the {kind} storage engine cannot read it, the store is damaged: {what}; restore the newest backup ('zorgmesh node restore')"
        ))
    };
    let opened = std::panic::catch_unwind(|| -> Result<_, StorageError> {
        let engine = match Engine::open(dir, kind) {
            Ok(engine) => engine,
            Err(OpenFailure::InUse(e)) => {
                return Err(unavailable(format!(
                    "it is in use by another process (a running node?): {e}"
                )))
            }
            Err(OpenFailure::Io(e)) => return Err(unavailable(e)),
            Err(OpenFailure::Damaged(e)) => return Err(damaged(e)),
        };
        let mut trees = Vec::with_capacity(TREE_NAMES.len());
        for name in TREE_NAMES {
            trees.push(SealedTree::open(&engine, name).map_err(|e| damaged(e.to_string()))?);
        }
        let trees: [SealedTree; 7] = trees
            .try_into()
            .unwrap_or_else(|_| unreachable!("one tree per name"));
        Ok((engine, trees))
    });
    match opened {
        Ok(result) => result,
        Err(panic) => Err(damaged(format!(
            "it failed reading it ({})",
            panic_text(panic.as_ref())
        ))),
    }
}

/// Checks every tree and compares each with the seal.
pub fn inspect(dir: &Path, trees: &[SealedTree; 7], started: Instant) -> CheckReport {
    let checks: Vec<(&'static str, TreeCheck)> = trees
        .iter()
        .map(|tree| {
            let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tree.check()))
                .unwrap_or_else(|panic| {
                    let mut check = TreeCheck::default();
                    check.damage.push(format!(
                        "{}: the storage engine failed reading it ({})",
                        tree.name(),
                        panic_text(panic.as_ref())
                    ));
                    check.damaged_total = 1;
                    check
                });
            (tree.name(), check)
        })
        .collect();
    let mut seal_damage = Vec::new();
    let mut unsealed = false;
    match seal::read_seal(dir) {
        Err(message) => seal_damage.push(message),
        Ok(None) => {
            if checks.iter().any(|(_, c)| c.state.is_some()) {
                seal_damage.push(format!(
                    "the seal file {} is missing",
                    seal::seal_path(dir).display()
                ));
            } else {
                unsealed = true;
            }
        }
        Ok(Some(sealed)) => {
            for (name, check) in &checks {
                if check.state.is_none() && check.records > 0 {
                    seal_damage.push(format!("{name}: its state record is missing"));
                }
                if let Some(state) = sealed.get(*name) {
                    if let Some(problem) = seal::compare_with_seal(name, check.state, *state) {
                        seal_damage.push(problem);
                    }
                }
            }
        }
    }
    CheckReport {
        dir: dir.to_path_buf(),
        trees: checks,
        seal_damage,
        unsealed,
        elapsed: started.elapsed(),
    }
}
