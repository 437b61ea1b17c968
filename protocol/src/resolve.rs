//! Resolution planning: from an index lookup to per-holder fetches with deadlines, and a
//! report that names every holder that did not answer. A dossier is never silently
//! incomplete: every holder ends as `Answered`, `Failed` or `TimedOut`.

use crate::index::HolderLocation;
use crate::locator::NodeId;
use crate::patient::PatientKey;

/// Where a holder's fetch stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderState {
    /// The fetch is under way; it times out at `deadline_ms`.
    Pending {
        /// When the holder is given up on.
        deadline_ms: u64,
    },
    /// The holder answered with this many resources.
    Answered {
        /// Resources received.
        resources: usize,
        /// Time from start to answer (ms).
        elapsed_ms: u64,
    },
    /// The fetch failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// The holder did not answer before its deadline.
    TimedOut,
}

/// One holder in a plan.
#[derive(Clone, Debug)]
pub struct PlannedHolder {
    /// The holder as the index knows it.
    pub location: HolderLocation,
    /// Where its fetch stands.
    pub state: HolderState,
}

/// The sans-IO state of resolving one patient's dossier.
#[derive(Debug)]
pub struct ResolutionPlan {
    patient: PatientKey,
    started_at_ms: u64,
    holders: Vec<PlannedHolder>,
}

impl ResolutionPlan {
    /// Plans fetches from every holder, each with its own deadline.
    pub fn new(
        patient: PatientKey,
        holders: Vec<HolderLocation>,
        now_ms: u64,
        per_holder_timeout_ms: u64,
    ) -> Self {
        let holders = holders
            .into_iter()
            .map(|location| {
                let state = if location.data_address.is_some() {
                    HolderState::Pending {
                        deadline_ms: now_ms.saturating_add(per_holder_timeout_ms),
                    }
                } else {
                    HolderState::Failed {
                        reason: "no data-plane address known for this holder".into(),
                    }
                };
                PlannedHolder { location, state }
            })
            .collect();
        Self {
            patient,
            started_at_ms: now_ms,
            holders,
        }
    }

    /// The patient being resolved.
    pub fn patient(&self) -> PatientKey {
        self.patient
    }

    /// Holders still to fetch from.
    pub fn pending(&self) -> impl Iterator<Item = &HolderLocation> {
        self.holders
            .iter()
            .filter(|h| matches!(h.state, HolderState::Pending { .. }))
            .map(|h| &h.location)
    }

    fn pending_mut(&mut self, node: &NodeId) -> Option<&mut PlannedHolder> {
        self.holders.iter_mut().find(|h| {
            h.location.info.node == *node && matches!(h.state, HolderState::Pending { .. })
        })
    }

    /// Records a holder's answer. Late answers (after a timeout) are ignored.
    pub fn answered(&mut self, node: &NodeId, resources: usize, now_ms: u64) -> bool {
        let started = self.started_at_ms;
        match self.pending_mut(node) {
            Some(holder) => {
                holder.state = HolderState::Answered {
                    resources,
                    elapsed_ms: now_ms.saturating_sub(started),
                };
                true
            }
            None => false,
        }
    }

    /// Records a failed fetch.
    pub fn failed(&mut self, node: &NodeId, reason: String) {
        if let Some(holder) = self.pending_mut(node) {
            holder.state = HolderState::Failed { reason };
        }
    }

    /// Marks every pending holder whose deadline has passed as timed out and returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<NodeId> {
        let mut expired = Vec::new();
        for holder in &mut self.holders {
            if let HolderState::Pending { deadline_ms } = holder.state {
                if now_ms >= deadline_ms {
                    holder.state = HolderState::TimedOut;
                    expired.push(holder.location.info.node);
                }
            }
        }
        expired
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.holders
            .iter()
            .filter_map(|h| match h.state {
                HolderState::Pending { deadline_ms } => Some(deadline_ms),
                _ => None,
            })
            .min()
    }

    /// True when no holder is pending.
    pub fn is_finished(&self) -> bool {
        self.next_deadline().is_none()
    }

    /// Every holder and how its fetch ended (or stands).
    pub fn holders(&self) -> &[PlannedHolder] {
        &self.holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeRole, PublisherInfo};
    use crate::locator::LocatorEntry;

    fn holder(n: u8, address: Option<&str>) -> HolderLocation {
        let node = NodeId([n; 32]);
        HolderLocation {
            info: PublisherInfo {
                node,
                name: format!("node-{n}"),
                organisation_ura: format!("0000000{n}"),
                organisation_name: format!("Organisation {n}"),
                region: "noord".into(),
                role: NodeRole::Institution,
                valid_from_ms: 0,
                valid_until_ms: u64::MAX,
            },
            data_address: address.map(str::to_owned),
            entry: LocatorEntry {
                patient: PatientKey([9; 32]),
                holder: node,
                categories: 1,
                commitment: [0; 32],
                updated_at_ms: 0,
                retracted: false,
            },
        }
    }

    #[test]
    fn every_holder_ends_answered_failed_or_timed_out() {
        let mut plan = ResolutionPlan::new(
            PatientKey([9; 32]),
            vec![
                holder(1, Some("a:1")),
                holder(2, Some("b:1")),
                holder(3, None),
            ],
            1_000,
            500,
        );
        assert_eq!(plan.pending().count(), 2);
        assert_eq!(plan.next_deadline(), Some(1_500));
        assert!(plan.answered(&NodeId([1; 32]), 4, 1_100));
        assert!(!plan.is_finished());
        assert_eq!(plan.expire(1_499), Vec::<NodeId>::new());
        assert_eq!(plan.expire(1_500), vec![NodeId([2; 32])]);
        assert!(plan.is_finished());
        // A late answer does not count.
        assert!(!plan.answered(&NodeId([2; 32]), 1, 1_600));
        let states: Vec<_> = plan.holders().iter().map(|h| h.state.clone()).collect();
        assert_eq!(
            states,
            vec![
                HolderState::Answered {
                    resources: 4,
                    elapsed_ms: 100
                },
                HolderState::TimedOut,
                HolderState::Failed {
                    reason: "no data-plane address known for this holder".into()
                },
            ]
        );
    }
}
