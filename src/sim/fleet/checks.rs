//! What the simulator samples and judges of the fleet's services: ready copies against what
//! the scenario allows (requirements, pins, drains), and the invariants checked once a heal
//! has settled.

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::ChangeHash;

use super::Fleet;
use crate::sim::stack::Stack;

impl Fleet {
    /// Samples copies (ready, wanted) for the timeline.
    pub fn sample(&mut self, now: Duration) {
        let ready: usize = self
            .procs
            .values()
            .map(|m| m.values().filter(|p| p.healthy).count())
            .sum();
        let wanted: u32 = self.replicas.keys().map(|s| self.wanted(s)).sum();
        self.figures
            .copies
            .push((now.as_secs_f64(), ready as u64, u64::from(wanted)));
    }

    /// Ready copies on each up node.
    pub fn ready_per_node(&self) -> BTreeMap<usize, u64> {
        let mut per = BTreeMap::new();
        for m in self.procs.values() {
            for (n, p) in m {
                if p.healthy && self.up(*n) {
                    *per.entry(*n).or_insert(0) += 1;
                }
            }
        }
        per
    }

    /// Why up node `i` may not run a copy of `service` (ground truth: its own record, as it
    /// wrote it), or `None` when it may. Drained nodes are judged once settled, not here: a
    /// copy may be starting when the drain is written.
    pub(super) fn unfit(&self, i: usize, service: &str) -> Option<String> {
        if let Some(&home) = self.pinned.get(service)
            && home != i
        {
            return Some(format!("pinned to node {home}"));
        }
        let require = self.require.get(service)?;
        let s = self.nodes[i].as_ref()?;
        let record = s.state.nodes.get(s.id.as_str())?;
        crate::placement::unmet(require, record).map(str::to_string)
    }

    /// Ready copies `service` should have now: `replicas`, or fewer when fewer up nodes may
    /// run it (not drained, meeting its requirements, its pinned node).
    fn wanted(&self, service: &str) -> u32 {
        let replicas = self.replicas.get(service).copied().unwrap_or(0);
        let fit = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].as_ref().is_some_and(|s| {
                    let record = s.state.nodes.get(s.id.as_str());
                    let drained = record.is_some_and(|r| r.drained == Some(true));
                    !drained && self.unfit(i, service).is_none()
                })
            })
            .count();
        replicas.min(fit as u32)
    }

    /// Samples the saved document size of a few nodes (bytes, mean).
    pub fn sample_doc(&mut self, now: Duration) {
        let n = self.nodes.len();
        let picks = [0, n / 2, n.saturating_sub(1)];
        let sizes: Vec<usize> = picks
            .iter()
            .filter_map(|&k| self.nodes.get_mut(k)?.as_mut().map(Stack::saved_bytes))
            .collect();
        if !sizes.is_empty() {
            let mean = sizes.iter().sum::<usize>() as u64 / sizes.len() as u64;
            self.figures.doc_bytes.push((now.as_secs_f64(), mean));
        }
    }

    /// After a heal has settled: documents converged, every acknowledged write everywhere,
    /// exactly `replicas` ready copies of each service.
    pub fn check_settled(&mut self, what: &str) {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.up(i)).collect();
        let mut heads: BTreeMap<Vec<ChangeHash>, Vec<usize>> = BTreeMap::new();
        for &i in &up {
            let s = self.nodes[i].as_mut().expect("up");
            let mut h = s.doc.get_heads();
            h.sort();
            heads.entry(h).or_default().push(i);
        }
        if heads.len() > 1 {
            let groups: Vec<String> = heads
                .values()
                .map(|v| format!("{} node(s) from node {}", v.len(), v[0]))
                .collect();
            self.violations.push((
                "converged documents",
                format!(
                    "{what}: the up nodes hold {} different documents: {}",
                    heads.len(),
                    groups.join(", ")
                ),
            ));
        }
        let mut missing = 0;
        let mut example = None;
        for (hash, writer, at) in &self.acked {
            // A write whose node went down before it reached anyone waits on that node.
            if !self.up(*writer) {
                continue;
            }
            for &i in &up {
                let s = self.nodes[i].as_mut().expect("up");
                if s.doc.get_change_by_hash(hash).is_none() {
                    missing += 1;
                    example.get_or_insert((*writer, i, *at));
                }
            }
        }
        if let Some((w, i, at)) = example {
            self.violations.push((
                "every acknowledged write on every connected node",
                format!("{what}: {missing} (write, node) pairs missing; e.g. node {i} lacks node {w}'s write of {:.1} s", at.as_secs_f64()),
            ));
        }
        // A drained node hands its copies over: none left once settled.
        for &i in &up {
            let s = self.nodes[i].as_ref().expect("up");
            let drained = s
                .state
                .nodes
                .get(s.id.as_str())
                .is_some_and(|r| r.drained == Some(true));
            let held: Vec<&String> = self
                .procs
                .iter()
                .filter(|(_, m)| m.contains_key(&i))
                .map(|(service, _)| service)
                .collect();
            if drained && !held.is_empty() {
                self.violations.push((
                    "a drained node runs nothing",
                    format!("{what}: node {i} is drained and still runs {held:?}"),
                ));
            }
        }
        for service in self.replicas.keys().cloned().collect::<Vec<_>>() {
            let ready = self.procs.get(&service).map_or(0, |m| {
                m.iter().filter(|(n, p)| p.healthy && self.up(**n)).count()
            });
            let wanted = self.wanted(&service) as usize;
            if ready != wanted {
                self.violations.push((
                    "exactly replicas copies after a heal",
                    format!("{what}: {service} has {ready} ready copies, wants {wanted}"),
                ));
            }
        }
    }
}
