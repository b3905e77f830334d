//! The timeline of a simulation: what the scenario's events (crash, stop, restart,
//! partition, heal, add) and its random churn do to the simulated nodes.

use std::time::Duration;

use rand::RngExt;

use super::scenario::{Action, Pick};
use super::{Ev, HEAL_PROBE, HEAL_SETTLE, IDLE_TIMEOUT, Outage, Simulation};

impl Simulation {
    pub(super) fn pick(&mut self, pick: &Pick, want_up: bool) -> Vec<usize> {
        match pick {
            Pick::Nodes(list) => list
                .iter()
                .copied()
                .filter(|&n| n < self.nodes.len() && self.up(n) == want_up)
                .collect(),
            Pick::Random(count) => {
                let mut candidates: Vec<usize> = (0..self.nodes.len())
                    .filter(|&n| self.up(n) == want_up)
                    .collect();
                let mut chosen = Vec::new();
                while chosen.len() < *count && !candidates.is_empty() {
                    let k = self.rng.random_range(0..candidates.len());
                    chosen.push(candidates.swap_remove(k));
                }
                chosen.sort_unstable();
                chosen
            }
        }
    }

    pub(super) fn act(&mut self, action: Action) {
        self.report
            .timeline
            .push(format!("{:.3}s {action:?}", self.now.as_secs_f64()));
        match action {
            Action::Crash(p) => {
                for n in self.pick(&p, true) {
                    self.take_down(n, false);
                }
            }
            Action::Stop(p) => {
                for n in self.pick(&p, true) {
                    self.take_down(n, true);
                }
            }
            Action::Restart(p) => {
                for n in self.pick(&p, false) {
                    self.start(n);
                }
            }
            Action::Add(count) => {
                let capacity = self.nodes[0].links.len();
                for _ in 0..count {
                    if self.nodes.len() >= capacity {
                        break;
                    }
                    let n = self.add_node(capacity);
                    self.start(n);
                }
            }
            Action::Partition { fraction } => {
                let up: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.up(n)).collect();
                let cut = ((up.len() as f64) * fraction).round() as usize;
                for (k, n) in up.iter().enumerate() {
                    self.nodes[*n].side = u32::from(k >= cut);
                }
                self.partitioned = true;
                // Links across the cut go silent and close after the idle timeout.
                for a in 0..self.nodes.len() {
                    for b in 0..self.nodes.len() {
                        if a != b && self.nodes[a].links[b] && !self.same_side(a, b) {
                            self.schedule(self.now + IDLE_TIMEOUT, Ev::Disconnect { a, b });
                        }
                    }
                }
            }
            Action::Drain(ref p) | Action::Undrain(ref p) | Action::Tag(ref p) => {
                let nodes = self.pick(p, true);
                let Some(mut fleet) = self.fleet.take() else {
                    return;
                };
                let mut outs = Vec::new();
                for n in nodes {
                    let links = self.links_of(n);
                    let stamp = self.now.as_millis().to_string();
                    let edit = |r: &mut crate::state::NodeRecord| match &action {
                        Action::Drain(_) => r.drained = Some(true),
                        Action::Undrain(_) => r.drained = None,
                        _ => {
                            r.tags.insert("sim".to_string(), stamp);
                        }
                    };
                    outs.extend(fleet.edit_node(n, edit, &links, self.now));
                }
                self.fleet = Some(fleet);
                self.apply(outs);
            }
            Action::Heal => {
                if !self.partitioned {
                    return;
                }
                self.partitioned = false;
                self.healed_at = Some(self.now);
                self.schedule(self.now + HEAL_PROBE, Ev::HealProbe);
                let now = self.now;
                for n in &mut self.nodes {
                    n.side = 0;
                    n.cut_until = Some(now);
                }
                // Nothing reconnects here: every node's dial planner redials the peers it lost
                // at its own pace, and a first link across lets the gossip bring the rest.
                self.schedule(
                    self.now + HEAL_SETTLE,
                    Ev::Check {
                        what: "converged after heal",
                    },
                );
                if self.fleet.is_some() {
                    self.schedule(
                        self.now + HEAL_SETTLE,
                        Ev::Settled {
                            what: "settled after heal",
                        },
                    );
                }
            }
        }
    }

    /// Node `n` goes: silently (crash) or with leave notices (graceful stop).
    pub(super) fn take_down(&mut self, n: usize, graceful: bool) {
        let now = self.instant();
        let bump = self.current_bump(n);
        self.nodes[n].bump = bump;
        let linked: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| p != n && self.nodes[n].links[p] && self.up(p))
            .collect();
        if graceful {
            self.say_goodbye(n);
            if let Some(m) = self.nodes[n].membership.as_mut() {
                m.leave(now);
            }
            self.after_input(n);
            for &p in &linked {
                let d = self.latency(n, p);
                self.schedule(
                    self.now + d,
                    Ev::LeaveNotice {
                        from: n,
                        to: p,
                        leaver: n,
                        bump,
                    },
                );
            }
        }
        if let Some(fleet) = self.fleet.as_mut() {
            let peers: Vec<(usize, libp2p::PeerId)> =
                linked.iter().map(|&p| (p, self.nodes[p].peer)).collect();
            let outs = fleet.stop(n, graceful, &peers, self.now);
            self.apply(outs);
        }
        self.nodes[n].membership = None;
        self.nodes[n].wake = None;
        self.nodes[n].dial = None;
        self.nodes[n].dial_wake = None;
        self.outage_of.insert((n, bump), self.outages.len());
        self.outages.push(Outage {
            node: n,
            bump,
            at: self.now,
            graceful,
            waiting: linked.clone(),
        });
        for p in linked {
            // A graceful stop closes its connections at once; a crash's time out.
            let after = if graceful {
                self.latency(n, p) * 2
            } else {
                IDLE_TIMEOUT
            };
            self.schedule(self.now + after, Ev::Disconnect { a: p, b: n });
        }
    }

    pub(super) fn churn_tick(&mut self) {
        let Some(churn) = self.scenario.churn.clone() else {
            return;
        };
        // Every 10 s, a share of the per-minute rate, rounded at random.
        let expected = churn.per_minute * self.nodes.len() as f64 / 6.0;
        let mut count = expected.floor() as usize;
        if self.rng.random_bool(expected.fract().clamp(0.0, 1.0)) {
            count += 1;
        }
        let down = self.pick(&Pick::Random(count), true);
        for n in down {
            self.take_down(n, false);
            self.report.churn_restarts += 1;
            self.schedule(self.now + churn.downtime, Ev::Start { node: n });
        }
        self.schedule(self.now + Duration::from_secs(10), Ev::ChurnTick);
    }
}
