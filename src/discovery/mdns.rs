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
//! established ones finds them 40–80 ms after the daemon starts: they answer its first query.
//! Up to ~1.05 s when a responder multicast its records less than a second before (its own
//! announcements, or an answer to someone else): RFC 6762 section 6 forbids multicasting a
//! record twice within a second, so the answer comes with the next query, 1 s later. The
//! others hear a new agent when it announces, after probing (~0.8–1 s). Goodbyes reach the
//! others' `Lost` ~1.1 s after [`MdnsHandle::stop`] (receivers keep a goodbye record 1 s).
//!
//! # Record format
//!
//! Instance `<node name>._mesh._udp.local.`, SRV port = the UDP port of our QUIC listener, SRV
//! target `<node-name-as-dns-label>-<short id>.local.`, A/AAAA filled in and kept up to date
//! by mdns-sd (`enable_addr_auto`; interfaces rechecked every [`MdnsConfig::ip_check_interval`]),
//! and TXT:
//!
//! | key | value |
//! |---|---|
//! | `id` | our peer id, base58 (`12D3KooW…`) |
//! | `mesh` | the mesh id, lowercase hex (16 characters today) |
//! | `pv` | [`crate::PROTOCOL_VERSION`], decimal |
//! | `v` | the agent version, at most [`MAX_AGENT_VERSION_LEN`] bytes |
//!
//! The normative description is `protocol/discovery.md`.
//!
//! # Names, and why the host name carries the node id
//!
//! Node names are not unique: two machines may share a host name, and lab hosts in network
//! namespaces all share one. mdns-sd 0.21.7 implements RFC 6762 probing (section 8) and
//! conflict resolution (section 9): before announcing it probes every unique name for ~0.75 s,
//! and when another responder already owns the name, or probes it at the same time and wins
//! the tie-break, it renames the instance to `NAME (2)`, `NAME (3)`… (and a host name to
//! `host-2.local.`) and reports a `DaemonEvent::NameChange`, which we log. So the instance name
//! is the plain node name and probing stays on: the ~0.8 s it adds only delays how soon *others*
//! hear a newly started node; a node that starts later finds the existing ones as fast as
//! their responders answer its browse query.
//!
//! Two gaps of mdns-sd's conflict handling are closed here:
//!
//! * **Host names.** The SRV target is `<label>-<short id>.local.`, never the bare machine name.
//!   The machine's own responder (avahi, Bonjour, systemd-resolved) already owns
//!   `<hostname>.local.`; a second responder announcing it with a different address set is a
//!   conflict that can make *avahi* rename the machine (`host-2.local.`). And two nodes sharing
//!   a host name would otherwise share A/AAAA records, mixing their addresses. The host name is
//!   an internal detail of the SRV record; no user sees it.
//! * **Conflicts after probing.** mdns-sd only checks for conflicts while probing. If two
//!   segments that each have a `NAME` are joined later, both keep answering for it. We notice
//!   it when our own browse resolves a name we have announced with another peer id. Then the
//!   node with the larger peer id re-registers as `NAME (<short id>)` (unique by construction,
//!   with a host name of its own) and withdraws `NAME`. Its goodbye flushes `NAME` from every
//!   cache, the keeper's own included, so the keeper re-announces as soon as it sees its name
//!   removed (and, failing that, 3 s after it noticed the conflict). Tried in the lab (two
//!   `late`s joined by healing a partition): the mover is never lost by the others, the keeper
//!   for a few ms. The peer id is in TXT, so a transient mix-up at a third node costs at most a
//!   failed dial (QUIC checks the peer id). Detection needs traffic: two silent responders
//!   notice each other at the next query for the type, not at the moment the link heals.
//!
//! Always appending the short id to the instance name would make the name unique without any
//! of this, but every node would show up as `name (Kv8j3Rt1Qx)` in every DNS-SD browser; we do
//! that only for the rare node that needs it.
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
//! and the address rules, sans-IO), `actor` (the task), and here the start and the handle.

mod actor;
pub mod config;
mod record;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::discovery::DiscoveryEvent;

use actor::MdnsActor;
pub use config::*;
use record::{InterfacePolicy, LocalNode, build_service_info};

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
        Some(build_service_info(
            &local,
            &local.instance_name,
            &local.host_name,
        )?)
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
    let own_names = service
        .iter()
        .map(|s| s.get_fullname().to_lowercase())
        .collect();
    let actor = MdnsActor {
        daemon,
        local,
        policy,
        service,
        own_names,
        announced: false,
        renamed_for_conflict: false,
        reannounce_at: None,
        browse,
        monitor: Some(monitor),
        events,
        stop: stop.clone(),
        stats: Arc::clone(&stats),
        instances: HashMap::new(),
        warned: HashSet::new(),
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
    match policy {
        InterfacePolicy::Lan => daemon
            .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(start("disable loopback interfaces"))?,
        #[cfg(test)]
        InterfacePolicy::LoopbackOnly => {
            daemon
                .disable_interface(IfKind::All)
                .map_err(start("disable interfaces"))?;
            daemon
                .enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
                .map_err(start("enable loopback interfaces"))?;
        }
    }
    daemon
        .set_ip_check_interval(ip_check_secs(config.ip_check_interval))
        .map_err(start("set ip check interval"))?;
    let monitor = daemon.monitor().map_err(start("monitor"))?;
    if let Some(service) = service {
        let fullname = service.get_fullname().to_string();
        daemon
            .register(service)
            .map_err(|source| MdnsError::Register { fullname, source })?;
    }
    let browse = daemon.browse(SERVICE_TYPE).map_err(start("browse"))?;
    Ok((browse, monitor))
}

/// mdns-sd takes whole seconds; round up so that "every 500 ms" does not become "never".
fn ip_check_secs(interval: Duration) -> u32 {
    if interval.is_zero() {
        return 0;
    }
    let secs = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
