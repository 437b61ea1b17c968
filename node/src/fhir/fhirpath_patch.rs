//! FHIRPath Patch (FHIR R4 §3.1.0.10, "fhirpatch"): a `Parameters` resource whose
//! `operation` parameters each add, insert, delete, replace or move content at a FHIRPath.
//!
//! Paths are evaluated by the node's FHIRPath evaluator ([`super::search::fhirpath`]); each
//! element it yields is found in the resource by identity, which gives the JSON location to
//! change. Sans-IO and bounded: at most [`MAX_OPERATIONS`] operations, each path parsed
//! under the evaluator's limits. The caller applies a patch to a copy and keeps it only if
//! every operation applied and the result is still a valid resource.

use super::search::fhirpath::Expression;
use serde_json::{Map, Value};

/// The most operations one patch may hold.
pub const MAX_OPERATIONS: usize = 1000;
/// The deepest a value built from nested parts may be.
const MAX_PART_DEPTH: usize = 16;

/// A parsed FHIRPath Patch.
#[derive(Clone, Debug, PartialEq)]
pub struct FhirpathPatch {
    operations: Vec<Operation>,
}

#[derive(Clone, Debug, PartialEq)]
enum Operation {
    Add {
        path: String,
        name: String,
        value: Value,
    },
    Insert {
        path: String,
        index: usize,
        value: Value,
    },
    Delete {
        path: String,
    },
    Replace {
        path: String,
        value: Value,
    },
    Move {
        path: String,
        source: usize,
        destination: usize,
    },
}

/// One step of a JSON location.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Whether a body is a FHIRPath Patch (a Parameters resource).
pub fn is_fhirpath_patch(body: &Value) -> bool {
    body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
}

impl FhirpathPatch {
    /// Reads the `operation` parameters of a Parameters resource.
    pub fn parse(parameters: &Value) -> Result<Self, String> {
        if !is_fhirpath_patch(parameters) {
            return Err("a FHIRPath Patch is a Parameters resource".into());
        }
        let list = parameters
            .get("parameter")
            .and_then(Value::as_array)
            .ok_or("the Parameters has no parameter")?;
        if list.is_empty() {
            return Err("the Parameters has no operation".into());
        }
        if list.len() > MAX_OPERATIONS {
            return Err(format!("at most {MAX_OPERATIONS} operations"));
        }
        let mut operations = Vec::with_capacity(list.len());
        for (i, parameter) in list.iter().enumerate() {
            let at = |message: String| format!("parameter[{i}]: {message}");
            if parameter.get("name").and_then(Value::as_str) != Some("operation") {
                return Err(at(
                    "every parameter of a FHIRPath Patch is named operation".into()
                ));
            }
            operations.push(Operation::parse(parameter).map_err(at)?);
        }
        Ok(Self { operations })
    }

    /// Applies every operation in order to `resource`; on an error `resource` may be half
    /// changed (apply to a copy).
    pub fn apply(&self, resource: &mut Value) -> Result<(), String> {
        for (i, operation) in self.operations.iter().enumerate() {
            operation
                .apply(resource)
                .map_err(|e| format!("operation {i} ({}): {e}", operation.kind()))?;
        }
        Ok(())
    }
}

fn part<'a>(parts: &'a [Value], name: &str) -> Option<&'a Value> {
    parts
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

/// The `value[x]` of a parameter or part, or the object its nested parts make.
fn value_of(part: &Value, depth: usize) -> Result<Value, String> {
    if depth > MAX_PART_DEPTH {
        return Err(format!("parts nested deeper than {MAX_PART_DEPTH}"));
    }
    let object = part.as_object().ok_or("a part is not an object")?;
    let values: Vec<(&String, &Value)> = object
        .iter()
        .filter(|(k, _)| k.starts_with("value") && k.len() > 5)
        .collect();
    match (
        values.as_slice(),
        object.get("part"),
        object.get("resource"),
    ) {
        ([(_, value)], None, None) => Ok((*value).clone()),
        ([], None, Some(resource)) => Ok(resource.clone()),
        ([], Some(Value::Array(parts)), None) => {
            let mut built: Map<String, Value> = Map::new();
            for part in parts {
                let name = part
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("a part has no name")?
                    .to_owned();
                let value = value_of(part, depth + 1)?;
                match built.get_mut(&name) {
                    None => {
                        built.insert(name, value);
                    }
                    Some(Value::Array(items)) => items.push(value),
                    Some(single) => {
                        let first = single.take();
                        *single = Value::Array(vec![first, value]);
                    }
                }
            }
            Ok(Value::Object(built))
        }
        _ => Err("a value is one value[x], or parts".into()),
    }
}

impl Operation {
    fn parse(parameter: &Value) -> Result<Self, String> {
        let parts = parameter
            .get("part")
            .and_then(Value::as_array)
            .ok_or("an operation has parts")?;
        let text = |name: &str| -> Result<String, String> {
            part(parts, name)
                .and_then(|p| {
                    ["valueString", "valueCode"]
                        .iter()
                        .find_map(|k| p.get(*k).and_then(Value::as_str))
                })
                .map(str::to_owned)
                .ok_or_else(|| format!("needs a {name}"))
        };
        let index = |name: &str| -> Result<usize, String> {
            part(parts, name)
                .and_then(|p| p.get("valueInteger").and_then(Value::as_u64))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("needs {name} as a valueInteger of 0 or more"))
        };
        let value = || -> Result<Value, String> {
            value_of(part(parts, "value").ok_or("needs a value")?, 0)
        };
        let path = text("path")?;
        Ok(match text("type")?.as_str() {
            "add" => Operation::Add {
                path,
                name: text("name")?,
                value: value()?,
            },
            "insert" => Operation::Insert {
                path,
                index: index("index")?,
                value: value()?,
            },
            "delete" => Operation::Delete { path },
            "replace" => Operation::Replace {
                path,
                value: value()?,
            },
            "move" => Operation::Move {
                path,
                source: index("source")?,
                destination: index("destination")?,
            },
            other => {
                return Err(format!(
                    "type {other:?} is not add, insert, delete, replace or move"
                ))
            }
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Operation::Add { .. } => "add",
            Operation::Insert { .. } => "insert",
            Operation::Delete { .. } => "delete",
            Operation::Replace { .. } => "replace",
            Operation::Move { .. } => "move",
        }
    }

    fn apply(&self, resource: &mut Value) -> Result<(), String> {
        match self {
            Operation::Replace { path, value } => {
                let location = single(path, locate(path, resource)?)?;
                *at_mut(resource, &location)? = value.clone();
            }
            Operation::Delete { path } => match locate(path, resource)?.as_slice() {
                [] => {}
                [location] => remove(resource, location)?,
                many => {
                    return Err(format!(
                        "{path} finds {} elements; delete takes one",
                        many.len()
                    ))
                }
            },
            Operation::Add { path, name, value } => {
                let location = single(path, locate(path, resource)?)?;
                let container = at_mut(resource, &location)?
                    .as_object_mut()
                    .ok_or_else(|| format!("{path} is not an element that can have children"))?;
                match container.get_mut(name) {
                    Some(Value::Array(items)) => items.push(value.clone()),
                    Some(_) => {
                        return Err(format!("{path}.{name} already has a value; use replace"))
                    }
                    None => {
                        container.insert(name.clone(), value.clone());
                        // Whether the element repeats is for the R4 model to say: added as one
                        // value, a list element is reported by validation and becomes a list.
                        let mut added = location.clone();
                        added.push(Step::Key(name.clone()));
                        let path_text = render(resource, &added);
                        let repeats = super::validation::validate(resource).iter().any(|issue| {
                            issue.path == path_text
                                && issue.message.starts_with("expected an array")
                        });
                        if repeats {
                            let slot = at_mut(resource, &added)?;
                            let single = slot.take();
                            *slot = Value::Array(vec![single]);
                        }
                    }
                }
            }
            Operation::Insert { path, index, value } => {
                let (list, _) = list_of(path, resource)?;
                let items = at_mut(resource, &list)?
                    .as_array_mut()
                    .ok_or_else(|| format!("{path} is not a list"))?;
                if *index > items.len() {
                    return Err(format!(
                        "index {index} is past the end of {path} ({} items)",
                        items.len()
                    ));
                }
                items.insert(*index, value.clone());
            }
            Operation::Move {
                path,
                source,
                destination,
            } => {
                let (list, _) = list_of(path, resource)?;
                let items = at_mut(resource, &list)?
                    .as_array_mut()
                    .ok_or_else(|| format!("{path} is not a list"))?;
                if *source >= items.len() || *destination >= items.len() {
                    return Err(format!(
                        "source {source} and destination {destination} must be below {} (the items of {path})",
                        items.len()
                    ));
                }
                let item = items.remove(*source);
                items.insert(*destination, item);
            }
        }
        Ok(())
    }
}

/// The JSON locations of the elements `path` finds in `resource`.
fn locate(path: &str, resource: &Value) -> Result<Vec<Vec<Step>>, String> {
    let expression = Expression::parse(path).map_err(|e| format!("path {path:?}: {e}"))?;
    let mut out = Vec::new();
    for item in expression.evaluate(resource) {
        let (value, _) = item
            .element()
            .ok_or_else(|| format!("{path} finds a value that is not an element"))?;
        let mut steps = Vec::new();
        if !find(resource, value, &mut steps) {
            return Err(format!("{path} finds an element outside the resource"));
        }
        out.push(steps);
    }
    Ok(out)
}

/// Depth-first search for `target` (by identity) under `node`, recording the steps to it.
fn find(node: &Value, target: &Value, steps: &mut Vec<Step>) -> bool {
    if std::ptr::eq(node, target) {
        return true;
    }
    match node {
        Value::Object(map) => {
            for (key, child) in map {
                steps.push(Step::Key(key.clone()));
                if find(child, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                steps.push(Step::Index(i));
                if find(child, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        _ => {}
    }
    false
}

fn single(path: &str, mut locations: Vec<Vec<Step>>) -> Result<Vec<Step>, String> {
    match locations.len() {
        1 => Ok(locations.remove(0)),
        0 => Err(format!("{path} finds nothing")),
        n => Err(format!(
            "{path} finds {n} elements; this operation takes one"
        )),
    }
}

/// The array that holds every element `path` finds (the elements of one list).
fn list_of(path: &str, resource: &Value) -> Result<(Vec<Step>, usize), String> {
    let locations = locate(path, resource)?;
    let mut parent: Option<Vec<Step>> = None;
    for location in &locations {
        let (last, head) = location
            .split_last()
            .ok_or_else(|| format!("{path} is the resource itself, not a list"))?;
        if !matches!(last, Step::Index(_)) || parent.as_deref().is_some_and(|p| p != head) {
            return Err(format!("{path} does not find the items of one list"));
        }
        parent = Some(head.to_vec());
    }
    let parent =
        parent.ok_or_else(|| format!("{path} finds nothing (add the first item with add)"))?;
    Ok((parent, locations.len()))
}

fn at_mut<'a>(resource: &'a mut Value, location: &[Step]) -> Result<&'a mut Value, String> {
    let mut node = resource;
    for step in location {
        node = match step {
            Step::Key(key) => node.get_mut(key.as_str()),
            Step::Index(i) => node.get_mut(*i),
        }
        .ok_or("the element moved while the patch ran")?;
    }
    Ok(node)
}

/// Removes the element at `location`; a list left empty goes too (FHIR has no empty lists).
fn remove(resource: &mut Value, location: &[Step]) -> Result<(), String> {
    let (last, head) = location
        .split_last()
        .ok_or("the resource itself cannot be deleted by a patch")?;
    let parent = at_mut(resource, head)?;
    match (last, parent) {
        (Step::Key(key), Value::Object(map)) => {
            map.remove(key);
        }
        (Step::Index(i), Value::Array(items)) => {
            items.remove(*i);
            if items.is_empty() {
                return remove(resource, head);
            }
        }
        _ => return Err("the element moved while the patch ran".into()),
    }
    Ok(())
}

/// A location as validation names it: `Patient.name[1].given`.
fn render(resource: &Value, location: &[Step]) -> String {
    let mut out = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource")
        .to_owned();
    for step in location {
        match step {
            Step::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn operation(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patch(operations: Vec<Value>) -> FhirpathPatch {
        FhirpathPatch::parse(&json!({"resourceType": "Parameters", "parameter": operations}))
            .unwrap()
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01",
            "name": [{"use": "official", "family": "Jansen", "given": ["Piet"]},
                     {"use": "nickname", "given": ["P"]}],
            "identifier": [{"value": "a"}, {"value": "b"}, {"value": "c"}]})
    }

    #[test]
    fn replace_delete_and_add_change_what_the_paths_find() {
        let mut resource = patient();
        patch(vec![
            operation(json!([{"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.birthDate"},
                {"name": "value", "valueDate": "1971-02-03"}])),
            operation(json!([{"name": "type", "valueCode": "delete"},
                {"name": "path", "valueString": "Patient.name.where(use = 'nickname')"}])),
            operation(json!([{"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "gender"},
                {"name": "value", "valueCode": "male"}])),
            // telecom repeats: the model makes the one value a list.
            operation(json!([{"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "telecom"},
                {"name": "value", "part": [{"name": "system", "valueCode": "phone"},
                    {"name": "value", "valueString": "0612345678"}]}])),
            operation(json!([{"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient.name[0]"},
                {"name": "name", "valueString": "given"},
                {"name": "value", "valueString": "Jan"}])),
            // Deleting what is not there changes nothing.
            operation(json!([{"name": "type", "valueCode": "delete"},
                {"name": "path", "valueString": "Patient.deceased"}])),
        ])
        .apply(&mut resource)
        .unwrap();
        assert_eq!(resource["birthDate"], "1971-02-03");
        assert_eq!(resource["name"].as_array().unwrap().len(), 1);
        assert_eq!(resource["name"][0]["given"], json!(["Piet", "Jan"]));
        assert_eq!(resource["gender"], "male");
        assert_eq!(
            resource["telecom"],
            json!([{"system": "phone", "value": "0612345678"}])
        );
    }

    #[test]
    fn insert_and_move_reorder_a_list_and_an_emptied_list_goes() {
        let mut resource = patient();
        patch(vec![
            operation(json!([{"name": "type", "valueCode": "insert"},
                {"name": "path", "valueString": "Patient.identifier"},
                {"name": "index", "valueInteger": 1},
                {"name": "value", "valueIdentifier": {"value": "x"}}])),
            operation(json!([{"name": "type", "valueCode": "move"},
                {"name": "path", "valueString": "Patient.identifier"},
                {"name": "source", "valueInteger": 0},
                {"name": "destination", "valueInteger": 3}])),
            operation(json!([{"name": "type", "valueCode": "delete"},
                {"name": "path", "valueString": "Patient.name[1].given"}])),
        ])
        .apply(&mut resource)
        .unwrap();
        let values: Vec<&str> = resource["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].as_str().unwrap())
            .collect();
        assert_eq!(values, ["x", "b", "c", "a"]);
        assert_eq!(resource["name"][1], json!({"use": "nickname"}));
    }

    #[test]
    fn operations_that_cannot_apply_say_why() {
        let cases = [
            (
                json!([{"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.name"},
                {"name": "value", "valueString": "x"}]),
                "finds 2 elements",
            ),
            (
                json!([{"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.gender"},
                {"name": "value", "valueCode": "x"}]),
                "finds nothing",
            ),
            (
                json!([{"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "birthDate"},
                {"name": "value", "valueDate": "1990-01-01"}]),
                "use replace",
            ),
            (
                json!([{"name": "type", "valueCode": "insert"},
                {"name": "path", "valueString": "Patient.identifier"},
                {"name": "index", "valueInteger": 9},
                {"name": "value", "valueIdentifier": {"value": "x"}}]),
                "past the end",
            ),
            (
                json!([{"name": "type", "valueCode": "move"},
                {"name": "path", "valueString": "Patient.birthDate"},
                {"name": "source", "valueInteger": 0},
                {"name": "destination", "valueInteger": 0}]),
                "one list",
            ),
        ];
        for (parts, wanted) in cases {
            let mut resource = patient();
            let error = patch(vec![operation(parts)])
                .apply(&mut resource)
                .unwrap_err();
            assert!(error.contains(wanted), "{error} (wanted {wanted})");
        }
        for (body, wanted) in [
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "x"}]}),
                "named operation",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [operation(json!([
                {"name": "type", "valueCode": "frob"}, {"name": "path", "valueString": "Patient"}]))]}),
                "frob",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [operation(json!([
                {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.("},
                {"name": "value", "valueString": "x"}]))]}),
                "",
            ),
        ] {
            let result = FhirpathPatch::parse(&body).and_then(|p| p.apply(&mut patient()));
            let error = result.unwrap_err();
            assert!(error.contains(wanted), "{error}");
        }
    }
}
