//! Storage integrity as an operator meets it: a store damaged on disk is refused with a
//! clear error naming what is damaged, never served in part; `zorgmesh node check`,
//! `node backup` and `node restore` as the binary runs them.
//!
//! The sweep flips one bit at a time at seeded offsets in every file of a stopped node's
//! store and runs `zorgmesh node check` (the same check the node runs at start) on each
//! copy. Every flip must either be reported as damage, or leave the content exactly as it
//! was (same content digest: the bit was in free space the engine never reads).

use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use zorgmesh_node::storage::{EngineKind, Storage};
use zorgmesh_node::synth::{self, CareKind, Institution};

fn zorgmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zorgmesh"))
        .args(args)
        .output()
        .expect("run zorgmesh")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The content digest `zorgmesh node check` prints for a sound store.
fn content_digest(output: &Output) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("content digest ").map(str::to_owned))
}

/// A store like a node's after a day's work: synthetic patients' resources in several
/// versions, own batches, a snapshot, other publishers' messages, trust material.
async fn populated_store(dir: &Path, engine: EngineKind) {
    let storage = Storage::open_with(dir, engine).unwrap();
    let institutions = [Institution {
        node: "umcg".into(),
        organisation_name: "UMCG".into(),
        ura: "00001001".into(),
        region: "noord".into(),
        kind: CareKind::Hospital,
    }];
    let patients = synth::generate(7, 40, &institutions);
    let mut written: Vec<(String, String)> = Vec::new();
    for (p, patient) in patients.iter().enumerate() {
        let ((), _) = storage
            .write(1_000 + p as u64, |tx| {
                for (_, bundle) in &patient.records {
                    for (e, entry) in bundle["entry"].as_array().unwrap().iter().enumerate() {
                        let mut resource = entry["resource"].clone();
                        let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
                        let id = format!("p{p}-{e}");
                        resource["id"] = json!(id);
                        tx.put(&resource_type, &id, resource)?;
                        written.push((resource_type, id));
                    }
                }
                Ok::<(), zorgmesh_node::storage::StorageError>(())
            })
            .await
            .unwrap();
    }
    // Second versions and deletions.
    for pair in written.chunks(17).take(12) {
        let [(changed_type, changed), (deleted_type, deleted), ..] = pair else {
            continue;
        };
        storage
            .write(9_000, |tx| {
                let mut current = tx
                    .current(changed_type, changed)?
                    .unwrap()
                    .resource
                    .unwrap();
                current["language"] = json!("nl");
                tx.put(changed_type, changed, current)?;
                tx.delete(deleted_type, deleted).map(|_| ())
            })
            .await
            .unwrap();
    }
    for sequence in 1..=30u64 {
        let batch = vec![sequence as u8; 300 + 40 * sequence as usize];
        storage
            .append_own_batch(sequence, &batch, &[])
            .await
            .unwrap();
    }
    storage
        .compact_own_log(&[vec![1; 5_000], vec![2; 70_000]], 20)
        .await
        .unwrap();
    for sequence in 1..=25u64 {
        storage
            .append_remote(&[9; 32], sequence, &vec![7; 200 + sequence as usize])
            .unwrap();
    }
    storage
        .store_remote_snapshot(&[9; 32], b"record", &[vec![3; 9_000]], 10)
        .unwrap();
    storage.store_revocations(b"revocation list").unwrap();
    assert!(written.len() > 300, "{}", written.len());
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Flips per file (more in the engine's large files): half anywhere in the file, half among
/// its non-zero bytes (where the engine's data is).
const FLIPS_PER_FILE: usize = 24;
const FLIPS_PER_LARGE_FILE: usize = 64;

#[tokio::test]
async fn every_bit_flip_in_every_file_of_a_sled_store_is_found_or_changes_nothing() {
    bit_flip_sweep(EngineKind::Sled).await;
}

#[tokio::test]
async fn every_bit_flip_in_every_file_of_a_redb_store_is_found_or_changes_nothing() {
    bit_flip_sweep(EngineKind::Redb).await;
}

#[tokio::test]
async fn every_bit_flip_in_every_file_of_a_fjall_store_is_found_or_changes_nothing() {
    bit_flip_sweep(EngineKind::Fjall).await;
}

async fn bit_flip_sweep(engine: EngineKind) {
    let scratch = tempfile::tempdir().unwrap();
    let pristine = scratch.path().join("pristine");
    populated_store(&pristine, engine).await;
    let baseline = zorgmesh(&["node", "check", "--data-dir", s(&pristine)]);
    assert!(baseline.status.success(), "{}", text(&baseline));
    let digest = content_digest(&baseline).expect("a sound store prints its digest");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed_b17f);
    let mut detected = 0;
    let mut harmless = 0;
    let mut silent = Vec::new();
    let files = files_of(&pristine);
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let relative = file.strip_prefix(&pristine).unwrap().to_path_buf();
        let bytes = std::fs::read(file).unwrap();
        if bytes.is_empty() {
            continue;
        }
        let nonzero: Vec<usize> = (0..bytes.len()).filter(|i| bytes[*i] != 0).collect();
        let flips = if bytes.len() >= 256 * 1024 {
            FLIPS_PER_LARGE_FILE
        } else {
            FLIPS_PER_FILE
        };
        for flip in 0..flips {
            let offset = if flip % 2 == 0 || nonzero.is_empty() {
                rng.gen_range(0..bytes.len())
            } else {
                nonzero[rng.gen_range(0..nonzero.len())]
            };
            let bit = 1u8 << rng.gen_range(0..8);
            let copy = scratch.path().join(format!("flip-{detected}-{harmless}"));
            copy_dir(&pristine, &copy);
            let mut damaged = bytes.clone();
            damaged[offset] ^= bit;
            std::fs::write(copy.join(&relative), &damaged).unwrap();
            let checked = zorgmesh(&["node", "check", "--data-dir", s(&copy)]);
            let said = text(&checked);
            let what = format!("{} offset {offset} bit {bit:#04x}", relative.display());
            if !checked.status.success() {
                assert!(
                    said.contains("damaged") && said.contains("restore the newest backup"),
                    "{what}: not a clear refusal: {said}"
                );
                if flip < 2 || std::env::var_os("SWEEP_VERBOSE").is_some() {
                    eprintln!(
                        "{what}: {}",
                        said.lines().take(3).collect::<Vec<_>>().join(" | ")
                    );
                }
                detected += 1;
            } else if content_digest(&checked).as_deref() == Some(digest.as_str()) {
                harmless += 1;
            } else {
                silent.push(format!("{what}: {said}"));
            }
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }
    eprintln!(
        "{engine} bit-flip sweep over {} files: {detected} detected, {harmless} in free space (content unchanged), {} silent",
        files.len(),
        silent.len()
    );
    assert!(silent.is_empty(), "served silently: {silent:#?}");
    assert!(
        detected > files.len(),
        "the sweep hit too little data: {detected}"
    );
}

/// An engine that recovers to an older commit (as sled does past a damaged log entry) loses
/// every write after it; the seal, written after each flush, notices.
#[tokio::test]
async fn a_store_that_went_back_to_an_older_commit_is_refused() {
    for engine in [EngineKind::Sled, EngineKind::Redb, EngineKind::Fjall] {
        went_back(engine);
    }
}

fn went_back(engine: EngineKind) {
    let scratch = tempfile::tempdir().unwrap();
    let store = scratch.path().join("data");
    let older = scratch.path().join("older");
    {
        let storage = Storage::open_with(&store, engine).unwrap();
        storage.append_remote(&[1; 32], 1, b"first").unwrap();
    }
    copy_dir(&store, &older);
    {
        let storage = Storage::open(&store).unwrap();
        storage.append_remote(&[1; 32], 2, b"second").unwrap();
    }
    // The engine's files of the older commit, the seal of the newer one.
    let seal = std::fs::read(store.join("zorgmesh.seal")).unwrap();
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&older, &store);
    std::fs::write(store.join("zorgmesh.seal"), seal).unwrap();
    let error = Storage::open(&store).unwrap_err().to_string();
    assert!(
        error.contains("remote_log: the store went back from commit 2 to commit 1")
            && error.contains("zorgmesh node restore"),
        "{error}"
    );
    let checked = zorgmesh(&["node", "check", "--data-dir", s(&store)]);
    assert!(!checked.status.success());
    assert!(text(&checked).contains("went back"), "{}", text(&checked));
}

/// A record damaged where the engine does not look (its own checksums cover its log, not
/// what it hands back from memory or a page it trusts) is named by ours, and the store is
/// refused, at start as by `zorgmesh node check`.
#[tokio::test]
async fn a_damaged_record_is_named_and_the_store_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let store = scratch.path().join("data");
    populated_store(&store, EngineKind::Sled).await;
    {
        // Change one byte of a stored Patient through the engine itself.
        let db = sled::Config::new().path(&store).open().unwrap();
        let fhir = db.open_tree("fhir").unwrap();
        let (key, value) = fhir.scan_prefix(b"r\0Patient\0").next().unwrap().unwrap();
        let mut value = value.to_vec();
        let last = value.len() - 2;
        value[last] ^= 0x01;
        fhir.insert(&key, value).unwrap();
        db.flush().unwrap();
    }
    let error = Storage::open(&store).unwrap_err().to_string();
    assert!(
        error.contains("is damaged and will not be served")
            && error.contains("fhir: record r/Patient/")
            && error.contains("fails its checksum")
            && error.contains("zorgmesh node restore"),
        "{error}"
    );
    let checked = zorgmesh(&["node", "check", "--data-dir", s(&store)]);
    assert_eq!(checked.status.code(), Some(1));
    assert!(
        text(&checked).contains("fhir: record r/Patient/"),
        "{}",
        text(&checked)
    );
}

/// A backup of a sled store restored into each other engine holds the same content: the
/// full check prints the same digest.
#[tokio::test]
async fn a_backup_restores_into_every_engine_with_the_same_content() {
    let scratch = tempfile::tempdir().unwrap();
    let store = scratch.path().join("sled");
    populated_store(&store, EngineKind::Sled).await;
    let checked = zorgmesh(&["node", "check", "--data-dir", s(&store)]);
    assert!(checked.status.success(), "{}", text(&checked));
    let digest = content_digest(&checked).expect("a sound store prints its digest");
    let backup = scratch.path().join("store.zmbackup");
    let taken = zorgmesh(&[
        "node",
        "backup",
        "--data-dir",
        s(&store),
        "--out",
        s(&backup),
    ]);
    assert!(taken.status.success(), "{}", text(&taken));
    for engine in ["redb", "fjall"] {
        let target = scratch.path().join(engine);
        let restored = zorgmesh(&[
            "node",
            "restore",
            "--from",
            s(&backup),
            "--data-dir",
            s(&target),
            "--engine",
            engine,
        ]);
        assert!(restored.status.success(), "{engine}: {}", text(&restored));
        assert!(
            text(&restored).contains(&format!("({engine})")),
            "{}",
            text(&restored)
        );
        let checked = zorgmesh(&["node", "check", "--data-dir", s(&target)]);
        assert!(checked.status.success(), "{engine}: {}", text(&checked));
        assert_eq!(
            content_digest(&checked).as_deref(),
            Some(digest.as_str()),
            "{engine}"
        );
    }
}
