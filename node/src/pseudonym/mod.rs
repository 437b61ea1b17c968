//! Patient keys on a node: the client side of the threshold OPRF, the evaluator service on
//! evaluator nodes, and the task that gives newly written Patients their keys.
//!
//! In: BSNs (from `$dossier` and from Patients waiting in storage). Out: patient keys, from
//! `t` verified partial evaluations of the evaluator nodes named in the CA-signed evaluator
//! set (see `zorgmesh_protocol::oprf`). Only blinded elements leave the node; the node keeps
//! the keys of its own patients (storage's key cache) so steady-state publishing asks
//! nothing.

pub mod evaluator;

use crate::data_plane::DataPlane;
use crate::mesh::Mesh;
use crate::publishing::Publisher;
use crate::storage::Storage;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::seq::SliceRandom;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zorgmesh_protocol::oprf::{
    self, BlindedBatch, EvaluationRequest, EvaluatorSet, KeyShare, PartialEvaluation,
    MAX_ELEMENTS_PER_REQUEST,
};
use zorgmesh_protocol::{Bsn, PatientKey};

/// Patients read from storage per round of the key deriver.
const DERIVE_BATCH: usize = 4 * MAX_ELEMENTS_PER_REQUEST;
/// Evaluation requests one derivation keeps in flight.
const REQUESTS_IN_FLIGHT: usize = 2;

/// Why patient keys could not be derived.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Fewer than `threshold` evaluators gave a verified answer.
    #[error("patient keys need {threshold} of the evaluators, {verified} answered correctly; missing: {}", describe(.missing))]
    EvaluatorsUnavailable {
        /// Partials needed.
        threshold: usize,
        /// Verified partials received.
        verified: usize,
        /// Each evaluator that failed, with the reason.
        missing: Vec<(String, String)>,
    },
    /// The OPRF itself failed (a bug or a bad input).
    #[error("OPRF: {0}")]
    Oprf(#[from] oprf::OprfError),
    /// A worker thread failed.
    #[error("internal: {0}")]
    Internal(String),
}

fn describe(missing: &[(String, String)]) -> String {
    missing
        .iter()
        .map(|(name, why)| format!("{name} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Counters of the key client.
#[derive(Debug, Default)]
pub struct KeyStats {
    /// Keys derived through the evaluators.
    pub derived: AtomicU64,
    /// Derivations that failed (fewer than t evaluators).
    pub failures: AtomicU64,
}

/// The OPRF client of a node.
pub struct PatientKeys {
    set: EvaluatorSet,
    own_name: String,
    own_share: Option<Arc<evaluator::Evaluator>>,
    mesh: Arc<Mesh>,
    data_plane: DataPlane,
    timeout: Duration,
    /// Counters.
    pub stats: KeyStats,
}

impl std::fmt::Debug for PatientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientKeys")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl PatientKeys {
    /// A client for `set`; `own_share` when this node is an evaluator itself.
    pub fn new(
        set: EvaluatorSet,
        own_name: String,
        own_share: Option<Arc<evaluator::Evaluator>>,
        mesh: Arc<Mesh>,
        data_plane: DataPlane,
        timeout: Duration,
    ) -> Self {
        Self {
            set,
            own_name,
            own_share,
            mesh,
            data_plane,
            timeout,
            stats: KeyStats::default(),
        }
    }

    /// The evaluator set.
    pub fn set(&self) -> &EvaluatorSet {
        &self.set
    }

    /// Derives the keys of `bsns` (in requests of at most 1024).
    pub async fn derive(&self, bsns: &[Bsn]) -> Result<BTreeMap<Bsn, PatientKey>, KeyError> {
        let unique: Vec<Bsn> = bsns
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Two requests in flight: while the evaluators work on one, this node blinds or
        // combines the other.
        let derived: Vec<Result<Vec<(Bsn, PatientKey)>, KeyError>> = futures::stream::iter(
            unique
                .chunks(MAX_ELEMENTS_PER_REQUEST)
                .map(<[Bsn]>::to_vec)
                .collect::<Vec<_>>(),
        )
        .map(|chunk| self.derive_chunk(chunk))
        .buffered(REQUESTS_IN_FLIGHT)
        .collect()
        .await;
        let mut keys = BTreeMap::new();
        for chunk in derived {
            keys.extend(chunk?);
        }
        Ok(keys)
    }

    async fn derive_chunk(&self, chunk: Vec<Bsn>) -> Result<Vec<(Bsn, PatientKey)>, KeyError> {
        // The group arithmetic runs on blocking threads, never on the async workers.
        let inputs: Vec<Vec<u8>> = chunk.iter().map(oprf::patient_input).collect();
        let batch = tokio::task::spawn_blocking(move || {
            BlindedBatch::blind(inputs, &mut rand::rngs::OsRng)
        })
        .await
        .map_err(|e| KeyError::Internal(e.to_string()))??;
        let derived = self.exchange(Arc::new(batch)).await.inspect_err(|_| {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        })?;
        self.stats
            .derived
            .fetch_add(derived.len() as u64, Ordering::Relaxed);
        Ok(chunk.into_iter().zip(derived).collect())
    }

    /// Asks evaluators (this node first when it is one, the others in random order) until
    /// `t` verified partials are in, at most `t` at a time.
    async fn exchange(&self, batch: Arc<BlindedBatch>) -> Result<Vec<PatientKey>, KeyError> {
        let request = batch.request();
        let threshold = self.set.threshold();
        let mut candidates: Vec<String> = self
            .set
            .evaluators()
            .map(|e| e.name.clone())
            .filter(|name| *name != self.own_name)
            .collect();
        candidates.shuffle(&mut rand::thread_rng());
        if self.own_share.is_some() && self.set.by_name(&self.own_name).is_some() {
            candidates.insert(0, self.own_name.clone());
        }
        let mut candidates = candidates.into_iter();
        let mut verified = Vec::new();
        let mut missing = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while verified.len() + in_flight.len() < threshold {
                let Some(name) = candidates.next() else { break };
                let request = &request;
                let batch = batch.clone();
                in_flight.push(async move {
                    let answer = tokio::time::timeout(self.timeout, self.ask(&name, request))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
                    // Proofs are checked as answers arrive, each on a blocking thread.
                    let verified = match answer {
                        Ok(answer) => {
                            let set = self.set.clone();
                            tokio::task::spawn_blocking(move || {
                                batch.verify(&set, &answer).map_err(|e| e.to_string())
                            })
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()))
                        }
                        Err(e) => Err(e),
                    };
                    (name, verified)
                });
            }
            let Some((name, answer)) = in_flight.next().await else {
                break;
            };
            match answer {
                Ok(partial) => verified.push(partial),
                Err(why) => {
                    tracing::warn!(evaluator = %name, error = %why, "evaluator failed a patient-key request");
                    missing.push((name, why));
                }
            }
            if verified.len() == threshold {
                break;
            }
        }
        if verified.len() < threshold {
            return Err(KeyError::EvaluatorsUnavailable {
                threshold,
                verified: verified.len(),
                missing,
            });
        }
        let set = self.set.clone();
        Ok(
            tokio::task::spawn_blocking(move || batch.combine(&set, &verified))
                .await
                .map_err(|e| KeyError::Internal(e.to_string()))??,
        )
    }

    async fn ask(
        &self,
        name: &str,
        request: &EvaluationRequest,
    ) -> Result<PartialEvaluation, String> {
        if name == self.own_name {
            if let Some(own) = &self.own_share {
                let (own, request) = (own.clone(), request.clone());
                return tokio::task::spawn_blocking(move || {
                    own.evaluate_local(&request).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            }
        }
        let (node, address) = self
            .mesh
            .peers()
            .into_iter()
            .find(|(_, peer, _)| peer == name)
            .map(|(node, _, address)| (node, address))
            .ok_or_else(|| {
                "no announcement of this evaluator has reached this node yet".to_owned()
            })?;
        let addr = crate::data_plane::resolve_address(&address)
            .await
            .map_err(|e| e.to_string())?;
        self.data_plane
            .evaluate(node, name, addr, request.clone())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Gives Patients waiting in storage their keys, in batches, and stages their locator
/// entries; retries with a growing pause (up to 10 s) while fewer than t evaluators answer.
pub async fn run_key_deriver(
    storage: Arc<Storage>,
    publisher: Publisher,
    keys: Arc<PatientKeys>,
    pending: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let waiting = match storage.pending_patient_keys(DERIVE_BATCH) {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::error!(error = %e, "cannot read Patients waiting for their keys");
                Vec::new()
            }
        };
        pending.store(waiting.len() as u64, Ordering::Relaxed);
        if waiting.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = storage.pending_keys_added() => continue,
                // A safety net: a write's notification may race with the scan above.
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
            }
        }
        let bsns: Vec<Bsn> = waiting.iter().map(|(_, bsn)| bsn.clone()).collect();
        let derived = tokio::select! {
            _ = shutdown.changed() => return,
            derived = keys.derive(&bsns) => derived,
        };
        match derived {
            Ok(map) => {
                pause = Duration::from_millis(100);
                match storage
                    .assign_patient_keys(crate::fhir::service::now_ms(), &waiting, &map)
                    .await
                {
                    Ok(dirty) => {
                        tracing::debug!(patients = waiting.len(), "patient keys assigned");
                        publisher.stage(dirty).await;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot store patient keys"),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, waiting = waiting.len(), retry_in = ?pause, "patient keys not derived; these Patients are not yet findable on the mesh");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Loads and checks the evaluator set and, on an evaluator, its share.
pub fn load_trust(
    config: &crate::config::NodeConfig,
    anchor: &zorgmesh_certs::TrustAnchor,
) -> anyhow::Result<(EvaluatorSet, Option<KeyShare>)> {
    use anyhow::Context;
    let path = &config.trust.evaluator_set;
    let signed = zorgmesh_certs::read_evaluator_set(path)?;
    let set = signed
        .verify(&anchor.public_key(), anchor.network())
        .with_context(|| format!("{} is not this network's evaluator set", path.display()))?;
    let share = match &config.trust.oprf_share {
        None => {
            if set.by_name(&config.name).is_some() {
                tracing::warn!(
                    "this node is named as an evaluator but trust.oprf_share is not set: it will not answer evaluation requests"
                );
            }
            None
        }
        Some(share_path) => {
            crate::at_rest::check_private_file(share_path)?;
            let share = zorgmesh_certs::read_key_share(share_path)?;
            let named = set.by_name(&config.name).map(|e| e.index);
            if named != Some(share.index()) || !share.matches(&set) {
                anyhow::bail!(
                    "{} is not the key share of evaluator {:?} in {}: the share must come from the same 'certs init' as the evaluator set",
                    share_path.display(),
                    config.name,
                    path.display()
                );
            }
            Some(share)
        }
    };
    Ok((set, share))
}
