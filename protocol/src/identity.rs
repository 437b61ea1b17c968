//! What the network's certificates say about a node, in plain types the core can use.

use crate::locator::NodeId;
use std::fmt;
use std::str::FromStr;

/// Checks that a node, region or network name is a lower-case DNS label; the error names
/// `kind` and says what is allowed.
pub fn validate_label(kind: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} {value:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

/// What kind of participant a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// A care institution running its own node (hospital, GP, pharmacy, lab, ...).
    Institution,
    /// A hosted replication platform serving institutions of a region.
    ReplicationPlatform,
}

impl NodeRole {
    /// The role's name as written in configs and certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Institution => "institution",
            NodeRole::ReplicationPlatform => "replication-platform",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "institution" => Ok(NodeRole::Institution),
            "replication-platform" => Ok(NodeRole::ReplicationPlatform),
            other => Err(format!(
                "unknown role {other:?}: use 'institution' or 'replication-platform'"
            )),
        }
    }
}

/// A node as its certificate describes it, once the certificate chain has been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherInfo {
    /// The node's public key.
    pub node: NodeId,
    /// Node name, unique in the network (a DNS label).
    pub name: String,
    /// URA of the organisation responsible for the node.
    pub organisation_ura: String,
    /// Name of that organisation.
    pub organisation_name: String,
    /// Region the node belongs to.
    pub region: String,
    /// Kind of participant.
    pub role: NodeRole,
    /// Certificate validity start (ms since the Unix epoch).
    pub valid_from_ms: u64,
    /// Certificate validity end (ms since the Unix epoch).
    pub valid_until_ms: u64,
}
