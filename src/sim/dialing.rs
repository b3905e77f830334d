//! The agent's dial planner (`node::dial::DialPlanner`) in every simulated node: who it dials
//! and when. The simulator plays discovery (mDNS on one LAN: a starting node finds every node
//! it can reach and is found by them; a graceful stop says goodbye; a crash says nothing),
//! carries the dials (a dial to a node that is up and reachable links after the connect
//! delay; any other dial fails silently, as a QUIC handshake that times out), and tells the
//! planner what the node actor tells it: connections up and down, and membership's verdicts.

use std::time::Duration;

use libp2p::Multiaddr;

use super::{Ev, Simulation, code};
use crate::hardware::Profile;
use crate::membership::PeerState;
use crate::node::dial::{Dial, DialPlanner};

/// Planner inputs within this span are answered by one poll, as the node actor handles a burst
/// of events before its next turn of the loop.
const DIAL_BATCH: Duration = Duration::from_millis(1);

/// Node `i`'s listen address (one QUIC address on the LAN).
pub(super) fn addr_of(i: usize) -> Multiaddr {
    format!(
        "/ip4/10.{}.{}.{}/udp/7946/quic-v1",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
    .parse()
    .expect("a valid multiaddr")
}

impl Simulation {
    /// The profile's redial interval of node `i` (its hardware group's profile, else full).
    fn redial_max(&self, i: usize) -> Duration {
        self.scenario
            .hardware
            .of(i)
            .and_then(|k| k.hardware.profile.parse::<Profile>().ok())
            .unwrap_or(Profile::Full)
            .settings()
            .redial_interval
    }

    /// Node `i` starts: a fresh planner, and discovery both ways with every node it reaches.
    pub(super) fn start_dialing(&mut self, i: usize) {
        let planner = DialPlanner::new(self.nodes[i].peer, &[], self.redial_max(i), self.instant());
        self.nodes[i].dial = Some(planner);
        self.nodes[i].dial_wake = None;
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| p != i && self.up(p) && self.same_side(i, p))
            .collect();
        for p in others {
            // Its query answered, and its announcement heard.
            let d = self.connect_delay();
            self.schedule(self.now + d, Ev::Discovered { node: i, found: p });
            let d = self.connect_delay();
            self.schedule(self.now + d, Ev::Discovered { node: p, found: i });
        }
    }

    /// Node `n` stops gracefully: its mDNS goodbye reaches the nodes it can reach.
    pub(super) fn say_goodbye(&mut self, n: usize) {
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| p != n && self.up(p) && self.same_side(n, p))
            .collect();
        for p in others {
            let d = self.latency(n, p);
            self.schedule(self.now + d, Ev::Goodbye { node: p, gone: n });
        }
    }

    pub(super) fn on_discovered(&mut self, node: usize, found: usize) {
        if !self.up(node) || !self.up(found) || !self.same_side(node, found) {
            return;
        }
        let (now, peer) = (self.instant(), self.nodes[found].peer);
        if let Some(d) = self.nodes[node].dial.as_mut() {
            d.on_discovered(peer, vec![addr_of(found)], now);
        }
        self.dial_soon(node);
    }

    pub(super) fn on_goodbye(&mut self, node: usize, gone: usize) {
        let (now, peer) = (self.instant(), self.nodes[gone].peer);
        if let Some(d) = self.nodes[node].dial.as_mut() {
            d.on_discovery_lost(&peer, now);
        }
    }

    /// A link between `a` and `b` came up; `a` dialed it.
    pub(super) fn dial_connected(&mut self, a: usize, b: usize) {
        let now = self.instant();
        for (x, y, dialed) in [(a, b, true), (b, a, false)] {
            let (peer, addr) = (self.nodes[y].peer, addr_of(y));
            if let Some(d) = self.nodes[x].dial.as_mut() {
                d.on_connected(peer, dialed.then_some(&addr), now);
                // Admission tells each side the other's listen addresses.
                d.on_listen_addrs(peer, vec![addr], now);
            }
        }
    }

    /// `a`'s link to `b` closed.
    pub(super) fn dial_disconnected(&mut self, a: usize, b: usize) {
        let (now, peer) = (self.instant(), self.nodes[b].peer);
        // The node actor hands the planner every member's state after each membership change,
        // so a verdict that came while the link still lingered (a crash is declared dead before
        // QUIC's idle timeout closes the link) takes effect once the link is gone.
        let verdict = match self.nodes[a].view[b] {
            c if c == code(PeerState::Dead) => Some(PeerState::Dead),
            c if c == code(PeerState::Left) => Some(PeerState::Left),
            _ => None,
        };
        if let Some(d) = self.nodes[a].dial.as_mut() {
            d.on_disconnected(&peer, now);
            if let Some(state) = verdict {
                d.on_membership(&peer, state, now);
            }
        }
        self.dial_soon(a);
    }

    /// Membership's verdict on `x`, as node `i` saw it change from `before` (a view code).
    pub(super) fn dial_verdict(&mut self, i: usize, x: usize, state: PeerState, was_down: bool) {
        let (now, peer) = (self.instant(), self.nodes[x].peer);
        if let Some(d) = self.nodes[i].dial.as_mut() {
            d.on_membership(&peer, state, now);
        }
        // Only a verdict that changes a standing can change what is due.
        if matches!(state, PeerState::Dead | PeerState::Left) || was_down {
            self.dial_soon(i);
        }
    }

    /// Polls node `i`'s planner shortly.
    fn dial_soon(&mut self, i: usize) {
        self.dial_wake_at(i, self.now + DIAL_BATCH);
    }

    fn dial_wake_at(&mut self, i: usize, at: Duration) {
        let n = &mut self.nodes[i];
        if n.dial.is_none() || n.dial_wake.is_some_and(|w| w <= at) {
            return;
        }
        n.dial_wake = Some(at);
        self.schedule(at, Ev::DialWake { node: i });
    }

    /// The planner's turn: start the dials due, sleep until the next.
    pub(super) fn dial_wake(&mut self, i: usize) {
        if self.nodes[i].dial_wake != Some(self.now) || !self.up(i) {
            return;
        }
        self.nodes[i].dial_wake = None;
        let now = self.instant();
        let Some(planner) = self.nodes[i].dial.as_mut() else {
            return;
        };
        let dials = planner.poll(now, |_| false);
        let next = planner.next_deadline();
        for dial in dials {
            let Dial::Peer { peer, .. } = dial else {
                continue;
            };
            let Some(&b) = self.index.get(&peer) else {
                continue;
            };
            self.report.traffic.dials += 1;
            if self.up(b) && self.same_side(i, b) {
                let d = self.connect_delay();
                self.schedule(self.now + d, Ev::Connect { a: i, b });
            }
        }
        if let Some(next) = next {
            let at = next
                .saturating_duration_since(self.base)
                .max(self.now + DIAL_BATCH);
            self.dial_wake_at(i, at);
        }
    }
}
