//! The end of a run and the membership invariants judged over whole views: every up node
//! sees every other alive after a heal (`check`), and the report's figures and the invariants
//! left to judge when the run ends (`finish`).

use std::time::Duration;

use super::{DETECTION_WINDOW, Ev, HEAL_PROBE, HEAL_SETTLE, PeerState, SimNode, Simulation, code};

impl Simulation {
    /// Pairs of up nodes where one does not see the other alive, and one of them.
    fn not_alive(&self) -> (usize, Option<(usize, usize, u8)>) {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.up(n)).collect();
        let mut wrong = 0usize;
        let mut example = None;
        for &a in &up {
            for &b in &up {
                if a != b && self.nodes[a].view[b] != code(PeerState::Alive) {
                    wrong += 1;
                    example.get_or_insert((a, b, self.nodes[a].view[b]));
                }
            }
        }
        (wrong, example)
    }

    /// After a heal, every `HEAL_PROBE`: once every up node sees every other alive, the
    /// heal's time is recorded. Past `HEAL_SETTLE` the `converged after heal` check reports it.
    pub(super) fn heal_probe(&mut self) {
        let Some(at) = self.healed_at else {
            return;
        };
        if self.partitioned {
            self.healed_at = None;
            return;
        }
        if self.not_alive().0 == 0 {
            let took = (self.now - at).as_secs_f64() * 1000.0;
            self.report.membership.heal_ms.push(took);
            self.healed_at = None;
        } else if self.now - at < HEAL_SETTLE {
            self.schedule(self.now + HEAL_PROBE, Ev::HealProbe);
        } else {
            self.healed_at = None;
        }
    }

    pub(super) fn check(&mut self, what: &'static str) {
        if self.partitioned {
            return;
        }
        let (wrong, example) = self.not_alive();
        if let Some((a, b, c)) = example {
            self.violation(
                what,
                format!("{wrong} pairs of up nodes do not see each other alive, e.g. node {a} sees node {b} as code {c}"),
            );
        }
    }

    pub(super) fn finish(&mut self) {
        let end = self.now;
        let mut undetected = 0;
        let mut example = None;
        for o in &self.outages {
            // Too recent to judge, or back already (a new incarnation replaces the verdict).
            if end.saturating_sub(o.at) < DETECTION_WINDOW || self.nodes[o.node].bump > o.bump {
                continue;
            }
            // Observers that went down themselves are excused.
            let missed: Vec<usize> = o
                .waiting
                .iter()
                .copied()
                .filter(|&w| self.nodes[w].membership.is_some())
                .collect();
            if !missed.is_empty() {
                undetected += missed.len();
                example.get_or_insert((o.node, missed[0], o.at));
            }
        }
        self.report.membership.undetected = undetected;
        if let Some((n, w, at)) = example {
            self.violation(
                "every crash detected",
                format!(
                    "{undetected} observers never saw an outage; e.g. node {w} still does not see node {n} (down at {:.1} s) dead",
                    at.as_secs_f64()
                ),
            );
        }
        let up: Vec<&SimNode> = self
            .nodes
            .iter()
            .filter(|n| n.membership.is_some())
            .collect();
        let secs = self.scenario.duration.as_secs_f64().max(1e-9);
        let nodes = self.nodes.len().max(1) as f64;
        let t = &mut self.report.traffic;
        t.messages = self.nodes.iter().map(|n| n.msgs_out).sum();
        t.bytes = self.nodes.iter().map(|n| n.bytes_out).sum();
        t.messages_per_node_per_s = t.messages as f64 / nodes / secs;
        t.bytes_per_node_per_s = t.bytes as f64 / nodes / secs;
        t.links_per_node = up
            .iter()
            .map(|n| n.links.iter().filter(|l| **l).count())
            .sum::<usize>() as f64
            / up.len().max(1) as f64;
        t.dropped_counted = self
            .nodes
            .iter()
            .filter_map(|n| n.membership.as_ref())
            .map(|m| m.stats().datagrams_dropped)
            .sum();
        self.report.nodes_total = self.nodes.len();
        self.report.nodes_up_at_end = up.len();
        self.report.outages = self.outages.len();
        if let Some(mut fleet) = self.fleet.take() {
            let quiet_since = self
                .scenario
                .timeline
                .last()
                .map_or(Duration::ZERO, |t| t.at);
            if self.scenario.churn.is_none()
                && !self.partitioned
                && quiet_since + HEAL_SETTLE <= end
            {
                fleet.check_settled("end of run");
            }
            for (invariant, detail) in std::mem::take(&mut fleet.violations) {
                self.violation(invariant, detail);
            }
            let per_node = fleet.ready_per_node();
            let mut f = fleet.figures;
            for g in &self.report.hardware {
                let copies = per_node.range(g.nodes.0..=g.nodes.1).map(|(_, c)| c).sum();
                f.copies_by_group.insert(g.group.clone(), copies);
            }
            f.services = fleet.replicas.len();
            f.copies_wanted = fleet.replicas.values().map(|r| u64::from(*r)).sum();
            f.sync_messages_per_node_per_s = f.sync_messages as f64 / nodes / secs;
            f.sync_bytes_per_node_per_s = f.sync_bytes as f64 / nodes / secs;
            self.report.services = Some(f);
        }
        self.report.finish();
    }
}
