//! The API's side of the access trail: what each request did, recorded before it is
//! answered, and the trail read back as `AuditEvent`s.

use super::{FhirError, FhirService};
use crate::audit::{AuditAction, AuditOutcome, AuditTrail};
use crate::auth::Principal;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use zorgmesh_protocol::audit::AuditRecord;
use zorgmesh_protocol::claims::{Practitioner, PurposeOfUse};
use zorgmesh_protocol::PatientKey;

/// What a handler tells the trail about the access it answered (a response extension).
#[derive(Clone, Debug, Default)]
pub struct AccessNote {
    /// The patients whose data the answer holds.
    pub patients: BTreeSet<PatientKey>,
    /// What: resource types and ids, or counts.
    pub what: String,
    /// Entries the handler made (the pulls of a `$dossier`), recorded with the request's
    /// own in one sync.
    pub also: Vec<AuditRecord>,
    /// What must still settle before the answer may go out (the holders' confirmations of
    /// a `$dossier`), awaited while the entries are written.
    pub settling: Settling,
}

/// Work an answer waits for besides its own entries: it ends either with the answer
/// standing (`None`) or with a replacement answer (`Some`), which is recorded in turn.
/// (A response extension is `Clone + Sync`, so the future sits behind a shared slot that the
/// trail takes it from once.)
#[derive(Clone, Default)]
pub struct Settling(Option<Arc<Mutex<Option<SettlingWork>>>>);

/// What an answer waits for: `Some` replacement answer, or `None`.
type SettlingWork = BoxFuture<'static, Option<Response>>;

impl Settling {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Self(None)
    }

    /// Waits for `work` before the answer goes out.
    pub fn on(work: impl std::future::Future<Output = Option<Response>> + Send + 'static) -> Self {
        Self(Some(Arc::new(Mutex::new(Some(Box::pin(work))))))
    }

    /// The work, once.
    fn take(&self) -> Option<SettlingWork> {
        self.0
            .as_ref()
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take())
    }
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Settling(..)"
        } else {
            "Settling(none)"
        })
    }
}

impl AccessNote {
    /// A note about the resources of an answer.
    pub fn of_resources<'a>(
        fhir: &FhirService,
        resources: impl IntoIterator<Item = &'a Value> + Clone,
    ) -> Self {
        let patients = fhir.patient_keys_of(resources.clone());
        Self {
            patients,
            what: crate::data_plane::resource_summary_of(resources),
            also: Vec::new(),
            settling: Settling::none(),
        }
    }

    /// Attaches the note to `response`.
    pub fn attach(self, mut response: Response) -> Response {
        response.extensions_mut().insert(self);
        response
    }
}

/// The action of a FHIR request, from its method and path.
pub fn action_of(method: &Method, path: &str) -> AuditAction {
    let segments: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if *method == Method::POST && matches!(segments.as_slice(), [_, "_search"]) {
        return AuditAction::Search;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return AuditAction::Write;
    }
    match segments.as_slice() {
        [_] => AuditAction::Search,
        ["Patient", "$dossier"] => AuditAction::Dossier,
        [_, _, "$everything"] => AuditAction::Everything,
        [_, _, "_history"] => AuditAction::History,
        _ => AuditAction::Read,
    }
}

/// The outcome an HTTP status stands for.
pub fn outcome_of(status: StatusCode) -> AuditOutcome {
    if status.is_success() {
        AuditOutcome::Success
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        AuditOutcome::Denied
    } else {
        AuditOutcome::Failed
    }
}

/// Who a request is for, as far as the trail is concerned.
pub struct Requester {
    pub actor: String,
    pub organisation: String,
    pub person: Option<Practitioner>,
    pub purpose: Option<PurposeOfUse>,
}

impl Requester {
    /// The requester of an authenticated request on this node (whose organisation is
    /// `organisation`).
    pub fn of(principal: &Principal, headers: &axum::http::HeaderMap, organisation: &str) -> Self {
        let context = principal.request_context(headers).ok();
        Self {
            actor: principal.client_id.clone(),
            organisation: organisation.to_owned(),
            person: context.as_ref().and_then(|c| c.practitioner.clone()),
            purpose: context.map(|c| c.purpose),
        }
    }
}

/// Records the answered request (one entry per patient whose data it holds) and returns the
/// response, or a 500 in its place when the trail cannot take it: an access that is not in
/// the trail is not answered. What the answer still waits for ([`AccessNote::settling`]) is
/// awaited while its entries are written; a replacement answer it yields is recorded and
/// returned in its place.
pub async fn record_answer(
    trail: &AuditTrail,
    requester: Requester,
    method: &Method,
    path: &str,
    mut response: Response,
) -> Response {
    loop {
        let note = response
            .extensions_mut()
            .remove::<AccessNote>()
            .unwrap_or_default();
        let records = records_of_answer(&requester, method, path, response.status(), &note);
        let settling = note.settling.take();
        let (appended, replacement) = futures::future::join(trail.append_all(records), async {
            match settling {
                Some(work) => work.await,
                None => None,
            }
        })
        .await;
        if let Err(e) = appended {
            tracing::error!(error = %e, %path, "an answer was withheld: the access trail cannot record it");
            return FhirError::internal(format!(
                "the access could not be recorded in the node's access trail, so it is not answered: {e}"
            ))
            .into_response();
        }
        match replacement {
            None => return response,
            Some(replacement) => response = replacement,
        }
    }
}

/// The entries of an answered request: the handler's own, then one per patient whose data
/// the answer holds (one without a patient when it holds none).
fn records_of_answer(
    requester: &Requester,
    method: &Method,
    path: &str,
    status: StatusCode,
    note: &AccessNote,
) -> Vec<AuditRecord> {
    let action = match action_of(method, path) {
        AuditAction::Dossier
            if status.is_success() && requester.purpose == Some(PurposeOfUse::Emergency) =>
        {
            AuditAction::BreakTheGlass
        }
        action => action,
    };
    let outcome = outcome_of(status);
    let what = if note.what.is_empty() {
        format!("{method} {path}")
    } else {
        format!("{method} {path}: {}", note.what)
    };
    let detail = if outcome == AuditOutcome::Success {
        String::new()
    } else {
        format!("answered {}", status.as_u16())
    };
    let record = |patient: Option<PatientKey>| AuditRecord {
        at_ms: super::service::now_ms(),
        action,
        outcome,
        actor: requester.actor.clone(),
        organisation: requester.organisation.clone(),
        person: requester.person.clone(),
        purpose: requester.purpose,
        patient,
        what: what.clone(),
        detail: detail.clone(),
    };
    let mut records: Vec<AuditRecord> = note.also.clone();
    if note.patients.is_empty() {
        records.push(record(None));
    } else {
        records.extend(note.patients.iter().map(|p| record(Some(*p))));
    }
    records
}

/// Records a failed authentication.
pub async fn record_refused_login(trail: &AuditTrail, method: &Method, path: &str, reason: String) {
    let record = AuditRecord {
        at_ms: super::service::now_ms(),
        action: AuditAction::AuthenticationFailed,
        outcome: AuditOutcome::Denied,
        actor: String::new(),
        organisation: String::new(),
        person: None,
        purpose: None,
        patient: None,
        what: format!("{method} {path}"),
        detail: reason,
    };
    if let Err(e) = trail.append(record).await {
        tracing::error!(error = %e, "a failed authentication could not be recorded");
    }
}

/// The parameters of an `AuditEvent` search this node understands.
pub struct AuditEventSearch {
    pub query: crate::audit::AuditQuery,
    pub count: usize,
}

/// Parses `AuditEvent` search parameters: `patient` (a local `Patient/id`),
/// `patient.identifier` (`system|value` of a BSN, resolved by `patient_key`), `entity`
/// (`https://zorgmesh.nl/fhir/NamingSystem/patient-key|<hex>`), `subtype` (an action code),
/// `date=ge…`, `_count`.
pub async fn parse_audit_search<F, Fut>(
    fhir: &FhirService,
    params: &[(String, String)],
    patient_key_of_bsn: F,
) -> Result<AuditEventSearch, FhirError>
where
    F: FnOnce(zorgmesh_protocol::Bsn) -> Fut,
    Fut: std::future::Future<Output = Result<PatientKey, FhirError>>,
{
    let mut query = crate::audit::AuditQuery::default();
    let mut count = 100;
    let mut bsn = None;
    for (name, value) in params {
        match name.as_str() {
            "patient" => {
                let id = value.trim_start_matches("Patient/");
                let key = fhir
                    .storage()
                    .patient_key_of(id)
                    .map_err(|e| FhirError::internal(e.to_string()))?
                    .ok_or_else(|| {
                        FhirError::not_found(format!(
                            "Patient/{id} has no patient key here (no such Patient, no BSN, or its key is still being derived)"
                        ))
                    })?;
                query.patient = Some(key);
            }
            "patient.identifier" => {
                bsn = Some(crate::dossier::requested_bsn(&[(
                    "identifier".to_owned(),
                    value.clone(),
                )])?);
            }
            "entity" | "entity.identifier" => {
                let hex = value
                    .strip_prefix(crate::audit::events::PATIENT_KEY_SYSTEM)
                    .and_then(|rest| rest.strip_prefix('|'))
                    .unwrap_or(value);
                query.patient = Some(PatientKey::from_hex(hex).ok_or_else(|| {
                    FhirError::invalid(format!("entity {value:?} is not a patient key (64 hex digits)"))
                })?);
            }
            "subtype" => {
                let code = value.rsplit('|').next().unwrap_or(value);
                let action = crate::audit::events::action_of_code(code).ok_or_else(|| {
                    FhirError::invalid(format!("subtype {code:?} is not an action of this trail"))
                })?;
                query.actions.push(action);
            }
            "date" => {
                let since = value.strip_prefix("ge").ok_or_else(|| {
                    FhirError::invalid("date is searched as date=ge<instant>")
                })?;
                let at = time::OffsetDateTime::parse(
                    since,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| FhirError::invalid(format!("date {since:?}: {e}")))?;
                query.since_ms = Some((at.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
            }
            "_count" => {
                count = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= crate::audit::MAX_QUERY_RESULTS)
                    .ok_or_else(|| {
                        FhirError::invalid(format!(
                            "_count must be 0 to {}",
                            crate::audit::MAX_QUERY_RESULTS
                        ))
                    })?;
            }
            other => {
                return Err(FhirError::invalid(format!(
                    "AuditEvent search parameter {other:?} is not supported (patient, patient.identifier, entity, subtype, date, _count)"
                )))
            }
        }
    }
    if let Some(bsn) = bsn {
        query.patient = Some(patient_key_of_bsn(bsn).await?);
    }
    Ok(AuditEventSearch { query, count })
}

/// The entries as a searchset Bundle of `AuditEvent`s, newest first.
pub fn audit_bundle(
    node: &str,
    base: &str,
    entries: &[zorgmesh_protocol::audit::AuditEntry],
) -> Value {
    let events: Vec<Value> = entries
        .iter()
        .rev()
        .map(|entry| {
            let event = crate::audit::events::audit_event(node, entry);
            json!({
                "fullUrl": format!("{base}/AuditEvent/{}", event["id"].as_str().unwrap_or_default()),
                "resource": event,
                "search": {"mode": "match"},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": events.len(), "entry": events})
}
