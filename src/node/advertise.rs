//! The advertiser: the one task that makes this node's LAN advertisements follow the document.
//!
//! Inputs: the state actor's snapshots (a `watch`: only the latest matters, since what to
//! advertise is a pure function of it, [`crate::discovery::advertise::plan`]), the events of
//! the registrar's mdns-sd daemons, its own timers, and the shutdown token, first in a biased
//! `select!`. Output: DNS-SD registrations and goodbyes through a
//! [`LanRegistrar`]; nothing else (it writes nothing to the document).
//!
//! On every new snapshot it computes the plan and applies it: a copy of an advertised service
//! that becomes ready here is announced, one that stops being ready (stopping, unhealthy,
//! moved, removed, stopped by request) is withdrawn with goodbyes. When another node's copy of
//! a service this node also advertises goes away, that node's goodbyes flush the service's
//! name from every cache, ours included: this node announces again [`REANNOUNCE_FIRST`] and
//! [`REANNOUNCE_SECOND`] later, or, if its record was renamed `NAME (2)` because the other
//! copy held the name, takes the name back ([`LanRegistrar::reclaim`]). A rename with no copy
//! elsewhere (another device holds the name, or the other copy's goodbye came before its
//! document change) is retried once per advertisement, after [`REANNOUNCE_SECOND`].
//!
//! Without mDNS (`--no-mdns`, or in-memory discovery in tests) it advertises nothing and says
//! so once per service. On shutdown it withdraws everything and waits for the goodbyes; the
//! node stops it after the supervisor (whose stopping services it withdraws as they stop) and
//! before the node actor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::discovery::advertise::registrar::{LanRegistrar, RegistrarConfig, RegistrarEvent};
use crate::discovery::advertise::{Advertisement, plan, withdrawn_elsewhere};
use crate::discovery::mdns::rescan::{Rescan, next_change};
use crate::identity::NodeId;
use crate::state::actor::StateSnapshot;

/// After another copy of a service we advertise is seen going away, announce ours again
/// this much later: by then its goodbye (sent when its instance left the ready states, the
/// document change we saw) has reached the caches, which drop the name 1 s after it, so an
/// announcement now keeps browsers from seeing the name go at all.
pub const REANNOUNCE_FIRST: Duration = Duration::from_millis(500);
/// A second announcement, or the reclaim of a renamed record, this much later: in case the
/// goodbye came late (a loaded node, a slow sync) and flushed the first one.
pub const REANNOUNCE_SECOND: Duration = Duration::from_millis(1500);
/// How long a registration that failed (an mdns-sd daemon that could not start) waits before
/// it is tried again. The failure is logged each time, so not more often than this.
pub const REGISTER_RETRY: Duration = Duration::from_secs(30);

/// What the advertiser needs to know about this node.
#[derive(Clone, Debug)]
pub(crate) struct AdvertiserConfig {
    pub(crate) node_id: NodeId,
    /// Advertised as TXT `node`.
    pub(crate) node_name: String,
    pub(crate) peer_id: PeerId,
    /// `Some(interface rescan interval)` when this node uses mDNS; `None`: it advertises
    /// nothing.
    pub(crate) mdns: Option<Duration>,
    /// Bumped by the node when its addresses change (see `discovery::mdns::rescan`).
    pub(crate) interfaces: Option<watch::Receiver<u64>>,
}

/// Starts the advertiser over the state actor's `snapshots`; it ends when `shutdown` is
/// cancelled (after withdrawing everything) or the state actor is gone.
pub(crate) fn spawn_advertiser(
    config: AdvertiserConfig,
    snapshots: watch::Receiver<Arc<StateSnapshot>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let registrar = config.mdns.map(|ip_check_interval| {
        LanRegistrar::new(RegistrarConfig {
            node_name: config.node_name.clone(),
            peer_id: config.peer_id,
            ip_check_interval,
        })
    });
    let actor = AdvertiserActor {
        rescan: Rescan::new(config.mdns.unwrap_or_default()),
        interfaces: config.interfaces,
        local: config.node_id,
        snapshots,
        registrar,
        here: BTreeMap::new(),
        elsewhere: BTreeSet::new(),
        refused: BTreeMap::new(),
        said_mdns_off: BTreeSet::new(),
        due: BTreeMap::new(),
        reclaimed: BTreeSet::new(),
        retry_at: None,
        shutdown,
    };
    tokio::spawn(actor.run())
}

/// What a timer of a service does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Announce again, then once more after [`REANNOUNCE_SECOND`] (a renamed record waits
    /// for that second time).
    First,
    /// Announce again, or reclaim the name if renamed.
    Second,
}

struct AdvertiserActor {
    local: NodeId,
    snapshots: watch::Receiver<Arc<StateSnapshot>>,
    /// `None` without mDNS.
    registrar: Option<LanRegistrar>,
    /// What the last plan advertised here.
    here: BTreeMap<String, Advertisement>,
    /// The copies other nodes advertised in the last plan.
    elsewhere: BTreeSet<(String, NodeId)>,
    /// Services that cannot be advertised, with the reason already logged.
    refused: BTreeMap<String, String>,
    /// Services already said to be unadvertised for want of mDNS.
    said_mdns_off: BTreeSet<String>,
    /// Timers per advertised service; at most one each.
    due: BTreeMap<String, (Instant, Due)>,
    /// Services whose unexplained rename was already retried once (forgotten when they stop
    /// being advertised), so that a name held by another device is not fought over.
    reclaimed: BTreeSet<String>,
    /// When to try failed registrations again.
    retry_at: Option<Instant>,
    /// When the registrar's daemons rescan interfaces, and the address changes that drive it.
    rescan: Rescan,
    interfaces: Option<watch::Receiver<u64>>,
    shutdown: CancellationToken,
}

impl AdvertiserActor {
    async fn run(mut self) {
        self.on_snapshot();
        loop {
            let next_due = self.due.values().map(|(at, _)| *at).min();
            let retry_at = self.retry_at;
            let burst_end = self.rescan.deadline();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = next_change(self.interfaces.as_mut()) => {
                    let interval = self.rescan.on_change(Instant::now());
                    self.set_ip_check(interval);
                }
                _ = tokio::time::sleep_until(burst_end.unwrap_or_else(Instant::now)), if burst_end.is_some() => {
                    let interval = self.rescan.on_deadline(Instant::now());
                    self.set_ip_check(interval);
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_snapshot();
                }
                event = next_registrar_event(self.registrar.as_ref()) => self.on_registrar_event(event),
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    self.on_due(Instant::now()).await;
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                    if let Some(registrar) = &mut self.registrar {
                        registrar.retry_failed();
                    }
                    self.apply();
                }
            }
        }
        if let Some(registrar) = self.registrar.take() {
            registrar.shutdown().await;
        }
    }

    fn set_ip_check(&mut self, secs: Option<u32>) {
        if let (Some(secs), Some(registrar)) = (secs, &mut self.registrar) {
            registrar.set_ip_check(secs);
        }
    }

    fn on_snapshot(&mut self) {
        let snapshot = self.snapshots.borrow_and_update().clone();
        let plan = plan(&snapshot.state, &snapshot.specs, &self.local);
        for (service, reason) in &plan.refused {
            if self.refused.get(service) != Some(reason) {
                warn!(%service, "advertise: not advertised on the LAN: {reason}");
            }
        }
        let now = Instant::now();
        for service in withdrawn_elsewhere(&self.elsewhere, &plan) {
            info!(%service, "advertise: another copy withdrew; announcing ours again");
            self.due
                .insert(service, (now + REANNOUNCE_FIRST, Due::First));
        }
        self.refused = plan.refused;
        self.elsewhere = plan.elsewhere;
        self.here = plan.here;
        self.due
            .retain(|service, _| self.here.contains_key(service));
        self.reclaimed
            .retain(|service| self.here.contains_key(service));
        self.apply();
    }

    /// Makes the registrations those of the last plan.
    fn apply(&mut self) {
        match &mut self.registrar {
            Some(registrar) => {
                registrar.apply(&self.here);
                if registrar.has_failures() && self.retry_at.is_none() {
                    self.retry_at = Some(Instant::now() + REGISTER_RETRY);
                }
            }
            None => {
                for (service, advertisement) in &self.here {
                    if self.said_mdns_off.insert(service.clone()) {
                        info!(
                            %service, service_type = %advertisement.service_type,
                            "advertise: not advertised on the LAN: mDNS is off on this node (--no-mdns)"
                        );
                    }
                }
                self.said_mdns_off
                    .retain(|service| self.here.contains_key(service));
            }
        }
    }

    fn on_registrar_event(&mut self, event: RegistrarEvent) {
        let Some(registrar) = &mut self.registrar else {
            return;
        };
        registrar.on_event(event);
        // A rename nobody explains: retry once, after any goodbye under way has flushed.
        let unexplained: Vec<String> = self
            .here
            .keys()
            .filter(|service| {
                registrar.is_renamed(service)
                    && !self.due.contains_key(*service)
                    && !self.reclaimed.contains(*service)
                    && !self.elsewhere.iter().any(|(other, _)| other == *service)
            })
            .cloned()
            .collect();
        for service in unexplained {
            self.reclaimed.insert(service.clone());
            self.due
                .insert(service, (Instant::now() + REANNOUNCE_SECOND, Due::Second));
        }
    }

    async fn on_due(&mut self, now: Instant) {
        let ready: Vec<(String, Due)> = self
            .due
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(service, (_, due))| (service.clone(), *due))
            .collect();
        for (service, due) in ready {
            self.due.remove(&service);
            let Some(registrar) = &mut self.registrar else {
                continue;
            };
            match (registrar.is_renamed(&service), due) {
                // Too early to probe the name again: the other copy may not have let go yet.
                (true, Due::First) => {
                    self.due
                        .insert(service, (now + REANNOUNCE_SECOND, Due::Second));
                }
                // Waits for the goodbyes of the renamed record (~150 ms).
                (true, Due::Second) => {
                    let _ = registrar.reclaim(&service).await;
                }
                (false, due) => {
                    registrar.reannounce(&service);
                    if due == Due::First {
                        self.due
                            .insert(service, (now + REANNOUNCE_SECOND, Due::Second));
                    }
                }
            }
        }
    }
}

/// The registrar's next event; never resolves without a registrar.
async fn next_registrar_event(registrar: Option<&LanRegistrar>) -> RegistrarEvent {
    match registrar {
        Some(registrar) => registrar.next_event().await,
        None => std::future::pending().await,
    }
}
