//! Trail entries as FHIR R4 `AuditEvent` resources, after IHE Basic Audit Log Patterns
//! (BALP): a RESTful interaction's type and subtype, the requesting agents (client or
//! node, the person acted for, the organisation), the observing node as source, and the
//! patient as an entity, named by its pseudonym (never a BSN).

use serde_json::{json, Value};
use zorgmesh_protocol::audit::{AuditAction, AuditEntry, AuditOutcome};
use zorgmesh_protocol::claims::PurposeOfUse;

/// The identifier system of a patient key (the mesh pseudonym, lower-case hex).
pub const PATIENT_KEY_SYSTEM: &str = "https://zorgmesh.nl/fhir/NamingSystem/patient-key";
/// The code system of the trail's own action codes.
pub const ACTION_SYSTEM: &str = "https://zorgmesh.nl/fhir/CodeSystem/audit-action";
/// The identifier system of a registered API client.
pub const CLIENT_SYSTEM: &str = "https://zorgmesh.nl/fhir/NamingSystem/client-id";
/// The identifier system of a mesh node (its certificate's name).
pub const NODE_SYSTEM: &str = "https://zorgmesh.nl/fhir/NamingSystem/node";
/// The URA (organisation register) identifier system.
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const REST: &str = "http://hl7.org/fhir/restful-interaction";

/// The action's code in [`ACTION_SYSTEM`].
pub fn action_code(action: AuditAction) -> &'static str {
    match action {
        AuditAction::Read => "read",
        AuditAction::Search => "search",
        AuditAction::History => "history",
        AuditAction::Everything => "everything",
        AuditAction::Dossier => "dossier",
        AuditAction::PullServed => "pull-served",
        AuditAction::PullMade => "pull-made",
        AuditAction::ConsentDecision => "consent-decision",
        AuditAction::BreakTheGlass => "break-the-glass",
        AuditAction::AuthenticationFailed => "authentication-failed",
        AuditAction::Write => "write",
    }
}

/// The action named by its [`action_code`].
pub fn action_of_code(code: &str) -> Option<AuditAction> {
    ALL_ACTIONS.into_iter().find(|a| action_code(*a) == code)
}

/// Every action.
pub const ALL_ACTIONS: [AuditAction; 11] = [
    AuditAction::Read,
    AuditAction::Search,
    AuditAction::History,
    AuditAction::Everything,
    AuditAction::Dossier,
    AuditAction::PullServed,
    AuditAction::PullMade,
    AuditAction::ConsentDecision,
    AuditAction::BreakTheGlass,
    AuditAction::AuthenticationFailed,
    AuditAction::Write,
];

/// The event type and the RESTful subtype (BALP) of an action.
fn event_type(action: AuditAction) -> (Value, Option<Value>) {
    let rest = json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"});
    let interaction = |code: &str| Some(json!({"system": REST, "code": code}));
    match action {
        AuditAction::Read => (rest, interaction("read")),
        AuditAction::Search => (rest, interaction("search-type")),
        AuditAction::History => (rest, interaction("history-instance")),
        AuditAction::Everything | AuditAction::Dossier => (rest, interaction("operation")),
        AuditAction::Write => (rest, interaction("update")),
        AuditAction::PullServed => (
            json!({"system": DCM, "code": "110106", "display": "Export"}),
            None,
        ),
        AuditAction::PullMade => (
            json!({"system": DCM, "code": "110107", "display": "Import"}),
            None,
        ),
        AuditAction::AuthenticationFailed => (
            json!({"system": DCM, "code": "110114", "display": "User Authentication"}),
            Some(json!({"system": DCM, "code": "110122", "display": "Login"})),
        ),
        AuditAction::ConsentDecision | AuditAction::BreakTheGlass => (
            json!({"system": DCM, "code": "110113", "display": "Security Alert"}),
            None,
        ),
    }
}

/// The v3 PurposeOfUse code of a purpose.
pub fn purpose_code(purpose: PurposeOfUse) -> (&'static str, &'static str) {
    match purpose {
        PurposeOfUse::Treatment => ("TREAT", "treatment"),
        PurposeOfUse::Emergency => ("ETREAT", "emergency treatment"),
        PurposeOfUse::PatientSelfAccess => ("PATRQT", "patient requested"),
        PurposeOfUse::Research => ("HRESCH", "healthcare research"),
        PurposeOfUse::Compliance => ("HCOMPL", "health compliance"),
    }
}

fn millis_to_instant(at_ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The entry as an `AuditEvent` observed by `node`.
pub fn audit_event(node: &str, entry: &AuditEntry) -> Value {
    let record = &entry.record;
    let (kind, subtype) = event_type(record.action);
    let mut subtypes = vec![json!({"system": ACTION_SYSTEM, "code": action_code(record.action)})];
    subtypes.extend(subtype);
    let action = match record.action {
        AuditAction::Write => "U",
        AuditAction::ConsentDecision
        | AuditAction::BreakTheGlass
        | AuditAction::AuthenticationFailed => "E",
        _ => "R",
    };
    let outcome = match record.outcome {
        AuditOutcome::Success => "0",
        AuditOutcome::Denied => "4",
        AuditOutcome::Failed => "8",
    };
    let actor_system = if matches!(record.action, AuditAction::PullServed) {
        NODE_SYSTEM
    } else {
        CLIENT_SYSTEM
    };
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
        "who": {"identifier": {"system": actor_system, "value": record.actor}},
        "requestor": record.person.is_none(),
    })];
    if let Some(person) = &record.person {
        let (system, value) = person.id.split_once('|').unwrap_or(("", &person.id));
        let mut agent = json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": {"identifier": {"system": system, "value": value}},
            "requestor": true,
        });
        if !person.name.is_empty() {
            agent["name"] = json!(person.name);
            agent["who"]["display"] = json!(person.name);
        }
        if !person.role.is_empty() {
            agent["role"] = json!([{"text": person.role}]);
        }
        agents.push(agent);
    }
    if !record.organisation.is_empty() {
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV", "display": "healthcare provider"}]},
            "who": {"identifier": {"system": URA_SYSTEM, "value": record.organisation}},
            "requestor": false,
        }));
    }
    let mut entities = Vec::new();
    if let Some(patient) = &record.patient {
        entities.push(json!({
            "what": {"identifier": {"system": PATIENT_KEY_SYSTEM, "value": patient.to_hex()}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    if !record.what.is_empty() {
        entities.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
            "description": record.what,
        }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("{node}-{}", entry.sequence),
        "type": kind,
        "subtype": subtypes,
        "action": action,
        "recorded": millis_to_instant(record.at_ms),
        "outcome": outcome,
        "agent": agents,
        "source": {
            "observer": {"identifier": {"system": NODE_SYSTEM, "value": node}, "display": node},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
    });
    if !entities.is_empty() {
        event["entity"] = json!(entities);
    }
    if !record.detail.is_empty() {
        event["outcomeDesc"] = json!(record.detail);
    }
    if let Some(purpose) = record.purpose {
        let (code, display) = purpose_code(purpose);
        event["purposeOfEvent"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code, "display": display}]}]);
    }
    event
}
