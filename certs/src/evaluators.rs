//! Dealing the network's threshold OPRF key: the CA draws the key, splits it t-of-n over the
//! named evaluator nodes, signs the public part (the evaluator set) and forgets the key.

use crate::CertificateAuthority;
use rand::rngs::OsRng;
use zorgmesh_protocol::oprf::{
    self, EvaluatorEntry, EvaluatorSetBody, KeyShare, SignedEvaluatorSet, SUITE_ID,
};

/// The outcome of a dealing: the signed set and one share per evaluator (by name).
#[derive(Debug)]
pub struct EvaluatorKeys {
    /// The CA-signed evaluator set (public).
    pub set: SignedEvaluatorSet,
    /// Each evaluator's secret share, in evaluator order.
    pub shares: Vec<(String, KeyShare)>,
}

/// Deals a fresh key for `evaluators` (node names, in index order 1..=n) with `threshold`.
pub fn deal_evaluator_keys(
    ca: &CertificateAuthority,
    evaluators: &[String],
    threshold: u16,
    now_ms: u64,
) -> Result<EvaluatorKeys, String> {
    for name in evaluators {
        crate::validate_label("evaluator name", name)?;
    }
    let n = u16::try_from(evaluators.len()).map_err(|_| "too many evaluators".to_owned())?;
    let (commitments, shares) = oprf::deal(threshold, n, &mut OsRng).map_err(|e| e.to_string())?;
    let body = EvaluatorSetBody {
        version: 1,
        network: ca.network().to_owned(),
        suite: SUITE_ID.to_owned(),
        threshold,
        commitments,
        evaluators: evaluators
            .iter()
            .zip(1u16..)
            .map(|(name, index)| EvaluatorEntry {
                index,
                name: name.clone(),
            })
            .collect(),
        issued_at_ms: now_ms,
    };
    // Checks distinct names and the threshold before anything is signed.
    oprf::EvaluatorSet::from_body(&body).map_err(|e| e.to_string())?;
    let set = SignedEvaluatorSet::sign(body, ca.key());
    Ok(EvaluatorKeys {
        set,
        shares: evaluators.iter().cloned().zip(shares).collect(),
    })
}
