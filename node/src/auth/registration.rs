//! Registering and revoking clients (`zorgmesh client add|list|revoke`): edits of the
//! node's clients file, which a running node picks up at its next request.

use super::assertion::ClientCredentials;
use super::clients::{Client, ClientKind, ClientsFile};
use anyhow::Context as _;
use std::path::Path;

/// What to register.
#[derive(Clone, Debug)]
pub struct NewClient {
    pub client_id: String,
    pub name: String,
    /// Space-separated scopes.
    pub scopes: String,
    /// Set for a patient's app.
    pub patient_bsn: Option<String>,
    /// The client's own public keys (a JWK or a JWK Set); `None`: a key pair is made here
    /// and its private half handed out in the credentials.
    pub public_keys: Option<jsonwebtoken::jwk::JwkSet>,
}

/// The outcome: the registered client and, when the key was made here, its credentials.
#[derive(Debug)]
pub struct Registered {
    pub client: Client,
    pub credentials: Option<ClientCredentials>,
}

/// Reads a public key file: a JWK, or a JWK Set.
pub fn read_public_keys(path: &Path) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON (a JWK or a JWK Set)", path.display()))?;
    if value.get("keys").is_some() {
        serde_json::from_value(value)
            .with_context(|| format!("{} is not a JWK Set", path.display()))
    } else {
        let key = serde_json::from_value(value)
            .with_context(|| format!("{} is not a JWK", path.display()))?;
        Ok(jsonwebtoken::jwk::JwkSet { keys: vec![key] })
    }
}

/// Registers a client in `clients_file`; `token_endpoint` goes into made credentials.
pub fn add_client(
    clients_file: &Path,
    new: NewClient,
    token_endpoint: &str,
    now: u64,
) -> anyhow::Result<Registered> {
    let mut file = ClientsFile::read(clients_file)?;
    file.version = super::clients::CLIENTS_FILE_VERSION;
    let (jwks, credentials) = match new.public_keys {
        Some(keys) => (keys, None),
        None => {
            let (credentials, jwk) = ClientCredentials::generate(&new.client_id, token_endpoint)?;
            (
                jsonwebtoken::jwk::JwkSet { keys: vec![jwk] },
                Some(credentials),
            )
        }
    };
    let client = Client {
        client_id: new.client_id,
        name: new.name,
        kind: if new.patient_bsn.is_some() {
            ClientKind::PatientApp
        } else {
            ClientKind::System
        },
        scopes: super::scope::Scopes::parse(&new.scopes)?.to_string(),
        jwks,
        patient_bsn: new.patient_bsn,
        registered_at: now,
        revoked_at: None,
    };
    file.add(client.clone())?;
    file.write(clients_file)?;
    Ok(Registered {
        client,
        credentials,
    })
}

/// Revokes a client; its tokens stop working at once. Says whether it was active.
pub fn revoke_client(clients_file: &Path, client_id: &str, now: u64) -> anyhow::Result<bool> {
    let mut file = ClientsFile::read(clients_file)?;
    let was_active = file.revoke(client_id, now)?;
    file.write(clients_file)?;
    Ok(was_active)
}

/// Writes credentials owner-only; refuses to overwrite a file.
pub fn write_credentials(path: &Path, credentials: &ClientCredentials) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    let mut text = serde_json::to_vec_pretty(credentials)?;
    text.push(b'\n');
    file.write_all(&text)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, scopes: &str, bsn: Option<&str>) -> NewClient {
        NewClient {
            client_id: id.into(),
            name: String::new(),
            scopes: scopes.into(),
            patient_bsn: bsn.map(str::to_owned),
            public_keys: None,
        }
    }

    #[test]
    fn clients_are_added_listed_revoked_and_re_added() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        let endpoint = "http://127.0.0.1:8080/auth/token";
        let added = add_client(&path, new("ehr", "system/*.rs", None), endpoint, 100).unwrap();
        assert_eq!(added.client.kind, ClientKind::System);
        assert!(added.credentials.is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(add_client(&path, new("ehr", "system/*.rs", None), endpoint, 101).is_err());
        let app = add_client(
            &path,
            new("app", "patient/*.rs", Some("999990019")),
            endpoint,
            102,
        );
        assert_eq!(app.unwrap().client.kind, ClientKind::PatientApp);
        // Scopes must fit the kind, a BSN must be one.
        assert!(add_client(
            &path,
            new("bad1", "system/*.rs", Some("999990019")),
            endpoint,
            103
        )
        .is_err());
        assert!(add_client(
            &path,
            new("bad2", "patient/*.rs", Some("123")),
            endpoint,
            103
        )
        .is_err());
        assert!(add_client(&path, new("bad3", "system/*.xyz", None), endpoint, 103).is_err());
        assert!(add_client(&path, new("bad id", "system/*.rs", None), endpoint, 103).is_err());
        assert!(revoke_client(&path, "ehr", 200).unwrap());
        assert!(!revoke_client(&path, "ehr", 201).unwrap());
        assert!(revoke_client(&path, "nobody", 201).is_err());
        let file = ClientsFile::read(&path).unwrap();
        assert_eq!(file.get("ehr").unwrap().revoked_at, Some(200));
        assert_eq!(file.clients.len(), 2);
        // A revoked id may be registered again, as a new client.
        let again = add_client(&path, new("ehr", "system/Patient.r", None), endpoint, 300).unwrap();
        assert_eq!(again.client.registered_at, 300);
    }
}
