//! Reading the privacy Consents other holders keep: when the index says that another
//! holder of a patient this node holds keeps a privacy Consent it has not read (or not
//! since that holder's entry changed), this node asks that holder for it over the data
//! plane and keeps the copy. Until it has read it, the holder withholds the patient's data
//! from every other organisation (fail closed, see [`super::known_consent`]), so a consent
//! recorded anywhere is enforced here from the moment this node's index shows it.
//!
//! Triggered by the mesh as batches with such entries arrive, retried every
//! [`RETRY_INTERVAL`] while a holder does not answer, and checked for every held patient
//! every [`FULL_ROUND`] (and at start), which covers snapshots and late holders.

use crate::data_plane::DataPlane;
use crate::fhir::FhirService;
use crate::mesh::Mesh;
use crate::storage::ConsentCopy;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use zorgmesh_protocol::locator::category;
use zorgmesh_protocol::PatientKey;

/// Patients the mesh may queue for a check.
pub const NUDGE_QUEUE: usize = 4096;
/// Retry of holders that did not answer.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// A check of every held patient.
pub const FULL_ROUND: Duration = Duration::from_secs(30);
/// Patients checked per step (the rest wait for the next).
const STEP: usize = 256;

/// Reads what `patient`'s other holders keep and this node has not read; the number read.
pub async fn sync_patient(
    mesh: &Mesh,
    data_plane: &DataPlane,
    fhir: &FhirService,
    patient: PatientKey,
) -> Result<usize, String> {
    let storage = fhir.storage();
    if storage
        .patients_with_key(&patient)
        .map_err(|e| e.to_string())?
        .is_empty()
    {
        return Ok(0);
    }
    let copies = storage
        .consent_copies(&patient)
        .map_err(|e| e.to_string())?;
    let mut read = 0;
    let mut failures = Vec::new();
    for holder in mesh.holders(&patient).map_err(|e| e.to_string())? {
        if holder.info.node == mesh.own()
            || holder.entry.retracted
            || holder.entry.categories & category::CONSENT == 0
            || copies
                .get(&holder.info.name)
                .is_some_and(|c| c.entry_updated_at_ms >= holder.entry.updated_at_ms)
        {
            continue;
        }
        let fetched = async {
            let address = holder
                .data_address
                .as_deref()
                .ok_or("no data-plane address known")?;
            let addr = crate::data_plane::resolve_address(address)
                .await
                .map_err(|e| e.to_string())?;
            data_plane
                .fetch_consent_records(holder.info.node, &holder.info.name, addr, patient)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match fetched {
            Ok(consents) => {
                tracing::info!(holder = %holder.info.name, consents = consents.len(), "read another holder's consent records");
                storage
                    .store_consent_copy(
                        &patient,
                        &holder.info.name,
                        &ConsentCopy {
                            entry_updated_at_ms: holder.entry.updated_at_ms,
                            consents,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                read += 1;
            }
            Err(e) => failures.push(format!("{}: {e}", holder.info.name)),
        }
    }
    if failures.is_empty() {
        Ok(read)
    } else {
        Err(failures.join("; "))
    }
}

/// Runs until `shutdown`.
pub async fn run(
    mesh: Arc<Mesh>,
    data_plane: DataPlane,
    fhir: FhirService,
    mut nudges: mpsc::Receiver<PatientKey>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: BTreeSet<PatientKey> = BTreeSet::new();
    let mut failed: BTreeSet<PatientKey> = BTreeSet::new();
    let mut full = tokio::time::interval(FULL_ROUND);
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(patient) = nudges.recv() => {
                    pending.insert(patient);
                    while pending.len() < NUDGE_QUEUE {
                        match nudges.try_recv() {
                            Ok(more) => { pending.insert(more); }
                            Err(_) => break,
                        }
                    }
                }
                _ = full.tick() => match fhir.storage().held_patient_keys() {
                    Ok(keys) => pending.extend(keys),
                    Err(e) => tracing::error!(error = %e, "cannot list the held patients for the consent check"),
                },
                _ = retry.tick(), if !failed.is_empty() => pending.append(&mut failed),
            }
        }
        let step: Vec<PatientKey> = pending.iter().take(STEP).copied().collect();
        for patient in step {
            pending.remove(&patient);
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = sync_patient(&mesh, &data_plane, &fhir, patient).await {
                tracing::warn!(error = %e, "a holder's consent records could not be read yet; its patient's data stays here until they are");
                failed.insert(patient);
            }
        }
    }
}
