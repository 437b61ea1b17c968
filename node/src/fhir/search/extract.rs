//! What a resource is found by: the index values of one search parameter, taken from the
//! items its expression selects, by the rules of the parameter's type (FHIR R4 §3.1.1.4 and
//! the type table of the search page).
//!
//! Sans-IO: values in, values out.

use super::fhirpath::{reference_target, Item};
use super::parameters::{ParameterType, SearchParameter};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// The most values one parameter takes from one resource; past it the rest are dropped
/// (a resource with more codings than this is not one a search would miss in practice).
pub const MAX_VALUES_PER_PARAMETER: usize = 256;
/// The longest text kept for a string or token value (longer is cut at a character).
pub const MAX_VALUE_BYTES: usize = 512;

/// One value a resource is found by.
#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub enum IndexValue {
    /// A token: `system|code` (a Coding, an Identifier, a ContactPoint) or a bare code.
    Token {
        /// The system, when the element has one.
        system: Option<String>,
        /// The code or value.
        code: String,
    },
    /// The text of a token (`CodeableConcept.text`, `Coding.display`, an Identifier's type
    /// text), normalised as strings are: for `:text`.
    TokenText(String),
    /// An Identifier's type with its value, for `:of-type`.
    IdentifierType {
        /// The type's coding system.
        system: String,
        /// The type's code.
        code: String,
        /// The Identifier's value.
        value: String,
    },
    /// A string, normalised (lower case, accents removed) and as written.
    String {
        /// For matching by prefix and `:contains`.
        normalized: String,
        /// For `:exact`.
        exact: String,
    },
    /// A date range, inclusive, in milliseconds since the Unix epoch.
    Date {
        /// The earliest instant the value can mean.
        low: i64,
        /// The latest.
        high: i64,
    },
    /// A reference.
    Reference {
        /// The target's resource type, when the reference says it.
        target_type: Option<String>,
        /// The target's id, for a literal reference.
        id: Option<String>,
        /// The reference as written (canonical URLs without their `|version`).
        url: String,
    },
    /// A reference's logical identifier, for `:identifier`.
    ReferenceIdentifier {
        /// The identifier's system.
        system: Option<String>,
        /// Its value.
        value: String,
    },
    /// A quantity (also Money: its currency is the code, system `urn:iso:std:iso:4217`).
    Quantity {
        /// The value.
        value: f64,
        /// The unit system.
        system: Option<String>,
        /// The unit code.
        code: Option<String>,
        /// The human unit.
        unit: Option<String>,
    },
    /// A URI.
    Uri(String),
    /// A number.
    Number(f64),
}

/// The index values of `parameter` in `resource`.
pub fn extract(parameter: &SearchParameter, resource: &Value) -> Vec<IndexValue> {
    let Some(expression) = &parameter.expression else {
        return Vec::new();
    };
    let items = expression.evaluate(resource);
    let mut out = Vec::new();
    for item in &items {
        let Item::Element { value, type_name } = item else {
            continue;
        };
        extract_into(parameter.kind, value, *type_name, &mut out);
        if out.len() >= MAX_VALUES_PER_PARAMETER {
            out.truncate(MAX_VALUES_PER_PARAMETER);
            break;
        }
    }
    let mut unique = Vec::with_capacity(out.len());
    for value in out {
        if !unique.contains(&value) {
            unique.push(value);
        }
    }
    unique
}

/// The index values of one element that a parameter of type `kind` selected.
pub fn extract_item(
    kind: ParameterType,
    value: &Value,
    type_name: Option<&str>,
) -> Vec<IndexValue> {
    let mut out = Vec::new();
    extract_into(kind, value, type_name, &mut out);
    out
}

fn extract_into(
    kind: ParameterType,
    value: &Value,
    type_name: Option<&str>,
    out: &mut Vec<IndexValue>,
) {
    match kind {
        ParameterType::Token => token(value, out),
        ParameterType::String => string(value, 0, out),
        ParameterType::Date => date(value, type_name, out),
        ParameterType::Reference => reference(value, out),
        ParameterType::Quantity => quantity(value, out),
        ParameterType::Uri => {
            if let Some(text) = value.as_str() {
                out.push(IndexValue::Uri(cut(text)));
            }
        }
        ParameterType::Number => {
            if let Some(n) = value.as_f64() {
                out.push(IndexValue::Number(n));
            }
        }
        ParameterType::Composite | ParameterType::Special => {}
    }
}

/// Text cut to [`MAX_VALUE_BYTES`] at a character boundary.
fn cut(text: &str) -> String {
    if text.len() <= MAX_VALUE_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A string as string search compares it: accents removed, lower case, inner whitespace
/// kept as single spaces.
pub fn normalize(text: &str) -> String {
    let folded: String = text
        .nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    let spaced = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    cut(&spaced)
}

fn text_of(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(cut)
}

fn coding(value: &Value, out: &mut Vec<IndexValue>) {
    if let Some(code) = text_of(value, "code") {
        out.push(IndexValue::Token {
            system: text_of(value, "system"),
            code,
        });
    }
    if let Some(display) = value.get("display").and_then(Value::as_str) {
        out.push(IndexValue::TokenText(normalize(display)));
    }
}

fn token(value: &Value, out: &mut Vec<IndexValue>) {
    match value {
        Value::String(code) if !code.is_empty() => out.push(IndexValue::Token {
            system: None,
            code: cut(code),
        }),
        Value::Bool(b) => out.push(IndexValue::Token {
            system: None,
            code: b.to_string(),
        }),
        Value::Number(n) => out.push(IndexValue::Token {
            system: None,
            code: n.to_string(),
        }),
        Value::Object(map) => {
            if map.contains_key("coding")
                || (map.contains_key("text") && !map.contains_key("value"))
            {
                // CodeableConcept.
                for c in map
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    coding(c, out);
                }
                if let Some(text) = map.get("text").and_then(Value::as_str) {
                    out.push(IndexValue::TokenText(normalize(text)));
                }
            } else if let Some(code_value) = text_of(value, "value") {
                // Identifier or ContactPoint.
                out.push(IndexValue::Token {
                    system: text_of(value, "system"),
                    code: code_value.clone(),
                });
                if let Some(kind) = map.get("type") {
                    for c in kind
                        .get("coding")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let (Some(system), Some(code)) =
                            (text_of(c, "system"), text_of(c, "code"))
                        {
                            out.push(IndexValue::IdentifierType {
                                system,
                                code,
                                value: code_value.clone(),
                            });
                        }
                    }
                    if let Some(text) = kind.get("text").and_then(Value::as_str) {
                        out.push(IndexValue::TokenText(normalize(text)));
                    }
                }
            } else {
                // Coding (or a Quantity's unit, as some token parameters point at it).
                coding(value, out);
            }
        }
        _ => {}
    }
}

/// The parts of a HumanName and an Address that name search matches; any other element
/// gives all its strings.
const NAME_PARTS: &[&str] = &[
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

fn string(value: &Value, depth: usize, out: &mut Vec<IndexValue>) {
    if depth > 4 || out.len() >= MAX_VALUES_PER_PARAMETER {
        return;
    }
    match value {
        Value::String(text) if !text.is_empty() => out.push(IndexValue::String {
            normalized: normalize(text),
            exact: cut(text),
        }),
        Value::Array(items) => {
            for item in items {
                string(item, depth + 1, out);
            }
        }
        Value::Object(map) => {
            let named = NAME_PARTS.iter().any(|k| map.contains_key(*k));
            for (key, inner) in map {
                let wanted = if named {
                    NAME_PARTS.contains(&key.as_str())
                } else {
                    key != "extension" && key != "system" && key != "url" && !key.starts_with('_')
                };
                if wanted {
                    string(inner, depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

fn date(value: &Value, type_name: Option<&str>, out: &mut Vec<IndexValue>) {
    match value {
        Value::String(text) => {
            if type_name == Some("string") {
                return;
            }
            if let Some((low, high)) = date_range(text) {
                out.push(IndexValue::Date { low, high });
            }
        }
        Value::Object(map) => {
            if map.contains_key("start") || map.contains_key("end") {
                // Period: an open end is unbounded.
                let low = map
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(date_range)
                    .map_or(i64::MIN, |(low, _)| low);
                let high = map
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(date_range)
                    .map_or(i64::MAX, |(_, high)| high);
                if low <= high {
                    out.push(IndexValue::Date { low, high });
                }
            } else if map.contains_key("event") || map.contains_key("repeat") {
                // Timing: its events and its bounds.
                for event in map
                    .get("event")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    date(event, None, out);
                }
                if let Some(bounds) = map.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                    date(bounds, None, out);
                }
            }
        }
        _ => {}
    }
}

/// The instants a FHIR date, dateTime or instant can mean, inclusive, in milliseconds since
/// the Unix epoch: `2013` is the whole year, `2013-05-02` the whole day (UTC, as the node
/// has no other zone for a date without one), a time to the second the whole second.
pub fn date_range(text: &str) -> Option<(i64, i64)> {
    use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let year = number(0..4)? as i32;
    let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let day_start = |date: Date| ms(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc());
    match bytes.len() {
        4 => {
            let start = Date::from_calendar_date(year, Month::January, 1).ok()?;
            let next = Date::from_calendar_date(year + 1, Month::January, 1).ok()?;
            return Some((day_start(start), day_start(next) - 1));
        }
        7 if bytes[4] == b'-' => {
            let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
            let start = Date::from_calendar_date(year, month, 1).ok()?;
            let next = if month == Month::December {
                Date::from_calendar_date(year + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(year, month.next(), 1).ok()?
            };
            return Some((day_start(start), day_start(next) - 1));
        }
        10 if bytes[4] == b'-' && bytes[7] == b'-' => {
            let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
            let day =
                Date::from_calendar_date(year, month, u8::try_from(number(8..10)?).ok()?).ok()?;
            return Some((day_start(day), day_start(day.next_day()?) - 1));
        }
        _ => {}
    }
    // A date with a time: YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm].
    if bytes.len() < 16 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' {
        return None;
    }
    let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let day = Date::from_calendar_date(year, month, u8::try_from(number(8..10)?).ok()?).ok()?;
    if bytes[13] != b':' {
        return None;
    }
    let hour = u8::try_from(number(11..13)?).ok()?;
    let minute = u8::try_from(number(14..16)?).ok()?;
    let mut at = 16;
    let mut second = 0u8;
    let mut nanos = 0u32;
    // How long the written precision lasts, in ms, less one.
    let mut span = 60_000 - 1;
    if bytes.get(at) == Some(&b':') {
        second = u8::try_from(number(at + 1..at + 3)?).ok()?;
        at += 3;
        span = 999;
        if bytes.get(at) == Some(&b'.') {
            let digits = bytes[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 || digits > 9 {
                return None;
            }
            let fraction = &text[at + 1..at + 1 + digits];
            let padded = format!("{fraction:0<9}");
            nanos = padded.parse().ok()?;
            span = match digits {
                1 => 99,
                2 => 9,
                _ => 0,
            };
            at += 1 + digits;
        }
    }
    let offset = match &text[at..] {
        "" => UtcOffset::UTC,
        "Z" => UtcOffset::UTC,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) => {
            let hours: i8 = zone[1..3].parse().ok()?;
            let minutes: i8 = zone[4..6].parse().ok()?;
            if &zone[3..4] != ":" {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?
        }
        _ => return None,
    };
    let time = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    let instant = PrimitiveDateTime::new(day, time).assume_offset(offset);
    let low = ms(instant);
    Some((low, low + span))
}

fn reference(value: &Value, out: &mut Vec<IndexValue>) {
    match value {
        Value::String(url) if !url.is_empty() => {
            // canonical or uri: without its |version.
            let bare = url.split('|').next().unwrap_or(url);
            let (target_type, id) = match reference_target(bare) {
                Some((t, i)) => (Some(t.to_owned()), Some(i.to_owned())),
                None => (None, None),
            };
            out.push(IndexValue::Reference {
                target_type,
                id,
                url: cut(bare),
            });
        }
        Value::Object(map) => {
            if let Some(url) = map.get("reference").and_then(Value::as_str) {
                let (target_type, id) = match reference_target(url) {
                    Some((t, i)) => (Some(t.to_owned()), Some(i.to_owned())),
                    None => (text_of(value, "type"), None),
                };
                out.push(IndexValue::Reference {
                    target_type,
                    id,
                    url: cut(url),
                });
            }
            if let Some(identifier) = map.get("identifier") {
                if let Some(v) = text_of(identifier, "value") {
                    out.push(IndexValue::ReferenceIdentifier {
                        system: text_of(identifier, "system"),
                        value: v,
                    });
                }
            }
        }
        _ => {}
    }
}

fn quantity(value: &Value, out: &mut Vec<IndexValue>) {
    let Some(number) = value.get("value").and_then(Value::as_f64) else {
        return;
    };
    if let Some(currency) = text_of(value, "currency") {
        out.push(IndexValue::Quantity {
            value: number,
            system: Some("urn:iso:std:iso:4217".into()),
            code: Some(currency),
            unit: None,
        });
        return;
    }
    out.push(IndexValue::Quantity {
        value: number,
        system: text_of(value, "system"),
        code: text_of(value, "code"),
        unit: text_of(value, "unit"),
    });
}

#[cfg(test)]
mod tests {
    use super::super::parameters::registry;
    use super::*;
    use serde_json::json;

    fn values(resource_type: &str, code: &str, resource: &Value) -> Vec<IndexValue> {
        extract(registry().get(resource_type, code).unwrap(), resource)
    }

    #[test]
    fn tokens_of_codeable_concepts_identifiers_codes_and_booleans() {
        let observation = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                "display": "Heart rate"}], "text": "Hartslag"}});
        assert_eq!(
            values("Observation", "status", &observation),
            vec![IndexValue::Token {
                system: None,
                code: "final".into()
            }]
        );
        assert_eq!(
            values("Observation", "code", &observation),
            vec![
                IndexValue::Token {
                    system: Some("http://loinc.org".into()),
                    code: "8867-4".into()
                },
                IndexValue::TokenText("heart rate".into()),
                IndexValue::TokenText("hartslag".into()),
            ]
        );
        let patient = json!({"resourceType": "Patient", "active": true, "identifier": [{
            "system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                "code": "NI"}]}}]});
        assert!(
            values("Patient", "identifier", &patient).contains(&IndexValue::IdentifierType {
                system: "http://terminology.hl7.org/CodeSystem/v2-0203".into(),
                code: "NI".into(),
                value: "999911120".into()
            })
        );
        assert_eq!(
            values("Patient", "active", &patient),
            vec![IndexValue::Token {
                system: None,
                code: "true".into()
            }]
        );
    }

    #[test]
    fn strings_are_folded_and_names_give_their_parts() {
        let patient = json!({"resourceType": "Patient", "name": [{"family": "Ébène",
            "given": ["Zoë"], "use": "official"}]});
        let found = values("Patient", "name", &patient);
        assert_eq!(
            found,
            vec![
                IndexValue::String {
                    normalized: "ebene".into(),
                    exact: "Ébène".into()
                },
                IndexValue::String {
                    normalized: "zoe".into(),
                    exact: "Zoë".into()
                },
            ]
        );
        assert_eq!(normalize("  Jan   de  Vries "), "jan de vries");
    }

    #[test]
    fn dates_are_ranges_of_their_precision() {
        let day = date_range("2013-05-02").unwrap();
        assert_eq!(day.1 - day.0, 86_400_000 - 1);
        let year = date_range("1950").unwrap();
        assert!(year.0 < 0, "before 1970 is negative, not clamped");
        let (low, high) = date_range("2013-05-02T10:00:00+02:00").unwrap();
        assert_eq!(low, date_range("2013-05-02T08:00:00Z").unwrap().0);
        assert_eq!(high - low, 999);
        assert_eq!(
            date_range("2013-05-02T08:00:00.5Z").unwrap().1
                - date_range("2013-05-02T08:00:00.5Z").unwrap().0,
            99
        );
        for bad in [
            "",
            "20",
            "2013-13",
            "2013-02-30",
            "2013-05-02T25:00:00Z",
            "yesterday",
        ] {
            assert!(date_range(bad).is_none(), "{bad}");
        }
        let encounter = json!({"resourceType": "Encounter",
            "period": {"start": "2020-01-01"}});
        let found = values("Encounter", "date", &encounter);
        assert_eq!(
            found,
            vec![IndexValue::Date {
                low: date_range("2020-01-01").unwrap().0,
                high: i64::MAX
            }]
        );
    }

    #[test]
    fn references_quantities_and_uris() {
        let observation = json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/p1", "identifier": {"system": "s", "value": "v"}},
            "valueQuantity": {"value": 72, "system": "http://unitsofmeasure.org",
                "code": "/min", "unit": "beats/minute"}});
        assert_eq!(
            values("Observation", "subject", &observation),
            vec![
                IndexValue::Reference {
                    target_type: Some("Patient".into()),
                    id: Some("p1".into()),
                    url: "Patient/p1".into()
                },
                IndexValue::ReferenceIdentifier {
                    system: Some("s".into()),
                    value: "v".into()
                }
            ]
        );
        assert_eq!(
            values("Observation", "value-quantity", &observation),
            vec![IndexValue::Quantity {
                value: 72.0,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("/min".into()),
                unit: Some("beats/minute".into())
            }]
        );
        let value_set = json!({"resourceType": "ValueSet", "url": "http://x/vs"});
        assert_eq!(
            values("ValueSet", "url", &value_set),
            vec![IndexValue::Uri("http://x/vs".into())]
        );
    }
}
