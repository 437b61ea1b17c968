//! Consent decisions, as the national Generic Function Consent orders them: more specific
//! beats less specific (an individual organisation beats a category; a specific purpose
//! beats none; specific data beats all data), and an objection beats a permit of equal
//! specificity. With no rule that applies, the network's default decides (opt-in, as Mitz:
//! nothing flows without a permit; or opt-out). Break-the-glass (purpose emergency, with a
//! reason) overrides an opt-in default where the network's policy allows it, and an explicit
//! objection only where the policy says so too.
//!
//! Sans-IO and pure: the holder evaluates [`decide`] per data category before anything
//! leaves it.

use crate::claims::PurposeOfUse;

/// A kind of care organisation, as the network CA certifies it.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    bincode::Encode,
    bincode::Decode,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OrganisationCategory {
    /// Tag 0.
    Hospital,
    /// Tag 1.
    GeneralPractice,
    /// Tag 2.
    Pharmacy,
    /// Tag 3.
    MentalHealth,
    /// Tag 4.
    Laboratory,
    /// Tag 5: home care, nursing homes.
    Care,
    /// Tag 6.
    #[default]
    Other,
}

impl OrganisationCategory {
    /// Every category.
    pub const ALL: [OrganisationCategory; 7] = [
        OrganisationCategory::Hospital,
        OrganisationCategory::GeneralPractice,
        OrganisationCategory::Pharmacy,
        OrganisationCategory::MentalHealth,
        OrganisationCategory::Laboratory,
        OrganisationCategory::Care,
        OrganisationCategory::Other,
    ];

    /// Its name in certificates, configs and FHIR codes.
    pub fn as_str(self) -> &'static str {
        match self {
            OrganisationCategory::Hospital => "hospital",
            OrganisationCategory::GeneralPractice => "general-practice",
            OrganisationCategory::Pharmacy => "pharmacy",
            OrganisationCategory::MentalHealth => "mental-health",
            OrganisationCategory::Laboratory => "laboratory",
            OrganisationCategory::Care => "care",
            OrganisationCategory::Other => "other",
        }
    }
}

impl std::str::FromStr for OrganisationCategory {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "organisation category {text:?} is not one of {}",
                    Self::ALL.map(|c| c.as_str()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for OrganisationCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom a rule is about, on one side (the organisation that would see the data, or the one
/// that holds it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum Party {
    /// Tag 0: every organisation.
    Any,
    /// Tag 1: organisations of a category.
    Category(OrganisationCategory),
    /// Tag 2: one organisation, by URA.
    Organisation(String),
}

impl Party {
    fn matches(&self, ura: &str, category: OrganisationCategory) -> bool {
        match self {
            Party::Any => true,
            Party::Category(c) => *c == category,
            Party::Organisation(u) => u == ura,
        }
    }
    fn specificity(&self) -> u8 {
        match self {
            Party::Any => 0,
            Party::Category(_) => 1,
            Party::Organisation(_) => 2,
        }
    }
}

/// Permit or objection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum Provision {
    /// Tag 0.
    Permit,
    /// Tag 1: an objection.
    Deny,
}

/// One consent rule of a patient (from a FHIR `Consent`).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ConsentRule {
    /// Which record it came from (for the audit trail: the rule that decided).
    pub id: String,
    pub provision: Provision,
    /// Who would see the data.
    pub data_user: Party,
    /// Who holds it.
    pub data_holder: Party,
    /// For which purpose; `None`: any.
    pub purpose: Option<PurposeOfUse>,
    /// Which data categories (bits of `locator::category`); `None`: all data.
    pub categories: Option<u16>,
    /// In force from (ms since the epoch), if bounded.
    pub valid_from_ms: Option<u64>,
    /// In force until (inclusive), if bounded.
    pub valid_until_ms: Option<u64>,
}

/// What is asked: one data category of one holder, by one organisation, for one purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentQuestion<'a> {
    pub data_user_ura: &'a str,
    pub data_user_category: OrganisationCategory,
    pub holder_ura: &'a str,
    pub holder_category: OrganisationCategory,
    pub purpose: PurposeOfUse,
    /// One bit of `locator::category`.
    pub category: u16,
    pub now_ms: u64,
}

/// The network's default when no rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum DefaultPolicy {
    /// Tag 0: nothing flows without a permit (as Mitz).
    OptIn,
    /// Tag 1: everything flows unless objected to.
    OptOut,
}

/// The network's break-the-glass policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct BreakGlassPolicy {
    /// Whether an emergency may override an opt-in default at all.
    pub allowed: bool,
    /// Whether it may also override a patient's explicit objection.
    pub overrides_objection: bool,
}

/// Why the decision fell as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ground {
    /// This rule, the most specific that applies.
    Rule(String),
    /// No rule applies: the network default.
    Default(DefaultPolicy),
    /// An emergency overrode what would have been a denial (named inside).
    BreakTheGlass(Box<Ground>),
}

/// The decision and its ground.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub permit: bool,
    pub ground: Ground,
}

impl ConsentRule {
    fn applies(&self, q: &ConsentQuestion<'_>) -> bool {
        let in_force = self.valid_from_ms.is_none_or(|from| q.now_ms >= from)
            && self.valid_until_ms.is_none_or(|until| q.now_ms <= until);
        // An emergency is care: a rule about treatment covers it too.
        let purpose = match self.purpose {
            None => true,
            Some(p) => {
                p == q.purpose
                    || (p == PurposeOfUse::Treatment && q.purpose == PurposeOfUse::Emergency)
            }
        };
        in_force
            && purpose
            && self.categories.is_none_or(|mask| mask & q.category != 0)
            && self
                .data_user
                .matches(q.data_user_ura, q.data_user_category)
            && self.data_holder.matches(q.holder_ura, q.holder_category)
    }

    /// How specific the rule is, compared in this order: the data user (organisation >
    /// category > any), the holder (the same), the purpose (given > none), the data
    /// (categories > all).
    fn specificity(&self) -> (u8, u8, u8, u8) {
        (
            self.data_user.specificity(),
            self.data_holder.specificity(),
            u8::from(self.purpose.is_some()),
            u8::from(self.categories.is_some()),
        )
    }
}

/// Decides one question under a patient's rules, the network default and the
/// break-the-glass policy.
pub fn decide(
    rules: &[ConsentRule],
    question: &ConsentQuestion<'_>,
    default: DefaultPolicy,
    break_glass: BreakGlassPolicy,
) -> Verdict {
    // The most specific rules that apply; among equals an objection wins.
    let deciding = rules.iter().filter(|r| r.applies(question)).max_by(|a, b| {
        a.specificity()
            .cmp(&b.specificity())
            .then_with(|| {
                let deny = |r: &ConsentRule| u8::from(r.provision == Provision::Deny);
                deny(a).cmp(&deny(b))
            })
            // Deterministic among identical rules: the smallest id.
            .then_with(|| b.id.cmp(&a.id))
    });
    let verdict = match deciding {
        Some(rule) => Verdict {
            permit: rule.provision == Provision::Permit,
            ground: Ground::Rule(rule.id.clone()),
        },
        None => Verdict {
            permit: default == DefaultPolicy::OptOut,
            ground: Ground::Default(default),
        },
    };
    if verdict.permit || question.purpose != PurposeOfUse::Emergency || !break_glass.allowed {
        return verdict;
    }
    let overridable = match &verdict.ground {
        Ground::Default(_) => true,
        Ground::Rule(_) => break_glass.overrides_objection,
        Ground::BreakTheGlass(_) => false,
    };
    if overridable {
        Verdict {
            permit: true,
            ground: Ground::BreakTheGlass(Box::new(verdict.ground)),
        }
    } else {
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locator::category;
    use OrganisationCategory::*;

    const NOW: u64 = 1_767_225_600_000;
    const DAY: u64 = 86_400_000;

    fn rule(id: &str, provision: Provision, data_user: Party) -> ConsentRule {
        ConsentRule {
            id: id.into(),
            provision,
            data_user,
            data_holder: Party::Any,
            purpose: None,
            categories: None,
            valid_from_ms: None,
            valid_until_ms: None,
        }
    }

    fn question(purpose: PurposeOfUse, category: u16) -> ConsentQuestion<'static> {
        ConsentQuestion {
            data_user_ura: "00001111", // a hospital
            data_user_category: Hospital,
            holder_ura: "00002222", // a GP practice
            holder_category: GeneralPractice,
            purpose,
            category,
            now_ms: NOW,
        }
    }

    const NO_GLASS: BreakGlassPolicy = BreakGlassPolicy {
        allowed: false,
        overrides_objection: false,
    };
    const GLASS: BreakGlassPolicy = BreakGlassPolicy {
        allowed: true,
        overrides_objection: false,
    };
    const GLASS_OVER_OBJECTION: BreakGlassPolicy = BreakGlassPolicy {
        allowed: true,
        overrides_objection: true,
    };

    fn permit(id: &str) -> Verdict {
        Verdict {
            permit: true,
            ground: Ground::Rule(id.into()),
        }
    }
    fn deny(id: &str) -> Verdict {
        Verdict {
            permit: false,
            ground: Ground::Rule(id.into()),
        }
    }

    #[test]
    fn decisions_follow_the_generic_function_consent() {
        use Provision::{Deny, Permit};
        use PurposeOfUse::*;
        let hospitals = || Party::Category(Hospital);
        let this_hospital = || Party::Organisation("00001111".into());
        let other_hospital = || Party::Organisation("00009999".into());
        let with = |mut r: ConsentRule, f: &dyn Fn(&mut ConsentRule)| {
            f(&mut r);
            r
        };
        let obs = category::OBSERVATIONS;
        let meds = category::MEDICATION;
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Vec<ConsentRule>,
            ConsentQuestion,
            DefaultPolicy,
            BreakGlassPolicy,
            Verdict,
        )> = vec![
            (
                "a permit",
                vec![rule("p", Permit, Party::Any)],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("p"),
            ),
            (
                "an objection",
                vec![rule("o", Deny, Party::Any)],
                question(Treatment, obs),
                DefaultPolicy::OptOut,
                NO_GLASS,
                deny("o"),
            ),
            (
                "opt-in, no record",
                vec![],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                Verdict {
                    permit: false,
                    ground: Ground::Default(DefaultPolicy::OptIn),
                },
            ),
            (
                "opt-out, no record",
                vec![],
                question(Treatment, obs),
                DefaultPolicy::OptOut,
                NO_GLASS,
                Verdict {
                    permit: true,
                    ground: Ground::Default(DefaultPolicy::OptOut),
                },
            ),
            (
                "a category permit with an individual objection",
                vec![
                    rule("cat", Permit, hospitals()),
                    rule("ind", Deny, this_hospital()),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                deny("ind"),
            ),
            (
                "a category objection with an individual permit",
                vec![
                    rule("cat", Deny, hospitals()),
                    rule("ind", Permit, this_hospital()),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("ind"),
            ),
            (
                "an objection for another hospital does not apply",
                vec![
                    rule("cat", Permit, hospitals()),
                    rule("other", Deny, other_hospital()),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("cat"),
            ),
            (
                "an objection beats a permit of equal specificity",
                vec![
                    rule("a-permit", Permit, hospitals()),
                    rule("b-deny", Deny, hospitals()),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptOut,
                NO_GLASS,
                deny("b-deny"),
            ),
            (
                "a purpose beats none",
                vec![
                    rule("all", Deny, Party::Any),
                    with(rule("research", Permit, Party::Any), &|r| {
                        r.purpose = Some(Research)
                    }),
                ],
                question(Research, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("research"),
            ),
            (
                "a purpose rule does not cover another purpose",
                vec![with(rule("research", Permit, Party::Any), &|r| {
                    r.purpose = Some(Research)
                })],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                Verdict {
                    permit: false,
                    ground: Ground::Default(DefaultPolicy::OptIn),
                },
            ),
            (
                "specific data beats all data (the objection covers medication only)",
                vec![
                    rule("all", Permit, Party::Any),
                    with(rule("no-meds", Deny, Party::Any), &|r| {
                        r.categories = Some(meds)
                    }),
                ],
                question(Treatment, meds),
                DefaultPolicy::OptIn,
                NO_GLASS,
                deny("no-meds"),
            ),
            (
                "... and the other data still flows",
                vec![
                    rule("all", Permit, Party::Any),
                    with(rule("no-meds", Deny, Party::Any), &|r| {
                        r.categories = Some(meds)
                    }),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("all"),
            ),
            (
                "the organisation outranks the purpose",
                vec![
                    with(rule("hospitals-treatment", Deny, hospitals()), &|r| {
                        r.purpose = Some(Treatment)
                    }),
                    rule("this-hospital", Permit, this_hospital()),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("this-hospital"),
            ),
            (
                "a holder rule: no GP data to anyone",
                vec![
                    rule("all", Permit, Party::Any),
                    with(rule("no-gp", Deny, Party::Any), &|r| {
                        r.data_holder = Party::Category(GeneralPractice)
                    }),
                ],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                deny("no-gp"),
            ),
            (
                "an expired permit",
                vec![with(rule("old", Permit, Party::Any), &|r| {
                    r.valid_until_ms = Some(NOW - DAY)
                })],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                Verdict {
                    permit: false,
                    ground: Ground::Default(DefaultPolicy::OptIn),
                },
            ),
            (
                "a permit not yet in force",
                vec![with(rule("later", Permit, Party::Any), &|r| {
                    r.valid_from_ms = Some(NOW + DAY)
                })],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                Verdict {
                    permit: false,
                    ground: Ground::Default(DefaultPolicy::OptIn),
                },
            ),
            (
                "a permit in force today",
                vec![with(rule("now", Permit, Party::Any), &|r| {
                    r.valid_from_ms = Some(NOW - DAY);
                    r.valid_until_ms = Some(NOW + DAY)
                })],
                question(Treatment, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("now"),
            ),
            (
                "break-the-glass overrides an opt-in default",
                vec![],
                question(Emergency, obs),
                DefaultPolicy::OptIn,
                GLASS,
                Verdict {
                    permit: true,
                    ground: Ground::BreakTheGlass(Box::new(Ground::Default(DefaultPolicy::OptIn))),
                },
            ),
            (
                "break-the-glass refused by policy",
                vec![],
                question(Emergency, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                Verdict {
                    permit: false,
                    ground: Ground::Default(DefaultPolicy::OptIn),
                },
            ),
            (
                "break-the-glass does not override an objection ...",
                vec![rule("o", Deny, Party::Any)],
                question(Emergency, obs),
                DefaultPolicy::OptIn,
                GLASS,
                deny("o"),
            ),
            (
                "... unless the policy says so",
                vec![rule("o", Deny, Party::Any)],
                question(Emergency, obs),
                DefaultPolicy::OptIn,
                GLASS_OVER_OBJECTION,
                Verdict {
                    permit: true,
                    ground: Ground::BreakTheGlass(Box::new(Ground::Rule("o".into()))),
                },
            ),
            (
                "an emergency is care: a treatment permit covers it",
                vec![with(rule("t", Permit, Party::Any), &|r| {
                    r.purpose = Some(Treatment)
                })],
                question(Emergency, obs),
                DefaultPolicy::OptIn,
                NO_GLASS,
                permit("t"),
            ),
            (
                "a treatment permit does not cover research",
                vec![with(rule("t", Permit, Party::Any), &|r| {
                    r.purpose = Some(Treatment)
                })],
                question(Research, obs),
                DefaultPolicy::OptOut,
                NO_GLASS,
                Verdict {
                    permit: true,
                    ground: Ground::Default(DefaultPolicy::OptOut),
                },
            ),
        ];
        for (name, rules, q, default, glass, expected) in cases {
            assert_eq!(decide(&rules, &q, default, glass), expected, "{name}");
        }
    }

    #[test]
    fn the_decision_does_not_depend_on_the_order_of_the_rules() {
        use Provision::{Deny, Permit};
        let rules = vec![
            rule("a", Permit, Party::Category(Hospital)),
            rule("b", Deny, Party::Category(Hospital)),
            rule("c", Permit, Party::Any),
            rule("d", Deny, Party::Organisation("00009999".into())),
        ];
        let q = question(PurposeOfUse::Treatment, category::OBSERVATIONS);
        let expected = decide(&rules, &q, DefaultPolicy::OptIn, NO_GLASS);
        assert_eq!(expected, deny("b"));
        let mut reversed = rules.clone();
        reversed.reverse();
        assert_eq!(
            decide(&reversed, &q, DefaultPolicy::OptIn, NO_GLASS),
            expected
        );
        let mut rotated = rules;
        rotated.rotate_left(2);
        assert_eq!(
            decide(&rotated, &q, DefaultPolicy::OptIn, NO_GLASS),
            expected
        );
    }
}
