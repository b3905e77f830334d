//! Ports: named pools of port ranges, port leases, and the listening-socket scan.
//!
//! Owns the decision of which port a service gets, sans-IO:
//! - [`pool`]: named pools of port ranges (`[ports.pools]` in the agent config), with a
//!   `default` pool of 20000-29999 ([`DEFAULT_POOL_RANGE`]).
//! - [`lease`]: the lease lifecycle `allocated` → `in-use` (seen listening) → `released` →
//!   cooldown → free, reclaiming leases whose owner is gone or that never listened, and the
//!   allocator that never hands out a port that is leased, cooling down, seen listening, or that
//!   fails the caller's bind test.
//! - [`error`]: [`PortsError`], shared by the files below (they import it directly, not through
//!   this file, which re-exports them).
//! - [`procnet`]: a parser for `/proc/net/{tcp,tcp6,udp,udp6}` text and the inode → pid join.
//! - [`scan`]: the one I/O edge — reads `/proc` for listening sockets and their processes, and
//!   the bind test.
//!
//! Apart from [`scan`], it does no I/O and reads no clock: the caller supplies `now`, the leases known mesh-wide
//! for this node (from the replicated document), the listening sockets (from reading
//! `/proc/net/*` and `/proc/PID/fd`), and a bind-test closure. It does not own: where leases
//! are stored (the document), or which services run here (the supervisor). Spec: `protocol/service-spec.md`, sections "Ports" and "Leases".

pub mod error;
pub mod lease;
pub mod pool;
pub mod procnet;
pub mod scan;

pub use crate::wire::socket::Proto;
pub use error::PortsError;
pub use lease::{
    DEFAULT_COOLDOWN, DEFAULT_LISTEN_GRACE, Lease, LeaseChange, LeaseConfig, LeaseState,
    ListeningPorts, PortAllocator, PortGrant, PortRequest, confirm_in_use,
};
pub use pool::{DEFAULT_POOL, DEFAULT_POOL_RANGE, PoolSet, PortRange, PortSource};
pub use procnet::{
    ListeningSocket, ProcNetFile, ProcNetSocket, listening_sockets, map_inodes_to_pids,
    parse_proc_net, parse_socket_link,
};
