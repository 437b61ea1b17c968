//! Reading and writing trust material. Private keys are written owner-only (0600), through
//! a temporary file that is renamed into place, so a crash never leaves half a key.

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zorgmesh_protocol::oprf::{KeyShare, SignedEvaluatorSet};
use zorgmesh_protocol::revocation::{Revocation, RevocationListBody, SignedRevocationList};

/// Why trust material could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Refusing to overwrite existing material.
    #[error("{0} already exists: refusing to overwrite trust material (remove it first)")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> FileError {
    FileError::Format {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Writes `contents` to `path` atomically with the given Unix mode.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Writes a secret file, readable by the owner only.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_atomic(path, contents, 0o600)
}

/// Writes a public file (certificate).
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_atomic(path, contents, 0o644)
}

/// Writes an ed25519 key as PKCS#8 v1 PEM (RFC 8410, without the optional public key, the
/// form OpenSSL reads: `openssl pkey -in node.key`), owner-only.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), FileError> {
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .map_err(|e| format_err(path, e.to_string()))?;
    write_private_file(path, pem.as_bytes())
}

/// Reads an ed25519 key from PKCS#8 PEM.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, FileError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| format_err(path, format!("not an ed25519 PKCS#8 PEM private key: {e}")))
}

/// Writes a certificate as PEM.
pub fn write_certificate(path: &Path, der: &[u8]) -> Result<(), FileError> {
    let text = pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
    write_public_file(path, text.as_bytes())
}

/// Reads a PEM certificate and returns its DER.
pub fn read_certificate(path: &Path) -> Result<Vec<u8>, FileError> {
    let text = std::fs::read(path).map_err(io(path))?;
    let parsed = pem::parse(&text).map_err(|e| format_err(path, format!("not a PEM file: {e}")))?;
    if parsed.tag() != "CERTIFICATE" {
        return Err(format_err(
            path,
            format!("holds a {:?}, not a CERTIFICATE", parsed.tag()),
        ));
    }
    Ok(parsed.into_contents())
}

/// PEM tag of a signed evaluator set.
pub const EVALUATOR_SET_PEM_TAG: &str = "ZORGMESH EVALUATOR SET";
/// PEM tag of a signed revocation list.
pub const REVOCATION_LIST_PEM_TAG: &str = "ZORGMESH REVOCATION LIST";
/// PEM tag of an evaluator's OPRF key share.
pub const KEY_SHARE_PEM_TAG: &str = "ZORGMESH OPRF KEY SHARE";

fn read_pem(path: &Path, tag: &str) -> Result<Vec<u8>, FileError> {
    let text = std::fs::read(path).map_err(io(path))?;
    let parsed = pem::parse(&text).map_err(|e| format_err(path, format!("not a PEM file: {e}")))?;
    if parsed.tag() != tag {
        return Err(format_err(
            path,
            format!("holds a {:?}, not a {tag}", parsed.tag()),
        ));
    }
    Ok(parsed.into_contents())
}

/// Writes the CA-signed evaluator set (public: every node needs it) as PEM.
pub fn write_evaluator_set(path: &Path, set: &SignedEvaluatorSet) -> Result<(), FileError> {
    let text = pem::encode(&pem::Pem::new(EVALUATOR_SET_PEM_TAG, set.to_bytes()));
    write_public_file(path, text.as_bytes())
}

/// Reads a signed evaluator set (verify it with [`SignedEvaluatorSet::verify`]).
pub fn read_evaluator_set(path: &Path) -> Result<SignedEvaluatorSet, FileError> {
    let bytes = read_pem(path, EVALUATOR_SET_PEM_TAG)?;
    SignedEvaluatorSet::from_bytes(&bytes)
        .map_err(|e| format_err(path, format!("not an evaluator set: {e}")))
}

/// Writes a CA-signed revocation list (public) as PEM.
pub fn write_revocation_list(path: &Path, list: &SignedRevocationList) -> Result<(), FileError> {
    let text = pem::encode(&pem::Pem::new(REVOCATION_LIST_PEM_TAG, list.to_bytes()));
    write_public_file(path, text.as_bytes())
}

/// Reads a revocation list (verify it with [`SignedRevocationList::verify`]).
pub fn read_revocation_list(path: &Path) -> Result<SignedRevocationList, FileError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_revocation_list(&bytes).map_err(|m| format_err(path, m))
}

/// Parses a revocation list given as PEM or as its raw encoding (not yet verified).
pub fn parse_revocation_list(bytes: &[u8]) -> Result<SignedRevocationList, String> {
    let raw = match pem::parse(bytes) {
        Ok(parsed) if parsed.tag() == REVOCATION_LIST_PEM_TAG => parsed.into_contents(),
        Ok(parsed) => {
            return Err(format!(
                "holds a {:?}, not a {REVOCATION_LIST_PEM_TAG}",
                parsed.tag()
            ))
        }
        Err(_) => bytes.to_vec(),
    };
    SignedRevocationList::from_bytes(&raw).map_err(|e| format!("not a revocation list: {e}"))
}

/// Writes an evaluator's key share, owner-only: PEM whose content is the share index
/// (`u16` big-endian) followed by the 32-byte scalar.
pub fn write_key_share(path: &Path, share: &KeyShare) -> Result<(), FileError> {
    let mut content = share.index().to_be_bytes().to_vec();
    content.extend_from_slice(&share.secret_bytes());
    let text = pem::encode(&pem::Pem::new(KEY_SHARE_PEM_TAG, content));
    write_private_file(path, text.as_bytes())
}

/// Reads an evaluator's key share.
pub fn read_key_share(path: &Path) -> Result<KeyShare, FileError> {
    let bytes = read_pem(path, KEY_SHARE_PEM_TAG)?;
    if bytes.len() != 34 {
        return Err(format_err(
            path,
            "a key share is 34 bytes (index and scalar)",
        ));
    }
    let index = u16::from_be_bytes([bytes[0], bytes[1]]);
    let secret: [u8; 32] = bytes[2..].try_into().expect("34 - 2");
    KeyShare::from_parts(index, &secret).map_err(|e| format_err(path, e.to_string()))
}

/// The files of a network's trust material in one directory.
#[derive(Clone, Debug)]
pub struct CaFiles {
    /// `ca.crt`: the trust anchor every node needs.
    pub certificate: PathBuf,
    /// `ca.key`: the CA's private key; only the operator that issues certificates needs it.
    pub key: PathBuf,
    /// `evaluators.pem`: the CA-signed evaluator set (threshold, evaluators, commitments)
    /// every node needs.
    pub evaluator_set: PathBuf,
    /// `revocations.pem`: the newest revocation list the CA signed (absent until the first
    /// `certs revoke`).
    pub revocations: PathBuf,
    /// `shares/`: evaluators' key shares not yet handed out. `certs issue` moves an
    /// evaluator's share to it; once every evaluator has its share this is empty.
    pub pending_shares: PathBuf,
}

impl CaFiles {
    /// The standard file names in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            certificate: dir.join("ca.crt"),
            key: dir.join("ca.key"),
            evaluator_set: dir.join("evaluators.pem"),
            revocations: dir.join("revocations.pem"),
            pending_shares: dir.join("shares"),
        }
    }

    /// Fails if any of the files exists.
    pub fn ensure_absent(&self) -> Result<(), FileError> {
        for path in [&self.certificate, &self.key, &self.evaluator_set] {
            if path.exists() {
                return Err(FileError::Exists(path.clone()));
            }
        }
        Ok(())
    }

    /// Writes the CA, the signed evaluator set and the evaluators' pending shares.
    pub fn write(
        &self,
        ca: &crate::CertificateAuthority,
        evaluators: &crate::EvaluatorKeys,
    ) -> Result<(), FileError> {
        write_signing_key(&self.key, ca.key())?;
        write_certificate(&self.certificate, ca.certificate_der())?;
        write_evaluator_set(&self.evaluator_set, &evaluators.set)?;
        for (name, share) in &evaluators.shares {
            write_key_share(&self.pending_share(name), share)?;
        }
        Ok(())
    }

    /// Where the not yet issued share of evaluator `name` waits.
    pub fn pending_share(&self, name: &str) -> PathBuf {
        self.pending_shares.join(format!("{name}.share"))
    }

    /// Moves evaluator `name`'s pending share to `to` (owner-only) and deletes it here.
    /// Returns false when no share waits for `name`.
    pub fn hand_out_share(&self, name: &str, to: &Path) -> Result<bool, FileError> {
        let from = self.pending_share(name);
        if !from.exists() {
            return Ok(false);
        }
        if to.exists() {
            return Err(FileError::Exists(to.to_owned()));
        }
        let share = read_key_share(&from)?;
        write_key_share(to, &share)?;
        std::fs::remove_file(&from).map_err(io(&from))?;
        Ok(true)
    }

    /// Loads the CA (key and certificate).
    pub fn load_authority(&self) -> Result<crate::CertificateAuthority, FileError> {
        let key = read_signing_key(&self.key)?;
        let der = read_certificate(&self.certificate)?;
        crate::CertificateAuthority::load(key, der).map_err(|m| format_err(&self.key, m))
    }

    /// Revokes the node whose certificate is `certificate_der`: signs the successor of the
    /// held list (or the first list) with it added, writes it to `revocations.pem` and
    /// returns it. A node the held list already revokes leaves the list as it is.
    pub fn revoke(
        &self,
        certificate_der: &[u8],
        reason: &str,
        now_ms: u64,
    ) -> Result<SignedRevocationList, FileError> {
        let ca = self.load_authority()?;
        let anchor = crate::TrustAnchor::from_der(ca.certificate_der())
            .map_err(|e| format_err(&self.certificate, e.to_string()))?;
        // An expired certificate can still be revoked (it may be presented with a wrong
        // clock); only the CA's signature on it is checked.
        let node = anchor
            .verify_node_certificate(certificate_der, None)
            .map_err(|e| {
                format_err(
                    &self.certificate,
                    format!("not a certificate of this network: {e}"),
                )
            })?;
        if reason.len() > zorgmesh_protocol::revocation::MAX_REASON_BYTES {
            return Err(format_err(
                &self.revocations,
                format!(
                    "the reason is longer than {} bytes",
                    zorgmesh_protocol::revocation::MAX_REASON_BYTES
                ),
            ));
        }
        let previous = if self.revocations.exists() {
            let list = read_revocation_list(&self.revocations)?;
            list.verify(&anchor.public_key(), anchor.network())
                .map_err(|e| format_err(&self.revocations, e.to_string()))?;
            // Already revoked: the list in force stands (hand it out again if needed).
            if list.body.revoked_nodes().contains(&node.node) {
                return Ok(list);
            }
            list.body
        } else {
            RevocationListBody::empty(anchor.network())
        };
        let next = previous.successor(
            vec![Revocation {
                node: node.node,
                name: node.identity.name.clone(),
                revoked_at_ms: now_ms,
                not_after: node.not_after,
                reason: reason.to_owned(),
            }],
            now_ms,
        );
        if next.revocations.len() > zorgmesh_protocol::revocation::MAX_REVOCATIONS {
            return Err(format_err(&self.revocations, "the revocation list is full"));
        }
        let list = SignedRevocationList::sign(next, ca.key());
        write_revocation_list(&self.revocations, &list)?;
        Ok(list)
    }

    /// Loads the trust anchor only.
    pub fn load_anchor(&self) -> Result<crate::TrustAnchor, FileError> {
        let der = read_certificate(&self.certificate)?;
        crate::TrustAnchor::from_der(&der).map_err(|e| format_err(&self.certificate, e.to_string()))
    }
}

/// A node's key and certificate files.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    /// `<name>.crt`
    pub certificate: PathBuf,
    /// `<name>.key`
    pub key: PathBuf,
}

impl NodeFiles {
    /// The standard file names for node `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            certificate: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Writes key and certificate.
    pub fn write(&self, issued: &crate::IssuedNode) -> Result<(), FileError> {
        write_signing_key(&self.key, &issued.key)?;
        write_certificate(&self.certificate, &issued.certificate_der)
    }
}
