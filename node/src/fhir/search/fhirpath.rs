//! A FHIRPath evaluator for the subset of the language that the FHIR R4 search parameter
//! definitions use, over resources as `serde_json::Value`: member paths (choice elements
//! `value[x]` included), `|` unions, `where(...)`, `resolve()`, `is` / `as` / `as()` /
//! `ofType()`, `exists()`, `first()`, `[n]`, `=` / `!=`, `and` / `or`, string, boolean and
//! integer literals.
//!
//! Why not a crate: the FHIRPath crates we evaluated either evaluate over their own typed R4
//! model (`helios-fhirpath` over `helios-fhir`, whose generated model adds minutes to every
//! clean build and needs each stored resource converted first), are not open source
//! (`ferrobridge-fhirpath`, BUSL), or are early (`fhirpathrs` 0.1). The definitions need a
//! small, fixed subset; `parameters::tests` parses every definition's expression and the
//! corpus tests evaluate every one on real resources.
//!
//! Sans-IO and bounded: parsing refuses expressions over [`MAX_EXPRESSION_BYTES`] or nested
//! deeper than [`MAX_DEPTH`]; evaluation allocates in proportion to the resource.

use serde_json::Value;
use std::fmt;

/// The longest expression [`Expression::parse`] accepts.
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;
/// The deepest nesting [`Expression::parse`] accepts.
pub const MAX_DEPTH: usize = 32;
/// The most steps (`.name`, `.f()`, `[n]`) one path may take.
pub const MAX_PATH_STEPS: usize = 64;

/// The type names a choice element's JSON name may end in (`valueQuantity`,
/// `onsetDateTime`): every R4 type allowed in an open `[x]` element. Primitive types are
/// written with an upper-case first letter in JSON and lower-case in FHIRPath.
const CHOICE_TYPES: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Date",
    "DateTime",
    "Decimal",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Id",
    "Identifier",
    "Instant",
    "Integer",
    "Markdown",
    "Meta",
    "Money",
    "Oid",
    "ParameterDefinition",
    "Period",
    "PositiveInt",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "String",
    "Time",
    "Timing",
    "TriggerDefinition",
    "UnsignedInt",
    "Uri",
    "Url",
    "UsageContext",
    "Uuid",
];

/// The FHIRPath name of a choice suffix: `DateTime` → `dateTime`, `Quantity` → `Quantity`.
fn fhirpath_type_name(suffix: &'static str) -> &'static str {
    match suffix {
        "Base64Binary" => "base64Binary",
        "Boolean" => "boolean",
        "Canonical" => "canonical",
        "Code" => "code",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Decimal" => "decimal",
        "Id" => "id",
        "Instant" => "instant",
        "Integer" => "integer",
        "Markdown" => "markdown",
        "Oid" => "oid",
        "PositiveInt" => "positiveInt",
        "String" => "string",
        "Time" => "time",
        "UnsignedInt" => "unsignedInt",
        "Uri" => "uri",
        "Url" => "url",
        "Uuid" => "uuid",
        other => other,
    }
}

/// Why an expression cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath expression {expression:?}: {message} (at byte {at})")]
pub struct ParseError {
    /// The expression (cut to 200 bytes).
    pub expression: String,
    /// What is wrong.
    pub message: String,
    /// Where.
    pub at: usize,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// The focus (`$this`): the resource at the top, the item inside `where`.
    This,
    Member(Box<Node>, String),
    Index(Box<Node>, usize),
    Call(Box<Node>, Function),
    Is(Box<Node>, String),
    As(Box<Node>, String),
    Union(Vec<Node>),
    Equals {
        left: Box<Node>,
        right: Box<Node>,
        negated: bool,
    },
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Text(String),
    Boolean(bool),
    Integer(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Function {
    Where(Box<Node>),
    Resolve,
    Exists,
    First,
    Not,
    OfType(String),
}

/// One item of a result collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// An element of the resource, with its FHIR type when the JSON says it (a choice
    /// element's suffix).
    Element {
        /// The JSON value.
        value: &'a Value,
        /// Its FHIRPath type name, when known.
        type_name: Option<&'static str>,
    },
    /// What `resolve()` knows of a reference's target: its resource type.
    Resolved(String),
    /// A boolean.
    Boolean(bool),
    /// A string literal.
    Text(String),
    /// An integer literal.
    Integer(i64),
}

impl<'a> Item<'a> {
    /// The JSON value of an element item.
    pub fn element(&self) -> Option<(&'a Value, Option<&'static str>)> {
        match self {
            Item::Element { value, type_name } => Some((value, *type_name)),
            _ => None,
        }
    }
}

impl Expression {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(ParseError {
                expression: text.chars().take(200).collect(),
                message: format!("longer than {MAX_EXPRESSION_BYTES} bytes"),
                at: 0,
            });
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            text,
            tokens,
            at: 0,
            depth: 0,
        };
        let root = parser.expression()?;
        if let Some(token) = parser.tokens.get(parser.at) {
            return Err(parser.error_at(token.at, format!("unexpected {}", token.kind)));
        }
        Ok(Self { root })
    }

    /// Evaluates the expression on `resource` (a resource's JSON).
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        let focus = vec![Item::Element {
            value: resource,
            type_name: None,
        }];
        let context = Context { resource };
        context.eval(&self.root, &focus)
    }

    /// The branches of a top-level union (the expression itself when it is none), each as
    /// an expression of its own with the resource type its path starts from, if any.
    /// Definitions shared by many resource types (`clinical-patient`) are unions of one
    /// branch per type; a node keeps, per type, only the branches that can apply to it.
    pub fn branches(&self) -> Vec<(Option<String>, Expression)> {
        let nodes = match &self.root {
            Node::Union(nodes) => nodes.clone(),
            other => vec![other.clone()],
        };
        nodes
            .into_iter()
            .map(|node| (root_type(&node), Expression { root: node }))
            .collect()
    }

    /// Joins expressions into one union.
    pub fn union(expressions: Vec<Expression>) -> Expression {
        let mut nodes: Vec<Node> = expressions.into_iter().map(|e| e.root).collect();
        if nodes.len() == 1 {
            return Expression {
                root: nodes.remove(0),
            };
        }
        Expression {
            root: Node::Union(nodes),
        }
    }
}

/// The resource type a path starts from (`Observation` in `Observation.code`).
fn root_type(node: &Node) -> Option<String> {
    match node {
        Node::Member(inner, name) if **inner == Node::This => name
            .starts_with(|c: char| c.is_ascii_uppercase())
            .then(|| name.clone()),
        Node::Member(inner, _)
        | Node::Index(inner, _)
        | Node::Call(inner, _)
        | Node::Is(inner, _)
        | Node::As(inner, _) => root_type(inner),
        Node::Union(nodes) => {
            let types: Vec<Option<String>> = nodes.iter().map(root_type).collect();
            match types.first() {
                Some(first) if types.iter().all(|t| t == first) => first.clone(),
                _ => None,
            }
        }
        Node::Equals { left, .. } | Node::And(left, _) | Node::Or(left, _) => root_type(left),
        _ => None,
    }
}

struct Context<'a> {
    resource: &'a Value,
}

fn is_resource_type_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
}

impl<'a> Context<'a> {
    fn eval(&self, node: &Node, focus: &[Item<'a>]) -> Vec<Item<'a>> {
        match node {
            Node::This => focus.to_vec(),
            Node::Member(inner, name) => {
                let input = self.eval(inner, focus);
                let mut out = Vec::new();
                for item in &input {
                    let Item::Element { value, .. } = item else {
                        continue;
                    };
                    // A path's first name, when a type: the focus itself if it is that type.
                    if **inner == Node::This && is_resource_type_name(name) {
                        let own = value.get("resourceType").and_then(Value::as_str);
                        if own == Some(name.as_str())
                            || (own.is_some() && (name == "Resource" || name == "DomainResource"))
                        {
                            out.push(item.clone());
                        }
                        continue;
                    }
                    member(value, name, &mut out);
                }
                out
            }
            Node::Index(inner, index) => self
                .eval(inner, focus)
                .into_iter()
                .nth(*index)
                .into_iter()
                .collect(),
            Node::Call(inner, function) => {
                let input = self.eval(inner, focus);
                self.call(function, input)
            }
            Node::Is(inner, type_name) => {
                let input = self.eval(inner, focus);
                match input.as_slice() {
                    [item] => vec![Item::Boolean(is_type(item, type_name))],
                    _ => Vec::new(),
                }
            }
            Node::As(inner, type_name) => self
                .eval(inner, focus)
                .into_iter()
                .filter(|item| is_type(item, type_name))
                .collect(),
            Node::Union(nodes) => {
                let mut out: Vec<Item<'a>> = Vec::new();
                for node in nodes {
                    for item in self.eval(node, focus) {
                        if !out.contains(&item) {
                            out.push(item);
                        }
                    }
                }
                out
            }
            Node::Equals {
                left,
                right,
                negated,
            } => {
                let left = self.eval(left, focus);
                let right = self.eval(right, focus);
                if left.is_empty() || right.is_empty() {
                    return Vec::new();
                }
                let equal = left.len() == right.len()
                    && left.iter().zip(&right).all(|(a, b)| items_equal(a, b));
                vec![Item::Boolean(equal != *negated)]
            }
            Node::And(left, right) => {
                let left = truth(&self.eval(left, focus));
                let right = truth(&self.eval(right, focus));
                match (left, right) {
                    (Some(false), _) | (_, Some(false)) => vec![Item::Boolean(false)],
                    (Some(true), Some(true)) => vec![Item::Boolean(true)],
                    _ => Vec::new(),
                }
            }
            Node::Or(left, right) => {
                let left = truth(&self.eval(left, focus));
                let right = truth(&self.eval(right, focus));
                match (left, right) {
                    (Some(true), _) | (_, Some(true)) => vec![Item::Boolean(true)],
                    (Some(false), Some(false)) => vec![Item::Boolean(false)],
                    _ => Vec::new(),
                }
            }
            Node::Text(text) => vec![Item::Text(text.clone())],
            Node::Boolean(b) => vec![Item::Boolean(*b)],
            Node::Integer(i) => vec![Item::Integer(*i)],
        }
    }

    fn call(&self, function: &Function, input: Vec<Item<'a>>) -> Vec<Item<'a>> {
        match function {
            Function::Where(criteria) => input
                .into_iter()
                .filter(|item| {
                    truth(&self.eval(criteria, std::slice::from_ref(item))) == Some(true)
                })
                .collect(),
            Function::Resolve => input
                .iter()
                .filter_map(|item| self.resolve(item))
                .map(Item::Resolved)
                .collect(),
            Function::Exists => vec![Item::Boolean(!input.is_empty())],
            Function::First => input.into_iter().take(1).collect(),
            Function::Not => match truth(&input) {
                Some(b) => vec![Item::Boolean(!b)],
                None => Vec::new(),
            },
            Function::OfType(type_name) => input
                .into_iter()
                .filter(|item| is_type(item, type_name))
                .collect(),
        }
    }

    /// The resource type a reference points at: from `Reference.reference` (relative,
    /// absolute or `#contained`), else from `Reference.type`; a canonical or URI the same
    /// way.
    fn resolve(&self, item: &Item<'a>) -> Option<String> {
        let Item::Element { value, .. } = item else {
            return None;
        };
        let (reference, declared) = match value {
            Value::String(text) => (Some(text.as_str()), None),
            Value::Object(map) => (
                map.get("reference").and_then(Value::as_str),
                map.get("type").and_then(Value::as_str),
            ),
            _ => return None,
        };
        if let Some(reference) = reference {
            if let Some(local) = reference.strip_prefix('#') {
                return self
                    .resource
                    .get("contained")
                    .and_then(Value::as_array)
                    .and_then(|contained| {
                        contained
                            .iter()
                            .find(|r| r.get("id").and_then(Value::as_str) == Some(local))
                    })
                    .and_then(|r| r.get("resourceType"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            if let Some((resource_type, _)) = reference_target(reference) {
                return Some(resource_type.to_owned());
            }
        }
        declared
            .filter(|t| is_resource_type_name(t))
            .map(str::to_owned)
    }
}

/// The resource type and id a literal reference names: `Patient/1`, `Patient/1/_history/2`
/// or an absolute URL ending so. `None` for anything else (`urn:uuid:...`, `#x`).
pub fn reference_target(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
        parts.truncate(parts.len() - 2);
    }
    let [.., resource_type, id] = parts.as_slice() else {
        return None;
    };
    let known = crate::fhir::resource::RESOURCE_TYPES
        .binary_search(resource_type)
        .is_ok();
    (known && !id.is_empty()).then_some((*resource_type, *id))
}

fn member<'a>(value: &'a Value, name: &str, out: &mut Vec<Item<'a>>) {
    let Value::Object(map) = value else {
        return;
    };
    let push =
        |value: &'a Value, type_name: Option<&'static str>, out: &mut Vec<Item<'a>>| match value {
            Value::Array(items) => {
                out.extend(items.iter().map(|value| Item::Element { value, type_name }))
            }
            Value::Null => {}
            value => out.push(Item::Element { value, type_name }),
        };
    if let Some(found) = map.get(name) {
        push(found, None, out);
        return;
    }
    // A choice element: `value` is `valueQuantity`, `valueString`, ...
    for (key, found) in map {
        if let Some(suffix) = key.strip_prefix(name) {
            if let Ok(i) = CHOICE_TYPES.binary_search(&suffix) {
                push(found, Some(fhirpath_type_name(CHOICE_TYPES[i])), out);
            }
        }
    }
}

fn is_type(item: &Item<'_>, type_name: &str) -> bool {
    let bare = type_name
        .strip_prefix("FHIR.")
        .or_else(|| type_name.strip_prefix("System."))
        .unwrap_or(type_name);
    match item {
        Item::Resolved(resource_type) => resource_type == bare,
        Item::Element { value, type_name } => match type_name {
            Some(known) => known.eq_ignore_ascii_case(bare),
            None => value.get("resourceType").and_then(Value::as_str) == Some(bare),
        },
        Item::Boolean(_) => bare.eq_ignore_ascii_case("boolean"),
        Item::Text(_) => bare.eq_ignore_ascii_case("string"),
        Item::Integer(_) => bare.eq_ignore_ascii_case("integer"),
    }
}

fn items_equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    fn scalar<'x>(item: &'x Item<'_>) -> Option<Scalar<'x>> {
        match item {
            Item::Element { value, .. } => match value {
                Value::String(s) => Some(Scalar::Text(s)),
                Value::Bool(b) => Some(Scalar::Boolean(*b)),
                Value::Number(n) => n.as_f64().map(Scalar::Number),
                _ => None,
            },
            Item::Text(s) => Some(Scalar::Text(s)),
            Item::Boolean(b) => Some(Scalar::Boolean(*b)),
            Item::Integer(i) => Some(Scalar::Number(*i as f64)),
            Item::Resolved(_) => None,
        }
    }
    match (scalar(a), scalar(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[derive(PartialEq)]
enum Scalar<'x> {
    Text(&'x str),
    Boolean(bool),
    Number(f64),
}

/// A collection as a boolean: one boolean item is its value, empty is unknown, any other
/// single item is true (FHIRPath's singleton evaluation).
fn truth(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [] => None,
        [Item::Boolean(b)] => Some(*b),
        [Item::Element {
            value: Value::Bool(b),
            ..
        }] => Some(*b),
        [_] => Some(true),
        _ => None,
    }
}

// ---- lexing and parsing ----

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Name(String),
    Text(String),
    Integer(i64),
    Symbol(&'static str),
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Name(n) => write!(f, "name {n:?}"),
            TokenKind::Text(t) => write!(f, "string '{t}'"),
            TokenKind::Integer(i) => write!(f, "number {i}"),
            TokenKind::Symbol(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    at: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let error = |at: usize, message: &str| ParseError {
        expression: text.chars().take(200).collect(),
        message: message.to_owned(),
        at,
    };
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'.' | b'(' | b')' | b'[' | b']' | b'|' | b'=' | b',' => {
                let symbol = match c {
                    b'.' => ".",
                    b'(' => "(",
                    b')' => ")",
                    b'[' => "[",
                    b']' => "]",
                    b'|' => "|",
                    b'=' => "=",
                    _ => ",",
                };
                tokens.push(Token {
                    kind: TokenKind::Symbol(symbol),
                    at: start,
                });
                i += 1;
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                tokens.push(Token {
                    kind: TokenKind::Symbol("!="),
                    at: start,
                });
                i += 2;
            }
            b'\'' => {
                i += 1;
                let mut out = String::new();
                loop {
                    let Some(&c) = bytes.get(i) else {
                        return Err(error(start, "a string is not closed"));
                    };
                    match c {
                        b'\'' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            let escaped = match bytes.get(i + 1) {
                                Some(b'\'') => '\'',
                                Some(b'\\') => '\\',
                                Some(b'/') => '/',
                                Some(b'"') => '"',
                                Some(b'n') => '\n',
                                Some(b't') => '\t',
                                Some(b'r') => '\r',
                                _ => return Err(error(i, "unknown escape in a string")),
                            };
                            out.push(escaped);
                            i += 2;
                        }
                        _ => {
                            let rest = &text[i..];
                            let ch = rest.chars().next().expect("inside the text");
                            out.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                tokens.push(Token {
                    kind: TokenKind::Text(out),
                    at: start,
                });
            }
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let value = text[start..i]
                    .parse()
                    .map_err(|_| error(start, "a number too large"))?;
                tokens.push(Token {
                    kind: TokenKind::Integer(value),
                    at: start,
                });
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                tokens.push(Token {
                    kind: TokenKind::Name(text[start..i].to_owned()),
                    at: start,
                });
            }
            _ => {
                return Err(error(
                    start,
                    "a character FHIRPath search expressions do not use",
                ))
            }
        }
    }
    Ok(tokens)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error_at(&self, at: usize, message: String) -> ParseError {
        ParseError {
            expression: self.text.chars().take(200).collect(),
            message,
            at,
        }
    }

    fn error_here(&self, message: &str) -> ParseError {
        let at = self
            .tokens
            .get(self.at)
            .map_or(self.text.len(), |token| token.at);
        self.error_at(at, message.to_owned())
    }

    fn peek(&self) -> Option<&TokenKind> {
        self.tokens.get(self.at).map(|t| &t.kind)
    }

    fn peek_symbol(&self, symbol: &str) -> bool {
        matches!(self.peek(), Some(TokenKind::Symbol(s)) if *s == symbol)
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(TokenKind::Name(n)) if n == word)
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), ParseError> {
        if self.peek_symbol(symbol) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error_here(&format!("expected {symbol:?}")))
        }
    }

    fn name(&mut self) -> Result<String, ParseError> {
        match self.peek().cloned() {
            Some(TokenKind::Name(n)) => {
                self.at += 1;
                Ok(n)
            }
            _ => Err(self.error_here("expected a name")),
        }
    }

    /// A type specifier: `Quantity`, `FHIR.Quantity`.
    fn type_name(&mut self) -> Result<String, ParseError> {
        let mut name = self.name()?;
        while self.peek_symbol(".") {
            self.at += 1;
            name = format!("{name}.{}", self.name()?);
        }
        Ok(name)
    }

    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(&format!("nested deeper than {MAX_DEPTH}")));
        }
        let result = parse(self);
        self.depth -= 1;
        result
    }

    // expression := and ('or' and)*
    fn expression(&mut self) -> Result<Node, ParseError> {
        self.nested(|p| {
            let mut left = p.and()?;
            while p.peek_word("or") {
                p.at += 1;
                let right = p.and()?;
                left = Node::Or(Box::new(left), Box::new(right));
            }
            Ok(left)
        })
    }

    // and := equality ('and' equality)*
    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.equality()?;
        while self.peek_word("and") {
            self.at += 1;
            let right = self.equality()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    // equality := union (('=' | '!=') union)?
    fn equality(&mut self) -> Result<Node, ParseError> {
        let left = self.union()?;
        let negated = if self.peek_symbol("=") {
            false
        } else if self.peek_symbol("!=") {
            true
        } else {
            return Ok(left);
        };
        self.at += 1;
        let right = self.union()?;
        Ok(Node::Equals {
            left: Box::new(left),
            right: Box::new(right),
            negated,
        })
    }

    // union := typed ('|' typed)*
    fn union(&mut self) -> Result<Node, ParseError> {
        let first = self.typed()?;
        if !self.peek_symbol("|") {
            return Ok(first);
        }
        let mut nodes = vec![first];
        while self.peek_symbol("|") {
            self.at += 1;
            nodes.push(self.typed()?);
        }
        Ok(Node::Union(nodes))
    }

    // typed := postfix (('is' | 'as') type)*
    fn typed(&mut self) -> Result<Node, ParseError> {
        let mut node = self.postfix()?;
        loop {
            if self.peek_word("is") {
                self.at += 1;
                node = Node::Is(Box::new(node), self.type_name()?);
            } else if self.peek_word("as") {
                self.at += 1;
                node = Node::As(Box::new(node), self.type_name()?);
            } else {
                return Ok(node);
            }
        }
    }

    // postfix := primary ('.' invocation | '[' integer ']')*
    fn postfix(&mut self) -> Result<Node, ParseError> {
        let mut node = self.primary()?;
        let mut steps = 0;
        loop {
            if self.peek_symbol(".") || self.peek_symbol("[") {
                steps += 1;
                if steps > MAX_PATH_STEPS {
                    return Err(self.error_here(&format!("a path of over {MAX_PATH_STEPS} steps")));
                }
            }
            if self.peek_symbol(".") {
                self.at += 1;
                node = self.invocation(node)?;
            } else if self.peek_symbol("[") {
                self.at += 1;
                let index = match self.peek() {
                    Some(TokenKind::Integer(i)) if *i >= 0 => *i as usize,
                    _ => return Err(self.error_here("expected an index")),
                };
                self.at += 1;
                self.expect_symbol("]")?;
                node = Node::Index(Box::new(node), index);
            } else {
                return Ok(node);
            }
        }
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        match self.peek().cloned() {
            Some(TokenKind::Symbol("(")) => {
                self.at += 1;
                let inner = self.expression()?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            Some(TokenKind::Text(text)) => {
                self.at += 1;
                Ok(Node::Text(text))
            }
            Some(TokenKind::Integer(i)) => {
                self.at += 1;
                Ok(Node::Integer(i))
            }
            Some(TokenKind::Name(name)) if name == "true" || name == "false" => {
                self.at += 1;
                Ok(Node::Boolean(name == "true"))
            }
            Some(TokenKind::Name(name)) if name == "$this" => {
                self.at += 1;
                Ok(Node::This)
            }
            Some(TokenKind::Name(_)) => self.invocation(Node::This),
            _ => Err(self.error_here("expected a path, a literal or '('")),
        }
    }

    /// A member name or a function call applied to `target`.
    fn invocation(&mut self, target: Node) -> Result<Node, ParseError> {
        let at = self.tokens.get(self.at).map_or(0, |t| t.at);
        let name = self.name()?;
        if !self.peek_symbol("(") {
            return Ok(Node::Member(Box::new(target), name));
        }
        self.at += 1;
        let target = Box::new(target);
        let node = match name.as_str() {
            "where" => {
                let criteria = self.expression()?;
                Node::Call(target, Function::Where(Box::new(criteria)))
            }
            "resolve" => Node::Call(target, Function::Resolve),
            "exists" => Node::Call(target, Function::Exists),
            "first" => Node::Call(target, Function::First),
            "not" => Node::Call(target, Function::Not),
            "as" => Node::As(target, self.type_name()?),
            "ofType" => Node::Call(target, Function::OfType(self.type_name()?)),
            "is" => Node::Is(target, self.type_name()?),
            other => {
                return Err(self.error_at(at, format!("the function {other}() is not supported")))
            }
        };
        self.expect_symbol(")")?;
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values<'a>(expression: &str, resource: &'a Value) -> Vec<&'a Value> {
        Expression::parse(expression)
            .unwrap()
            .evaluate(resource)
            .into_iter()
            .filter_map(|item| item.element().map(|(value, _)| value))
            .collect()
    }

    #[test]
    fn choice_types_are_sorted_for_binary_search() {
        assert!(CHOICE_TYPES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn paths_flatten_arrays_and_start_at_the_resource_type() {
        let patient = json!({"resourceType": "Patient", "name": [
            {"given": ["Ada", "Augusta"]}, {"given": ["Lovelace"]}]});
        assert_eq!(
            values("Patient.name.given", &patient),
            vec!["Ada", "Augusta", "Lovelace"]
        );
        assert!(values("Observation.code", &patient).is_empty());
        assert_eq!(values("Resource.name", &patient).len(), 2);
        assert_eq!(values("Patient.name.given[1]", &patient), vec!["Augusta"]);
    }

    #[test]
    fn choice_elements_carry_their_type() {
        let observation = json!({"resourceType": "Observation",
            "valueQuantity": {"value": 5}, "effectiveDateTime": "2020"});
        let expression = Expression::parse("(Observation.value as Quantity)").unwrap();
        assert_eq!(expression.evaluate(&observation).len(), 1);
        let expression = Expression::parse("(Observation.value as CodeableConcept)").unwrap();
        assert!(expression.evaluate(&observation).is_empty());
        assert_eq!(
            values("Observation.effective.as(dateTime)", &observation),
            vec!["2020"]
        );
        // A name that only starts like a choice element is not one.
        let questionnaire = json!({"resourceType": "Questionnaire",
            "item": [{"answerValueSet": "http://x"}]});
        assert!(values("Questionnaire.item.answer", &questionnaire).is_empty());
    }

    #[test]
    fn resolve_reads_the_target_type_from_the_reference() {
        let account = json!({"resourceType": "Account", "subject": [
            {"reference": "Patient/1"},
            {"reference": "http://example.org/fhir/Device/2/_history/3"},
            {"reference": "#p"},
            {"reference": "urn:uuid:abc", "type": "Patient"}],
            "contained": [{"resourceType": "Patient", "id": "p"}]});
        let found = values("Account.subject.where(resolve() is Patient)", &account);
        assert_eq!(found.len(), 3);
        let devices = values("Account.subject.where(resolve() is Device)", &account);
        assert_eq!(devices.len(), 1);
    }

    #[test]
    fn where_equality_exists_and_unions() {
        let organization = json!({"resourceType": "OrganizationAffiliation", "telecom": [
            {"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}]});
        assert_eq!(
            values(
                "OrganizationAffiliation.telecom.where(system='email')",
                &organization
            )
            .len(),
            1
        );
        let patient = json!({"resourceType": "Patient", "deceasedBoolean": false});
        let deceased =
            Expression::parse("Patient.deceased.exists() and Patient.deceased != false").unwrap();
        assert_eq!(deceased.evaluate(&patient), vec![Item::Boolean(false)]);
        let patient = json!({"resourceType": "Patient", "deceasedDateTime": "2020"});
        assert_eq!(deceased.evaluate(&patient), vec![Item::Boolean(true)]);
        let union = Expression::parse("Patient.name | Patient.telecom").unwrap();
        let branches = union.branches();
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[0].0.as_deref(), Some("Patient"));
    }

    #[test]
    fn bad_expressions_are_refused_with_a_position() {
        for bad in [
            "Patient.name.",
            "Patient.name.matches('x')",
            "Patient.name[",
            "'open",
            "Patient # name",
            "(((((((((((((((((((((((((((((((((((a)))))))))))))))))))))))))))))))))",
        ] {
            assert!(Expression::parse(bad).is_err(), "{bad}");
        }
        let long = "a.".repeat(MAX_EXPRESSION_BYTES);
        assert!(Expression::parse(&long).is_err());
        let chain = format!("a{}", ".b".repeat(MAX_PATH_STEPS + 1));
        assert!(Expression::parse(&chain).is_err());
    }
}
