//! The DNS-SD record of a node, both ways, sans-IO: what we announce ([`LocalNode`], the
//! instance and host names, [`build_service_info`]) and what a resolved record of another node
//! means ([`classify`]: own, foreign mesh, malformed, incompatible, a peer with these QUIC
//! addresses and this name), and which addresses are dialable under an [`InterfacePolicy`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{ResolvedService, ServiceInfo, TxtProperties};

use super::config::*;
use crate::discovery::DiscoveredPeer;
use crate::identity::short_id;

/// Which interfaces the daemon uses and which addresses count as dialable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InterfacePolicy {
    /// Production: every up interface except loopback; loopback and link-local addresses of
    /// peers are dropped.
    Lan,
    /// Tests on one host: loopback interfaces only, loopback addresses kept (link-local still
    /// dropped). Never sends on a real link.
    #[cfg(test)]
    LoopbackOnly,
}

impl InterfacePolicy {
    pub(super) fn keeps_loopback_addrs(self) -> bool {
        match self {
            Self::Lan => false,
            #[cfg(test)]
            Self::LoopbackOnly => true,
        }
    }
}

/// What the actor needs to know about this node, validated once.
#[derive(Debug, Clone)]
pub(super) struct LocalNode {
    pub(super) peer_id: PeerId,
    /// Lowercase, so that comparison with received ids ignores case.
    pub(super) mesh_id: String,
    /// The previous key's mesh id, lowercase (records carrying it are kept too).
    pub(super) previous_mesh_id: Option<String>,
    pub(super) protocol_version: u32,
    pub(super) agent_version: String,
    pub(super) quic_port: u16,
    /// The node name as advertised in TXT `name` (see [`display_name`]).
    pub(super) display_name: String,
    /// `<display name> (<short id>)`, one DNS label (see [`instance_name`]).
    pub(super) instance_name: String,
    /// `<label>-<short id>.local.`
    pub(super) host_name: String,
}

impl LocalNode {
    pub(super) fn from_config(config: &MdnsConfig) -> Result<Self, MdnsError> {
        let invalid = |reason: String| MdnsError::InvalidConfig { reason };
        let mesh_id = config.mesh_id.trim().to_ascii_lowercase();
        if !is_valid_mesh_id(&mesh_id) {
            return Err(invalid(format!(
                "mesh id {:?} is not 1..={MAX_MESH_ID_LEN} hex characters",
                config.mesh_id
            )));
        }
        let short = short_id(&config.peer_id);
        let display_name = display_name(&config.node_name, &short);
        Ok(Self {
            peer_id: config.peer_id,
            mesh_id,
            previous_mesh_id: config
                .previous_mesh_id
                .as_deref()
                .map(|id| id.trim().to_ascii_lowercase()),
            protocol_version: config.protocol_version,
            agent_version: truncate_utf8(config.agent_version.trim(), MAX_AGENT_VERSION_LEN)
                .to_string(),
            quic_port: config.quic_port,
            instance_name: instance_name(&display_name, &short),
            host_name: host_name(&config.node_name, &short),
            display_name,
        })
    }
}

/// Our DNS-SD service: instance [`LocalNode::instance_name`] on host [`LocalNode::host_name`],
/// TXT `id`, `mesh`, `pv`, `v`, `name`, addresses filled in by the daemon.
pub(super) fn build_service_info(local: &LocalNode) -> Result<ServiceInfo, MdnsError> {
    let id = local.peer_id.to_base58();
    let pv = local.protocol_version.to_string();
    let properties = [
        (TXT_ID, id.as_str()),
        (TXT_MESH, local.mesh_id.as_str()),
        (TXT_PROTOCOL_VERSION, pv.as_str()),
        (TXT_AGENT_VERSION, local.agent_version.as_str()),
        (TXT_NAME, local.display_name.as_str()),
    ];
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        &local.instance_name,
        &local.host_name,
        (),
        local.quic_port,
        &properties[..],
    )
    .map_err(|source| MdnsError::Register {
        fullname: format!("{}.{SERVICE_TYPE}", local.instance_name),
        source,
    })?;
    // Both names carry our id, so no other node can own them: RFC 6762 probing (~0.8 s before
    // the first announcement, measured) would only delay how soon the others hear of us.
    info.set_requires_probe(false);
    // Addresses are filled in by the daemon and follow interface changes.
    Ok(info.enable_addr_auto())
}

/// The node name we advertise: control characters become spaces, surrounding space is
/// trimmed, and the result is cut to [`MAX_TXT_NAME_LEN`] bytes. An empty name becomes
/// `mesh-<short>`.
pub(super) fn display_name(node_name: &str, short: &str) -> String {
    let cleaned: String = node_name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = truncate_utf8(cleaned.trim(), MAX_TXT_NAME_LEN).trim_end();
    if cleaned.is_empty() {
        return format!("{FALLBACK_HOST_LABEL}-{short}");
    }
    cleaned.to_string()
}

/// The instance name: `<display name> (<short id>)`, the name cut so that the whole fits one
/// DNS label. The id makes it ours alone, which is why we announce it without probing.
pub(super) fn instance_name(display_name: &str, short: &str) -> String {
    let suffix = id_suffix(short);
    let room = MAX_LABEL_LEN.saturating_sub(suffix.len());
    format!("{}{suffix}", truncate_utf8(display_name, room).trim_end())
}

/// ` (<short id>)`, what [`instance_name`] appends to the node name.
fn id_suffix(short: &str) -> String {
    format!(" ({short})")
}

/// `<label>-<short id lowercased>.local.` where `label` keeps `[a-z0-9]` of the lowercased node
/// name and turns every other run of characters into one `-`. DNS compares names without
/// case, hence the lowercase id (still ~50 bits of the id's random tail).
pub(super) fn host_name(node_name: &str, short: &str) -> String {
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
pub(super) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(super) fn is_valid_mesh_id(mesh: &str) -> bool {
    !mesh.is_empty() && mesh.len() <= MAX_MESH_ID_LEN && mesh.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What one resolved service means to us. Pure: decided from the record and [`LocalNode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
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
pub(super) struct ServiceRecord<'a> {
    /// Instance name, i.e. the full name without `._mesh._udp.local.`.
    pub(super) instance: &'a str,
    pub(super) port: u16,
    pub(super) addrs: Vec<IpAddr>,
    pub(super) txt: &'a TxtProperties,
}

impl<'a> ServiceRecord<'a> {
    pub(super) fn from_resolved(resolved: &'a ResolvedService) -> Self {
        Self {
            instance: instance_of(&resolved.fullname),
            port: resolved.port,
            addrs: resolved.addresses.iter().map(|a| a.to_ip_addr()).collect(),
            txt: &resolved.txt_properties,
        }
    }
}

/// The instance part of a full name; the whole name if it is not of our type.
pub(super) fn instance_of(fullname: &str) -> &str {
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
pub(super) fn txt_str<'t>(txt: &'t TxtProperties, key: &str) -> Result<&'t str, String> {
    match txt.get_property_val(key) {
        None => Err(format!("TXT {key:?} missing")),
        Some(None) => Err(format!("TXT {key:?} has no value")),
        Some(Some(bytes)) => {
            std::str::from_utf8(bytes).map_err(|_| format!("TXT {key:?} is not UTF-8"))
        }
    }
}

pub(super) fn parse_peer_id(txt: &TxtProperties) -> Result<PeerId, String> {
    let text = txt_str(txt, TXT_ID)?;
    if text.len() > MAX_PEER_ID_LEN {
        return Err(format!("TXT {TXT_ID:?} is {} bytes long", text.len()));
    }
    PeerId::from_str(text).map_err(|_| format!("TXT {TXT_ID:?} is not a peer id: {text:?}"))
}

pub(super) fn classify(
    record: &ServiceRecord<'_>,
    local: &LocalNode,
    policy: InterfacePolicy,
) -> Verdict {
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
    if mesh != local.mesh_id && local.previous_mesh_id.as_ref() != Some(&mesh) {
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
        name: peer_name(record, &peer_id),
        addrs,
        version,
    })
}

/// The node name a peer's record shows: TXT `name` if it is there and valid (UTF-8, at most
/// [`MAX_TXT_NAME_LEN`] bytes, no control characters, not blank), else the instance name
/// without the ` (<short id>)` that this version appends (agents before TXT `name` announce
/// the bare node name, which is kept as is). Never fails: the name is for display only.
pub(super) fn peer_name(record: &ServiceRecord<'_>, peer_id: &PeerId) -> String {
    if let Ok(name) = txt_str(record.txt, TXT_NAME)
        && name.len() <= MAX_TXT_NAME_LEN
        && !name.chars().any(char::is_control)
        && !name.trim().is_empty()
    {
        return name.to_string();
    }
    let short = short_id(peer_id);
    let suffix = id_suffix(&short);
    match record.instance.strip_suffix(suffix.as_str()) {
        Some(name) if !name.trim().is_empty() => name.to_string(),
        // Nothing usable (a hostile or broken record): the short id, never an empty name.
        _ if record.instance.trim().is_empty() => short,
        _ => record.instance.to_string(),
    }
}

/// Whether a peer's address is worth dialing from another host.
pub(super) fn is_dialable(ip: IpAddr, policy: InterfacePolicy) -> bool {
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
pub(super) fn quic_addrs(addrs: &[IpAddr], port: u16, policy: InterfacePolicy) -> Vec<Multiaddr> {
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
