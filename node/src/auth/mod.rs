//! Who may call the node's API: SMART on FHIR Backend Services.
//!
//! - A client is registered with the node (`zorgmesh client add`, [`clients`]) with its
//!   public keys and the scopes it may get.
//! - It asks the node's token endpoint (`POST /auth/token`) for an access token with the
//!   OAuth 2.0 client-credentials grant, authenticating with a JWT it signs
//!   ([`assertion`]); the node answers with a short-lived token for the requested scopes
//!   that are also registered.
//! - Every request but the open ones ([`is_open`]) carries the token
//!   (`Authorization: Bearer …`); without a valid one the answer is 401, with one whose
//!   scopes ([`scope`]) do not cover the request 403, each with an OperationOutcome.
//! - A client acting for a person says who with each request (the `Zorgmesh-Practitioner*`
//!   headers, [`Person`]); the organisation is always the node's own, never the client's
//!   word. A patient's app is bound to its patient at registration.

pub mod assertion;
pub mod clients;
pub mod registration;
pub mod scope;

use crate::fhir::FhirError;
use assertion::{AccessTokens, JwtError, ReplayGuard};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clients::{ClientKind, ClientRegistry};
use scope::{Context, Interaction, Scopes};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/auth/token";
/// Largest token request body.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 64 * 1024;
/// The assertion type of SMART Backend Services (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest value of a person header.
pub const MAX_PERSON_HEADER_BYTES: usize = 256;

/// The header naming the practitioner a client acts for, as `system|value` (an UZI or BIG
/// number: `http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789`).
pub const PRACTITIONER_HEADER: &str = "zorgmesh-practitioner";
/// The practitioner's role (a code, e.g. from the UZI role table: `01.015` for a GP).
pub const ROLE_HEADER: &str = "zorgmesh-practitioner-role";
/// The practitioner's name, for the audit trail.
pub const NAME_HEADER: &str = "zorgmesh-practitioner-name";
/// Why the data is asked for: `treatment` (default), `emergency` (break-the-glass, with
/// [`REASON_HEADER`]) or `research`; a patient's app always asks as `patient-self-access`.
pub const PURPOSE_HEADER: &str = "zorgmesh-purpose-of-use";
/// The reason of an emergency request.
pub const REASON_HEADER: &str = "zorgmesh-emergency-reason";

/// Endpoints anyone may call: the CapabilityStatement, SMART discovery, the liveness probe
/// and the token endpoint itself.
pub fn is_open(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    match *method {
        Method::GET | Method::HEAD => matches!(
            path,
            "/fhir/metadata"
                | "/.well-known/smart-configuration"
                | "/fhir/.well-known/smart-configuration"
                | "/health"
        ),
        Method::POST => path == TOKEN_PATH,
        _ => false,
    }
}

/// The person a client acts for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Person {
    /// `system|value`.
    pub id: String,
    pub role: Option<String>,
    pub name: Option<String>,
}

/// Who a request comes from, once its token checked out.
#[derive(Clone, Debug)]
pub struct Principal {
    pub client_id: String,
    pub kind: ClientKind,
    /// The token's scopes, within what the client is registered for now.
    pub scopes: Scopes,
    /// For a patient's app: its patient.
    pub patient: Option<zorgmesh_protocol::Bsn>,
    /// For a client acting for a practitioner: who.
    pub person: Option<Person>,
}

impl Principal {
    fn context(&self) -> Context {
        match self.kind {
            ClientKind::System => Context::System,
            ClientKind::PatientApp => Context::Patient,
        }
    }

    /// Allows `interaction` on `resource_type`, or answers 403.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), FhirError> {
        if self.kind == ClientKind::PatientApp {
            return Err(forbidden(
                "a patient's app reads its own patient's dossier ($dossier) and nothing else",
            ));
        }
        if self
            .scopes
            .allows(self.context(), resource_type, interaction)
        {
            Ok(())
        } else {
            Err(forbidden(format!(
                "the token's scopes ({}) do not allow {} on {resource_type}: it needs system/{resource_type}.{}",
                self.scopes,
                interaction_name(interaction),
                interaction.letter()
            )))
        }
    }

    /// Whether resources of `resource_type` may be read (for operations that return several
    /// types: what is not readable is left out).
    pub fn may_read(&self, resource_type: &str) -> bool {
        self.scopes
            .allows(self.context(), resource_type, Interaction::Read)
    }

    /// What a mesh request made for this principal says: the practitioner, the purpose of
    /// use and an emergency's reason (400 when the headers do not add up).
    pub fn request_context(
        &self,
        headers: &HeaderMap,
    ) -> Result<crate::data_plane::RequestContext, FhirError> {
        use zorgmesh_protocol::claims::{PurposeOfUse, MAX_REASON};
        let text = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().map(|t| t.trim().to_owned()))
                .transpose()
                .map_err(|_| FhirError::invalid(format!("header {name} must be visible ASCII")))
        };
        let purpose = match text(PURPOSE_HEADER)? {
            None => None,
            Some(name) => Some(PurposeOfUse::parse(&name).ok_or_else(|| {
                FhirError::invalid(format!(
                    "{PURPOSE_HEADER} {name:?} is not one of treatment, emergency, research"
                ))
            })?),
        };
        let reason = text(REASON_HEADER)?.unwrap_or_default();
        if self.kind == ClientKind::PatientApp {
            if purpose.is_some_and(|p| p != PurposeOfUse::PatientSelfAccess) || !reason.is_empty() {
                return Err(forbidden(
                    "a patient's app asks as patient-self-access only",
                ));
            }
            return Ok(crate::data_plane::RequestContext {
                client_id: self.client_id.clone(),
                practitioner: None,
                purpose: PurposeOfUse::PatientSelfAccess,
                emergency_reason: String::new(),
            });
        }
        let purpose = purpose.unwrap_or(PurposeOfUse::Treatment);
        let practitioner = self
            .person
            .as_ref()
            .map(|p| zorgmesh_protocol::claims::Practitioner {
                id: p.id.clone(),
                role: p.role.clone().unwrap_or_default(),
                name: p.name.clone().unwrap_or_default(),
            });
        match purpose {
            PurposeOfUse::PatientSelfAccess => {
                return Err(forbidden(
                    "only a patient's app asks as patient-self-access",
                ))
            }
            PurposeOfUse::Compliance => {
                return Err(forbidden(
                    "compliance is the purpose of Patient/$access-log only",
                ))
            }
            PurposeOfUse::Emergency => {
                if practitioner.is_none() {
                    return Err(FhirError::invalid(format!(
                        "an emergency request (break-the-glass) names the practitioner in {PRACTITIONER_HEADER}"
                    )));
                }
                if reason.is_empty() || reason.len() > MAX_REASON {
                    return Err(FhirError::invalid(format!(
                        "an emergency request (break-the-glass) needs a reason of 1 to {MAX_REASON} characters in {REASON_HEADER}"
                    )));
                }
            }
            _ if !reason.is_empty() => {
                return Err(FhirError::invalid(format!(
                    "{REASON_HEADER} belongs to an emergency request only"
                )))
            }
            _ => {}
        }
        Ok(crate::data_plane::RequestContext {
            client_id: self.client_id.clone(),
            practitioner,
            purpose,
            emergency_reason: if purpose == PurposeOfUse::Emergency {
                reason
            } else {
                String::new()
            },
        })
    }

    /// Allows `/admin/*`, or answers 403.
    pub fn require_admin(&self) -> Result<(), FhirError> {
        if self.scopes.admin() {
            Ok(())
        } else {
            Err(forbidden(format!(
                "the token's scopes ({}) do not include {}",
                self.scopes,
                scope::ADMIN_SCOPE
            )))
        }
    }

    /// Allows a dossier of the patient with `bsn`, or answers 403: a system client needs to
    /// read Patient resources, a patient's app may only ask for its own patient.
    /// Allows the access log of the patient with `bsn` across the mesh and says for what
    /// purpose it is asked: a patient's app for its own patient (patient-self-access), a
    /// system client with `AuditEvent` read for a privacy officer it names in the
    /// practitioner header (compliance).
    pub fn access_log_context(
        &self,
        bsn: &zorgmesh_protocol::Bsn,
        headers: &HeaderMap,
    ) -> Result<crate::data_plane::RequestContext, FhirError> {
        use zorgmesh_protocol::claims::PurposeOfUse;
        match self.kind {
            ClientKind::PatientApp => {
                if self.patient.as_ref() != Some(bsn) || !self.may_read("Patient") {
                    return Err(forbidden(
                        "a patient's app reads only its own patient's access log",
                    ));
                }
                self.request_context(headers)
            }
            ClientKind::System => {
                if !self
                    .scopes
                    .allows(self.context(), "AuditEvent", Interaction::Read)
                {
                    return Err(forbidden(
                        "the access log needs a scope that reads AuditEvent (e.g. system/AuditEvent.rs)",
                    ));
                }
                let practitioner =
                    self.person
                        .as_ref()
                        .map(|p| zorgmesh_protocol::claims::Practitioner {
                            id: p.id.clone(),
                            role: p.role.clone().unwrap_or_default(),
                            name: p.name.clone().unwrap_or_default(),
                        });
                if practitioner.is_none() {
                    return Err(FhirError::invalid(format!(
                        "an access log review names the privacy officer in {PRACTITIONER_HEADER}"
                    )));
                }
                Ok(crate::data_plane::RequestContext {
                    client_id: self.client_id.clone(),
                    practitioner,
                    purpose: PurposeOfUse::Compliance,
                    emergency_reason: String::new(),
                })
            }
        }
    }

    pub fn require_dossier_of(
        &self,
        bsn: Option<&zorgmesh_protocol::Bsn>,
    ) -> Result<(), FhirError> {
        match self.kind {
            ClientKind::System => self.require("Patient", Interaction::Read),
            ClientKind::PatientApp => {
                if bsn.is_some() && bsn == self.patient.as_ref() && self.may_read("Patient") {
                    Ok(())
                } else {
                    Err(forbidden(
                        "a patient's app reads only its own patient's dossier",
                    ))
                }
            }
        }
    }
}

fn interaction_name(interaction: Interaction) -> &'static str {
    match interaction {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
    }
}

/// 403 with an OperationOutcome.
pub fn forbidden(text: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, "forbidden", text)
}

/// Why a request was not authenticated: a 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// The token is expired.
    Expired,
    /// The token is not valid (signature, issuer, client revoked, ...).
    Invalid(String),
}

impl AuthFailure {
    fn text(&self) -> String {
        match self {
            AuthFailure::Missing => {
                format!("this endpoint needs an access token (Authorization: Bearer …) from {TOKEN_PATH}")
            }
            AuthFailure::Expired => "the access token has expired: get a new one".to_owned(),
            AuthFailure::Invalid(text) => text.clone(),
        }
    }
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        let code = match self {
            AuthFailure::Expired => "expired",
            _ => "login",
        };
        let text = self.text();
        let mut response =
            FhirError::new(StatusCode::UNAUTHORIZED, code, text.clone()).into_response();
        let challenge = match self {
            AuthFailure::Missing => "Bearer realm=\"zorgmesh\"".to_owned(),
            _ => format!(
                "Bearer realm=\"zorgmesh\", error=\"invalid_token\", error_description=\"{}\"",
                text.replace(['"', '\\'], "'")
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// An OAuth 2.0 error answer of the token endpoint (RFC 6749 §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }
    fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            serde_json::json!({"error": self.error, "error_description": self.description})
                .to_string(),
        )
            .into_response()
    }
}

/// A granted access token (RFC 6749 §5.1).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TokenGrant {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
}

/// Checks client assertions, issues access tokens and authenticates requests.
pub struct Authenticator {
    registry: ClientRegistry,
    tokens: AccessTokens,
    /// The node's public base URL (`http://host:port`).
    pub issuer: String,
    /// `{issuer}/auth/token`: the `aud` of every client assertion.
    pub token_endpoint: String,
    lifetime_secs: u64,
    replay: Mutex<ReplayGuard>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    /// The node's authenticator: clients from `clients_file`, tokens under the secret in
    /// `token_key` (made, owner-only, when it is missing), issued by `public_url`.
    pub fn open(
        clients_file: &Path,
        token_key: &Path,
        public_url: &str,
        lifetime_secs: u64,
    ) -> anyhow::Result<Self> {
        let secret = token_secret(token_key)?;
        let issuer = public_url.trim_end_matches('/').to_owned();
        Ok(Self {
            registry: ClientRegistry::open(clients_file.to_path_buf())?,
            tokens: AccessTokens::new(&secret, issuer.clone(), format!("{issuer}/fhir")),
            token_endpoint: format!("{issuer}{TOKEN_PATH}"),
            issuer,
            lifetime_secs,
            replay: Mutex::new(ReplayGuard::default()),
        })
    }

    /// Answers a token request (the form fields of `POST /auth/token`).
    pub fn token_request(&self, form: &[(String, String)]) -> Result<TokenGrant, OAuthError> {
        let field = |name: &str| {
            let mut values = form
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            match (values.next(), values.next()) {
                (Some(_), Some(_)) => Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("{name} is given more than once"),
                )),
                (value, _) => Ok(value),
            }
        };
        match field("grant_type")? {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    format!("grant_type {other:?} is not supported: use client_credentials"),
                ))
            }
            None => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type is missing: use client_credentials",
                ))
            }
        }
        if field("client_assertion_type")? != Some(JWT_BEARER) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("client_assertion_type must be {JWT_BEARER}"),
            ));
        }
        let Some(assertion) = field("client_assertion")? else {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_assertion is missing: a JWT signed with the client's registered key",
            ));
        };
        let client_id = assertion::claimed_client(assertion)
            .map_err(|e| OAuthError::invalid_client(e.to_string()))?;
        if let Some(given) = field("client_id")? {
            if given != client_id {
                return Err(OAuthError::invalid_client(
                    "client_id differs from the client assertion's iss",
                ));
            }
        }
        let registry = self.registry.current();
        let client = registry
            .get(&client_id)
            .filter(|c| c.active())
            .ok_or_else(|| {
                OAuthError::invalid_client(format!("no active client {client_id:?} is registered"))
            })?;
        let now = now_secs();
        let (jti, exp) = assertion::verify_assertion(
            assertion,
            &client_id,
            &client.jwks,
            &self.token_endpoint,
            now,
        )
        .map_err(|e| OAuthError::invalid_client(e.to_string()))?;
        let registered = client.scopes();
        let requested = match field("scope")? {
            Some(text) => Scopes::parse(text).map_err(|e| {
                OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", e.to_string())
            })?,
            None => registered.clone(),
        };
        let granted = requested.within(&registered);
        if granted.is_empty() {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!(
                    "none of the requested scopes is registered for {client_id} (registered: {registered})"
                ),
            ));
        }
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&client_id, &jti, exp, now)
            .map_err(|e| match e {
                JwtError::Busy => OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    e.to_string(),
                ),
                _ => OAuthError::invalid_client(e.to_string()),
            })?;
        let scope = granted.to_string();
        tracing::info!(client = %client_id, scope = %scope, "access token issued");
        Ok(TokenGrant {
            access_token: self
                .tokens
                .issue(&client_id, &scope, now, self.lifetime_secs),
            token_type: "bearer".to_owned(),
            expires_in: self.lifetime_secs,
            scope,
        })
    }

    /// Authenticates a request by its bearer token and person headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AuthFailure::Missing);
        };
        let text = value
            .to_str()
            .map_err(|_| AuthFailure::Invalid("the Authorization header is not text".into()))?;
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(AuthFailure::Invalid(
                    "the Authorization header must be 'Bearer <access token>'".into(),
                ))
            }
        };
        let claims = self.tokens.verify(token).map_err(|e| match e {
            JwtError::Expired => AuthFailure::Expired,
            other => AuthFailure::Invalid(other.to_string()),
        })?;
        let registry = self.registry.current();
        let client = registry
            .get(&claims.sub)
            .filter(|c| c.active() && claims.iat + assertion::LEEWAY_SECS >= c.registered_at)
            .ok_or_else(|| {
                AuthFailure::Invalid(format!(
                    "client {:?} is not registered (any more): its tokens are void",
                    claims.sub
                ))
            })?;
        let scopes = Scopes::parse(&claims.scope)
            .map_err(|_| AuthFailure::Invalid("the access token's scopes are not valid".into()))?
            .within(&client.scopes());
        let patient = match (&client.kind, &client.patient_bsn) {
            (ClientKind::PatientApp, Some(bsn)) => zorgmesh_protocol::Bsn::parse(bsn).ok(),
            _ => None,
        };
        let person = person(headers).map_err(AuthFailure::Invalid)?;
        if person.is_some() && client.kind == ClientKind::PatientApp {
            return Err(AuthFailure::Invalid(
                "a patient's app acts for its own patient: it sends no practitioner headers".into(),
            ));
        }
        Ok(Principal {
            client_id: claims.sub,
            kind: client.kind,
            scopes,
            patient,
            person,
        })
    }

    /// The SMART configuration document (`/.well-known/smart-configuration`).
    pub fn smart_configuration(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported":
                assertion::ASSERTION_ALGORITHMS.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["system/*.cruds", "system/*.rs", "patient/*.rs", scope::ADMIN_SCOPE],
            "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
        })
    }
}

/// The person headers of a request, checked.
fn person(headers: &HeaderMap) -> Result<Option<Person>, String> {
    let read = |name: &str| -> Result<Option<String>, String> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        let text = value
            .to_str()
            .map_err(|_| format!("header {name} must be visible ASCII"))?
            .trim();
        if text.is_empty() || text.len() > MAX_PERSON_HEADER_BYTES {
            return Err(format!(
                "header {name} must have 1 to {MAX_PERSON_HEADER_BYTES} characters"
            ));
        }
        Ok(Some(text.to_owned()))
    };
    let id = read(PRACTITIONER_HEADER)?;
    let role = read(ROLE_HEADER)?;
    let name = read(NAME_HEADER)?;
    let Some(id) = id else {
        if role.is_some() || name.is_some() {
            return Err(format!(
                "{ROLE_HEADER} and {NAME_HEADER} describe the practitioner in {PRACTITIONER_HEADER}, which is missing"
            ));
        }
        return Ok(None);
    };
    match id.split_once('|') {
        Some((system, value)) if !system.is_empty() && !value.is_empty() => {}
        _ => {
            return Err(format!(
                "{PRACTITIONER_HEADER} must be system|value, e.g. http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789"
            ))
        }
    }
    Ok(Some(Person { id, role, name }))
}

/// The token secret in `path`: 32 random bytes, made owner-only when the file is missing.
fn token_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let secret: [u8; 32] = rand::random();
            file.write_all(hex::encode(secret).as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            Ok(secret.to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            crate::at_rest::check_private_file(path)?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let secret = hex::decode(text.trim())
                .ok()
                .filter(|s| s.len() >= 32)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} must hold at least 32 bytes in hex (delete it and the node makes a new one; tokens issued before are void then)",
                        path.display()
                    )
                })?;
            Ok(secret)
        }
        Err(e) => Err(anyhow::anyhow!("cannot create {}: {e}", path.display())),
    }
}

/// The client side: asks `credentials.token_endpoint` for a token with `scope` (all the
/// client's registered scopes when `None`).
pub async fn request_token(
    http: &reqwest::Client,
    credentials: &assertion::ClientCredentials,
    scope: Option<&str>,
) -> anyhow::Result<TokenGrant> {
    request_token_via(http, credentials, &credentials.token_endpoint, scope).await
}

/// [`request_token`], sent to `url` (the token endpoint as this client reaches it, e.g.
/// through a port mapping) while the assertion names the node's own token endpoint.
pub async fn request_token_via(
    http: &reqwest::Client,
    credentials: &assertion::ClientCredentials,
    url: &str,
    scope: Option<&str>,
) -> anyhow::Result<TokenGrant> {
    let assertion = credentials.assertion(now_secs(), 60)?;
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http
        .post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        anyhow::bail!("the token endpoint answered {status}: {text}");
    }
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("not a token answer ({e}): {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_headers_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(person(&headers), Ok(None));
        headers.insert(ROLE_HEADER, HeaderValue::from_static("01.015"));
        assert!(person(&headers).is_err());
        headers.insert(PRACTITIONER_HEADER, HeaderValue::from_static("123456789"));
        assert!(person(&headers).unwrap_err().contains("system|value"));
        headers.insert(
            PRACTITIONER_HEADER,
            HeaderValue::from_static("http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789"),
        );
        let found = person(&headers).unwrap().unwrap();
        assert_eq!(found.role.as_deref(), Some("01.015"));
        headers.insert(
            NAME_HEADER,
            HeaderValue::from_str(&"x".repeat(300)).unwrap(),
        );
        assert!(person(&headers).is_err());
    }

    #[test]
    fn only_discovery_metadata_liveness_and_the_token_endpoint_are_open() {
        use axum::http::Method;
        for (method, path, open) in [
            (Method::GET, "/fhir/metadata", true),
            (Method::GET, "/.well-known/smart-configuration", true),
            (Method::GET, "/fhir/.well-known/smart-configuration", true),
            (Method::GET, "/health", true),
            (Method::POST, "/auth/token", true),
            (Method::GET, "/auth/token", false),
            (Method::POST, "/fhir/metadata", false),
            (Method::GET, "/fhir/Patient", false),
            (Method::GET, "/admin/status", false),
            (Method::GET, "/fhir/metadata/", false),
        ] {
            assert_eq!(is_open(&method, path), open, "{method} {path}");
        }
    }
}
