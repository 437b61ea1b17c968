//! A search request read into what it asks: one [`Clause`] per search parameter (values
//! joined by `,` are ORed, repeated parameters ANDed), the result parameters, and the
//! parameters that cannot be applied (reported, or refused under `Prefer: handling=strict`).
//!
//! Sans-IO: the query string's pairs in, a [`Query`] out.

use super::extract::{date_range, normalize, IndexValue};
use super::parameters::{registry, ParameterType, SearchParameter};
use crate::fhir::FhirError;
use std::collections::BTreeSet;

/// Page size when the client gives none.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page.
pub const MAX_COUNT: usize = 1000;
/// The most values one parameter may OR together.
pub const MAX_OR_VALUES: usize = 100;
/// The most clauses one search may AND together.
pub const MAX_CLAUSES: usize = 32;

/// A date, number or quantity comparison prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `eq` (the default).
    Eq,
    /// `ne`.
    Ne,
    /// `gt`.
    Gt,
    /// `lt`.
    Lt,
    /// `ge`.
    Ge,
    /// `le`.
    Le,
    /// `sa`: starts after.
    Sa,
    /// `eb`: ends before.
    Eb,
    /// `ap`: approximately.
    Ap,
}

impl Prefix {
    /// Splits a prefix off `value` (`ge2020` → `Ge`, `2020`).
    pub fn split(value: &str) -> (Prefix, &str) {
        let prefix = match value.get(..2) {
            Some("eq") => Prefix::Eq,
            Some("ne") => Prefix::Ne,
            Some("gt") => Prefix::Gt,
            Some("lt") => Prefix::Lt,
            Some("ge") => Prefix::Ge,
            Some("le") => Prefix::Le,
            Some("sa") => Prefix::Sa,
            Some("eb") => Prefix::Eb,
            Some("ap") => Prefix::Ap,
            _ => return (Prefix::Eq, value),
        };
        (prefix, &value[2..])
    }
}

/// What one value of a clause asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    /// A token: `code`, `system|code`, `|code` (no system) or `system|` (any code).
    Token {
        /// `None`: any system; `Some("")`: none.
        system: Option<String>,
        /// `None`: any code.
        code: Option<String>,
    },
    /// `:text`: token text starting with this (normalised).
    TokenText(String),
    /// `:of-type`: `type system|type code|value`.
    OfType {
        /// Identifier type system.
        system: String,
        /// Identifier type code.
        code: String,
        /// Identifier value.
        value: String,
    },
    /// A string: starts with (default), equals (`:exact`, not normalised) or contains.
    Text {
        /// The normalised text (the text as given for `:exact`).
        text: String,
        /// How it matches.
        mode: TextMatch,
    },
    /// A date range with a prefix, inclusive ms.
    Date {
        /// The prefix.
        prefix: Prefix,
        /// The earliest instant the search value means.
        low: i64,
        /// The latest.
        high: i64,
    },
    /// A reference to a resource by id, optionally of a type.
    Reference {
        /// Target type, when the value or the modifier gives it.
        target_type: Option<String>,
        /// Target id.
        id: String,
    },
    /// A reference by URL (an absolute reference elsewhere, a canonical).
    ReferenceUrl(String),
    /// `:identifier`: a reference's logical identifier.
    ReferenceIdentifier {
        /// `None`: any system.
        system: Option<String>,
        /// The value.
        value: String,
    },
    /// A number or quantity: the value's range by its significant figures, and for a
    /// quantity its system and code.
    Number {
        /// The prefix.
        prefix: Prefix,
        /// The value as given.
        value: f64,
        /// The lower end of the range the given precision means.
        low: f64,
        /// The upper end (exclusive).
        high: f64,
        /// Quantity system (`None`: any).
        system: Option<String>,
        /// Quantity code or unit (`None`: any).
        code: Option<String>,
    },
    /// A URI: equal, or (`:below`) starting with, or (`:above`) a prefix of the stored one.
    Uri {
        /// The URI.
        uri: String,
        /// How it matches.
        mode: UriMatch,
    },
    /// `:missing`: true for resources without a value, false for those with one.
    Missing(bool),
    /// A chained parameter (`subject:Patient.identifier=…`): a reference to a resource of
    /// one of the types that the inner clause finds (resolved to [`Wanted::Reference`]s
    /// before the search runs).
    Chained(Box<Chain>),
    /// A reverse chain (`_has:Observation:patient:code=…`): the resources that resources
    /// of another type found by the inner clause point at (resolved to `_id` tokens).
    Has(Box<ReverseChain>),
}

/// The inner clauses of a chain, one per target type that has the chained parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// (target type, clause on it).
    pub targets: Vec<(String, Clause)>,
}

/// A reverse chain: resources of `source_type` found by `inner`, pointing back by
/// `reference` (a reference parameter of the source type).
#[derive(Debug, Clone, PartialEq)]
pub struct ReverseChain {
    /// The type that points back.
    pub source_type: String,
    /// Its reference parameter.
    pub reference: String,
    /// What it must match.
    pub inner: Clause,
}

/// How deep chains (and reverse chains) may nest.
pub const MAX_CHAIN_DEPTH: usize = 3;

/// How string search matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMatch {
    /// The default: the stored text starts with the search text (both normalised).
    StartsWith,
    /// `:exact`: equal, case and accents included.
    Exact,
    /// `:contains`: anywhere in the stored text (normalised).
    Contains,
}

/// How uri search matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    /// Equal.
    Equal,
    /// `:below`: the stored URI starts with the search URI.
    Below,
    /// `:above`: the search URI starts with the stored URI.
    Above,
}

/// One parameter of a search: its values ORed, negated by `:not`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The parameter.
    pub parameter: SearchParameter,
    /// The name as the client wrote it, modifier included (for the self link).
    pub name: String,
    /// The value as the client wrote it.
    pub raw_value: String,
    /// The values.
    pub any_of: Vec<Wanted>,
    /// `:not`: resources matching none of the values.
    pub negated: bool,
}

/// A search request, read.
#[derive(Debug, Clone)]
pub struct Query {
    /// The clauses, all of which a match satisfies.
    pub clauses: Vec<Clause>,
    /// Page size.
    pub count: usize,
    /// Where the page starts.
    pub offset: usize,
    /// Parameters not applied, each with why.
    pub ignored: Vec<(String, String)>,
    /// `_sort`: (parameter code, descending), in order.
    pub sort: Vec<(String, bool)>,
    /// `_include` (and `_include:iterate`).
    pub include: Vec<Include>,
    /// `_revinclude` (and `_revinclude:iterate`).
    pub revinclude: Vec<Include>,
    /// `_summary`.
    pub summary: Summary,
    /// `_elements`: the top-level elements to keep.
    pub elements: Option<Vec<String>>,
    /// `_total=none`: leave the total out.
    pub no_total: bool,
    /// Result parameters applied, as written (for the self link).
    pub applied: Vec<(String, String)>,
}

/// One `_include` or `_revinclude`: the resources that `source_type`'s reference parameter
/// `parameter` points at (or, reversed, that point at the matches), optionally only of
/// `target_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The type with the reference parameter.
    pub source_type: String,
    /// The reference parameter.
    pub parameter: String,
    /// Only targets of this type.
    pub target_type: Option<String>,
    /// `:iterate`: also from what was included.
    pub iterate: bool,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// `false` (or none): whole resources.
    Full,
    /// `count`: the total only.
    Count,
    /// `text`: `text`, `id`, `meta` only.
    Text,
    /// `data`: without `text`.
    Data,
    /// `true`: the elements the R4 definitions mark as summary.
    True,
}

/// The most resources `_include` and `_revinclude` add to one page.
pub const MAX_INCLUDED: usize = 1000;

impl Query {
    /// The resource types the query's chains and reverse chains search.
    pub fn chained_types(&self) -> BTreeSet<String> {
        fn walk(clause: &Clause, out: &mut BTreeSet<String>) {
            for wanted in &clause.any_of {
                match wanted {
                    Wanted::Chained(chain) => {
                        for (t, inner) in &chain.targets {
                            out.insert(t.clone());
                            walk(inner, out);
                        }
                    }
                    Wanted::Has(has) => {
                        out.insert(has.source_type.clone());
                        walk(&has.inner, out);
                    }
                    _ => {}
                }
            }
        }
        let mut out = BTreeSet::new();
        for clause in &self.clauses {
            walk(clause, &mut out);
        }
        out
    }

    /// A query of these clauses alone (the first page's size).
    pub fn of(clauses: Vec<Clause>) -> Self {
        Self {
            clauses,
            count: DEFAULT_COUNT,
            offset: 0,
            ignored: Vec::new(),
            sort: Vec::new(),
            include: Vec::new(),
            revinclude: Vec::new(),
            summary: Summary::Full,
            elements: None,
            no_total: false,
            applied: Vec::new(),
        }
    }
}

/// Parameters about the result, not the match, that a search accepts.
const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_offset",
    "_format",
    "_pretty",
    "_page_after",
    "_page_before",
];

/// Reads a search request on `resource_type` (already checked to be an R4 type). `strict`:
/// `Prefer: handling=strict`, under which a parameter that cannot be applied is an error.
pub fn parse(
    resource_type: &str,
    params: &[(String, String)],
    strict: bool,
    base: &str,
) -> Result<Query, FhirError> {
    let mut query = Query::of(Vec::new());
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                query.count = value
                    .parse::<usize>()
                    .map_err(|_| FhirError::invalid(format!("_count {value:?} is not a number")))?
                    .min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                query.offset = value.parse().map_err(|_| {
                    FhirError::invalid(format!("_offset {value:?} is not a number"))
                })?;
                continue;
            }
            n if RESULT_PARAMETERS.contains(&n) => continue,
            _ => {}
        }
        match result_parameter(resource_type, name, value, &mut query) {
            Ok(true) => {
                query.applied.push((name.clone(), value.clone()));
                continue;
            }
            Ok(false) => {}
            Err(Unapplied::Invalid(message)) => return Err(FhirError::invalid(message)),
            Err(Unapplied::Unknown(why)) => {
                if strict {
                    return Err(FhirError::invalid(format!(
                        "{name}: {why} (Prefer: handling=strict)"
                    )));
                }
                query.ignored.push((name.clone(), why));
                continue;
            }
        }
        match clause(resource_type, name, value, base, 0) {
            Ok(Some(clause)) => {
                if query.clauses.len() == MAX_CLAUSES {
                    return Err(FhirError::invalid(format!(
                        "a search may combine at most {MAX_CLAUSES} parameters"
                    )));
                }
                query.clauses.push(clause);
            }
            Ok(None) => {}
            Err(Unapplied::Invalid(message)) => return Err(FhirError::invalid(message)),
            Err(Unapplied::Unknown(why)) => {
                if strict {
                    return Err(FhirError::invalid(format!(
                        "{name}: {why} (Prefer: handling=strict)"
                    )));
                }
                query.ignored.push((name.clone(), why));
            }
        }
    }
    Ok(query)
}

/// Reads a result parameter into `query`; `Ok(false)` if `name` is not one.
/// `_summary` or `_elements` of a read, applied to `query` as a search applies them.
pub fn read_parameter(
    resource_type: &str,
    name: &str,
    value: &str,
    query: &mut Query,
) -> Result<(), FhirError> {
    match result_parameter(resource_type, name, value, query) {
        Err(Unapplied::Invalid(message)) | Err(Unapplied::Unknown(message)) => {
            Err(FhirError::invalid(message))
        }
        Ok(_) => Ok(()),
    }
}

fn result_parameter(
    resource_type: &str,
    name: &str,
    value: &str,
    query: &mut Query,
) -> Result<bool, Unapplied> {
    match name {
        "_sort" => {
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (code, descending) = match key.strip_prefix('-') {
                    Some(code) => (code, true),
                    None => (key, false),
                };
                match registry().get(resource_type, code) {
                    Some(p) if p.kind.is_indexed() && p.expression.is_some() => {
                        query.sort.push((code.to_owned(), descending))
                    }
                    _ => {
                        return Err(Unapplied::Unknown(format!(
                            "{resource_type} cannot be sorted by {code:?}"
                        )))
                    }
                }
            }
            Ok(true)
        }
        "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
            let iterate = name.ends_with(":iterate");
            let parts: Vec<&str> = value.split(':').collect();
            let (source_type, parameter, target_type) = match parts[..] {
                [s, p] => (s, p, None),
                [s, p, t] => (s, p, Some(t)),
                _ => {
                    return Err(Unapplied::Invalid(format!(
                        "{name}={value:?}: takes <type>:<reference parameter>[:<target type>]"
                    )))
                }
            };
            if parameter == "*" {
                return Err(Unapplied::Unknown(format!(
                    "{name}={value}: the wildcard is not supported; name the parameter"
                )));
            }
            match registry().get(source_type, parameter) {
                Some(p) if p.kind == ParameterType::Reference => {}
                _ => {
                    return Err(Unapplied::Invalid(format!(
                        "{name}={value:?}: {source_type} has no reference parameter {parameter:?}"
                    )))
                }
            }
            let include = Include {
                source_type: source_type.to_owned(),
                parameter: parameter.to_owned(),
                target_type: target_type.map(str::to_owned),
                iterate,
            };
            if name.starts_with("_include") {
                query.include.push(include);
            } else {
                query.revinclude.push(include);
            }
            Ok(true)
        }
        "_summary" => {
            query.summary = match value {
                "false" => Summary::Full,
                "count" => Summary::Count,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "true" => Summary::True,
                other => {
                    return Err(Unapplied::Invalid(format!(
                        "_summary={other:?}: takes true, false, text, data or count"
                    )))
                }
            };
            Ok(true)
        }
        "_elements" => {
            query.elements = Some(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
            Ok(true)
        }
        "_total" => {
            query.no_total = match value {
                "none" => true,
                "estimate" | "accurate" => false,
                other => {
                    return Err(Unapplied::Invalid(format!(
                        "_total={other:?}: takes none, estimate or accurate"
                    )))
                }
            };
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Why a parameter was not turned into a clause.
enum Unapplied {
    /// The request is wrong: 400 whatever the handling.
    Invalid(String),
    /// Not known or not supported: ignored (or 400 under strict handling).
    Unknown(String),
}

fn clause(
    resource_type: &str,
    name: &str,
    value: &str,
    base: &str,
    depth: usize,
) -> Result<Option<Clause>, Unapplied> {
    if let Some(rest) = name.strip_prefix("_has:") {
        return reverse_chain(resource_type, name, rest, value, base, depth);
    }
    if let Some((head, rest)) = name.split_once('.') {
        return chain(resource_type, name, head, rest, value, base, depth);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let Some(parameter) = registry().get(resource_type, code) else {
        return Err(Unapplied::Unknown(format!(
            "{resource_type} has no search parameter {code:?}"
        )));
    };
    if !parameter.kind.is_indexed() || parameter.expression.is_none() {
        return Err(Unapplied::Unknown(format!(
            "{} parameters ({code}) are not supported",
            parameter.kind.name()
        )));
    }
    let kind = parameter.kind;
    let mut negated = false;
    let values: Vec<&str> = split_or(value);
    if values.len() > MAX_OR_VALUES {
        return Err(Unapplied::Invalid(format!(
            "{name}: at most {MAX_OR_VALUES} values may be joined by ','"
        )));
    }
    if values.iter().all(|v| v.is_empty()) {
        // An empty value: no criterion (FHIR: ignored).
        return Ok(None);
    }
    let mut any_of = Vec::with_capacity(values.len());
    let unsupported = |m: &str| {
        Err(Unapplied::Unknown(format!(
            "the modifier :{m} is not supported on {} parameters",
            kind.name()
        )))
    };
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Unapplied::Invalid(format!(
                    "{name}={value:?}: :missing takes true or false"
                )))
            }
        };
        any_of.push(Wanted::Missing(missing));
        return Ok(Some(Clause {
            parameter: parameter.clone(),
            name: name.to_owned(),
            raw_value: value.to_owned(),
            any_of,
            negated: false,
        }));
    }
    for raw in values {
        let raw = unescape(raw);
        let wanted = match kind {
            ParameterType::Token => match modifier {
                None => token(&raw),
                Some("not") => {
                    negated = true;
                    token(&raw)
                }
                Some("text") => Wanted::TokenText(normalize(&raw)),
                Some("of-type") => {
                    let parts: Vec<&str> = raw.splitn(3, '|').collect();
                    let [system, code, value] = parts[..] else {
                        return Err(Unapplied::Invalid(format!(
                            "{name}={raw:?}: :of-type takes system|code|value"
                        )));
                    };
                    Wanted::OfType {
                        system: system.to_owned(),
                        code: code.to_owned(),
                        value: value.to_owned(),
                    }
                }
                Some(m) => return unsupported(m),
            },
            ParameterType::String => {
                let mode = match modifier {
                    None => TextMatch::StartsWith,
                    Some("exact") => TextMatch::Exact,
                    Some("contains") => TextMatch::Contains,
                    Some(m) => return unsupported(m),
                };
                let text = if mode == TextMatch::Exact {
                    raw.clone()
                } else {
                    normalize(&raw)
                };
                Wanted::Text { text, mode }
            }
            ParameterType::Date => {
                if let Some(m) = modifier {
                    return unsupported(m);
                }
                let (prefix, rest) = Prefix::split(&raw);
                let (low, high) = date_range(rest).ok_or_else(|| {
                    Unapplied::Invalid(format!("{name}={raw:?} is not a FHIR date"))
                })?;
                Wanted::Date { prefix, low, high }
            }
            ParameterType::Reference => match modifier {
                Some("identifier") => {
                    let (system, value) = match raw.split_once('|') {
                        Some((s, v)) => (Some(s.to_owned()), v.to_owned()),
                        None => (None, raw.clone()),
                    };
                    Wanted::ReferenceIdentifier { system, value }
                }
                Some(m) if is_type_modifier(m) => {
                    if !parameter.targets.contains(&m) {
                        return Err(Unapplied::Invalid(format!(
                            "{name}: {code} does not point at {m}"
                        )));
                    }
                    reference(&raw, Some(m), base)
                }
                None => reference(&raw, None, base),
                Some(m) => return unsupported(m),
            },
            ParameterType::Quantity | ParameterType::Number => {
                if let Some(m) = modifier {
                    return unsupported(m);
                }
                number(&raw, kind == ParameterType::Quantity).ok_or_else(|| {
                    Unapplied::Invalid(format!("{name}={raw:?} is not a {}", kind.name()))
                })?
            }
            ParameterType::Uri => {
                let mode = match modifier {
                    None => UriMatch::Equal,
                    Some("below") => UriMatch::Below,
                    Some("above") => UriMatch::Above,
                    Some(m) => return unsupported(m),
                };
                Wanted::Uri { uri: raw, mode }
            }
            ParameterType::Composite | ParameterType::Special => unreachable!("checked above"),
        };
        any_of.push(wanted);
    }
    Ok(Some(Clause {
        parameter: parameter.clone(),
        name: name.to_owned(),
        raw_value: value.to_owned(),
        any_of,
        negated,
    }))
}

/// A chained parameter: `head` is a reference parameter (with an optional `:Type`),
/// `rest` the parameter on its targets (which may chain again).
fn chain(
    resource_type: &str,
    name: &str,
    head: &str,
    rest: &str,
    value: &str,
    base: &str,
    depth: usize,
) -> Result<Option<Clause>, Unapplied> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Unapplied::Invalid(format!(
            "{name}: chains may be at most {MAX_CHAIN_DEPTH} deep"
        )));
    }
    let (code, target) = match head.split_once(':') {
        Some((code, target)) => (code, Some(target)),
        None => (head, None),
    };
    let Some(parameter) = registry().get(resource_type, code) else {
        return Err(Unapplied::Unknown(format!(
            "{resource_type} has no search parameter {code:?}"
        )));
    };
    if parameter.kind != ParameterType::Reference {
        return Err(Unapplied::Invalid(format!(
            "{name}: only reference parameters chain, and {code} is a {}",
            parameter.kind.name()
        )));
    }
    let candidates: Vec<&str> = match target {
        Some(t) if parameter.targets.contains(&t) => vec![t],
        Some(t) => {
            return Err(Unapplied::Invalid(format!(
                "{name}: {code} does not point at {t}"
            )))
        }
        None => parameter.targets.clone(),
    };
    let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
    let mut targets = Vec::new();
    let mut unknown = None;
    for target_type in candidates {
        if registry().get(target_type, inner_code).is_none() && !inner_code.starts_with("_has") {
            continue;
        }
        match clause(target_type, rest, value, base, depth + 1) {
            Ok(Some(inner)) => targets.push((target_type.to_owned(), inner)),
            Ok(None) => return Ok(None),
            Err(Unapplied::Unknown(why)) => unknown = Some(why),
            Err(e) => return Err(e),
        }
    }
    if targets.is_empty() {
        return Err(Unapplied::Unknown(unknown.unwrap_or_else(|| {
            format!("no type that {code} points at has a search parameter {inner_code:?}")
        })));
    }
    Ok(Some(Clause {
        parameter: parameter.clone(),
        name: name.to_owned(),
        raw_value: value.to_owned(),
        any_of: vec![Wanted::Chained(Box::new(Chain { targets }))],
        negated: false,
    }))
}

/// `_has:<type>:<reference parameter>:<parameter>`.
fn reverse_chain(
    resource_type: &str,
    name: &str,
    rest: &str,
    value: &str,
    base: &str,
    depth: usize,
) -> Result<Option<Clause>, Unapplied> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Unapplied::Invalid(format!(
            "{name}: chains may be at most {MAX_CHAIN_DEPTH} deep"
        )));
    }
    let mut parts = rest.splitn(3, ':');
    let (Some(source_type), Some(reference), Some(inner_name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(Unapplied::Invalid(format!(
            "{name}: _has takes _has:<type>:<reference parameter>:<parameter>"
        )));
    };
    if crate::fhir::resource::RESOURCE_TYPES
        .binary_search(&source_type)
        .is_err()
    {
        return Err(Unapplied::Invalid(format!(
            "{name}: {source_type:?} is not an R4 resource type"
        )));
    }
    match registry().get(source_type, reference) {
        Some(p) if p.kind == ParameterType::Reference => {}
        _ => {
            return Err(Unapplied::Unknown(format!(
                "{source_type} has no reference parameter {reference:?}"
            )))
        }
    }
    let Some(id_parameter) = registry().get(resource_type, "_id") else {
        return Err(Unapplied::Unknown(format!("{resource_type} has no _id")));
    };
    let Some(inner) = clause(source_type, inner_name, value, base, depth + 1)? else {
        return Ok(None);
    };
    Ok(Some(Clause {
        parameter: id_parameter.clone(),
        name: name.to_owned(),
        raw_value: value.to_owned(),
        any_of: vec![Wanted::Has(Box::new(ReverseChain {
            source_type: source_type.to_owned(),
            reference: reference.to_owned(),
            inner,
        }))],
        negated: false,
    }))
}

fn is_type_modifier(modifier: &str) -> bool {
    crate::fhir::resource::RESOURCE_TYPES
        .binary_search(&modifier)
        .is_ok()
}

/// Splits on `,` not escaped by `\`.
fn split_or(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' => {
                parts.push(&value[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    parts.push(&value[start.min(value.len())..]);
    parts
}

/// Removes the `\` escapes of `,`, `|`, `$` and `\`.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn token(raw: &str) -> Wanted {
    match raw.split_once('|') {
        None => Wanted::Token {
            system: None,
            code: Some(raw.to_owned()),
        },
        Some((system, code)) => Wanted::Token {
            system: Some(system.to_owned()),
            code: (!code.is_empty()).then(|| code.to_owned()),
        },
    }
}

fn reference(raw: &str, modifier_type: Option<&str>, base: &str) -> Wanted {
    let local = raw
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(raw);
    if let Some((resource_type, id)) = super::fhirpath::reference_target(local) {
        if !local.contains(':') && modifier_type.is_none_or(|m| m == resource_type) {
            return Wanted::Reference {
                target_type: Some(resource_type.to_owned()),
                id: id.to_owned(),
            };
        }
    }
    if !local.contains('/') && !local.contains(':') {
        return Wanted::Reference {
            target_type: modifier_type.map(str::to_owned),
            id: local.to_owned(),
        };
    }
    Wanted::ReferenceUrl(raw.to_owned())
}

/// `[prefix]number[|system|code]`: the number's range is what its significant figures mean
/// (`5.4` is [5.35, 5.45)), as the search page asks for `eq`.
fn number(raw: &str, quantity: bool) -> Option<Wanted> {
    let (prefix, rest) = Prefix::split(raw);
    let mut parts = rest.splitn(3, '|');
    let number_text = parts.next()?;
    let (system, code) = if quantity {
        let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
        let code = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
        (system, code)
    } else {
        if parts.next().is_some() {
            return None;
        }
        (None, None)
    };
    let value: f64 = number_text.parse().ok().filter(|v: &f64| v.is_finite())?;
    if number_text.contains(['e', 'E']) && !number_text.contains('.') {
        // 1e2: exact to the exponent's place; treated as written.
        return Some(Wanted::Number {
            prefix,
            value,
            low: value,
            high: value,
            system,
            code,
        });
    }
    let decimals = number_text.split_once('.').map_or(0, |(_, fraction)| {
        fraction.trim_end_matches(['e', 'E']).len()
    });
    let half = 0.5 * 10f64.powi(-(decimals as i32));
    Some(Wanted::Number {
        prefix,
        value,
        low: value - half,
        high: value + half,
        system,
        code,
    })
}

impl Prefix {
    /// Whether a resource's range `[l, h]` satisfies the prefix against the search range
    /// `[a, b]` (FHIR R4 §3.1.1.4.2), all inclusive. `ap` is left to the caller (it needs
    /// the time now) and is true here for overlapping ranges.
    pub fn compares_ranges(self, l: i64, h: i64, a: i64, b: i64) -> bool {
        match self {
            Prefix::Eq => l >= a && h <= b,
            Prefix::Ne => !(l >= a && h <= b),
            Prefix::Gt => h > b,
            Prefix::Lt => l < a,
            // gt, or within the search range (h <= b holds when h > b does not).
            Prefix::Ge => h > b || l >= a,
            // lt, or within the search range (l >= a holds when l < a does not).
            Prefix::Le => l < a || h <= b,
            Prefix::Sa => l > b,
            Prefix::Eb => h < a,
            Prefix::Ap => l <= b && h >= a,
        }
    }

    /// Whether a stored number satisfies the prefix against a search value and the range
    /// its significant figures mean (`[low, high)`).
    pub fn compares_numbers(self, stored: f64, value: f64, low: f64, high: f64) -> bool {
        match self {
            Prefix::Eq => stored >= low && stored < high,
            Prefix::Ne => !(stored >= low && stored < high),
            Prefix::Gt | Prefix::Sa => stored > value,
            Prefix::Lt | Prefix::Eb => stored < value,
            Prefix::Ge => stored >= value,
            Prefix::Le => stored <= value,
            Prefix::Ap => (stored - value).abs() <= (value * 0.1).abs(),
        }
    }
}

/// The range `ap` compares with: the search range widened by a tenth of its distance from
/// `now_ms` (at least a day).
pub fn approximate_range(a: i64, b: i64, now_ms: i64) -> (i64, i64) {
    let gap = (now_ms.saturating_sub(a).saturating_abs() / 10).max(86_400_000);
    (a.saturating_sub(gap), b.saturating_add(gap))
}

impl Wanted {
    /// Whether one index value of a resource satisfies this value of a clause: the meaning
    /// of search, on values (the index answers the same by key ranges). `Missing` is
    /// decided on all of a parameter's values, by [`Clause::matches`].
    pub fn matches(&self, value: &IndexValue, now_ms: i64) -> bool {
        match (self, value) {
            (Wanted::Token { system, code }, IndexValue::Token { system: s, code: c }) => {
                code.as_ref().is_none_or(|code| code == c)
                    && match system.as_deref() {
                        None => true,
                        Some("") => s.is_none(),
                        Some(system) => s.as_deref() == Some(system),
                    }
            }
            (Wanted::TokenText(text), IndexValue::TokenText(t)) => t.starts_with(text.as_str()),
            (
                Wanted::OfType {
                    system,
                    code,
                    value,
                },
                IndexValue::IdentifierType {
                    system: s,
                    code: c,
                    value: v,
                },
            ) => system == s && code == c && value == v,
            (Wanted::Text { text, mode }, IndexValue::String { normalized, exact }) => match mode {
                TextMatch::StartsWith => normalized.starts_with(text.as_str()),
                TextMatch::Exact => exact == text,
                TextMatch::Contains => normalized.contains(text.as_str()),
            },
            (Wanted::Date { prefix, low, high }, IndexValue::Date { low: l, high: h }) => {
                let (a, b) = if *prefix == Prefix::Ap {
                    approximate_range(*low, *high, now_ms)
                } else {
                    (*low, *high)
                };
                prefix.compares_ranges(*l, *h, a, b)
            }
            (
                Wanted::Reference { target_type, id },
                IndexValue::Reference {
                    target_type: t,
                    id: Some(i),
                    ..
                },
            ) => {
                id == i
                    && target_type
                        .as_ref()
                        .is_none_or(|wanted| t.as_ref() == Some(wanted))
            }
            (Wanted::ReferenceUrl(url), IndexValue::Reference { url: u, .. }) => url == u,
            (
                Wanted::ReferenceIdentifier { system, value },
                IndexValue::ReferenceIdentifier {
                    system: s,
                    value: v,
                },
            ) => {
                value == v
                    && system
                        .as_ref()
                        .is_none_or(|wanted| s.as_ref() == Some(wanted))
            }
            (
                Wanted::Number {
                    prefix,
                    value,
                    low,
                    high,
                    system,
                    code,
                },
                IndexValue::Quantity {
                    value: stored,
                    system: s,
                    code: c,
                    unit,
                },
            ) => {
                prefix.compares_numbers(*stored, *value, *low, *high)
                    && system
                        .as_ref()
                        .is_none_or(|wanted| s.as_ref() == Some(wanted))
                    && code.as_ref().is_none_or(|wanted| {
                        c.as_ref() == Some(wanted)
                            || (system.is_none() && unit.as_ref() == Some(wanted))
                    })
            }
            (
                Wanted::Number {
                    prefix,
                    value,
                    low,
                    high,
                    system: None,
                    code: None,
                },
                IndexValue::Number(stored),
            ) => prefix.compares_numbers(*stored, *value, *low, *high),
            (Wanted::Uri { uri, mode }, IndexValue::Uri(stored)) => match mode {
                UriMatch::Equal => stored == uri,
                UriMatch::Below => stored.starts_with(uri.as_str()),
                UriMatch::Above => !stored.is_empty() && uri.starts_with(stored.as_str()),
            },
            _ => false,
        }
    }
}

impl Clause {
    /// Whether a resource whose values of this clause's parameter are `values` satisfies
    /// the clause.
    pub fn matches(&self, values: &[IndexValue], now_ms: i64) -> bool {
        let any = self.any_of.iter().any(|wanted| match wanted {
            Wanted::Missing(missing) => values.is_empty() == *missing,
            wanted => values.iter().any(|v| wanted.matches(v, now_ms)),
        });
        any != self.negated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn tokens_dates_references_and_numbers_are_read() {
        let query = parse(
            "Observation",
            &pairs(&[
                ("code", "http://loinc.org|8867-4,|x,sys|"),
                ("date", "ge2020-01"),
                ("subject", "Patient/p1"),
                ("value-quantity", "lt5.4|http://unitsofmeasure.org|mg"),
                ("status:not", "final"),
                ("_count", "10"),
            ]),
            false,
            "http://node/fhir",
        )
        .unwrap();
        assert_eq!(query.count, 10);
        assert_eq!(query.clauses.len(), 5);
        assert_eq!(
            query.clauses[0].any_of,
            vec![
                Wanted::Token {
                    system: Some("http://loinc.org".into()),
                    code: Some("8867-4".into())
                },
                Wanted::Token {
                    system: Some(String::new()),
                    code: Some("x".into())
                },
                Wanted::Token {
                    system: Some("sys".into()),
                    code: None
                },
            ]
        );
        assert!(matches!(
            query.clauses[1].any_of[0],
            Wanted::Date {
                prefix: Prefix::Ge,
                ..
            }
        ));
        assert_eq!(
            query.clauses[2].any_of[0],
            Wanted::Reference {
                target_type: Some("Patient".into()),
                id: "p1".into()
            }
        );
        let Wanted::Number { low, high, .. } = &query.clauses[3].any_of[0] else {
            panic!()
        };
        assert!((low - 5.35).abs() < 1e-9 && (high - 5.45).abs() < 1e-9);
        assert!(query.clauses[4].negated);
    }

    #[test]
    fn unknown_parameters_are_reported_and_refused_when_strict() {
        let params = pairs(&[("colour", "red"), ("code:below", "x")]);
        let query = parse("Observation", &params, false, "b").unwrap();
        assert!(query.clauses.is_empty());
        assert_eq!(query.ignored.len(), 2);
        let error = parse("Observation", &params, true, "b").unwrap_err();
        assert!(error.to_outcome().to_string().contains("colour"));
        // A wrong value is 400 whatever the handling.
        assert!(parse("Observation", &pairs(&[("date", "yesterday")]), false, "b").is_err());
    }

    #[test]
    fn escapes_keep_commas_and_bars_in_values() {
        assert_eq!(split_or(r"a\,b,c"), vec![r"a\,b", "c"]);
        assert_eq!(unescape(r"a\,b"), "a,b");
        let query = parse("Patient", &pairs(&[("family", r"van\,der")]), false, "b").unwrap();
        assert_eq!(
            query.clauses[0].any_of,
            vec![Wanted::Text {
                text: "van,der".into(),
                mode: TextMatch::StartsWith
            }]
        );
    }
}
