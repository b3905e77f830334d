//! Configuration, statistics and errors of mDNS discovery, and the constants of the record
//! format and of the actor's timing (each with its reason). A leaf of `mdns`: the other files
//! import it directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;

/// The DNS-SD service type of mesh agents. `_udp` because the advertised port is QUIC's.
/// Changing it makes old and new agents invisible to each other.
pub const SERVICE_TYPE: &str = "_mesh._udp.local.";

/// Default for [`MdnsConfig::ip_check_interval`]. mdns-sd only uses interfaces that are
/// oper-up and rescans every 5 s by default, so an agent started while its link comes up lost
/// 5 s (measured); 1 s is the smallest interval mdns-sd accepts. The agent itself passes its
/// profile's interval and the node's address changes (see [`super::rescan`]).
pub const DEFAULT_IP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// TXT key of the peer id (base58).
pub const TXT_ID: &str = "id";
/// TXT key of the mesh id (hex).
pub const TXT_MESH: &str = "mesh";
/// TXT key of the protocol version (decimal `u32`).
pub const TXT_PROTOCOL_VERSION: &str = "pv";
/// TXT key of the agent version (free text).
pub const TXT_AGENT_VERSION: &str = "v";
/// TXT key of the node name, for display (the instance name carries the short id as well).
/// Optional: agents before it was added do not send it.
pub const TXT_NAME: &str = "name";

/// Longest agent version we send or accept, in bytes. A TXT string is at most 255 bytes
/// including its key; 64 leaves room and keeps the whole record in one small packet.
pub const MAX_AGENT_VERSION_LEN: usize = 64;

/// Longest node name we send in TXT `name`, in bytes (cut on a character boundary); a longer
/// one received is ignored (the name then comes from the instance name). Node names are at
/// most 64 characters: 128 bytes keeps every ASCII name whole, and the TXT record under ~250
/// bytes, one small packet.
pub const MAX_TXT_NAME_LEN: usize = 128;

/// Longest mesh id we accept, in hex characters (32 bytes). Today's ids are 16 characters; the
/// slack lets a future, longer id be *ignored as foreign* instead of counted as malformed.
pub const MAX_MESH_ID_LEN: usize = 64;

/// Longest peer id text we try to parse. Ed25519 peer ids are 52 characters; anything much
/// longer is garbage and not worth parsing.
pub(super) const MAX_PEER_ID_LEN: usize = 128;

/// A DNS label (instance name, host name label) is at most 63 bytes on the wire (RFC 1035).
pub(super) const MAX_LABEL_LEN: usize = 63;

/// Host label used when the node name has no usable character at all.
pub(super) const FALLBACK_HOST_LABEL: &str = "mesh";

/// How long we wait for mdns-sd to confirm an unregister before shutting down anyway.
pub(super) const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(1);

/// mdns-sd sends the goodbye once at unregister and once more 120 ms later (RFC 6762 10.1
/// recommends repeating it). Shutting the daemon down earlier would lose the repeat.
pub(super) const GOODBYE_REPEAT_WAIT: Duration = Duration::from_millis(150);

/// How long we wait for the daemon thread to confirm shutdown.
pub(super) const DAEMON_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Wait between attempts to re-subscribe to the browse after mdns-sd dropped the subscription
/// (it does when 1000 events are queued) and refused the new one.
pub(super) const REBROWSE_RETRY: Duration = Duration::from_secs(1);

/// Bound on the instances we remember (to dedupe `Found` and map `ServiceRemoved` to a peer id).
/// A LAN with more mesh agents than this still works; extra instances are reported every time
/// they resolve and never `Lost`.
pub(super) const MAX_TRACKED_INSTANCES: usize = 4096;

/// Bound on the instance names we remember having warned about; cleared when full, so a
/// flood of garbage records costs at most a warning per this many records.
pub(super) const MAX_WARNED_INSTANCES: usize = 1024;

/// What [`super::spawn_mdns`] needs to advertise this node and recognise its peers.
#[derive(Debug, Clone)]
pub struct MdnsConfig {
    /// The node name: advertised in TXT `name` (cut to [`MAX_TXT_NAME_LEN`] bytes) and, with
    /// the short id after it, as the DNS-SD instance name (cut to one 63-byte label).
    pub node_name: String,
    /// Our peer id, advertised as TXT `id`; records carrying it are ours and ignored.
    pub peer_id: PeerId,
    /// Our mesh id as hex, advertised as TXT `mesh`; records of another mesh are ignored.
    pub mesh_id: String,
    /// The mesh id of our previous key (after `mesh key rotate`): records carrying it are
    /// members that missed the rotation, kept (admission hands them the new key).
    pub previous_mesh_id: Option<String>,
    /// Advertised as TXT `pv`; peers advertising another version are ignored.
    pub protocol_version: u32,
    /// Advertised as TXT `v` (cut to [`MAX_AGENT_VERSION_LEN`] bytes).
    pub agent_version: String,
    /// The UDP port our QUIC listener is bound on (SRV port). 0 means we have no listener:
    /// then we only browse and advertise nothing.
    pub quic_port: u16,
    /// How often mdns-sd rescans interfaces and addresses, re-announcing on changes, when
    /// nothing on `interfaces` says they changed (see [`super::rescan`]). Whole seconds
    /// (rounded up); zero disables the rescan (interfaces are then only those present at start,
    /// and those of a change on `interfaces`).
    pub ip_check_interval: Duration,
    /// Bumped by the node when its addresses change: the daemon then rescans every second for
    /// a few seconds. `None`: only `ip_check_interval`.
    pub interfaces: Option<tokio::sync::watch::Receiver<u64>>,
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
            previous_mesh_id: None,
            protocol_version: crate::PROTOCOL_VERSION,
            agent_version: crate::AGENT_VERSION.to_string(),
            quic_port,
            ip_check_interval: DEFAULT_IP_CHECK_INTERVAL,
            interfaces: None,
        }
    }
}

/// Counters since [`super::spawn_mdns`]; read with [`super::MdnsHandle::stats`].
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

#[derive(Debug, Default)]
pub(super) struct StatsCounters {
    pub(super) found: AtomicU64,
    pub(super) foreign_mesh_ignored: AtomicU64,
    pub(super) malformed_ignored: AtomicU64,
    pub(super) incompatible_version_ignored: AtomicU64,
}

impl StatsCounters {
    pub(super) fn snapshot(&self) -> MdnsStats {
        MdnsStats {
            found: self.found.load(Ordering::Relaxed),
            foreign_mesh_ignored: self.foreign_mesh_ignored.load(Ordering::Relaxed),
            malformed_ignored: self.malformed_ignored.load(Ordering::Relaxed),
            incompatible_version_ignored: self.incompatible_version_ignored.load(Ordering::Relaxed),
        }
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
