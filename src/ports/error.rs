//! [`PortsError`]: the errors of the port subsystem. Every refusal names the port and who holds
//! it. Its own file so that pools, leases and the `/proc/net` parser share it without going
//! through `ports.rs`, which re-exports them.

use crate::wire::socket::Proto;

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
