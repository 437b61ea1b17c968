//! The search parameter definitions on real data: every definition in the node's generated
//! table is evaluated on every resource of the corpus (`../shared/testdata`: the official R4
//! examples, the nl-core examples, the Synthea patients and the FHIR-Converter output) that it
//! applies to, and each element it selects must give index values by the rules of its type.
//!
//! Without the corpus these tests say so and pass, unless `ZORGMESH_REQUIRE_CORPUS=1`.

use serde_json::Value;
use std::collections::BTreeMap;
use zorgmesh_node::fhir::search::extract::{extract, IndexValue};
use zorgmesh_node::fhir::search::fhirpath::Item;
use zorgmesh_node::fhir::search::parameters::{registry, ParameterType};
use zorgmesh_tests::{corpus_dir, json_files};

/// Every resource of the corpus: files, Bundle entries (and the Bundles themselves) and
/// contained resources.
fn corpus_resources() -> Option<Vec<Value>> {
    let corpus = corpus_dir()?;
    let mut resources = Vec::new();
    for folder in [
        "fhir-r4/examples",
        "fhir-r4/nl-core/json",
        "fhir-r4/synthea",
        "fhir-r4/from-hl7v2",
    ] {
        for (_, value) in json_files(corpus.join(folder)) {
            collect(value, &mut resources);
        }
    }
    Some(resources)
}

/// `urn:uuid:` references inside a Bundle rewritten to the `Type/id` of the entry they name,
/// as a server's transaction does (the Synthea bundles reference by `urn:uuid:` only).
fn resolve_bundle_references(bundle: &mut Value) {
    let mut targets = std::collections::HashMap::new();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        if let (Some(full_url), Some(t), Some(id)) = (
            entry["fullUrl"].as_str(),
            entry["resource"]["resourceType"].as_str(),
            entry["resource"]["id"].as_str(),
        ) {
            targets.insert(full_url.to_owned(), format!("{t}/{id}"));
        }
    }
    fn rewrite(value: &mut Value, targets: &std::collections::HashMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if key == "reference" {
                        if let Some(target) = inner.as_str().and_then(|r| targets.get(r)) {
                            *inner = Value::String(target.clone());
                        }
                    } else {
                        rewrite(inner, targets);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| rewrite(i, targets)),
            _ => {}
        }
    }
    rewrite(bundle, &targets);
}

fn collect(mut value: Value, out: &mut Vec<Value>) {
    if value.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        resolve_bundle_references(&mut value);
        for entry in value
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(resource) = entry.get("resource") {
                collect(resource.clone(), out);
            }
        }
    }
    for contained in value
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(contained.clone());
    }
    out.push(value);
}

/// Why an element selected for a parameter may rightly give no value: the definitions point
/// some parameters at elements of several types, and only some of them fit the parameter's
/// type (`Condition.onset` for `onset-date` is also `onsetString` or `onsetAge`, which a
/// `(... as dateTime)` does not filter for a date parameter in every definition).
fn may_give_nothing(kind: ParameterType, value: &Value, type_name: Option<&str>) -> bool {
    match kind {
        // A date parameter over a string ("onsetString"), an Age, a Range or a Timing
        // without events.
        ParameterType::Date => {
            matches!(type_name, Some("string" | "Age" | "Range" | "Duration"))
                || value.get("repeat").is_some()
                || value.get("code").is_some()
        }
        // A reference parameter over a Reference that holds only a display, or over a
        // resource inside a Bundle (`Bundle.entry[0].resource`, for chaining only).
        ParameterType::Reference => {
            value.get("resourceType").is_some()
                || (value.is_object()
                    && value.get("reference").is_none()
                    && value.get("identifier").is_none())
        }
        // A token over a CodeableConcept or Coding with neither code nor text, or an empty one.
        ParameterType::Token => value.is_object(),
        // A quantity without a value (only a comparator or a unit).
        ParameterType::Quantity => value.get("value").is_none(),
        ParameterType::String => value.is_object() || value.is_array(),
        _ => false,
    }
}

#[test]
fn every_definition_evaluates_on_the_corpus_and_its_elements_give_index_values() {
    let Some(resources) = corpus_resources() else {
        return;
    };
    assert!(resources.len() > 9_000, "{} resources", resources.len());
    let registry = registry();
    // Per definition: elements selected, values extracted, elements that gave none.
    let mut hits: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut silent: Vec<String> = Vec::new();
    let mut evaluated = 0usize;
    for resource in &resources {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        let Some(parameters) = registry.of_type(resource_type) else {
            panic!("{resource_type} is not an R4 resource type the registry knows");
        };
        for parameter in parameters.values() {
            let Some(expression) = &parameter.expression else {
                continue;
            };
            if !parameter.kind.is_indexed() {
                continue;
            }
            evaluated += 1;
            let items = expression.evaluate(resource);
            let values = extract(parameter, resource);
            let entry = hits.entry(parameter.id).or_default();
            entry.0 += items.len();
            entry.1 += values.len();
            for item in &items {
                let Item::Element { value, type_name } = item else {
                    continue;
                };
                let alone = zorgmesh_node::fhir::search::extract::extract_item(
                    parameter.kind,
                    value,
                    *type_name,
                );
                if alone.is_empty() && !may_give_nothing(parameter.kind, value, *type_name) {
                    silent.push(format!(
                        "{resource_type}/{} {} ({}): {}",
                        resource["id"].as_str().unwrap_or("?"),
                        parameter.id,
                        parameter.kind.name(),
                        value.to_string().chars().take(200).collect::<String>()
                    ));
                }
            }
            for value in &values {
                check_value(parameter.id, value);
            }
        }
    }
    let with_values = hits.values().filter(|(_, v)| *v > 0).count();
    eprintln!(
        "{} resources, {evaluated} evaluations, {} definitions applied, {with_values} gave index values",
        resources.len(),
        hits.len()
    );
    silent.sort();
    silent.dedup();
    assert!(
        silent.is_empty(),
        "{} selected elements gave no index value, e.g.:\n{}",
        silent.len(),
        silent
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The corpus exercises most of the definitions: if an evaluator change stops a
    // definition from matching, this number drops.
    assert!(
        with_values >= 600,
        "only {with_values} definitions gave index values on the corpus"
    );
    for (id, wanted) in [
        ("clinical-patient", 8_000),
        ("clinical-code", 10_000),
        ("Observation-value-quantity", 3_500),
        ("clinical-date", 6_500),
        ("individual-birthdate", 90),
        ("individual-family", 300),
        ("Patient-identifier", 600),
        ("Resource-id", 12_000),
    ] {
        let (_, values) = hits.get(id).copied().unwrap_or_default();
        eprintln!("{id}: {values} index values");
        assert!(
            values >= wanted,
            "{id}: {values} values, wanted {wanted} or more"
        );
    }
}

fn check_value(id: &str, value: &IndexValue) {
    match value {
        IndexValue::Date { low, high } => assert!(low <= high, "{id}: {value:?}"),
        IndexValue::Token { code, .. } => assert!(!code.is_empty(), "{id}: {value:?}"),
        IndexValue::String { normalized, .. } => {
            assert_eq!(
                normalized,
                &normalized.to_lowercase(),
                "{id}: {value:?} is not folded"
            );
        }
        IndexValue::Quantity { value: v, .. } | IndexValue::Number(v) => {
            assert!(v.is_finite(), "{id}: {value:?}")
        }
        _ => {}
    }
}

/// A search value as the client writes it: `,`, `|`, `$` and `\` escaped.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ',' | '|' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn date_text(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

/// A search parameter (name with modifier, value) that a resource with `value` in `code`
/// should or should not match, chosen at random among the forms of the value's type.
fn generated_parameter(
    code: &str,
    value: &IndexValue,
    rng: &mut impl rand::Rng,
) -> Option<(String, String)> {
    const PREFIXES: [&str; 9] = ["", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let prefix = PREFIXES[rng.gen_range(0..PREFIXES.len())];
    let cut = |text: &str, rng: &mut dyn rand::RngCore| -> String {
        let chars: Vec<char> = text.chars().collect();
        let n = (rand::Rng::gen_range(rng, 1..=chars.len().max(1))).min(chars.len());
        chars[..n].iter().collect()
    };
    Some(match value {
        IndexValue::Token { system, code: c } => match (rng.gen_range(0..4), system) {
            (0, Some(system)) => (code.into(), format!("{}|{}", escaped(system), escaped(c))),
            (1, Some(system)) => (code.into(), format!("{}|", escaped(system))),
            (2, _) => (format!("{code}:not"), escaped(c)),
            _ => (code.into(), escaped(c)),
        },
        IndexValue::TokenText(text) if !text.is_empty() => {
            (format!("{code}:text"), escaped(&cut(text, rng)))
        }
        IndexValue::String { normalized, exact } if !normalized.is_empty() => {
            match rng.gen_range(0..3) {
                0 => (format!("{code}:exact"), escaped(exact)),
                1 => {
                    let chars: Vec<char> = normalized.chars().collect();
                    let from = rng.gen_range(0..chars.len());
                    let to = rng.gen_range(from + 1..=chars.len());
                    let middle: String = chars[from..to].iter().collect();
                    (format!("{code}:contains"), escaped(&middle))
                }
                _ => (code.into(), escaped(&cut(normalized, rng))),
            }
        }
        IndexValue::Date { low, high } => {
            let at = if rng.gen_bool(0.5) { *low } else { *high };
            let at = if at == i64::MIN || at == i64::MAX {
                0
            } else {
                at
            };
            (code.into(), format!("{prefix}{}", date_text(at)?))
        }
        IndexValue::Reference {
            target_type: Some(t),
            id: Some(id),
            ..
        } => {
            if rng.gen_bool(0.5) {
                (code.into(), format!("{t}/{id}"))
            } else {
                (code.into(), id.clone())
            }
        }
        IndexValue::ReferenceIdentifier {
            system: Some(system),
            value,
        } => (
            format!("{code}:identifier"),
            format!("{}|{}", escaped(system), escaped(value)),
        ),
        IndexValue::Quantity {
            value,
            system,
            code: c,
            ..
        } => match (rng.gen_bool(0.5), system, c) {
            (true, Some(system), Some(c)) => (
                code.into(),
                format!("{prefix}{value}|{}|{}", escaped(system), escaped(c)),
            ),
            _ => (code.into(), format!("{prefix}{value}")),
        },
        IndexValue::Number(n) => (code.into(), format!("{prefix}{n}")),
        IndexValue::Uri(uri) if !uri.is_empty() => {
            if rng.gen_bool(0.5) {
                (code.into(), escaped(uri))
            } else {
                (format!("{code}:below"), escaped(&cut(uri, rng)))
            }
        }
        _ => return None,
    })
}

/// The index against the oracle: the corpus in a store, and queries generated from its own
/// values (every parameter type, modifiers and prefixes, one or two parameters each),
/// answered from the index and by a full scan that extracts and matches every resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_search_agrees_with_a_full_scan_on_generated_queries() {
    use rand::{Rng, SeedableRng};
    use zorgmesh_node::fhir::search::{matching_ids, query, scan_matching_ids};
    use zorgmesh_node::storage::Storage;
    let Some(resources) = corpus_resources() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let mut stored: Vec<(String, String, Value)> = Vec::new();
    for resource in resources {
        let (Some(t), Some(id)) = (
            resource["resourceType"].as_str().map(str::to_owned),
            resource["id"].as_str().map(str::to_owned),
        ) else {
            continue;
        };
        if zorgmesh_node::fhir::resource::check_id(&id).is_err() {
            continue;
        }
        stored.push((t, id, resource));
    }
    for chunk in stored.chunks(500) {
        storage
            .write(1_700_000_000_000, |tx| {
                for (t, id, resource) in chunk {
                    tx.put(t, id, resource.clone())?;
                }
                Ok::<_, zorgmesh_node::storage::StorageError>(())
            })
            .await
            .unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut checked = 0;
    let mut nonempty = 0;
    let mut disagreements = Vec::new();
    let mut attempts = 0;
    while checked < 500 && attempts < 20_000 {
        attempts += 1;
        let (t, id, _) = &stored[rng.gen_range(0..stored.len())];
        let Some(values) = storage.index_values(t, id).unwrap() else {
            continue;
        };
        if values.is_empty() {
            continue;
        }
        let clauses = if rng.gen_bool(0.3) { 2 } else { 1 };
        let mut params = Vec::new();
        for _ in 0..clauses {
            let (code, value) = &values[rng.gen_range(0..values.len())];
            if let Some(param) = generated_parameter(code, value, &mut rng) {
                params.push(param);
            }
        }
        // Patient-scoped, as clinical apps search: the resource's own patient, or another.
        let patient = values.iter().find_map(|(code, value)| match value {
            IndexValue::Reference { id: Some(id), .. } if code == "patient" => Some(id.clone()),
            _ => None,
        });
        if let (Some(patient), true) = (patient, rng.gen_bool(0.5)) {
            params.push(("patient".into(), patient));
        }
        if rng.gen_bool(0.05) {
            let (code, _) = &values[rng.gen_range(0..values.len())];
            params.push((format!("{code}:missing"), rng.gen_bool(0.5).to_string()));
        }
        if params.is_empty() {
            continue;
        }
        let Ok(query) = query::parse(t, &params, true, "http://node/fhir") else {
            continue;
        };
        let from_index = matching_ids(&storage, t, &query).unwrap();
        let from_scan = scan_matching_ids(&storage, t, &query).unwrap();
        checked += 1;
        if !from_index.is_empty() {
            nonempty += 1;
        }
        if from_index != from_scan {
            disagreements.push(format!(
                "{t}?{params:?}: index {} ids, scan {} ids; only index: {:?}; only scan: {:?}",
                from_index.len(),
                from_scan.len(),
                from_index
                    .difference(&from_scan)
                    .take(3)
                    .collect::<Vec<_>>(),
                from_scan
                    .difference(&from_index)
                    .take(3)
                    .collect::<Vec<_>>()
            ));
        }
    }
    eprintln!(
        "{} resources stored, {checked} generated queries, {nonempty} with matches",
        stored.len()
    );
    assert!(checked >= 500, "only {checked} queries could be generated");
    assert!(nonempty >= 250, "only {nonempty} queries found anything");
    assert!(
        disagreements.is_empty(),
        "{} of {checked} queries differ:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
