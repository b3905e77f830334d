//! The mDNS actor: owns the mdns-sd daemon after start, turns browse results into
//! [`DiscoveryEvent`]s, resolves name conflicts after probing, re-announces, and withdraws the
//! registration on the way out. Inputs and outputs are described in the `mdns` module doc.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libp2p::PeerId;
use mdns_sd::{
    DaemonEvent, DaemonStatus, RRType, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo,
    UnregisterStatus,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::config::*;
use super::record::*;
use crate::discovery::{DiscoveredPeer, DiscoveryEvent};
use crate::identity::short_id;

/// Whether the run loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Stop,
}

pub(super) struct MdnsActor {
    pub(super) daemon: ServiceDaemon,
    pub(super) local: LocalNode,
    pub(super) policy: InterfacePolicy,
    /// What we have registered (the renamed one after a late conflict); `None` when we only
    /// browse (no QUIC port).
    pub(super) service: Option<ServiceInfo>,
    /// Lowercase full names we answer for: the registered name, or what mdns-sd renamed it
    /// to while probing. A record under one of these with another peer id, heard after our
    /// first announcement, is a late conflict.
    pub(super) own_names: HashSet<String>,
    /// Set by the first announcement: before it, mdns-sd's probing handles conflicts, and the
    /// records it probes against must not be taken for a late conflict.
    pub(super) announced: bool,
    /// Set once we moved to `NAME (<short id>)`: that name cannot conflict again.
    pub(super) renamed_for_conflict: bool,
    /// When to re-announce after a late conflict we kept the name in.
    pub(super) reannounce_at: Option<Instant>,
    pub(super) browse: mdns_sd::Receiver<ServiceEvent>,
    /// `None` once the daemon dropped it.
    pub(super) monitor: Option<mdns_sd::Receiver<DaemonEvent>>,
    pub(super) events: mpsc::Sender<DiscoveryEvent>,
    pub(super) stop: CancellationToken,
    pub(super) stats: Arc<StatsCounters>,
    /// Lowercase full name → what we last reported for it.
    pub(super) instances: HashMap<String, DiscoveredPeer>,
    /// Lowercase full names we already warned about (malformed records).
    pub(super) warned: HashSet<String>,
}

impl MdnsActor {
    pub(super) async fn run(mut self) -> Result<(), MdnsError> {
        let outcome = self.run_until_stopped().await;
        self.withdraw_and_shutdown().await;
        outcome
    }

    pub(super) async fn run_until_stopped(&mut self) -> Result<(), MdnsError> {
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
    pub(super) async fn resubscribe_browse(&mut self) -> Result<Flow, MdnsError> {
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

    pub(super) async fn on_service_event(&mut self, event: ServiceEvent) -> Flow {
        match event {
            ServiceEvent::ServiceResolved(resolved) => self.on_resolved(&resolved).await,
            ServiceEvent::ServiceRemoved(_, fullname) => self.on_removed(&fullname).await,
            other => {
                trace!("mdns: {other:?}");
                Flow::Continue
            }
        }
    }

    pub(super) async fn on_resolved(&mut self, resolved: &ResolvedService) -> Flow {
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

    pub(super) async fn on_removed(&mut self, fullname: &str) -> Flow {
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

    pub(super) fn on_daemon_event(&mut self, event: DaemonEvent) {
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
    pub(super) fn on_name_conflict(&mut self, fullname: &str, theirs: Option<PeerId>) {
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
    pub(super) fn reannounce(&mut self) {
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
    pub(super) async fn emit(&self, event: DiscoveryEvent) -> Flow {
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
    pub(super) async fn withdraw_and_shutdown(&mut self) {
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
    pub(super) async fn withdraw(&self, fullname: &str) {
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
pub(super) async fn next_daemon_event(
    monitor: Option<&mdns_sd::Receiver<DaemonEvent>>,
) -> Option<DaemonEvent> {
    match monitor {
        Some(monitor) => monitor.recv_async().await.ok(),
        None => std::future::pending().await,
    }
}
