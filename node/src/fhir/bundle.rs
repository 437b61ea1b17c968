//! Transaction and batch Bundles.
//!
//! A **transaction** is all or nothing: ids are assigned to `POST` entries, every
//! `urn:uuid:` (or other `fullUrl`) reference is rewritten to the assigned `Type/id`, and
//! all writes land in one atomic storage commit, in FHIR's order (DELETE, POST, PUT, then
//! GET). A **batch** runs each entry on its own and reports each entry's outcome.

use super::resource::{check_id, check_resource, check_type, http_date, rewrite_references};
use super::service::{check_if_match, new_id, now_ms, put_in, FhirService, WriteResult};
use super::FhirError;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

/// Most entries one Bundle may carry.
pub const MAX_BUNDLE_ENTRIES: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Get,
}

/// One entry of a Bundle, checked (and in a transaction: its id assigned and its
/// references to other entries rewritten).
#[derive(Debug)]
pub struct Entry {
    index: usize,
    method: Method,
    resource_type: String,
    id: Option<String>,
    resource: Option<Value>,
    full_url: Option<String>,
    if_match: Option<u64>,
    /// A conditional entry's search: `ifNoneExist` of a POST, the query of `PUT` or
    /// `DELETE Type?…` (transactions only; decided when the transaction runs).
    condition: Option<String>,
}

impl Entry {
    /// The target id (assigned to a POST in a transaction plan).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// True when the resource still holds a `urn:uuid:`/`urn:oid:` reference.
    pub fn refers_to_unknown_entry(&self) -> bool {
        self.resource
            .as_ref()
            .is_some_and(|r| unresolved_reference(r).is_some())
    }
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

fn parse_if_match(text: &str) -> Option<u64> {
    text.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

fn parse_entry(index: usize, entry: &Value) -> Result<Entry, FhirError> {
    let at = |msg: String| FhirError::invalid(format!("Bundle.entry[{index}]: {msg}"));
    let request = entry
        .get("request")
        .ok_or_else(|| at("has no request".into()))?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some("GET") => Method::Get,
        Some(other) => return Err(at(format!("method {other:?} is not supported"))),
        None => return Err(at("request.method is missing".into())),
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| at("request.url is missing".into()))?;
    let if_none_exist = request
        .get("ifNoneExist")
        .map(|v| {
            v.as_str()
                .map(|q| q.rsplit_once('?').map_or(q, |(_, q)| q).to_owned())
                .filter(|q| !q.is_empty())
                .ok_or_else(|| at("ifNoneExist must be a search query".into()))
        })
        .transpose()?;
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (url, None),
    };
    let mut parts = path.trim_matches('/').split('/');
    let resource_type = parts.next().unwrap_or_default().to_owned();
    let id = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return Err(at(format!(
            "request.url {url:?} must be 'Type', 'Type/id' or 'Type?search'"
        )));
    }
    check_type(&resource_type).map_err(|e| at(e.diagnostics))?;
    if let Some(id) = &id {
        check_id(id).map_err(|e| at(e.diagnostics))?;
    }
    let condition = match (method, &id, query, if_none_exist) {
        (Method::Post, None, None, condition) => condition,
        (Method::Put | Method::Delete, None, Some(query), None) if !query.is_empty() => {
            Some(query)
        }
        (Method::Post, Some(_), _, _) => {
            return Err(at("POST goes to 'Type', not 'Type/id'".into()))
        }
        (_, _, Some(_), _) | (_, _, _, Some(_)) => {
            return Err(FhirError::not_supported(format!(
                "Bundle.entry[{index}]: {method:?} {url:?}: searches in Bundles are conditional POST (ifNoneExist), PUT Type?… and DELETE Type?… only"
            )))
        }
        (Method::Put | Method::Delete | Method::Get, None, None, None) => {
            return Err(at(format!("{method:?} needs 'Type/id' in request.url")))
        }
        _ => None,
    };
    let resource = entry.get("resource").cloned();
    if matches!(method, Method::Post | Method::Put) {
        let resource = resource
            .as_ref()
            .ok_or_else(|| at("POST and PUT entries need a resource".into()))?;
        check_resource(resource, Some(&resource_type)).map_err(|e| {
            if e.issues.is_empty() {
                at(e.diagnostics)
            } else {
                e.in_bundle_entry(index)
            }
        })?;
        if let (Method::Put, Some(body_id), Some(_)) =
            (method, resource.get("id").and_then(Value::as_str), &id)
        {
            if Some(body_id) != id.as_deref() {
                return Err(at(format!(
                    "resource id {body_id:?} differs from request.url {url:?}"
                )));
            }
        }
    }
    Ok(Entry {
        index,
        method,
        resource_type,
        id,
        resource,
        full_url: entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
        if_match: request
            .get("ifMatch")
            .and_then(Value::as_str)
            .and_then(parse_if_match),
        condition,
    })
}

/// [`written_response`] for the id the written resource carries.
fn written_response_of(result: &WriteResult, resource_type: &str) -> Value {
    let id = result.stored.resource["id"].as_str().unwrap_or_default();
    written_response(result, resource_type, id)
}

fn written_response(result: &WriteResult, resource_type: &str, id: &str) -> Value {
    let status = if result.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json!({
        "status": status_line(status),
        "location": format!("{resource_type}/{id}/_history/{}", result.stored.version),
        "etag": format!("W/\"{}\"", result.stored.version),
        "lastModified": super::resource::instant(result.stored.last_updated_ms),
    })
}

fn error_response(error: &FhirError) -> Value {
    json!({"status": status_line(error.status), "outcome": error.to_outcome()})
}

/// FHIR's bdl-7: a fullUrl names one entry (a transaction or batch Bundle has no versions
/// to tell entries with the same fullUrl apart).
fn check_unique_full_urls(raw: &[Value]) -> Result<(), FhirError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in raw.iter().enumerate() {
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
            if let Some(first) = seen.insert(full_url, i) {
                return Err(FhirError::invalid(format!(
                    "Bundle.entry[{first}] and Bundle.entry[{i}] have the same fullUrl {full_url:?} (bdl-7: fullUrl must be unique in a Bundle)"
                )));
            }
        }
    }
    Ok(())
}

/// The first `urn:uuid:` or `urn:oid:` reference left in `value` (one that names no entry
/// of the Bundle).
fn unresolved_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(object) => object.iter().find_map(|(key, v)| match v {
            Value::String(text)
                if key == "reference"
                    && (text.starts_with("urn:uuid:") || text.starts_with("urn:oid:")) =>
            {
                Some(text.as_str())
            }
            other => unresolved_reference(other),
        }),
        Value::Array(items) => items.iter().find_map(unresolved_reference),
        _ => None,
    }
}

/// A Bundle checked and planned; nothing is written yet.
#[derive(Debug)]
pub enum BundlePlan {
    /// A transaction: every entry valid, ids assigned, references rewritten.
    Transaction(Vec<Entry>),
    /// A batch: each entry on its own, valid or with the error it is answered with.
    Batch(Vec<Result<Entry, FhirError>>),
}

/// The intake of `POST /fhir`: a request body (JSON) checked and planned, with the error a
/// client gets for a bad one. Pure: no storage, no clock beyond new ids (fuzzed by
/// `node/fuzz`).
pub fn intake(body: &[u8]) -> Result<BundlePlan, FhirError> {
    let bundle: Value = serde_json::from_slice(body)
        .map_err(|e| FhirError::invalid(format!("the body is not valid JSON: {e}")))?;
    plan(&bundle)
}

/// Checks a transaction or batch Bundle and plans its writes.
pub fn plan(bundle: &Value) -> Result<BundlePlan, FhirError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::invalid("POST to the base expects a Bundle"));
    }
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let raw_entries: &[Value] = match bundle.get("entry") {
        None => &[],
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(FhirError::invalid("Bundle.entry must be an array")),
    };
    if raw_entries.len() > MAX_BUNDLE_ENTRIES {
        return Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("a Bundle may hold at most {MAX_BUNDLE_ENTRIES} entries"),
        ));
    }
    match kind {
        "transaction" => {
            check_unique_full_urls(raw_entries)?;
            plan_transaction(raw_entries).map(BundlePlan::Transaction)
        }
        "batch" => {
            check_unique_full_urls(raw_entries)?;
            Ok(BundlePlan::Batch(plan_batch(raw_entries)))
        }
        other => Err(FhirError::invalid(format!(
            "Bundle.type {other:?} cannot be processed: use 'transaction' or 'batch'"
        ))),
    }
}

/// Processes a transaction or batch Bundle and returns the response Bundle.
pub async fn process(service: &FhirService, bundle: Value) -> Result<Value, FhirError> {
    match plan(&bundle)? {
        BundlePlan::Transaction(entries) => transaction(service, entries).await,
        BundlePlan::Batch(entries) => Ok(batch(service, entries).await),
    }
}

fn plan_transaction(raw: &[Value]) -> Result<Vec<Entry>, FhirError> {
    let mut entries = raw
        .iter()
        .enumerate()
        .map(|(i, e)| parse_entry(i, e))
        .collect::<Result<Vec<_>, _>>()?;
    // Assign ids and learn how fullUrls map to them.
    let mut targets = BTreeSet::new();
    let mut full_urls: HashMap<String, String> = HashMap::new();
    for entry in &mut entries {
        if entry.method == Method::Post || (entry.condition.is_some() && entry.id.is_none()) {
            // A conditional PUT or DELETE gets its target when the transaction runs; until
            // then a new id stands in (also for references to its fullUrl).
            entry.id = Some(new_id());
        }
        let id = entry.id.clone().expect("every entry has an id now");
        if entry.method != Method::Get && !targets.insert((entry.resource_type.clone(), id.clone()))
        {
            return Err(FhirError::invalid(format!(
                "Bundle.entry[{}]: {}/{} is the target of more than one entry",
                entry.index, entry.resource_type, id
            )));
        }
        if let Some(full_url) = &entry.full_url {
            full_urls.insert(full_url.clone(), format!("{}/{}", entry.resource_type, id));
        }
    }
    let lookup = |reference: &str| full_urls.get(reference).cloned();
    for entry in &mut entries {
        if let Some(resource) = &mut entry.resource {
            rewrite_references(resource, &lookup);
            if let Some(reference) = unresolved_reference(resource) {
                return Err(FhirError::invalid(format!(
                    "Bundle.entry[{}]: reference {reference:?} names no entry of the Bundle",
                    entry.index
                )));
            }
        }
    }
    Ok(entries)
}

async fn transaction(service: &FhirService, mut entries: Vec<Entry>) -> Result<Value, FhirError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].method, i));
    let (responses, dirty) = service
        .storage
        .write(now_ms(), |tx| {
            let mut responses = vec![Value::Null; entries.len()];
            let mut skip = vec![false; entries.len()];
            resolve_conditions(service, &mut entries, &mut responses, &mut skip)?;
            for &i in &order {
                if skip[i] {
                    continue;
                }
                let entry = &mut entries[i];
                let id = entry.id.clone().expect("assigned above");
                let at = |e: FhirError| FhirError {
                    diagnostics: format!("Bundle.entry[{}]: {}", entry.index, e.diagnostics),
                    ..e
                };
                responses[i] = match entry.method {
                    Method::Delete => {
                        check_if_match(tx, &entry.resource_type, &id, entry.if_match)
                            .map_err(at)?;
                        tx.delete(&entry.resource_type, &id)
                            .map_err(FhirError::from)?;
                        json!({"status": status_line(StatusCode::NO_CONTENT)})
                    }
                    Method::Post | Method::Put => {
                        let mut body = entry.resource.take().expect("checked in parse_entry");
                        let result =
                            put_in(tx, &entry.resource_type, &id, &mut body, entry.if_match)
                                .map_err(at)?;
                        let mut response = written_response(&result, &entry.resource_type, &id);
                        if entry.method == Method::Post {
                            response["status"] = json!(status_line(StatusCode::CREATED));
                        }
                        response
                    }
                    Method::Get => match tx.current(&entry.resource_type, &id)? {
                        Some(record) if !record.deleted => json!({
                            "status": status_line(StatusCode::OK),
                            "etag": format!("W/\"{}\"", record.version),
                            "resource": record.resource,
                        }),
                        _ => {
                            return Err(at(FhirError::not_found(format!(
                                "{}/{id} does not exist",
                                entry.resource_type
                            ))))
                        }
                    },
                };
            }
            Ok::<_, FhirError>(responses)
        })
        .await?;
    if !dirty.is_empty() {
        service.publisher.stage(dirty).await;
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": responses.into_iter().map(|r| json!({"response": r})).collect::<Vec<_>>(),
    }))
}

/// The most conditional references one transaction may hold.
const MAX_CONDITIONAL_REFERENCES: usize = 1000;

/// Decides a transaction's conditional entries and references against the store as it is
/// before the transaction (the write is held, so nothing changes meanwhile): a conditional
/// create that finds its resource is answered 200 with it and writes nothing; a conditional
/// PUT or DELETE takes the one match as its target; a reference `Type?search` becomes the
/// `Type/id` of its one match. More than one match is 412, none for a reference 400; the
/// transaction then writes nothing.
fn resolve_conditions(
    service: &FhirService,
    entries: &mut [Entry],
    responses: &mut [Value],
    skip: &mut [bool],
) -> Result<(), FhirError> {
    let base = "";
    let mut aliases: HashMap<String, String> = HashMap::new();
    for (i, entry) in entries.iter_mut().enumerate() {
        let Some(condition) = entry.condition.clone() else {
            continue;
        };
        let at = |e: FhirError| FhirError {
            diagnostics: format!("Bundle.entry[{}]: {}", entry.index, e.diagnostics),
            ..e
        };
        let matches = service
            .conditional_matches(&entry.resource_type, &condition, base)
            .map_err(at)?;
        let tentative = format!(
            "{}/{}",
            entry.resource_type,
            entry.id.as_deref().unwrap_or_default()
        );
        match (entry.method, matches.as_slice()) {
            (_, [_, _, ..]) => {
                return Err(at(FhirError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "multiple-matches",
                    format!(
                        "the condition {}?{condition} finds more than one resource",
                        entry.resource_type
                    ),
                )))
            }
            (Method::Post, [existing]) => {
                skip[i] = true;
                aliases.insert(tentative, format!("{}/{existing}", entry.resource_type));
                responses[i] = json!({
                    "status": status_line(StatusCode::OK),
                    "location": format!("{}/{existing}", entry.resource_type),
                });
            }
            (Method::Put, [existing]) => {
                if let Some(body_id) = entry
                    .resource
                    .as_ref()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                {
                    if body_id != existing {
                        return Err(at(FhirError::invalid(format!(
                            "the condition finds {}/{existing}, but the resource's id is {body_id:?}",
                            entry.resource_type
                        ))));
                    }
                }
                aliases.insert(tentative, format!("{}/{existing}", entry.resource_type));
                entry.id = Some(existing.clone());
            }
            (Method::Put, []) => {
                if let Some(body_id) = entry
                    .resource
                    .as_ref()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                {
                    check_id(body_id).map_err(at)?;
                    aliases.insert(tentative, format!("{}/{body_id}", entry.resource_type));
                    entry.id = Some(body_id.to_owned());
                }
            }
            (Method::Delete, [existing]) => entry.id = Some(existing.clone()),
            (Method::Delete, []) => {
                skip[i] = true;
                responses[i] = json!({"status": status_line(StatusCode::NO_CONTENT)});
            }
            _ => {}
        }
    }
    // A condition may have found a resource another entry also writes: one target, one
    // entry, as before the conditions were decided.
    let mut targets = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        if skip[i] || entry.method == Method::Get {
            continue;
        }
        let id = entry.id.as_deref().unwrap_or_default();
        if !targets.insert((entry.resource_type.as_str(), id)) {
            return Err(FhirError::invalid(format!(
                "Bundle.entry[{}]: {}/{id} is the target of more than one entry once the \
                 conditions are decided",
                entry.index, entry.resource_type
            )));
        }
    }
    // Conditional references, each searched once.
    let mut searched: HashMap<String, String> = HashMap::new();
    for entry in entries.iter() {
        if let Some(resource) = &entry.resource {
            collect_conditional_references(resource, &mut searched);
        }
    }
    if searched.len() > MAX_CONDITIONAL_REFERENCES {
        return Err(FhirError::invalid(format!(
            "a transaction may hold at most {MAX_CONDITIONAL_REFERENCES} conditional references"
        )));
    }
    for (reference, target) in searched.iter_mut() {
        let (resource_type, query) = reference.split_once('?').expect("collected with a '?'");
        let matches = service.conditional_matches(resource_type, query, base)?;
        match matches.as_slice() {
            [one] => *target = format!("{resource_type}/{one}"),
            [] => {
                return Err(FhirError::invalid(format!(
                    "the conditional reference {reference:?} finds no resource"
                )))
            }
            _ => {
                return Err(FhirError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "multiple-matches",
                    format!("the conditional reference {reference:?} finds more than one resource"),
                ))
            }
        }
    }
    aliases.extend(searched);
    if !aliases.is_empty() {
        for entry in entries.iter_mut() {
            if let Some(resource) = &mut entry.resource {
                rewrite_references(resource, &|r: &str| aliases.get(r).cloned());
            }
        }
    }
    Ok(())
}

/// The conditional references (`Type?search`) in a resource.
fn collect_conditional_references(value: &Value, out: &mut HashMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, v) in object {
                match v {
                    Value::String(text) if key == "reference" => {
                        if let Some((t, q)) = text.split_once('?') {
                            if check_type(t).is_ok() && !q.is_empty() {
                                out.entry(text.clone()).or_default();
                            }
                        }
                    }
                    other => collect_conditional_references(other, out),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_conditional_references(v, out)),
        _ => {}
    }
}

fn plan_batch(raw: &[Value]) -> Vec<Result<Entry, FhirError>> {
    raw.iter()
        .enumerate()
        .map(|(i, raw_entry)| {
            let entry = parse_entry(i, raw_entry)?;
            if let Some(reference) = entry.resource.as_ref().and_then(unresolved_reference) {
                return Err(FhirError::invalid(format!(
                    "Bundle.entry[{i}]: reference {reference:?} cannot be resolved (entries of a batch do not refer to each other)"
                )));
            }
            Ok(entry)
        })
        .collect()
}

async fn batch(service: &FhirService, planned: Vec<Result<Entry, FhirError>>) -> Value {
    let mut responses = Vec::with_capacity(planned.len());
    for entry in planned {
        let response = match entry {
            Err(e) => error_response(&e),
            Ok(entry) => run_batch_entry(service, entry)
                .await
                .unwrap_or_else(|e| error_response(&e)),
        };
        responses.push(json!({"response": response}));
    }
    json!({"resourceType": "Bundle", "type": "batch-response", "entry": responses})
}

async fn run_batch_entry(service: &FhirService, entry: Entry) -> Result<Value, FhirError> {
    let resource_type = entry.resource_type.as_str();
    if let Some(condition) = &entry.condition {
        // A batch entry's condition is decided on its own, as the REST interaction is.
        return match entry.method {
            Method::Post => {
                let result = service
                    .create_if_none_exist(
                        resource_type,
                        entry.resource.expect("checked"),
                        condition,
                        "",
                    )
                    .await?;
                Ok(written_response_of(&result, resource_type))
            }
            Method::Put => {
                let result = service
                    .conditional_update(
                        resource_type,
                        condition,
                        entry.resource.expect("checked"),
                        entry.if_match,
                        "",
                    )
                    .await?;
                Ok(written_response_of(&result, resource_type))
            }
            Method::Delete => {
                service
                    .conditional_delete(resource_type, condition, "")
                    .await?;
                Ok(json!({"status": status_line(StatusCode::NO_CONTENT)}))
            }
            Method::Get => Err(FhirError::not_supported("conditional GET in a batch")),
        };
    }
    match entry.method {
        Method::Post => {
            let result = service
                .create(resource_type, entry.resource.expect("checked"))
                .await?;
            Ok(written_response_of(&result, resource_type))
        }
        Method::Put => {
            let id = entry.id.expect("checked");
            let result = service
                .update(
                    resource_type,
                    &id,
                    entry.resource.expect("checked"),
                    entry.if_match,
                )
                .await?;
            Ok(written_response(&result, resource_type, &id))
        }
        Method::Delete => {
            service
                .delete(resource_type, &entry.id.expect("checked"), entry.if_match)
                .await?;
            Ok(json!({"status": status_line(StatusCode::NO_CONTENT)}))
        }
        Method::Get => {
            let read = service.read(resource_type, &entry.id.expect("checked"))?;
            Ok(json!({
                "status": status_line(StatusCode::OK),
                "etag": format!("W/\"{}\"", read.version),
                "lastModified": http_date(read.last_updated_ms),
                "resource": read.resource,
            }))
        }
    }
}
