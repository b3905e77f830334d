//! Ports: named pools of port ranges, port leases, and the listening-socket scan.
//!
//! Owns the decision of which port a service gets, sans-IO:
//! - [`pool`]: named pools of port ranges (`[ports.pools]` in the agent config), with a
//!   `default` pool of 20000-29999 ([`DEFAULT_POOL_RANGE`]).
//! - [`lease`]: the lease lifecycle `allocated` → `in-use` (seen listening) → `released` →
//!   cooldown → free, reclaiming leases whose owner is gone or that never listened, and the
//!   allocator that never hands out a port that is leased, cooling down, seen listening, or that
//!   fails the caller's bind test.
//! - [`procnet`]: a parser for `/proc/net/{tcp,tcp6,udp,udp6}` text and the inode → pid join.
//! - [`scan`]: the one I/O edge — reads `/proc` for listening sockets and their processes, and
//!   the bind test.
//!
//! Apart from [`scan`], it does no I/O and reads no clock: the caller supplies `now`, the leases known mesh-wide
//! for this node (from the replicated document), the listening sockets (from reading
//! `/proc/net/*` and `/proc/PID/fd`), and a bind-test closure. It does not own: where leases
//! are stored (the document), or which services run here (the supervisor). Spec: `protocol/service-spec.md`, sections "Ports" and "Leases".

pub mod lease;
pub mod pool;
pub mod procnet;
pub mod scan;

use serde::{Deserialize, Serialize};

pub use crate::wire::socket::Proto;
pub use lease::{
    DEFAULT_COOLDOWN, DEFAULT_LISTEN_GRACE, Lease, LeaseChange, LeaseConfig, LeaseState,
    ListeningPorts, PortAllocator, PortGrant, PortRequest,
};
pub use pool::{DEFAULT_POOL, DEFAULT_POOL_RANGE, PoolSet, PortRange};
pub use procnet::{
    ListeningSocket, ProcNetFile, ProcNetSocket, listening_sockets, map_inodes_to_pids,
    parse_proc_net, parse_socket_link,
};

/// Where a service's port comes from: any free port of a named pool, or one fixed number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSource {
    /// The lowest free port of the named pool (see [`PortAllocator::allocate`]).
    Auto { pool: String },
    /// Exactly this port; refused if another service holds it or a foreign process listens on it.
    Fixed(u16),
}

impl PortSource {
    /// `auto` from the [`DEFAULT_POOL`].
    pub fn auto_default() -> Self {
        PortSource::Auto {
            pool: DEFAULT_POOL.to_string(),
        }
    }
}

/// Errors of the port subsystem. Every refusal names the port and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    #[error("port {port}/{proto} is already leased to service `{holder}`")]
    FixedPortLeased {
        port: u16,
        proto: Proto,
        holder: String,
    },
    #[error(
        "port {port}/{proto} was released by service `{holder}` and is cooling down for another {remaining_ms} ms"
    )]
    FixedPortCoolingDown {
        port: u16,
        proto: Proto,
        holder: String,
        remaining_ms: u64,
    },
    #[error(
        "port {port}/{proto} is in use by another process{}",
        describe_pids(pids)
    )]
    FixedPortListening {
        port: u16,
        proto: Proto,
        pids: Vec<u32>,
    },
    #[error("port {port}/{proto} cannot be bound on this machine (bind test failed)")]
    FixedPortBindFailed { port: u16, proto: Proto },
    #[error(
        "pool `{pool}` has no free {proto} port: of {size} ports, {leased} are leased, {cooling} cooling down, {listening} in use by other processes, {bind_failed} failed the bind test"
    )]
    PoolExhausted {
        pool: String,
        proto: Proto,
        size: u32,
        leased: u32,
        cooling: u32,
        listening: u32,
        bind_failed: u32,
    },
    #[error("unknown port pool `{pool}`")]
    UnknownPool { pool: String },
    #[error("bad port pool name `{pool}`: {reason}")]
    BadPoolName { pool: String, reason: &'static str },
    #[error("bad port range `{text}`: {reason}")]
    BadRange { text: String, reason: String },
    #[error("port pools `{first}` and `{second}` overlap at port {port}")]
    OverlappingPools {
        first: String,
        second: String,
        port: u16,
    },
    #[error("/proc/net/{file} line {line}: {reason}")]
    ProcNet {
        file: &'static str,
        line: usize,
        reason: String,
    },
}

fn describe_pids(pids: &[u32]) -> String {
    match pids {
        [] => String::new(),
        [pid] => format!(" (pid {pid})"),
        pids => {
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            format!(" (pids {})", list.join(", "))
        }
    }
}
