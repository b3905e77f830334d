//! Port leases: the allocator and the lease lifecycle, sans-IO.
//!
//! A lease binds one port/protocol on one node to one port of one service. Lifecycle:
//!
//! ```text
//! allocated ──seen listening / health check connected──▶ in-use ──released / owner gone──▶ released ──cooldown──▶ (free)
//!     └──owner gone, or not listening after listen_grace──▶ released
//! ```
//!
//! Owns: the rules for which port a request gets ([`PortAllocator::allocate`]) and how leases
//! age ([`PortAllocator::reconcile`], and [`confirm_in_use`] between scans). Inputs are plain values: the leases known mesh-wide for
//! this node (replicated in the document, so they outlive this process and carry wall-clock
//! times, [`SystemTime`]), the ports seen listening on the machine ([`ListeningPorts`], from
//! [`super::procnet`]), a bind-test closure and an `is_alive(pid)` closure. Outputs are a
//! lease to store, or changes to audit. It does not own the document, the socket scan, or the
//! bind test itself: those are I/O at the edges.
//!
//! Allocation order is deterministic: the lowest free port of the pool, so the same history
//! gives the same ports (easy to test and to read in `mesh ports`); a service that asks again
//! gets its own lease back (stable ports across restarts, even during the cooldown).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::error::PortsError;
use super::pool::{PoolSet, PortSource};
use super::procnet::ListeningSocket;
use crate::wire::socket::Proto;

/// How long a released port stays unavailable to other services. Clients of the old service
/// (retrying connections, cached addresses, a dependent that has not restarted yet) must not
/// reach a different service on the same port; 30 s covers their retry loops and is short
/// enough that a 10,000-port pool never runs dry.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

/// How long an `allocated` lease may go without its port being seen listening before it is
/// reclaimed. Long enough for slow starters (a JVM, a database replaying its log on a Pi),
/// short enough that a lease leaked by a crashed agent comes back within a minute.
pub const DEFAULT_LISTEN_GRACE: Duration = Duration::from_secs(60);

/// Most bind tests one `auto` allocation runs before giving up. A port that is not leased and
/// not seen listening yet fails to bind is rare (TIME_WAIT, another network namespace); this
/// many in a row means something systematic (no permission, no network), and testing all
/// 10,000 ports of a pool would only delay the error.
pub const MAX_BIND_FAILURES: u32 = 64;

/// Timing of the lease lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// See [`DEFAULT_COOLDOWN`].
    pub cooldown: Duration,
    /// See [`DEFAULT_LISTEN_GRACE`].
    pub listen_grace: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            cooldown: DEFAULT_COOLDOWN,
            listen_grace: DEFAULT_LISTEN_GRACE,
        }
    }
}

/// State of a lease, as shown in `mesh ports` (STATE column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// Handed to a service; its port has not been seen listening yet.
    Allocated,
    /// Seen listening on the machine.
    InUse,
    /// Given back (service stopped, owner gone, never listened); cooling down until
    /// `since + cooldown`, then the lease is dropped and the port is free.
    Released,
}

impl std::fmt::Display for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaseState::Allocated => "allocated",
            LeaseState::InUse => "in-use",
            LeaseState::Released => "released",
        })
    }
}

/// One port leased on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub port: u16,
    pub proto: Proto,
    /// The service holding the lease.
    pub service: String,
    /// Which of the service's ports (its `name` in the spec); `None` for an unnamed single port.
    pub port_name: Option<String>,
    /// Asked for by number rather than drawn from a pool.
    pub fixed: bool,
    pub state: LeaseState,
    /// When `state` was entered (wall clock: leases are replicated and outlive the agent).
    pub since: SystemTime,
    /// Process group leader of the service instance using the port, once spawned.
    pub owner_pid: Option<u32>,
}

impl Lease {
    /// Whether the lease keeps its port from other services at `now`: allocated, in use, or
    /// released less than `cooldown` ago.
    pub fn blocks(&self, now: SystemTime, cooldown: Duration) -> bool {
        match self.state {
            LeaseState::Allocated | LeaseState::InUse => true,
            LeaseState::Released => elapsed(self.since, now) < cooldown,
        }
    }

    /// Whether this lease is the one `request` would get back.
    fn matches(&self, request: &PortRequest) -> bool {
        self.service == request.service
            && self.port_name == request.port_name
            && self.proto == request.proto
    }

    /// Records the process now using the lease (after a spawn).
    pub fn set_owner(&mut self, pid: u32) {
        self.owner_pid = Some(pid);
    }

    /// Gives the port back (service stopped or removed); it cools down from `now`.
    pub fn release(&mut self, now: SystemTime) {
        self.state = LeaseState::Released;
        self.since = now;
    }
}

/// Time from `since` to `now`; zero if the wall clock went backwards (so cooldowns and graces
/// only ever last longer, never shorter, after a clock step).
fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

/// Ports seen listening on the machine, with the pids holding each (empty if unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListeningPorts {
    ports: BTreeMap<(Proto, u16), Vec<u32>>,
}

impl ListeningPorts {
    pub fn new() -> Self {
        Self::default()
    }

    /// From a socket scan (see [`super::procnet::map_inodes_to_pids`]). IPv4 and IPv6 sockets
    /// on the same port merge: a port counts as taken whatever the address.
    pub fn from_sockets(sockets: &[ListeningSocket]) -> Self {
        let mut ports = Self::new();
        for socket in sockets {
            ports.insert(socket.proto, socket.local.port(), &socket.pids);
        }
        ports
    }

    /// Marks a port listening, held by `pids` (may be empty).
    pub fn insert(&mut self, proto: Proto, port: u16, pids: &[u32]) {
        let holders = self.ports.entry((proto, port)).or_default();
        holders.extend_from_slice(pids);
        holders.sort_unstable();
        holders.dedup();
    }

    pub fn contains(&self, port: u16, proto: Proto) -> bool {
        self.ports.contains_key(&(proto, port))
    }

    /// Pids seen holding the port, sorted; empty if not listening or not mapped.
    pub fn holders(&self, port: u16, proto: Proto) -> &[u32] {
        self.ports
            .get(&(proto, port))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// One port a service asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRequest {
    pub service: String,
    /// The port's name in the spec (`None` for an unnamed single port).
    pub port_name: Option<String>,
    pub proto: Proto,
    pub source: PortSource,
}

/// A successful allocation: the lease to store in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortGrant {
    pub lease: Lease,
    /// The service already held (or had just released) this lease; its port is unchanged.
    pub reused: bool,
}

/// What [`PortAllocator::reconcile`] changed about one lease, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseChange {
    pub port: u16,
    pub proto: Proto,
    pub service: String,
    pub from: LeaseState,
    /// `None`: the lease was dropped and the port is free.
    pub to: Option<LeaseState>,
    pub reason: String,
}

/// The allocator of one node: its pools and lease timing.
#[derive(Clone, Debug, Default)]
pub struct PortAllocator {
    pools: PoolSet,
    config: LeaseConfig,
}

/// Why a port in a pool was skipped; counted for the exhaustion error.
#[derive(Default)]
struct SkipCounts {
    leased: u32,
    cooling: u32,
    listening: u32,
    bind_failed: u32,
}

impl PortAllocator {
    pub fn new(pools: PoolSet, config: LeaseConfig) -> Self {
        Self { pools, config }
    }

    pub fn pools(&self) -> &PoolSet {
        &self.pools
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Allocates a port for `request`.
    ///
    /// `leases` are all leases known for this node (any state); `listening` the ports seen
    /// listening; `bind_test(port, proto)` tries to bind the port and says whether it could
    /// (called only for ports that passed every other check). Never returns a port that is
    /// leased to another service, cooling down after another service's release, seen
    /// listening, or that fails the bind test.
    ///
    /// If the service already holds a live lease for this port name, that lease comes back
    /// unchanged (`reused`). If it released one less than `cooldown` ago and the port is still
    /// free on the machine, the lease is taken back (`allocated` again), so a crashing service
    /// keeps its port across restarts.
    pub fn allocate(
        &self,
        now: SystemTime,
        request: &PortRequest,
        leases: &[Lease],
        listening: &ListeningPorts,
        mut bind_test: impl FnMut(u16, Proto) -> bool,
    ) -> Result<PortGrant, PortsError> {
        let cooldown = self.config.cooldown;
        let fresh = |port: u16, fixed: bool| Lease {
            port,
            proto: request.proto,
            service: request.service.clone(),
            port_name: request.port_name.clone(),
            fixed,
            state: LeaseState::Allocated,
            since: now,
            owner_pid: None,
        };
        let wanted_port = |port: u16| match &request.source {
            PortSource::Fixed(fixed) => Ok(port == *fixed),
            PortSource::Auto { pool } => Ok::<bool, PortsError>(
                self.pools
                    .ranges(pool)?
                    .iter()
                    .any(|range| range.contains(port)),
            ),
        };

        // 1. The service's own lease, if it still fits the request.
        let mut own_released = None;
        for lease in leases
            .iter()
            .filter(|lease| lease.matches(request) && lease.blocks(now, cooldown))
        {
            if !wanted_port(lease.port)? {
                continue;
            }
            match lease.state {
                LeaseState::Allocated | LeaseState::InUse => {
                    return Ok(PortGrant {
                        lease: lease.clone(),
                        reused: true,
                    });
                }
                LeaseState::Released => own_released = Some(lease),
            }
        }
        if let Some(lease) = own_released
            && !listening.contains(lease.port, lease.proto)
            && bind_test(lease.port, lease.proto)
        {
            return Ok(PortGrant {
                lease: fresh(lease.port, lease.fixed),
                reused: true,
            });
        }

        // Ports blocked by other leases: port → (holder, released at) with `None` for live.
        let mut blocked: HashMap<u16, (&str, Option<SystemTime>)> = HashMap::new();
        for lease in leases.iter().filter(|lease| {
            lease.proto == request.proto && lease.blocks(now, cooldown) && !lease.matches(request)
        }) {
            let entry = match lease.state {
                LeaseState::Released => (lease.service.as_str(), Some(lease.since)),
                _ => (lease.service.as_str(), None),
            };
            // A live lease outranks a cooling one in the error message.
            blocked
                .entry(lease.port)
                .and_modify(|existing| {
                    if entry.1.is_none() {
                        *existing = entry;
                    }
                })
                .or_insert(entry);
        }

        match &request.source {
            PortSource::Fixed(port) => {
                let (port, proto) = (*port, request.proto);
                match blocked.get(&port) {
                    Some((holder, None)) => {
                        return Err(PortsError::FixedPortLeased {
                            port,
                            proto,
                            holder: holder.to_string(),
                        });
                    }
                    Some((holder, Some(released))) => {
                        let remaining = cooldown.saturating_sub(elapsed(*released, now));
                        return Err(PortsError::FixedPortCoolingDown {
                            port,
                            proto,
                            holder: holder.to_string(),
                            remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                        });
                    }
                    None => {}
                }
                if listening.contains(port, proto) {
                    return Err(PortsError::FixedPortListening {
                        port,
                        proto,
                        pids: listening.holders(port, proto).to_vec(),
                    });
                }
                if !bind_test(port, proto) {
                    return Err(PortsError::FixedPortBindFailed { port, proto });
                }
                Ok(PortGrant {
                    lease: fresh(port, true),
                    reused: false,
                })
            }
            PortSource::Auto { pool } => {
                let mut skipped = SkipCounts::default();
                for port in self.pools.ports(pool)? {
                    match blocked.get(&port) {
                        Some((_, None)) => skipped.leased += 1,
                        Some((_, Some(_))) => skipped.cooling += 1,
                        None if listening.contains(port, request.proto) => skipped.listening += 1,
                        None if !bind_test(port, request.proto) => {
                            skipped.bind_failed += 1;
                            if skipped.bind_failed >= MAX_BIND_FAILURES {
                                break;
                            }
                        }
                        None => {
                            return Ok(PortGrant {
                                lease: fresh(port, false),
                                reused: false,
                            });
                        }
                    }
                }
                Err(PortsError::PoolExhausted {
                    pool: pool.clone(),
                    proto: request.proto,
                    size: self.pools.size(pool)?,
                    leased: skipped.leased,
                    cooling: skipped.cooling,
                    listening: skipped.listening,
                    bind_failed: skipped.bind_failed,
                })
            }
        }
    }

    /// Ages the leases of this node at `now` and returns what changed:
    /// - `allocated` and seen listening → `in-use`;
    /// - `allocated` or `in-use` whose owner process is gone (`is_alive(pid)` false) →
    ///   `released`;
    /// - `allocated` and not listening `listen_grace` after allocation → `released`;
    /// - `released` for `cooldown` → dropped from `leases` (the port is free).
    ///
    /// An `in-use` lease whose port stops listening stays `in-use` while its owner lives (a
    /// service may close and reopen its socket); the owner-gone rule catches crashes.
    pub fn reconcile(
        &self,
        now: SystemTime,
        leases: &mut Vec<Lease>,
        listening: &ListeningPorts,
        mut is_alive: impl FnMut(u32) -> bool,
    ) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        let change = |lease: &Lease, to: Option<LeaseState>, reason: String| LeaseChange {
            port: lease.port,
            proto: lease.proto,
            service: lease.service.clone(),
            from: lease.state,
            to,
            reason,
        };
        leases.retain_mut(|lease| {
            let owner_gone = lease.owner_pid.filter(|pid| !is_alive(*pid));
            let (to, reason) = match lease.state {
                LeaseState::Allocated if listening.contains(lease.port, lease.proto) => {
                    (Some(LeaseState::InUse), "seen listening".to_string())
                }
                LeaseState::Allocated | LeaseState::InUse if owner_gone.is_some() => (
                    Some(LeaseState::Released),
                    format!(
                        "owner process {} is gone",
                        owner_gone.expect("checked by the guard")
                    ),
                ),
                LeaseState::Allocated if elapsed(lease.since, now) >= self.config.listen_grace => (
                    Some(LeaseState::Released),
                    format!(
                        "not listening {} s after allocation",
                        self.config.listen_grace.as_secs()
                    ),
                ),
                LeaseState::Released if elapsed(lease.since, now) >= self.config.cooldown => {
                    (None, "cooldown over; port is free".to_string())
                }
                _ => return true,
            };
            changes.push(change(lease, to, reason));
            match to {
                Some(state) => {
                    lease.state = state;
                    lease.since = now;
                    true
                }
                None => false,
            }
        });
        changes
    }
}

/// Marks `service`'s `allocated` lease of `port`/`proto` `in-use` at `now`, because its port
/// was just seen accepting connections (a passed `tcp`/`http` health check connected to it):
/// what [`PortAllocator::reconcile`] would conclude at its next table read, without waiting
/// for it. Returns the change for the audit trail; `None` when no such lease is `allocated`
/// (already `in-use`, released, or another service's).
pub fn confirm_in_use(
    leases: &mut [Lease],
    now: SystemTime,
    service: &str,
    port: u16,
    proto: Proto,
    reason: &str,
) -> Option<LeaseChange> {
    let lease = leases.iter_mut().find(|l| {
        l.service == service
            && l.port == port
            && l.proto == proto
            && l.state == LeaseState::Allocated
    })?;
    lease.state = LeaseState::InUse;
    lease.since = now;
    Some(LeaseChange {
        port,
        proto,
        service: service.to_string(),
        from: LeaseState::Allocated,
        to: Some(LeaseState::InUse),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{DEFAULT_POOL, PortRange};

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn small_allocator() -> PortAllocator {
        let pools = PoolSet::new(BTreeMap::from([
            (
                DEFAULT_POOL.to_string(),
                vec![PortRange::new(20000, 20004).expect("valid")],
            ),
            (
                "metrics".to_string(),
                vec![PortRange::new(9100, 9101).expect("valid")],
            ),
        ]))
        .expect("valid pools");
        PortAllocator::new(pools, LeaseConfig::default())
    }

    fn auto(service: &str) -> PortRequest {
        PortRequest {
            service: service.to_string(),
            port_name: None,
            proto: Proto::Tcp,
            source: PortSource::auto_default(),
        }
    }

    fn fixed(service: &str, port: u16) -> PortRequest {
        PortRequest {
            source: PortSource::Fixed(port),
            ..auto(service)
        }
    }

    fn always_binds(_: u16, _: Proto) -> bool {
        true
    }

    fn lease(service: &str, port: u16, state: LeaseState, since: SystemTime) -> Lease {
        Lease {
            port,
            proto: Proto::Tcp,
            service: service.to_string(),
            port_name: None,
            fixed: false,
            state,
            since,
            owner_pid: None,
        }
    }

    #[test]
    fn auto_takes_the_lowest_free_port() {
        let allocator = small_allocator();
        let grant = allocator
            .allocate(t0(), &auto("db"), &[], &ListeningPorts::new(), always_binds)
            .expect("free pool");
        assert_eq!(grant.lease.port, 20000);
        assert_eq!(grant.lease.state, LeaseState::Allocated);
        assert_eq!(grant.lease.since, t0());
        assert!(!grant.reused);
        assert!(!grant.lease.fixed);
    }

    #[test]
    fn auto_skips_leased_cooling_listening_and_unbindable_ports() {
        let allocator = small_allocator();
        let leases = [
            lease("a", 20000, LeaseState::InUse, t0()),
            // Released 10 s ago: still cooling down.
            lease(
                "b",
                20001,
                LeaseState::Released,
                t0() - Duration::from_secs(10),
            ),
        ];
        let mut listening = ListeningPorts::new();
        listening.insert(Proto::Tcp, 20002, &[4242]);
        let mut tested = Vec::new();
        let grant = allocator
            .allocate(t0(), &auto("web"), &leases, &listening, |port, _| {
                tested.push(port);
                port != 20003
            })
            .expect("20004 is free");
        assert_eq!(grant.lease.port, 20004);
        assert_eq!(
            tested,
            [20003, 20004],
            "bind test only for otherwise free ports"
        );
    }

    #[test]
    fn a_port_freed_by_cooldown_is_handed_out_again() {
        let allocator = small_allocator();
        let leases = [lease(
            "b",
            20000,
            LeaseState::Released,
            t0() - DEFAULT_COOLDOWN,
        )];
        let grant = allocator
            .allocate(
                t0(),
                &auto("web"),
                &leases,
                &ListeningPorts::new(),
                always_binds,
            )
            .expect("free");
        assert_eq!(grant.lease.port, 20000);
    }

    #[test]
    fn udp_and_tcp_are_separate() {
        let allocator = small_allocator();
        let leases = [lease("a", 20000, LeaseState::InUse, t0())];
        let request = PortRequest {
            proto: Proto::Udp,
            ..auto("dns")
        };
        let grant = allocator
            .allocate(
                t0(),
                &request,
                &leases,
                &ListeningPorts::new(),
                always_binds,
            )
            .expect("free");
        assert_eq!((grant.lease.port, grant.lease.proto), (20000, Proto::Udp));
    }

    #[test]
    fn a_port_held_by_a_foreign_process_is_never_handed_out() {
        let allocator = small_allocator();
        let mut listening = ListeningPorts::new();
        for port in 20000..=20003 {
            listening.insert(Proto::Tcp, port, &[]);
        }
        let grant = allocator
            .allocate(t0(), &auto("web"), &[], &listening, always_binds)
            .expect("one left");
        assert_eq!(grant.lease.port, 20004);
        listening.insert(Proto::Tcp, 20004, &[77]);
        let err = allocator
            .allocate(t0(), &auto("web"), &[], &listening, always_binds)
            .expect_err("pool exhausted");
        assert_eq!(
            err.to_string(),
            "pool `default` has no free tcp port: of 5 ports, 0 are leased, 0 cooling down, 5 in use by other processes, 0 failed the bind test"
        );
    }

    #[test]
    fn exhaustion_counts_every_reason() {
        let allocator = small_allocator();
        let leases = [
            lease("a", 20000, LeaseState::Allocated, t0()),
            lease("b", 20001, LeaseState::Released, t0()),
        ];
        let mut listening = ListeningPorts::new();
        listening.insert(Proto::Tcp, 20002, &[]);
        let err = allocator
            .allocate(t0(), &auto("c"), &leases, &listening, |_, _| false)
            .expect_err("nothing free");
        assert_eq!(
            err,
            PortsError::PoolExhausted {
                pool: "default".to_string(),
                proto: Proto::Tcp,
                size: 5,
                leased: 1,
                cooling: 1,
                listening: 1,
                bind_failed: 2,
            }
        );
    }

    #[test]
    fn named_pools_and_unknown_pools() {
        let allocator = small_allocator();
        let request = PortRequest {
            source: PortSource::Auto {
                pool: "metrics".to_string(),
            },
            ..auto("exporter")
        };
        let grant = allocator
            .allocate(t0(), &request, &[], &ListeningPorts::new(), always_binds)
            .expect("free");
        assert_eq!(grant.lease.port, 9100);
        let request = PortRequest {
            source: PortSource::Auto {
                pool: "nope".to_string(),
            },
            ..auto("exporter")
        };
        let err = allocator
            .allocate(t0(), &request, &[], &ListeningPorts::new(), always_binds)
            .expect_err("unknown pool");
        assert_eq!(err.to_string(), "unknown port pool `nope`");
    }

    #[test]
    fn second_service_asking_for_a_leased_fixed_port_is_refused_naming_the_holder() {
        let allocator = small_allocator();
        let first = allocator
            .allocate(
                t0(),
                &fixed("api", 8080),
                &[],
                &ListeningPorts::new(),
                always_binds,
            )
            .expect("free");
        assert!(first.lease.fixed);
        assert_eq!(first.lease.port, 8080);
        let err = allocator
            .allocate(
                t0(),
                &fixed("web", 8080),
                &[first.lease],
                &ListeningPorts::new(),
                always_binds,
            )
            .expect_err("taken");
        assert_eq!(
            err.to_string(),
            "port 8080/tcp is already leased to service `api`"
        );
    }

    #[test]
    fn fixed_port_refusals_name_the_reason() {
        let allocator = small_allocator();
        let cooling = [Lease {
            fixed: true,
            ..lease(
                "api",
                8080,
                LeaseState::Released,
                t0() - Duration::from_secs(10),
            )
        }];
        let err = allocator
            .allocate(
                t0(),
                &fixed("web", 8080),
                &cooling,
                &ListeningPorts::new(),
                always_binds,
            )
            .expect_err("cooling");
        assert_eq!(
            err.to_string(),
            "port 8080/tcp was released by service `api` and is cooling down for another 20000 ms"
        );

        let mut listening = ListeningPorts::new();
        listening.insert(Proto::Tcp, 8080, &[321, 123]);
        let err = allocator
            .allocate(t0(), &fixed("web", 8080), &[], &listening, always_binds)
            .expect_err("foreign listener");
        assert_eq!(
            err.to_string(),
            "port 8080/tcp is in use by another process (pids 123, 321)"
        );

        let err = allocator
            .allocate(
                t0(),
                &fixed("web", 8080),
                &[],
                &ListeningPorts::new(),
                |_, _| false,
            )
            .expect_err("bind fails");
        assert_eq!(
            err,
            PortsError::FixedPortBindFailed {
                port: 8080,
                proto: Proto::Tcp
            }
        );
    }

    #[test]
    fn a_service_gets_its_own_lease_back() {
        let allocator = small_allocator();
        let mut own = lease("web", 20003, LeaseState::InUse, t0());
        own.owner_pid = Some(10);
        // Listening (by the service itself) does not matter for its own live lease.
        let mut listening = ListeningPorts::new();
        listening.insert(Proto::Tcp, 20003, &[10]);
        let grant = allocator
            .allocate(t0(), &auto("web"), &[own.clone()], &listening, |_, _| {
                panic!("no bind test for a live own lease")
            })
            .expect("own lease");
        assert!(grant.reused);
        assert_eq!(grant.lease, own);
    }

    #[test]
    fn a_crashed_service_takes_its_cooling_lease_back() {
        let allocator = small_allocator();
        let released = lease(
            "web",
            20003,
            LeaseState::Released,
            t0() - Duration::from_secs(1),
        );
        let grant = allocator
            .allocate(
                t0(),
                &auto("web"),
                std::slice::from_ref(&released),
                &ListeningPorts::new(),
                always_binds,
            )
            .expect("own lease");
        assert!(grant.reused);
        assert_eq!(grant.lease.port, 20003);
        assert_eq!(grant.lease.state, LeaseState::Allocated);
        assert_eq!(grant.lease.since, t0());

        // ... unless someone else grabbed the port meanwhile: then a new port.
        let mut listening = ListeningPorts::new();
        listening.insert(Proto::Tcp, 20003, &[999]);
        let grant = allocator
            .allocate(t0(), &auto("web"), &[released], &listening, always_binds)
            .expect("another port");
        assert!(!grant.reused);
        assert_eq!(grant.lease.port, 20000);
    }

    #[test]
    fn a_changed_fixed_port_does_not_reuse_the_old_lease() {
        let allocator = small_allocator();
        let old = Lease {
            fixed: true,
            ..lease("web", 8080, LeaseState::InUse, t0())
        };
        let grant = allocator
            .allocate(
                t0(),
                &fixed("web", 8081),
                &[old],
                &ListeningPorts::new(),
                always_binds,
            )
            .expect("free");
        assert_eq!(grant.lease.port, 8081);
        assert!(!grant.reused);
    }

    #[test]
    fn lifecycle_allocated_in_use_released_free() {
        let allocator = small_allocator();
        let mut leases = vec![lease("web", 20000, LeaseState::Allocated, t0())];
        leases[0].set_owner(42);
        let mut listening = ListeningPorts::new();

        // Not listening yet, owner alive, within grace: nothing changes.
        let changes = allocator.reconcile(
            t0() + Duration::from_secs(5),
            &mut leases,
            &listening,
            |_| true,
        );
        assert!(changes.is_empty());

        listening.insert(Proto::Tcp, 20000, &[42]);
        let changes = allocator.reconcile(
            t0() + Duration::from_secs(6),
            &mut leases,
            &listening,
            |_| true,
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from, changes[0].to),
            (LeaseState::Allocated, Some(LeaseState::InUse))
        );
        assert_eq!(leases[0].state, LeaseState::InUse);
        assert_eq!(leases[0].since, t0() + Duration::from_secs(6));

        let released_at = t0() + Duration::from_secs(100);
        leases[0].release(released_at);
        let changes = allocator.reconcile(
            released_at + DEFAULT_COOLDOWN - Duration::from_millis(1),
            &mut leases,
            &ListeningPorts::new(),
            |_| false,
        );
        assert!(changes.is_empty(), "still cooling down");
        assert_eq!(leases.len(), 1);
        let changes = allocator.reconcile(
            released_at + DEFAULT_COOLDOWN,
            &mut leases,
            &ListeningPorts::new(),
            |_| false,
        );
        assert_eq!(changes[0].to, None);
        assert_eq!(changes[0].reason, "cooldown over; port is free");
        assert!(leases.is_empty());
    }

    #[test]
    fn leases_whose_owner_is_gone_are_reclaimed() {
        let allocator = small_allocator();
        let mut leases = vec![
            Lease {
                owner_pid: Some(7),
                ..lease("a", 20000, LeaseState::InUse, t0())
            },
            Lease {
                owner_pid: Some(8),
                ..lease("b", 20001, LeaseState::Allocated, t0())
            },
            Lease {
                owner_pid: Some(9),
                ..lease("c", 20002, LeaseState::InUse, t0())
            },
        ];
        let mut listening = ListeningPorts::new();
        listening.insert(Proto::Tcp, 20000, &[]);
        listening.insert(Proto::Tcp, 20002, &[]);
        let changes = allocator.reconcile(t0(), &mut leases, &listening, |pid| pid == 9);
        let summary: Vec<(&str, Option<LeaseState>, &str)> = changes
            .iter()
            .map(|change| (change.service.as_str(), change.to, change.reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", Some(LeaseState::Released), "owner process 7 is gone"),
                ("b", Some(LeaseState::Released), "owner process 8 is gone"),
            ]
        );
        assert_eq!(leases[2].state, LeaseState::InUse);
    }

    #[test]
    fn a_lease_never_seen_listening_is_reclaimed_after_the_grace() {
        let allocator = small_allocator();
        let mut leases = vec![lease("quiet", 20000, LeaseState::Allocated, t0())];
        let before = t0() + DEFAULT_LISTEN_GRACE - Duration::from_millis(1);
        assert!(
            allocator
                .reconcile(before, &mut leases, &ListeningPorts::new(), |_| true)
                .is_empty()
        );
        let changes = allocator.reconcile(
            t0() + DEFAULT_LISTEN_GRACE,
            &mut leases,
            &ListeningPorts::new(),
            |_| true,
        );
        assert_eq!(changes[0].reason, "not listening 60 s after allocation");
        assert_eq!(leases[0].state, LeaseState::Released);
    }

    #[test]
    fn a_clock_step_backwards_only_lengthens_cooldowns() {
        let released = lease("a", 20000, LeaseState::Released, t0());
        assert!(released.blocks(t0() - Duration::from_secs(3600), DEFAULT_COOLDOWN));
        assert!(!released.blocks(t0() + DEFAULT_COOLDOWN, DEFAULT_COOLDOWN));
    }

    #[test]
    fn lease_state_names_match_mesh_ports() {
        assert_eq!(LeaseState::InUse.to_string(), "in-use");
        assert_eq!(
            serde_json::to_string(&LeaseState::InUse).expect("serializes"),
            "\"in-use\""
        );
    }

    #[test]
    fn a_port_seen_accepting_connections_is_in_use_at_once() {
        let mut leases = vec![
            lease("db", 20000, LeaseState::Allocated, t0()),
            lease("api", 20001, LeaseState::Allocated, t0()),
            lease("db", 20002, LeaseState::Released, t0()),
        ];
        let now = t0() + Duration::from_millis(300);
        let change = confirm_in_use(&mut leases, now, "db", 20000, Proto::Tcp, "health check")
            .expect("the allocated lease changes");
        assert_eq!(change.to, Some(LeaseState::InUse));
        assert_eq!(leases[0].state, LeaseState::InUse);
        assert_eq!(leases[0].since, now);
        // Only that lease: another service's port, a released lease and a lease already in
        // use stay as they are.
        assert_eq!(leases[1].state, LeaseState::Allocated);
        assert!(confirm_in_use(&mut leases, now, "db", 20001, Proto::Tcp, "x").is_none());
        assert!(confirm_in_use(&mut leases, now, "db", 20002, Proto::Tcp, "x").is_none());
        assert!(confirm_in_use(&mut leases, now, "db", 20000, Proto::Tcp, "x").is_none());
        assert!(confirm_in_use(&mut leases, now, "db", 20000, Proto::Udp, "x").is_none());
    }
}
