//! HTTP routing of the FHIR API (axum). Accepts `application/fhir+json` and
//! `application/json`; every response is `application/fhir+json`; every error an
//! OperationOutcome.

use super::access::{self, AccessNote};
use super::outcome::FHIR_JSON;
use super::resource::{http_date, MAX_RESOURCE_BYTES, RESOURCE_TYPES};
use super::{bundle, search, FhirError, FhirService};
use crate::auth::scope::Interaction;
use crate::auth::{Authenticator, Principal};
use crate::dossier::DossierResolver;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

/// Requests the API works on at once; more wait for a slot (back-pressure, no queue growth
/// beyond the OS accept backlog).
pub const MAX_CONCURRENT_REQUESTS: usize = 256;

/// The most query parameters an instance operation (`$everything`) reads.
pub const MAX_OPERATION_PARAMETERS: usize = 64;

/// Largest request body (a transaction Bundle).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Who may call: tokens, clients, scopes.
    pub auth: std::sync::Arc<Authenticator>,
    /// FHIR interactions.
    pub fhir: FhirService,
    /// Mesh-wide dossier resolution.
    pub dossier: DossierResolver,
    /// Base URL of this API, e.g. `http://127.0.0.1:8080/fhir`.
    pub base: String,
    /// Node name, for the CapabilityStatement.
    pub node_name: String,
    /// Rolls the node over to its next key (`POST /admin/rotate`).
    pub rotator: Option<std::sync::Arc<crate::rotation::Rotator>>,
    /// Produces the node's status document (`GET /admin/status`).
    pub status: std::sync::Arc<dyn Fn() -> Value + Send + Sync>,
    /// Takes online backups (`POST /admin/backup`).
    pub backups: Option<std::sync::Arc<crate::storage::BackupTaker>>,
    /// The access trail every data access is recorded in before it is answered.
    pub audit: crate::audit::AuditTrail,
    /// This node's organisation (URA): the organisation of every request its clients make.
    pub organisation: String,
    /// Cross-origin access for browser apps (`None`: no CORS headers).
    pub cors: Option<tower_http::cors::CorsLayer>,
}

/// The most origins `http_cors_origins` may list.
pub const MAX_CORS_ORIGINS: usize = 64;

/// The CORS policy for the configured origins (`None` when there are none): the FHIR
/// interactions' methods and request headers, and the response headers an app reads
/// (`ETag`, `Location`, `Last-Modified`, `Content-Location`); preflights are cached 10 min.
pub fn cors_layer(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    if origins.len() > MAX_CORS_ORIGINS {
        anyhow::bail!("http_cors_origins may list at most {MAX_CORS_ORIGINS} origins");
    }
    let allow = if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            anyhow::bail!("http_cors_origins: \"*\" allows every origin and stands alone");
        }
        AllowOrigin::any()
    } else {
        let mut values = Vec::with_capacity(origins.len());
        for origin in origins {
            // An origin is a scheme and an authority only: no path, query or user.
            let parsed = origin.parse::<axum::http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority()
                        .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty())
                    && u.path_and_query()
                        .is_none_or(|p| matches!(p.as_str(), "" | "/"))
                    && !origin.ends_with('/')
            });
            if parsed.is_none() {
                anyhow::bail!(
                    "http_cors_origins: {origin:?} is not an origin (scheme://host[:port], no path), or \"*\""
                );
            }
            values.push(HeaderValue::from_str(origin)?);
        }
        AllowOrigin::list(values)
    };
    let request_headers = [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::ACCEPT,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::HeaderName::from_static("if-none-exist"),
        header::HeaderName::from_static("prefer"),
    ];
    let response_headers = [
        header::ETAG,
        header::LOCATION,
        header::LAST_MODIFIED,
        header::CONTENT_LOCATION,
    ];
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers(request_headers)
            .expose_headers(response_headers)
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let cors = state.cors.clone();
    let router = Router::new()
        .route("/fhir", post(base_post).get(base_get))
        .route("/fhir/", post(base_post).get(base_get))
        .route("/fhir/metadata", get(metadata))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/health", get(health))
        .route(crate::auth::TOKEN_PATH, post(token))
        .route(
            "/fhir/{type}",
            get(search_type)
                .post(create)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route("/fhir/_history", get(system_history))
        .route("/fhir/{type}/_history", get(type_history))
        .route("/fhir/{type}/_search", post(search_type_post))
        .route(
            "/fhir/{type}/{id}",
            get(read)
                .put(update)
                .delete(delete)
                .patch(patch_resource)
                .post(type_operation_post),
        )
        .route(
            "/fhir/{type}/{id}/{operation}",
            get(instance_operation).post(instance_operation_post),
        )
        .route("/fhir/{type}/{id}/_history/{version}", get(vread))
        .route("/admin/status", get(status))
        .route("/admin/rotate", post(post_rotate))
        .route("/admin/backup", post(post_backup))
        .route(
            "/admin/revocations",
            post(post_revocations).get(get_revocations),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn(refuse_xml))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(state);
    // Outermost, so that a preflight (no token) is answered before authentication.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// True when a request asks for XML only (`_format=xml` or an `Accept` naming XML and no
/// JSON): this node speaks FHIR JSON.
fn wants_xml(headers: &HeaderMap, query: Option<&str>) -> bool {
    let format_xml = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(name, value)| {
            name == "_format"
                && matches!(
                    value.as_ref(),
                    "xml" | "text/xml" | "application/xml" | "application/fhir+xml"
                )
        })
    });
    let accept_xml = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            let accept = accept.to_ascii_lowercase();
            accept.contains("xml") && !accept.contains("json") && !accept.contains("*/*")
        });
    format_xml || accept_xml
}

/// 406 with an OperationOutcome for a request that asks for XML.
async fn refuse_xml(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if request.uri().path().starts_with("/fhir")
        && wants_xml(request.headers(), request.uri().query())
    {
        return FhirError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "this node answers in FHIR JSON only: ask for application/fhir+json",
        )
        .into_response();
    }
    next.run(request).await
}

/// The principal of an authenticated request (set by [`authenticate`]).
type Who = Extension<std::sync::Arc<Principal>>;

/// Lets the open endpoints through, and every other request only with a valid access token
/// (401 otherwise); `/admin/*` only with the admin scope (403 otherwise). Handlers check the
/// scopes for what they do.
async fn authenticate(
    State(state): State<ApiState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if crate::auth::is_open(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match state.auth.authenticate(request.headers()) {
        Ok(principal) => {
            if path.starts_with("/admin/") {
                if let Err(e) = principal.require_admin() {
                    return e.into_response();
                }
            }
            let requester =
                access::Requester::of(&principal, request.headers(), &state.organisation);
            request
                .extensions_mut()
                .insert(std::sync::Arc::new(principal));
            let response = next.run(request).await;
            if path.starts_with("/fhir") {
                access::record_answer(&state.audit, requester, &method, &path, response).await
            } else {
                response
            }
        }
        Err(failure) => {
            tracing::info!(%method, %path, reason = ?failure, "request refused: not authenticated");
            access::record_refused_login(&state.audit, &method, &path, format!("{failure:?}"))
                .await;
            failure.into_response()
        }
    }
}

/// `POST /auth/token`: the client-credentials grant of SMART Backend Services.
async fn token(State(state): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/x-www-form-urlencoded" {
        return crate::auth::OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "send the token request as application/x-www-form-urlencoded".into(),
        }
        .into_response();
    }
    let bytes = match read_body(body, crate::auth::MAX_TOKEN_REQUEST_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return crate::auth::OAuthError {
                status: e.status,
                error: "invalid_request",
                description: e.diagnostics,
            }
            .into_response()
        }
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    let auth = state.auth.clone();
    match tokio::task::spawn_blocking(move || auth.token_request(&form)).await {
        Ok(Ok(grant)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            serde_json::to_string(&grant).unwrap_or_default(),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::info!(error = e.error, reason = %e.description, "token request refused");
            e.into_response()
        }
        Err(e) => FhirError::internal(e.to_string()).into_response(),
    }
}

/// `GET /.well-known/smart-configuration`: where and how to get a token.
async fn smart_configuration(State(state): State<ApiState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        state.auth.smart_configuration().to_string(),
    )
        .into_response()
}

/// `GET /health`: the liveness probe (open; says nothing but that the API answers).
async fn health() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"up"}"#,
    )
        .into_response()
}

/// What each entry of a transaction or batch Bundle does, as (resource type, interaction):
/// the token must allow all of it.
fn bundle_interactions(bundle: &Value) -> Vec<(String, Interaction)> {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut needed = Vec::new();
    for entry in entries {
        let request = entry.get("request");
        let method = request
            .and_then(|r| r.get("method"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let url = request
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let path = url.split('?').next().unwrap_or("");
        let resource_type = path.split('/').next().unwrap_or("").to_owned();
        let interaction = match method {
            "POST" => Interaction::Create,
            "PUT" | "PATCH" => Interaction::Update,
            "DELETE" => Interaction::Delete,
            "GET" | "HEAD" if path.contains('/') => Interaction::Read,
            "GET" | "HEAD" => Interaction::Search,
            // Anything else is refused by the Bundle's own checks.
            _ => continue,
        };
        if !resource_type.is_empty() {
            needed.push((resource_type, interaction));
        }
    }
    needed
}

/// Leaves out of a result Bundle the resources the token may not read, and says how many.
fn withhold_unreadable(bundle: &mut Value, who: &Principal) {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    let mut withheld: std::collections::BTreeMap<String, usize> = Default::default();
    entries.retain(|entry| {
        let Some(resource_type) = entry
            .get("resource")
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str)
        else {
            return true;
        };
        if resource_type == "OperationOutcome" || who.may_read(resource_type) {
            return true;
        }
        *withheld.entry(resource_type.to_owned()).or_default() += 1;
        false
    });
    if withheld.is_empty() {
        return;
    }
    let text = withheld
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    entries.push(json!({
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "information",
                "code": "suppressed",
                "diagnostics": format!("left out because the token's scopes do not allow reading them: {text}")
            }]
        },
        "search": {"mode": "outcome"}
    }));
    if let Some(total) = bundle.get("total").and_then(Value::as_u64) {
        let left_out: usize = withheld.values().sum();
        bundle["total"] = json!(total.saturating_sub(left_out as u64));
    }
}

fn fhir_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}

fn versioned_response(
    status: StatusCode,
    stored: &super::service::Versioned,
    location: Option<String>,
) -> Response {
    let mut response = fhir_response(status, &stored.resource);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", stored.version)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(stored.last_updated_ms)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// The answer to a write, as `Prefer: return=…` asks: the resource (`representation`, the
/// default), nothing (`minimal`) or an OperationOutcome (`OperationOutcome`); the `ETag`,
/// `Last-Modified` and `Location` headers in every case.
fn written_response(
    status: StatusCode,
    stored: &super::service::Versioned,
    location: String,
    request: &HeaderMap,
) -> Response {
    let prefer = request
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|part| part.trim().strip_prefix("return=").map(str::to_owned));
    let mut response = versioned_response(status, stored, Some(location));
    match prefer.as_deref() {
        Some("minimal") => {
            *response.body_mut() = Body::empty();
            response.headers_mut().remove(header::CONTENT_TYPE);
        }
        Some("OperationOutcome") => {
            let outcome = super::outcome::operation_outcome(
                "information",
                "informational",
                &format!(
                    "{}/{} is at version {}",
                    stored.resource["resourceType"].as_str().unwrap_or_default(),
                    stored.resource["id"].as_str().unwrap_or_default(),
                    stored.version
                ),
            );
            let with_outcome = fhir_response(status, &outcome);
            let (mut parts, body) = with_outcome.into_parts();
            for name in [header::ETAG, header::LAST_MODIFIED, header::LOCATION] {
                if let Some(value) = response.headers().get(&name) {
                    parts.headers.insert(name, value.clone());
                }
            }
            return Response::from_parts(parts, body);
        }
        _ => {}
    }
    response
}

/// True when a read's `If-None-Match` names the current version, or its
/// `If-Modified-Since` is not before the last change: the client's copy is current (304).
fn not_modified(request: &HeaderMap, stored: &super::service::Versioned) -> bool {
    if let Some(tags) = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let current = format!("W/\"{}\"", stored.version);
        return tags
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag == current || tag == format!("\"{}\"", stored.version));
    }
    request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|text| {
            time::PrimitiveDateTime::parse(
                text,
                time::macros::format_description!(
                    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
                ),
            )
            .ok()
        })
        .is_some_and(|since| {
            let since_ms = since.assume_utc().unix_timestamp() * 1000;
            // HTTP dates are to the second.
            (stored.last_updated_ms as i64) / 1000 * 1000 <= since_ms
        })
}

/// The whole time a client has to send a request body: a client that trickles its body
/// does not hold a connection for longer.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Request bodies in memory at once, across requests, in units of [`BODY_UNIT`] bytes
/// (128 MiB): a burst of large Bundles is parsed a few at a time, not all at once.
const BODY_BUDGET_UNITS: usize = 2048;
/// One unit of the body budget.
const BODY_UNIT: usize = 64 * 1024;
/// How long a request waits for room in the body budget before it is answered 503.
const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
static BODY_BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BODY_BUDGET_UNITS);
/// The most budget units ever in use at once, and the requests answered 503 for want of
/// room.
static BODY_PEAK_UNITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static BODY_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The body budget's figures for `/admin/status`.
pub fn body_budget_status() -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "budget_bytes": BODY_BUDGET_UNITS * BODY_UNIT,
        "in_flight_bytes": (BODY_BUDGET_UNITS - BODY_BUDGET.available_permits()) * BODY_UNIT,
        "peak_in_flight_bytes": BODY_PEAK_UNITS.load(Relaxed) * BODY_UNIT,
        "refused_busy": BODY_REFUSED.load(Relaxed),
    })
}

/// A request body's share of the body budget, held until the request is done.
pub struct BodyPermit(#[allow(dead_code)] Option<tokio::sync::SemaphorePermit<'static>>);

/// Bodies up to this size (with a Content-Length) take nothing from the budget.
const SMALL_BODY: usize = 1024 * 1024;

/// Reserves room for a body of `announced` bytes (the Content-Length), or of `limit` when
/// the length is not announced.
async fn reserve_body(headers: &HeaderMap, limit: usize) -> Result<BodyPermit, FhirError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("request body exceeds {limit} bytes"),
        ));
    }
    // Small bodies (a single resource, a small Bundle) never wait behind large ones.
    if announced.is_some_and(|n| n <= SMALL_BODY) {
        return Ok(BodyPermit(None));
    }
    let units = announced
        .unwrap_or(limit)
        .div_ceil(BODY_UNIT)
        .clamp(1, BODY_BUDGET_UNITS);
    match tokio::time::timeout(BODY_BUDGET_WAIT, BODY_BUDGET.acquire_many(units as u32)).await {
        Ok(Ok(permit)) => {
            let in_use = BODY_BUDGET_UNITS - BODY_BUDGET.available_permits();
            BODY_PEAK_UNITS.fetch_max(in_use, std::sync::atomic::Ordering::Relaxed);
            Ok(BodyPermit(Some(permit)))
        }
        _ => {
            BODY_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the node is busy with other large requests: retry shortly",
            ))
        }
    }
}

/// Reads a request body of at most `limit` bytes within [`BODY_READ_TIMEOUT`].
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, FhirError> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(FhirError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(_)) => Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("request body exceeds {limit} bytes or broke off"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(Value, BodyPermit), FhirError> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "the request has no Content-Type: send application/fhir+json",
        ));
    };
    let text = content_type.to_str().unwrap_or("").to_ascii_lowercase();
    let media = text.split(';').next().unwrap_or("").trim();
    if !matches!(
        media,
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("content type {media:?} is not supported: send application/fhir+json"),
        ));
    }
    let permit = reserve_body(headers, limit).await?;
    let bytes = read_body(body, limit).await?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| FhirError::invalid(format!("the body is not valid JSON: {e}")))?;
    Ok((value, permit))
}

fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    text.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| FhirError::invalid(format!("If-Match {text:?} must be W/\"<version>\"")))
}

async fn base_post(
    State(state): State<ApiState>,
    Extension(who): Who,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let (bundle, _permit) = read_json(&headers, body, MAX_BODY_BYTES).await?;
        for (resource_type, interaction) in bundle_interactions(&bundle) {
            who.require(&resource_type, interaction)?;
        }
        bundle::process(&state.fhir, bundle).await
    }
    .await;
    match result {
        Ok(response) => fhir_response(StatusCode::OK, &response),
        Err(e) => e.into_response(),
    }
}

/// The resources of a Bundle's entries.
fn bundle_resources(bundle: &Value) -> impl Iterator<Item = &Value> + Clone {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|entry| entry["search"]["mode"] != "outcome")
        .map(|entry| &entry["resource"])
        .filter(|resource| resource.is_object())
}

/// `GET /fhir/AuditEvent?…`: this node's own trail, newest first.
async fn search_audit_events(state: &ApiState, params: &[(String, String)]) -> Response {
    let result = async {
        let search =
            access::parse_audit_search(&state.fhir, params, |bsn| state.dossier.patient_key(bsn))
                .await?;
        let entries = state
            .audit
            .query(search.query, search.count)
            .await
            .map_err(|e| FhirError::internal(e.to_string()))?;
        Ok::<_, FhirError>(access::audit_bundle(
            &state.node_name,
            &state.base,
            &entries,
        ))
    }
    .await;
    match result {
        Ok(bundle) => fhir_response(StatusCode::OK, &bundle),
        Err(e) => e.into_response(),
    }
}

/// `GET /fhir/_history`: every type's versions (those the client may read).
async fn system_history(
    State(state): State<ApiState>,
    Extension(who): Who,
    RawQuery(query): RawQuery,
) -> Response {
    match state.fhir.changes(None, &parse_query(query), &state.base) {
        Ok(mut bundle) => {
            // Deletes carry no resource: judged by the type in their URL.
            if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
                entries.retain(|entry| {
                    entry["request"]["url"]
                        .as_str()
                        .and_then(|url| url.split('/').next())
                        .is_some_and(|t| who.may_read(t))
                });
            }
            withhold_unreadable(&mut bundle, &who);
            AccessNote::of_resources(&state.fhir, bundle_resources(&bundle))
                .attach(fhir_response(StatusCode::OK, &bundle))
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /fhir/{type}/_history`.
async fn type_history(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(e) = who.require(&resource_type, Interaction::Read) {
        return e.into_response();
    }
    match state
        .fhir
        .changes(Some(&resource_type), &parse_query(query), &state.base)
    {
        Ok(bundle) => AccessNote::of_resources(&state.fhir, bundle_resources(&bundle))
            .attach(fhir_response(StatusCode::OK, &bundle)),
        Err(e) => e.into_response(),
    }
}

async fn base_get() -> Response {
    FhirError::not_supported("system-wide search is not supported: search a resource type")
        .into_response()
}

async fn metadata(State(state): State<ApiState>) -> Response {
    fhir_response(StatusCode::OK, &capability_statement(&state))
}

/// `Prefer: handling=strict`: refuse search parameters that cannot be applied.
fn handling_is_strict(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|part| part.trim().eq_ignore_ascii_case("handling=strict"))
}

async fn search_type(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = who.require(&resource_type, Interaction::Search) {
        return e.into_response();
    }
    run_search(&state, &who, &resource_type, parse_query(query), &headers).await
}

/// The most bytes of a `POST [type]/_search` form.
const MAX_SEARCH_FORM_BYTES: usize = 64 * 1024;

/// `POST /fhir/{type}/_search`: the parameters of the form body and of the URL together.
async fn search_type_post(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = who.require(&resource_type, Interaction::Search) {
        return e.into_response();
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/x-www-form-urlencoded" {
        return FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "POST [type]/_search takes application/x-www-form-urlencoded",
        )
        .into_response();
    }
    let bytes = match read_body(body, MAX_SEARCH_FORM_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let mut params = parse_query(query);
    params.extend(form_urlencoded::parse(&bytes).into_owned());
    run_search(&state, &who, &resource_type, params, &headers).await
}

async fn run_search(
    state: &ApiState,
    who: &Principal,
    resource_type: &str,
    params: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Response {
    if resource_type == "AuditEvent" {
        return search_audit_events(state, &params).await;
    }
    match search::search(
        &state.fhir,
        resource_type,
        &params,
        &state.base,
        handling_is_strict(headers),
        &|t: &str| who.may_read(t),
    ) {
        Ok(bundle) => {
            let note = AccessNote::of_resources(&state.fhir, bundle_resources(&bundle));
            note.attach(fhir_response(StatusCode::OK, &bundle))
        }
        Err(e) => e.into_response(),
    }
}

async fn create(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        super::resource::check_type(&resource_type)?;
        who.require(&resource_type, Interaction::Create)?;
        let (resource, _permit) = read_json(&headers, body, MAX_RESOURCE_BYTES).await?;
        // The condition of a conditional create: the If-None-Exist header, or (as fhirpy's
        // get_or_create sends it) the query string of `POST [type]?[search]`.
        let condition = match (if_none_exist(&headers)?, query.filter(|q| !q.is_empty())) {
            (Some(_), Some(_)) => return Err(FhirError::invalid(
                "a conditional create gives its condition once: If-None-Exist or the query string",
            )),
            (header, query) => header.or(query),
        };
        match condition {
            Some(condition) => {
                // Finding the existing resource is a search: the client needs that scope too.
                who.require(&resource_type, Interaction::Search)?;
                state
                    .fhir
                    .create_if_none_exist(&resource_type, resource, &condition, &state.base)
                    .await
            }
            None => state.fhir.create(&resource_type, resource).await,
        }
    }
    .await;
    match result {
        Ok(written) => {
            let id = written.stored.resource["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let location = format!(
                "{}/{resource_type}/{id}/_history/{}",
                state.base, written.stored.version
            );
            let status = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            AccessNote::of_resources(&state.fhir, [&written.stored.resource]).attach(
                written_response(status, &written.stored, location, &headers),
            )
        }
        Err(e) => e.into_response(),
    }
}

/// The `If-None-Exist` header of a conditional create: a search query string.
fn if_none_exist(headers: &HeaderMap) -> Result<Option<String>, FhirError> {
    let Some(value) = headers.get("if-none-exist") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| FhirError::invalid("If-None-Exist must be a query string"))?;
    // Clients send it with or without the type and '?' in front.
    let query = text.rsplit_once('?').map_or(text, |(_, q)| q).trim();
    if query.is_empty() {
        return Err(FhirError::invalid("If-None-Exist holds no search criteria"));
    }
    Ok(Some(query.to_owned()))
}

/// `PATCH /fhir/{type}/{id}`: JSON Patch (`application/json-patch+json`), a JSON merge patch,
/// or a FHIRPath Patch (a Parameters body).
async fn patch_resource(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        super::resource::check_type(&resource_type)?;
        who.require(&resource_type, Interaction::Update)?;
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json_patch = match media.as_str() {
            "application/json-patch+json" => true,
            "application/merge-patch+json" | "application/json" | "application/fhir+json" => false,
            other => {
                return Err(FhirError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    format!(
                        "PATCH takes application/json-patch+json (RFC 6902), a JSON merge patch (RFC 7396) or a FHIRPath Patch (application/fhir+json Parameters), not {other:?}"
                    ),
                ))
            }
        };
        let expected = if_match(&headers)?;
        let _permit = reserve_body(&headers, MAX_RESOURCE_BYTES).await?;
        let bytes = read_body(body, MAX_RESOURCE_BYTES).await?;
        let patch = if json_patch {
            let patch: json_patch::Patch = serde_json::from_slice(&bytes)
                .map_err(|e| FhirError::invalid(format!("the body is not a JSON Patch: {e}")))?;
            super::service::Patch::Json(patch)
        } else {
            let merge: Value = serde_json::from_slice(&bytes)
                .map_err(|e| FhirError::invalid(format!("the body is not JSON: {e}")))?;
            if !merge.is_object() {
                return Err(FhirError::invalid("a merge patch is a JSON object"));
            }
            if super::fhirpath_patch::is_fhirpath_patch(&merge) {
                let patch = super::fhirpath_patch::FhirpathPatch::parse(&merge).map_err(|e| {
                    FhirError::invalid(format!("the body is not a FHIRPath Patch: {e}"))
                })?;
                super::service::Patch::Fhirpath(patch)
            } else {
                super::service::Patch::Merge(merge)
            }
        };
        state.fhir.patch(&resource_type, &id, &patch, expected).await
    }
    .await;
    match result {
        Ok(written) => {
            let location = format!(
                "{}/{resource_type}/{id}/_history/{}",
                state.base, written.stored.version
            );
            AccessNote::of_resources(&state.fhir, [&written.stored.resource]).attach(
                written_response(StatusCode::OK, &written.stored, location, &headers),
            )
        }
        Err(e) => e.into_response(),
    }
}

/// `PUT /fhir/{type}?<search>`: conditional update.
async fn conditional_update(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        super::resource::check_type(&resource_type)?;
        who.require(&resource_type, Interaction::Update)?;
        who.require(&resource_type, Interaction::Search)?;
        let condition = query.filter(|q| !q.is_empty()).ok_or_else(|| {
            FhirError::invalid("PUT on a type needs search criteria (PUT [type]?[search])")
        })?;
        let expected = if_match(&headers)?;
        let (resource, _permit) = read_json(&headers, body, MAX_RESOURCE_BYTES).await?;
        state
            .fhir
            .conditional_update(&resource_type, &condition, resource, expected, &state.base)
            .await
    }
    .await;
    match result {
        Ok(written) => {
            let status = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let id = written.stored.resource["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let location = format!(
                "{}/{resource_type}/{id}/_history/{}",
                state.base, written.stored.version
            );
            AccessNote::of_resources(&state.fhir, [&written.stored.resource]).attach(
                written_response(status, &written.stored, location, &headers),
            )
        }
        Err(e) => e.into_response(),
    }
}

/// `DELETE /fhir/{type}?<search>`: conditional delete.
async fn conditional_delete(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        super::resource::check_type(&resource_type)?;
        who.require(&resource_type, Interaction::Delete)?;
        who.require(&resource_type, Interaction::Search)?;
        let condition = query.filter(|q| !q.is_empty()).ok_or_else(|| {
            FhirError::invalid("DELETE on a type needs search criteria (DELETE [type]?[search])")
        })?;
        state
            .fhir
            .conditional_delete(&resource_type, &condition, &state.base)
            .await
    }
    .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// A `$dossier` answer (without what `who` may not read), noting the patient, what it holds
/// and the pull entries for the trail. It goes out once every holder whose data it holds
/// has confirmed that it recorded the pull (awaited while this node records its own
/// entries); without a holder that did not, the dossier is resolved again and that answer
/// goes out in its place.
fn dossier_answer(
    who: std::sync::Arc<Principal>,
    patient: zorgmesh_protocol::PatientKey,
    resolved: crate::dossier::Resolved,
) -> Response {
    let mut bundle = resolved.bundle;
    withhold_unreadable(&mut bundle, &who);
    let what = crate::data_plane::resource_summary_of(bundle_resources(&bundle));
    let settling = match resolved.unconfirmed {
        Some(unconfirmed) => access::Settling::on(async move {
            Some(match unconfirmed.settle().await? {
                Ok(again) => dossier_answer(who, patient, again),
                Err(e) => e.into_response(),
            })
        }),
        None => access::Settling::none(),
    };
    AccessNote {
        patients: [patient].into(),
        what,
        also: resolved.pulls,
        settling,
    }
    .attach(fhir_response(StatusCode::OK, &bundle))
}

async fn read(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if resource_type == "Patient" && id == "$dossier" {
        let params = parse_query(query);
        let result = async {
            let bsn = crate::dossier::requested_bsn(&params)?;
            who.require_dossier_of(Some(&bsn))?;
            let context = who.request_context(&headers)?;
            state.dossier.resolve_request(&params, &context).await
        }
        .await;
        return match result {
            Ok((patient, resolved)) => dossier_answer(who, patient, resolved),
            Err(e) => e.into_response(),
        };
    }
    if resource_type == "Patient" && id == "$access-log" {
        let params = parse_query(query);
        let result = async {
            let bsn = crate::dossier::requested_bsn(&params)?;
            let context = who.access_log_context(&bsn, &headers)?;
            let patient = state.dossier.patient_key(bsn).await?;
            let bundle = state
                .dossier
                .access_log(patient, &context, &state.node_name)
                .await?;
            Ok::<_, FhirError>((patient, bundle))
        }
        .await;
        return match result {
            Ok((patient, bundle)) => AccessNote {
                patients: [patient].into(),
                what: format!("access log: {} events", bundle["total"]),
                also: Vec::new(),
                settling: access::Settling::none(),
            }
            .attach(fhir_response(StatusCode::OK, &bundle)),
            Err(e) => e.into_response(),
        };
    }
    if let Err(e) = who.require(&resource_type, Interaction::Read) {
        return e.into_response();
    }
    let params = parse_query(query);
    match state.fhir.read(&resource_type, &id) {
        Ok(stored) if not_modified(&headers, &stored) => {
            let mut response = versioned_response(StatusCode::NOT_MODIFIED, &stored, None);
            *response.body_mut() = Body::empty();
            response.headers_mut().remove(header::CONTENT_TYPE);
            AccessNote::of_resources(&state.fhir, [&stored.resource]).attach(response)
        }
        Ok(stored) => shaped_read_response(&state, stored, &params),
        Err(e) => e.into_response(),
    }
}

/// A read's answer: the resource as `_summary` / `_elements` ask (the ETag and
/// Last-Modified of the whole version either way).
fn shaped_read_response(
    state: &ApiState,
    mut stored: super::service::Versioned,
    params: &[(String, String)],
) -> Response {
    let note = AccessNote::of_resources(&state.fhir, [&stored.resource]);
    match super::search::shape_read(std::mem::take(&mut stored.resource), params) {
        Ok(shaped) => {
            stored.resource = shaped;
            note.attach(versioned_response(StatusCode::OK, &stored, None))
        }
        Err(e) => e.into_response(),
    }
}

async fn update(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        super::resource::check_type(&resource_type)?;
        who.require(&resource_type, Interaction::Update)?;
        let expected = if_match(&headers)?;
        let (resource, _permit) = read_json(&headers, body, MAX_RESOURCE_BYTES).await?;
        state
            .fhir
            .update(&resource_type, &id, resource, expected)
            .await
    }
    .await;
    match result {
        Ok(written) => {
            let status = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let location = format!(
                "{}/{resource_type}/{id}/_history/{}",
                state.base, written.stored.version
            );
            AccessNote::of_resources(&state.fhir, [&written.stored.resource]).attach(
                written_response(status, &written.stored, location, &headers),
            )
        }
        Err(e) => e.into_response(),
    }
}

async fn delete(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = who.require(&resource_type, Interaction::Delete) {
        return e.into_response();
    }
    let expected = match if_match(&headers) {
        Ok(expected) => expected,
        Err(e) => return e.into_response(),
    };
    match state.fhir.delete(&resource_type, &id, expected).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /fhir/{type}/$validate` (the only type-level operation taken by POST).
async fn type_operation_post(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if operation != "$validate" {
        return method_not_allowed().await;
    }
    validate_operation(&state, &who, &resource_type, None, &headers, body).await
}

/// `POST /fhir/{type}/{id}/$validate`.
async fn instance_operation_post(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id, operation)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if operation != "$validate" {
        return FhirError::not_supported(format!(
            "{operation:?} is not an operation this server takes by POST on a {resource_type}"
        ))
        .into_response();
    }
    validate_operation(&state, &who, &resource_type, Some(&id), &headers, body).await
}

/// `$validate`: 200 with an OperationOutcome of every problem the resource has (or one
/// `information` issue when it has none); 4xx only when the validation could not be done.
/// The body is the resource, or a Parameters with `resource`, `mode` (`create`, the default
/// without an id; `update`, the default with one; `delete`) and `profile`.
async fn validate_operation(
    state: &ApiState,
    who: &Principal,
    resource_type: &str,
    id: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        super::resource::check_type(resource_type)?;
        if let Some(id) = id {
            super::resource::check_id(id)?;
        }
        let (body, _permit) = read_json(headers, body, MAX_RESOURCE_BYTES).await?;
        let request = super::validation::ValidateRequest::of_body(resource_type, body)?;
        let mode = request.mode.unwrap_or(if id.is_some() {
            super::validation::Mode::Update
        } else {
            super::validation::Mode::Create
        });
        who.require(resource_type, mode.interaction())?;
        super::validation::run(&state.fhir, resource_type, id, request, mode)
    }
    .await;
    match result {
        Ok(issues) => fhir_response(StatusCode::OK, &super::outcome::issues_outcome(&issues)),
        Err(e) => e.into_response(),
    }
}

async fn instance_operation(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id, operation)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(e) = who.require(&resource_type, Interaction::Read) {
        return e.into_response();
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .take(MAX_OPERATION_PARAMETERS + 1)
            .collect();
    if params.len() > MAX_OPERATION_PARAMETERS {
        return FhirError::invalid(format!(
            "an operation takes at most {MAX_OPERATION_PARAMETERS} parameters"
        ))
        .into_response();
    }
    match (resource_type.as_str(), operation.as_str()) {
        ("Patient", "$everything") => match state.fhir.everything_page(&id, &params, &state.base) {
            Ok(mut bundle) => {
                withhold_unreadable(&mut bundle, &who);
                AccessNote::of_resources(&state.fhir, bundle_resources(&bundle))
                    .attach(fhir_response(StatusCode::OK, &bundle))
            }
            Err(e) => e.into_response(),
        },
        (_, "_history") => match state.fhir.history(&resource_type, &id, &state.base) {
            Ok(bundle) => AccessNote::of_resources(&state.fhir, bundle_resources(&bundle))
                .attach(fhir_response(StatusCode::OK, &bundle)),
            Err(e) => e.into_response(),
        },
        _ => FhirError::not_found(format!(
            "operation {operation:?} is not known on {resource_type}"
        ))
        .into_response(),
    }
}

async fn vread(
    State(state): State<ApiState>,
    Extension(who): Who,
    Path((resource_type, id, version)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(e) = who.require(&resource_type, Interaction::Read) {
        return e.into_response();
    }
    let params = parse_query(query);
    match state.fhir.vread(&resource_type, &id, &version) {
        Ok(stored) => shaped_read_response(&state, stored, &params),
        Err(e) => e.into_response(),
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        (state.status)().to_string(),
    )
        .into_response()
}

/// Largest revocation list body (PEM of a full list).
const MAX_REVOCATION_BODY: usize = 2 * 1024 * 1024;

fn admin_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `POST /admin/revocations`: a CA-signed revocation list (PEM or raw). Only the CA's
/// signature gives it force, so whoever hands it in needs no other right.
async fn post_revocations(State(state): State<ApiState>, body: Body) -> Response {
    let bytes = match read_body(body, MAX_REVOCATION_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => return admin_json(e.status, &json!({ "error": e.diagnostics })),
    };
    let list = match zorgmesh_certs::parse_revocation_list(&bytes) {
        Ok(list) => list,
        Err(e) => return admin_json(StatusCode::BAD_REQUEST, &json!({ "error": e })),
    };
    let mesh = state.dossier.mesh.clone();
    let applied = tokio::task::spawn_blocking(move || mesh.apply_revocations(list)).await;
    match applied {
        Ok(Ok(crate::mesh::RevocationOutcome::Applied {
            sequence,
            newly_revoked,
            removed_entries,
        })) => admin_json(
            StatusCode::OK,
            &json!({
                "applied": true,
                "sequence": sequence,
                "newly_revoked": newly_revoked.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
                "removed_entries": removed_entries,
            }),
        ),
        Ok(Ok(crate::mesh::RevocationOutcome::Stale)) => admin_json(
            StatusCode::OK,
            &json!({
                "applied": false,
                "reason": "this node already holds this list or a newer one",
                "sequence": state.dossier.mesh.revocation_sequence(),
            }),
        ),
        Ok(Err(e)) => admin_json(StatusCode::BAD_REQUEST, &json!({ "error": e })),
        Err(e) => admin_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": e.to_string() }),
        ),
    }
}

/// `POST /admin/rotate`: hand the node's log over to the key and certificate that
/// `zorgmesh certs rotate` put beside its files, and switch to them without stopping.
async fn post_rotate(State(state): State<ApiState>) -> Response {
    let Some(rotator) = state.rotator.clone() else {
        return admin_json(
            StatusCode::NOT_IMPLEMENTED,
            &json!({"error": "this node cannot rotate its key"}),
        );
    };
    match rotator.rotate().await {
        Ok(report) => admin_json(
            StatusCode::OK,
            &json!({ "rotated": true, "report": report }),
        ),
        Err(e @ crate::rotation::RotationError::Storage(_)) => admin_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "rotated": false, "error": e.to_string() }),
        ),
        Err(e) => admin_json(
            StatusCode::CONFLICT,
            &json!({ "rotated": false, "error": e.to_string() }),
        ),
    }
}

/// `POST /admin/backup`: a consistent backup of the whole store into the node's backup
/// directory (`backup_dir`). Only from the node's own host: the backup holds every record.
async fn post_backup(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Response {
    if !remote.ip().to_canonical().is_loopback() {
        return admin_json(
            StatusCode::FORBIDDEN,
            &json!({"error": "backups are taken from the node's own host (loopback) only"}),
        );
    }
    let Some(backups) = state.backups.clone() else {
        return admin_json(
            StatusCode::NOT_IMPLEMENTED,
            &json!({"error": "this node takes no backups"}),
        );
    };
    match backups.take().await {
        Ok(taken) => admin_json(StatusCode::OK, &json!(taken)),
        Err(crate::storage::BackupRefused::Busy) => admin_json(
            StatusCode::CONFLICT,
            &json!({"error": "a backup is being taken already"}),
        ),
        Err(e) => admin_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": e.to_string()}),
        ),
    }
}

/// `GET /admin/revocations`: the revocation list this node applies.
async fn get_revocations(State(state): State<ApiState>) -> Response {
    let list = state.dossier.mesh.revocation_list();
    admin_json(
        StatusCode::OK,
        &json!({
            "sequence": list.as_ref().map_or(0, |l| l.body.sequence),
            "revoked": list.iter().flat_map(|l| l.body.revocations.iter()).map(|r| json!({
                "node": r.node.to_hex(),
                "name": r.name,
                "revoked_at_ms": r.revoked_at_ms,
                "reason": r.reason,
            })).collect::<Vec<_>>(),
        }),
    )
}

async fn unknown_route() -> Response {
    FhirError::not_found("no such endpoint: the FHIR API lives under /fhir").into_response()
}

async fn method_not_allowed() -> Response {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "method not allowed on this endpoint",
    )
    .into_response()
}

/// `$validate`, as the CapabilityStatement lists it for every type.
static VALIDATE_OPERATION: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        "documentation": "POST [type]/$validate or [type]/[id]/$validate (mode create, update, delete): the R4 structure and required bindings; profiles are not checked"})
});

fn capability_statement(state: &ApiState) -> Value {
    let resources: Vec<Value> = RESOURCE_TYPES
        .iter()
        .map(|t| {
            let mut resource = json!({
                "type": t,
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "history-instance"}, {"code": "update"},
                    {"code": "patch"}, {"code": "delete"}, {"code": "create"}, {"code": "search-type"}
                ],
                "searchParam": search::capability_parameters(t),
                "operation": [VALIDATE_OPERATION.clone()]
            });
            if *t == "Patient" {
                resource["operation"] = json!([
                    VALIDATE_OPERATION.clone(),
                    {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                    {"name": "dossier", "definition": "urn:zorgmesh:OperationDefinition/Patient-dossier",
                     "documentation": "GET [base]/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|<bsn>: the patient's resources from every holder in the mesh, each naming its origin"},
                    {"name": "access-log", "definition": "urn:zorgmesh:OperationDefinition/Patient-access-log",
                     "documentation": "GET [base]/Patient/$access-log?identifier=http://fhir.nl/fhir/NamingSystem/bsn|<bsn>: every access to the patient's data across the mesh as AuditEvents (a patient's app for its own patient; a privacy officer with AuditEvent read, named in Zorgmesh-Practitioner), naming nodes that did not answer"}
                ]);
            }
            if *t == "AuditEvent" {
                // The node's own access trail, read-only.
                resource = json!({
                    "type": t,
                    "documentation": "This node's access trail (NEN 7513), after IHE Basic Audit Log Patterns; entries are made by the node, not by clients",
                    "interaction": [{"code": "search-type"}],
                    "searchParam": [
                        {"name": "patient", "type": "reference"},
                        {"name": "patient.identifier", "type": "token"},
                        {"name": "entity", "type": "reference", "documentation": "https://zorgmesh.nl/fhir/NamingSystem/patient-key|<hex>"},
                        {"name": "subtype", "type": "token"},
                        {"name": "date", "type": "date", "documentation": "ge<instant> only"},
                        {"name": "_count", "type": "number"}
                    ]
                });
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": super::resource::instant(super::service::now_ms()),
        "kind": "instance",
        "software": {"name": "zorgmesh", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": format!("zorgmesh node {}", state.node_name), "url": state.base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": state.cors.is_some(),
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "description": "SMART Backend Services: client-credentials grant with a signed JWT assertion; SMART v2 scopes",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": state.auth.token_endpoint}]
                }]
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}]
        }]
    })
}

#[cfg(test)]
mod cors_tests {
    use super::cors_layer;

    #[test]
    fn cors_origins_are_origins_or_a_lone_star() {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(cors_layer(&[]).unwrap().is_none());
        for good in [
            &["https://viewer.example.org"][..],
            &["http://localhost:3000", "https://a.example.nl"],
            &["*"],
        ] {
            assert!(cors_layer(&owned(good)).unwrap().is_some(), "{good:?}");
        }
        for bad in [
            &["https://viewer.example.org/"][..],
            &["https://viewer.example.org/app"],
            &["https://viewer.example.org?x=1"],
            &["ftp://viewer.example.org"],
            &["viewer.example.org"],
            &["https://user@viewer.example.org"],
            &["*", "https://viewer.example.org"],
            &[""],
        ] {
            let error = cors_layer(&owned(bad)).unwrap_err().to_string();
            assert!(error.contains("http_cors_origins"), "{bad:?}: {error}");
        }
        let many: Vec<String> = (0..65)
            .map(|i| format!("https://a{i}.example.org"))
            .collect();
        assert!(cors_layer(&many).is_err());
    }
}
