//! The supervisor actor's handle: what the rest of the node (API, query answers) asks of it,
//! and the rules it applies at add time to services placed on this node ([`LocalRules`]).
//! Owns the command messages to the actor; does not own their handling (the actor's run loop).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::audit::{AuditPage, AuditRing};
use crate::ports::scan::{self, ListeningScan, ScanError};
use crate::ports::{Lease, LeaseState, PoolSet, PortSource, Proto};
use crate::supervisor::accept::{self, AcceptServices};
use crate::supervisor::launcher;
use crate::supervisor::{ServiceSpec, ServiceStatus};

/// Errors of the supervisor handle.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorHandleError {
    #[error("the supervisor stopped")]
    Stopped,
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot read the listening sockets: {0}")]
    Scan(#[from] ScanError),
    #[error("cannot read the log of `{service}`: {source}")]
    Log {
        service: String,
        source: std::io::Error,
    },
}

/// The listening sockets of this node, annotated with the service leasing each port.
#[derive(Clone, Debug)]
pub struct ListeningReport {
    pub scan: ListeningScan,
    /// `(port, proto)` → service holding a live lease on it.
    pub leased_to: BTreeMap<(u16, Proto), String>,
}

pub(super) enum SupervisorCommand {
    Statuses {
        reply: oneshot::Sender<Vec<ServiceStatus>>,
    },
    Leases {
        reply: oneshot::Sender<Vec<Lease>>,
    },
    SetDrained {
        drained: bool,
        reply: oneshot::Sender<Result<bool, SupervisorHandleError>>,
    },
    /// A service's anomaly flag changed (in [`SupervisorHandle::anomalies`]): write its
    /// instance record again.
    Republish {
        service: String,
    },
}

/// Upper bounds (seconds) of the health-check latency buckets: the Prometheus defaults from
/// 5 ms to 10 s, which span a local TCP connect to a check at its timeout.
pub const CHECK_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long one service's health checks took on this node, since the agent started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckTimes {
    pub count: u64,
    pub sum_seconds: f64,
    /// Checks at or under each bound of [`CHECK_BUCKETS`] (cumulative, as Prometheus counts).
    pub buckets: [u64; CHECK_BUCKETS.len()],
}

impl CheckTimes {
    pub fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum_seconds += seconds;
        for (bound, n) in CHECK_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
    }
}

/// What the API checks at add time for a service placed on this node: the same rules the
/// supervisor enforces when it reads the document.
#[derive(Clone, Debug)]
pub struct LocalRules {
    pub accept_services: AcceptServices,
    pub max_services: usize,
    pub pools: PoolSet,
}

impl LocalRules {
    /// Why this node would refuse `spec` (added through its own API), if it would: the
    /// policy, the account, the port pools. `max_services` is checked by the caller, who
    /// knows the whole set.
    pub fn refusal(&self, spec: &ServiceSpec) -> Option<String> {
        // Through its own API a service is "own": only `none` refuses it.
        let own = "this node";
        accept::policy_refusal(self.accept_services, Some(own), own, own)
            .or_else(|| {
                crate::supervisor::account::resolve(spec.user.as_deref(), spec.group.as_deref())
                    .err()
                    .map(|e| e.to_string())
            })
            .or_else(|| {
                spec.ports.iter().find_map(|port| match &port.source {
                    PortSource::Auto { pool } if self.pools.ranges(pool).is_err() => Some(format!(
                        "port pool `{pool}` does not exist on this node (pools: {})",
                        self.pools.names().collect::<Vec<_>>().join(", ")
                    )),
                    _ => None,
                })
            })
    }
}

/// Asks a member a `/mesh/query/1` question (the node's query path); `None` when it could not
/// be reached or did not answer. The supervisor asks before it starts an exclusive copy.
pub type PeerAsk = Arc<
    dyn Fn(
            crate::identity::NodeId,
            crate::wire::query::QueryRequest,
        )
            -> futures::future::BoxFuture<'static, Option<crate::wire::query::QueryResponse>>
        + Send
        + Sync,
>;

/// A cloneable handle to the supervisor actor.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(super) rules: Arc<LocalRules>,
    pub(super) commands: mpsc::Sender<SupervisorCommand>,
    pub(super) audit: Arc<Mutex<AuditRing>>,
    pub(super) audit_seq: watch::Receiver<u64>,
    /// Wakes long-polling readers of the trail when an event is recorded from outside the
    /// actor ([`SupervisorHandle::record_event`]).
    pub(super) audit_seq_tx: watch::Sender<u64>,
    pub(super) log_dir: PathBuf,
    /// What [`SupervisorHandle::up_holders`] reads: this node, its document, its membership.
    pub(super) node_id: crate::identity::NodeId,
    pub(super) state: crate::state::actor::StateHandle,
    pub(super) membership: watch::Receiver<crate::placement::MembershipSnapshot>,
    /// Health-check latencies by service (the actor records, readers copy).
    pub(super) check_times: Arc<Mutex<BTreeMap<String, CheckTimes>>>,
    /// Anomaly flags up, by service (`crate::insight`): published on the instance records.
    pub(super) anomalies: Arc<Mutex<BTreeMap<String, String>>>,
}

impl SupervisorHandle {
    /// Records an event of the node (not of a service) in this node's audit trail, e.g. an
    /// invite redeemed or refused: `subject` takes the place of the service name.
    pub fn record_event(&self, subject: &str, kind: &str, reason: String) {
        let seq = self
            .audit
            .lock()
            .expect("the audit lock is never poisoned")
            .push(subject, kind, reason);
        self.audit_seq_tx.send_replace(seq);
    }

    /// Health-check latencies of this node's services so far.
    pub fn check_times(&self) -> BTreeMap<String, CheckTimes> {
        self.check_times
            .lock()
            .expect("the check-times lock is never poisoned")
            .clone()
    }

    /// Raises (`Some(summary)`) or clears (`None`) a service's anomaly flag; the instance
    /// record shows it once the actor has written it again.
    pub async fn set_anomaly(&self, service: &str, flag: Option<String>) {
        {
            let mut map = self
                .anomalies
                .lock()
                .expect("the anomalies lock is never poisoned");
            let changed = match &flag {
                Some(f) => map.insert(service.to_string(), f.clone()).as_ref() != Some(f),
                None => map.remove(service).is_some(),
            };
            if !changed {
                return;
            }
        }
        let _ = self
            .commands
            .send(SupervisorCommand::Republish {
                service: service.to_string(),
            })
            .await;
    }

    /// The rules this node applies to services placed on it.
    pub fn rules(&self) -> &LocalRules {
        &self.rules
    }

    /// The local services' states, in start order.
    pub async fn statuses(&self) -> Result<Vec<ServiceStatus>, SupervisorHandleError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(SupervisorCommand::Statuses { reply })
            .await
            .map_err(|_| SupervisorHandleError::Stopped)?;
        rx.await.map_err(|_| SupervisorHandleError::Stopped)
    }

    /// Drains this node (every service moves off it; none is placed on it) or undrains it.
    /// Answers whether the mark changed.
    pub async fn set_drained(&self, drained: bool) -> Result<bool, SupervisorHandleError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(SupervisorCommand::SetDrained { drained, reply })
            .await
            .map_err(|_| SupervisorHandleError::Stopped)?;
        rx.await.map_err(|_| SupervisorHandleError::Stopped)?
    }

    /// A peer's `Holders` question about `service` (before it starts an exclusive copy): the
    /// nodes among `asked` and those this node's document shows occupying a copy that this
    /// node sees up. Read from the latest document and membership view, not through the
    /// actor, so a busy actor does not delay a peer's failover.
    pub fn up_holders(
        &self,
        service: &str,
        asked: &[crate::identity::NodeId],
    ) -> Vec<crate::identity::NodeId> {
        let snap = self.state.snapshot();
        // Membership stamps its changes with tokio's clock (see `place_here`).
        let liveness = self
            .membership
            .borrow()
            .at(tokio::time::Instant::now().into_std());
        let input = crate::placement::PlacementInput {
            view: crate::services::View::new(&snap.state, &snap.specs),
            local: &self.node_id,
            liveness: &liveness,
        };
        crate::placement::up_holders(input, service, asked)
    }

    /// This node's port leases, as the allocator holds them.
    pub async fn leases(&self) -> Result<Vec<Lease>, SupervisorHandleError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(SupervisorCommand::Leases { reply })
            .await
            .map_err(|_| SupervisorHandleError::Stopped)?;
        rx.await.map_err(|_| SupervisorHandleError::Stopped)
    }

    /// A page of the audit trail: with `after`, the events following it (oldest first, at
    /// most `limit`); without, the newest `limit`. With `wait`, waits up to that long for an
    /// event past `after` when there is none yet.
    pub async fn events(&self, after: Option<u64>, limit: usize, wait: Duration) -> AuditPage {
        if let Some(after) = after {
            let mut seq = self.audit_seq.clone();
            let _ = tokio::time::timeout(wait, seq.wait_for(|last| *last > after)).await;
        }
        self.audit
            .lock()
            .expect("the audit lock is never poisoned")
            .page(after, limit)
    }

    /// Log lines of a local service: the last `n`, or with `offset` (from an earlier answer)
    /// the lines written since, at most `n`. Returns the lines and the offset to follow from.
    pub async fn logs(
        &self,
        service: &str,
        n: usize,
        offset: Option<u64>,
    ) -> Result<(Vec<String>, u64), SupervisorHandleError> {
        let dir = self.log_dir.clone();
        let name = service.to_string();
        let result = tokio::task::spawn_blocking(move || match offset {
            Some(offset) => launcher::read_log_since(&dir, &name, offset, n),
            None => {
                // The length first: a line written between the two reads is shown again by
                // the next follow request rather than lost.
                let len = launcher::log_len(&dir, &name);
                launcher::tail_log(&dir, &name, n).map(|lines| (lines, len))
            }
        })
        .await
        .map_err(|_| SupervisorHandleError::Stopped)?;
        result.map_err(|source| SupervisorHandleError::Log {
            service: service.to_string(),
            source,
        })
    }

    /// Every listening socket on this machine with its process, and which service leases it.
    pub async fn listening(&self) -> Result<ListeningReport, SupervisorHandleError> {
        let scan = tokio::task::spawn_blocking(scan::scan_listening)
            .await
            .map_err(|_| SupervisorHandleError::Stopped)??;
        let leased_to = self
            .leases()
            .await?
            .into_iter()
            .filter(|lease| lease.state != LeaseState::Released)
            .map(|lease| ((lease.port, lease.proto), lease.service))
            .collect();
        Ok(ListeningReport { scan, leased_to })
    }
}
