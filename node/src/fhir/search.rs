//! Search: `patient` / `subject`, `identifier` (`system|value`), `_id`, `_lastUpdated`
//! (with `eq`, `ne`, `gt`, `ge`, `lt`, `le` prefixes), `_count` and `_offset` paging with
//! `next` links. Unknown parameters are ignored and reported in an OperationOutcome entry,
//! as FHIR's lenient handling asks.

use super::outcome::operation_outcome;
use super::resource::{check_id, check_type, parse_date_range};
use super::service::FhirService;
use super::FhirError;
use serde_json::{json, Value};

/// Page size when the client gives none.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page.
pub const MAX_COUNT: usize = 1000;

#[derive(Debug)]
struct DateFilter {
    prefix: String,
    start: u64,
    end: u64,
}

impl DateFilter {
    fn matches(&self, t: u64) -> bool {
        match self.prefix.as_str() {
            "eq" => t >= self.start && t <= self.end,
            "ne" => t < self.start || t > self.end,
            "gt" | "sa" => t > self.end,
            "ge" => t >= self.start,
            "lt" | "eb" => t < self.start,
            "le" => t <= self.end,
            _ => false,
        }
    }
}

fn identifier_matches(resource: &Value, wanted: &str) -> bool {
    let (system, value) = match wanted.split_once('|') {
        Some((s, v)) => (Some(s), v),
        None => (None, wanted),
    };
    let Some(identifiers) = resource.get("identifier") else {
        return false;
    };
    let list: Vec<&Value> = match identifiers {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    list.iter().any(|i| {
        let sys = i.get("system").and_then(Value::as_str).unwrap_or("");
        let val = i.get("value").and_then(Value::as_str).unwrap_or("");
        let system_ok = match system {
            None => true,
            Some("") => sys.is_empty(),
            Some(s) => sys == s,
        };
        system_ok && (value.is_empty() || val == value)
    })
}

/// Runs a search on `resource_type` and returns a searchset Bundle.
pub fn search(
    service: &FhirService,
    resource_type: &str,
    params: &[(String, String)],
    base: &str,
) -> Result<Value, FhirError> {
    check_type(resource_type)?;
    let mut count = DEFAULT_COUNT;
    let mut offset = 0usize;
    let mut patient: Option<String> = None;
    let mut identifiers = Vec::new();
    let mut ids = Vec::new();
    let mut dates = Vec::new();
    let mut ignored = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| FhirError::invalid(format!("_count {value:?} is not a number")))?
                    .min(MAX_COUNT);
            }
            "_offset" => {
                offset = value.parse().map_err(|_| {
                    FhirError::invalid(format!("_offset {value:?} is not a number"))
                })?;
            }
            "patient" | "subject" => {
                let id = value.strip_prefix("Patient/").unwrap_or(value);
                check_id(id).map_err(|_| {
                    FhirError::invalid(format!("{name}={value:?} must name a Patient id"))
                })?;
                patient = Some(id.to_owned());
            }
            "identifier" => identifiers.push(value.clone()),
            "_id" => ids.extend(value.split(',').map(str::to_owned)),
            "_lastUpdated" => {
                let (prefix, rest) = if value.len() > 2
                    && value.as_bytes()[..2].iter().all(u8::is_ascii_lowercase)
                {
                    (value[..2].to_owned(), &value[2..])
                } else {
                    ("eq".to_owned(), value.as_str())
                };
                let (start, end) = parse_date_range(rest).ok_or_else(|| {
                    FhirError::invalid(format!("_lastUpdated {value:?} is not a FHIR date"))
                })?;
                if !["eq", "ne", "gt", "ge", "lt", "le", "sa", "eb"].contains(&prefix.as_str()) {
                    return Err(FhirError::invalid(format!(
                        "_lastUpdated prefix {prefix:?} is unknown"
                    )));
                }
                dates.push(DateFilter { prefix, start, end });
            }
            "_format" | "_pretty" => {}
            other => ignored.push(other.to_owned()),
        }
    }

    let matches = |updated: u64, resource: &Value| -> bool {
        identifiers.iter().all(|w| identifier_matches(resource, w))
            && (ids.is_empty()
                || resource
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| ids.iter().any(|w| w == id)))
            && dates.iter().all(|d| d.matches(updated))
    };

    let mut found: Vec<Value> = Vec::new();
    if let Some(pid) = &patient {
        let storage = service.storage();
        let mut candidates: Vec<(String, String)> = storage
            .compartment(pid)?
            .into_iter()
            .filter(|(t, _)| t == resource_type)
            .collect();
        if resource_type == "Patient" {
            candidates.push(("Patient".into(), pid.clone()));
        }
        for (t, id) in candidates {
            if let Some(record) = storage.current(&t, &id)? {
                if let (false, Some(resource)) = (record.deleted, record.resource) {
                    if matches(record.last_updated_ms, &resource) {
                        found.push(resource);
                    }
                }
            }
        }
    } else {
        for item in service.storage().scan_type(resource_type) {
            let (updated, resource) = item?;
            if matches(updated, &resource) {
                found.push(resource);
            }
        }
    }

    let total = found.len();
    let mut query: Vec<(String, String)> = params
        .iter()
        .filter(|(n, _)| n != "_offset" && !ignored.contains(n))
        .cloned()
        .collect();
    if !query.iter().any(|(n, _)| n == "_count") {
        query.push(("_count".into(), count.to_string()));
    }
    let link = |offset: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (n, v) in &query {
            q.append_pair(n, v);
        }
        q.append_pair("_offset", &offset.to_string());
        format!("{base}/{resource_type}?{}", q.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": link(offset)})];
    if offset + count < total && count > 0 {
        links.push(json!({"relation": "next", "url": link(offset + count)}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": link(offset.saturating_sub(count))}));
    }
    let mut entries: Vec<Value> = found
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|resource| {
            let id = resource
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            json!({
                "fullUrl": format!("{base}/{resource_type}/{id}"),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    if !ignored.is_empty() {
        entries.push(json!({
            "resource": operation_outcome(
                "warning",
                "not-supported",
                &format!("search parameters ignored: {}", ignored.join(", ")),
            ),
            "search": {"mode": "outcome"},
        }));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    }))
}
