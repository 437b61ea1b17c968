//! The FHIR R4 search parameters, from the table `parameters.tsv` that
//! `scripts/generate-search-parameters.py` generates from the official definitions
//! (compiled in: the node never reads the definitions at run time).
//!
//! [`registry`] holds, per resource type, each parameter that applies to it (its own and
//! those of `Resource` and `DomainResource`), with only the branches of its expression that
//! can match that type.

use super::fhirpath::Expression;
use crate::fhir::resource::RESOURCE_TYPES;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The generated table.
const TABLE: &str = include_str!("parameters.tsv");

/// A search parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParameterType {
    /// `number`.
    Number,
    /// `date`.
    Date,
    /// `string`.
    String,
    /// `token`.
    Token,
    /// `reference`.
    Reference,
    /// `composite`.
    Composite,
    /// `quantity`.
    Quantity,
    /// `uri`.
    Uri,
    /// `special`.
    Special,
}

impl ParameterType {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "number" => Self::Number,
            "date" => Self::Date,
            "string" => Self::String,
            "token" => Self::Token,
            "reference" => Self::Reference,
            "composite" => Self::Composite,
            "quantity" => Self::Quantity,
            "uri" => Self::Uri,
            "special" => Self::Special,
            _ => return None,
        })
    }

    /// The name the specification gives the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Composite => "composite",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Special => "special",
        }
    }

    /// True for the types this node indexes and searches (all but composite and special).
    pub fn is_indexed(self) -> bool {
        !matches!(self, Self::Composite | Self::Special)
    }
}

/// One search parameter as it applies to one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParameter {
    /// The definition's id (`Observation-code`, `clinical-patient`).
    pub id: &'static str,
    /// The name used in a search (`code`).
    pub code: &'static str,
    /// Its type.
    pub kind: ParameterType,
    /// The resource types a reference parameter may point at.
    pub targets: Vec<&'static str>,
    /// What it indexes, for this resource type (`None` for `_text`, `_content`, `_query`).
    pub expression: Option<Expression>,
}

impl SearchParameter {
    /// The canonical URL of the definition.
    pub fn url(&self) -> String {
        format!("http://hl7.org/fhir/SearchParameter/{}", self.id)
    }
}

/// The search parameters of every resource type.
#[derive(Debug)]
pub struct Registry {
    by_type: BTreeMap<&'static str, BTreeMap<&'static str, SearchParameter>>,
    definitions: usize,
}

impl Registry {
    /// The parameters of `resource_type`, by code.
    pub fn of_type(&self, resource_type: &str) -> Option<&BTreeMap<&'static str, SearchParameter>> {
        self.by_type.get(resource_type)
    }

    /// One parameter of `resource_type`.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParameter> {
        self.by_type.get(resource_type)?.get(code)
    }

    /// How many definitions the table holds.
    pub fn definitions(&self) -> usize {
        self.definitions
    }
}

/// The registry, built from the compiled-in table on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> =
        LazyLock::new(|| build(TABLE).expect("the generated search parameter table is valid"));
    &REGISTRY
}

/// A row of the table.
struct Row {
    id: &'static str,
    code: &'static str,
    kind: ParameterType,
    bases: Vec<&'static str>,
    targets: Vec<&'static str>,
    expression: Option<Expression>,
}

fn rows(table: &'static str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (number, line) in table.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&'static str> = line.split('\t').collect();
        let [id, code, kind, bases, targets, expression] = fields[..] else {
            return Err(format!("line {}: not six fields", number + 1));
        };
        let kind = ParameterType::parse(kind)
            .ok_or_else(|| format!("line {}: unknown type {kind:?}", number + 1))?;
        let list = |text: &'static str| -> Vec<&'static str> {
            if text == "-" {
                Vec::new()
            } else {
                text.split(' ').collect()
            }
        };
        let expression = match expression {
            "-" => None,
            text => Some(Expression::parse(text).map_err(|e| format!("line {}: {e}", number + 1))?),
        };
        rows.push(Row {
            id,
            code,
            kind,
            bases: list(bases),
            targets: list(targets),
            expression,
        });
    }
    Ok(rows)
}

/// `DomainResource`'s parameters apply to every resource type but these.
const NOT_DOMAIN_RESOURCES: &[&str] = &["Binary", "Bundle", "Parameters"];

fn build(table: &'static str) -> Result<Registry, String> {
    let rows = rows(table)?;
    let mut by_type: BTreeMap<&'static str, BTreeMap<&'static str, SearchParameter>> =
        RESOURCE_TYPES
            .iter()
            .map(|t| (*t, BTreeMap::new()))
            .collect();
    for row in &rows {
        let applies_to: Vec<&'static str> = if row.bases.contains(&"Resource") {
            RESOURCE_TYPES.to_vec()
        } else if row.bases.contains(&"DomainResource") {
            RESOURCE_TYPES
                .iter()
                .copied()
                .filter(|t| !NOT_DOMAIN_RESOURCES.contains(t))
                .collect()
        } else {
            row.bases.clone()
        };
        let branches = row
            .expression
            .as_ref()
            .map(Expression::branches)
            .unwrap_or_default();
        for resource_type in applies_to {
            let Some(parameters) = by_type.get_mut(resource_type) else {
                return Err(format!(
                    "{}: base {resource_type:?} is not an R4 resource type",
                    row.id
                ));
            };
            let expression = row.expression.as_ref().map(|_| {
                Expression::union(
                    branches
                        .iter()
                        .filter(|(root, _)| match root.as_deref() {
                            None | Some("Resource") | Some("DomainResource") => true,
                            Some(root) => root == resource_type,
                        })
                        .map(|(_, branch)| branch.clone())
                        .collect(),
                )
            });
            let previous = parameters.insert(
                row.code,
                SearchParameter {
                    id: row.id,
                    code: row.code,
                    kind: row.kind,
                    targets: row.targets.clone(),
                    expression,
                },
            );
            if let Some(previous) = previous {
                return Err(format!(
                    "{} and {} both define {resource_type}?{}",
                    previous.id, row.id, row.code
                ));
            }
        }
    }
    Ok(Registry {
        by_type,
        definitions: rows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_in_the_table_parses_and_applies_to_real_types() {
        let registry = registry();
        assert_eq!(registry.definitions(), 1375, "HL7's R4 definitions");
        let observation = registry.of_type("Observation").unwrap();
        for code in [
            "code",
            "patient",
            "subject",
            "date",
            "status",
            "value-quantity",
            "_id",
            "_lastUpdated",
            "_tag",
            "_profile",
        ] {
            assert!(observation.contains_key(code), "Observation?{code}");
        }
        assert_eq!(
            registry.get("Observation", "patient").unwrap().id,
            "clinical-patient"
        );
        assert_eq!(
            registry.get("Patient", "birthdate").unwrap().kind,
            ParameterType::Date
        );
        // Bundle and Binary have Resource's parameters, not DomainResource's `_text`.
        assert!(registry.get("Bundle", "_id").is_some());
        assert!(registry.get("Bundle", "_text").is_none());
    }

    #[test]
    fn shared_definitions_keep_only_the_branches_of_each_type() {
        let registry = registry();
        let patient_of = |resource_type: &str| {
            registry
                .get(resource_type, "patient")
                .unwrap()
                .expression
                .clone()
                .unwrap()
        };
        // clinical-patient is a union over 30 types; each type keeps its own branch.
        let expression = patient_of("Observation");
        assert_eq!(expression.branches().len(), 1);
        let observation = serde_json::json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/p1"}});
        assert_eq!(expression.evaluate(&observation).len(), 1);
        let condition = serde_json::json!({"resourceType": "Condition",
            "subject": {"reference": "Group/g1"}});
        assert!(patient_of("Condition").evaluate(&condition).is_empty());
    }

    #[test]
    fn a_bad_table_is_refused_with_its_line() {
        for (table, wanted) in [
            ("a\tb\n", "line 1: not six fields"),
            ("a\tb\tcolour\tPatient\t-\tPatient.x\n", "unknown type"),
            ("a\tb\ttoken\tPatient\t-\tPatient.(\n", "line 1: FHIRPath"),
            ("a\tb\ttoken\tNoSuchType\t-\tx\n", "not an R4 resource type"),
        ] {
            let error = build(table).unwrap_err();
            assert!(error.contains(wanted), "{error}");
        }
    }
}
