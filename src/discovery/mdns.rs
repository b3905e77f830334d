//! mDNS / DNS-SD discovery: advertises this agent on the LAN and reports the agents of our mesh
//! that it sees, as [`DiscoveryEvent`]s.
//!
//! # What it owns
//!
//! One [`mdns_sd::ServiceDaemon`] (its own OS thread and its sockets on UDP 5353), the DNS-SD
//! registration of this node under [`SERVICE_TYPE`], and a browse of that same type. A private
//! `MdnsActor` task owns all of it; [`MdnsHandle`] is the outside view ([`MdnsHandle::stats`],
//! [`MdnsHandle::stop`]). With [`MdnsConfig::quic_port`] 0 (no listener) it only browses.
//!
//! # What it does not own
//!
//! Liveness and admission. A [`DiscoveryEvent::Found`] is a dial candidate, nothing more: mDNS
//! records live 75 minutes and a peer that vanishes silently produces no event (measured: nothing
//! at all when a silent partition heals). [`DiscoveryEvent::Lost`] is only emitted when a peer says goodbye. The node
//! actor keeps its own peer table, membership decides who is alive and `/mesh/auth/1` decides
//! who is admitted. Nor does it own the QUIC listener: it advertises the port it is given.
//!
//! # The actor
//!
//! Inputs: the mdns-sd browse channel (`ServiceResolved`, `ServiceRemoved`), the mdns-sd
//! monitor channel (announcements, name changes, errors), the shutdown token.
//! Output: [`DiscoveryEvent`]s on a bounded channel, sent with `send().await` so a slow node
//! actor slows discovery down instead of growing a queue. It stops when the shutdown token is
//! cancelled, when [`MdnsHandle::stop`] is called or the handle is dropped, or when the event
//! receiver is gone; on the way out it unregisters (DNS-SD goodbyes, sent twice by mdns-sd)
//! and shuts the daemon down.
//!
//! For each resolved service it: drops our own peer id (the daemon hears itself); drops and
//! counts records of another mesh (debug log); drops and counts malformed records (warn once
//! per instance); drops peers of another protocol version; builds QUIC addresses
//! `/ip4/A/udp/PORT/quic-v1` and `/ip6/A/udp/PORT/quic-v1` from the resolved addresses without
//! loopback and link-local ones (an IPv6 `fe80::` address is useless without its scope id);
//! and emits `Found` unless nothing is left or nothing changed since the last `Found` for that
//! instance. A re-resolution with new addresses emits `Found` again; in practice a peer often
//! comes as two `Found`s a few ms apart (its A and AAAA records arrive in separate packets).
//! `ServiceRemoved` emits `Lost(peer id)` unless the peer is still advertised under another
//! instance name.
//!
//! Timing, measured in the namespace lab (`simulations/lab`): an agent that starts next to
//! established ones finds them 40–80 ms after the daemon starts: they answer its first query
//! (sent after mdns-sd's 10–50 ms start jitter; answers to it are shared PTR records, delayed
//! 10–50 ms). Up to ~1.05 s when a responder multicast its records less than a second before
//! (its own announcements, or an answer to someone else): RFC 6762 section 6 forbids
//! multicasting a record twice within a second, so the answer comes with the next query, 1 s
//! later. The others hear a new agent from its first announcement, sent as soon as the
//! service is registered, since it does not probe (see below). Goodbyes reach the others'
//! `Lost` ~1.1 s after [`MdnsHandle::stop`] (receivers keep a goodbye record 1 s).
//!
//! # Record format
//!
//! Instance `<node name> (<short id>)._mesh._udp.local.`, SRV port = the UDP port of our QUIC
//! listener, SRV target `<node-name-as-dns-label>-<short id>.local.`, A/AAAA filled in and kept
//! up to date by mdns-sd (`enable_addr_auto`; interfaces rechecked every
//! [`MdnsConfig::ip_check_interval`]), and TXT:
//!
//! | key | value |
//! |---|---|
//! | `id` | our peer id, base58 (`12D3KooW…`) |
//! | `mesh` | the mesh id, lowercase hex (16 characters today) |
//! | `pv` | [`crate::PROTOCOL_VERSION`], decimal |
//! | `v` | the agent version, at most [`MAX_AGENT_VERSION_LEN`] bytes |
//! | `name` | the node name, at most [`MAX_TXT_NAME_LEN`] bytes |
//!
//! The normative description is `protocol/discovery.md`.
//!
//! # Names, and why they carry the node id
//!
//! Node names are not unique: two machines may share a host name, and lab hosts in network
//! namespaces all share one. So both names we announce end in the short id (the last 10
//! characters of the peer id, ~58 bits): the instance `<node name> (<short id>)` and the SRV
//! target `<label>-<short id>.local.`. No other node can own them, which lets us announce
//! without RFC 6762 probing: mdns-sd would otherwise probe every name for ~0.75 s before the
//! first announcement (measured in the lab: the others heard a new agent ~0.95 s after it
//! registered; without probing, 1–4 ms), and there is no conflict left to resolve, neither
//! while probing (where mdns-sd renames to `NAME (2)`) nor later (two segments that each
//! announce a `NAME`, joined after both probed, which mdns-sd does not detect at all).
//!
//! * **Instance name.** DNS-SD browsers (avahi, Bonjour, python-zeroconf) show it, so it starts
//!   with the node name: `h1 (Kv8j3Rt1Qx)`, in the manner of Bonjour's `NAME (2)`. The node
//!   name alone is in TXT `name`, and that is what we report as [`DiscoveredPeer::name`];
//!   from an agent that predates TXT `name` we take the instance name, which is its bare node
//!   name.
//! * **Host name.** Never the bare machine name: the machine's own responder (avahi, Bonjour,
//!   systemd-resolved) already owns `<hostname>.local.`; a second responder announcing it with
//!   a different address set is a conflict that can make *avahi* rename the machine
//!   (`host-2.local.`). And two nodes sharing a host name would otherwise share A/AAAA
//!   records, mixing their addresses. The host name is an internal detail of the SRV record;
//!   no user sees it.
//!
//! Agents that predate this rule probe their bare node name and rename on a conflict; our
//! names never equal theirs (ours always end in ` (<short id>)`), so mixed meshes need nothing
//! more. A restart of the same identity announces the same names again: its earlier records,
//! still in the others' caches, are replaced (cache-flush bit), not in conflict.
//!
//! # Interfaces
//!
//! Loopback interfaces are disabled: mdns-sd enables them by default, which makes the node hear
//! itself and advertise `127.0.0.1`/`::1`. Consequence: two agents on *one* host do not find
//! each other through this module (multi-node tests on one host use
//! [`super::memory`]). We still filter our own peer id, which we hear through multicast
//! loopback on every LAN interface.
//!
//! # Files
//!
//! [`config`] (configuration, statistics, errors, constants), `record` (the record both ways
//! and the address rules, sans-IO), [`rescan`] (when the daemons rescan interfaces, sans-IO),
//! `actor` (the task), and here the start and the handle.

mod actor;
pub mod config;
mod record;
pub mod rescan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::discovery::DiscoveryEvent;

use actor::MdnsActor;
pub use config::*;
pub(crate) use record::InterfacePolicy;
use record::{LocalNode, build_service_info};
use rescan::ip_check_secs;

/// Handle to the running mDNS actor. Dropping it stops the actor (with goodbyes) in the
/// background; [`MdnsHandle::stop`] does the same and waits for it.
#[derive(Debug)]
pub struct MdnsHandle {
    stats: Arc<StatsCounters>,
    /// Child of the caller's shutdown token: cancelled by `stop`, by `Drop`, or by the parent.
    stop: CancellationToken,
    /// `None` only after `stop` took it.
    task: Option<JoinHandle<Result<(), MdnsError>>>,
}

impl MdnsHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> MdnsStats {
        self.stats.snapshot()
    }

    /// Withdraws our advertisement (DNS-SD goodbyes), shuts the mdns-sd daemon down and waits
    /// for both. Takes at most a few seconds even if the daemon does not answer.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        match task.await {
            Ok(Ok(())) => debug!("mdns: stopped"),
            Ok(Err(err)) => warn!("mdns: actor ended with an error: {err:#}"),
            Err(err) => warn!("mdns: actor task failed: {err}"),
        }
    }
}

impl Drop for MdnsHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts mDNS discovery: creates the mdns-sd daemon, registers our service, browses for
/// peers, and spawns the actor that turns what it sees into [`DiscoveryEvent`]s on `events`.
///
/// Must be called inside a Tokio runtime. Fails if the daemon cannot be created or our
/// service cannot be registered; errors that only surface later on the daemon thread (a
/// socket that cannot be bound, say) are logged by the actor.
pub fn spawn_mdns(
    config: MdnsConfig,
    events: mpsc::Sender<DiscoveryEvent>,
    shutdown: CancellationToken,
) -> Result<MdnsHandle, MdnsError> {
    spawn_with_policy(config, InterfacePolicy::Lan, events, shutdown)
}

fn spawn_with_policy(
    config: MdnsConfig,
    policy: InterfacePolicy,
    events: mpsc::Sender<DiscoveryEvent>,
    shutdown: CancellationToken,
) -> Result<MdnsHandle, MdnsError> {
    let local = LocalNode::from_config(&config)?;
    let service = if local.quic_port == 0 {
        warn!("mdns: no QUIC port to advertise; only browsing, peers will not find us over mDNS");
        None
    } else {
        Some(build_service_info(&local)?)
    };

    let daemon = ServiceDaemon::new().map_err(|source| MdnsError::DaemonStart {
        step: "create",
        source,
    })?;
    // From here on the daemon thread runs: shut it down on every error path.
    let setup = configure_daemon(&daemon, &config, policy, service.clone());
    let (browse, monitor) = match setup {
        Ok(channels) => channels,
        Err(err) => {
            let _ = daemon.shutdown();
            return Err(err);
        }
    };
    if let Some(service) = &service {
        info!(
            instance = %service.get_fullname(),
            host = %service.get_hostname(),
            port = local.quic_port,
            "mdns: advertising and browsing {SERVICE_TYPE}"
        );
    }

    let stats = Arc::new(StatsCounters::default());
    let stop = shutdown.child_token();
    let actor = MdnsActor {
        daemon,
        local,
        policy,
        service,
        browse,
        monitor: Some(monitor),
        events,
        stop: stop.clone(),
        stats: Arc::clone(&stats),
        instances: HashMap::new(),
        warned: HashSet::new(),
        rescan: rescan::Rescan::new(config.ip_check_interval),
        interfaces: config.interfaces.clone(),
    };
    let task = tokio::spawn(actor.run());
    Ok(MdnsHandle {
        stats,
        stop,
        task: Some(task),
    })
}

/// Applies options, subscribes to the monitor, registers, browses. The order matters: the
/// interface selection must be in place before the first announcement or query goes out.
fn configure_daemon(
    daemon: &ServiceDaemon,
    config: &MdnsConfig,
    policy: InterfacePolicy,
    service: Option<ServiceInfo>,
) -> Result<
    (
        mdns_sd::Receiver<ServiceEvent>,
        mdns_sd::Receiver<DaemonEvent>,
    ),
    MdnsError,
> {
    let start = |step: &'static str| move |source| MdnsError::DaemonStart { step, source };
    let monitor = prepare_daemon(daemon, policy, ip_check_secs(config.ip_check_interval))
        .map_err(|(step, source)| start(step)(source))?;
    if let Some(service) = service {
        let fullname = service.get_fullname().to_string();
        daemon
            .register(service)
            .map_err(|source| MdnsError::Register { fullname, source })?;
    }
    let browse = daemon.browse(SERVICE_TYPE).map_err(start("browse"))?;
    Ok((browse, monitor))
}

/// The set-up every daemon of the agent gets before it announces or queries anything (its own
/// record here, the services it advertises in `advertise::registrar`): the interfaces of
/// `policy`, the interval of the daemon's check for changed addresses, and its monitor. An
/// error names the step that failed.
pub(crate) fn prepare_daemon(
    daemon: &ServiceDaemon,
    policy: InterfacePolicy,
    ip_check_secs: u32,
) -> Result<mdns_sd::Receiver<DaemonEvent>, (&'static str, mdns_sd::Error)> {
    let step = |step: &'static str| move |source| (step, source);
    match policy {
        InterfacePolicy::Lan => daemon
            .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(step("disable loopback interfaces"))?,
        #[cfg(test)]
        InterfacePolicy::LoopbackOnly => {
            daemon
                .disable_interface(IfKind::All)
                .map_err(step("disable interfaces"))?;
            daemon
                .enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
                .map_err(step("enable loopback interfaces"))?;
        }
    }
    daemon
        .set_ip_check_interval(ip_check_secs)
        .map_err(step("set ip check interval"))?;
    daemon.monitor().map_err(step("monitor"))
}

#[cfg(test)]
mod tests;
