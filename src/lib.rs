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
//! | [`cli`] | clap types (`args`), commands through the typed client, rendering tables and JSON (`render`), exit codes |
//! | [`daemon`] | process concerns: tracing, signals, data dir, running the node |
//! | [`api`] | local control API: route table and the typed contract shared by server and client |
//! | [`node`] | the node actor: wires swarm, admission, membership, discovery and the child actors (state, supervisor, the LAN advertiser `node::advertise`); `NodeHandle` |
//! | [`transport`] | the libp2p swarm: QUIC, behaviours, codecs, protocol ids and frame limits |
//! | [`discovery`] | mDNS/DNS-SD and in-memory discovery, behind one event type; `discovery::advertise`: which services this node advertises on the LAN as DNS-SD services of their own (pure, from the state) and their mdns-sd registrations |
//! | [`invite`] | invites: the ticket codec and the inviter's store of one-time secrets (hashes only), sans-IO with its file |
//! | [`join`] | the joining side of `/mesh/join/1`: dials the inviter pinned in a ticket and redeems its secret for the mesh key |
//! | [`admission`] | mesh key, mesh id and the `/mesh/auth/1` handshake (sans-IO) |
//! | [`membership`] | alive / suspect / dead / left, SWIM via foca (sans-IO) |
//! | [`sync`] | Automerge sync sessions per peer (sans-IO) |
//! | [`services`] | the services domain (pure): where a service runs, which node a name means, add/remove/start/stop/restart as functions from the state to the entries to write |
//! | [`state`] | the replicated Automerge document: schema, typed access; `state::actor` owns the live document and its file |
//! | [`supervisor`] | local services: spec, dependency order, state machine, backoff, following the document (`supervisor::desired`) (sans-IO); `supervisor::launcher` spawns and probes; `supervisor::actor` runs them; `supervisor::query` answers `/mesh/query/1` from them |
//! | [`placement`] | which nodes own each service's copies, from the document and the membership view; what this node runs, hands over or waits for (sans-IO) |
//! | [`ports`] | port pools, leases, allocation (sans-IO); `ports::scan`: the listening-socket scan and bind test |
//! | [`insight`] | what this node remembers of its recent past: the history ring behind the dashboard's charts and the anomaly baselines (sans-IO); `insight::sampler` reads `/proc`, the snapshots and the supervisor every interval and feeds them |
//! | [`sim`] | `mesh sim`: whole meshes of the agent's cores under a simulated clock and network, deterministic; scenarios, invariants, reports |
//! | [`hardware`] | sysinfo probe, device class, capability score, profile |
//! | [`wire`] | every protocol message and the types it carries (auth, membership, sync, query), the name rule |
//! | [`identity`] | the persistent Ed25519 node key, node id; `NodeId` and `NodeName` |
//!
//! Decision logic (admission, membership, sync, ports, the supervisor's state machine) is
//! sans-IO: it takes `now` and inputs and returns actions. The I/O sits in a few actors around
//! it, each owning its own: the node actor (swarm, discovery, membership timers), the state
//! actor (the document and its file), the supervisor actor (processes, leases, the run file),
//! and the API server.
//!
//! # Layers
//!
//! A file may import (`use crate::…`, `super::…`, or a `crate::…` path in code) only files of
//! its own layer or lower ones, and no two files may import each other, directly or through
//! others. `tests/architecture.rs` parses this table and enforces both; a row's module covers
//! its files unless a deeper path has a row of its own (`supervisor::actor`). Declaring `mod child;` is
//! not an import, but a parent re-exporting its child's items and a child using its parent's
//! (`super::X`) are: both at once is a cycle. So a parent that re-exports (`supervisor/spec.rs`,
//! `ports.rs`) keeps shared items in a child file its other children import directly.
//!
//! | layer | modules | why here |
//! |---|---|---|
//! | 0 | `crate`, `identity`, `hardware`, `wire` | leaves: import nothing above; `wire` carries `hardware`'s info |
//! | 1 | `admission`, `invite`, `membership`, `sync`, `ports`, `state`, `supervisor`, `services`, `placement`, `insight` | the cores (sans-IO), the services domain over them (pure), and their non-actor I/O edges (`ports::scan`, `supervisor::launcher`, `state::file`) |
//! | 2 | `discovery`, `transport` | the network edges |
//! | 3 | `state::actor`, `supervisor::actor`, `supervisor::query`, `join` | the actors over the cores, and what answers from them; the joiner's exchange over the transport |
//! | 4 | `node`, `insight::sampler`, `sim` | wires everything into one running node; the sampler reads a running node; the simulator wires the cores over a simulated network |
//! | 5 | `api` | the local control API over a node |
//! | 6 | `daemon` | the agent process: runs a node and its API |
//! | 7 | `cli` | the `mesh` command: a client of the API, or the daemon |

pub mod admission;
pub mod api;
pub mod cli;
pub mod daemon;
pub mod discovery;
pub mod hardware;
pub mod identity;
pub mod insight;
pub mod invite;
pub mod join;
pub mod membership;
pub mod node;
pub mod placement;
pub mod ports;
pub mod services;
pub mod sim;
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
