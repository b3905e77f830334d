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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{
    DaemonEvent, DaemonStatus, IfKind, RRType, ResolvedService, ServiceDaemon, ServiceEvent,
    ServiceInfo, TxtProperties, UnregisterStatus,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::{DiscoveredPeer, DiscoveryEvent};
use crate::identity::short_id;

/// The DNS-SD service type of mesh agents. `_udp` because the advertised port is QUIC's.
/// Changing it makes old and new agents invisible to each other.
pub const SERVICE_TYPE: &str = "_mesh._udp.local.";

/// Default for [`MdnsConfig::ip_check_interval`]. mdns-sd only uses interfaces that are
/// oper-up and rescans every 5 s by default, so an agent started while its link comes up lost
/// 5 s (measured); 1 s is the smallest interval mdns-sd accepts.
pub const DEFAULT_IP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// TXT key of the peer id (base58).
pub const TXT_ID: &str = "id";
/// TXT key of the mesh id (hex).
pub const TXT_MESH: &str = "mesh";
/// TXT key of the protocol version (decimal `u32`).
pub const TXT_PROTOCOL_VERSION: &str = "pv";
/// TXT key of the agent version (free text).
pub const TXT_AGENT_VERSION: &str = "v";

/// Longest agent version we send or accept, in bytes. A TXT string is at most 255 bytes
/// including its key; 64 leaves room and keeps the whole record in one small packet.
pub const MAX_AGENT_VERSION_LEN: usize = 64;

/// Longest mesh id we accept, in hex characters (32 bytes). Today's ids are 16 characters; the
/// slack lets a future, longer id be *ignored as foreign* instead of counted as malformed.
pub const MAX_MESH_ID_LEN: usize = 64;

/// Longest peer id text we try to parse. Ed25519 peer ids are 52 characters; anything much
/// longer is garbage and not worth parsing.
const MAX_PEER_ID_LEN: usize = 128;

/// A DNS label (instance name, host name label) is at most 63 bytes on the wire (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Host label used when the node name has no usable character at all.
const FALLBACK_HOST_LABEL: &str = "mesh";

/// How long we wait for mdns-sd to confirm an unregister before shutting down anyway.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(1);

/// mdns-sd sends the goodbye once at unregister and once more 120 ms later (RFC 6762 10.1
/// recommends repeating it). Shutting the daemon down earlier would lose the repeat.
const GOODBYE_REPEAT_WAIT: Duration = Duration::from_millis(150);

/// How long we wait for the daemon thread to confirm shutdown.
const DAEMON_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// After a late name conflict the node that keeps the name re-announces after this delay: the
/// other node's goodbye makes caches drop the shared name 1 s after receiving it (RFC 6762
/// 10.1), and our re-announcement must arrive after that, or it is flushed too.
const CONFLICT_REANNOUNCE_DELAY: Duration = Duration::from_secs(3);

/// Wait between attempts to re-subscribe to the browse after mdns-sd dropped the subscription
/// (it does when 1000 events are queued) and refused the new one.
const REBROWSE_RETRY: Duration = Duration::from_secs(1);

/// Bound on the instances we remember (to dedupe `Found` and map `ServiceRemoved` to a peer id).
/// A LAN with more mesh agents than this still works; extra instances are reported every time
/// they resolve and never `Lost`.
const MAX_TRACKED_INSTANCES: usize = 4096;

/// Bound on the instance names we remember having warned about; cleared when full, so a
/// flood of garbage records costs at most a warning per this many records.
const MAX_WARNED_INSTANCES: usize = 1024;

/// What [`spawn_mdns`] needs to advertise this node and recognise its peers.
#[derive(Debug, Clone)]
pub struct MdnsConfig {
    /// DNS-SD instance name. Any UTF-8 without control characters; cut to 63 bytes.
    pub node_name: String,
    /// Our peer id, advertised as TXT `id`; records carrying it are ours and ignored.
    pub peer_id: PeerId,
    /// Our mesh id as hex, advertised as TXT `mesh`; records of another mesh are ignored.
    pub mesh_id: String,
    /// Advertised as TXT `pv`; peers advertising another version are ignored.
    pub protocol_version: u32,
    /// Advertised as TXT `v` (cut to [`MAX_AGENT_VERSION_LEN`] bytes).
    pub agent_version: String,
    /// The UDP port our QUIC listener is bound on (SRV port). 0 means we have no listener:
    /// then we only browse and advertise nothing.
    pub quic_port: u16,
    /// How often mdns-sd rescans interfaces and addresses, re-announcing on changes. Whole
    /// seconds (rounded up); zero disables the rescan (interfaces are then only those present
    /// at start).
    pub ip_check_interval: Duration,
}

impl MdnsConfig {
    /// A config with this build's protocol and agent versions and the default rescan interval.
    pub fn new(
        node_name: impl Into<String>,
        peer_id: PeerId,
        mesh_id: impl Into<String>,
        quic_port: u16,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            peer_id,
            mesh_id: mesh_id.into(),
            protocol_version: crate::PROTOCOL_VERSION,
            agent_version: crate::AGENT_VERSION.to_string(),
            quic_port,
            ip_check_interval: DEFAULT_IP_CHECK_INTERVAL,
        }
    }
}

/// Counters since [`spawn_mdns`]; read with [`MdnsHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MdnsStats {
    /// `Found` events emitted.
    pub found: u64,
    /// Resolved records of another mesh, ignored.
    pub foreign_mesh_ignored: u64,
    /// Resolved records that were not valid mesh records (bad or missing TXT fields, port 0).
    pub malformed_ignored: u64,
    /// Resolved records of our mesh with another protocol version (`pv`), ignored.
    pub incompatible_version_ignored: u64,
}

/// Why mDNS discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    /// The configuration cannot be advertised (e.g. an empty or non-hex mesh id).
    #[error("invalid mDNS configuration: {reason}")]
    InvalidConfig { reason: String },
    /// The mdns-sd daemon could not be created or configured.
    #[error("cannot start the mDNS daemon ({step})")]
    DaemonStart {
        step: &'static str,
        #[source]
        source: mdns_sd::Error,
    },
    /// Our DNS-SD service could not be built or registered.
    #[error("cannot register the DNS-SD service {fullname:?}")]
    Register {
        fullname: String,
        #[source]
        source: mdns_sd::Error,
    },
    /// The mdns-sd daemon thread or the actor exited.
    #[error("the mDNS discovery actor has stopped")]
    Stopped,
}

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

#[derive(Debug, Default)]
struct StatsCounters {
    found: AtomicU64,
    foreign_mesh_ignored: AtomicU64,
    malformed_ignored: AtomicU64,
    incompatible_version_ignored: AtomicU64,
}

impl StatsCounters {
    fn snapshot(&self) -> MdnsStats {
        MdnsStats {
            found: self.found.load(Ordering::Relaxed),
            foreign_mesh_ignored: self.foreign_mesh_ignored.load(Ordering::Relaxed),
            malformed_ignored: self.malformed_ignored.load(Ordering::Relaxed),
            incompatible_version_ignored: self.incompatible_version_ignored.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which interfaces the daemon uses and which addresses count as dialable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InterfacePolicy {
    /// Production: every up interface except loopback; loopback and link-local addresses of
    /// peers are dropped.
    Lan,
    /// Tests on one host: loopback interfaces only, loopback addresses kept (link-local still
    /// dropped). Never sends on a real link.
    #[cfg(test)]
    LoopbackOnly,
}

impl InterfacePolicy {
    fn keeps_loopback_addrs(self) -> bool {
        match self {
            Self::Lan => false,
            #[cfg(test)]
            Self::LoopbackOnly => true,
        }
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

/// What the actor needs to know about this node, validated once.
#[derive(Debug, Clone)]
struct LocalNode {
    peer_id: PeerId,
    /// Lowercase, so that comparison with received ids ignores case.
    mesh_id: String,
    protocol_version: u32,
    agent_version: String,
    quic_port: u16,
    /// The node name as advertised (sanitised, cut to a DNS label).
    instance_name: String,
    /// `<label>-<short id>.local.`
    host_name: String,
}

impl LocalNode {
    fn from_config(config: &MdnsConfig) -> Result<Self, MdnsError> {
        let invalid = |reason: String| MdnsError::InvalidConfig { reason };
        let mesh_id = config.mesh_id.trim().to_ascii_lowercase();
        if !is_valid_mesh_id(&mesh_id) {
            return Err(invalid(format!(
                "mesh id {:?} is not 1..={MAX_MESH_ID_LEN} hex characters",
                config.mesh_id
            )));
        }
        let short = short_id(&config.peer_id);
        Ok(Self {
            peer_id: config.peer_id,
            mesh_id,
            protocol_version: config.protocol_version,
            agent_version: truncate_utf8(config.agent_version.trim(), MAX_AGENT_VERSION_LEN)
                .to_string(),
            quic_port: config.quic_port,
            instance_name: instance_name(&config.node_name, &short),
            host_name: host_name(&config.node_name, &short),
        })
    }
}

fn build_service_info(
    local: &LocalNode,
    instance: &str,
    host: &str,
) -> Result<ServiceInfo, MdnsError> {
    let id = local.peer_id.to_base58();
    let pv = local.protocol_version.to_string();
    let properties = [
        (TXT_ID, id.as_str()),
        (TXT_MESH, local.mesh_id.as_str()),
        (TXT_PROTOCOL_VERSION, pv.as_str()),
        (TXT_AGENT_VERSION, local.agent_version.as_str()),
    ];
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        instance,
        host,
        (),
        local.quic_port,
        &properties[..],
    )
    .map_err(|source| MdnsError::Register {
        fullname: format!("{instance}.{SERVICE_TYPE}"),
        source,
    })?;
    // Addresses are filled in by the daemon and follow interface changes. Probing stays on
    // (the default): it is what resolves instance-name conflicts, see the module doc.
    Ok(info.enable_addr_auto())
}

/// The instance name for `node_name`: control characters become spaces, surrounding space
/// is trimmed, and the result is cut to one DNS label. An empty name becomes `mesh-<short>`.
fn instance_name(node_name: &str, short: &str) -> String {
    let cleaned: String = node_name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = truncate_utf8(cleaned.trim(), MAX_LABEL_LEN).trim_end();
    if cleaned.is_empty() {
        return format!("{FALLBACK_HOST_LABEL}-{short}");
    }
    cleaned.to_string()
}

/// The instance name used after a late name conflict: `NAME (<short id>)`, still one label.
fn conflict_instance_name(base: &str, short: &str) -> String {
    let suffix = format!(" ({short})");
    let room = MAX_LABEL_LEN.saturating_sub(suffix.len());
    format!("{}{suffix}", truncate_utf8(base, room).trim_end())
}

/// `<label>-<short id lowercased>.local.` where `label` keeps `[a-z0-9]` of the lowercased node
/// name and turns every other run of characters into one `-`. DNS compares names without
/// case, hence the lowercase id (still ~50 bits of the id's random tail).
fn host_name(node_name: &str, short: &str) -> String {
    let short = short.to_ascii_lowercase();
    let mut label = String::with_capacity(node_name.len());
    for c in node_name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    let room = MAX_LABEL_LEN.saturating_sub(short.len() + 1);
    let mut label = truncate_utf8(&label, room)
        .trim_end_matches('-')
        .to_string();
    if label.is_empty() {
        label = FALLBACK_HOST_LABEL.to_string();
    }
    format!("{label}-{short}.local.")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn is_valid_mesh_id(mesh: &str) -> bool {
    !mesh.is_empty() && mesh.len() <= MAX_MESH_ID_LEN && mesh.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What one resolved service means to us. Pure: decided from the record and [`LocalNode`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Our own record, heard back.
    Own,
    /// A record of another mesh.
    ForeignMesh { peer_id: PeerId, mesh: String },
    /// Not a valid mesh record.
    Malformed { reason: String },
    /// Our mesh, another protocol version.
    Incompatible {
        peer_id: PeerId,
        protocol_version: u32,
    },
    /// Valid, but no address we could dial.
    NoUsableAddress { peer_id: PeerId },
    /// A peer to report.
    Peer(DiscoveredPeer),
}

/// A resolved service reduced to what [`classify`] needs (mdns-sd's `ResolvedService` cannot be
/// built outside mdns-sd, so tests build this instead).
#[derive(Debug, Clone)]
struct ServiceRecord<'a> {
    /// Instance name, i.e. the full name without `._mesh._udp.local.`.
    instance: &'a str,
    port: u16,
    addrs: Vec<IpAddr>,
    txt: &'a TxtProperties,
}

impl<'a> ServiceRecord<'a> {
    fn from_resolved(resolved: &'a ResolvedService) -> Self {
        Self {
            instance: instance_of(&resolved.fullname),
            port: resolved.port,
            addrs: resolved.addresses.iter().map(|a| a.to_ip_addr()).collect(),
            txt: &resolved.txt_properties,
        }
    }
}

/// The instance part of a full name; the whole name if it is not of our type.
fn instance_of(fullname: &str) -> &str {
    let suffix_len = SERVICE_TYPE.len() + 1; // ".{SERVICE_TYPE}"
    if fullname.len() > suffix_len && fullname.is_char_boundary(fullname.len() - suffix_len) {
        let (instance, rest) = fullname.split_at(fullname.len() - suffix_len);
        // `starts_with('.')` first: it makes byte 1 a character boundary.
        if rest.starts_with('.') && rest[1..].eq_ignore_ascii_case(SERVICE_TYPE) {
            return instance;
        }
    }
    fullname
}

/// A TXT value as UTF-8 text: `Err` names the problem.
fn txt_str<'t>(txt: &'t TxtProperties, key: &str) -> Result<&'t str, String> {
    match txt.get_property_val(key) {
        None => Err(format!("TXT {key:?} missing")),
        Some(None) => Err(format!("TXT {key:?} has no value")),
        Some(Some(bytes)) => {
            std::str::from_utf8(bytes).map_err(|_| format!("TXT {key:?} is not UTF-8"))
        }
    }
}

fn parse_peer_id(txt: &TxtProperties) -> Result<PeerId, String> {
    let text = txt_str(txt, TXT_ID)?;
    if text.len() > MAX_PEER_ID_LEN {
        return Err(format!("TXT {TXT_ID:?} is {} bytes long", text.len()));
    }
    PeerId::from_str(text).map_err(|_| format!("TXT {TXT_ID:?} is not a peer id: {text:?}"))
}

fn classify(record: &ServiceRecord<'_>, local: &LocalNode, policy: InterfacePolicy) -> Verdict {
    let malformed = |reason: String| Verdict::Malformed { reason };
    let peer_id = match parse_peer_id(record.txt) {
        Ok(id) => id,
        Err(reason) => return malformed(reason),
    };
    if peer_id == local.peer_id {
        return Verdict::Own;
    }
    let mesh = match txt_str(record.txt, TXT_MESH) {
        Ok(mesh) if is_valid_mesh_id(mesh) => mesh.to_ascii_lowercase(),
        Ok(mesh) => return malformed(format!("TXT {TXT_MESH:?} is not a hex mesh id: {mesh:?}")),
        Err(reason) => return malformed(reason),
    };
    if mesh != local.mesh_id {
        return Verdict::ForeignMesh { peer_id, mesh };
    }
    let protocol_version = match txt_str(record.txt, TXT_PROTOCOL_VERSION) {
        Ok(pv) => match pv.parse::<u32>() {
            Ok(pv) => pv,
            Err(_) => {
                return malformed(format!("TXT {TXT_PROTOCOL_VERSION:?} is not a u32: {pv:?}"));
            }
        },
        Err(reason) => return malformed(reason),
    };
    let version = match txt_str(record.txt, TXT_AGENT_VERSION) {
        Ok(v) if v.len() <= MAX_AGENT_VERSION_LEN && !v.chars().any(char::is_control) => {
            v.to_string()
        }
        Ok(v) => {
            return malformed(format!(
                "TXT {TXT_AGENT_VERSION:?} is too long or has control characters ({} bytes)",
                v.len()
            ));
        }
        Err(reason) => return malformed(reason),
    };
    if record.port == 0 {
        return malformed("SRV port is 0".to_string());
    }
    if protocol_version != local.protocol_version {
        return Verdict::Incompatible {
            peer_id,
            protocol_version,
        };
    }
    let addrs = quic_addrs(&record.addrs, record.port, policy);
    if addrs.is_empty() {
        return Verdict::NoUsableAddress { peer_id };
    }
    Verdict::Peer(DiscoveredPeer {
        peer_id,
        name: record.instance.to_string(),
        addrs,
        version,
    })
}

/// Whether a peer's address is worth dialing from another host.
fn is_dialable(ip: IpAddr, policy: InterfacePolicy) -> bool {
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    if ip.is_loopback() && !policy.keeps_loopback_addrs() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        // Link-local needs a scope id (which interface), which a multiaddr cannot carry.
        IpAddr::V6(v6) => !v6.is_unicast_link_local() && v6.to_ipv4_mapped().is_none(),
    }
}

/// `/ip4/A/udp/PORT/quic-v1` and `/ip6/A/udp/PORT/quic-v1`, sorted and without duplicates
/// (so that two resolutions with the same addresses compare equal).
fn quic_addrs(addrs: &[IpAddr], port: u16, policy: InterfacePolicy) -> Vec<Multiaddr> {
    let ips: BTreeSet<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|ip| is_dialable(*ip, policy))
        .collect();
    ips.into_iter()
        .map(|ip| {
            let ip = match ip {
                IpAddr::V4(v4) => Protocol::Ip4(v4),
                IpAddr::V6(v6) => Protocol::Ip6(v6),
            };
            Multiaddr::empty()
                .with(ip)
                .with(Protocol::Udp(port))
                .with(Protocol::QuicV1)
        })
        .collect()
}

/// Who gives way when two nodes answer for the same instance name after probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConflictRole {
    /// Re-register as `NAME (<short id>)`.
    Rename,
    /// Keep the name and re-announce once the other has left it.
    Keep,
}

/// The larger peer id (by bytes) renames; a record without a valid id cannot take part in the
/// tie-break, so we rename, which is always safe.
fn conflict_role(ours: &PeerId, theirs: Option<&PeerId>) -> ConflictRole {
    match theirs {
        Some(theirs) if ours.to_bytes() < theirs.to_bytes() => ConflictRole::Keep,
        _ => ConflictRole::Rename,
    }
}

/// Whether the run loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

struct MdnsActor {
    daemon: ServiceDaemon,
    local: LocalNode,
    policy: InterfacePolicy,
    /// What we have registered (the renamed one after a late conflict); `None` when we only
    /// browse (no QUIC port).
    service: Option<ServiceInfo>,
    /// Lowercase full names we answer for: the registered name, or what mdns-sd renamed it
    /// to while probing. A record under one of these with another peer id, heard after our
    /// first announcement, is a late conflict.
    own_names: HashSet<String>,
    /// Set by the first announcement: before it, mdns-sd's probing handles conflicts, and the
    /// records it probes against must not be taken for a late conflict.
    announced: bool,
    /// Set once we moved to `NAME (<short id>)`: that name cannot conflict again.
    renamed_for_conflict: bool,
    /// When to re-announce after a late conflict we kept the name in.
    reannounce_at: Option<Instant>,
    browse: mdns_sd::Receiver<ServiceEvent>,
    /// `None` once the daemon dropped it.
    monitor: Option<mdns_sd::Receiver<DaemonEvent>>,
    events: mpsc::Sender<DiscoveryEvent>,
    stop: CancellationToken,
    stats: Arc<StatsCounters>,
    /// Lowercase full name → what we last reported for it.
    instances: HashMap<String, DiscoveredPeer>,
    /// Lowercase full names we already warned about (malformed records).
    warned: HashSet<String>,
}

impl MdnsActor {
    async fn run(mut self) -> Result<(), MdnsError> {
        let outcome = self.run_until_stopped().await;
        self.withdraw_and_shutdown().await;
        outcome
    }

    async fn run_until_stopped(&mut self) -> Result<(), MdnsError> {
        loop {
            let reannounce_at = self.reannounce_at;
            let flow = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Flow::Stop,
                _ = self.events.closed() => {
                    debug!("mdns: event receiver dropped");
                    Flow::Stop
                }
                event = self.browse.recv_async() => match event {
                    Ok(event) => self.on_service_event(event).await,
                    Err(_) => self.resubscribe_browse().await?,
                },
                event = next_daemon_event(self.monitor.as_ref()) => {
                    match event {
                        Some(event) => self.on_daemon_event(event),
                        None => self.monitor = None,
                    }
                    Flow::Continue
                }
                _ = tokio::time::sleep_until(reannounce_at.unwrap_or_else(Instant::now)), if reannounce_at.is_some() => {
                    self.reannounce();
                    Flow::Continue
                }
            };
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }

    /// mdns-sd closes a browse subscription whose channel is full (1000 events) or when the
    /// daemon exits. Subscribing again replays its cache, so we only lose `ServiceRemoved`s
    /// of the gap.
    async fn resubscribe_browse(&mut self) -> Result<Flow, MdnsError> {
        loop {
            match self.daemon.browse(SERVICE_TYPE) {
                Ok(browse) => {
                    warn!("mdns: browse subscription was dropped by mdns-sd; subscribed again");
                    self.browse = browse;
                    return Ok(Flow::Continue);
                }
                Err(mdns_sd::Error::DaemonShutdown) => {
                    warn!("mdns: the mdns-sd daemon exited; discovery stops");
                    return Err(MdnsError::Stopped);
                }
                Err(err) => {
                    debug!("mdns: browse again failed ({err}); retrying in {REBROWSE_RETRY:?}");
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return Ok(Flow::Stop),
                        _ = tokio::time::sleep(REBROWSE_RETRY) => {}
                    }
                }
            }
        }
    }

    async fn on_service_event(&mut self, event: ServiceEvent) -> Flow {
        match event {
            ServiceEvent::ServiceResolved(resolved) => self.on_resolved(&resolved).await,
            ServiceEvent::ServiceRemoved(_, fullname) => self.on_removed(&fullname).await,
            other => {
                trace!("mdns: {other:?}");
                Flow::Continue
            }
        }
    }

    async fn on_resolved(&mut self, resolved: &ResolvedService) -> Flow {
        let key = resolved.fullname.to_lowercase();
        let record = ServiceRecord::from_resolved(resolved);
        let verdict = classify(&record, &self.local, self.policy);

        if self.announced && self.own_names.contains(&key) && verdict != Verdict::Own {
            let theirs = match &verdict {
                Verdict::ForeignMesh { peer_id, .. }
                | Verdict::Incompatible { peer_id, .. }
                | Verdict::NoUsableAddress { peer_id } => Some(*peer_id),
                Verdict::Peer(peer) => Some(peer.peer_id),
                Verdict::Own | Verdict::Malformed { .. } => None,
            };
            self.on_name_conflict(&resolved.fullname, theirs);
        }

        match verdict {
            Verdict::Own => {
                trace!(fullname = %resolved.fullname, "mdns: heard our own record");
                Flow::Continue
            }
            Verdict::ForeignMesh { peer_id, mesh } => {
                StatsCounters::bump(&self.stats.foreign_mesh_ignored);
                debug!(fullname = %resolved.fullname, %peer_id, %mesh, "mdns: ignoring a node of another mesh");
                Flow::Continue
            }
            Verdict::Malformed { reason } => {
                StatsCounters::bump(&self.stats.malformed_ignored);
                if self.warned.len() >= MAX_WARNED_INSTANCES {
                    self.warned.clear();
                }
                if self.warned.insert(key) {
                    warn!(fullname = %resolved.fullname, "mdns: ignoring a malformed {SERVICE_TYPE} record: {reason}");
                } else {
                    debug!(fullname = %resolved.fullname, "mdns: ignoring a malformed record again: {reason}");
                }
                Flow::Continue
            }
            Verdict::Incompatible {
                peer_id,
                protocol_version,
            } => {
                StatsCounters::bump(&self.stats.incompatible_version_ignored);
                debug!(
                    fullname = %resolved.fullname, %peer_id, protocol_version,
                    ours = self.local.protocol_version,
                    "mdns: ignoring a node of another protocol version"
                );
                Flow::Continue
            }
            Verdict::NoUsableAddress { peer_id } => {
                debug!(
                    fullname = %resolved.fullname, %peer_id, addrs = ?record.addrs,
                    "mdns: peer has no dialable address (only loopback or link-local)"
                );
                Flow::Continue
            }
            Verdict::Peer(peer) => {
                if self.instances.get(&key) == Some(&peer) {
                    return Flow::Continue;
                }
                if self.instances.len() >= MAX_TRACKED_INSTANCES
                    && !self.instances.contains_key(&key)
                {
                    debug!(fullname = %resolved.fullname, "mdns: instance table full; reporting without tracking");
                } else {
                    self.instances.insert(key, peer.clone());
                }
                debug!(peer_id = %peer.peer_id, name = %peer.name, addrs = ?peer.addrs, "mdns: found");
                StatsCounters::bump(&self.stats.found);
                self.emit(DiscoveryEvent::Found(peer)).await
            }
        }
    }

    async fn on_removed(&mut self, fullname: &str) -> Flow {
        let key = fullname.to_lowercase();
        if self.own_names.contains(&key) && self.service.is_some() {
            // We still answer for this name, so this is another node's goodbye for it (it gave
            // way after a late conflict) flushing our records from every cache, ours included.
            // Tell the LAN again that the name is ours.
            debug!(%fullname, "mdns: our name was flushed by another node's goodbye; re-announcing");
            self.reannounce_at = Some(Instant::now());
        }
        let Some(gone) = self.instances.remove(&key) else {
            return Flow::Continue;
        };
        if self.instances.values().any(|p| p.peer_id == gone.peer_id) {
            debug!(%fullname, peer_id = %gone.peer_id, "mdns: instance withdrawn, peer still advertised under another name");
            return Flow::Continue;
        }
        debug!(%fullname, peer_id = %gone.peer_id, "mdns: lost (goodbye or expiry)");
        self.emit(DiscoveryEvent::Lost(gone.peer_id)).await
    }

    fn on_daemon_event(&mut self, event: DaemonEvent) {
        match event {
            DaemonEvent::Announce(fullname, detail) => {
                debug!(%fullname, %detail, "mdns: announced");
                self.announced = true;
            }
            DaemonEvent::NameChange(change) => match change.rr_type {
                RRType::A | RRType::AAAA => info!(
                    original = %change.original, new = %change.new_name, interface = %change.intf_name,
                    "mdns: host name taken on the LAN; mdns-sd renamed it"
                ),
                _ => {
                    // `original` is always the registered name, also for a second rename. One
                    // event comes per record (SRV, TXT) and interface: log each new name once.
                    let ours = self
                        .service
                        .as_ref()
                        .is_some_and(|s| change.original.eq_ignore_ascii_case(s.get_fullname()));
                    let new_name = change.new_name.to_lowercase();
                    if ours && !self.own_names.contains(&new_name) {
                        info!(
                            original = %change.original, new = %change.new_name, interface = %change.intf_name,
                            "mdns: instance name taken on the LAN; mdns-sd renamed it"
                        );
                        self.own_names = HashSet::from([new_name]);
                    }
                }
            },
            DaemonEvent::Error(err) => warn!("mdns: daemon error: {err}"),
            DaemonEvent::IpAdd(ip) => debug!(%ip, "mdns: address added; re-announcing"),
            DaemonEvent::IpDel(ip) => debug!(%ip, "mdns: address removed"),
            other => trace!("mdns: {other:?}"),
        }
    }

    /// Someone else answers for a name we have announced (see the module doc).
    fn on_name_conflict(&mut self, fullname: &str, theirs: Option<PeerId>) {
        if self.renamed_for_conflict {
            return;
        }
        match conflict_role(&self.local.peer_id, theirs.as_ref()) {
            ConflictRole::Keep => {
                if self.reannounce_at.is_none() {
                    warn!(
                        %fullname, other = ?theirs.map(|p| p.to_base58()),
                        "mdns: another node answers for our instance name; it gives way, we re-announce in {CONFLICT_REANNOUNCE_DELAY:?}"
                    );
                    self.reannounce_at = Some(Instant::now() + CONFLICT_REANNOUNCE_DELAY);
                }
            }
            ConflictRole::Rename => {
                let short = short_id(&self.local.peer_id);
                let new_instance = conflict_instance_name(&self.local.instance_name, &short);
                // A host name of its own too: the goodbye for the old name also withdraws the
                // old host's A/AAAA records, which must not take the new instance's with them.
                let new_host = host_name(&self.local.instance_name, &format!("{short}-2"));
                warn!(
                    %fullname, other = ?theirs.map(|p| p.to_base58()), new = %new_instance,
                    "mdns: another node answers for our instance name; moving to a unique name"
                );
                let Some(old_fullname) =
                    self.service.as_ref().map(|s| s.get_fullname().to_string())
                else {
                    return;
                };
                let new_service = match build_service_info(&self.local, &new_instance, &new_host) {
                    Ok(service) => service,
                    Err(err) => {
                        warn!("mdns: cannot build the renamed service: {err:#}");
                        return;
                    }
                };
                // The new name first, so that a failure leaves us advertised under the old one;
                // then the goodbye for the shared name. Replies are not awaited: the daemon
                // thread runs commands in order.
                if let Err(err) = self.daemon.register(new_service.clone()) {
                    warn!(
                        "mdns: cannot register {:?}: {err}",
                        new_service.get_fullname()
                    );
                    return;
                }
                if let Err(err) = self.daemon.unregister(&old_fullname) {
                    warn!("mdns: cannot withdraw {old_fullname:?}: {err}");
                }
                self.own_names = HashSet::from([new_service.get_fullname().to_lowercase()]);
                self.announced = false;
                self.service = Some(new_service);
                self.renamed_for_conflict = true;
                self.reannounce_at = None;
            }
        }
    }

    /// Registering an already registered service makes mdns-sd announce it again at once.
    fn reannounce(&mut self) {
        self.reannounce_at = None;
        let Some(service) = &self.service else {
            return;
        };
        debug!(fullname = %service.get_fullname(), "mdns: re-announcing after a name conflict");
        if let Err(err) = self.daemon.register(service.clone()) {
            warn!("mdns: cannot re-announce: {err}");
        }
    }

    /// Sends with backpressure; gives up when told to stop or when nobody listens.
    async fn emit(&self, event: DiscoveryEvent) -> Flow {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Flow::Stop,
            sent = self.events.send(event) => match sent {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            },
        }
    }

    /// Unregisters (goodbyes) and shuts the daemon down, each bounded by a timeout.
    async fn withdraw_and_shutdown(&mut self) {
        if let Some(service) = &self.service {
            self.withdraw(service.get_fullname()).await;
        }
        match self.daemon.shutdown() {
            Ok(reply) => {
                match tokio::time::timeout(DAEMON_SHUTDOWN_TIMEOUT, reply.recv_async()).await {
                    Ok(Ok(DaemonStatus::Shutdown)) | Ok(Err(_)) => debug!("mdns: daemon shut down"),
                    Ok(Ok(status)) => debug!("mdns: daemon status after shutdown: {status:?}"),
                    Err(_) => warn!(
                        "mdns: daemon shutdown not confirmed within {DAEMON_SHUTDOWN_TIMEOUT:?}"
                    ),
                }
            }
            Err(mdns_sd::Error::DaemonShutdown) => {}
            Err(err) => warn!("mdns: cannot shut the daemon down: {err}"),
        }
    }

    /// Unregisters `fullname` (goodbye now and, from mdns-sd, once more 120 ms later).
    async fn withdraw(&self, fullname: &str) {
        match self.daemon.unregister(fullname) {
            Ok(reply) => match tokio::time::timeout(UNREGISTER_TIMEOUT, reply.recv_async()).await {
                Ok(Ok(UnregisterStatus::OK)) => {
                    debug!(%fullname, "mdns: goodbye sent");
                    tokio::time::sleep(GOODBYE_REPEAT_WAIT).await;
                }
                Ok(Ok(UnregisterStatus::NotFound)) => {
                    debug!(%fullname, "mdns: nothing to unregister")
                }
                Ok(Err(_)) => debug!("mdns: daemon gone before unregister"),
                Err(_) => warn!("mdns: unregister not confirmed within {UNREGISTER_TIMEOUT:?}"),
            },
            Err(err) => debug!("mdns: cannot unregister: {err}"),
        }
    }
}

/// The next monitor event; `None` when the channel closed; never resolves without a channel.
async fn next_daemon_event(
    monitor: Option<&mdns_sd::Receiver<DaemonEvent>>,
) -> Option<DaemonEvent> {
    match monitor {
        Some(monitor) => monitor.recv_async().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use libp2p::identity::Keypair;

    use super::*;

    fn random_peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    const MESH: &str = "00112233aabbccdd";
    const OTHER_MESH: &str = "ffeeddccbbaa9988";

    fn local(peer_id: PeerId) -> LocalNode {
        LocalNode::from_config(&MdnsConfig::new("alpha", peer_id, MESH, 7400))
            .expect("valid config")
    }

    /// Fuzz target (bolero; see `fuzz/README.md`): a TXT record's wire bytes, random or a
    /// valid record of our mesh with byte-level mutations, parsed by mdns-sd and classified
    /// with a random full name, port and addresses. Never a panic; a record taken as a peer
    /// carries a peer id from its TXT, the instance name and at least one address.
    #[test]
    fn fuzz_txt_record() {
        let me = local(random_peer());
        let them = random_peer();
        let id = them.to_base58();
        let seed: Vec<u8> = {
            let mut wire = Vec::new();
            for (key, value) in [
                ("id", id.as_bytes()),
                ("mesh", MESH.as_bytes()),
                ("pv", b"1".as_slice()),
                ("v", b"0.1.0".as_slice()),
            ] {
                let entry = [key.as_bytes(), b"=", value].concat();
                wire.push(u8::try_from(entry.len()).expect("short entries"));
                wire.extend_from_slice(&entry);
            }
            wire
        };
        type Input = (Vec<u8>, Vec<(u8, u16, u8)>, String, u16, Vec<[u8; 4]>, bool);
        bolero::check!()
            .with_type::<Input>()
            .with_test_time(Duration::from_millis(300))
            .for_each(|(raw, mutations, fullname, port, v4, loopback)| {
                let mut wire = if mutations.is_empty() {
                    raw.clone()
                } else {
                    seed.clone()
                };
                for &(kind, at, value) in mutations.iter().take(16) {
                    let at = usize::from(at) % wire.len().max(1);
                    match (kind % 4, wire.is_empty()) {
                        (0, false) => wire[at] ^= 1 << (value % 8),
                        (1, false) => wire[at] = value,
                        (2, _) => wire.insert(at.min(wire.len()), value),
                        (3, _) => wire.truncate(at),
                        _ => {}
                    }
                }
                let txt = TxtProperties::from(&wire[..]);
                let instance = instance_of(fullname);
                let addrs: Vec<IpAddr> = v4.iter().map(|o| IpAddr::from(*o)).collect();
                let record = ServiceRecord {
                    instance,
                    port: *port,
                    addrs,
                    txt: &txt,
                };
                let policy = if *loopback {
                    InterfacePolicy::LoopbackOnly
                } else {
                    InterfacePolicy::Lan
                };
                if let Verdict::Peer(peer) = classify(&record, &me, policy) {
                    assert_eq!(Ok(peer.peer_id), parse_peer_id(&txt));
                    assert_eq!(peer.name, instance);
                    assert!(!peer.addrs.is_empty());
                }
            });
    }

    /// A TXT record as on the wire: length-prefixed `key=value` strings.
    fn txt(entries: &[(&str, &[u8])]) -> TxtProperties {
        let mut wire = Vec::new();
        for (key, value) in entries {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value);
            wire.push(u8::try_from(entry.len()).expect("test entries are short"));
            wire.extend_from_slice(&entry);
        }
        TxtProperties::from(&wire[..])
    }

    fn valid_txt(peer: &PeerId, mesh: &str) -> TxtProperties {
        let id = peer.to_base58();
        txt(&[
            ("id", id.as_bytes()),
            ("mesh", mesh.as_bytes()),
            ("pv", b"1"),
            ("v", b"0.1.0"),
        ])
    }

    fn record<'a>(txt: &'a TxtProperties, addrs: &[&str]) -> ServiceRecord<'a> {
        ServiceRecord {
            instance: "beta",
            port: 7401,
            addrs: addrs
                .iter()
                .map(|a| a.parse().expect("test address"))
                .collect(),
            txt,
        }
    }

    #[test]
    fn a_valid_record_of_our_mesh_is_a_peer_with_quic_addresses() {
        let me = local(random_peer());
        let them = random_peer();
        let txt = valid_txt(&them, MESH);
        let rec = record(
            &txt,
            &[
                "192.0.2.7",
                "fd00::7",
                "127.0.0.1",
                "::1",
                "fe80::1",
                "169.254.3.4",
            ],
        );
        let Verdict::Peer(peer) = classify(&rec, &me, InterfacePolicy::Lan) else {
            panic!(
                "expected a peer, got {:?}",
                classify(&rec, &me, InterfacePolicy::Lan)
            );
        };
        assert_eq!(peer.peer_id, them);
        assert_eq!(peer.name, "beta");
        assert_eq!(peer.version, "0.1.0");
        let addrs: Vec<String> = peer.addrs.iter().map(ToString::to_string).collect();
        assert_eq!(
            addrs,
            [
                "/ip4/192.0.2.7/udp/7401/quic-v1",
                "/ip6/fd00::7/udp/7401/quic-v1"
            ]
        );
    }

    #[test]
    fn mesh_ids_compare_without_case() {
        let me = local(random_peer());
        let txt = valid_txt(&random_peer(), &MESH.to_uppercase());
        assert!(matches!(
            classify(&record(&txt, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
            Verdict::Peer(_)
        ));
    }

    #[test]
    fn own_foreign_incompatible_and_unreachable_records_are_told_apart() {
        let my_id = random_peer();
        let me = local(my_id);
        let own = valid_txt(&my_id, OTHER_MESH);
        assert_eq!(
            classify(&record(&own, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
            Verdict::Own
        );

        let them = random_peer();
        let foreign = valid_txt(&them, OTHER_MESH);
        assert_eq!(
            classify(&record(&foreign, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
            Verdict::ForeignMesh {
                peer_id: them,
                mesh: OTHER_MESH.to_string()
            }
        );

        let id = them.to_base58();
        let newer = txt(&[
            ("id", id.as_bytes()),
            ("mesh", MESH.as_bytes()),
            ("pv", b"2"),
            ("v", b"9"),
        ]);
        assert_eq!(
            classify(&record(&newer, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
            Verdict::Incompatible {
                peer_id: them,
                protocol_version: 2
            }
        );

        let ours = valid_txt(&them, MESH);
        assert_eq!(
            classify(
                &record(&ours, &["127.0.0.1", "fe80::1"]),
                &me,
                InterfacePolicy::Lan
            ),
            Verdict::NoUsableAddress { peer_id: them }
        );
        // Loopback addresses count in the loopback-only test mode; link-local never does.
        assert!(matches!(
            classify(&record(&ours, &["127.0.0.1", "fe80::1"]), &me, InterfacePolicy::LoopbackOnly),
            Verdict::Peer(p) if p.addrs.len() == 1
        ));
    }

    #[test]
    fn malformed_records_are_rejected_with_a_reason() {
        let me = local(random_peer());
        let id = random_peer().to_base58();
        let id = id.as_bytes();
        let cases: Vec<(&str, TxtProperties)> = vec![
            (
                "no id",
                txt(&[("mesh", MESH.as_bytes()), ("pv", b"1"), ("v", b"x")]),
            ),
            (
                "bad id",
                txt(&[
                    ("id", b"not-a-peer-id"),
                    ("mesh", MESH.as_bytes()),
                    ("pv", b"1"),
                    ("v", b"x"),
                ]),
            ),
            (
                "id not UTF-8",
                txt(&[
                    ("id", &[0xff, 0xfe]),
                    ("mesh", MESH.as_bytes()),
                    ("pv", b"1"),
                    ("v", b"x"),
                ]),
            ),
            ("no mesh", txt(&[("id", id), ("pv", b"1"), ("v", b"x")])),
            (
                "mesh not hex",
                txt(&[("id", id), ("mesh", b"zz"), ("pv", b"1"), ("v", b"x")]),
            ),
            (
                "no pv",
                txt(&[("id", id), ("mesh", MESH.as_bytes()), ("v", b"x")]),
            ),
            (
                "pv not a number",
                txt(&[
                    ("id", id),
                    ("mesh", MESH.as_bytes()),
                    ("pv", b"-1"),
                    ("v", b"x"),
                ]),
            ),
            (
                "no v",
                txt(&[("id", id), ("mesh", MESH.as_bytes()), ("pv", b"1")]),
            ),
            (
                "v too long",
                txt(&[
                    ("id", id),
                    ("mesh", MESH.as_bytes()),
                    ("pv", b"1"),
                    ("v", &[b'x'; 65]),
                ]),
            ),
            ("empty TXT", txt(&[])),
        ];
        for (what, txt) in &cases {
            let verdict = classify(&record(txt, &["192.0.2.7"]), &me, InterfacePolicy::Lan);
            assert!(
                matches!(verdict, Verdict::Malformed { .. }),
                "{what}: {verdict:?}"
            );
        }
        let ok = txt(&[
            ("id", id),
            ("mesh", MESH.as_bytes()),
            ("pv", b"1"),
            ("v", b"x"),
        ]);
        let mut zero_port = record(&ok, &["192.0.2.7"]);
        zero_port.port = 0;
        assert!(matches!(
            classify(&zero_port, &me, InterfacePolicy::Lan),
            Verdict::Malformed { .. }
        ));
    }

    #[test]
    fn quic_addresses_are_sorted_deduplicated_and_filtered() {
        let addrs: Vec<IpAddr> = vec![
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(224, 0, 0, 251).into(),
            Ipv4Addr::BROADCAST.into(),
            "::ffff:10.0.0.9"
                .parse::<Ipv6Addr>()
                .expect("v4-mapped")
                .into(),
            "2001:db8::1".parse::<Ipv6Addr>().expect("global").into(),
        ];
        let got: Vec<String> = quic_addrs(&addrs, 9, InterfacePolicy::Lan)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "/ip4/10.0.0.1/udp/9/quic-v1",
                "/ip4/10.0.0.2/udp/9/quic-v1",
                "/ip6/2001:db8::1/udp/9/quic-v1"
            ]
        );
    }

    #[test]
    fn instance_part_of_a_full_name() {
        assert_eq!(instance_of("alpha._mesh._udp.local."), "alpha");
        assert_eq!(instance_of("Lab (2)._MESH._UDP.local."), "Lab (2)");
        assert_eq!(instance_of("a.b._mesh._udp.local."), "a.b");
        assert_eq!(instance_of("_mesh._udp.local."), "_mesh._udp.local.");
        assert_eq!(instance_of("x._other._udp.local."), "x._other._udp.local.");
        assert_eq!(instance_of("é"), "é");
        // A multi-byte character where the '.' before the type would be must not panic.
        assert_eq!(instance_of("abcémesh._udp.local."), "abcémesh._udp.local.");
    }

    #[test]
    fn host_names_are_one_lowercase_label_with_the_short_id() {
        assert_eq!(
            host_name("My Laptop.lan", "Kv8j3Rt1Qx"),
            "my-laptop-lan-kv8j3rt1qx.local."
        );
        assert_eq!(host_name("--Über__Pi--", "abc"), "ber-pi-abc.local.");
        assert_eq!(host_name("", "abc"), "mesh-abc.local.");
        assert_eq!(host_name("ü!", "abc"), "mesh-abc.local.");
        // The host of a service renamed after a late conflict.
        assert_eq!(
            host_name("late", "Kv8j3Rt1Qx-2"),
            "late-kv8j3rt1qx-2.local."
        );
        let long = host_name(&"x".repeat(200), "Kv8j3Rt1Qx");
        let label = long.strip_suffix(".local.").expect("suffix");
        assert_eq!(label.len(), MAX_LABEL_LEN);
        assert!(label.ends_with("-kv8j3rt1qx"));
    }

    #[test]
    fn instance_names_fit_one_label() {
        assert_eq!(instance_name("  lab\t01\n", "abc"), "lab 01");
        assert_eq!(instance_name("\u{7}", "abc"), "mesh-abc");
        let long = instance_name(&"é".repeat(40), "abc"); // 80 bytes
        assert!(
            long.len() <= MAX_LABEL_LEN && long.chars().all(|c| c == 'é'),
            "{long}"
        );
        let renamed = conflict_instance_name(&"é".repeat(40), "Kv8j3Rt1Qx");
        assert!(renamed.len() <= MAX_LABEL_LEN, "{renamed}");
        assert!(renamed.ends_with(" (Kv8j3Rt1Qx)"));
        assert_eq!(
            conflict_instance_name("lab", "Kv8j3Rt1Qx"),
            "lab (Kv8j3Rt1Qx)"
        );
    }

    #[test]
    fn exactly_one_side_of_a_conflict_renames() {
        let (a, b) = (random_peer(), random_peer());
        let roles = (conflict_role(&a, Some(&b)), conflict_role(&b, Some(&a)));
        assert!(
            matches!(
                roles,
                (ConflictRole::Rename, ConflictRole::Keep)
                    | (ConflictRole::Keep, ConflictRole::Rename)
            ),
            "{roles:?}"
        );
        assert_eq!(conflict_role(&a, None), ConflictRole::Rename);
    }

    #[test]
    fn ip_check_interval_rounds_up_to_seconds() {
        assert_eq!(ip_check_secs(Duration::ZERO), 0);
        assert_eq!(ip_check_secs(Duration::from_millis(300)), 1);
        assert_eq!(ip_check_secs(Duration::from_secs(1)), 1);
        assert_eq!(ip_check_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn config_is_validated_and_the_service_carries_our_txt() {
        let peer = random_peer();
        let bad_mesh = MdnsConfig::new("alpha", peer, "not hex", 7400);
        assert!(matches!(
            LocalNode::from_config(&bad_mesh),
            Err(MdnsError::InvalidConfig { .. })
        ));

        let local =
            LocalNode::from_config(&MdnsConfig::new("Alpha", peer, MESH.to_uppercase(), 7400))
                .expect("valid");
        let info = build_service_info(&local, &local.instance_name, &local.host_name)
            .expect("valid service");
        assert_eq!(info.get_fullname(), "Alpha._mesh._udp.local.");
        assert_eq!(info.get_port(), 7400);
        assert!(
            info.get_hostname().starts_with("alpha-") && info.get_hostname().ends_with(".local.")
        );
        let expected_id = peer.to_base58();
        assert_eq!(info.get_property_val_str("id"), Some(expected_id.as_str()));
        assert_eq!(info.get_property_val_str("mesh"), Some(MESH));
        assert_eq!(
            info.get_property_val_str("pv"),
            Some(crate::PROTOCOL_VERSION.to_string().as_str())
        );
        assert_eq!(info.get_property_val_str("v"), Some(crate::AGENT_VERSION));
        // The record we send is one we accept.
        let me = local_with_other_id();
        let rec = ServiceRecord {
            instance: "Alpha",
            port: 7400,
            addrs: vec!["192.0.2.1".parse().expect("ip")],
            txt: info.get_properties(),
        };
        assert!(
            matches!(classify(&rec, &me, InterfacePolicy::Lan), Verdict::Peer(p) if p.peer_id == peer)
        );
    }

    fn local_with_other_id() -> LocalNode {
        local(random_peer())
    }

    // ---- Real daemons on loopback -------------------------------------------------------

    /// Generous ceiling for anything that crosses the daemons; measured times are printed.
    const CEILING: Duration = Duration::from_secs(10);

    /// Whether real mdns-sd daemons may run here. mdns-sd joins the mDNS groups on *every* up
    /// interface when its thread starts, before our interface selection applies, so on a host
    /// with a LAN link the test would announce its group memberships there. It runs when that
    /// cannot happen (a network namespace with only `lo`, Linux), or when asked to with
    /// `MESH_TEST_MDNS=1`.
    fn may_run_daemons() -> Result<(), String> {
        if std::env::var_os("MESH_TEST_MDNS").is_some_and(|v| v == "1") {
            return Ok(());
        }
        let entries = std::fs::read_dir("/sys/class/net").map_err(|_| {
            "cannot list interfaces (not Linux?); set MESH_TEST_MDNS=1 to run".to_string()
        })?;
        let mut lan = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let flags = std::fs::read_to_string(entry.path().join("flags")).unwrap_or_default();
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
            const IFF_UP: u32 = 0x1;
            const IFF_LOOPBACK: u32 = 0x8;
            if flags & IFF_UP == 0 {
                continue;
            }
            if flags & IFF_LOOPBACK == 0 {
                lan.push(name);
            }
        }
        if !lan.is_empty() {
            return Err(format!(
                "up non-loopback interfaces {lan:?} would see mDNS group joins; run in a network \
                 namespace with only lo (ip netns exec), or set MESH_TEST_MDNS=1"
            ));
        }
        Ok(())
    }

    /// Whether multicast works on loopback here: one bare mdns-sd daemon must hear itself.
    async fn loopback_multicast_works() -> Result<(), String> {
        let daemon = ServiceDaemon::new().map_err(|e| format!("cannot create a daemon: {e}"))?;
        let outcome = async {
            daemon
                .disable_interface(IfKind::All)
                .map_err(|e| e.to_string())?;
            daemon
                .enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
                .map_err(|e| e.to_string())?;
            let ty = "_meshprobe._udp.local.";
            let mut info = ServiceInfo::new(ty, "probe", "probe.local.", (), 9, None)
                .map_err(|e| e.to_string())?
                .enable_addr_auto();
            info.set_requires_probe(false);
            daemon.register(info).map_err(|e| e.to_string())?;
            let browse = daemon.browse(ty).map_err(|e| e.to_string())?;
            let heard = tokio::time::timeout(Duration::from_secs(3), async {
                while let Ok(event) = browse.recv_async().await {
                    if matches!(event, ServiceEvent::ServiceResolved(_)) {
                        return true;
                    }
                }
                false
            })
            .await;
            match heard {
                Ok(true) => Ok(()),
                _ => Err(
                    "a daemon restricted to loopback does not hear itself (no multicast on lo?)"
                        .to_string(),
                ),
            }
        }
        .await;
        let _ = daemon.shutdown();
        outcome
    }

    async fn skip_reason() -> Option<String> {
        if let Err(reason) = may_run_daemons() {
            return Some(reason);
        }
        loopback_multicast_works().await.err()
    }

    /// Event buffer of this size keeps the actor's backpressure path in play.
    const TEST_EVENT_CAPACITY: usize = 16;

    struct TestNode {
        peer_id: PeerId,
        handle: MdnsHandle,
        events: mpsc::Receiver<DiscoveryEvent>,
        /// Everything received so far, for "never reported" assertions.
        seen: Vec<DiscoveryEvent>,
    }

    impl TestNode {
        fn spawn(name: &str, mesh: &str, port: u16, shutdown: &CancellationToken) -> Self {
            let peer_id = random_peer();
            let (tx, events) = mpsc::channel(TEST_EVENT_CAPACITY);
            let config = MdnsConfig::new(name, peer_id, mesh, port);
            let handle =
                spawn_with_policy(config, InterfacePolicy::LoopbackOnly, tx, shutdown.clone())
                    .expect("mdns starts");
            Self {
                peer_id,
                handle,
                events,
                seen: Vec::new(),
            }
        }

        /// Waits for the first event matching `pred` (or fails at `CEILING`).
        async fn wait_for(
            &mut self,
            what: &str,
            pred: impl Fn(&DiscoveryEvent) -> bool,
        ) -> DiscoveryEvent {
            let deadline = Instant::now() + CEILING;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(event)) => {
                        self.seen.push(event.clone());
                        if pred(&event) {
                            return event;
                        }
                    }
                    Ok(None) => panic!("{what}: event channel closed"),
                    Err(_) => panic!("{what}: not within {CEILING:?}; saw {:?}", self.seen),
                }
            }
        }

        async fn wait_found(&mut self, peer: PeerId, what: &str) -> DiscoveredPeer {
            match self
                .wait_for(
                    what,
                    |e| matches!(e, DiscoveryEvent::Found(p) if p.peer_id == peer),
                )
                .await
            {
                DiscoveryEvent::Found(p) => p,
                DiscoveryEvent::Lost(_) => unreachable!("the predicate only accepts Found"),
            }
        }

        /// Takes what arrived without waiting.
        fn drain(&mut self) {
            while let Ok(event) = self.events.try_recv() {
                self.seen.push(event);
            }
        }

        fn ever_reported(&self, peer: PeerId) -> bool {
            self.seen
                .iter()
                .any(|e| matches!(e, DiscoveryEvent::Found(p) if p.peer_id == peer))
        }
    }

    /// Polls a cheap condition until it holds (or fails at `CEILING`).
    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + CEILING;
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within {CEILING:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_of_a_mesh_find_each_other_and_ignore_another_mesh() {
        if let Some(reason) = skip_reason().await {
            eprintln!("skipping the mDNS daemon test: {reason}");
            return;
        }
        let shutdown = CancellationToken::new();
        let mut alpha = TestNode::spawn("alpha", MESH, 7401, &shutdown);
        let mut gamma = TestNode::spawn("gamma", OTHER_MESH, 7403, &shutdown);
        // Once alpha and gamma have heard each other (and ignored each other: other mesh),
        // both have finished probing and answer queries.
        let settling = Instant::now();
        wait_until("alpha and gamma established", || {
            alpha.handle.stats().foreign_mesh_ignored > 0
                && gamma.handle.stats().foreign_mesh_ignored > 0
        })
        .await;
        eprintln!(
            "mdns: alpha and gamma heard each other after {:?}",
            settling.elapsed()
        );

        // beta starts later and must find the running alpha quickly: alpha answers its query.
        let started = Instant::now();
        let mut beta = TestNode::spawn("beta", MESH, 7402, &shutdown);
        let alpha_seen = beta.wait_found(alpha.peer_id, "beta finds alpha").await;
        let beta_finds_alpha = started.elapsed();
        let beta_seen = alpha.wait_found(beta.peer_id, "alpha finds beta").await;
        let alpha_finds_beta = started.elapsed();
        eprintln!(
            "mdns: beta found alpha after {beta_finds_alpha:?}, alpha found beta after {alpha_finds_beta:?}"
        );

        assert_eq!(alpha_seen.name, "alpha");
        assert_eq!(alpha_seen.version, crate::AGENT_VERSION);
        assert!(
            alpha_seen
                .addrs
                .iter()
                .all(|a| a.to_string().ends_with("/udp/7401/quic-v1")),
            "{alpha_seen:?}"
        );
        assert_eq!(beta_seen.name, "beta");

        // gamma's records reach both and are ignored (counted), never reported.
        wait_until("beta ignores gamma", || {
            beta.handle.stats().foreign_mesh_ignored > 0
        })
        .await;
        wait_until("gamma ignores beta too", || {
            gamma.handle.stats().foreign_mesh_ignored >= 2
        })
        .await;
        alpha.drain();
        beta.drain();
        gamma.drain();
        assert!(!alpha.ever_reported(gamma.peer_id) && !beta.ever_reported(gamma.peer_id));
        assert!(gamma.seen.is_empty(), "gamma reported {:?}", gamma.seen);
        assert!(
            !alpha.ever_reported(alpha.peer_id) && !beta.ever_reported(beta.peer_id),
            "heard itself"
        );
        assert_eq!(alpha.handle.stats().malformed_ignored, 0);

        // beta leaves with goodbyes: alpha hears it.
        let beta_id = beta.peer_id;
        let stopping = Instant::now();
        beta.handle.stop().await;
        alpha
            .wait_for("alpha sees beta's goodbye", |e| {
                *e == DiscoveryEvent::Lost(beta_id)
            })
            .await;
        eprintln!(
            "mdns: alpha lost beta {:?} after stop began",
            stopping.elapsed()
        );

        // Cancelling the parent token stops the others too.
        shutdown.cancel();
        alpha.handle.stop().await;
        gamma.handle.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_node_with_the_same_name_is_renamed_by_probing() {
        if let Some(reason) = skip_reason().await {
            eprintln!("skipping the mDNS daemon test: {reason}");
            return;
        }
        let shutdown = CancellationToken::new();
        let mut first = TestNode::spawn("lab", MESH, 7411, &shutdown);
        // Once an observer has found `first`, `first` owns the name, so `second` finds it
        // taken while probing.
        let mut observer = TestNode::spawn("observer", MESH, 7410, &shutdown);
        observer
            .wait_found(first.peer_id, "observer finds first")
            .await;
        let mut second = TestNode::spawn("lab", MESH, 7412, &shutdown);
        let first_seen = second.wait_found(first.peer_id, "second finds first").await;
        let second_seen = first.wait_found(second.peer_id, "first finds second").await;
        assert_eq!(first_seen.name, "lab");
        assert_ne!(
            second_seen.name, "lab",
            "two instances under one name: {second_seen:?}"
        );
        eprintln!(
            "mdns: same-name nodes advertised as {:?} and {:?}",
            first_seen.name, second_seen.name
        );
        shutdown.cancel();
        observer.handle.stop().await;
        first.handle.stop().await;
        second.handle.stop().await;
    }
}
