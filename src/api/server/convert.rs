//! The answers of the read routes, built from the node's snapshot and the replicated
//! document: where node and state types become the contract's ([`crate::api::contract`]).
//!
//! Owns the conversions only: pure functions of a snapshot (and `now`). Does not own the
//! types (the contract) nor how the snapshots are read (the handlers).

use std::time::Duration;

use tokio::time::Instant;

use crate::api::contract::{
    Counters, OwnerEntry, PeerCounts, PeerEntry, PeerSyncEntry, PeerSyncStatus, PortEntry,
    Reachability, RelayServed, RendezvousPointEntry, ServedPoint, ServiceEntry, StateResponse,
    StatusResponse, SyncCounters,
};
use crate::identity::short_id;
use crate::node::NodeSnapshot;
use crate::state::actor::StateSnapshot;
use crate::state::{InstanceRecord, MeshState};
use crate::supervisor::ServiceSpec;
use crate::sync::{SyncStats, SyncStatus};

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The `mesh peers` rows for a snapshot: self first, then peers by name.
pub fn peer_entries(snap: &NodeSnapshot, state: &StateSnapshot, now: Instant) -> Vec<PeerEntry> {
    let tags = |id: &str| {
        state
            .state
            .nodes
            .get(id)
            .map(|n| n.tags.clone())
            .unwrap_or_default()
    };
    let l = &snap.local;
    let hw = &l.hardware;
    let mut rows = vec![PeerEntry {
        id: l.peer_id.to_base58(),
        short_id: short_id(&l.peer_id),
        name: Some(l.name.clone()),
        is_self: true,
        state: "alive".into(),
        state_since_ms_ago: ms(now.saturating_duration_since(l.started_at)),
        connected: true,
        link: "direct".into(),
        addrs: l.listen_addrs.iter().map(|a| a.to_string()).collect(),
        rtt_ms: None,
        last_seen_ms_ago: Some(0),
        os: Some(hw.os.clone()),
        arch: Some(hw.arch.clone()),
        device_class: Some(hw.device_class.to_string()),
        profile: Some(hw.profile.to_string()),
        score: Some(hw.score),
        version: Some(crate::AGENT_VERSION.to_string()),
        tags: tags(&l.peer_id.to_base58()),
        sync: None,
    }];
    for p in &snap.peers {
        let info = p.info.as_ref();
        rows.push(PeerEntry {
            id: p.peer_id.to_base58(),
            short_id: short_id(&p.peer_id),
            name: info.map(|i| i.name.clone()),
            is_self: false,
            state: p.state.to_string(),
            state_since_ms_ago: ms(now.saturating_duration_since(p.since)),
            connected: p.connected,
            link: p.link.into(),
            addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
            rtt_ms: p.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            last_seen_ms_ago: p.last_seen.map(|t| ms(now.saturating_duration_since(t))),
            os: info.map(|i| i.hardware.os.clone()),
            arch: info.map(|i| i.hardware.arch.clone()),
            device_class: info.map(|i| i.hardware.device_class.to_string()),
            profile: info.map(|i| i.hardware.profile.to_string()),
            score: info.map(|i| i.hardware.score),
            version: info.map(|i| i.agent_version.clone()),
            tags: tags(&p.peer_id.to_base58()),
            sync: Some(
                state
                    .peers
                    .iter()
                    .find(|s| s.peer == p.peer_id)
                    .map_or(crate::sync::SyncHealth::Disconnected, |s| s.health.clone())
                    .to_string(),
            ),
        });
    }
    rows.extend(document_only_members(snap, state));
    // Nodes a member removed (`mesh remove`): `removed`, whatever membership last said.
    for row in &mut rows {
        if let Some(record) = state.state.nodes.get(&row.id).filter(|n| n.is_removed()) {
            row.state = "removed".into();
            row.connected = false;
            if row.name.is_none() {
                row.name = Some(record.name.to_string());
            }
            if let Some(at) = record.removed_at_ms {
                row.state_since_ms_ago = u64::try_from(crate::state::now_ms() - at).unwrap_or(0);
            }
        }
    }
    rows
}

/// Members the replicated document knows that membership has not seen since this node
/// started (one that died while this node was down): listed with what the document says, its
/// state `left` (with when) if it stopped gracefully, else `unknown`.
fn document_only_members(snap: &NodeSnapshot, state: &StateSnapshot) -> Vec<PeerEntry> {
    let local = snap.local.peer_id.to_base58();
    let seen: std::collections::HashSet<String> =
        snap.peers.iter().map(|p| p.peer_id.to_base58()).collect();
    let now_ms = crate::state::now_ms();
    let mut rows: Vec<PeerEntry> = state
        .state
        .nodes
        .iter()
        .filter(|(id, _)| **id != local && !seen.contains(*id))
        .filter_map(|(id, rec)| {
            let peer: libp2p::PeerId = id.parse().ok()?;
            let since_ms = |t: i64| u64::try_from(now_ms.saturating_sub(t)).unwrap_or(0);
            Some(PeerEntry {
                id: id.clone(),
                short_id: short_id(&peer),
                name: Some(rec.name.to_string()),
                is_self: false,
                state: if rec.left_at_ms.is_some() {
                    "left".into()
                } else {
                    "unknown".into()
                },
                state_since_ms_ago: rec.left_at_ms.map_or(0, since_ms),
                connected: false,
                link: "none".into(),
                addrs: rec.addrs.clone(),
                rtt_ms: None,
                last_seen_ms_ago: rec.left_at_ms.map(since_ms),
                os: Some(rec.hardware.os.clone()),
                arch: Some(rec.hardware.arch.clone()),
                device_class: Some(rec.hardware.device_class.clone()),
                profile: Some(rec.hardware.profile.clone()),
                score: u8::try_from(rec.hardware.score).ok(),
                version: Some(rec.version.clone()),
                tags: rec.tags.clone(),
                sync: Some(crate::sync::SyncHealth::Disconnected.to_string()),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    rows
}

/// The status of a snapshot.
pub fn status(snap: &NodeSnapshot, now: Instant) -> StatusResponse {
    use crate::membership::PeerState;
    let l = &snap.local;
    let mut counts = PeerCounts::default();
    for p in &snap.peers {
        match p.state {
            PeerState::Alive => counts.alive += 1,
            PeerState::Suspect => counts.suspect += 1,
            PeerState::Dead => counts.dead += 1,
            PeerState::Left => counts.left += 1,
        }
    }
    let s = &snap.stats;
    StatusResponse {
        id: l.peer_id.to_base58(),
        name: l.name.clone(),
        mesh_id: l.mesh_id.to_string(),
        version: crate::AGENT_VERSION.to_string(),
        listen_addrs: l.listen_addrs.iter().map(|a| a.to_string()).collect(),
        profile: l.hardware.profile.to_string(),
        score: l.hardware.score,
        device_class: l.hardware.device_class.to_string(),
        uptime_s: now.saturating_duration_since(l.started_at).as_secs(),
        peers: counts,
        accept_services: l.accept_services.map(|a| a.to_string()),
        hardware: l.hardware.clone(),
        counters: Counters {
            connections: s.connections,
            admitted: s.admission.admitted,
            admission_bad_proof: s.admission.bad_proof,
            admission_denied: s.admission.denied,
            admission_timeout: s.admission.timeout,
            admission_protocol: s.admission.protocol,
            admission_transport: s.admission.transport,
            admission_abandoned: s.admission.abandoned,
            refused_in_backoff: s.admission.refused_in_backoff,
            unadmitted_requests: s.unadmitted_requests,
            malformed_inbound: s.malformed_inbound,
            mdns_foreign_mesh_ignored: s.mdns_foreign_mesh_ignored,
            membership_datagrams_in: s.membership.datagrams_in,
            membership_datagrams_out: s.membership.datagrams_out,
            membership_datagrams_rejected: s.membership.datagrams_rejected,
            membership_datagrams_dropped: s.membership.datagrams_dropped,
            dials: s.dials.dials,
            dial_wrong_peer_id: s.dials.wrong_peer_id,
            dial_targets: s.dials.targets,
            duplicate_connections_closed: s.duplicate_connections_closed,
            sync_messages_dropped: s.sync_messages_dropped,
            joins_accepted: s.joins_accepted,
            joins_refused: s.joins_refused,
            removed_refused: s.removed_refused,
        },
        reachability: Reachability {
            behind_nat: s.behind_nat.clone(),
            relayed_via: s.relayed_via.map(|(relay, _)| relay.to_base58()),
            relay_reserved: s.relayed_via.is_some_and(|(_, ok)| ok),
            relay_server: l.relay_server.then_some(RelayServed {
                reservations: s.relay.reservations,
                circuits: s.relay.circuits,
                denied: s.relay.denied,
            }),
            hole_punches: s.hole_punches,
            hole_punch_failures: s.hole_punch_failures,
        },
        rendezvous: s
            .rendezvous
            .iter()
            .map(|p| RendezvousPointEntry {
                peer: p.peer.clone(),
                connected: p.connected,
                registered_for_s: p.registered_for_s,
                discovered: p.discovered,
                last_error: p.last_error.clone(),
            })
            .collect(),
        rendezvous_point: s.point.as_ref().map(|p| ServedPoint {
            open: p.open,
            addrs: {
                let loopback = |a: &&libp2p::Multiaddr| {
                    let t = a.to_string();
                    t.starts_with("/ip4/127.") || t.starts_with("/ip6/::1/")
                };
                let routable: Vec<_> = l.listen_addrs.iter().filter(|a| !loopback(a)).collect();
                let shown = if routable.is_empty() {
                    l.listen_addrs.iter().collect()
                } else {
                    routable
                };
                shown
                    .into_iter()
                    .map(|a| format!("{a}/p2p/{}", l.peer_id))
                    .collect()
            },
            registrations: p.registrations,
            registered: p.registered,
            discoveries: p.discoveries,
            refused: p.refused,
            not_admitted: p.not_admitted,
        }),
    }
}

fn sync_status(status: SyncStatus) -> PeerSyncStatus {
    match status {
        SyncStatus::InSync => PeerSyncStatus::InSync,
        SyncStatus::Behind => PeerSyncStatus::Behind,
        SyncStatus::NeverSynced => PeerSyncStatus::NeverSynced,
    }
}

fn sync_counters(stats: &SyncStats) -> SyncCounters {
    SyncCounters {
        messages_in: stats.messages_in,
        messages_out: stats.messages_out,
        bytes_in: stats.bytes_in,
        bytes_out: stats.bytes_out,
        malformed: stats.malformed,
    }
}

/// The state summary of a snapshot.
pub fn state_summary(state: &StateSnapshot) -> StateResponse {
    StateResponse {
        epoch: state.epoch.to_string(),
        changes: state.changes,
        heads: state.heads.clone(),
        file_bytes: state.file_bytes,
        value_bytes: state.value_bytes,
        max_value_bytes: crate::state::MAX_DOCUMENT_BYTES,
        nodes: state.state.nodes.len(),
        services: state.state.services.len(),
        instances: state.state.instances.len(),
        leases: state.state.leases.len(),
        peers: state
            .peers
            .iter()
            .map(|p| PeerSyncEntry {
                id: p.peer.to_base58(),
                name: state
                    .state
                    .nodes
                    .get(&p.peer.to_base58())
                    .map(|n| n.name.to_string()),
                connected: p.connected,
                status: sync_status(p.status),
                health: p.health.to_string(),
            })
            .collect(),
        sync: sync_counters(&state.sync),
        skipped_entries: state.hydrate.skipped_entries,
        recovered_from_corruption: state.recovered_from_corruption,
    }
}

fn service_row(
    name: &str,
    node: String,
    desired: &str,
    spec: Option<&ServiceSpec>,
    instance: Option<(&str, &InstanceRecord)>,
    now_ms: i64,
) -> ServiceEntry {
    let running = instance.is_some_and(|(_, i)| {
        matches!(
            i.state.as_str(),
            "starting" | "healthy" | "unhealthy" | "stopping"
        )
    });
    let health = match instance {
        Some((_, i)) if running => match (i.health_check, i.state.as_str()) {
            (Some(false), _) => "none".to_string(),
            (_, "stopping") => "-".to_string(),
            (_, state) => state.to_string(),
        },
        _ => "-".to_string(),
    };
    ServiceEntry {
        name: name.to_string(),
        node,
        node_id: instance.map(|(id, _)| id.to_string()),
        desired: desired.to_string(),
        state: instance.map_or_else(|| "pending".to_string(), |(_, i)| i.state.to_string()),
        pid: instance
            .and_then(|(_, i)| i.pid)
            .and_then(|p| u32::try_from(p).ok()),
        ports: instance
            .map(|(_, i)| {
                i.ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect()
            })
            .unwrap_or_default(),
        restarts: instance.map_or(0, |(_, i)| i.restarts),
        uptime_s: instance
            .filter(|_| running)
            .map(|(_, i)| (now_ms.saturating_sub(i.since_ms).max(0) / 1000) as u64),
        health,
        last_exit: instance.and_then(|(_, i)| i.last_exit.clone()),
        reason: instance.and_then(|(_, i)| i.reason.clone()),
        log_tail: instance
            .and_then(|(_, i)| i.log_tail.clone())
            .unwrap_or_default(),
        after: spec.map(|s| s.after.clone()).unwrap_or_default(),
        command: spec
            .map(|s| {
                std::iter::once(s.command.clone())
                    .chain(s.args.clone())
                    .collect()
            })
            .unwrap_or_default(),
        copies: String::new(),
        replicas: spec.map_or(1, |s| s.placement.replicas),
        owners: Vec::new(),
        exclusive: spec.is_some_and(|s| s.placement.exclusive),
        epoch: instance.and_then(|(_, i)| i.epoch).unwrap_or(0),
        placement: String::new(),
        anomaly: instance.and_then(|(_, i)| i.anomaly.clone()),
    }
}

/// Placement as this node sees it now: the document of `state` and the membership of `node`.
pub fn placements(
    node: &NodeSnapshot,
    state: crate::services::View<'_>,
) -> std::collections::BTreeMap<String, crate::placement::ServicePlacement> {
    let mut membership =
        crate::placement::MembershipSnapshot::new(node.local.started_at.into_std());
    membership.peers = node
        .peers
        .iter()
        .map(|p| {
            (
                crate::identity::NodeId::from(&p.peer_id),
                (p.state, p.since.into_std()),
            )
        })
        .collect();
    // The node's clock (tokio's), which stamped the peers' states.
    let liveness = membership.at(tokio::time::Instant::now().into_std());
    let local = crate::identity::NodeId::from(&node.local.peer_id);
    crate::placement::place_all(crate::placement::PlacementInput {
        view: state,
        local: &local,
        liveness: &liveness,
    })
}

/// The `mesh services` rows: for every service of the desired state, one row per copy its
/// nodes published (a running, starting, failed or stopping instance), or one row saying why
/// none runs (`pending`, `unplaced`, `stopped`); then instances still running for services
/// that were removed. By name, then node. `placements`: [`crate::placement::place_all`] as
/// this node sees the mesh.
pub fn service_entries(
    view: crate::services::View<'_>,
    placements: &std::collections::BTreeMap<String, crate::placement::ServicePlacement>,
    now_ms: i64,
) -> Vec<ServiceEntry> {
    use crate::state::{Desired, InstanceState};
    let state = view.state;
    let mut rows = Vec::new();
    let mut shown: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (name, record) in &state.services {
        if record.is_removed() {
            continue;
        }
        let spec = view.specs.get(name);
        let placed = placements.get(name);
        let copies: Vec<(&String, &InstanceRecord)> = state
            .instances
            .iter()
            .filter(|(_, i)| i.service == *name)
            .filter(|(_, i)| {
                // A stopped copy is shown where the service should run (stopped by request,
                // or because a dependency failed), not where it ran before it moved.
                i.state != InstanceState::Stopped
                    || record.desired == Desired::Stopped
                    || placed.is_some_and(|p| p.owners.contains(&i.node))
            })
            .collect();
        let decorate = |row: &mut ServiceEntry, instance: Option<&InstanceRecord>| {
            let Some(p) = placed else {
                return;
            };
            let running = p
                .holders
                .iter()
                .filter(|h| {
                    state
                        .instances
                        .get(&crate::services::instance_key(name, h.as_str()))
                        .is_some_and(|i| crate::placement::runs(i.state))
                })
                .count();
            row.copies = format!("{running}/{}", p.replicas);
            row.replicas = p.replicas;
            row.owners = p
                .owners
                .iter()
                .map(|id| OwnerEntry {
                    id: id.to_string(),
                    name: state.node_name(id),
                })
                .collect();
            row.exclusive = p.exclusive;
            row.epoch = instance.and_then(|i| i.epoch).unwrap_or(p.epoch);
            row.placement = if p.unplaced.is_some() {
                "unplaced"
            } else if p.is_moving() {
                "moving"
            } else {
                "placed"
            }
            .to_string();
        };
        if copies.is_empty() {
            let node = match placed {
                Some(p) if !p.owners.is_empty() => p
                    .owners
                    .iter()
                    .map(|o| state.node_name(o))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => crate::services::placement_label(view, name),
            };
            let mut row = service_row(name, node, record.desired.as_str(), spec, None, now_ms);
            decorate(&mut row, None);
            if let Some(why) = placed.and_then(|p| p.unplaced.as_ref())
                && record.desired == Desired::Running
            {
                row.state = "unplaced".to_string();
                row.reason = Some(why.clone());
            }
            if let Some(reason) = view.specs.error(name) {
                row.state = "invalid".to_string();
                row.reason = Some(format!("the spec in the document does not parse: {reason}"));
            }
            rows.push(row);
            continue;
        }
        for (key, instance) in copies {
            shown.insert(key.as_str());
            let mut row = service_row(
                name,
                state.node_name(&instance.node),
                record.desired.as_str(),
                spec,
                Some((instance.node.as_str(), instance)),
                now_ms,
            );
            decorate(&mut row, Some(instance));
            if placed.is_some_and(|p| p.lost.contains(&instance.node)) {
                row.state = "lost".to_string();
                row.pid = None;
                row.uptime_s = None;
                row.health = "-".to_string();
                row.reason = Some(format!(
                    "{} is dead or left; its copy runs elsewhere or will",
                    row.node
                ));
            }
            rows.push(row);
        }
    }
    for (key, instance) in &state.instances {
        if shown.contains(key.as_str()) || instance.state == InstanceState::Stopped {
            continue;
        }
        let desired = state
            .services
            .get(&instance.service)
            .map_or("removed", |r| r.desired.as_str());
        rows.push(service_row(
            &instance.service,
            state.node_name(&instance.node),
            desired,
            None,
            Some((instance.node.as_str(), instance)),
            now_ms,
        ));
    }
    rows.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
    rows
}

/// The `mesh ports` rows: leases from the document, optionally of one node (by name or id),
/// by node then port.
pub fn port_entries(state: &MeshState, node: Option<&str>) -> Vec<PortEntry> {
    let mut rows: Vec<PortEntry> = state
        .leases
        .values()
        .filter(|l| {
            node.is_none_or(|n| {
                let name = state
                    .nodes
                    .get(l.node.as_str())
                    .map_or("", |r| r.name.as_str());
                crate::services::node_match(&l.node, name, n).is_some()
            })
        })
        .filter_map(|l| {
            Some(PortEntry {
                node: state.node_name(&l.node),
                node_id: l.node.to_string(),
                port: u16::try_from(l.port).ok()?,
                proto: l.proto.clone(),
                service: l.owner.clone(),
                state: l.state.to_string(),
                since_ms: l.since_ms,
                pid: l.pid.and_then(|p| u32::try_from(p).ok()),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, a.port, &a.proto).cmp(&(&b.node, b.port, &b.proto)));
    rows
}
