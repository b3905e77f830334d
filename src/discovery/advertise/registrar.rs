//! [`LanRegistrar`]: announces and withdraws the DNS-SD records of the services this node
//! advertises ([`super::plan`]), with mdns-sd. Not a task: its owner (`node::advertise`) calls
//! [`LanRegistrar::apply`] with each new plan, polls [`LanRegistrar::next_event`] in its loop
//! and ends with [`LanRegistrar::shutdown`].
//!
//! # One daemon per advertised service
//!
//! Each registration has its own [`ServiceDaemon`] (a thread and its sockets), created when
//! the service is first advertised and shut down when it is withdrawn, so a node that
//! advertises nothing runs none. The reason is renames: when the name is taken on the LAN
//! while probing (another copy of the service still announces it, as during a drain with no
//! gap), mdns-sd renames the instance `NAME (2)` and remembers the rename for the life of the
//! daemon, for every later registration of that name. Once the other copy is gone,
//! [`LanRegistrar::reclaim`] withdraws `NAME (2)` and registers `NAME` on a fresh daemon,
//! without touching the other services' records. A node advertises at most the services it
//! runs (the profile's `max_services`), so this costs a handful of threads at most.
//!
//! Loopback interfaces are disabled, as for the `_mesh._udp` record: a record with
//! `127.0.0.1` would send a phone to itself. Interfaces are rescanned every
//! [`RegistrarConfig::ip_check_interval`], or as its owner says
//! ([`LanRegistrar::set_ip_check`], after the node's addresses changed), and the record
//! re-announced on changes.
//!
//! # Withdrawing
//!
//! A withdrawal unregisters (mdns-sd sends goodbyes, TTL 0, and repeats them 120 ms later),
//! waits for the repeat, then shuts the daemon down; each step bounded by a timeout. It runs
//! in a task of its own so that the owner's loop is not held up, except for a reclaim, which
//! waits for it: the new daemon announces the same host name, and the old one's goodbye for
//! that host's addresses must go out first.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::PeerId;
use mdns_sd::{DaemonEvent, RRType, ServiceDaemon, ServiceInfo, UnregisterStatus};
use tokio::task::JoinSet;
use tracing::{debug, info, trace, warn};

use super::{Advertisement, host_name, service_info};
use crate::identity::short_id;

/// How long a withdrawal waits for mdns-sd to confirm the unregister.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(1);
/// mdns-sd repeats a goodbye 120 ms after the first (RFC 6762 section 10.1 recommends it);
/// shutting the daemon down earlier would lose the repeat.
pub const GOODBYE_REPEAT_WAIT: Duration = Duration::from_millis(150);
/// How long a withdrawal waits for the daemon thread to confirm its shutdown.
pub const DAEMON_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the registrar needs to know about this node.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// Advertised as TXT `node`.
    pub node_name: String,
    /// Its short id makes host names unique per node.
    pub peer_id: PeerId,
    /// How often mdns-sd rescans interfaces and addresses (whole seconds, rounded up).
    pub ip_check_interval: Duration,
}

/// Why a service could not be advertised.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error("cannot start an mDNS daemon for {service} ({step})")]
    DaemonStart {
        service: String,
        step: &'static str,
        #[source]
        source: mdns_sd::Error,
    },
    #[error("cannot register {fullname:?}")]
    Register {
        fullname: String,
        #[source]
        source: mdns_sd::Error,
    },
}

use crate::discovery::mdns::{InterfacePolicy, prepare_daemon};

/// One advertised service.
struct Registration {
    advertisement: Advertisement,
    info: ServiceInfo,
    daemon: ServiceDaemon,
    /// `None` once the daemon dropped it.
    monitor: Option<mdns_sd::Receiver<DaemonEvent>>,
    /// The name mdns-sd gave the instance when the service name was taken on the LAN while
    /// probing (`web (2)`), if it did.
    renamed_to: Option<String>,
}

/// What a daemon told the registrar, for [`LanRegistrar::on_event`].
#[derive(Debug)]
pub enum RegistrarEvent {
    /// An event of the daemon advertising `service`.
    Daemon { service: String, event: DaemonEvent },
    /// The daemon of `service` closed its event channel (it exited).
    Closed { service: String },
}

/// The DNS-SD registrations of this node's advertised services. Dropping it shuts every
/// daemon down (mdns-sd then sends goodbyes once, without the repeat).
pub struct LanRegistrar {
    config: RegistrarConfig,
    short_id: String,
    policy: InterfacePolicy,
    registrations: BTreeMap<String, Registration>,
    /// Withdrawals under way (goodbyes, then daemon shutdown). At most one per service that
    /// was advertised since the last [`LanRegistrar::apply`] reaped them.
    withdrawals: JoinSet<()>,
    /// Advertisements whose registration failed: not tried again by [`LanRegistrar::apply`]
    /// until they change or [`LanRegistrar::retry_failed`] is called, so that a broken
    /// daemon is not recreated and logged on every change of the document.
    failed: BTreeMap<String, Advertisement>,
    /// The interface rescan interval every daemon has, in whole seconds.
    ip_check_secs: u32,
}

impl LanRegistrar {
    /// A registrar with nothing registered (and no daemon running).
    pub fn new(config: RegistrarConfig) -> Self {
        Self::with_policy(config, InterfacePolicy::Lan)
    }

    #[cfg(test)]
    pub(super) fn loopback_only(config: RegistrarConfig) -> Self {
        Self::with_policy(config, InterfacePolicy::LoopbackOnly)
    }

    fn with_policy(config: RegistrarConfig, policy: InterfacePolicy) -> Self {
        Self {
            short_id: short_id(&config.peer_id),
            ip_check_secs: crate::discovery::mdns::rescan::ip_check_secs(config.ip_check_interval),
            config,
            policy,
            registrations: BTreeMap::new(),
            withdrawals: JoinSet::new(),
            failed: BTreeMap::new(),
        }
    }

    /// The services registered now, with the instance name each is announced under.
    pub fn registered(&self) -> BTreeMap<String, String> {
        self.registrations
            .iter()
            .map(|(service, registration)| {
                let instance = registration
                    .renamed_to
                    .clone()
                    .unwrap_or_else(|| service.clone());
                (service.clone(), instance)
            })
            .collect()
    }

    /// Whether some registration failed and waits for [`LanRegistrar::retry_failed`].
    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Lets the next [`LanRegistrar::apply`] try the failed registrations again.
    pub fn retry_failed(&mut self) {
        self.failed.clear();
    }

    /// Makes the registrations those of `wanted`: withdraws what is no longer wanted or has
    /// changed (type, port), registers what is new. Failures are logged and returned, per
    /// service; one that failed is tried again when it changes or after
    /// [`LanRegistrar::retry_failed`].
    pub fn apply(
        &mut self,
        wanted: &BTreeMap<String, Advertisement>,
    ) -> Vec<(String, RegistrarError)> {
        while self.withdrawals.try_join_next().is_some() {}
        self.failed
            .retain(|service, failed| wanted.get(service) == Some(failed));
        let stale: Vec<String> = self
            .registrations
            .iter()
            .filter(|(service, registration)| {
                wanted.get(*service) != Some(&registration.advertisement)
            })
            .map(|(service, _)| service.clone())
            .collect();
        let mut failures = Vec::new();
        for service in stale {
            match wanted.get(&service) {
                None => self.withdraw(&service),
                Some(changed) => {
                    if let Err(err) = self.update(&service, changed) {
                        warn!(%service, "advertise: {err:#}");
                        self.withdraw(&service);
                        self.failed.insert(service.clone(), changed.clone());
                        failures.push((service, err));
                    }
                }
            }
        }
        for (service, advertisement) in wanted {
            if self.registrations.contains_key(service) || self.failed.contains_key(service) {
                continue;
            }
            match self.register(advertisement) {
                Ok(registration) => {
                    info!(
                        service = %service,
                        instance = %registration.info.get_fullname(),
                        host = %registration.info.get_hostname(),
                        port = advertisement.port,
                        "advertise: announcing on the LAN"
                    );
                    self.registrations.insert(service.clone(), registration);
                }
                Err(err) => {
                    warn!(service = %service, "advertise: {err:#}");
                    self.failed.insert(service.clone(), advertisement.clone());
                    failures.push((service.clone(), err));
                }
            }
        }
        failures
    }

    /// Changes a registered service's record on its own daemon: a new port replaces the SRV
    /// record (announced with the cache-flush bit) under the same name; a new type withdraws
    /// the old name first. A new daemon would probe the name while the old one still
    /// answers for it, and be renamed `NAME (2)`.
    fn update(
        &mut self,
        service: &str,
        advertisement: &Advertisement,
    ) -> Result<(), RegistrarError> {
        let host = host_name(service, &self.short_id);
        let info =
            service_info(advertisement, &self.config.node_name, &host).map_err(|source| {
                RegistrarError::Register {
                    fullname: advertisement.fullname(),
                    source,
                }
            })?;
        let Some(registration) = self.registrations.get_mut(service) else {
            return Ok(());
        };
        let old_fullname = registration.info.get_fullname().to_string();
        if old_fullname != info.get_fullname() {
            // The reply is not awaited: the daemon thread runs commands in order.
            if let Err(err) = registration.daemon.unregister(&old_fullname) {
                debug!(%service, "advertise: cannot withdraw {old_fullname:?}: {err}");
            }
            registration.renamed_to = None;
        }
        registration
            .daemon
            .register(info.clone())
            .map_err(|source| RegistrarError::Register {
                fullname: advertisement.fullname(),
                source,
            })?;
        info!(
            %service, instance = %info.get_fullname(), port = advertisement.port,
            "advertise: record changed"
        );
        registration.advertisement = advertisement.clone();
        registration.info = info;
        Ok(())
    }

    /// Announces `service` again at once (mdns-sd announces an already registered service
    /// anew when it is registered again): after another copy's goodbye flushed the name.
    pub fn reannounce(&mut self, service: &str) {
        let Some(registration) = self.registrations.get(service) else {
            return;
        };
        debug!(%service, "advertise: announcing again after another copy withdrew");
        if let Err(err) = registration.daemon.register(registration.info.clone()) {
            warn!(%service, "advertise: cannot announce again: {err}");
        }
    }

    /// Whether `service` is announced under another name than its own (`web (2)`).
    pub fn is_renamed(&self, service: &str) -> bool {
        self.registrations
            .get(service)
            .is_some_and(|registration| registration.renamed_to.is_some())
    }

    /// Moves a renamed `service` back to its own name: withdraws `NAME (2)` (and waits for its
    /// goodbyes), then registers `NAME` on a fresh daemon, which probes it again.
    pub async fn reclaim(&mut self, service: &str) -> Result<(), RegistrarError> {
        let Some(registration) = self.registrations.remove(service) else {
            return Ok(());
        };
        info!(
            %service,
            from = registration.renamed_to.as_deref().unwrap_or(service),
            "advertise: the other copy withdrew; announcing under the service's own name again"
        );
        let advertisement = registration.advertisement.clone();
        withdraw_registration(service.to_string(), registration).await;
        match self.register(&advertisement) {
            Ok(registration) => {
                self.registrations.insert(service.to_string(), registration);
                Ok(())
            }
            Err(err) => {
                warn!(%service, "advertise: {err:#}");
                self.failed.insert(service.to_string(), advertisement);
                Err(err)
            }
        }
    }

    /// Gives every daemon, and those created from now on, this interface rescan interval.
    pub fn set_ip_check(&mut self, secs: u32) {
        self.ip_check_secs = secs;
        for (service, registration) in &self.registrations {
            if let Err(e) = registration.daemon.set_ip_check_interval(secs) {
                debug!(%service, "advertise: cannot set the interface rescan interval: {e}");
            }
        }
    }

    /// The next event of any daemon; never resolves while none has an event channel.
    pub async fn next_event(&self) -> RegistrarEvent {
        let waits: Vec<_> = self
            .registrations
            .iter()
            .filter_map(|(service, registration)| {
                let monitor = registration.monitor.as_ref()?;
                Some(Box::pin(async move {
                    match monitor.recv_async().await {
                        Ok(event) => RegistrarEvent::Daemon {
                            service: service.clone(),
                            event,
                        },
                        Err(_) => RegistrarEvent::Closed {
                            service: service.clone(),
                        },
                    }
                }))
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(waits).await.0
    }

    /// Logs what a daemon reports and remembers renames.
    pub fn on_event(&mut self, event: RegistrarEvent) {
        let (service, event) = match event {
            RegistrarEvent::Closed { service } => {
                if let Some(registration) = self.registrations.get_mut(&service) {
                    registration.monitor = None;
                }
                return;
            }
            RegistrarEvent::Daemon { service, event } => (service, event),
        };
        let Some(registration) = self.registrations.get_mut(&service) else {
            return;
        };
        match event {
            DaemonEvent::Announce(fullname, addrs) => {
                debug!(%fullname, %addrs, "advertise: announced")
            }
            DaemonEvent::NameChange(change) => match change.rr_type {
                RRType::A | RRType::AAAA => info!(
                    %service, original = %change.original, new = %change.new_name,
                    "advertise: host name taken on the LAN; mdns-sd renamed it"
                ),
                _ => {
                    // One event per record (SRV, TXT) and interface: log each new name once.
                    let instance = change
                        .new_name
                        .strip_suffix(&format!(".{}", registration.advertisement.type_domain()))
                        .unwrap_or(&change.new_name)
                        .to_string();
                    if registration.renamed_to.as_deref() != Some(instance.as_str()) {
                        info!(
                            %service, new = %change.new_name,
                            "advertise: the service's name is taken on the LAN (another copy, or \
                             another device); mdns-sd renamed our record"
                        );
                        registration.renamed_to = Some(instance);
                    }
                }
            },
            DaemonEvent::Error(err) => warn!(%service, "advertise: mDNS daemon error: {err}"),
            other => trace!(%service, "advertise: {other:?}"),
        }
    }

    /// Withdraws every registration (goodbyes, sent twice) and waits for the daemons to end.
    pub async fn shutdown(mut self) {
        let services: Vec<String> = self.registrations.keys().cloned().collect();
        for service in services {
            self.withdraw(&service);
        }
        while self.withdrawals.join_next().await.is_some() {}
    }

    fn withdraw(&mut self, service: &str) {
        if let Some(registration) = self.registrations.remove(service) {
            info!(%service, "advertise: withdrawing from the LAN");
            self.withdrawals
                .spawn(withdraw_registration(service.to_string(), registration));
        }
    }

    /// A daemon for `advertisement`, configured, subscribed and registered.
    fn register(&self, advertisement: &Advertisement) -> Result<Registration, RegistrarError> {
        let service = &advertisement.service;
        let host = host_name(service, &self.short_id);
        let info =
            service_info(advertisement, &self.config.node_name, &host).map_err(|source| {
                RegistrarError::Register {
                    fullname: advertisement.fullname(),
                    source,
                }
            })?;
        let start = |step: &'static str| {
            let service = service.clone();
            move |source| RegistrarError::DaemonStart {
                service,
                step,
                source,
            }
        };
        let daemon = ServiceDaemon::new().map_err(start("create"))?;
        // From here on the daemon thread runs: shut it down on every error path.
        let configured = (|| {
            let monitor = prepare_daemon(&daemon, self.policy, self.ip_check_secs)
                .map_err(|(step, source)| start(step)(source))?;
            daemon
                .register(info.clone())
                .map_err(|source| RegistrarError::Register {
                    fullname: advertisement.fullname(),
                    source,
                })?;
            Ok(monitor)
        })();
        match configured {
            Ok(monitor) => Ok(Registration {
                advertisement: advertisement.clone(),
                info,
                daemon,
                monitor: Some(monitor),
                renamed_to: None,
            }),
            Err(err) => {
                let _ = daemon.shutdown();
                Err(err)
            }
        }
    }
}

impl Drop for LanRegistrar {
    fn drop(&mut self) {
        // mdns-sd's thread runs until told to exit, even with no handle left.
        for registration in self.registrations.values() {
            let _ = registration.daemon.shutdown();
        }
    }
}

/// Unregisters (goodbye now and 120 ms later), waits for the repeat, shuts the daemon down.
/// The unregister command goes to the daemon at once, in the caller's turn, so that nothing
/// registered after this call can be announced before the goodbye; the returned future waits
/// for the rest.
fn withdraw_registration(
    service: String,
    registration: Registration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let fullname = registration.info.get_fullname().to_string();
    let daemon = registration.daemon;
    let unregistered = daemon.unregister(&fullname);
    async move {
        match unregistered {
            Ok(reply) => match tokio::time::timeout(UNREGISTER_TIMEOUT, reply.recv_async()).await {
                Ok(Ok(UnregisterStatus::OK)) => {
                    debug!(%service, "advertise: goodbye sent");
                    tokio::time::sleep(GOODBYE_REPEAT_WAIT).await;
                }
                Ok(Ok(UnregisterStatus::NotFound)) => {
                    debug!(%service, "advertise: nothing to withdraw")
                }
                Ok(Err(_)) => debug!(%service, "advertise: daemon gone before the goodbye"),
                Err(_) => warn!(
                    %service,
                    "advertise: goodbye not confirmed within {UNREGISTER_TIMEOUT:?}"
                ),
            },
            Err(err) => debug!(%service, "advertise: cannot withdraw: {err}"),
        }
        match daemon.shutdown() {
            Ok(reply) => {
                if tokio::time::timeout(DAEMON_SHUTDOWN_TIMEOUT, reply.recv_async())
                    .await
                    .is_err()
                {
                    warn!(
                        %service,
                        "advertise: daemon shutdown not confirmed within {DAEMON_SHUTDOWN_TIMEOUT:?}"
                    );
                }
            }
            Err(mdns_sd::Error::DaemonShutdown) => {}
            Err(err) => warn!(%service, "advertise: cannot shut the daemon down: {err}"),
        }
    }
}
