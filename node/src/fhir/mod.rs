//! The FHIR R4 JSON API at `/fhir`: CRUD with versions, search, transaction and batch
//! Bundles, `$everything` and the mesh-wide `$dossier` operation.
//!
//! Data flow of a write: [`api`] parses and checks the request → [`service::FhirService`]
//! plans the write in a [`crate::storage::WriteTransaction`] → storage commits it atomically
//! and durably → the patient keys whose data changed go to [`crate::publishing`], which
//! batches, signs and gossips their locator entries.

pub mod access;
pub mod api;
pub mod bundle;
pub mod fhirpath_patch;
pub mod listener;
pub mod outcome;
pub mod resource;
pub mod search;
pub mod service;
pub mod validation;

pub use outcome::FhirError;
pub use service::FhirService;
