//! Which services this node runs: the placement core ([`crate::placement`]) applied to the
//! current document and membership view, its decisions told in the audit trail, the claims
//! (fencing token, generation) remembered for the instance records, and the environment the
//! agent adds to each copy (`MESH_EPOCH`, `MESH_ENDPOINT_<DEP>`).

use super::*;
use crate::placement::{self, LocalPlan, LocalRole, PlacementInput, ServicePlacement};
use crate::supervisor::spec::DependencyRestart;

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
    /// Runs placement on `snap` and the current membership view; returns the services this
    /// node runs, remembers their claims (and when to look again), and queues a restart of
    /// copies whose dependency moved when they ask for it (`on_dependency_restart = restart`).
    pub(super) fn place_here(
        &mut self,
        snap: &StateSnapshot,
        queue: &mut VecDeque<SupervisorEvent>,
    ) -> BTreeSet<String> {
        // The node stamps membership changes with tokio's clock: read the same one (they differ
        // in paused time, where the fence would otherwise never end).
        let now = Instant::now().into_std();
        let mut liveness = self.membership.borrow().at(now);
        let node_id = NodeId::from(&self.config.node_id);
        let view = View::new(&snap.state, &snap.specs);
        let (seen, members) = placement::majority(PlacementInput {
            view,
            local: &node_id,
            liveness: &liveness,
        });
        liveness.majority_for = self.majority_clock.observe(seen * 2 > members, now);
        let input = PlacementInput {
            view: View::new(&snap.state, &snap.specs),
            local: &node_id,
            liveness: &liveness,
        };
        let placements = placement::place_all(input);
        let plan = placement::decide_local(input, &placements);
        self.placement_recheck = plan.recheck_in.map(|d| Instant::now() + d);
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
            let fresh = placement::dependency_endpoints(input, spec);
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
                claim.endpoints = fresh;
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
