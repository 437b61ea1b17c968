//! The search index, kept in the FHIR tree beside the resources it indexes and written in
//! the same atomic batch as each version (so a search never sees a resource without its
//! entries, or entries of a version that was not written).
//!
//! One record per value a resource is found by, all under `i\0`:
//!
//! ```text
//! i\0 <type> \0 <parameter code> \0 <tag> <value> \0 <id>   →  payload
//! ```
//!
//! | tag | for | value | payload |
//! |---|---|---|---|
//! | `t` | token | `code \0 system` | — |
//! | `x` | token text (`:text`) | normalised text | — |
//! | `o` | identifier type (`:of-type`) | `type system \0 type code \0 value` | — |
//! | `s` | string | normalised text | the text as written |
//! | `d` | date, by its start | start (8 bytes) | end (8 bytes) |
//! | `e` | date, by its end | end (8 bytes) | start (8 bytes) |
//! | `r` | literal reference | `target id \0 target type` | — |
//! | `u` | reference by URL (absolute, canonical, `urn:`) | URL | — |
//! | `y` | reference identifier (`:identifier`) | `value \0 system` | — |
//! | `q` | quantity | value (8 bytes) | `system \0 code \0 unit` |
//! | `n` | number | value (8 bytes) | — |
//! | `v` | uri | URI | — |
//!
//! A resource that belongs to patients (the ids its `patient` parameter points at) has each
//! entry once more in each patient's partition, `g\0 <patient id> \0 <type> \0 <code> \0
//! <tag> <value> \0 <id>`: a patient-scoped search reads only that patient's entries.
//!
//! Numbers and instants are 8 bytes big-endian that sort as the values do. An id never holds
//! `\0`, so the id is what follows a key's last `\0`. Values holding `\0` are not indexed.
//!
//! Beside them, one record per resource holds all its index values (`j\0 <type> \0 <id>`,
//! bincode of [`ResourceValues`]): a search that has narrowed its candidates by one
//! parameter checks the others with one read per candidate, and a new version replaces the
//! old version's records without evaluating the old version again.
//!
//! `m\0search-index` holds the [`INDEX_VERSION`] the entries were made with; a store whose
//! entries are of another version (or none, written before the index) is re-indexed when
//! it opens.

use crate::fhir::search::extract::{extract, IndexValue};
use crate::fhir::search::parameters::registry;
use serde_json::Value;

/// The version of the index's layout and extraction rules: entries of another version are
/// rebuilt when the store opens.
pub const INDEX_VERSION: u32 = 3;

/// The record that holds the version of the entries.
pub const VERSION_KEY: &[u8] = b"m\0search-index";

/// Where every index record's key starts.
pub const INDEX_PREFIX: &[u8] = b"i\0";

/// The key prefix of one parameter's entries of one resource type.
pub fn parameter_prefix(resource_type: &str, code: &str) -> Vec<u8> {
    [
        INDEX_PREFIX,
        resource_type.as_bytes(),
        b"\0",
        code.as_bytes(),
        b"\0",
    ]
    .concat()
}

/// Big-endian bytes of `value` that sort as signed integers do.
pub fn sortable_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`sortable_i64`].
pub fn from_sortable_i64(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Big-endian bytes of `value` that sort as the numbers do (finite values).
pub fn sortable_f64(value: f64) -> [u8; 8] {
    let bits = value.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    };
    ordered.to_be_bytes()
}

/// The inverse of [`sortable_f64`].
pub fn from_sortable_f64(bytes: [u8; 8]) -> f64 {
    let ordered = u64::from_be_bytes(bytes);
    let bits = if ordered >> 63 == 1 {
        ordered ^ (1 << 63)
    } else {
        !ordered
    };
    f64::from_bits(bits)
}

/// The id a key ends in.
pub fn id_of_key(key: &[u8]) -> Option<&str> {
    let at = key.iter().rposition(|b| *b == 0)?;
    std::str::from_utf8(&key[at + 1..]).ok()
}

/// A resource's index values: (parameter code, value), in parameter order.
pub type ResourceValues = Vec<(String, IndexValue)>;

/// The most bytes a values record may decode from.
pub const MAX_VALUES_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// The key of a resource's values record.
pub fn values_key(resource_type: &str, id: &str) -> Vec<u8> {
    [b"j\0", resource_type.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// Where every values record's key starts.
pub const VALUES_PREFIX: &[u8] = b"j\0";

/// The index values of `resource` (of `resource_type`).
pub fn values_of(resource_type: &str, resource: &Value) -> ResourceValues {
    let Some(parameters) = registry().of_type(resource_type) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for parameter in parameters.values() {
        if !parameter.kind.is_indexed() {
            continue;
        }
        for value in extract(parameter, resource) {
            out.push((parameter.code.to_owned(), value));
        }
    }
    out
}

/// Encodes a values record.
pub fn encode_values(values: &ResourceValues) -> Vec<u8> {
    zorgmesh_protocol::codec::encode(values)
}

/// Decodes a values record.
pub fn decode_values(bytes: &[u8]) -> Result<ResourceValues, String> {
    zorgmesh_protocol::codec::decode(bytes, MAX_VALUES_RECORD_BYTES).map_err(|e| e.to_string())
}

/// The values of one parameter in a values record.
pub fn values_for<'a>(
    values: &'a ResourceValues,
    code: &'a str,
) -> impl Iterator<Item = &'a IndexValue> + 'a {
    values
        .iter()
        .filter(move |(c, _)| c == code)
        .map(|(_, v)| v)
}

/// The patients a resource belongs to for search: the ids its `patient` parameter points
/// at (that parameter only ever points at Patients).
pub fn patients_of(values: &ResourceValues) -> Vec<&str> {
    let mut patients: Vec<&str> = values_for(values, "patient")
        .filter_map(|value| match value {
            IndexValue::Reference { id: Some(id), .. } => Some(id.as_str()),
            _ => None,
        })
        .filter(|id| !id.as_bytes().contains(&0))
        .collect();
    patients.sort_unstable();
    patients.dedup();
    patients
}

/// Where every patient partition record's key starts.
pub const PATIENT_PREFIX: &[u8] = b"g\0";

/// The key prefix of one parameter's entries of one resource type within one patient's
/// partition.
pub fn patient_parameter_prefix(patient: &str, resource_type: &str, code: &str) -> Vec<u8> {
    [
        PATIENT_PREFIX,
        patient.as_bytes(),
        b"\0",
        resource_type.as_bytes(),
        b"\0",
        code.as_bytes(),
        b"\0",
    ]
    .concat()
}

/// [`patient_parameter_prefix`] for one patient, as a function of type and code.
pub fn patient_parameter_prefix_of(patient: &str) -> impl Fn(&str, &str) -> Vec<u8> + '_ {
    move |resource_type, code| patient_parameter_prefix(patient, resource_type, code)
}

/// Every index record (key → payload) of a resource with these values: the type-wide
/// entries, and the same entries again in the partition of each patient the resource
/// belongs to (its `patient` parameter's own entries aside).
pub fn entries_of(
    resource_type: &str,
    id: &str,
    values: &ResourceValues,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    if id.as_bytes().contains(&0) {
        return Vec::new();
    }
    let patients = patients_of(values);
    let mut out = Vec::new();
    let mut push = |prefix: &[u8], tag: u8, value_bytes: &[u8], payload: &[u8]| {
        let mut key = Vec::with_capacity(prefix.len() + value_bytes.len() + id.len() + 2);
        key.extend_from_slice(prefix);
        key.push(tag);
        key.extend_from_slice(value_bytes);
        key.push(0);
        key.extend_from_slice(id.as_bytes());
        out.push((key, payload.to_vec()));
    };
    for (code, value) in values {
        let encoded = encode(value);
        let prefix = parameter_prefix(resource_type, code);
        for (tag, value_bytes, payload) in &encoded {
            push(&prefix, *tag, value_bytes, payload);
        }
        if code == "patient" {
            continue;
        }
        for patient in &patients {
            let prefix = patient_parameter_prefix(patient, resource_type, code);
            for (tag, value_bytes, payload) in &encoded {
                push(&prefix, *tag, value_bytes, payload);
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Every index record of `resource` (of `resource_type`, id `id`), key → payload.
pub fn entries(resource_type: &str, id: &str, resource: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries_of(resource_type, id, &values_of(resource_type, resource))
}

/// Text parts joined by `\0`; `None` if a part holds `\0` itself.
fn joined(parts: &[&str]) -> Option<Vec<u8>> {
    if parts.iter().any(|p| p.as_bytes().contains(&0)) {
        return None;
    }
    Some(parts.join("\0").into_bytes())
}

/// The records (tag, value bytes, payload) of one index value.
fn encode(value: &IndexValue) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut text = |tag: u8, parts: &[&str], payload: Vec<u8>| {
        if let Some(bytes) = joined(parts) {
            out.push((tag, bytes, payload));
        }
    };
    match value {
        IndexValue::Token { system, code } => {
            text(b't', &[code, system.as_deref().unwrap_or("")], Vec::new())
        }
        IndexValue::TokenText(t) => text(b'x', &[t], Vec::new()),
        IndexValue::IdentifierType {
            system,
            code,
            value,
        } => text(b'o', &[system, code, value], Vec::new()),
        IndexValue::String { normalized, exact } => {
            text(b's', &[normalized], exact.as_bytes().to_vec())
        }
        IndexValue::Reference {
            target_type,
            id,
            url,
        } => {
            if let (Some(t), Some(i)) = (target_type, id) {
                text(b'r', &[i, t], Vec::new());
            }
            let literal = target_type.is_some() && id.is_some() && !url.contains(':');
            if !literal {
                text(b'u', &[url], Vec::new());
            }
        }
        IndexValue::ReferenceIdentifier { system, value } => {
            text(b'y', &[value, system.as_deref().unwrap_or("")], Vec::new())
        }
        IndexValue::Uri(uri) => text(b'v', &[uri], Vec::new()),
        IndexValue::Date { low, high } => {
            out.push((
                b'd',
                sortable_i64(*low).to_vec(),
                high.to_be_bytes().to_vec(),
            ));
            out.push((
                b'e',
                sortable_i64(*high).to_vec(),
                low.to_be_bytes().to_vec(),
            ));
        }
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => {
            if let Some(payload) = joined(&[
                system.as_deref().unwrap_or(""),
                code.as_deref().unwrap_or(""),
                unit.as_deref().unwrap_or(""),
            ]) {
                out.push((b'q', sortable_f64(*value).to_vec(), payload));
            }
        }
        IndexValue::Number(n) => out.push((b'n', sortable_f64(*n).to_vec(), Vec::new())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sortable_numbers_sort_as_numbers_and_round_trip() {
        let ints = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for w in ints.windows(2) {
            assert!(sortable_i64(w[0]) < sortable_i64(w[1]));
        }
        for i in ints {
            assert_eq!(from_sortable_i64(sortable_i64(i)), i);
        }
        let floats = [f64::MIN, -2.5, -0.001, 0.0, 0.001, 7.0, 1e300];
        for w in floats.windows(2) {
            assert!(sortable_f64(w[0]) < sortable_f64(w[1]), "{w:?}");
        }
        for f in floats {
            assert_eq!(from_sortable_f64(sortable_f64(f)), f);
        }
    }

    #[test]
    fn an_observation_is_indexed_by_its_parameters() {
        let observation = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2020-01-02",
            "valueQuantity": {"value": 72, "system": "http://unitsofmeasure.org", "code": "/min"}});
        let keys: Vec<String> = entries("Observation", "o1", &observation)
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).replace('\0', "|"))
            .collect();
        for wanted in [
            "i|Observation|status|tfinal||o1",
            "i|Observation|code|t8867-4|http://loinc.org|o1",
            "i|Observation|patient|rp1|Patient|o1",
            "i|Observation|subject|rp1|Patient|o1",
            "i|Observation|_id|to1||o1",
        ] {
            assert!(
                keys.iter().any(|k| k == wanted),
                "{wanted} not in {keys:#?}"
            );
        }
        assert!(keys.iter().any(|k| k.starts_with("i|Observation|date|d")));
        assert!(keys
            .iter()
            .any(|k| k.starts_with("i|Observation|value-quantity|q")));
        for (key, _) in entries("Observation", "o1", &observation) {
            assert_eq!(id_of_key(&key), Some("o1"));
        }
    }
}
