//! Advertising services on the LAN: a spec with `advertise = "_http._tcp"` is registered as a
//! standard DNS-SD service by the node that runs its copy, so a phone or laptop that is not a
//! mesh member finds it with any Bonjour or avahi browser, and the record moves with the copy.
//!
//! # What it owns
//!
//! The decision, sans-IO: [`plan`] reads the replicated state (instances and parsed specs) and
//! says which services this node advertises ([`AdvertisePlan::here`]), which copies other nodes
//! advertise ([`AdvertisePlan::elsewhere`]), and which of this node's services ask to be
//! advertised but cannot be ([`AdvertisePlan::refused`]). The record of one advertisement
//! ([`service_info`], [`host_name`]). And, in [`registrar`], the mdns-sd daemons that
//! announce and withdraw those records.
//!
//! It does not own the task that follows the document (`node::advertise`, which holds the
//! state snapshots this layer may not import), nor the mesh's own `_mesh._udp` records
//! ([`super::mdns`]).
//!
//! # The rule
//!
//! This node advertises a service when, in the document: the service is active and wanted
//! running (`desired = running`, not removed); its spec parses and has a valid `advertise`
//! type; its instance on this node (`instances["service@<this node id>"]`, written only by this
//! node) is `healthy` (a service without a health check is `healthy` while its process runs;
//! `starting` is accepted too for such a service, as the supervisor never stays in it); and
//! the instance has a first port. The port advertised is that first port (`$PORT`), as the
//! node published it. Any other state (`starting` under a health check, `unhealthy`,
//! `stopping`, `backoff`, `failed`, `stopped`) withdraws the record: a client is never sent
//! to a copy that is not ready or is going away. The same rule applied to other nodes'
//! instances gives [`AdvertisePlan::elsewhere`].
//!
//! # Record format
//!
//! | record | name | content |
//! |---|---|---|
//! | PTR | `<type>.local.` | → `<service>.<type>.local.` |
//! | SRV | `<service>.<type>.local.` | port = the instance's first port, target [`host_name`] |
//! | TXT | `<service>.<type>.local.` | `node=<node name>`, `mesh=<service name>` |
//! | A / AAAA | [`host_name`] | the node's addresses on the interface (mdns-sd, `enable_addr_auto`) |
//!
//! The instance name is the service name (a DNS label already: `[a-z0-9-]`, 1-63). The host
//! name is `<service>-<short id lowercased>.local.`: never the machine's own `<hostname>.local.`
//! (that belongs to the OS responder), never the `_mesh._udp` record's host (a goodbye
//! withdraws its host's address records too, which must not take another record's with them),
//! and unique per copy, so two nodes' copies never merge their addresses. The normative
//! description is `protocol/discovery.md`, section "Advertised services".

pub mod registrar;

use std::collections::{BTreeMap, BTreeSet};

use mdns_sd::ServiceInfo;

use crate::identity::NodeId;
use crate::state::{Desired, InstanceRecord, InstanceState, MeshState, ParsedSpecs};
use crate::supervisor::spec::{ServiceSpec, check_service_type};

/// TXT key of the name of the node running the copy.
pub const TXT_NODE: &str = "node";
/// TXT key of the mesh service name (the instance name may differ after a DNS-SD rename).
pub const TXT_SERVICE: &str = "mesh";

/// Longest node name put in TXT `node`, in bytes. A TXT string is at most 255 bytes with its
/// key; node names are at most 253 characters, which in UTF-8 could be more.
pub const MAX_TXT_NODE_NAME_LEN: usize = 200;

/// A DNS label (instance name, host name label) is at most 63 bytes (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// One service this node advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// The mesh service: the DNS-SD instance name.
    pub service: String,
    /// The DNS-SD service type as the spec gives it: `_http._tcp`.
    pub service_type: String,
    /// The instance's first port (`$PORT`).
    pub port: u16,
}

impl Advertisement {
    /// The type with its domain, as mdns-sd takes it: `_http._tcp.local.`.
    pub fn type_domain(&self) -> String {
        format!("{}.local.", self.service_type)
    }

    /// The full name before any rename: `web._http._tcp.local.`.
    pub fn fullname(&self) -> String {
        format!("{}.{}", self.service, self.type_domain())
    }
}

/// What the document says about advertisements, from this node's point of view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdvertisePlan {
    /// What this node advertises, by service name.
    pub here: BTreeMap<String, Advertisement>,
    /// Copies that other nodes advertise, as `(service, node id)`. A copy that leaves this set
    /// withdrew its record with goodbyes, which flush every cache's PTR of the service's name,
    /// also the one this node announces: this node must announce its own again.
    pub elsewhere: BTreeSet<(String, NodeId)>,
    /// This node's services that ask to be advertised and run here but cannot be advertised,
    /// with the reason (a spec from another agent version with a type this one refuses, an
    /// instance without a port).
    pub refused: BTreeMap<String, String>,
}

/// Which copies are advertised where: the rule of the module doc, applied to every instance
/// of the document. `local` is this node's id.
pub fn plan(state: &MeshState, specs: &ParsedSpecs, local: &NodeId) -> AdvertisePlan {
    let mut plan = AdvertisePlan::default();
    for instance in state.instances.values() {
        let wanted = state
            .services
            .get(&instance.service)
            .is_some_and(|record| record.desired == Desired::Running);
        let Some(spec) = specs.get(&instance.service) else {
            continue;
        };
        let Some(service_type) = &spec.advertise else {
            continue;
        };
        if !wanted || !is_ready(instance, spec) {
            continue;
        }
        let here = instance.node == *local;
        let advertisement = check_service_type(service_type)
            .map_err(|reason| format!("advertise `{service_type}`: {reason}"))
            .and_then(|_| first_port(instance))
            .map(|port| Advertisement {
                service: instance.service.clone(),
                service_type: service_type.clone(),
                port,
            });
        match (here, advertisement) {
            (true, Ok(advertisement)) => {
                plan.here.insert(instance.service.clone(), advertisement);
            }
            (true, Err(reason)) => {
                plan.refused.insert(instance.service.clone(), reason);
            }
            (false, Ok(_)) => {
                plan.elsewhere
                    .insert((instance.service.clone(), instance.node.clone()));
            }
            (false, Err(_)) => {}
        }
    }
    plan
}

/// The services this node advertises in `now` whose copy on another node was advertised in
/// `before` (the previous plan's [`AdvertisePlan::elsewhere`]) and is not any more: that
/// node's goodbyes flush the name this node announces too, so it must announce again.
pub fn withdrawn_elsewhere(
    before: &BTreeSet<(String, NodeId)>,
    now: &AdvertisePlan,
) -> BTreeSet<String> {
    before
        .difference(&now.elsewhere)
        .map(|(service, _)| service)
        .filter(|service| now.here.contains_key(*service))
        .cloned()
        .collect()
}

/// Whether a copy is ready for clients: `healthy`; without a health check also `starting`
/// (the process runs and nothing more is known of it).
fn is_ready(instance: &InstanceRecord, spec: &ServiceSpec) -> bool {
    match instance.state {
        InstanceState::Healthy => true,
        InstanceState::Starting => spec.health.is_none(),
        InstanceState::Stopped
        | InstanceState::Unhealthy
        | InstanceState::Stopping
        | InstanceState::Backoff
        | InstanceState::Failed
        | InstanceState::Refused => false,
    }
}

fn first_port(instance: &InstanceRecord) -> Result<u16, String> {
    match instance.ports.first() {
        None => Err("the running copy published no port".to_string()),
        Some(&port) => u16::try_from(port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("the running copy published port {port}, not 1-65535")),
    }
}

/// The SRV target of `service`'s copy on the node with short id `short`:
/// `<service>-<short lowercased>.local.`, the service part cut so that the label fits 63 bytes.
pub fn host_name(service: &str, short: &str) -> String {
    let short = short.to_ascii_lowercase();
    let room = MAX_LABEL_LEN.saturating_sub(short.len() + 1);
    let label: String = service
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    let label = label.trim_matches('-');
    let label = if label.is_empty() { "service" } else { label };
    format!("{label}-{short}.local.")
}

/// The DNS-SD record of `advertisement` from node `node_name`, with host name `host`.
/// Addresses are filled in by mdns-sd and follow interface changes; probing stays on (it is
/// what renames a second copy `NAME (2)` rather than letting two copies answer for one name).
pub fn service_info(
    advertisement: &Advertisement,
    node_name: &str,
    host: &str,
) -> Result<ServiceInfo, mdns_sd::Error> {
    let node = truncate_utf8(node_name, MAX_TXT_NODE_NAME_LEN);
    let properties = [
        (TXT_NODE, node),
        (TXT_SERVICE, advertisement.service.as_str()),
    ];
    let info = ServiceInfo::new(
        &advertisement.type_domain(),
        &advertisement.service,
        host,
        (),
        advertisement.port,
        &properties[..],
    )?;
    Ok(info.enable_addr_auto())
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

#[cfg(test)]
mod tests;
