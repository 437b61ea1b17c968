//! Errors of the FHIR API. Every error reaches the client as an OperationOutcome with the
//! status code that fits.

use super::validation::{self, Issue};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Media type of every response body.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A failed FHIR interaction.
#[derive(Debug, Clone)]
pub struct FhirError {
    /// HTTP status.
    pub status: StatusCode,
    /// FHIR issue type (`invalid`, `not-found`, `processing`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub diagnostics: String,
    /// The problems of an invalid resource, each with its path (empty for other errors):
    /// the OperationOutcome then has one issue per problem.
    pub issues: Vec<Issue>,
}

impl FhirError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
            issues: Vec::new(),
        }
    }

    /// 422: the resource is not valid R4; `issues` (its errors first) say where and why.
    pub fn invalid_resource(resource_type: &str, issues: Vec<Issue>) -> Self {
        let errors: Vec<&Issue> = validation::errors(&issues).collect();
        let first = errors
            .first()
            .map_or_else(String::new, |issue| format!(": {issue}"));
        let more = match errors.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Self {
            issues,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "processing",
                format!("the {resource_type} is not valid FHIR R4{first}{more}"),
            )
        }
    }

    /// This error about the resource of entry `index` of a Bundle: its diagnostics and
    /// issue paths say so (`Bundle.entry[2].resource.gender`).
    pub fn in_bundle_entry(self, index: usize) -> Self {
        let prefix = format!("Bundle.entry[{index}].resource");
        let issues = self
            .issues
            .into_iter()
            .map(|issue| {
                let rest = issue
                    .path
                    .find(['.', '['])
                    .map_or("", |at| &issue.path[at..]);
                Issue {
                    path: format!("{prefix}{rest}"),
                    ..issue
                }
            })
            .collect();
        Self {
            diagnostics: format!("Bundle.entry[{index}]: {}", self.diagnostics),
            issues,
            ..self
        }
    }
    /// 400 invalid.
    pub fn invalid(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
    }
    /// 404 not-found.
    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", diagnostics)
    }
    /// 410 deleted.
    pub fn gone(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "deleted", diagnostics)
    }
    /// 500 exception.
    pub fn internal(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", diagnostics)
    }
    /// 501 not-supported.
    pub fn not_supported(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not-supported", diagnostics)
    }

    /// The OperationOutcome resource.
    pub fn to_outcome(&self) -> Value {
        if self.issues.is_empty() {
            operation_outcome("error", self.code, &self.diagnostics)
        } else {
            issues_outcome(&self.issues)
        }
    }
}

impl std::fmt::Display for FhirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.diagnostics
        )
    }
}

impl From<crate::storage::StorageError> for FhirError {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::error!(error = %e, "storage failure");
        FhirError::internal(format!("storage failure: {e}"))
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, FHIR_JSON)],
            self.to_outcome().to_string(),
        )
            .into_response()
    }
}

/// An OperationOutcome with one issue per validation issue (`expression` holds its path);
/// none is an `information` issue that says the resource is valid.
pub fn issues_outcome(issues: &[Issue]) -> Value {
    let issue: Vec<Value> = if issues.is_empty() {
        vec![json!({"severity": "information", "code": "informational",
            "diagnostics": "no problems found: the resource is valid FHIR R4"})]
    } else {
        issues
            .iter()
            .map(|i| {
                json!({"severity": i.severity, "code": i.code, "diagnostics": i.message,
                    "expression": [i.path]})
            })
            .collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": issue})
}

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}
