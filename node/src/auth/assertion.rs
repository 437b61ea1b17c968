//! The JSON Web Tokens of SMART Backend Services: the client's signed assertion (RFC 7523,
//! checked against the keys the client registered) and the node's own short-lived access
//! tokens (HS256 under a secret only the node holds: the node is both their issuer and
//! their only audience).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Signature algorithms a client assertion may use (SMART requires RS384 and ES384).
pub const ASSERTION_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES384,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// A client assertion may be valid for at most this long (SMART: five minutes).
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest assertion or access token read.
pub const MAX_JWT_BYTES: usize = 16 * 1024;
/// Assertion ids remembered against replay (each until its assertion expires).
pub const MAX_REMEMBERED_ASSERTIONS: usize = 100_000;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Why an assertion or token was refused. The text is safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("{0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    #[error("this assertion was used before (jti {0:?}): sign a new one for every request")]
    Replayed(String),
    #[error("too many assertions are live at once: retry shortly")]
    Busy,
}

fn invalid(text: impl Into<String>) -> JwtError {
    JwtError::Invalid(text.into())
}

/// Checks that a registered key can verify assertions: EC P-256/P-384, RSA of at least
/// 2048 bits, or Ed25519.
pub fn usable_key(jwk: &Jwk) -> anyhow::Result<()> {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => {
            if !matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384) {
                anyhow::bail!("EC keys must be on P-256 or P-384");
            }
        }
        AlgorithmParameters::RSA(rsa) => {
            let modulus = base64_url_decode(&rsa.n)?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                anyhow::bail!("RSA keys must have at least 2048 bits");
            }
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                anyhow::bail!("OKP keys must be Ed25519");
            }
        }
        AlgorithmParameters::OctetKey(_) => {
            anyhow::bail!("a shared secret is not a public key: register a public key")
        }
    }
    DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("not a usable public key: {e}"))?;
    Ok(())
}

fn base64_url_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| anyhow::anyhow!("bad base64url: {e}"))
}

/// Whether `algorithm` fits the key's type.
fn fits(algorithm: Algorithm, jwk: &Jwk) -> bool {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (algorithm, &ec.curve),
            (Algorithm::ES256, EllipticCurve::P256) | (Algorithm::ES384, EllipticCurve::P384)
        ),
        AlgorithmParameters::RSA(_) => matches!(
            algorithm,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::OctetKeyPair(_) => algorithm == Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    }
}

/// The claims of a client assertion that matter here.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: u64,
    jti: String,
}

/// The parts of an assertion read before its signature is checked: who claims to send it,
/// so the right keys can be looked up.
pub fn claimed_client(assertion: &str) -> Result<String, JwtError> {
    if assertion.len() > MAX_JWT_BYTES {
        return Err(invalid("the client assertion is too long"));
    }
    let payload = assertion
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("the client assertion is not a JWT"))?;
    let bytes = base64_url_decode(payload)
        .map_err(|_| invalid("the client assertion's payload is not base64url"))?;
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    serde_json::from_slice::<Issuer>(&bytes)
        .map(|i| i.iss)
        .map_err(|_| invalid("the client assertion has no iss claim"))
}

/// Verifies a client assertion against a client's registered keys: signature, `iss` =
/// `sub` = the client, `aud` = the token endpoint, `exp` within five minutes, a `jti`.
/// Returns the `jti` and `exp` for the replay check.
pub fn verify_assertion(
    assertion: &str,
    client_id: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
    token_endpoint: &str,
    now: u64,
) -> Result<(String, u64), JwtError> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|e| invalid(format!("the client assertion's header is not valid: {e}")))?;
    if !ASSERTION_ALGORITHMS.contains(&header.alg) {
        return Err(invalid(format!(
            "the client assertion is signed with {:?}: use ES384 or RS384",
            header.alg
        )));
    }
    let candidates: Vec<&Jwk> = match &header.kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
            .collect(),
        None => keys.keys.iter().collect(),
    };
    let candidates: Vec<&Jwk> = candidates
        .into_iter()
        .filter(|k| fits(header.alg, k))
        .collect();
    if candidates.is_empty() {
        return Err(invalid(match &header.kid {
            Some(kid) => format!(
                "client {client_id} has no registered {:?} key with kid {kid:?}",
                header.alg
            ),
            None => format!("client {client_id} has no registered {:?} key", header.alg),
        }));
    }
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[token_endpoint]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = LEEWAY_SECS;
    let mut last_error = None;
    for key in candidates {
        let Ok(decoding) = DecodingKey::from_jwk(key) else {
            continue;
        };
        match jsonwebtoken::decode::<AssertionClaims>(assertion, &decoding, &validation) {
            Ok(data) => {
                let claims = data.claims;
                if claims.iss != client_id || claims.sub != client_id {
                    return Err(invalid("iss and sub must both be the client_id"));
                }
                if claims.exp > now + MAX_ASSERTION_LIFETIME_SECS + LEEWAY_SECS {
                    return Err(invalid(format!(
                        "the client assertion expires more than {MAX_ASSERTION_LIFETIME_SECS} s from now"
                    )));
                }
                if claims.jti.is_empty() || claims.jti.len() > 256 {
                    return Err(invalid(
                        "the client assertion needs a jti of 1 to 256 characters",
                    ));
                }
                return Ok((claims.jti, claims.exp));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error.map(|e| e.into_kind()) {
        Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => JwtError::Expired,
        Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => invalid(format!(
            "the client assertion's aud must be this node's token endpoint, {token_endpoint}"
        )),
        Some(jsonwebtoken::errors::ErrorKind::InvalidSignature) | None => invalid(format!(
            "the client assertion's signature does not verify under the keys registered for {client_id}"
        )),
        Some(other) => invalid(format!("the client assertion is not valid: {other:?}")),
    })
}

/// The assertion ids seen and not yet expired: an assertion is good for one token.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<(String, String), u64>,
}

impl ReplayGuard {
    /// Records `(client, jti)` until `exp`; refuses one seen before.
    pub fn admit(&mut self, client: &str, jti: &str, exp: u64, now: u64) -> Result<(), JwtError> {
        let key = (client.to_owned(), jti.to_owned());
        if self.seen.get(&key).is_some_and(|e| *e + LEEWAY_SECS >= now) {
            return Err(JwtError::Replayed(jti.to_owned()));
        }
        if self.seen.len() >= MAX_REMEMBERED_ASSERTIONS {
            self.seen.retain(|_, e| *e + LEEWAY_SECS >= now);
            if self.seen.len() >= MAX_REMEMBERED_ASSERTIONS {
                return Err(JwtError::Busy);
            }
        }
        self.seen.insert(key, exp);
        Ok(())
    }
}

/// The claims of the node's access tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The node's base URL.
    pub iss: String,
    /// The client.
    pub sub: String,
    /// The node's FHIR base URL.
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    /// The granted scopes, space-separated.
    pub scope: String,
}

/// Issues and checks the node's access tokens.
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    /// Tokens under `secret`, issued by `issuer` for `audience`.
    pub fn new(secret: &[u8], issuer: String, audience: String) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer,
            audience,
        }
    }

    /// A signed token.
    pub fn issue(&self, client_id: &str, scope: &str, now: u64, lifetime_secs: u64) -> String {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client_id.to_owned(),
            aud: self.audience.clone(),
            exp: now + lifetime_secs,
            iat: now,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            scope: scope.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Checks a token's signature, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, JwtError> {
        if token.len() > MAX_JWT_BYTES {
            return Err(invalid("the access token is too long"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = LEEWAY_SECS;
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.into_kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidIssuer
                | jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    invalid("the access token was not issued by this node")
                }
                _ => invalid("the access token is not valid"),
            })
    }
}

/// A client's credentials as `zorgmesh client add` hands them out: its id, the node's token
/// endpoint and its private key. Owner-only, like any private key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    pub client_id: String,
    pub token_endpoint: String,
    /// The key id registered with the public key.
    pub kid: String,
    /// `ES384`.
    pub alg: String,
    /// The private key, PKCS#8 PEM.
    pub private_key_pem: String,
}

impl ClientCredentials {
    /// A fresh P-384 key for `client_id`: the credentials and the public key as a JWK.
    pub fn generate(client_id: &str, token_endpoint: &str) -> anyhow::Result<(Self, Jwk)> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let point = pair.public_key_raw();
        // An uncompressed point: 0x04, x (48 bytes), y (48 bytes).
        if point.len() != 97 || point[0] != 4 {
            anyhow::bail!("unexpected P-384 public key encoding");
        }
        let kid = hex::encode(&sha2_256(point)[..8]);
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC",
            "crv": "P-384",
            "x": base64_url(&point[1..49]),
            "y": base64_url(&point[49..]),
            "kid": kid,
            "alg": "ES384",
            "use": "sig",
        }))?;
        Ok((
            Self {
                client_id: client_id.to_owned(),
                token_endpoint: token_endpoint.to_owned(),
                kid,
                alg: "ES384".to_owned(),
                private_key_pem: pair.serialize_pem(),
            },
            jwk,
        ))
    }

    /// A signed client assertion for one token request, valid for `lifetime_secs`.
    pub fn assertion(&self, now: u64, lifetime_secs: u64) -> anyhow::Result<String> {
        let key = EncodingKey::from_ec_pem(self.private_key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the credentials' private key cannot be read: {e}"))?;
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_owned());
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_endpoint,
            "exp": now + lifetime_secs,
            "iat": now,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
        });
        Ok(jsonwebtoken::encode(&header, &claims, &key)?)
    }

    /// Reads credentials from a file (which must be owner-only).
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        crate::at_rest::check_private_file(path)?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a zorgmesh client credentials file",
                path.display()
            )
        })
    }
}

fn sha2_256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "http://127.0.0.1:8080/auth/token";

    fn client(id: &str) -> (ClientCredentials, jsonwebtoken::jwk::JwkSet) {
        let (credentials, jwk) = ClientCredentials::generate(id, ENDPOINT).unwrap();
        usable_key(&jwk).unwrap();
        (credentials, jsonwebtoken::jwk::JwkSet { keys: vec![jwk] })
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_fresh_assertion_verifies_under_its_clients_key_only() {
        let (ehr, ehr_keys) = client("ehr");
        let (_, other_keys) = client("viewer");
        let assertion = ehr.assertion(now(), 60).unwrap();
        assert_eq!(claimed_client(&assertion).unwrap(), "ehr");
        let (jti, _) = verify_assertion(&assertion, "ehr", &ehr_keys, ENDPOINT, now()).unwrap();
        assert_eq!(jti.len(), 32);
        // Signed by ehr, checked against another client's keys.
        assert!(matches!(
            verify_assertion(&assertion, "ehr", &other_keys, ENDPOINT, now()),
            Err(JwtError::Invalid(_))
        ));
        // Claimed for another client.
        assert!(verify_assertion(&assertion, "viewer", &ehr_keys, ENDPOINT, now()).is_err());
        // For another node's token endpoint.
        let elsewhere = "http://127.0.0.1:9999/auth/token";
        let e = verify_assertion(&assertion, "ehr", &ehr_keys, elsewhere, now()).unwrap_err();
        assert!(e.to_string().contains("aud"), "{e}");
    }

    #[test]
    fn stale_long_lived_and_altered_assertions_are_refused() {
        let (ehr, keys) = client("ehr");
        let old = ehr.assertion(now() - 3600, 60).unwrap();
        assert_eq!(
            verify_assertion(&old, "ehr", &keys, ENDPOINT, now()),
            Err(JwtError::Expired)
        );
        let long = ehr.assertion(now(), 3600).unwrap();
        assert!(verify_assertion(&long, "ehr", &keys, ENDPOINT, now()).is_err());
        let good = ehr.assertion(now(), 60).unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let claims = serde_json::json!({"iss": "ehr", "sub": "ehr", "aud": ENDPOINT, "exp": now() + 60, "jti": "x"});
        parts[1] = base64_url(claims.to_string().as_bytes());
        let altered = parts.join(".");
        assert!(verify_assertion(&altered, "ehr", &keys, ENDPOINT, now()).is_err());
    }

    #[test]
    fn an_assertion_id_is_good_once_until_it_expires() {
        let mut guard = ReplayGuard::default();
        let t = 1_000_000;
        guard.admit("ehr", "a", t + 60, t).unwrap();
        assert_eq!(
            guard.admit("ehr", "a", t + 60, t + 1),
            Err(JwtError::Replayed("a".into()))
        );
        guard.admit("viewer", "a", t + 60, t).unwrap();
        // Long after it expired, the id is forgotten (the assertion itself would be stale).
        guard.admit("ehr", "a", t + 500, t + 400).unwrap();
    }

    #[test]
    fn access_tokens_verify_only_at_their_node() {
        let tokens = AccessTokens::new(
            b"0123456789abcdef0123456789abcdef",
            "http://a".into(),
            "http://a/fhir".into(),
        );
        let token = tokens.issue("ehr", "system/*.rs", now(), 300);
        let claims = tokens.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.scope.as_str()),
            ("ehr", "system/*.rs")
        );
        let other = AccessTokens::new(
            b"fedcba9876543210fedcba9876543210",
            "http://a".into(),
            "http://a/fhir".into(),
        );
        assert!(other.verify(&token).is_err());
        let expired = tokens.issue("ehr", "system/*.rs", now() - 1000, 300);
        assert_eq!(tokens.verify(&expired).unwrap_err(), JwtError::Expired);
    }

    #[test]
    fn keys_that_cannot_sign_assertions_are_refused_at_registration() {
        let secret: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(usable_key(&secret).is_err());
        let small_rsa: Jwk = serde_json::from_value(
            serde_json::json!({"kty": "RSA", "n": base64_url(&[0xc1; 128]), "e": "AQAB"}),
        )
        .unwrap();
        assert!(usable_key(&small_rsa)
            .unwrap_err()
            .to_string()
            .contains("2048"));
    }
}
