//! `GET /fhir/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|<bsn>`:
//! resolve a patient's dossier across the whole mesh.
//!
//! The BSN becomes the patient key; the node's own index names the holders; a
//! [`ResolutionPlan`] (sans-IO) gives every holder a deadline; all holders are fetched in
//! parallel over QUIC (this node's own data is read locally). The answer is one searchset
//! Bundle in which every resource names its origin in `meta.source` and a `meta.tag`
//! (system [`ORIGIN_SYSTEM`], code = node name, display = organisation), and every holder
//! that failed or timed out is listed in an OperationOutcome entry with issue code
//! `incomplete`. Copies of one shared resource held by several nodes are merged into one
//! entry that carries every origin.

use crate::data_plane::{DataPlane, Holding, RecordConfirmation};
use crate::fhir::{FhirError, FhirService};
use crate::mesh::Mesh;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use zorgmesh_protocol::index::HolderLocation;
use zorgmesh_protocol::locator::{category_names, holding_commitment, HeldResource};
use zorgmesh_protocol::patient::BSN_SYSTEM;
use zorgmesh_protocol::resolve::{HolderState, ResolutionPlan};
use zorgmesh_protocol::{Bsn, LocatorEntry, NodeId, PatientKey};

/// `meta.tag` system naming the node a resource came from.
pub const ORIGIN_SYSTEM: &str = "urn:zorgmesh:origin-node";
/// `meta.tag` system naming the organisation (URA) a resource came from.
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
/// Types whose copies on several holders are merged by business identifier.
const SHARED_TYPES: &[&str] = &[
    "Organization",
    "Practitioner",
    "Location",
    "Medication",
    "Substance",
    "Device",
];

/// A resolved dossier and the trail entries of the pulls made for it.
pub struct Resolved {
    /// The searchset Bundle.
    pub bundle: Value,
    /// One entry per holder asked (and a consent decision where it withheld).
    pub pulls: Vec<zorgmesh_protocol::audit::AuditRecord>,
    /// The confirmations still to come from the holders whose answers the bundle holds:
    /// the bundle may be answered only once [`Unconfirmed::settle`] has said so.
    pub unconfirmed: Option<Unconfirmed>,
}

/// What one holder's fetch came to.
struct Fetched {
    node: NodeId,
    name: String,
    /// Its resources, whether they differ from its locator entry, whether consent withheld
    /// some; or why the fetch failed.
    result: Result<(Vec<Value>, Option<String>, bool), String>,
    /// The trail entries of the pull (none for this node's own data).
    records: Vec<zorgmesh_protocol::audit::AuditRecord>,
    /// The holder's confirmation still to come.
    confirmation: Option<RecordConfirmation>,
}

/// A dossier whose holders have sent their answers but not yet confirmed that they
/// recorded the access (their `End`).
pub struct Unconfirmed {
    resolver: DossierResolver,
    context: crate::data_plane::RequestContext,
    patient: PatientKey,
    /// Holders left out already (by an earlier round), and why.
    excluded: HashMap<NodeId, String>,
    /// The holders' deadline: a confirmation counts only before it.
    confirm_by: tokio::time::Instant,
    pending: Vec<(NodeId, String, RecordConfirmation)>,
}

impl Unconfirmed {
    /// Waits for every holder's confirmation, until the holders' deadline. `None`: all
    /// confirmed, the dossier stands as assembled. `Some`: the dossier resolved again
    /// without the holders that did not confirm (named as failed, with why), whose pull
    /// entries include the discarded answers. (Rare: a holder that sent its answer but could
    /// not record it, or went away before its `End`; each round leaves out at least one
    /// more holder, so the rounds end.)
    pub async fn settle(mut self) -> Option<Result<Resolved, FhirError>> {
        let deadline = self.confirm_by;
        let timeout_ms = self.resolver.holder_timeout_ms;
        let waits = self
            .pending
            .drain(..)
            .map(|(node, name, confirmation)| async move {
                let confirmed =
                    match tokio::time::timeout_at(deadline, confirmation.recorded()).await {
                        Ok(confirmed) => confirmed.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("no confirmation within {timeout_ms} ms")),
                    };
                (node, name, confirmed)
            });
        let mut discarded = Vec::new();
        for (node, name, confirmed) in futures::future::join_all(waits).await {
            if let Err(reason) = confirmed {
                let reason = format!(
                    "{name} sent its answer but did not confirm that it recorded the access, so the answer was discarded: {reason}"
                );
                tracing::warn!(holder = %name, %reason, "a holder's answer was discarded");
                discarded.push(pull_record(
                    &self.context,
                    &self.resolver.organisation,
                    self.patient,
                    &name,
                    &Err(reason.clone()),
                ));
                self.excluded.insert(node, reason);
            }
        }
        if discarded.is_empty() {
            return None;
        }
        let mut again = match self
            .resolver
            .resolve_without(self.patient, &self.context, self.excluded)
            .await
        {
            Ok(again) => again,
            Err(e) => return Some(Err(e)),
        };
        discarded.append(&mut again.pulls);
        again.pulls = discarded;
        Some(Ok(again))
    }
}

/// Resolves dossiers for the API.
#[derive(Clone)]
pub struct DossierResolver {
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) data_plane: DataPlane,
    pub(crate) fhir: FhirService,
    pub(crate) keys: Arc<crate::pseudonym::PatientKeys>,
    pub(crate) network: String,
    pub(crate) holder_timeout_ms: u64,
    /// Where each pull made is recorded.
    pub(crate) audit: crate::audit::AuditTrail,
    /// This node's organisation (URA), the requesting organisation of its pulls.
    pub(crate) organisation: String,
}

fn origin_source(network: &str, node: &str) -> String {
    format!("urn:zorgmesh:{network}:{node}")
}

impl DossierResolver {
    /// Handles the query parameters of `$dossier`.
    pub async fn resolve_request(
        &self,
        params: &[(String, String)],
        context: &crate::data_plane::RequestContext,
    ) -> Result<(PatientKey, Resolved), FhirError> {
        let bsn = requested_bsn(params)?;
        let key = self.patient_key(bsn).await?;
        Ok((key, self.resolve(key, context).await?))
    }

    /// The patient key of a BSN: cached if this node holds the patient, else from the
    /// evaluators.
    pub async fn patient_key(&self, bsn: Bsn) -> Result<PatientKey, FhirError> {
        let cached = self
            .fhir
            .storage()
            .cached_patient_key(&bsn)
            .map_err(|e| FhirError::internal(e.to_string()))?;
        if let Some(key) = cached {
            return Ok(key);
        }
        self.keys
            .derive(std::slice::from_ref(&bsn))
            .await
            .map_err(|e| {
                FhirError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    format!("cannot derive the patient key: {e}"),
                )
            })?
            .get(&bsn)
            .copied()
            .ok_or_else(|| FhirError::internal("the evaluators returned no key"))
    }

    /// Resolves one patient's dossier. The holders' confirmations that they recorded their
    /// answers are left in [`Resolved::unconfirmed`], so that this node records its own
    /// entries while they come.
    pub async fn resolve(
        &self,
        patient: PatientKey,
        context: &crate::data_plane::RequestContext,
    ) -> Result<Resolved, FhirError> {
        self.resolve_without(patient, context, HashMap::new()).await
    }

    /// [`Self::resolve`], leaving out the holders in `excluded` (named as failed, with why).
    async fn resolve_without(
        &self,
        patient: PatientKey,
        context: &crate::data_plane::RequestContext,
        excluded: HashMap<NodeId, String>,
    ) -> Result<Resolved, FhirError> {
        let started = Instant::now();
        let confirm_by =
            tokio::time::Instant::now() + std::time::Duration::from_millis(self.holder_timeout_ms);
        // A lookup the index cannot answer is an error, never a dossier without holders.
        let holders = self
            .mesh
            .holders(&patient)
            .map_err(|e| FhirError::internal(e.to_string()))?;
        let mut plan = ResolutionPlan::new(
            patient,
            holders,
            crate::fhir::service::now_ms(),
            self.holder_timeout_ms,
        );
        for (node, reason) in &excluded {
            plan.failed(node, reason.clone());
        }
        let mut fetches = FuturesUnordered::new();
        for holder in plan.pending().cloned().collect::<Vec<_>>() {
            fetches.push(self.fetch_from(holder, patient, context));
        }
        let mut results: HashMap<NodeId, Vec<Value>> = HashMap::new();
        let mut mismatches: HashMap<NodeId, String> = HashMap::new();
        let mut withheld: std::collections::HashSet<NodeId> = Default::default();
        let mut pending = Vec::new();
        // The pulls made, for the trail: recorded with the dossier's own entry, in one sync,
        // before the dossier is answered.
        let mut pulls = Vec::new();
        while !plan.is_finished() {
            let deadline = plan.next_deadline().unwrap_or(0);
            let wait = deadline.saturating_sub(crate::fhir::service::now_ms());
            tokio::select! {
                Some(fetched) = fetches.next() => {
                    let Fetched { node, name, result, records, confirmation } = fetched;
                    pulls.extend(records);
                    match result {
                    Ok((resources, mismatch, by_consent)) => {
                        let now = crate::fhir::service::now_ms();
                        if plan.answered(&node, resources.len(), now) {
                            if by_consent {
                                withheld.insert(node);
                            }
                            let mismatch = if node == self.mesh.own() || by_consent {
                                mismatch
                            } else {
                                self.rate_answer(node, resources.is_empty(), mismatch, now)
                            };
                            results.insert(node, resources);
                            if let Some(mismatch) = mismatch {
                                mismatches.insert(node, mismatch);
                            }
                            pending.extend(confirmation.map(|c| (node, name, c)));
                        }
                    }
                    Err(reason) => plan.failed(&node, reason),
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {
                    plan.expire(crate::fhir::service::now_ms());
                }
            }
        }
        // A holder that answered after the deadline still served: its pull is recorded.
        while let Some(Some(fetched)) = fetches.next().now_or_never() {
            pulls.extend(fetched.records);
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let bundle = self.assemble(&plan, results, &mismatches, &withheld, elapsed_ms);
        let unconfirmed = (!pending.is_empty()).then(|| Unconfirmed {
            resolver: self.clone(),
            context: context.clone(),
            patient,
            excluded,
            confirm_by,
            pending,
        });
        Ok(Resolved {
            bundle,
            pulls,
            unconfirmed,
        })
    }

    /// Fetches the patient's data from one holder (this node's own read locally), with the
    /// trail entries of the pull.
    fn fetch_from<'a>(
        &self,
        holder: HolderLocation,
        patient: PatientKey,
        context: &'a crate::data_plane::RequestContext,
    ) -> impl std::future::Future<Output = Fetched> + 'a {
        let me = self.mesh.own();
        let data_plane = self.data_plane.clone();
        let fhir = self.fhir.clone();
        let organisation = self.organisation.clone();
        async move {
            let node = holder.info.node;
            let name = holder.info.name.clone();
            if node == me {
                let result = fhir
                    .everything_for_key(&patient)
                    .map(|resources| (resources, None, false))
                    .map_err(|e| e.diagnostics);
                return Fetched {
                    node,
                    name,
                    result,
                    records: Vec::new(),
                    confirmation: None,
                };
            }
            let fetched = match holder.data_address.as_deref() {
                Some(address) => match crate::data_plane::resolve_address(address).await {
                    Ok(addr) => data_plane
                        .fetch_patient(node, &name, addr, patient, context)
                        .await
                        .map_err(|e| failure_reason(&e)),
                    Err(e) => Err(e.to_string()),
                },
                None => Err("no data-plane address known for this holder".to_owned()),
            };
            let (result, confirmation) = match fetched {
                Ok((answer, confirmation)) => {
                    // Withheld by consent: the answer is partial by the patient's will, so
                    // not checked against the entry.
                    let mismatch = if answer.withheld_by_consent {
                        None
                    } else {
                        holding_mismatch(&holder.entry, &answer.resources, answer.holding)
                    };
                    (
                        Ok((answer.resources, mismatch, answer.withheld_by_consent)),
                        confirmation,
                    )
                }
                Err(reason) => (Err(reason), None),
            };
            let pull = pull_record(context, &organisation, patient, &name, &result);
            let mut records = vec![pull.clone()];
            if matches!(result, Ok((_, _, true))) {
                records.push(zorgmesh_protocol::audit::AuditRecord {
                    action: crate::audit::AuditAction::ConsentDecision,
                    outcome: crate::audit::AuditOutcome::Denied,
                    detail: format!(
                        "{name} withheld some or all of its data by the patient's consent"
                    ),
                    ..pull
                });
            }
            Fetched {
                node,
                name,
                result,
                records,
                confirmation,
            }
        }
    }

    /// Counts another holder's answer in its standing (see `zorgmesh_protocol::standing`):
    /// an empty answer for a patient its entry claims is a false claim. Returns what the
    /// dossier says about the answer, if anything.
    fn rate_answer(
        &self,
        holder: NodeId,
        empty: bool,
        mismatch: Option<String>,
        now_ms: u64,
    ) -> Option<String> {
        use zorgmesh_protocol::standing::Answer;
        let answer = match (&mismatch, empty) {
            (None, _) => Answer::Verified,
            (Some(_), true) => Answer::Nothing,
            (Some(_), false) => Answer::Unverified,
        };
        let standing = self.mesh.record_answer(holder, answer, now_ms);
        if answer == Answer::Nothing {
            tracing::warn!(
                holder = %holder.to_hex(),
                false_claims = standing.false_claims,
                "a holder claimed a patient and served nothing for it"
            );
            return Some(format!(
                "its locator entry claims data for this patient but it served none (a false claim; {} counted against it, which lowers its gossip peer score)",
                standing.false_claims
            ));
        }
        mismatch
    }

    fn assemble(
        &self,
        plan: &ResolutionPlan,
        mut results: HashMap<NodeId, Vec<Value>>,
        mismatches: &HashMap<NodeId, String>,
        withheld: &std::collections::HashSet<NodeId>,
        elapsed_ms: u64,
    ) -> Value {
        let mut merged: Vec<Value> = Vec::new();
        let mut by_key: HashMap<String, (usize, NodeId)> = HashMap::new();
        let mut issues = Vec::new();
        for holder in plan.holders() {
            let info = &holder.location.info;
            match &holder.state {
                HolderState::Answered { .. } => {
                    if let Some(reason) = mismatches.get(&info.node) {
                        issues.push(unverified_issue(&holder.location, reason));
                    }
                    if withheld.contains(&info.node) {
                        issues.push(json!({
                            "severity": "information",
                            "code": "suppressed",
                            "details": {
                                "coding": [{"system": ORIGIN_SYSTEM, "code": info.name, "display": info.organisation_name}],
                                "text": format!("holder {} ({}): withheld by consent", info.name, info.organisation_name),
                            },
                            "diagnostics": format!(
                                "holder {} withheld by consent: the patient's consent keeps some or all of its data from this organisation for this purpose",
                                info.name
                            ),
                        }));
                    }
                    merge_answer(
                        &mut merged,
                        &mut by_key,
                        results.remove(&info.node).unwrap_or_default(),
                        &info.node,
                        |resource, first| {
                            add_origin(resource, &self.network, &holder.location, first)
                        },
                    );
                }
                HolderState::Failed { reason } => match reason.strip_prefix(REFUSED) {
                    Some(why) => issues.push(refused_issue(&holder.location, why)),
                    None => issues.push(unreachable_issue(&holder.location, reason)),
                },
                HolderState::TimedOut => issues.push(unreachable_issue(
                    &holder.location,
                    &format!("no answer within {} ms", self.holder_timeout_ms),
                )),
                HolderState::Pending { .. } => {}
            }
        }
        let holders_summary: Vec<String> = plan
            .holders()
            .iter()
            .map(|h| {
                format!(
                    "{} ({})",
                    h.location.info.name, h.location.info.organisation_name
                )
            })
            .collect();
        issues.push(json!({
            "severity": "information",
            "code": "informational",
            "diagnostics": format!(
                "resolved from {} holder(s) in {elapsed_ms} ms: {}",
                plan.holders().len(),
                holders_summary.join(", ")
            ),
        }));
        let total = merged.len();
        let mut entries: Vec<Value> = merged
            .into_iter()
            .map(|resource| {
                let source = resource["meta"]["source"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let url = format!(
                    "{source}/{}/{}",
                    resource["resourceType"].as_str().unwrap_or_default(),
                    resource["id"].as_str().unwrap_or_default()
                );
                json!({"fullUrl": url, "resource": resource, "search": {"mode": "match"}})
            })
            .collect();
        entries.push(json!({
            "resource": {"resourceType": "OperationOutcome", "issue": issues},
            "search": {"mode": "outcome"},
        }));
        json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "timestamp": crate::fhir::resource::instant(crate::fhir::service::now_ms()),
            "total": total,
            "entry": entries,
        })
    }
}

/// Marks a failure reason as a refusal of the request (not an unreachable holder).
const REFUSED: &str = "refused: ";

/// What the dossier says of a failed fetch: a holder that refused the request's claims is
/// named as refusing it, with its code; anything else as unreachable.
/// The resolver's trail entry of a pull from `holder`.
fn pull_record(
    context: &crate::data_plane::RequestContext,
    organisation: &str,
    patient: PatientKey,
    holder: &str,
    result: &Result<(Vec<Value>, Option<String>, bool), String>,
) -> zorgmesh_protocol::audit::AuditRecord {
    use crate::audit::{AuditAction, AuditOutcome};
    let (outcome, what, detail) = match result {
        Ok((resources, _, _)) => (
            AuditOutcome::Success,
            format!(
                "from {holder}: {}",
                crate::data_plane::resource_summary_of(resources.iter())
            ),
            String::new(),
        ),
        Err(reason) if reason.starts_with(REFUSED) => (
            AuditOutcome::Denied,
            format!("from {holder}"),
            reason.clone(),
        ),
        Err(reason) => (
            AuditOutcome::Failed,
            format!("from {holder}"),
            reason.clone(),
        ),
    };
    let action = if context.purpose == zorgmesh_protocol::claims::PurposeOfUse::Emergency {
        AuditAction::BreakTheGlass
    } else {
        AuditAction::PullMade
    };
    let detail = if action == AuditAction::BreakTheGlass {
        format!("emergency: {}; {detail}", context.emergency_reason)
    } else {
        detail
    };
    zorgmesh_protocol::audit::AuditRecord {
        at_ms: crate::fhir::service::now_ms(),
        action,
        outcome,
        actor: context.client_id.clone(),
        organisation: organisation.to_owned(),
        person: context.practitioner.clone(),
        purpose: Some(context.purpose),
        patient: Some(patient),
        what,
        detail,
    }
}

fn failure_reason(error: &crate::data_plane::FetchError) -> String {
    use zorgmesh_protocol::fetch::FetchErrorCode;
    match error {
        crate::data_plane::FetchError::Remote { code, message }
            if matches!(
                code,
                FetchErrorCode::ClaimsInvalid
                    | FetchErrorCode::ClaimsReplayed
                    | FetchErrorCode::ClaimsStale
            ) =>
        {
            format!("{REFUSED}{code:?}: {message}")
        }
        other => other.to_string(),
    }
}

fn refused_issue(holder: &HolderLocation, why: &str) -> Value {
    holder_issue(
        holder,
        ("error", "security"),
        "refused the request",
        &format!("refused the request ({why})"),
    )
}

fn unreachable_issue(holder: &HolderLocation, reason: &str) -> Value {
    holder_issue(
        holder,
        ("warning", "incomplete"),
        "is unreachable",
        &format!("is unreachable: {reason}"),
    )
}

/// An issue about a holder whose data the dossier lacks: `(severity, code)`, what happened
/// in short (after "holder <name> (<organisation>, region <region>)") and in full (after
/// "holder <name>").
fn holder_issue(
    holder: &HolderLocation,
    (severity, code): (&str, &str),
    short: &str,
    full: &str,
) -> Value {
    json!({
        "severity": severity,
        "code": code,
        "details": {
            "coding": [{"system": ORIGIN_SYSTEM, "code": holder.info.name, "display": holder.info.organisation_name}],
            "text": format!("holder {} ({}, region {}) {short}", holder.info.name, holder.info.organisation_name, holder.info.region),
        },
        "diagnostics": format!(
            "holder {} {full}; the dossier lacks its data ({})",
            holder.info.name,
            category_names(holder.entry.categories).join(", ")
        ),
    })
}

fn unverified_issue(holder: &HolderLocation, reason: &str) -> Value {
    json!({
        "severity": "warning",
        "code": "conflict",
        "details": {
            "coding": [{"system": ORIGIN_SYSTEM, "code": holder.info.name, "display": holder.info.organisation_name}],
            "text": format!("the answer of holder {} does not match its locator entry", holder.info.name),
        },
        "diagnostics": format!("holder {}: {reason}", holder.info.name),
    })
}

/// Checks a holder's answer against its locator entry: the compartment resources it sent
/// (the first `members`) must give the entry's holding commitment under the salt it sent.
/// Returns why not, or `None` when the answer is exactly what the entry announced.
pub fn holding_mismatch(
    entry: &LocatorEntry,
    resources: &[Value],
    holding: Option<Holding>,
) -> Option<String> {
    let Some(Holding { salt, members }) = holding else {
        return Some("the holder sent no holding proof".into());
    };
    let Some(compartment) = resources.get(..members as usize) else {
        return Some(format!(
            "the holder claims {members} compartment resources but sent {}",
            resources.len()
        ));
    };
    let mut held = Vec::with_capacity(compartment.len());
    for resource in compartment {
        let version = resource["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok());
        let (Some(resource_type), Some(id), Some(version)) = (
            resource["resourceType"].as_str(),
            resource["id"].as_str(),
            version,
        ) else {
            return Some("a resource lacks its type, id or numeric meta.versionId".into());
        };
        held.push(HeldResource {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
        });
    }
    (holding_commitment(&salt, &held) != entry.commitment).then(|| {
        "the resources sent do not give the commitment in its locator entry: its data changed since the entry was published, or it withheld some".into()
    })
}

/// Adds one holder's answer to the dossier. A resource is merged into an earlier one only
/// when they are the same (same business identifier for shared types, else the same
/// content) and the earlier came from another holder: two alike resources inside one
/// answer are two resources (two identical Devices of one patient). References in this
/// answer to a merged resource are pointed at the copy that stays, so none dangles.
fn merge_answer(
    merged: &mut Vec<Value>,
    by_key: &mut HashMap<String, (usize, NodeId)>,
    answer: Vec<Value>,
    holder: &NodeId,
    mut origin: impl FnMut(&mut Value, bool),
) {
    let literal = |resource: &Value| {
        format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        )
    };
    let mut kept = Vec::new();
    let mut aliases: HashMap<String, String> = HashMap::new();
    let mut added_here: HashMap<String, usize> = HashMap::new();
    for resource in answer {
        let key = merge_key(&resource);
        match by_key.get(&key) {
            Some((at, from)) if from != holder => {
                let stays = literal(&merged[*at]);
                let goes = literal(&resource);
                if stays != goes {
                    aliases.insert(goes, stays);
                }
                origin(&mut merged[*at], false);
            }
            _ => {
                added_here.entry(key).or_insert(kept.len());
                kept.push(resource);
            }
        }
    }
    let first_index = merged.len();
    for mut resource in kept {
        if !aliases.is_empty() {
            super::fhir::resource::rewrite_references(&mut resource, &|r: &str| {
                aliases.get(r).cloned()
            });
        }
        origin(&mut resource, true);
        merged.push(resource);
    }
    for (key, offset) in added_here {
        by_key.entry(key).or_insert((first_index + offset, *holder));
    }
}

fn merge_key(resource: &Value) -> String {
    let resource_type = resource["resourceType"].as_str().unwrap_or_default();
    if SHARED_TYPES.contains(&resource_type) {
        if let Some(first) = resource["identifier"]
            .as_array()
            .and_then(|ids| ids.first())
        {
            if let (Some(system), Some(value)) = (first["system"].as_str(), first["value"].as_str())
            {
                return format!("{resource_type}|{system}|{value}");
            }
        }
    }
    let mut content = resource.clone();
    if let Some(object) = content.as_object_mut() {
        object.remove("id");
        object.remove("meta");
    }
    let digest = Sha256::digest(content.to_string().as_bytes());
    format!("{resource_type}#{}", hex::encode(digest))
}

fn add_origin(resource: &mut Value, network: &str, holder: &HolderLocation, first: bool) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    if first {
        meta["source"] = json!(origin_source(network, &holder.info.name));
    }
    let tags = meta
        .as_object_mut()
        .expect("object")
        .entry("tag")
        .or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    let tags = tags.as_array_mut().expect("array");
    tags.push(json!({"system": ORIGIN_SYSTEM, "code": holder.info.name, "display": holder.info.organisation_name}));
    tags.push(json!({"system": URA_SYSTEM, "code": holder.info.organisation_ura, "display": holder.info.organisation_name}));
}

/// The BSN a `$dossier` request asks for (`identifier=http://fhir.nl/fhir/NamingSystem/bsn|<bsn>`).
pub fn requested_bsn(params: &[(String, String)]) -> Result<Bsn, FhirError> {
    let identifier = params
        .iter()
        .find(|(n, _)| n == "identifier")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            FhirError::invalid(format!("$dossier needs identifier={BSN_SYSTEM}|<bsn>"))
        })?;
    let (system, value) = identifier
        .split_once('|')
        .ok_or_else(|| FhirError::invalid(format!("identifier must be {BSN_SYSTEM}|<bsn>")))?;
    if system != BSN_SYSTEM {
        return Err(FhirError::invalid(format!(
            "$dossier resolves by BSN only: identifier system must be {BSN_SYSTEM}"
        )));
    }
    Bsn::parse(value).map_err(|e| FhirError::invalid(format!("identifier value is not a BSN: {e}")))
}

#[cfg(test)]
mod tests {

    #[test]
    fn alike_resources_of_one_holder_stay_apart_and_merged_references_do_not_dangle() {
        let device = |id: &str| json!({"resourceType": "Device", "id": id, "type": {"text": "insulin pump"}});
        let statement = |id: &str, device: &str| {
            json!({"resourceType": "DeviceUseStatement", "id": id, "status": "active",
                "device": {"reference": format!("Device/{device}")}})
        };
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let mut merged = Vec::new();
        let mut by_key = HashMap::new();
        // One holder with two identical Devices, each used: both stay.
        merge_answer(
            &mut merged,
            &mut by_key,
            vec![
                device("d1"),
                device("d2"),
                statement("s1", "d1"),
                statement("s2", "d2"),
            ],
            &a,
            |_, _| {},
        );
        assert_eq!(merged.len(), 4);
        // Another holder's copy of the same Device merges; its statement now points at the
        // copy that stays.
        merge_answer(
            &mut merged,
            &mut by_key,
            vec![device("b1"), statement("t1", "b1")],
            &b,
            |_, _| {},
        );
        assert_eq!(merged.len(), 5);
        let ids: std::collections::HashSet<String> = merged
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                )
            })
            .collect();
        for resource in &merged {
            if let Some(reference) = resource["device"]["reference"].as_str() {
                assert!(ids.contains(reference), "{reference} dangles in {merged:?}");
            }
        }
        assert_eq!(merged[4]["device"]["reference"], "Device/d1");
    }
    use super::*;
    use zorgmesh_protocol::locator::category;

    fn resource(resource_type: &str, id: &str, version: u64) -> Value {
        json!({"resourceType": resource_type, "id": id, "meta": {"versionId": version.to_string()}})
    }

    #[test]
    fn a_holder_that_refuses_the_claims_is_named_as_refusing_not_as_unreachable() {
        use crate::data_plane::FetchError;
        use zorgmesh_protocol::fetch::FetchErrorCode;
        let replayed = FetchError::Remote {
            code: FetchErrorCode::ClaimsReplayed,
            message: "the claims' nonce was used before: a replayed request".into(),
        };
        let reason = failure_reason(&replayed);
        assert_eq!(
            reason,
            "refused: ClaimsReplayed: the claims' nonce was used before: a replayed request"
        );
        let busy = FetchError::Remote {
            code: FetchErrorCode::Busy,
            message: "busy".into(),
        };
        assert!(!failure_reason(&busy).starts_with(REFUSED));
        let location = HolderLocation {
            info: zorgmesh_protocol::PublisherInfo {
                node: NodeId([2; 32]),
                name: "umcg".into(),
                organisation_ura: "00001234".into(),
                organisation_name: "UMCG".into(),
                region: "noord".into(),
                role: zorgmesh_protocol::NodeRole::Institution,
                valid_from_ms: 0,
                valid_until_ms: u64::MAX,
            },
            data_address: None,
            entry: LocatorEntry {
                patient: PatientKey([1; 32]),
                holder: NodeId([2; 32]),
                categories: category::OBSERVATIONS,
                commitment: [0; 32],
                updated_at_ms: 1,
                retracted: false,
            },
        };
        let issue = refused_issue(&location, reason.strip_prefix(REFUSED).unwrap());
        assert_eq!(issue["code"], "security");
        assert!(issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("ClaimsReplayed"));
        assert!(issue["details"]["text"]
            .as_str()
            .unwrap()
            .contains("refused the request"));
    }

    #[test]
    fn an_answer_is_checked_against_the_holding_commitment() {
        let salt = [9u8; 32];
        let compartment = vec![
            resource("Patient", "p1", 2),
            resource("Observation", "o1", 1),
            resource("Observation", "o2", 1),
        ];
        let held: Vec<HeldResource> = compartment
            .iter()
            .map(|r| HeldResource {
                resource_type: r["resourceType"].as_str().unwrap().into(),
                id: r["id"].as_str().unwrap().into(),
                version: r["meta"]["versionId"].as_str().unwrap().parse().unwrap(),
            })
            .collect();
        let entry = LocatorEntry {
            patient: PatientKey([1; 32]),
            holder: NodeId([2; 32]),
            categories: category::ADMINISTRATIVE | category::OBSERVATIONS,
            commitment: holding_commitment(&salt, &held),
            updated_at_ms: 1,
            retracted: false,
        };
        // A referenced Organization after the compartment is not covered.
        let mut answer = compartment.clone();
        answer.push(resource("Organization", "org", 7));
        let holding = Some(Holding { salt, members: 3 });
        assert_eq!(holding_mismatch(&entry, &answer, holding), None);
        // One withheld, one at another version, a wrong salt, no proof: all detected.
        assert!(
            holding_mismatch(&entry, &answer[1..], Some(Holding { salt, members: 2 })).is_some()
        );
        let mut stale = answer.clone();
        stale[1] = resource("Observation", "o1", 2);
        assert!(holding_mismatch(&entry, &stale, holding).is_some());
        assert!(holding_mismatch(
            &entry,
            &answer,
            Some(Holding {
                salt: [0; 32],
                members: 3
            })
        )
        .is_some());
        assert!(holding_mismatch(&entry, &answer, None).is_some());
        assert!(holding_mismatch(&entry, &answer, Some(Holding { salt, members: 9 })).is_some());
    }
}
