//! The evaluator service: answers `Evaluate` requests on the data plane with this node's
//! key share, within a per-requester budget, and audits every evaluation count.
//!
//! In: blinded elements from certified nodes (the requester's identity comes from its
//! mutual-TLS certificate). Out: a partial evaluation with its DLEQ proof, or `Busy` when
//! the requester is over its budget. The audit (per requester: keys granted, keys refused,
//! requests, last time) is kept in storage and shown in `/admin/status`; every refusal is
//! logged as a warning, so an enumeration attempt is slow, visible and throttled.

use crate::config::EvaluatorConfig;
use crate::storage::{EvaluationAudit, Storage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zorgmesh_protocol::fetch::FetchErrorCode;
use zorgmesh_protocol::oprf::{
    self, EvaluationBudget, EvaluationRequest, KeyShare, OprfError, PartialEvaluation,
};
use zorgmesh_protocol::NodeId;

/// Requesters whose budgets are tracked at once (certified nodes: the network's size).
const MAX_TRACKED_REQUESTERS: usize = 100_000;

/// Counters of the evaluator.
#[derive(Debug, Default)]
pub struct EvaluatorStats {
    /// Keys evaluated for other nodes.
    pub evaluated: AtomicU64,
    /// Keys refused for being over budget.
    pub refused: AtomicU64,
}

/// This node's evaluator.
pub struct Evaluator {
    share: KeyShare,
    config: EvaluatorConfig,
    budgets: Mutex<HashMap<NodeId, EvaluationBudget>>,
    storage: Arc<Storage>,
    /// Counters.
    pub stats: EvaluatorStats,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("index", &self.share.index())
            .finish_non_exhaustive()
    }
}

impl Evaluator {
    /// An evaluator with `share`, auditing into `storage`.
    pub fn new(share: KeyShare, config: EvaluatorConfig, storage: Arc<Storage>) -> Self {
        Self {
            share,
            config,
            budgets: Mutex::new(HashMap::new()),
            storage,
            stats: EvaluatorStats::default(),
        }
    }

    /// Evaluates for this node itself (no budget).
    pub fn evaluate_local(
        &self,
        request: &EvaluationRequest,
    ) -> Result<PartialEvaluation, OprfError> {
        oprf::evaluate(&self.share, request, &mut rand::rngs::OsRng)
    }

    /// Evaluates for `requester` if its budget allows.
    pub fn evaluate_for(
        &self,
        requester: NodeId,
        requester_name: &str,
        request: &EvaluationRequest,
        now_ms: u64,
    ) -> Result<PartialEvaluation, (FetchErrorCode, String)> {
        let keys = request.elements.len() as u64;
        let verdict = {
            let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
            if budgets.len() >= MAX_TRACKED_REQUESTERS && !budgets.contains_key(&requester) {
                budgets.clear();
            }
            let budget = budgets.entry(requester).or_insert_with(|| {
                // The one-time allowance survives restarts: what was granted is audited.
                let granted = self
                    .storage
                    .evaluation_audit_of(&requester)
                    .ok()
                    .flatten()
                    .map_or(0, |a| a.granted);
                EvaluationBudget::new(
                    self.config.initial_load.saturating_sub(granted),
                    self.config.keys_per_second,
                    self.config.burst,
                    now_ms,
                )
            });
            budget.take(keys, now_ms)
        };
        let (granted, refused) = if verdict.is_ok() {
            (keys, 0)
        } else {
            (0, keys)
        };
        if let Err(e) =
            self.storage
                .record_evaluations(&requester, requester_name, granted, refused, now_ms)
        {
            tracing::error!(error = %e, "cannot write the evaluation audit");
        }
        if let Err(wait_ms) = verdict {
            self.stats.refused.fetch_add(keys, Ordering::Relaxed);
            tracing::warn!(requester = %requester_name, keys, "patient-key request over the requester's rate limit: refused");
            let when = if wait_ms == u64::MAX {
                format!(
                    "requests above {} keys are never granted once the initial allowance is used",
                    self.config.burst
                )
            } else {
                format!("retry in {wait_ms} ms")
            };
            return Err((
                FetchErrorCode::Busy,
                format!(
                    "rate limit: {keys} patient keys refused for {requester_name} ({} keys/s sustained); {when}",
                    self.config.keys_per_second
                ),
            ));
        }
        self.stats.evaluated.fetch_add(keys, Ordering::Relaxed);
        tracing::info!(requester = %requester_name, keys, "evaluated patient keys");
        oprf::evaluate(&self.share, request, &mut rand::rngs::OsRng)
            .map_err(|e| (FetchErrorCode::BadRequest, e.to_string()))
    }

    /// The audit rows, one per requester.
    pub fn audit(&self) -> Vec<EvaluationAudit> {
        self.storage.evaluation_audit().unwrap_or_default()
    }
}
