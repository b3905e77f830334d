//! The full stack's events in a simulation: sync messages, process events, placement runs,
//! `Holders` questions and answers, anti-entropy, services added, samples and settled checks,
//! handed to the [`super::fleet::Fleet`]; and the fleet's outputs scheduled as events over the
//! simulated network.

use std::time::Instant;

use libp2p::PeerId;

use super::fleet::Out;
use super::{ANTI_ENTROPY, Ev, SAMPLE_EVERY, Simulation, scenario};
use crate::supervisor::SupervisorEvent;

impl Simulation {
    /// The events of the full stack.
    pub(super) fn handle_stack(&mut self, ev: Ev) {
        let now = self.now;
        let Some(mut fleet) = self.fleet.take() else {
            return;
        };
        let outs = match ev {
            Ev::Arrive(Out::Sync {
                from,
                to,
                data,
                answer,
                everyone,
            }) => {
                if !self.reaches(from, to) {
                    Vec::new()
                } else {
                    let links = self.links_of(to);
                    let peer = self.nodes[from].peer;
                    let hop = super::fleet::Hop {
                        from,
                        to,
                        answer,
                        everyone,
                    };
                    fleet.on_sync(hop, peer, &data, &links, now)
                }
            }
            Ev::Arrive(Out::Delivered { from, to }) => {
                if self.reaches(from, to) {
                    let peer = self.nodes[from].peer;
                    fleet.on_delivered(from, to, peer, now)
                } else {
                    Vec::new()
                }
            }
            Ev::Launch {
                node,
                incarnation,
                event,
            } => {
                let links = self.links_of(node);
                fleet.on_launch(node, incarnation, event, &links, now)
            }
            Ev::SupervisorWake { node } => {
                let links = self.links_of(node);
                let incarnation = fleet.incarnation(node);
                fleet.on_launch(node, incarnation, SupervisorEvent::TimerFired, &links, now)
            }
            Ev::ActOn { node } => {
                let links = self.links_of(node);
                fleet.act(node, &self.node_ids, &links, now)
            }
            Ev::Arrive(Out::Ask {
                from,
                to,
                service,
                about,
                qid,
            }) => {
                if self.reaches(from, to) {
                    fleet.on_ask(from, to, service, &about, qid, now)
                } else {
                    Vec::new()
                }
            }
            Ev::Arrive(Out::Answer {
                from,
                to,
                service,
                qid,
                objects,
            }) => {
                if self.reaches(from, to) {
                    fleet.on_answer(to, &service, qid, Some(objects), now)
                } else {
                    Vec::new()
                }
            }
            Ev::AskTimeout { node, service, qid } => {
                fleet.on_answer(node, &service, qid, None, now)
            }
            Ev::AntiEntropy { node, bump } => {
                if self.up(node) && self.nodes[node].bump == bump {
                    self.schedule(now + ANTI_ENTROPY, Ev::AntiEntropy { node, bump });
                    let links = self.links_of(node);
                    fleet.anti_entropy(node, &links, now)
                } else {
                    Vec::new()
                }
            }
            Ev::AddServices(g) => {
                let group = self.scenario.services[g].clone();
                let up: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.up(n)).collect();
                let mut by_node: std::collections::BTreeMap<usize, Vec<_>> = Default::default();
                for (k, name) in group.names.iter().enumerate() {
                    if up.is_empty() {
                        break;
                    }
                    let node = up[(g * 7 + k) % up.len()];
                    by_node
                        .entry(node)
                        .or_default()
                        .push(sim_spec(name, &group));
                }
                for name in &group.names {
                    fleet.expect_requirements(name, &group.require);
                }
                let mut outs = Vec::new();
                for (node, mut specs) in by_node {
                    if self.scenario.ignore_requirements {
                        for spec in &mut specs {
                            spec.placement.require = Default::default();
                        }
                    }
                    let links = self.links_of(node);
                    outs.extend(fleet.add_services(node, specs, &links, now));
                }
                self.report.timeline.push(format!(
                    "{:.3}s add {} service(s)",
                    now.as_secs_f64(),
                    group.names.len()
                ));
                outs
            }
            Ev::Sample => {
                fleet.sample(now);
                if self.samples.is_multiple_of(6) {
                    fleet.sample_doc(now);
                }
                self.samples += 1;
                self.schedule(now + SAMPLE_EVERY, Ev::Sample);
                Vec::new()
            }
            Ev::Settled { what } => {
                if !self.partitioned {
                    fleet.check_settled(what);
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        self.fleet = Some(fleet);
        self.apply(outs);
    }

    /// Node `i`'s links, by peer id (where its sync messages can go).
    pub(super) fn links_of(&self, i: usize) -> std::collections::BTreeMap<PeerId, usize> {
        self.nodes[i]
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| **l)
            .map(|(p, _)| (self.nodes[p].peer, p))
            .collect()
    }

    /// Delivers `ev` (`bytes` long) from `from` to `to` through the sender's uplink and the
    /// network's latency.
    fn send(&mut self, from: usize, to: usize, bytes: usize, ev: Ev) {
        let d = self.transmit(from, to, bytes);
        self.schedule(self.now + d, ev);
    }

    /// Turns the fleet's outputs into events (over the network where they travel), and its
    /// violations into reported ones.
    pub(super) fn apply(&mut self, outs: Vec<Out>) {
        let base = self.base;
        let at = |i: Instant| i.saturating_duration_since(base);
        for out in outs {
            match out {
                Out::Sync {
                    from, to, ref data, ..
                } => {
                    let bytes = data.len();
                    self.send(from, to, bytes, Ev::Arrive(out));
                }
                Out::Delivered { from, to } => {
                    self.send(from, to, super::fleet::DELIVERED_BYTES, Ev::Arrive(out));
                }
                Out::Ask { from, to, .. } | Out::Answer { from, to, .. } => {
                    self.send(from, to, SMALL_MESSAGE, Ev::Arrive(out));
                }
                Out::Launch {
                    node,
                    incarnation,
                    after,
                    event,
                } => self.schedule(
                    self.now + after,
                    Ev::Launch {
                        node,
                        incarnation,
                        event,
                    },
                ),
                Out::Act { node, at: when } => {
                    self.schedule(at(when).max(self.now), Ev::ActOn { node })
                }
                Out::SupervisorWake { node, at: when } => {
                    self.schedule(at(when).max(self.now), Ev::SupervisorWake { node })
                }
                Out::AskTimeout {
                    node,
                    service,
                    qid,
                    at: when,
                } => self.schedule(at(when), Ev::AskTimeout { node, service, qid }),
            }
        }
        let found: Vec<(&'static str, String)> = self
            .fleet
            .as_mut()
            .map(|f| std::mem::take(&mut f.violations))
            .unwrap_or_default();
        for (invariant, detail) in found {
            self.violation(invariant, detail);
        }
    }
}

/// The size on the wire of a placement question or answer (a service name and a few node
/// ids), for the uplink model.
const SMALL_MESSAGE: usize = 200;

/// The spec of a simulated service, as an operator would write it: a long-running program
/// with an exec health check every 5 s and a stop grace of 1 s (as the lab's failover runs).
fn sim_spec(name: &str, group: &scenario::Services) -> crate::supervisor::ServiceSpec {
    let text = format!(
        "[[service]]\nname = \"{name}\"\ncommand = \"/usr/bin/sim-service\"\nreplicas = {}\nexclusive = {}\nstop_grace = \"1s\"\n\
         [service.health]\ncheck = \"exec\"\ncommand = [\"true\"]\ninterval = \"5s\"\n",
        group.replicas, group.exclusive
    );
    let mut spec = crate::supervisor::parse_service_file(&text)
        .expect("the simulated spec is valid")
        .remove(0);
    // Checked with the rest of the placement section when the scenario was read.
    spec.placement.pinned = group.pinned;
    spec.placement.sticky = group.sticky;
    spec.placement.require = group.require.clone();
    spec
}
