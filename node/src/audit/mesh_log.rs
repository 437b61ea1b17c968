//! "Who looked at my data": a patient's access log across the mesh. The resolving node
//! asks every holder of the patient (from its index) for its trail's entries about the
//! patient, then every node those entries (and its own) name as having pulled the
//! patient's data, and so on until no new node is named (at most [`MAX_ROUNDS`] rounds);
//! it answers with every entry as an `AuditEvent` and names each node that did not answer.

use crate::data_plane::RequestContext;
use crate::dossier::DossierResolver;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use zorgmesh_protocol::audit::{AuditAction, AuditEntry, AuditOutcome};
use zorgmesh_protocol::{NodeId, PatientKey};

/// Rounds of "ask the nodes the answers named".
pub const MAX_ROUNDS: usize = 4;
/// Nodes asked for one log, at most.
pub const MAX_NODES: usize = 256;

/// The nodes an entry names as having received the patient's data.
fn receivers(entries: &[AuditEntry]) -> impl Iterator<Item = &str> {
    entries
        .iter()
        .filter(|e| {
            matches!(
                e.record.action,
                AuditAction::PullServed | AuditAction::BreakTheGlass
            ) && e.record.outcome == AuditOutcome::Success
                && !e.record.actor.is_empty()
        })
        .map(|e| e.record.actor.as_str())
}

impl DossierResolver {
    /// The access log of `patient` across the mesh, as a searchset Bundle of `AuditEvent`s
    /// (newest first) with an OperationOutcome naming the nodes asked and any that did not
    /// answer. `own_name` is this node's name.
    pub async fn access_log(
        &self,
        patient: PatientKey,
        context: &RequestContext,
        own_name: &str,
    ) -> Result<Value, crate::fhir::FhirError> {
        let own = self
            .audit
            .query(
                super::AuditQuery {
                    patient: Some(patient),
                    ..Default::default()
                },
                zorgmesh_protocol::fetch::MAX_ACCESS_ENTRIES,
            )
            .await
            .map_err(|e| crate::fhir::FhirError::internal(e.to_string()))?;
        let peers: BTreeMap<String, (NodeId, String)> = self
            .mesh
            .peers()
            .into_iter()
            .map(|(id, name, address)| (name, (id, address)))
            .collect();
        let mut asked: BTreeSet<String> = BTreeSet::from([own_name.to_owned()]);
        let mut next: BTreeSet<String> = self
            .mesh
            .holders(&patient)
            .map_err(|e| crate::fhir::FhirError::internal(e.to_string()))?
            .into_iter()
            .map(|h| h.info.name)
            .chain(receivers(&own).map(str::to_owned))
            .collect();
        let mut logs: Vec<(String, Vec<AuditEntry>)> = vec![(own_name.to_owned(), own)];
        let mut silent: Vec<(String, String)> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            next.retain(|name| !asked.contains(name));
            if next.is_empty() || asked.len() >= MAX_NODES {
                break;
            }
            let mut fetches = FuturesUnordered::new();
            for name in std::mem::take(&mut next) {
                if asked.len() >= MAX_NODES {
                    break;
                }
                asked.insert(name.clone());
                let Some((node, address)) = peers.get(&name).cloned() else {
                    silent.push((name, "no data-plane address is known for it".into()));
                    continue;
                };
                let data_plane = self.data_plane.clone();
                let timeout = Duration::from_millis(self.holder_timeout_ms);
                fetches.push(async move {
                    let answer = tokio::time::timeout(timeout, async {
                        let addr = crate::data_plane::resolve_address(&address)
                            .await
                            .map_err(|e| e.to_string())?;
                        data_plane
                            .fetch_access_log(node, &name, addr, patient, context)
                            .await
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {} ms", timeout.as_millis()))
                    });
                    (name, answer)
                });
            }
            while let Some((name, answer)) = fetches.next().await {
                match answer {
                    Ok(entries) => {
                        next.extend(receivers(&entries).map(str::to_owned));
                        logs.push((name, entries));
                    }
                    Err(reason) => silent.push((name, reason)),
                }
            }
        }
        let mut events: Vec<(u64, Value)> = logs
            .iter()
            .flat_map(|(node, entries)| {
                entries
                    .iter()
                    .map(move |e| (e.record.at_ms, super::events::audit_event(node, e)))
            })
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut entries: Vec<Value> = events
            .into_iter()
            .map(|(_, event)| json!({"resource": event, "search": {"mode": "match"}}))
            .collect();
        let answered: Vec<&str> = logs.iter().map(|(n, _)| n.as_str()).collect();
        let mut issues = vec![json!({
            "severity": "information",
            "code": "informational",
            "diagnostics": format!("access log from {} node(s): {}", answered.len(), answered.join(", ")),
        })];
        for (node, reason) in &silent {
            issues.push(json!({
                "severity": "warning",
                "code": "incomplete",
                "diagnostics": format!("{node} did not answer: {reason}; its accesses are missing from this log"),
            }));
        }
        let total = entries.len();
        entries.push(json!({
            "resource": {"resourceType": "OperationOutcome", "issue": issues},
            "search": {"mode": "outcome"},
        }));
        Ok(json!({"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries}))
    }
}
