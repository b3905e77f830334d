//! Rendezvous client: when to register this node at each rendezvous point and when to ask it
//! for the other members (spec: `protocol/rendezvous.md`). Sans-IO: it takes `now` and what
//! happened on the wire, and returns [`RendezvousAction`]s; the node actor drives libp2p's
//! rendezvous client behaviour with them and dials what discovery returns.
//!
//! Inputs: a point's connection up or down, a point admitted as a mesh member (a members-only
//! point serves us only then), registration and discovery results. Outputs: `Register` and
//! `Discover` actions, and [`PointStatus`] rows for `mesh status`.
//!
//! The rules:
//! - On every connection to a point (first start, and after the point restarted and lost its
//!   registrations), register and discover as soon as the admission handshake with it ends
//!   either way: admitted (a point run by a member, which serves members only by default) or
//!   not a member (any other point). At most [`ADMISSION_WAIT`] after connecting in any case.
//! - A registration is renewed when half the TTL the point granted has passed: libp2p's stock
//!   client renews only when our external addresses change, and a registration would lapse.
//! - Discovery repeats every [`DISCOVER_PERIOD`] with the paging cookie of the last answer, so
//!   a point returns only registrations it has not sent us yet.
//! - A failed request is retried after [`RETRY_MIN`], doubling to [`RETRY_MAX`]; a point that
//!   becomes a mesh member (admitted) is asked again at once: a members-only point refuses a
//!   node until its admission handshake ends, and the first attempt may race it.
//! - Nothing is sent to a point that is not connected; the node dials points like `--peer`
//!   addresses.
//!
//! What it does not do: decide who is a member (admission does; a point is not trusted, a
//! lying one only wastes dials), or dial (the dial planner does).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;

use crate::admission::MeshId;

/// How often discovery repeats at each point. A newcomer discovers at once on connecting and
/// dials every member it finds, so this only bounds how late members learn of a newcomer that
/// could not dial them (behind NAT) and how long a point's restart stays unnoticed by members
/// not linked to anyone.
pub const DISCOVER_PERIOD: Duration = Duration::from_secs(30);
/// Longest wait, after connecting to a point, for the admission handshake to end before
/// registering anyway: the handshake's own deadline (`admission::AUTH_TIMEOUT`).
pub const ADMISSION_WAIT: Duration = crate::admission::AUTH_TIMEOUT;
/// First wait before retrying a failed registration or discovery; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between retries at a point that keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// The TTL requested, in seconds: the spec's default and the stock server's minimum (2 h).
/// Renewed at half of what the point grants, so a registration never lapses while we run; a
/// node that dies stays listed until it lapses, which costs newcomers one failed dial.
pub const REQUESTED_TTL_S: u64 = 2 * 60 * 60;
/// Most registrations taken from one answer: a point (untrusted) cannot make us dial more.
pub const MAX_REGISTRATIONS_PER_ANSWER: usize = 1000;
/// Registrations asked for per discovery request (the spec's `limit`).
pub const DISCOVER_LIMIT: u64 = 200;

/// The rendezvous namespace of a mesh: `mesh/` and the mesh id (the public id derived from
/// the key, as mDNS advertises it), never the key.
pub fn namespace(mesh: &MeshId) -> String {
    format!("mesh/{mesh}")
}

/// What the node actor is to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RendezvousAction {
    /// Register this node's addresses under the mesh namespace at `point`.
    Register(PeerId),
    /// Ask `point` for registrations under the mesh namespace, after `cookie` if any.
    Discover {
        point: PeerId,
        cookie: Option<Vec<u8>>,
    },
}

/// One point as `mesh status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PointStatus {
    pub peer: String,
    pub connected: bool,
    /// Seconds left of our registration there, when registered.
    pub registered_for_s: Option<u64>,
    /// Registrations discovered there in all.
    pub discovered: u64,
    /// The last failure, until a success.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Point {
    connected: bool,
    registered_until: Option<Instant>,
    next_register: Option<Instant>,
    register_failures: u32,
    register_in_flight: bool,
    next_discover: Option<Instant>,
    discover_failures: u32,
    discover_in_flight: bool,
    cookie: Option<Vec<u8>>,
    discovered: u64,
    last_error: Option<String>,
}

impl Point {
    fn new() -> Self {
        Self {
            connected: false,
            registered_until: None,
            next_register: None,
            register_failures: 0,
            register_in_flight: false,
            next_discover: None,
            discover_failures: 0,
            discover_in_flight: false,
            cookie: None,
            discovered: 0,
            last_error: None,
        }
    }
}

fn retry_after(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1u32 << failures.min(8))
        .min(RETRY_MAX)
}

/// The rendezvous client's decisions (see the module doc).
#[derive(Debug)]
pub struct RendezvousClient {
    points: HashMap<PeerId, Point>,
}

impl RendezvousClient {
    /// A client of `points` (the `/p2p/` ids of `--rendezvous` addresses).
    pub fn new(points: impl IntoIterator<Item = PeerId>) -> Self {
        Self {
            points: points.into_iter().map(|p| (p, Point::new())).collect(),
        }
    }

    pub fn is_point(&self, peer: &PeerId) -> bool {
        self.points.contains_key(peer)
    }

    /// A connection to `point` is up: register and discover once its admission ends (at
    /// most [`ADMISSION_WAIT`] from now). A point that restarted has forgotten us, so the
    /// cookie goes too.
    pub fn on_connected(&mut self, point: &PeerId, now: Instant) {
        if let Some(p) = self.points.get_mut(point)
            && !p.connected
        {
            p.connected = true;
            p.registered_until = None;
            p.cookie = None;
            p.register_in_flight = false;
            p.discover_in_flight = false;
            p.next_register = Some(now + ADMISSION_WAIT);
            p.next_discover = Some(now + ADMISSION_WAIT);
        }
    }

    /// `point` failed admission: it is not a member of our mesh (a third-party point, or
    /// another mesh's). Nothing to wait for: register and discover now.
    pub fn on_not_member(&mut self, point: &PeerId, now: Instant) {
        if let Some(p) = self.points.get_mut(point) {
            if !p.register_in_flight && p.registered_until.is_none() {
                p.next_register = Some(now);
            }
            if !p.discover_in_flight && p.cookie.is_none() {
                p.next_discover = Some(now);
            }
        }
    }

    /// The last connection to `point` closed: nothing is sent until it is back.
    pub fn on_disconnected(&mut self, point: &PeerId) {
        if let Some(p) = self.points.get_mut(point) {
            p.connected = false;
            p.register_in_flight = false;
            p.discover_in_flight = false;
        }
    }

    /// `point` passed admission: it is a member of our mesh, and a members-only point serves
    /// us from now on: register and discover now (what failed before is retried too).
    pub fn on_admitted(&mut self, point: &PeerId, now: Instant) {
        if let Some(p) = self.points.get_mut(point) {
            if p.registered_until.is_none() && !p.register_in_flight {
                p.next_register = Some(now);
            }
            if (p.cookie.is_none() || p.discover_failures > 0) && !p.discover_in_flight {
                p.next_discover = Some(now);
            }
        }
    }

    /// Our addresses changed (a new listen or external address): register again at once
    /// where registered or trying, so the point hands out the new ones.
    pub fn on_addresses_changed(&mut self, now: Instant) {
        for p in self.points.values_mut() {
            if p.connected && !p.register_in_flight {
                p.next_register = Some(now);
            }
        }
    }

    /// `point` accepted our registration for `ttl_s` seconds: renewed at half of it.
    pub fn on_registered(&mut self, point: &PeerId, ttl_s: u64, now: Instant) {
        if let Some(p) = self.points.get_mut(point) {
            let ttl = Duration::from_secs(ttl_s.max(2));
            p.register_in_flight = false;
            p.register_failures = 0;
            p.registered_until = Some(now + ttl);
            p.next_register = Some(now + ttl / 2);
            p.last_error = None;
        }
    }

    /// A registration at `point` failed (`why`: its error code, or a transport failure).
    pub fn on_register_failed(&mut self, point: &PeerId, why: String, now: Instant) {
        if let Some(p) = self.points.get_mut(point) {
            p.register_in_flight = false;
            p.next_register = Some(now + retry_after(p.register_failures));
            p.register_failures = p.register_failures.saturating_add(1);
            p.last_error = Some(format!("register: {why}"));
        }
    }

    /// `point` answered a discovery with `count` registrations and a cookie for the next.
    pub fn on_discovered(&mut self, point: &PeerId, count: usize, cookie: Vec<u8>, now: Instant) {
        if let Some(p) = self.points.get_mut(point) {
            p.discover_in_flight = false;
            p.discover_failures = 0;
            p.discovered += count as u64;
            p.cookie = Some(cookie);
            // A full page means more are waiting: ask again at once.
            p.next_discover = Some(if count as u64 >= DISCOVER_LIMIT {
                now
            } else {
                now + DISCOVER_PERIOD
            });
            if p.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("discover"))
            {
                p.last_error = None;
            }
        }
    }

    /// A discovery at `point` failed. An invalid cookie (the point restarted between two
    /// connections we did not see close) is dropped, so the next asks from the start.
    pub fn on_discover_failed(
        &mut self,
        point: &PeerId,
        why: String,
        invalid_cookie: bool,
        now: Instant,
    ) {
        if let Some(p) = self.points.get_mut(point) {
            p.discover_in_flight = false;
            if invalid_cookie {
                p.cookie = None;
            }
            p.next_discover = Some(now + retry_after(p.discover_failures));
            p.discover_failures = p.discover_failures.saturating_add(1);
            p.last_error = Some(format!("discover: {why}"));
        }
    }

    /// The requests due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<RendezvousAction> {
        let mut actions = Vec::new();
        let mut ids: Vec<&PeerId> = self.points.keys().collect();
        ids.sort();
        let ids: Vec<PeerId> = ids.into_iter().copied().collect();
        for id in ids {
            let p = self.points.get_mut(&id).expect("id taken from the map");
            if !p.connected {
                continue;
            }
            if let Some(until) = p.registered_until
                && until <= now
            {
                p.registered_until = None;
            }
            if !p.register_in_flight && p.next_register.is_some_and(|t| t <= now) {
                p.register_in_flight = true;
                p.next_register = None;
                actions.push(RendezvousAction::Register(id));
            }
            if !p.discover_in_flight && p.next_discover.is_some_and(|t| t <= now) {
                p.discover_in_flight = true;
                p.next_discover = None;
                actions.push(RendezvousAction::Discover {
                    point: id,
                    cookie: p.cookie.clone(),
                });
            }
        }
        actions
    }

    /// When [`RendezvousClient::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.points
            .values()
            .filter(|p| p.connected)
            .flat_map(|p| {
                [
                    p.next_register.filter(|_| !p.register_in_flight),
                    p.next_discover.filter(|_| !p.discover_in_flight),
                ]
            })
            .flatten()
            .min()
    }

    /// Every point, for `mesh status`.
    pub fn status(&self, now: Instant) -> Vec<PointStatus> {
        let mut rows: Vec<PointStatus> = self
            .points
            .iter()
            .map(|(id, p)| PointStatus {
                peer: id.to_base58(),
                connected: p.connected,
                registered_for_s: p
                    .registered_until
                    .filter(|u| *u > now)
                    .map(|u| u.duration_since(now).as_secs()),
                discovered: p.discovered,
                last_error: p.last_error.clone(),
            })
            .collect();
        rows.sort_by(|a, b| a.peer.cmp(&b.peer));
        rows
    }
}

#[cfg(test)]
#[path = "rendezvous/tests.rs"]
mod tests;
