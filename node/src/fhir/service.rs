//! The FHIR interactions, independent of HTTP: what each one reads and writes.

use super::resource::{self, check_id, check_resource, check_type, split_reference, stamp};
use super::FhirError;
use crate::publishing::Publisher;
use crate::storage::{Storage, VersionRecord};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A resource as the API returns it, with its version facts.
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The resource (with `id` and `meta`).
    pub resource: Value,
    /// Version number.
    pub version: u64,
    /// Last update (ms).
    pub last_updated_ms: u64,
}

/// What a write did.
#[derive(Clone, Debug)]
pub struct WriteResult {
    /// The stored resource.
    pub stored: Versioned,
    /// True when the write created the resource.
    pub created: bool,
}

/// The FHIR interactions of one node.
#[derive(Clone)]
pub struct FhirService {
    pub(crate) storage: Arc<Storage>,
    pub(crate) publisher: Publisher,
}

/// Current time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A server-assigned logical id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl FhirService {
    /// A service over `storage` that reports changed patients to `publisher`.
    pub fn new(storage: Arc<Storage>, publisher: Publisher) -> Self {
        Self { storage, publisher }
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The patient keys of the patients whose compartments `resources` belong to (for the
    /// access trail; a patient without a key yet is left out).
    pub fn patient_keys_of<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a Value>,
    ) -> std::collections::BTreeSet<zorgmesh_protocol::PatientKey> {
        let mut ids = std::collections::BTreeSet::new();
        for resource in resources {
            let resource_type = resource["resourceType"].as_str().unwrap_or_default();
            let id = resource["id"].as_str().unwrap_or_default();
            if let Some(patient) = crate::storage::compartment_patient(resource_type, id, resource)
            {
                ids.insert(patient);
            }
        }
        ids.iter()
            .filter_map(|id| self.storage.patient_key_of(id).ok().flatten())
            .collect()
    }

    async fn after_write(&self, dirty: BTreeSet<zorgmesh_protocol::PatientKey>) {
        if !dirty.is_empty() {
            self.publisher.stage(dirty).await;
        }
    }

    /// `POST /{type}`: create with a server-assigned id.
    pub async fn create(
        &self,
        resource_type: &str,
        mut body: Value,
    ) -> Result<WriteResult, FhirError> {
        check_type(resource_type)?;
        check_resource(&body, Some(resource_type))?;
        let id = new_id();
        let (result, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                let now = tx.now_ms();
                stamp(&mut body, &id, 1, now);
                let outcome = tx.put(resource_type, &id, body.clone())?;
                Ok::<_, FhirError>(WriteResult {
                    stored: Versioned {
                        resource: body,
                        version: outcome.version,
                        last_updated_ms: now,
                    },
                    created: true,
                })
            })
            .await?;
        self.after_write(dirty).await;
        Ok(result)
    }

    /// `PUT /{type}/{id}`: update, or create with the client's id. `if_match` is the
    /// version the client expects to replace.
    pub async fn update(
        &self,
        resource_type: &str,
        id: &str,
        mut body: Value,
        if_match: Option<u64>,
    ) -> Result<WriteResult, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        check_resource(&body, Some(resource_type))?;
        match body.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id != id => {
                return Err(FhirError::invalid(format!(
                    "the body's id {body_id:?} differs from the URL's id {id:?}"
                )))
            }
            _ => {}
        }
        let (result, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                put_in(tx, resource_type, id, &mut body, if_match)
            })
            .await?;
        self.after_write(dirty).await;
        Ok(result)
    }

    /// `DELETE /{type}/{id}`. Returns the delete marker's version, if anything was deleted.
    /// `if_match`: the version the client expects to delete.
    pub async fn delete(
        &self,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<Option<u64>, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        let (version, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                check_if_match(tx, resource_type, id, if_match)?;
                tx.delete(resource_type, id).map_err(FhirError::from)
            })
            .await?;
        self.after_write(dirty).await;
        Ok(version)
    }

    /// `PATCH /{type}/{id}` with a JSON Patch (RFC 6902), a FHIRPath Patch or a JSON merge patch (RFC 7396, as
    /// fhirpy sends): applied to the current version as one whole (a failing operation,
    /// `test` included, changes nothing), which must stay a resource of the same type and
    /// id; `if_match` as for an update.
    pub async fn patch(
        &self,
        resource_type: &str,
        id: &str,
        patch: &Patch,
        if_match: Option<u64>,
    ) -> Result<WriteResult, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        let (result, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                let current = match tx.current(resource_type, id)? {
                    None => {
                        return Err(FhirError::not_found(format!(
                            "{resource_type}/{id} does not exist"
                        )))
                    }
                    Some(record) if record.deleted => {
                        return Err(FhirError::gone(format!("{resource_type}/{id} was deleted")))
                    }
                    Some(record) => record,
                };
                check_if_match(tx, resource_type, id, if_match)?;
                let mut body = current.resource.unwrap_or_default();
                match patch {
                    Patch::Json(operations) => {
                        json_patch::patch(&mut body, operations).map_err(|e| {
                            FhirError::new(
                                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                                "processing",
                                format!("the patch does not apply to {resource_type}/{id}: {e}"),
                            )
                        })?
                    }
                    Patch::Merge(merge) => json_patch::merge(&mut body, merge),
                    Patch::Fhirpath(patch) => patch.apply(&mut body).map_err(|e| {
                        FhirError::new(
                            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                            "processing",
                            format!(
                                "the FHIRPath Patch does not apply to {resource_type}/{id}: {e}"
                            ),
                        )
                    })?,
                }

                if body.get("resourceType").and_then(Value::as_str) != Some(resource_type)
                    || body.get("id").and_then(Value::as_str) != Some(id)
                {
                    return Err(FhirError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "processing",
                        "a patch may not change the resource's type or id",
                    ));
                }
                check_resource(&body, Some(resource_type)).map_err(|e| FhirError {
                    status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    ..e
                })?;
                put_in(tx, resource_type, id, &mut body, None)
            })
            .await?;
        self.after_write(dirty).await;
        Ok(result)
    }

    /// The resources a conditional interaction's search (`condition`, a query string)
    /// finds. Parameters that cannot be applied are an error here, never ignored: a
    /// conditional write decided on half its criteria could change the wrong resource.
    pub(crate) fn conditional_matches(
        &self,
        resource_type: &str,
        condition: &str,
        base: &str,
    ) -> Result<Vec<String>, FhirError> {
        let params: Vec<(String, String)> = form_urlencoded::parse(condition.as_bytes())
            .into_owned()
            .collect();
        let query = super::search::query::parse(resource_type, &params, true, base)?;
        if query.clauses.is_empty() {
            return Err(FhirError::invalid(format!(
                "the condition {condition:?} has no search criteria"
            )));
        }
        let ids = super::search::matching_ids(&self.storage, resource_type, &query)?;
        Ok(ids.into_iter().take(2).collect())
    }

    /// `POST /{type}` with `If-None-Exist: <condition>`: creates only if the condition finds
    /// nothing; one match is returned as it is (`created: false`); more is 412. The search
    /// runs while the write is held, so two such creates cannot both create.
    pub async fn create_if_none_exist(
        &self,
        resource_type: &str,
        mut body: Value,
        condition: &str,
        base: &str,
    ) -> Result<WriteResult, FhirError> {
        check_type(resource_type)?;
        check_resource(&body, Some(resource_type))?;
        let id = new_id();
        let (result, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                match self
                    .conditional_matches(resource_type, condition, base)?
                    .as_slice()
                {
                    [] => {}
                    [existing] => {
                        let record = tx.current(resource_type, existing)?.ok_or_else(|| {
                            FhirError::internal(format!("{resource_type}/{existing} vanished"))
                        })?;
                        return Ok(WriteResult {
                            stored: versioned(resource_type, existing, record)?,
                            created: false,
                        });
                    }
                    _ => return Err(multiple_matches(resource_type, condition)),
                }
                let now = tx.now_ms();
                stamp(&mut body, &id, 1, now);
                let outcome = tx.put(resource_type, &id, body.clone())?;
                Ok::<_, FhirError>(WriteResult {
                    stored: Versioned {
                        resource: body,
                        version: outcome.version,
                        last_updated_ms: now,
                    },
                    created: true,
                })
            })
            .await?;
        self.after_write(dirty).await;
        Ok(result)
    }

    /// `PUT /{type}?<condition>`: updates the one match; with none, creates (with the
    /// body's id, or a new one); with more, 412. A body id that is not the match's is 400.
    pub async fn conditional_update(
        &self,
        resource_type: &str,
        condition: &str,
        mut body: Value,
        if_match: Option<u64>,
        base: &str,
    ) -> Result<WriteResult, FhirError> {
        check_type(resource_type)?;
        check_resource(&body, Some(resource_type))?;
        let body_id = body.get("id").and_then(Value::as_str).map(str::to_owned);
        if let Some(id) = &body_id {
            check_id(id)?;
        }
        let (result, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                let id = match self
                    .conditional_matches(resource_type, condition, base)?
                    .as_slice()
                {
                    [] => body_id.clone().unwrap_or_else(new_id),
                    [found] => match &body_id {
                        Some(id) if id != found => {
                            return Err(FhirError::invalid(format!(
                                "the condition finds {resource_type}/{found}, but the body's id is {id:?}"
                            )))
                        }
                        _ => found.clone(),
                    },
                    _ => return Err(multiple_matches(resource_type, condition)),
                };
                put_in(tx, resource_type, &id, &mut body, if_match)
            })
            .await?;
        self.after_write(dirty).await;
        Ok(result)
    }

    /// `DELETE /{type}?<condition>`: deletes the one match (nothing when none); more is
    /// 412. Returns what was deleted.
    pub async fn conditional_delete(
        &self,
        resource_type: &str,
        condition: &str,
        base: &str,
    ) -> Result<Option<String>, FhirError> {
        check_type(resource_type)?;
        let (deleted, dirty) = self
            .storage
            .write(now_ms(), |tx| {
                match self
                    .conditional_matches(resource_type, condition, base)?
                    .as_slice()
                {
                    [] => Ok(None),
                    [found] => {
                        tx.delete(resource_type, found)?;
                        Ok(Some(found.clone()))
                    }
                    _ => Err(multiple_matches(resource_type, condition)),
                }
            })
            .await?;
        self.after_write(dirty).await;
        Ok(deleted)
    }

    /// `GET /{type}/{id}`.
    pub fn read(&self, resource_type: &str, id: &str) -> Result<Versioned, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        match self.storage.current(resource_type, id)? {
            None => Err(FhirError::not_found(format!(
                "{resource_type}/{id} does not exist"
            ))),
            Some(record) => versioned(resource_type, id, record),
        }
    }

    /// `GET /{type}/{id}/_history/{vid}`.
    pub fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Versioned, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        let number: u64 = version
            .parse()
            .map_err(|_| FhirError::not_found(format!("version {version:?} does not exist")))?;
        match self.storage.version(resource_type, id, number)? {
            None => Err(FhirError::not_found(format!(
                "{resource_type}/{id} has no version {number}"
            ))),
            Some(record) => versioned(resource_type, id, record),
        }
    }

    /// The resources of the local patients `patient_ids` (see [`everything_in`]).
    pub fn everything_of(&self, patient_ids: &[String]) -> Result<Vec<Value>, FhirError> {
        everything_in(&self.storage, patient_ids)
    }

    /// `GET /{type}/_history` and `GET /_history`: versions across resources (of one type, or
    /// all), newest first, `_since` an instant, `_count` a page (50, at most 1000); the
    /// `next` link goes on from the last version on the page (`_cursor`), so pages stay
    /// right while writes go on (new versions are newer than every page after the first).
    /// What a replica follows a source by.
    pub fn changes(
        &self,
        resource_type: Option<&str>,
        params: &[(String, String)],
        base: &str,
    ) -> Result<Value, FhirError> {
        if let Some(t) = resource_type {
            check_type(t)?;
        }
        let mut since_ms = 0u64;
        let mut count = super::search::DEFAULT_COUNT;
        let mut cursor: Option<Vec<u8>> = None;
        for (name, value) in params {
            match name.as_str() {
                "_since" => {
                    let (low, _) = super::search::extract::date_range(value).ok_or_else(|| {
                        FhirError::invalid(format!("_since {value:?} is not a FHIR instant"))
                    })?;
                    since_ms = low.max(0) as u64;
                }
                "_count" => {
                    count = value
                        .parse::<usize>()
                        .map_err(|_| {
                            FhirError::invalid(format!("_count {value:?} is not a number"))
                        })?
                        .clamp(1, super::search::MAX_COUNT);
                }
                "_cursor" => {
                    cursor = Some(hex::decode(value).map_err(|_| {
                        FhirError::invalid(format!("_cursor {value:?} is not one this node gave"))
                    })?);
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(FhirError::invalid(format!(
                        "history takes _since, _count and _cursor, not {other}"
                    )))
                }
            }
        }
        let changes = self
            .storage
            .changes(resource_type, since_ms, cursor.as_deref(), count)?;
        let entries: Vec<Value> = changes
            .iter()
            .map(|change| {
                let (t, id, v) = (&change.resource_type, &change.id, &change.record);
                let (method, status) = match (v.deleted, v.version) {
                    (true, _) => ("DELETE", "204 No Content"),
                    (false, 1) => ("PUT", "201 Created"),
                    (false, _) => ("PUT", "200 OK"),
                };
                let mut entry = serde_json::json!({
                    "fullUrl": format!("{base}/{t}/{id}"),
                    "request": {"method": method, "url": format!("{t}/{id}")},
                    "response": {
                        "status": status,
                        "etag": format!("W/\"{}\"", v.version),
                        "lastModified": resource::instant(v.last_updated_ms),
                    },
                });
                if let Some(resource) = &v.resource {
                    entry["resource"] = resource.clone();
                }
                entry
            })
            .collect();
        let path = match resource_type {
            Some(t) => format!("{base}/{t}/_history"),
            None => format!("{base}/_history"),
        };
        let link = |cursor: Option<&[u8]>| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if since_ms > 0 {
                q.append_pair("_since", &resource::instant(since_ms));
            }
            q.append_pair("_count", &count.to_string());
            if let Some(cursor) = cursor {
                q.append_pair("_cursor", &hex::encode(cursor));
            }
            format!("{path}?{}", q.finish())
        };
        let mut links =
            vec![serde_json::json!({"relation": "self", "url": link(cursor.as_deref())})];
        if changes.len() == count {
            if let Some(last) = changes.last() {
                links
                    .push(serde_json::json!({"relation": "next", "url": link(Some(&last.cursor))}));
            }
        }
        Ok(serde_json::json!({
            "resourceType": "Bundle",
            "type": "history",
            "link": links,
            "entry": entries,
        }))
    }

    /// `GET /{type}/{id}/_history`: every version, newest first, as a history Bundle.
    pub fn history(&self, resource_type: &str, id: &str, base: &str) -> Result<Value, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        let versions = self.storage.history(resource_type, id)?;
        if versions.is_empty() {
            return Err(FhirError::not_found(format!(
                "{resource_type}/{id} does not exist"
            )));
        }
        let entries: Vec<Value> = versions
            .iter()
            .rev()
            .map(|v| {
                let (method, status) = match (v.deleted, v.version) {
                    (true, _) => ("DELETE", "204 No Content"),
                    (false, 1) => ("PUT", "201 Created"),
                    (false, _) => ("PUT", "200 OK"),
                };
                let mut entry = serde_json::json!({
                    "fullUrl": format!("{base}/{resource_type}/{id}"),
                    "request": {"method": method, "url": format!("{resource_type}/{id}")},
                    "response": {
                        "status": status,
                        "etag": format!("W/\"{}\"", v.version),
                        "lastModified": resource::instant(v.last_updated_ms),
                    },
                });
                if let Some(resource) = &v.resource {
                    entry["resource"] = resource.clone();
                }
                entry
            })
            .collect();
        Ok(serde_json::json!({
            "resourceType": "Bundle",
            "type": "history",
            "total": entries.len(),
            "entry": entries,
        }))
    }

    /// `GET /Patient/{id}/$everything`.
    pub fn everything(&self, patient_id: &str) -> Result<Vec<Value>, FhirError> {
        check_id(patient_id)?;
        if self.storage.read("Patient", patient_id)?.is_none() {
            return Err(FhirError::not_found(format!(
                "Patient/{patient_id} does not exist"
            )));
        }
        self.everything_of(&[patient_id.to_owned()])
    }

    /// `GET /Patient/{id}/$everything` as a searchset: `_type` (types, comma-separated or
    /// repeated) and `_since` (an instant: resources last updated then or later) narrow it;
    /// `_count` pages it (at most [`super::search::MAX_COUNT`]; without it, one page), in the
    /// order of type and id, with a `next` link that goes on after the page's last resource
    /// (`_page_after=Type/id`), so pages stay right while the patient's data changes.
    pub fn everything_page(
        &self,
        patient_id: &str,
        params: &[(String, String)],
        base: &str,
    ) -> Result<Value, FhirError> {
        let mut types: Option<BTreeSet<String>> = None;
        let mut since_ms: Option<i64> = None;
        let mut count: Option<usize> = None;
        let mut after: Option<(String, String)> = None;
        for (name, value) in params {
            match name.as_str() {
                "_type" => {
                    let wanted = types.get_or_insert_with(BTreeSet::new);
                    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        check_type(t)
                            .map_err(|e| FhirError::invalid(format!("_type: {}", e.diagnostics)))?;
                        wanted.insert(t.to_owned());
                    }
                }
                "_since" => {
                    let (low, _) = super::search::extract::date_range(value).ok_or_else(|| {
                        FhirError::invalid(format!("_since {value:?} is not a FHIR instant"))
                    })?;
                    since_ms = Some(low);
                }
                "_count" => {
                    count = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| {
                                FhirError::invalid(format!("_count {value:?} is not a number"))
                            })?
                            .clamp(1, super::search::MAX_COUNT),
                    );
                }
                "_page_after" => {
                    let (t, id) = split_reference(value).ok_or_else(|| {
                        FhirError::invalid(format!(
                            "_page_after {value:?} is not one this node gave"
                        ))
                    })?;
                    after = Some((t.to_owned(), id.to_owned()));
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(FhirError::invalid(format!(
                        "$everything takes _type, _since, _count and _page_after, not {other}"
                    )))
                }
            }
        }
        let key_of = |r: &Value| {
            (
                r["resourceType"].as_str().unwrap_or_default().to_owned(),
                r["id"].as_str().unwrap_or_default().to_owned(),
            )
        };
        let mut resources: Vec<Value> = self
            .everything(patient_id)?
            .into_iter()
            .filter(|r| {
                types
                    .as_ref()
                    .is_none_or(|t| t.contains(r["resourceType"].as_str().unwrap_or_default()))
            })
            .filter(|r| {
                since_ms.is_none_or(|since| {
                    r["meta"]["lastUpdated"]
                        .as_str()
                        .and_then(super::search::extract::date_range)
                        .is_some_and(|(low, _)| low >= since)
                })
            })
            .collect();
        resources.sort_by_cached_key(key_of);
        let total = resources.len();
        if let Some(after) = &after {
            resources.retain(|r| key_of(r) > *after);
        }
        let more = count.is_some_and(|c| resources.len() > c);
        if let Some(c) = count {
            resources.truncate(c);
        }
        let link = |page_after: Option<&(String, String)>| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (name, value) in params {
                if name != "_page_after" {
                    q.append_pair(name, value);
                }
            }
            if let Some((t, id)) = page_after {
                q.append_pair("_page_after", &format!("{t}/{id}"));
            }
            let q = q.finish();
            let path = format!("{base}/Patient/{patient_id}/$everything");
            if q.is_empty() {
                path
            } else {
                format!("{path}?{q}")
            }
        };
        let mut links = vec![serde_json::json!({"relation": "self", "url": link(after.as_ref())})];
        if more {
            let last = resources.last().map(key_of);
            links.push(serde_json::json!({"relation": "next", "url": link(last.as_ref())}));
        }
        let entries: Vec<Value> = resources
            .into_iter()
            .map(|r| {
                let (t, id) = key_of(&r);
                serde_json::json!({"fullUrl": format!("{base}/{t}/{id}"), "resource": r, "search": {"mode": "match"}})
            })
            .collect();
        Ok(serde_json::json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": entries,
        }))
    }

    /// Everything this node holds for a patient key (what the data plane serves).
    pub fn everything_for_key(
        &self,
        key: &zorgmesh_protocol::PatientKey,
    ) -> Result<Vec<Value>, FhirError> {
        let patients = self.storage.patients_with_key(key)?;
        self.everything_of(&patients)
    }

    /// What a holder serves for a patient key: the resources, how many of them (from the
    /// first) its holding commitment covers, and the commitment's salt.
    pub fn holding_for_key(
        &self,
        key: &zorgmesh_protocol::PatientKey,
    ) -> Result<(Vec<Value>, usize, [u8; 32]), FhirError> {
        let patients = self.storage.patients_with_key(key)?;
        let (resources, members) = everything_with_members(&self.storage, &patients)?;
        Ok((resources, members, self.storage.holding_salt(key)))
    }
}

/// The resources of the local patients `patient_ids`: each Patient, its compartment, and
/// the resources they reference (one hop), each once.
pub fn everything_in(storage: &Storage, patient_ids: &[String]) -> Result<Vec<Value>, FhirError> {
    Ok(everything_with_members(storage, patient_ids)?.0)
}

/// Like [`everything_in`], also saying how many resources, from the first, are members of
/// the patients' compartments (what a locator entry's holding commitment covers); the rest
/// are resources they reference.
pub fn everything_with_members(
    storage: &Storage,
    patient_ids: &[String],
) -> Result<(Vec<Value>, usize), FhirError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut referenced = Vec::new();
    for pid in patient_ids {
        let mut members = vec![("Patient".to_owned(), pid.clone())];
        members.extend(storage.compartment(pid)?);
        for (resource_type, id) in members {
            if !crate::storage::is_shared_record(&resource_type)
                || !seen.insert((resource_type.clone(), id.clone()))
            {
                continue;
            }
            if let Some(resource) = storage.read(&resource_type, &id)? {
                resource::for_each_reference(&resource, &mut |r| {
                    if let Some((t, i)) = split_reference(r) {
                        referenced.push((t.to_owned(), i.to_owned()));
                    }
                });
                out.push(resource);
            }
        }
    }
    let members = out.len();
    for (resource_type, id) in referenced {
        if seen.insert((resource_type.clone(), id.clone())) {
            if let Some(resource) = storage.read(&resource_type, &id)? {
                out.push(resource);
            }
        }
    }
    Ok((out, members))
}

fn versioned(resource_type: &str, id: &str, record: VersionRecord) -> Result<Versioned, FhirError> {
    if record.deleted {
        return Err(FhirError::gone(format!(
            "{resource_type}/{id} was deleted (version {})",
            record.version
        )));
    }
    let resource = record
        .resource
        .ok_or_else(|| FhirError::internal("stored version without a resource"))?;
    Ok(Versioned {
        resource,
        version: record.version,
        last_updated_ms: record.last_updated_ms,
    })
}

/// An update inside a write transaction (shared by PUT and Bundles).
/// A patch: RFC 6902 operations, an RFC 7396 merge document or a FHIRPath Patch.
#[derive(Debug, Clone)]
pub enum Patch {
    /// JSON Patch.
    Json(json_patch::Patch),
    /// JSON merge patch.
    Merge(Value),
    /// FHIRPath Patch (a Parameters resource).
    Fhirpath(super::fhirpath_patch::FhirpathPatch),
}

/// 412 for a conditional interaction whose search finds more than one resource.
fn multiple_matches(resource_type: &str, condition: &str) -> FhirError {
    FhirError::new(
        axum::http::StatusCode::PRECONDITION_FAILED,
        "multiple-matches",
        format!("the condition {resource_type}?{condition} finds more than one resource"),
    )
}

/// 412 unless the resource is at the version `If-Match` names.
pub(crate) fn check_if_match(
    tx: &crate::storage::WriteTransaction<'_>,
    resource_type: &str,
    id: &str,
    if_match: Option<u64>,
) -> Result<(), FhirError> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    let actual = tx
        .current(resource_type, id)?
        .filter(|c| !c.deleted)
        .map(|c| c.version);
    if actual != Some(expected) {
        return Err(FhirError::new(
            axum::http::StatusCode::PRECONDITION_FAILED,
            "conflict",
            format!(
                "If-Match names version {expected} but {resource_type}/{id} is at {}",
                actual.map_or("no version".to_owned(), |v| format!("version {v}"))
            ),
        ));
    }
    Ok(())
}

pub(crate) fn put_in(
    tx: &mut crate::storage::WriteTransaction<'_>,
    resource_type: &str,
    id: &str,
    body: &mut Value,
    if_match: Option<u64>,
) -> Result<WriteResult, FhirError> {
    let now = tx.now_ms();
    check_if_match(tx, resource_type, id, if_match)?;
    let version = tx.next_version(resource_type, id)?;
    stamp(body, id, version, now);
    let outcome = tx.put(resource_type, id, body.clone())?;
    Ok(WriteResult {
        stored: Versioned {
            resource: body.clone(),
            version: outcome.version,
            last_updated_ms: now,
        },
        created: outcome.created,
    })
}
