//! Wire: every message of the mesh protocols and the types they carry, at the bottom of the
//! crate so that the transport, the sans-IO cores and the actors all share one definition
//! without depending on each other.
//!
//! - [`auth`]: `/mesh/auth/1` (admission handshake) and [`auth::NodeInfo`];
//! - [`membership`]: `/mesh/membership/1` (foca datagrams, leave notices);
//! - [`sync`]: `/mesh/sync/1` (Automerge sync, snapshots) and [`sync::EpochId`];
//! - [`join`]: `/mesh/join/1` (redeeming an invite ticket for the mesh key);
//! - [`query`]: `/mesh/query/1` (logs, listening sockets, audit trail) and its bounds;
//! - [`socket`]: [`socket::Proto`] and [`socket::ListeningProcess`], carried by queries;
//! - [`name`]: the naming rule of services, ports and pools, checked by specs, pools and
//!   query receivers alike.
//!
//! Owns types, serde forms and receive-side bounds only: no I/O, no decisions. It imports
//! nothing from the crate but leaf modules (`hardware` for [`auth::NodeInfo`]'s payload).
//! Codecs, size limits of frames and protocol ids are `crate::transport`'s. Specs:
//! `protocol/*.md`.

pub mod auth;
pub mod join;
pub mod membership;
pub mod name;
pub mod query;
pub mod socket;
pub mod sync;
