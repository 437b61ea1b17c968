//! SMART App Launch v2 scopes: `system/Observation.rs`, `system/*.cruds`, `patient/*.rs`,
//! and the SMART v1 forms (`system/*.read`, `system/*.write`, `system/*.*`), which mean
//! `rs`, `cud` and `cruds`. One scope of the node's own: [`ADMIN_SCOPE`], for `/admin/*`.
//!
//! Pure: parsing, intersecting and checking scopes does no I/O.

use std::fmt;

/// The scope that opens the node's `/admin/*` endpoints.
pub const ADMIN_SCOPE: &str = "zorgmesh.admin";

/// Most scopes in one grant; more is an error, not a truncation.
pub const MAX_SCOPES: usize = 64;

/// Who a scope is about: every patient (a system client), one patient (a patient app), or
/// what a user may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    System,
    Patient,
    User,
}

impl Context {
    fn as_str(self) -> &'static str {
        match self {
            Context::System => "system",
            Context::Patient => "patient",
            Context::User => "user",
        }
    }
}

/// An interaction a scope permits: SMART v2's `c`, `r`, `u`, `d`, `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }
    /// The letter SMART v2 uses for it.
    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

/// The letters in the order SMART v2 requires them.
const ORDER: [Interaction; 5] = [
    Interaction::Create,
    Interaction::Read,
    Interaction::Update,
    Interaction::Delete,
    Interaction::Search,
];

/// One granted scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A resource scope: `<context>/<type or *>.<interactions>`.
    Resource {
        context: Context,
        /// `None` for `*`.
        resource_type: Option<String>,
        /// Bit set of [`Interaction`]s; never 0.
        interactions: u8,
    },
    /// [`ADMIN_SCOPE`].
    Admin,
}

/// Why a scope string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope {0:?} is not a SMART scope (<system|patient|user>/<type or *>.<cruds>) or {ADMIN_SCOPE}")]
    Malformed(String),
    #[error(
        "scope {0:?}: the interactions must be a non-empty subset of c, r, u, d, s in that order"
    )]
    Interactions(String),
    #[error("scope {0:?}: {1} is not a FHIR resource type this node serves")]
    UnknownType(String, String),
    #[error("scope {0:?}: search constraints (?param=value) are not supported")]
    Constrained(String),
    #[error("more than {MAX_SCOPES} scopes")]
    TooMany,
}

impl Scope {
    /// Parses one scope.
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        if text == ADMIN_SCOPE {
            return Ok(Scope::Admin);
        }
        if text.contains('?') {
            return Err(ScopeError::Constrained(text.to_owned()));
        }
        let malformed = || ScopeError::Malformed(text.to_owned());
        let (context, rest) = text.split_once('/').ok_or_else(malformed)?;
        let context = match context {
            "system" => Context::System,
            "patient" => Context::Patient,
            "user" => Context::User,
            _ => return Err(malformed()),
        };
        let (resource, interactions) = rest.split_once('.').ok_or_else(malformed)?;
        let resource_type = match resource {
            "*" => None,
            name if crate::fhir::resource::RESOURCE_TYPES.contains(&name) => Some(name.to_owned()),
            name if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) => {
                return Err(ScopeError::UnknownType(text.to_owned(), name.to_owned()))
            }
            _ => return Err(malformed()),
        };
        let interactions = match interactions {
            // SMART v1.
            "read" => Interaction::Read.bit() | Interaction::Search.bit(),
            "write" => {
                Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit()
            }
            "*" => 0b11111,
            letters => {
                parse_letters(letters).ok_or_else(|| ScopeError::Interactions(text.to_owned()))?
            }
        };
        Ok(Scope::Resource {
            context,
            resource_type,
            interactions,
        })
    }

    /// Whether this scope allows `interaction` on `resource_type` in `context`.
    pub fn allows(&self, context: Context, resource_type: &str, interaction: Interaction) -> bool {
        match self {
            Scope::Admin => false,
            Scope::Resource {
                context: own,
                resource_type: own_type,
                interactions,
            } => {
                *own == context
                    && own_type.as_deref().is_none_or(|t| t == resource_type)
                    && interactions & interaction.bit() != 0
            }
        }
    }

    /// The part of `self` that `limit` also grants, if any.
    fn within(&self, limit: &Scope) -> Option<Scope> {
        match (self, limit) {
            (Scope::Admin, Scope::Admin) => Some(Scope::Admin),
            (
                Scope::Resource {
                    context,
                    resource_type,
                    interactions,
                },
                Scope::Resource {
                    context: limit_context,
                    resource_type: limit_type,
                    interactions: limit_interactions,
                },
            ) if context == limit_context => {
                let resource_type = match (resource_type, limit_type) {
                    (_, None) => resource_type.clone(),
                    (None, Some(t)) => Some(t.clone()),
                    (Some(a), Some(b)) if a == b => Some(a.clone()),
                    _ => return None,
                };
                let interactions = interactions & limit_interactions;
                (interactions != 0).then_some(Scope::Resource {
                    context: *context,
                    resource_type,
                    interactions,
                })
            }
            _ => None,
        }
    }
}

fn parse_letters(letters: &str) -> Option<u8> {
    let mut bits = 0u8;
    let mut next = 0usize;
    for letter in letters.chars() {
        let position = ORDER[next..].iter().position(|i| i.letter() == letter)?;
        bits |= ORDER[next + position].bit();
        next += position + 1;
    }
    (bits != 0).then_some(bits)
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str(ADMIN_SCOPE),
            Scope::Resource {
                context,
                resource_type,
                interactions,
            } => {
                write!(
                    f,
                    "{}/{}.",
                    context.as_str(),
                    resource_type.as_deref().unwrap_or("*")
                )?;
                for interaction in ORDER {
                    if interactions & interaction.bit() != 0 {
                        write!(f, "{}", interaction.letter())?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A set of scopes, as granted to a client or carried by an access token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Parses a space-separated scope list (OAuth 2.0's `scope` parameter).
    pub fn parse(text: &str) -> Result<Scopes, ScopeError> {
        Self::from_list(text.split_ascii_whitespace())
    }

    /// Parses scopes one by one.
    pub fn from_list<'a>(list: impl IntoIterator<Item = &'a str>) -> Result<Scopes, ScopeError> {
        let mut scopes = Vec::new();
        for (i, text) in list.into_iter().enumerate() {
            if i == MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
            let scope = Scope::parse(text)?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(Scopes(scopes))
    }

    /// Whether any scope allows `interaction` on `resource_type` in `context`.
    pub fn allows(&self, context: Context, resource_type: &str, interaction: Interaction) -> bool {
        self.0
            .iter()
            .any(|s| s.allows(context, resource_type, interaction))
    }

    /// Whether [`ADMIN_SCOPE`] is among them.
    pub fn admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    /// What of `self` `limit` grants too: the scopes a token gets when a client asks for
    /// `self` and is registered for `limit`.
    pub fn within(&self, limit: &Scopes) -> Scopes {
        let mut granted = Vec::new();
        for wanted in &self.0 {
            for allowed in &limit.0 {
                if let Some(scope) = wanted.within(allowed) {
                    if !granted.contains(&scope) {
                        granted.push(scope);
                    }
                }
            }
        }
        Scopes(granted)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{scope}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    #[test]
    fn scopes_parse_as_smart_v2_and_v1_say() {
        let cases: &[(&str, Option<&str>)] = &[
            ("system/Observation.rs", Some("system/Observation.rs")),
            ("system/*.cruds", Some("system/*.cruds")),
            ("patient/*.rs", Some("patient/*.rs")),
            ("user/Patient.r", Some("user/Patient.r")),
            ("system/*.read", Some("system/*.rs")),
            ("system/*.write", Some("system/*.cud")),
            ("system/*.*", Some("system/*.cruds")),
            ("zorgmesh.admin", Some("zorgmesh.admin")),
            ("system/*.sr", None),
            ("system/*.", None),
            ("system/*.x", None),
            ("system/*.rr", None),
            ("system/Nonsense.rs", None),
            ("system/Observation.rs?category=laboratory", None),
            ("launch/patient", None),
            ("openid", None),
            ("system/.rs", None),
            ("group/*.rs", None),
        ];
        for (text, expected) in cases {
            let parsed = Scope::parse(text).ok().map(|s| s.to_string());
            assert_eq!(parsed.as_deref(), *expected, "{text}");
        }
    }

    #[test]
    fn a_scope_allows_exactly_its_context_type_and_interactions() {
        let scopes = Scopes::parse("system/Observation.rs patient/*.r").unwrap();
        let cases = [
            (Context::System, "Observation", Read, true),
            (Context::System, "Observation", Search, true),
            (Context::System, "Observation", Create, false),
            (Context::System, "Patient", Read, false),
            (Context::Patient, "Patient", Read, true),
            (Context::Patient, "Patient", Search, false),
            (Context::User, "Observation", Read, false),
        ];
        for (context, resource_type, interaction, expected) in cases {
            assert_eq!(
                scopes.allows(context, resource_type, interaction),
                expected,
                "{context:?} {resource_type} {interaction:?}"
            );
        }
        assert!(!scopes.admin());
        assert!(Scopes::parse("zorgmesh.admin").unwrap().admin());
    }

    #[test]
    fn a_grant_is_what_was_asked_for_within_what_is_registered() {
        let registered = Scopes::parse("system/*.rs system/Patient.cruds").unwrap();
        let cases = [
            ("system/*.rs", "system/*.rs system/Patient.rs"),
            ("system/Observation.r", "system/Observation.r"),
            ("system/*.cruds", "system/*.rs system/Patient.cruds"),
            ("system/Observation.c", ""),
            ("patient/*.rs", ""),
            ("zorgmesh.admin", ""),
        ];
        for (asked, granted) in cases {
            let got = Scopes::parse(asked).unwrap().within(&registered);
            assert_eq!(got.to_string(), granted, "asked {asked}");
        }
    }

    #[test]
    fn too_many_scopes_are_an_error() {
        let at_limit = vec!["system/*.rs"; MAX_SCOPES].join(" ");
        assert_eq!(Scopes::parse(&at_limit).unwrap().iter().count(), 1);
        let over = vec!["system/*.rs"; MAX_SCOPES + 1].join(" ");
        assert_eq!(Scopes::parse(&over), Err(ScopeError::TooMany));
    }
}
