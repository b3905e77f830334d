//! # mesh
//!
//! One agent per machine: finds its peers on the LAN (DNS-SD via mdns-sd), links to them over
//! QUIC (libp2p), admits only holders of the mesh key, and keeps a SWIM membership view (foca).
//! The `mesh` binary (`src/main.rs`) is a thin shell over this library; tests and simulations
//! use the library directly.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | clap types, rendering tables and JSON, exit codes |
//! | [`daemon`] | process concerns: tracing, signals, data dir, running the node |
//! | [`node`] | the node actor: wires swarm, admission, membership, discovery; `NodeHandle` |
//! | [`identity`] | the persistent Ed25519 node key and node id |
//! | [`admission`] | mesh key, mesh id and the `/mesh/auth/1` handshake (sans-IO) |
//! | [`membership`] | alive / suspect / dead / left, SWIM via foca (sans-IO) |
//! | [`state`] | the replicated Automerge document: schema, typed access, its actor and file |
//! | [`sync`] | Automerge sync sessions per peer (sans-IO) |
//! | [`supervisor`] | local services: spec, dependency order, state machine, backoff (sans-IO); `supervisor::actor` runs them; `supervisor::launcher` spawns and probes |
//! | [`query`] | what one node answers about itself for another (`/mesh/query/1`): logs, listening sockets, events |
//! | [`ports`] | port pools, leases, allocation (sans-IO); `ports::scan`: the listening-socket scan and bind test |
//! | [`discovery`] | mDNS/DNS-SD and in-memory discovery, behind one event type |
//! | [`transport`] | the libp2p swarm: QUIC, behaviours, codecs, protocol ids |
//! | [`hardware`] | sysinfo probe, device class, capability score, profile |
//! | [`api`] | local control API: route table and the typed contract shared by server and client |
//!
//! Decision logic (admission, membership) is sans-IO: it takes `now` and inputs and returns
//! actions. The node actor owns all I/O.

pub mod admission;
pub mod api;
pub mod cli;
pub mod daemon;
pub mod discovery;
pub mod hardware;
pub mod identity;
pub mod membership;
pub mod node;
pub mod ports;
pub mod state;
pub mod supervisor;
pub mod sync;
pub mod transport;
pub mod wire;

/// Version of this agent, as shown in `mesh peers` and advertised to peers.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the mesh wire protocols as a whole; advertised in DNS-SD TXT (`pv`). Peers with a
/// different major protocol version are not dialed.
pub const PROTOCOL_VERSION: u32 = 1;
