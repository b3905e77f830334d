//! Which services this node runs: the placement core ([`crate::placement`]) applied to the
//! current document and membership view, its decisions told in the audit trail, the claims
//! (fencing token, generation) remembered for the instance records, and the environment the
//! agent adds to each copy (`MESH_EPOCH`, `MESH_ENDPOINT_<DEP>`), and the members' answers
//! asked for before an exclusive copy starts ([`Confirmations`]).

use super::*;
use crate::placement::{
    self, Confirmation, LocalPlan, LocalRole, PlacementInput, ServicePlacement,
};
use crate::supervisor::spec::DependencyRestart;
use crate::wire::query::{QueryRequest, QueryResponse};

/// How long a member has to answer a `Holders` question (a round trip on a LAN is
/// milliseconds; a relayed one well under a second).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// After the members did not confirm, ask again this much later (sooner when membership or
/// the document changes what placement decides).
const CONFIRM_RETRY: Duration = Duration::from_millis(500);

/// One member's objection to an exclusive start.
#[derive(Debug)]
enum Objection {
    /// It sees these nodes up with a copy.
    SeesUp(Vec<NodeId>),
    NoAnswer,
    Refused(String),
}

/// The answers to one [`Confirmation`].
#[derive(Debug)]
pub(super) struct ConfirmOutcome {
    service: String,
    confirmed: bool,
    objections: Vec<(NodeId, Objection)>,
}

/// The questions asked before exclusive starts: one at a time per service, in small tasks
/// that report back on a bounded channel.
pub(super) struct Confirmations {
    ask: PeerAsk,
    tx: mpsc::Sender<ConfirmOutcome>,
    rx: mpsc::Receiver<ConfirmOutcome>,
    /// When a majority last confirmed, by service.
    confirmed: BTreeMap<String, Instant>,
    /// Services with a question out.
    asking: BTreeSet<String>,
    /// Services not confirmed, and when to ask again.
    retry_at: BTreeMap<String, Instant>,
    /// The objections last told in the audit trail, by service.
    told: BTreeMap<String, String>,
}

impl Confirmations {
    pub fn new(
        ask: PeerAsk,
        tx: mpsc::Sender<ConfirmOutcome>,
        rx: mpsc::Receiver<ConfirmOutcome>,
    ) -> Self {
        Self {
            ask,
            tx,
            rx,
            confirmed: BTreeMap::new(),
            asking: BTreeSet::new(),
            retry_at: BTreeMap::new(),
            told: BTreeMap::new(),
        }
    }

    pub async fn next(&mut self) -> Option<ConfirmOutcome> {
        self.rx.recv().await
    }

    /// The ages of the confirmations still valid, for the liveness view.
    fn ages(&mut self, now: Instant) -> BTreeMap<String, Duration> {
        self.confirmed
            .retain(|_, at| now.duration_since(*at) < placement::CONFIRMATION_VALID);
        self.confirmed
            .iter()
            .map(|(service, at)| (service.clone(), now.duration_since(*at)))
            .collect()
    }

    /// Asks what `plan` needs asked and is not out or waiting for its retry; returns the
    /// earliest retry still ahead.
    fn ask_for(&mut self, plan: &LocalPlan, local: &NodeId, now: Instant) -> Option<Instant> {
        self.retry_at
            .retain(|service, at| *at > now && plan.confirm.contains_key(service));
        self.told
            .retain(|service, _| plan.confirm.contains_key(service));
        for (service, confirmation) in &plan.confirm {
            if self.retry_at.contains_key(service) || !self.asking.insert(service.clone()) {
                continue;
            }
            self.spawn(service.clone(), confirmation.clone(), local.clone());
        }
        self.retry_at.values().min().copied()
    }

    fn spawn(&self, service: String, confirmation: Confirmation, local: NodeId) {
        let ask = self.ask.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let about: Vec<String> = confirmation.about.iter().map(|n| n.to_string()).collect();
            let questions = confirmation.ask.iter().map(|peer| {
                let question = QueryRequest::Holders {
                    service: service.clone(),
                    nodes: about.clone(),
                };
                let answer = tokio::time::timeout(CONFIRM_TIMEOUT, ask(peer.clone(), question));
                async move { (peer.clone(), answer.await.ok().flatten()) }
            });
            let mut agree = 0;
            let mut objections = Vec::new();
            for (peer, answer) in futures::future::join_all(questions).await {
                match answer {
                    Some(QueryResponse::Holders { up }) => {
                        let up: Vec<NodeId> = up
                            .into_iter()
                            .map(NodeId::from)
                            .filter(|n| *n != local)
                            .collect();
                        if up.is_empty() {
                            agree += 1;
                        } else {
                            objections.push((peer, Objection::SeesUp(up)));
                        }
                    }
                    Some(QueryResponse::Error(why)) => {
                        objections.push((peer, Objection::Refused(why)));
                    }
                    Some(other) => objections.push((
                        peer,
                        Objection::Refused(format!("unexpected answer {other:?}")),
                    )),
                    None => objections.push((peer, Objection::NoAnswer)),
                }
            }
            let outcome = ConfirmOutcome {
                service,
                confirmed: agree >= confirmation.needed,
                objections,
            };
            let _ = tx.send(outcome).await;
        });
    }
}

/// What this node claimed for a copy it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Claim {
    /// `MESH_EPOCH`.
    pub epoch: u64,
    pub generation: u64,
    /// `MESH_ENDPOINT_<DEP>` values given at start (kept while the dependency rides through).
    pub endpoints: BTreeMap<String, String>,
}

impl Claim {
    /// The variables the agent adds to the copy's environment.
    pub fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        std::iter::once(("MESH_EPOCH".to_string(), self.epoch.to_string()))
            .chain(self.endpoints.iter().map(|(k, v)| (k.clone(), v.clone())))
    }
}

impl SupervisorActor {
    /// The `MESH_ENDPOINT_<DEP>` values `spec` gets now: the document's ready copies
    /// ([`placement::dependency_endpoints`]), with a dependency this supervisor runs healthy
    /// here on loopback even before the document says so (a dependent started on that health
    /// report must get the new address, not the one from before the move).
    pub(super) fn endpoints_now(
        &self,
        input: PlacementInput<'_>,
        spec: &ServiceSpec,
    ) -> BTreeMap<String, String> {
        let mut env = placement::dependency_endpoints(input, spec);
        for dependency in &spec.after {
            let healthy = self
                .core
                .status(dependency)
                .is_some_and(|s| s.state == ServiceState::Healthy && s.pid.is_some());
            let port = self
                .ports
                .get(dependency)
                .and_then(|(ports, _)| ports.first());
            if let (true, Some(port)) = (healthy, port) {
                env.insert(
                    placement::endpoint_variable(dependency),
                    format!("127.0.0.1:{port}"),
                );
            }
        }
        env
    }

    /// The membership view now, and now as membership counts it: the node stamps membership
    /// changes with tokio's clock, so read the same one (they differ in paused time, where a
    /// fence would otherwise never end).
    fn liveness_now(&self) -> (std::time::Instant, placement::LivenessView) {
        let now = Instant::now().into_std();
        (now, self.membership.borrow().at(now))
    }

    /// The dependency addresses a copy of `spec` starting now gets (see [`Self::endpoints_now`]).
    pub(super) fn endpoints_at_start(&self, spec: &ServiceSpec) -> BTreeMap<String, String> {
        let snap = self.state.snapshot();
        let (_, liveness) = self.liveness_now();
        let node_id = NodeId::from(&self.config.node_id);
        let input = PlacementInput {
            view: View::new(&snap.state, &snap.specs),
            local: &node_id,
            liveness: &liveness,
        };
        self.endpoints_now(input, spec)
    }

    /// Runs placement on `snap` and the current membership view; returns the services this
    /// node runs, remembers their claims (and when to look again), and queues a restart of
    /// copies whose dependency moved when they ask for it (`on_dependency_restart = restart`).
    pub(super) fn place_here(
        &mut self,
        snap: &StateSnapshot,
        queue: &mut VecDeque<SupervisorEvent>,
    ) -> BTreeSet<String> {
        let (now, mut liveness) = self.liveness_now();
        let node_id = NodeId::from(&self.config.node_id);
        let view = View::new(&snap.state, &snap.specs);
        let (seen, members) = placement::majority(PlacementInput {
            view,
            local: &node_id,
            liveness: &liveness,
        });
        liveness.majority_for = self.majority_clock.observe(seen * 2 > members, now);
        liveness.confirmed = self.confirm.ages(Instant::now());
        let input = PlacementInput {
            view: View::new(&snap.state, &snap.specs),
            local: &node_id,
            liveness: &liveness,
        };
        let placements = placement::place_all(input);
        let plan = placement::decide_local(input, &placements);
        let retry = self.confirm.ask_for(&plan, &node_id, Instant::now());
        self.placement_recheck = match (plan.recheck_in.map(|d| Instant::now() + d), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.tell_decisions(input, &placements, &plan);
        let mut runs = BTreeSet::new();
        for (name, (role, _)) in &plan.roles {
            let (epoch, generation) = match role {
                LocalRole::Run { epoch, generation } => (*epoch, *generation),
                LocalRole::HandOver => match self.claims.get(name) {
                    Some(claim) => (claim.epoch, claim.generation),
                    None => continue,
                },
                LocalRole::Fenced => continue,
            };
            let Some(spec) = input.view.spec(name) else {
                continue;
            };
            let fresh = self.endpoints_now(input, spec);
            let claim = self.claims.entry(name.clone()).or_insert_with(|| Claim {
                epoch,
                generation,
                endpoints: fresh.clone(),
            });
            if spec.on_dependency_restart == DependencyRestart::Restart {
                // A dependency that moved restarts this copy with its new address.
                let moved: Vec<String> = claim
                    .endpoints
                    .iter()
                    .filter(|(k, v)| fresh.get(*k).is_some_and(|new| new != *v))
                    .map(|(k, v)| format!("{k} {v} -> {}", fresh[k]))
                    .collect();
                if !moved.is_empty() && self.core.status(name).is_some_and(|s| s.pid.is_some()) {
                    queue.push_back(SupervisorEvent::Restart {
                        service: name.clone(),
                        reason: format!("a dependency moved: {}", moved.join(", ")),
                    });
                }
                // A dependency with no ready copy for a while (between its node's death and
                // its new copy's first passed check) keeps its last address, so its return
                // elsewhere is seen as a move.
                claim.endpoints.extend(fresh);
            } else {
                // Ride-through: keep the addresses given at start, add ones that appeared.
                for (key, value) in fresh {
                    claim.endpoints.entry(key).or_insert(value);
                }
            }
            runs.insert(name.clone());
        }
        self.claims.retain(|name, _| runs.contains(name));
        self.plan = plan;
        runs
    }

    /// The members answered a [`Confirmation`]: returns whether placement should run again
    /// (it was confirmed). Otherwise the objections are told (when they change) and the
    /// question is asked again after [`CONFIRM_RETRY`].
    pub(super) fn on_confirmation(&mut self, outcome: ConfirmOutcome) -> bool {
        let service = outcome.service;
        self.confirm.asking.remove(&service);
        let now = Instant::now();
        if outcome.confirmed {
            self.confirm.confirmed.insert(service.clone(), now);
            self.confirm.told.remove(&service);
            return true;
        }
        let retry = now + CONFIRM_RETRY;
        self.confirm.retry_at.insert(service.clone(), retry);
        self.placement_recheck = Some(self.placement_recheck.map_or(retry, |r| r.min(retry)));
        let state = self.state.snapshot();
        let name = |n: &NodeId| state.state.node_name(n);
        let said: Vec<String> = outcome
            .objections
            .iter()
            .map(|(peer, objection)| match objection {
                Objection::SeesUp(up) => format!(
                    "{} sees {} up with a copy",
                    name(peer),
                    up.iter().map(name).collect::<Vec<_>>().join(", ")
                ),
                Objection::NoAnswer => format!("{} did not answer", name(peer)),
                Objection::Refused(why) => format!("{} could not answer ({why})", name(peer)),
            })
            .collect();
        let reason = format!(
            "{} owns {service}: fenced: no majority confirms that no other copy runs: {}",
            self.config.node_name,
            if said.is_empty() {
                "too few members answered".to_string()
            } else {
                said.join("; ")
            }
        );
        if self.confirm.told.get(&service) != Some(&reason) {
            self.confirm.told.insert(service.clone(), reason.clone());
            self.record(&service, "placement-fenced", reason);
        }
        false
    }

    /// Records placement decisions that changed since the last plan: a copy taken, handed
    /// over, fenced, or a service left unplaced.
    fn tell_decisions(
        &mut self,
        input: PlacementInput<'_>,
        placements: &BTreeMap<String, ServicePlacement>,
        plan: &LocalPlan,
    ) {
        let state = input.view.state;
        let me = self.config.node_name.clone();
        for (name, (role, why)) in &plan.roles {
            let before = self.plan.roles.get(name).map(|(r, _)| r);
            let new_kind = std::mem::discriminant(role);
            if before.map(std::mem::discriminant) == Some(new_kind) {
                continue;
            }
            let (kind, reason) = match role {
                LocalRole::Run { epoch, .. } => {
                    let cause = departed(input, name).unwrap_or_else(|| {
                        if placements[name].holders.is_empty() {
                            "no copy runs".to_string()
                        } else {
                            "a copy is wanted here".to_string()
                        }
                    });
                    (
                        "placement-take",
                        format!("{me} takes {name}: {cause}; {me} {why} (epoch {epoch})"),
                    )
                }
                LocalRole::HandOver => ("placement-handover", format!("{me} {why}")),
                LocalRole::Fenced => ("placement-fenced", format!("{me} owns {name}: {why}")),
            };
            self.record(name, kind, reason);
        }
        for (name, (role, _)) in &self.plan.roles.clone() {
            let still_runs = plan
                .roles
                .get(name)
                .is_some_and(|(r, _)| !matches!(r, LocalRole::Fenced));
            if still_runs || !matches!(role, LocalRole::Run { .. } | LocalRole::HandOver) {
                continue;
            }
            let reason = match placements.get(name) {
                None => format!("{me} stops {name}: removed"),
                Some(p) if p.exclusive && !plan.majority => {
                    let (seen, members) = placement::majority(input);
                    format!(
                        "{me} stops {name}: exclusive, and {me} sees only {seen} of {members} \
                         members alive (no majority)"
                    )
                }
                Some(p) => {
                    let owners: Vec<String> = p.owners.iter().map(|o| state.node_name(o)).collect();
                    if owners.is_empty() {
                        format!("{me} stops {name}: unplaced")
                    } else {
                        format!("{me} stops {name}: {} runs it", owners.join(", "))
                    }
                }
            };
            self.record(name, "placement-release", reason);
        }
        for (name, placed) in placements {
            let was = self.unplaced.get(name);
            match &placed.unplaced {
                Some(why) if was != Some(why) => {
                    self.record(
                        name,
                        "placement-unplaced",
                        format!("{name} unplaced: {why}"),
                    );
                    self.unplaced.insert(name.clone(), why.clone());
                }
                None if was.is_some() => {
                    self.unplaced.remove(name);
                }
                _ => {}
            }
        }
        self.unplaced
            .retain(|name, _| placements.contains_key(name));
    }
}

/// Why the copies of `service` on other nodes are gone: "n1 dead for 2.1 s", "n1 is leaving".
fn departed(input: PlacementInput<'_>, service: &str) -> Option<String> {
    let state = input.view.state;
    let gone: Vec<String> = state
        .instances
        .values()
        .filter(|i| i.service == service && i.node != *input.local)
        .filter_map(|i| {
            let record = state.nodes.get(i.node.as_str());
            let leaving = record.is_some_and(|r| r.left_at_ms.is_some());
            // A leaving node's copy may be stopping, or stopped already, when its leave
            // arrives (its stop is quick, and both changes can come in one sync).
            let ran = placement::occupies(i.state)
                || (leaving && i.state == crate::state::InstanceState::Stopped);
            if !ran {
                return None;
            }
            let liveness = input.liveness.of(input.local, &i.node, record);
            let who = state.node_name(&i.node);
            // A stopping agent records its leave before it stops its copies and before
            // membership tells the others: its copies move while it still runs.
            if leaving && liveness.is_up() {
                return Some(format!("{who} is leaving"));
            }
            if record.is_some_and(|r| r.drained == Some(true)) {
                return Some(format!("{who} is drained"));
            }
            match liveness {
                placement::Liveness::Dead { since } => {
                    Some(format!("{who} dead for {:.1} s", since.as_secs_f64()))
                }
                placement::Liveness::Left { since } => {
                    Some(format!("{who} left {:.1} s ago", since.as_secs_f64()))
                }
                _ => None,
            }
        })
        .collect();
    (!gone.is_empty()).then(|| gone.join(", "))
}
