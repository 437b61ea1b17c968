//! # zorgmesh-node
//!
//! The async node around the sans-IO core of `zorgmesh-protocol`: sled [`storage`], the
//! FHIR API ([`fhir`]), locator [`publishing`], the [`gossip`] mesh, the QUIC data plane
//! ([`data_plane`]), [`dossier`] resolution, and the `zorgmesh` binary's commands.

pub mod anti_entropy;
pub mod at_rest;
pub mod audit;
pub mod auth;
pub mod config;
pub mod consent;
pub mod data_plane;
pub mod demo;
pub mod dossier;
pub mod fhir;
pub mod gossip;
pub mod index_store;
pub mod limits;
pub mod mesh;
pub mod node;
pub mod own_log;
pub mod provision;
pub mod pseudonym;
pub mod publishing;
pub mod rotation;
pub mod storage;
pub mod synth;
