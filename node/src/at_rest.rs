//! Files at rest: the node's data directory and everything in it are its owner's alone
//! (0700 directories, 0600 files), and a key file others can read is refused at start, the
//! way ssh refuses a private key with open permissions.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// From now on, files and directories this process creates are its owner's alone (umask
/// 077): sled's files, snapshots and blobs included.
pub fn restrict_new_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` owner-only, or makes an existing one and everything in it owner-only
/// (directories 0700, files 0600), saying what it changed.
pub fn secure_data_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut changed = 0usize;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.file_type().is_symlink() {
            continue;
        }
        let wanted = if metadata.is_dir() { 0o700 } else { 0o600 };
        if metadata.permissions().mode() & 0o777 != wanted {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
            changed += 1;
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)
                .with_context(|| format!("cannot list {}", path.display()))?
            {
                pending.push(entry?.path());
            }
        }
    }
    if changed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            changed,
            "the data directory was readable by others: it and its files are owner-only now"
        );
    }
    Ok(())
}

/// Refuses a private file (a node key, an OPRF key share) that group or others may read or
/// write.
pub fn check_private_file(path: &Path) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "permissions {mode:04o} for {} are too open: a private key must be readable by its owner only; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}
