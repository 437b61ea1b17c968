//! Errors of the FHIR API. Every error reaches the client as an OperationOutcome with the
//! status code that fits.

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
}

impl FhirError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
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
        operation_outcome("error", self.code, &self.diagnostics)
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

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}
