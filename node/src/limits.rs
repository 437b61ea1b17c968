//! Budgets shared by the node's doors (QUIC data plane, HTTP API): how many connections one
//! source address may hold, and the process's descriptor limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections per source address, with a cap.
#[derive(Clone, Debug)]
pub struct AddressSlots {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_address: usize,
}

/// One connection a source address holds; given back on drop.
#[derive(Debug)]
pub struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlots {
    /// At most `per_address` connections per source address.
    pub fn new(per_address: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
            per_address,
        }
    }

    /// A slot for `address`, unless it holds its share already.
    pub fn take(&self, address: IpAddr) -> Option<AddressSlot> {
        let mut held = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(address).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

/// Raises the process's soft descriptor limit to its hard limit; returns the soft limit
/// in force afterwards.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(hard)) = (limit.current, limit.maximum) {
        if current < hard {
            let raised = rustix::process::Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                return hard;
            }
        }
        return current;
    }
    // Unlimited.
    limit.current.unwrap_or(u64::MAX)
}
