//! Search, driven by the FHIR R4 search parameter definitions: every parameter of type
//! string, token, reference, date, quantity, uri or number of every resource type, answered
//! from the search index (`storage::search_index`) that each write keeps, so a search reads
//! the index records of its parameters and then only the resources on the page.
//!
//! - [`parameters`]: the definitions, generated from the specification's table.
//! - [`fhirpath`]: the evaluator of the definitions' expressions.
//! - [`extract`]: what a resource is found by (index values per parameter type).
//! - [`query`]: a request read into clauses.
//! - this file: clauses answered from the index, and the searchset Bundle.
//!
//! Parameters that cannot be applied are reported in an OperationOutcome entry and left out
//! of the self link (FHIR's lenient handling), or refused with 400 under
//! `Prefer: handling=strict`.

pub mod extract;
pub mod fhirpath;
pub mod parameters;
pub mod query;
#[rustfmt::skip]
mod summary_elements;

use super::outcome::operation_outcome;
use super::resource::check_type;
use super::service::FhirService;
use super::FhirError;
use crate::storage::search_index::{self, values_for};
use crate::storage::search_index::{
    from_sortable_f64, from_sortable_i64, id_of_key, parameter_prefix, sortable_f64, sortable_i64,
};
use crate::storage::{Storage, StorageError};
use extract::IndexValue;
use parameters::ParameterType;
use query::{Clause, Prefix, Query, Summary, TextMatch, UriMatch, Wanted};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::ops::Bound;

pub use query::{DEFAULT_COUNT, MAX_COUNT};

/// Runs a search on `resource_type` and returns a searchset Bundle. `strict`: the client
/// asked `Prefer: handling=strict`.
pub fn search(
    service: &FhirService,
    resource_type: &str,
    params: &[(String, String)],
    base: &str,
    strict: bool,
    may_read: &dyn Fn(&str) -> bool,
) -> Result<Value, FhirError> {
    check_type(resource_type)?;
    let query = query::parse(resource_type, params, strict, base)?;
    // A chain reads the types it goes through: the client must be allowed to read them.
    for t in query.chained_types() {
        if !may_read(&t) {
            return Err(crate::auth::forbidden(format!(
                "the search goes through {t}, which this client may not read"
            )));
        }
    }
    let storage = service.storage();
    let ids = matching_ids(storage, resource_type, &query)?;
    let total = ids.len();
    let count = query.count;
    let ordered = sorted(storage, resource_type, ids, &query.sort)?;
    // Where the page starts: after a cursor, before one (going back), or at an offset.
    let cursor_of = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let start = match (cursor_of("_page_after"), cursor_of("_page_before")) {
        (Some(after), _) => {
            let after = decode_cursor(after)?;
            ordered.partition_point(|k| compare_keyed(k, &after, &query.sort).is_le())
        }
        (None, Some(before)) => {
            let before = decode_cursor(before)?;
            ordered
                .partition_point(|k| compare_keyed(k, &before, &query.sort).is_lt())
                .saturating_sub(count)
        }
        (None, None) => query.offset.min(ordered.len()),
    };
    let end = (start + count).min(ordered.len());

    let mut applied: Vec<(String, String)> = query
        .clauses
        .iter()
        .map(|c| (c.name.clone(), c.raw_value.clone()))
        .collect();
    applied.extend(query.applied.iter().cloned());
    applied.push(("_count".into(), count.to_string()));
    let link = |page: Option<(&str, String)>| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (n, v) in &applied {
            q.append_pair(n, v);
        }
        if let Some((name, cursor)) = page {
            q.append_pair(name, &cursor);
        }
        format!("{base}/{resource_type}?{}", q.finish())
    };
    let counting = query.summary == Summary::Count;
    let own_cursor = ["_page_after", "_page_before"]
        .into_iter()
        .find_map(|name| cursor_of(name).map(|c| (name, c.to_owned())));
    let mut links = vec![json!({"relation": "self", "url": link(own_cursor)})];
    if !counting && end < ordered.len() && count > 0 && end > start {
        let cursor = encode_cursor(&ordered[end - 1]);
        links.push(json!({"relation": "next", "url": link(Some(("_page_after", cursor)))}));
    }
    if !counting && start > 0 {
        if let Some(first) = ordered.get(start) {
            let cursor = encode_cursor(first);
            links
                .push(json!({"relation": "previous", "url": link(Some(("_page_before", cursor)))}));
        }
    }
    let mut entries = Vec::new();
    let mut page: Vec<(String, String, Value)> = Vec::new();
    if !counting {
        for (_, id) in &ordered[start..end] {
            if let Some(resource) = current_resource(storage, resource_type, id)? {
                page.push((resource_type.to_owned(), id.clone(), resource));
            }
        }
    }
    // What the client may not read is not included.
    let included: Vec<_> = included(storage, &query, &page)?
        .into_iter()
        .filter(|(t, _, _)| may_read(t))
        .collect();
    for (mode, list) in [("match", page), ("include", included)] {
        for (t, id, resource) in list {
            entries.push(json!({
                "fullUrl": format!("{base}/{t}/{id}"),
                "resource": shaped(resource, &query),
                "search": {"mode": mode},
            }));
        }
    }
    if !query.ignored.is_empty() {
        let list: Vec<String> = query
            .ignored
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        entries.push(json!({
            "resource": operation_outcome(
                "warning",
                "not-supported",
                &format!("search parameters ignored: {}", list.join("; ")),
            ),
            "search": {"mode": "outcome"},
        }));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    });
    if query.no_total {
        bundle.as_object_mut().expect("an object").remove("total");
    }
    Ok(bundle)
}

/// A current (not deleted) resource.
fn current_resource(
    storage: &Storage,
    resource_type: &str,
    id: &str,
) -> Result<Option<Value>, StorageError> {
    Ok(storage
        .current(resource_type, id)?
        .filter(|record| !record.deleted)
        .and_then(|record| record.resource))
}

/// A sort key: what a resource's values of one parameter sort by.
#[derive(Debug, Clone, PartialEq, PartialOrd, serde::Serialize, serde::Deserialize)]
enum SortValue {
    Instant(i64),
    Number(f64),
    Text(String),
}

fn sort_value(value: &IndexValue, descending: bool) -> Option<SortValue> {
    Some(match value {
        IndexValue::Date { low, high } => SortValue::Instant(if descending { *high } else { *low }),
        IndexValue::Quantity { value, .. } | IndexValue::Number(value) => SortValue::Number(*value),
        IndexValue::String { normalized, .. } => SortValue::Text(normalized.clone()),
        IndexValue::Token { code, .. } => SortValue::Text(code.clone()),
        IndexValue::Reference { url, .. } => SortValue::Text(url.clone()),
        IndexValue::Uri(uri) => SortValue::Text(uri.clone()),
        _ => return None,
    })
}

/// A match with its sort keys: where it stands in the order, and what a page cursor holds.
type Keyed = (Vec<Option<SortValue>>, String);

/// The order of two matches under `_sort` (ascending by a parameter's least value,
/// descending by its greatest; resources without a value last), ties by id.
fn compare_keyed(a: &Keyed, b: &Keyed, sort: &[(String, bool)]) -> std::cmp::Ordering {
    for ((x, y), (_, descending)) in a.0.iter().zip(&b.0).zip(sort) {
        let order = match (x, y) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal);
                if *descending {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if order != std::cmp::Ordering::Equal {
            return order;
        }
    }
    a.1.cmp(&b.1)
}

/// The matches in `_sort` order (by id without one), each with its keys.
fn sorted(
    storage: &Storage,
    resource_type: &str,
    ids: BTreeSet<String>,
    sort: &[(String, bool)],
) -> Result<Vec<Keyed>, StorageError> {
    if sort.is_empty() {
        return Ok(ids.into_iter().map(|id| (Vec::new(), id)).collect());
    }
    let mut keyed = Vec::with_capacity(ids.len());
    for id in ids {
        let values = storage
            .index_values(resource_type, &id)?
            .unwrap_or_default();
        let keys: Vec<Option<SortValue>> = sort
            .iter()
            .map(|(code, descending)| {
                let candidates =
                    values_for(&values, code).filter_map(|v| sort_value(v, *descending));
                if *descending {
                    candidates.fold(None, |best: Option<SortValue>, v| match best {
                        Some(b) if b >= v => Some(b),
                        _ => Some(v),
                    })
                } else {
                    candidates.fold(None, |best: Option<SortValue>, v| match best {
                        Some(b) if b <= v => Some(b),
                        _ => Some(v),
                    })
                }
            })
            .collect();
        keyed.push((keys, id));
    }
    keyed.sort_by(|a, b| compare_keyed(a, b, sort));
    Ok(keyed)
}

/// A page cursor: the keys and id of the match a page starts after (or ends before), hex of
/// its JSON. Pages by cursor stay right while resources are added and removed: a page starts
/// where the last one ended in the order, not at a count that shifts.
fn encode_cursor(keyed: &Keyed) -> String {
    hex::encode(serde_json::to_vec(keyed).expect("cursors serialize"))
}

fn decode_cursor(text: &str) -> Result<Keyed, FhirError> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            FhirError::invalid(format!(
                "the page cursor {text:?} is not one this node gave"
            ))
        })
}

/// What `_include` and `_revinclude` add to a page (at most [`query::MAX_INCLUDED`]), each
/// resource once and none that is on the page already; `:iterate` goes on from what was
/// added until nothing new comes.
fn included(
    storage: &Storage,
    query: &Query,
    page: &[(String, String, Value)],
) -> Result<Vec<(String, String, Value)>, FhirError> {
    if query.include.is_empty() && query.revinclude.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: BTreeSet<(String, String)> = page
        .iter()
        .map(|(t, id, _)| (t.clone(), id.clone()))
        .collect();
    let mut out = Vec::new();
    let mut frontier: Vec<(String, String)> = seen.iter().cloned().collect();
    let mut first = true;
    while !frontier.is_empty() && out.len() < query::MAX_INCLUDED {
        let mut next = Vec::new();
        for (t, id) in &frontier {
            let mut found: Vec<(String, String)> = Vec::new();
            for include in query.include.iter().filter(|i| first || i.iterate) {
                if include.source_type != *t {
                    continue;
                }
                let values = storage.index_values(t, id)?.unwrap_or_default();
                for value in values_for(&values, &include.parameter) {
                    if let IndexValue::Reference {
                        target_type: Some(target),
                        id: Some(target_id),
                        ..
                    } = value
                    {
                        if include.target_type.as_ref().is_none_or(|w| w == target) {
                            found.push((target.clone(), target_id.clone()));
                        }
                    }
                }
            }
            for include in query.revinclude.iter().filter(|i| first || i.iterate) {
                let prefix = exact(with(
                    &parameter_prefix(&include.source_type, &include.parameter),
                    b'r',
                    &[id.as_bytes(), t.as_bytes()],
                ));
                let sources = ids_under(storage, &prefix, query::MAX_INCLUDED, |_, _| true)?
                    .unwrap_or_default();
                found.extend(
                    sources
                        .into_iter()
                        .map(|s| (include.source_type.clone(), s)),
                );
            }
            for key in found {
                if out.len() >= query::MAX_INCLUDED || !seen.insert(key.clone()) {
                    continue;
                }
                if let Some(resource) = current_resource(storage, &key.0, &key.1)? {
                    out.push((key.0.clone(), key.1.clone(), resource));
                    next.push(key);
                }
            }
        }
        frontier = next;
        first = false;
    }
    Ok(out)
}

/// The summary elements of a type and the choice elements among them (none for a type
/// the definitions give none).
fn summary_of(resource_type: &str) -> (&'static [&'static str], &'static [&'static str]) {
    let rows = summary_elements::SUMMARY_ELEMENTS;
    rows.binary_search_by(|(t, _, _)| (*t).cmp(resource_type))
        .map_or((&[], &[]), |at| (rows[at].1, rows[at].2))
}

/// Whether a JSON key is one of `elements`: the name itself, or a choice element's name
/// with its type (`effectiveDateTime` for `effective`).
fn is_summary_element(key: &str, elements: &[&str], choices: &[&str]) -> bool {
    if elements.contains(&key) {
        return true;
    }
    choices.iter().any(|choice| {
        elements.contains(choice)
            && key.len() > choice.len()
            && key.starts_with(choice)
            && key.as_bytes()[choice.len()].is_ascii_uppercase()
    })
}

/// A read's or vread's resource as its `_summary` and `_elements` ask for it (the other
/// parameters a read may carry, `_format` and `_pretty`, do not change the resource).
/// `_summary=count` is for searches only: 400.
pub fn shape_read(resource: Value, params: &[(String, String)]) -> Result<Value, FhirError> {
    let mut query = Query::of(Vec::new());
    for (name, value) in params {
        if name != "_summary" && name != "_elements" {
            continue;
        }
        let resource_type = resource.get("resourceType").and_then(Value::as_str);
        query::read_parameter(resource_type.unwrap_or(""), name, value, &mut query)?;
    }
    if query.summary == Summary::Count {
        return Err(FhirError::invalid(
            "_summary=count: only a search counts; a read returns one resource",
        ));
    }
    Ok(shaped(resource, &query))
}

/// A resource as `_summary` and `_elements` ask for it (marked `SUBSETTED` when cut).
fn shaped(mut resource: Value, query: &Query) -> Value {
    let keep: Option<Vec<&str>> = match (&query.elements, query.summary) {
        (Some(elements), _) => Some(elements.iter().map(String::as_str).collect()),
        (None, Summary::Text) => Some(vec!["text"]),
        _ => None,
    };
    let summary = (query.elements.is_none() && query.summary == Summary::True)
        .then(|| {
            resource
                .get("resourceType")
                .and_then(Value::as_str)
                .map(summary_of)
        })
        .flatten();
    let Some(map) = resource.as_object_mut() else {
        return resource;
    };
    let mut cut = false;
    if let Some(keep) = keep {
        let before = map.len();
        map.retain(|key, _| {
            matches!(key.as_str(), "resourceType" | "id" | "meta") || keep.contains(&key.as_str())
        });
        cut = map.len() != before;
    } else if let Some((elements, choices)) = summary {
        let before = map.len();
        map.retain(|key, _| {
            matches!(key.as_str(), "resourceType" | "id" | "meta")
                || is_summary_element(key, elements, choices)
        });
        cut = map.len() != before;
    } else if query.summary == Summary::Data {
        cut = map.remove("text").is_some();
    }
    if cut {
        let meta = map.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                }));
            }
        }
    }
    resource
}

/// The CapabilityStatement's `searchParam` list of a resource type: every parameter this
/// node applies, with its definition and the modifiers or prefixes it takes.
pub fn capability_parameters(resource_type: &str) -> Vec<Value> {
    let Some(parameters) = parameters::registry().of_type(resource_type) else {
        return Vec::new();
    };
    parameters
        .values()
        .filter(|p| p.kind.is_indexed() && p.expression.is_some())
        .map(|p| {
            let documentation = match p.kind {
                ParameterType::Token => "modifiers :not, :text, :of-type (identifiers), :missing",
                ParameterType::String => {
                    "prefix match ignoring case and accents; modifiers :exact, :contains, :missing"
                }
                ParameterType::Reference => {
                    "id, type/id or absolute URL; modifiers :[type], :identifier, :missing"
                }
                ParameterType::Date | ParameterType::Number | ParameterType::Quantity => {
                    "prefixes eq, ne, gt, lt, ge, le, sa, eb, ap; modifier :missing"
                }
                ParameterType::Uri => "modifiers :below, :above, :missing",
                ParameterType::Composite | ParameterType::Special => "",
            };
            json!({
                "name": p.code,
                "definition": p.url(),
                "type": p.kind.name(),
                "documentation": documentation,
            })
        })
        .collect()
}

/// How far each clause is scanned when choosing the one a search starts from.
pub const PLAN_SCAN_LIMIT: usize = 2048;

/// The ids of the resources of `resource_type` that satisfy every clause, in id order.
///
/// The plan: each clause that can be read from the index is scanned only as far as the
/// smallest found so far (at most [`PLAN_SCAN_LIMIT`] ids); the smallest gives the
/// candidates, and each candidate's values record decides the other clauses. A
/// patient-scoped query (`patient=X&code=Y&date=ge…`) so reads the patient's entries and one
/// record per candidate, however many Observations of code Y other patients have.
pub fn matching_ids(
    storage: &Storage,
    resource_type: &str,
    query: &Query,
) -> Result<BTreeSet<String>, FhirError> {
    let resolved = resolve_chains(storage, resource_type, &query.clauses)?;
    let clauses = &resolved;
    if clauses.is_empty() {
        return Ok(all_ids(storage, resource_type)?);
    }
    // Within one patient's partition, when the search names one patient: the patient clause
    // holds for every entry there, and the other clauses are read from the partition.
    let patient = clauses.iter().enumerate().find_map(|(i, c)| {
        patient_of_clause(c).map(|patient| (i, search_index::patient_parameter_prefix_of(patient)))
    });
    let mut best: Option<(usize, BTreeSet<String>)> = None;
    if let Some((patient_clause, partition)) = &patient {
        for (i, clause) in clauses.iter().enumerate() {
            // A partition holds no entries of the `patient` parameter itself: any other
            // clause on it is checked on the candidates.
            if i == *patient_clause || !can_drive(clause) || clause.parameter.code == "patient" {
                continue;
            }
            let limit = best.as_ref().map_or(usize::MAX, |(_, ids)| ids.len());
            let prefix = partition(resource_type, clause.parameter.code);
            if let Some(ids) = clause_ids_under(storage, resource_type, clause, &prefix, limit)? {
                if ids.is_empty() {
                    return Ok(BTreeSet::new());
                }
                if best.as_ref().is_none_or(|(_, b)| ids.len() < b.len()) {
                    best = Some((i, ids));
                }
            }
        }
        if let Some((driver, candidates)) = best {
            return check_others(
                storage,
                resource_type,
                clauses,
                &[driver, *patient_clause],
                candidates,
            );
        }
    }
    for (i, clause) in clauses.iter().enumerate() {
        if !can_drive(clause) {
            continue;
        }
        let limit = best
            .as_ref()
            .map_or(PLAN_SCAN_LIMIT, |(_, ids)| ids.len().saturating_sub(1));
        if let Some(ids) = clause_ids(storage, resource_type, clause, limit)? {
            let empty = ids.is_empty();
            best = Some((i, ids));
            if empty {
                return Ok(BTreeSet::new());
            }
        }
    }
    let (driver, candidates) = match best {
        Some(best) => best,
        None => match clauses.iter().position(can_drive) {
            Some(i) => (
                i,
                clause_ids(storage, resource_type, &clauses[i], usize::MAX)?.unwrap_or_default(),
            ),
            None => (usize::MAX, all_ids(storage, resource_type)?),
        },
    };
    check_others(storage, resource_type, clauses, &[driver], candidates)
}

/// The one patient a clause names, when it is the `patient` parameter with one value (its
/// entries are the resource's patient partitions).
fn patient_of_clause(clause: &Clause) -> Option<&str> {
    if clause.parameter.code != "patient" || clause.negated {
        return None;
    }
    match clause.any_of.as_slice() {
        [Wanted::Reference { target_type, id }]
            if target_type.as_deref().is_none_or(|t| t == "Patient") =>
        {
            Some(id.as_str())
        }
        _ => None,
    }
}

/// The candidates that satisfy every clause but those already applied (`done`), each read
/// from its values record.
fn check_others(
    storage: &Storage,
    resource_type: &str,
    clauses: &[Clause],
    done: &[usize],
    candidates: BTreeSet<String>,
) -> Result<BTreeSet<String>, FhirError> {
    let others: Vec<&Clause> = clauses
        .iter()
        .enumerate()
        .filter(|(i, _)| !done.contains(i))
        .map(|(_, c)| c)
        .collect();
    if others.is_empty() {
        return Ok(candidates);
    }
    let now = crate::fhir::service::now_ms() as i64;
    let mut result = BTreeSet::new();
    for id in candidates {
        let Some(values) = storage.index_values(resource_type, &id)? else {
            continue;
        };
        let satisfied = others.iter().all(|clause| {
            let of_parameter: Vec<IndexValue> = values_for(&values, clause.parameter.code)
                .cloned()
                .collect();
            clause.matches(&of_parameter, now)
        });
        if satisfied {
            result.insert(id);
        }
    }
    Ok(result)
}

/// The most resources a chain's inner search may find (each becomes a value of the outer
/// clause).
pub const MAX_CHAIN_MATCHES: usize = 10_000;

/// The clauses with every chain and reverse chain replaced by what it finds: a chain by
/// references to the targets its inner clause matches, `_has` by the ids that the matching
/// resources of the other type point at.
fn resolve_chains(
    storage: &Storage,
    resource_type: &str,
    clauses: &[Clause],
) -> Result<Vec<Clause>, FhirError> {
    let too_many = |name: &str| {
        FhirError::invalid(format!(
            "{name}: the chain finds more than {MAX_CHAIN_MATCHES} resources; narrow it"
        ))
    };
    let mut out = Vec::with_capacity(clauses.len());
    for clause in clauses {
        let mut any_of = Vec::with_capacity(clause.any_of.len());
        for wanted in &clause.any_of {
            match wanted {
                Wanted::Chained(chain) => {
                    for (target_type, inner) in &chain.targets {
                        let ids =
                            matching_ids(storage, target_type, &Query::of(vec![inner.clone()]))?;
                        if any_of.len() + ids.len() > MAX_CHAIN_MATCHES {
                            return Err(too_many(&clause.name));
                        }
                        any_of.extend(ids.into_iter().map(|id| Wanted::Reference {
                            target_type: Some(target_type.clone()),
                            id,
                        }));
                    }
                }
                Wanted::Has(has) => {
                    let sources = matching_ids(
                        storage,
                        &has.source_type,
                        &Query::of(vec![has.inner.clone()]),
                    )?;
                    if sources.len() > MAX_CHAIN_MATCHES {
                        return Err(too_many(&clause.name));
                    }
                    let mut targets = BTreeSet::new();
                    for source in sources {
                        let Some(values) = storage.index_values(&has.source_type, &source)? else {
                            continue;
                        };
                        for value in values_for(&values, &has.reference) {
                            if let IndexValue::Reference {
                                target_type,
                                id: Some(id),
                                ..
                            } = value
                            {
                                if target_type.as_deref().is_none_or(|t| t == resource_type) {
                                    targets.insert(id.clone());
                                }
                            }
                        }
                    }
                    any_of.extend(targets.into_iter().map(|id| Wanted::Token {
                        system: None,
                        code: Some(id),
                    }));
                }
                other => any_of.push(other.clone()),
            }
        }
        out.push(Clause {
            any_of,
            ..clause.clone()
        });
    }
    Ok(out)
}

/// Whether a clause's matches can be read from the index as a set (`:not` and
/// `:missing=true` are what is not there).
fn can_drive(clause: &Clause) -> bool {
    !clause.negated && !clause.any_of.contains(&Wanted::Missing(true))
}

/// The same search without the index: every resource of the type, its values extracted
/// and matched. The baseline of the search benchmark, and the oracle the index is tested
/// against.
pub fn scan_matching_ids(
    storage: &Storage,
    resource_type: &str,
    query: &Query,
) -> Result<BTreeSet<String>, FhirError> {
    let now = crate::fhir::service::now_ms() as i64;
    let clauses = resolve_chains(storage, resource_type, &query.clauses)?;
    let mut result = BTreeSet::new();
    for item in storage.scan_type(resource_type) {
        let (_, resource) = item?;
        let satisfied = clauses.iter().all(|clause| {
            let values = extract::extract(&clause.parameter, &resource);
            clause.matches(&values, now)
        });
        if satisfied {
            if let Some(id) = resource.get("id").and_then(Value::as_str) {
                result.insert(id.to_owned());
            }
        }
    }
    Ok(result)
}

/// Every current resource of a type: each has an `_id` token record.
fn all_ids(storage: &Storage, resource_type: &str) -> Result<BTreeSet<String>, StorageError> {
    let mut prefix = parameter_prefix(resource_type, "_id");
    prefix.push(b't');
    Ok(ids_under(storage, &prefix, usize::MAX, |_, _| true)?.unwrap_or_default())
}

/// Ids found by a scan: `None` once there are more than the scan's limit.
type Found = Option<BTreeSet<String>>;

/// Ids of the index records under `prefix` that `keep` accepts (given the value part of the
/// key after the prefix, and the payload); `None` if more than `limit`.
fn ids_under(
    storage: &Storage,
    prefix: &[u8],
    limit: usize,
    keep: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<Found, StorageError> {
    let mut ids = BTreeSet::new();
    for item in storage.index_prefix(prefix) {
        let (key, payload) = item?;
        if let Some((value, id)) = split_key(&key, prefix.len()) {
            if keep(value, &payload) {
                ids.insert(id.to_owned());
                if ids.len() > limit {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(ids))
}

/// Ids of the index records from `start` to `end` (keys, both under `tag_prefix`) that
/// `keep` accepts.
fn ids_in_range(
    storage: &Storage,
    tag_prefix: &[u8],
    (start, end): (Bound<Vec<u8>>, Bound<Vec<u8>>),
    limit: usize,
    keep: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<Found, StorageError> {
    let start = match start {
        Bound::Unbounded => Bound::Included(tag_prefix.to_vec()),
        bound => bound,
    };
    let end = match end {
        Bound::Unbounded => match prefix_end(tag_prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        },
        bound => bound,
    };
    let mut ids = BTreeSet::new();
    for item in storage.index_range(start, end) {
        let (key, payload) = item?;
        if !key.starts_with(tag_prefix) {
            break;
        }
        if let Some((value, id)) = split_key(&key, tag_prefix.len()) {
            if keep(value, &payload) {
                ids.insert(id.to_owned());
                if ids.len() > limit {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(ids))
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key's value part (after `prefix_len` bytes, before the last `\0`) and its id.
fn split_key(key: &[u8], prefix_len: usize) -> Option<(&[u8], &str)> {
    let id = id_of_key(key)?;
    let value_end = key.len() - id.len() - 1;
    // A prefix that takes the whole value (and its `\0`) leaves an empty value part.
    let value = key.get(prefix_len.min(value_end)..value_end)?;
    Some((value, id))
}

/// The first 8 bytes of a value part, as a fixed-width number.
fn eight(value: &[u8]) -> Option<[u8; 8]> {
    value.get(..8)?.try_into().ok()
}

/// The ids a clause matches, read from the index; `None` if more than `limit`.
fn clause_ids(
    storage: &Storage,
    resource_type: &str,
    clause: &Clause,
    limit: usize,
) -> Result<Found, FhirError> {
    let prefix = parameter_prefix(resource_type, clause.parameter.code);
    clause_ids_under(storage, resource_type, clause, &prefix, limit)
}

/// Like [`clause_ids`], reading the parameter's entries under `prefix` (the type-wide ones
/// or a patient partition's).
fn clause_ids_under(
    storage: &Storage,
    resource_type: &str,
    clause: &Clause,
    prefix: &[u8],
    limit: usize,
) -> Result<Found, FhirError> {
    let prefix = prefix.to_vec();
    let mut ids = BTreeSet::new();
    for wanted in &clause.any_of {
        let Some(found) = value_ids(
            storage,
            resource_type,
            &prefix,
            clause.parameter.kind,
            wanted,
            limit,
        )?
        else {
            return Ok(None);
        };
        ids.extend(found);
        if ids.len() > limit {
            return Ok(None);
        }
    }
    if clause.negated {
        let all = all_ids(storage, resource_type)?;
        let rest: BTreeSet<String> = all.difference(&ids).cloned().collect();
        return Ok((rest.len() <= limit).then_some(rest));
    }
    Ok(Some(ids))
}

fn with(prefix: &[u8], tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.push(tag);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `key` with a `\0` after it: the prefix of records whose value is exactly the parts.
fn exact(mut key: Vec<u8>) -> Vec<u8> {
    key.push(0);
    key
}

fn value_ids(
    storage: &Storage,
    resource_type: &str,
    prefix: &[u8],
    kind: ParameterType,
    wanted: &Wanted,
    limit: usize,
) -> Result<Found, StorageError> {
    let any = |_: &[u8], _: &[u8]| true;
    let under = |key: Vec<u8>| ids_under(storage, &key, limit, any);
    match wanted {
        Wanted::Token {
            system,
            code: Some(code),
        } => {
            let mut parts: Vec<&[u8]> = vec![code.as_bytes()];
            if let Some(system) = system {
                parts.push(system.as_bytes());
            }
            under(exact(with(prefix, b't', &parts)))
        }
        Wanted::Token { system, code: None } => {
            let wanted_system = system.clone().unwrap_or_default();
            ids_under(storage, &with(prefix, b't', &[]), limit, |value, _| {
                value
                    .iter()
                    .position(|b| *b == 0)
                    .is_some_and(|at| &value[at + 1..] == wanted_system.as_bytes())
            })
        }
        Wanted::TokenText(text) => under(with(prefix, b'x', &[text.as_bytes()])),
        Wanted::OfType {
            system,
            code,
            value,
        } => under(exact(with(
            prefix,
            b'o',
            &[system.as_bytes(), code.as_bytes(), value.as_bytes()],
        ))),
        Wanted::Text { text, mode } => match mode {
            TextMatch::StartsWith => under(with(prefix, b's', &[text.as_bytes()])),
            TextMatch::Exact => {
                let normalized = extract::normalize(text);
                ids_under(
                    storage,
                    &exact(with(prefix, b's', &[normalized.as_bytes()])),
                    limit,
                    |_, payload| payload == text.as_bytes(),
                )
            }
            TextMatch::Contains => {
                ids_under(storage, &with(prefix, b's', &[]), limit, |value, _| {
                    std::str::from_utf8(value).is_ok_and(|v| v.contains(text.as_str()))
                })
            }
        },
        Wanted::Date {
            prefix: search,
            low,
            high,
        } => date_ids(storage, prefix, *search, *low, *high, limit),
        Wanted::Reference { target_type, id } => {
            let mut parts: Vec<&[u8]> = vec![id.as_bytes()];
            if let Some(t) = target_type {
                parts.push(t.as_bytes());
            }
            under(exact(with(prefix, b'r', &parts)))
        }
        Wanted::ReferenceUrl(url) => under(exact(with(prefix, b'u', &[url.as_bytes()]))),
        Wanted::ReferenceIdentifier { system, value } => {
            let mut parts: Vec<&[u8]> = vec![value.as_bytes()];
            if let Some(s) = system {
                parts.push(s.as_bytes());
            }
            under(exact(with(prefix, b'y', &parts)))
        }
        Wanted::Number { .. } => number_ids(
            storage,
            prefix,
            kind == ParameterType::Quantity,
            wanted,
            limit,
        ),
        Wanted::Uri { uri, mode } => match mode {
            UriMatch::Equal => under(exact(with(prefix, b'v', &[uri.as_bytes()]))),
            UriMatch::Below => under(with(prefix, b'v', &[uri.as_bytes()])),
            UriMatch::Above => ids_under(storage, &with(prefix, b'v', &[]), limit, |value, _| {
                !value.is_empty() && uri.as_bytes().starts_with(value)
            }),
        },
        // Resolved before the search runs (`resolve_chains`).
        Wanted::Chained(_) | Wanted::Has(_) => Ok(Some(BTreeSet::new())),
        Wanted::Missing(missing) => {
            if !*missing {
                return ids_under(storage, prefix, limit, any);
            }
            let Some(with_value) = ids_under(storage, prefix, usize::MAX, any)? else {
                return Ok(None);
            };
            let all = all_ids(storage, resource_type)?;
            let rest: BTreeSet<String> = all.difference(&with_value).cloned().collect();
            Ok((rest.len() <= limit).then_some(rest))
        }
    }
}

/// Key bounds within the records under `tag_prefix` whose 8-byte value lies in
/// `[from, to]` (`None`: open).
fn eight_byte_bounds(
    tag_prefix: &[u8],
    from: Option<[u8; 8]>,
    to: Option<[u8; 8]>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let at = |bytes: [u8; 8]| [tag_prefix, &bytes].concat();
    let start = from.map_or(Bound::Unbounded, |f| Bound::Included(at(f)));
    let end = match to.and_then(|t| prefix_end(&at(t))) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    (start, end)
}

/// Date search: the records by start (`d`, payload the end) or by end (`e`, payload the
/// start), whichever bounds the scan, each decided by [`Prefix::compares_ranges`] for the
/// resource's range `[l, h]` and the search range `[a, b]`.
fn date_ids(
    storage: &Storage,
    prefix: &[u8],
    search: Prefix,
    a: i64,
    b: i64,
    limit: usize,
) -> Result<Found, StorageError> {
    let (a, b) = if search == Prefix::Ap {
        query::approximate_range(a, b, crate::fhir::service::now_ms() as i64)
    } else {
        (a, b)
    };
    let s = |t: i64| Some(sortable_i64(t));
    // (by end?, lowest, highest) of the indexed bound that a match can have.
    let (by_end, from, to) = match search {
        // l >= a and l <= b (as h <= b).
        Prefix::Eq => (false, s(a), s(b)),
        Prefix::Ne => (false, None, None),
        // h > b.
        Prefix::Gt => (true, s(b.saturating_add(1)), None),
        // l < a.
        Prefix::Lt => (false, None, s(a.saturating_sub(1))),
        // h >= a in every case.
        Prefix::Ge => (true, s(a), None),
        // l <= b in every case.
        Prefix::Le => (false, None, s(b)),
        // l > b.
        Prefix::Sa => (false, s(b.saturating_add(1)), None),
        // h < a.
        Prefix::Eb => (true, None, s(a.saturating_sub(1))),
        // l <= b.
        Prefix::Ap => (false, None, s(b)),
    };
    let tag_prefix = with(prefix, if by_end { b'e' } else { b'd' }, &[]);
    let bounds = eight_byte_bounds(&tag_prefix, from, to);
    ids_in_range(storage, &tag_prefix, bounds, limit, |value, payload| {
        let (Some(indexed), Some(other)) = (eight(value), eight(payload)) else {
            return false;
        };
        let (indexed, other) = (from_sortable_i64(indexed), i64::from_be_bytes(other));
        let (l, h) = if by_end {
            (other, indexed)
        } else {
            (indexed, other)
        };
        search.compares_ranges(l, h, a, b)
    })
}

/// Number and quantity search: the records in the range the prefix allows, each decided by
/// [`Wanted::matches`] on the value (and for a quantity its system and code).
fn number_ids(
    storage: &Storage,
    prefix: &[u8],
    quantity: bool,
    wanted: &Wanted,
    limit: usize,
) -> Result<Found, StorageError> {
    let Wanted::Number {
        prefix: search,
        value,
        low,
        high,
        ..
    } = wanted
    else {
        return Ok(Some(BTreeSet::new()));
    };
    let tag = if quantity { b'q' } else { b'n' };
    let tag_prefix = with(prefix, tag, &[]);
    let s = |v: f64| Some(sortable_f64(v));
    let (from, to) = match search {
        Prefix::Eq => (s(*low), s(*high)),
        Prefix::Gt | Prefix::Sa | Prefix::Ge => (s(*value), None),
        Prefix::Lt | Prefix::Eb | Prefix::Le => (None, s(*value)),
        Prefix::Ne | Prefix::Ap => (None, None),
    };
    let bounds = eight_byte_bounds(&tag_prefix, from, to);
    let now = crate::fhir::service::now_ms() as i64;
    ids_in_range(storage, &tag_prefix, bounds, limit, |key_value, payload| {
        let Some(stored) = eight(key_value).map(from_sortable_f64) else {
            return false;
        };
        let value = if quantity {
            let mut parts = payload
                .split(|b| *b == 0)
                .map(|p| (!p.is_empty()).then(|| String::from_utf8_lossy(p).into_owned()));
            IndexValue::Quantity {
                value: stored,
                system: parts.next().flatten(),
                code: parts.next().flatten(),
                unit: parts.next().flatten(),
            }
        } else {
            IndexValue::Number(stored)
        };
        wanted.matches(&value, now)
    })
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn every_resource_type_has_summary_elements_and_the_table_is_sorted() {
        let rows = summary_elements::SUMMARY_ELEMENTS;
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
        let missing: Vec<&&str> = crate::fhir::resource::RESOURCE_TYPES
            .iter()
            .filter(|t| summary_of(t).0.is_empty())
            .collect();
        assert!(missing.is_empty(), "no summary elements for {missing:?}");
    }

    #[test]
    fn summary_true_keeps_the_summary_elements_and_choice_elements_by_their_type() {
        let query = Query {
            summary: Summary::True,
            ..query::parse("Observation", &[], false, "http://x/fhir").unwrap()
        };
        let observation = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "text": {"status": "generated", "div": "<div>x</div>"},
            "code": {"text": "pols"}, "effectiveDateTime": "2026-01-01",
            "valueQuantity": {"value": 72}, "note": [{"text": "rustig"}],
            "interpretation": [{"text": "normaal"}]});
        let cut = shaped(observation, &query);
        let mut keys: Vec<&str> = cut
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "code",
                "effectiveDateTime",
                "id",
                "meta",
                "resourceType",
                "status",
                "valueQuantity"
            ]
        );
        assert_eq!(cut["meta"]["tag"][0]["code"], "SUBSETTED");
        let patient = json!({"resourceType": "Patient", "id": "p1", "deceasedBoolean": false,
            "multipleBirthInteger": 2, "gender": "female", "contact": [{"gender": "male"}]});
        let query = Query {
            summary: Summary::True,
            ..query::parse("Patient", &[], false, "http://x/fhir").unwrap()
        };
        let cut = shaped(patient, &query);
        assert_eq!(cut["deceasedBoolean"], false);
        assert_eq!(cut["gender"], "female");
        assert!(cut.get("multipleBirthInteger").is_none() && cut.get("contact").is_none());
    }
}
