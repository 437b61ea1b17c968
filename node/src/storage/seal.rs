//! The seal: a small file beside the engine's files that records, per tree, the newest
//! state known to be on disk. Engines recover from a damaged log by going back to the last
//! commit they can read, which would silently drop every write after the damage; a tree
//! whose commit counter is below its sealed one is therefore damaged.
//!
//! The node writes the seal after a flush (so it never claims more than the disk holds):
//! about once a second while writes happen, and when the store closes. A crash can leave
//! the seal behind the store (fine: the store may be ahead), never ahead of it.
//!
//! Format (text, owner-only): one JSON line
//! `{"format":1,"trees":{"fhir":{"generation":7,"digest":"00ab…","records":12},…}}`
//! and a second line `xxh3:` + the XXH3-64 of the first line in hex.

use super::sealed_tree::TreeState;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The seal file's name inside the data directory.
pub const SEAL_FILE: &str = "zorgmesh.seal";
const SEAL_FORMAT: u64 = 1;
/// A seal file larger than this is not ours.
const MAX_SEAL_BYTES: u64 = 64 * 1024;

/// Sealed state per tree name.
pub type Seal = BTreeMap<String, TreeState>;

/// The seal's path in a data directory.
pub fn seal_path(dir: &Path) -> PathBuf {
    dir.join(SEAL_FILE)
}

/// Reads the seal: `Ok(None)` when there is none, `Err` saying what is wrong when there is
/// one that cannot be read.
pub fn read_seal(dir: &Path) -> Result<Option<Seal>, String> {
    let path = seal_path(dir);
    let metadata = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if metadata.len() > MAX_SEAL_BYTES {
        return Err(format!(
            "{} is {} bytes: not a seal",
            path.display(),
            metadata.len()
        ));
    }
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let damaged = || format!("{} is damaged", path.display());
    let text = std::str::from_utf8(&text).map_err(|_| damaged())?;
    let mut lines = text.lines();
    let (Some(body), Some(check), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err(damaged());
    };
    let expected = format!("xxh3:{:016x}", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
    if check != expected {
        return Err(damaged());
    }
    let value: serde_json::Value = serde_json::from_str(body).map_err(|_| damaged())?;
    if value.get("format").and_then(serde_json::Value::as_u64) != Some(SEAL_FORMAT) {
        return Err(format!(
            "{} has a format this zorgmesh does not know",
            path.display()
        ));
    }
    let trees = value
        .get("trees")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(damaged)?;
    let mut seal = Seal::new();
    for (name, tree) in trees {
        let number = |field: &str| tree.get(field).and_then(serde_json::Value::as_u64);
        let digest = tree
            .get("digest")
            .and_then(serde_json::Value::as_str)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        let (Some(generation), Some(records), Some(digest)) =
            (number("generation"), number("records"), digest)
        else {
            return Err(damaged());
        };
        seal.insert(
            name.clone(),
            TreeState {
                generation,
                digest,
                records,
            },
        );
    }
    Ok(Some(seal))
}

/// Writes the seal durably: a temporary file, fsync, rename, fsync of the directory.
pub fn write_seal(dir: &Path, seal: &Seal) -> std::io::Result<()> {
    let trees: serde_json::Map<String, serde_json::Value> = seal
        .iter()
        .map(|(name, state)| {
            (
                name.clone(),
                serde_json::json!({
                    "generation": state.generation,
                    "digest": format!("{:016x}", state.digest),
                    "records": state.records,
                }),
            )
        })
        .collect();
    let body = serde_json::json!({"format": SEAL_FORMAT, "trees": trees}).to_string();
    let text = format!(
        "{body}\nxxh3:{:016x}\n",
        xxhash_rust::xxh3::xxh3_64(body.as_bytes())
    );
    let temporary = dir.join(format!("{SEAL_FILE}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .mode(0o600)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, seal_path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// What a tree's state says against its seal: `None` when they agree (the tree may be
/// ahead of the seal), or what is wrong.
pub fn compare_with_seal(
    name: &str,
    state: Option<TreeState>,
    sealed: TreeState,
) -> Option<String> {
    let state = state.unwrap_or_default();
    if state.generation < sealed.generation {
        return Some(format!(
            "{name}: the store went back from commit {} to commit {}: the engine lost the writes in between",
            sealed.generation, state.generation
        ));
    }
    if state.generation == sealed.generation && state != sealed {
        return Some(format!(
            "{name}: commit {} differs from the sealed commit of the same number",
            state.generation
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_reads_back_and_a_changed_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_seal(dir.path()).unwrap(), None);
        let seal = Seal::from([(
            "fhir".to_owned(),
            TreeState {
                generation: 7,
                digest: 0xdead_beef,
                records: 3,
            },
        )]);
        write_seal(dir.path(), &seal).unwrap();
        assert_eq!(read_seal(dir.path()).unwrap(), Some(seal));
        let path = seal_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_seal(dir.path()).unwrap_err().contains("damaged"));
    }

    #[test]
    fn a_tree_behind_its_seal_is_damaged_and_one_ahead_is_not() {
        let sealed = TreeState {
            generation: 5,
            digest: 1,
            records: 1,
        };
        let behind = TreeState {
            generation: 4,
            ..sealed
        };
        let ahead = TreeState {
            generation: 6,
            digest: 9,
            records: 2,
        };
        assert!(compare_with_seal("fhir", Some(behind), sealed)
            .unwrap()
            .contains("from commit 5 to commit 4"));
        assert_eq!(compare_with_seal("fhir", Some(ahead), sealed), None);
        assert_eq!(compare_with_seal("fhir", Some(sealed), sealed), None);
        assert!(compare_with_seal("fhir", None, sealed).is_some());
    }
}
