//! The mDNS actor: owns the mdns-sd daemon after start, turns browse results into
//! [`DiscoveryEvent`]s, and withdraws the registration on the way out. Inputs and outputs are
//! described in the `mdns` module doc.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mdns_sd::{
    DaemonEvent, DaemonStatus, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo,
    UnregisterStatus,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::config::*;
use super::record::*;
use super::rescan::{Rescan, next_change};
use crate::discovery::{DiscoveredPeer, DiscoveryEvent};

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
    /// What we have registered; `None` when we only browse (no QUIC port).
    pub(super) service: Option<ServiceInfo>,
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
    /// When the daemon rescans interfaces, and the node's address changes that drive it.
    pub(super) rescan: Rescan,
    pub(super) interfaces: Option<watch::Receiver<u64>>,
}

impl MdnsActor {
    pub(super) async fn run(mut self) -> Result<(), MdnsError> {
        let outcome = self.run_until_stopped().await;
        self.withdraw_and_shutdown().await;
        outcome
    }

    pub(super) async fn run_until_stopped(&mut self) -> Result<(), MdnsError> {
        loop {
            let burst_end = self.rescan.deadline();
            let flow = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Flow::Stop,
                _ = self.events.closed() => {
                    debug!("mdns: event receiver dropped");
                    Flow::Stop
                }
                _ = next_change(self.interfaces.as_mut()) => {
                    let interval = self.rescan.on_change(Instant::now());
                    self.set_ip_check(interval);
                    Flow::Continue
                }
                _ = tokio::time::sleep_until(burst_end.unwrap_or_else(Instant::now)), if burst_end.is_some() => {
                    let interval = self.rescan.on_deadline(Instant::now());
                    self.set_ip_check(interval);
                    Flow::Continue
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
            };
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }

    /// Gives the daemon a new interface rescan interval, if there is one.
    fn set_ip_check(&self, secs: Option<u32>) {
        if let Some(secs) = secs
            && let Err(e) = self.daemon.set_ip_check_interval(secs)
        {
            debug!("mdns: cannot set the interface rescan interval: {e}");
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
        match classify(&record, &self.local, self.policy) {
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

    pub(super) fn on_daemon_event(&self, event: DaemonEvent) {
        match event {
            DaemonEvent::Announce(fullname, detail) => {
                debug!(%fullname, %detail, "mdns: announced")
            }
            // Only probing renames, and we do not probe (our names carry our id); logged in
            // case a future mdns-sd renames for another reason.
            DaemonEvent::NameChange(change) => info!(
                original = %change.original, new = %change.new_name, interface = %change.intf_name,
                "mdns: mdns-sd renamed one of our records"
            ),
            DaemonEvent::Error(err) => warn!("mdns: daemon error: {err}"),
            DaemonEvent::IpAdd(ip) => debug!(%ip, "mdns: address added; re-announcing"),
            DaemonEvent::IpDel(ip) => debug!(%ip, "mdns: address removed"),
            other => trace!("mdns: {other:?}"),
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
