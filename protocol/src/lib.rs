//! # zorgmesh-protocol
//!
//! The wire types, signing rules and the **sans-IO protocol core** of zorgmesh.
//!
//! Nothing in this crate opens a socket, reads a clock or draws OS randomness: every
//! operation takes its inputs (and `now`, in milliseconds since the Unix epoch) and returns
//! outputs. `zorgmesh-node` drives it from libp2p, quinn and HTTP; a simulator can drive the
//! very same code in virtual time.
//!
//! How a locator flows through this crate:
//!
//! 1. [`oprf`] turns a BSN into a 32-byte pseudonym, the [`patient::PatientKey`], with a
//!    threshold OPRF: the requesting node blinds, t evaluator nodes each apply their key
//!    share with a proof, the requester combines and unblinds. No node holds the key.
//! 2. A holder stages a [`locator::LocatorEntry`] in its [`publisher::PublisherLog`], which
//!    cuts a [`batch::SignedBatch`] by size or time window.
//! 3. The batch travels in a [`gossip::GossipMessage`]; every receiver feeds it to its
//!    [`index::LocatorIndex`], which checks publisher authority, signature and sequence.
//! 4. [`resolve::ResolutionPlan`] turns an index lookup into per-holder fetches with
//!    deadlines; the data plane speaks [`fetch`] frames.
//!
//! Every byte layout is specified in `protocol/SPEC.md` and pinned by golden vectors.

pub mod audit;
pub mod batch;
pub mod claims;
pub mod codec;
pub mod consent;
pub mod fetch;
pub mod gossip;
pub mod handover;
pub mod identity;
pub mod index;
pub mod locator;
pub mod membership;
pub mod oprf;
pub mod patient;
pub mod publisher;
pub mod record;
pub mod resolve;
pub mod revocation;
pub mod signing;
pub mod snapshot;
pub mod standing;
pub mod sync;

pub use batch::{BatchBody, SignedBatch};
pub use identity::{NodeRole, PublisherInfo};
pub use index::LocatorIndex;
pub use locator::{LocatorEntry, NodeId};
pub use patient::{Bsn, PatientKey};
pub use publisher::{BatchPolicy, PublisherLog};
