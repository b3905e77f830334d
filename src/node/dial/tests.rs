//! Tests of the dial planner: every timing is exact (the planner takes `now`).

use super::*;

const REDIAL_MAX: Duration = Duration::from_secs(2);

fn peer() -> PeerId {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
}

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/10.0.0.1/udp/{port}/quic-v1")
        .parse()
        .expect("literal multiaddr")
}

fn planner(t0: Instant) -> DialPlanner {
    DialPlanner::new(peer(), &[], REDIAL_MAX, t0)
}

fn never(_: &PeerId) -> bool {
    false
}

fn dialed(dials: &[Dial]) -> Vec<PeerId> {
    dials
        .iter()
        .filter_map(|d| match d {
            Dial::Peer { peer, .. } => Some(*peer),
            Dial::Address(_) => None,
        })
        .collect()
}

/// Polls every `step` from `from` to `to` (inclusive) and returns the times `peer` was dialed.
fn dial_times(
    p: &mut DialPlanner,
    peer: PeerId,
    from: Instant,
    to: Instant,
    step: Duration,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut now = from;
    while now <= to {
        if dialed(&p.poll(now, never)).contains(&peer) {
            times.push(now - from);
        }
        now += step;
    }
    times
}

#[test]
fn a_discovered_peer_is_dialed_at_once_whichever_id_is_lower() {
    let t0 = Instant::now();
    for _ in 0..8 {
        let mut p = planner(t0);
        let other = peer();
        p.on_discovered(other, vec![addr(1)], t0);
        assert_eq!(
            p.poll(t0, never),
            vec![Dial::Peer {
                peer: other,
                addrs: vec![addr(1)]
            }]
        );
        assert_eq!(p.stats().dials, 1);
    }
}

#[test]
fn a_failing_peer_is_redialed_with_a_doubling_backoff_up_to_redial_max() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let other = peer();
    p.on_discovered(other, vec![addr(1)], t0);
    let times = dial_times(&mut p, other, t0, t0 + Duration::from_secs(10), ms(50));
    // 0, then +0.25, +0.5, +1, +2, +2, ...
    let expected: Vec<Duration> = [0, 250, 750, 1750, 3750, 5750, 7750, 9750]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(times, expected);
}

#[test]
fn a_connected_peer_is_not_dialed_and_is_redialed_as_soon_as_it_disconnects() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let other = peer();
    p.on_discovered(other, vec![addr(1)], t0);
    assert_eq!(dialed(&p.poll(t0, never)), vec![other]);
    p.on_connected(other, Some(&addr(1)), t0 + ms(10));
    assert!(p.poll(t0 + Duration::from_secs(30), never).is_empty());
    let down = t0 + Duration::from_secs(30);
    p.on_disconnected(&other, down);
    assert_eq!(dialed(&p.poll(down, never)), vec![other]);
    assert!(p.poll(down + ms(249), never).is_empty());
    assert_eq!(dialed(&p.poll(down + ms(250), never)), vec![other]);
}

#[test]
fn a_peer_in_admission_backoff_waits() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let other = peer();
    p.on_discovered(other, vec![addr(1)], t0);
    assert!(p.poll(t0, |_| true).is_empty());
    assert_eq!(dialed(&p.poll(t0 + ms(1), never)), vec![other]);
}

#[test]
fn a_peer_that_left_is_not_dialed_until_discovered_again() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let other = peer();
    p.on_discovered(other, vec![addr(1)], t0);
    p.on_connected(other, Some(&addr(1)), t0);
    p.on_membership(&other, PeerState::Left, t0 + ms(100));
    p.on_disconnected(&other, t0 + ms(100));
    let times = dial_times(&mut p, other, t0, t0 + Duration::from_secs(60), ms(100));
    assert!(times.is_empty(), "dialed at {times:?}");
    let back = t0 + Duration::from_secs(61);
    p.on_discovered(other, vec![addr(1)], back);
    assert_eq!(dialed(&p.poll(back, never)), vec![other]);
}

#[test]
fn a_dead_peer_is_redialed_at_the_normal_pace_for_a_minute_then_once_a_minute() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let other = peer();
    p.on_discovered(other, vec![addr(1)], t0);
    p.on_connected(other, Some(&addr(1)), t0);
    p.on_disconnected(&other, t0);
    p.on_membership(&other, PeerState::Dead, t0);
    let times = dial_times(&mut p, other, t0, t0 + Duration::from_secs(300), ms(250));
    let in_grace = times.iter().filter(|t| **t < DEAD_GRACE).count();
    // Alone, a node's share is the whole per-node budget: every 2 s up to 60 s, about 30 dials.
    assert!(in_grace >= 29, "{in_grace} dials in the grace: {times:?}");
    let after: Vec<Duration> = times.into_iter().filter(|t| *t >= DEAD_GRACE).collect();
    // The first dial past the grace sets the long interval: then one a minute.
    assert!(after.len() <= 5, "dials after the grace: {after:?}");
    for pair in after.windows(2).skip(1) {
        assert_eq!(pair[1] - pair[0], DEAD_REDIAL_MAX, "{after:?}");
    }
}

#[test]
fn many_dead_peers_share_a_budget_of_dials() {
    // A partition: 40 peers linked, then cut off and declared dead.
    let t0 = Instant::now();
    let mut p = planner(t0);
    let peers: Vec<PeerId> = (0..40).map(|_| peer()).collect();
    for (k, other) in peers.iter().enumerate() {
        p.on_discovered(*other, vec![addr(k as u16 + 1)], t0);
        p.on_connected(*other, Some(&addr(k as u16 + 1)), t0);
        p.on_disconnected(other, t0);
        p.on_membership(other, PeerState::Dead, t0);
    }
    let mut per_peer: std::collections::HashMap<PeerId, Vec<Duration>> = Default::default();
    let mut t = t0;
    while t < t0 + DEAD_GRACE {
        for d in dialed(&p.poll(t, never)) {
            per_peer.entry(d).or_default().push(t - t0);
        }
        t += ms(50);
    }
    let total: usize = per_peer.values().map(Vec::len).sum();
    // 4 dials per 2 s interval for a minute is 120 (no faster first dials: the verdict
    // already took several failed probes).
    assert!(total <= 125, "{total} dials in the grace");
    // Every dead peer is still tried, at least every 20 s (40 peers / 4 × 2 s).
    for other in &peers {
        let times = &per_peer[other];
        assert!(times.len() >= 3, "{times:?}");
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] <= Duration::from_secs(20) + ms(50),
                "{times:?}"
            );
        }
    }
    // Without the budget each would be dialed every 2 s: 40 × 30 = 1,200.
    assert!(total < 500, "{total}");
}

/// A peer id made from `k` (the same on every run).
fn fixed_peer(k: u32) -> PeerId {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&k.to_le_bytes());
    libp2p::identity::Keypair::ed25519_from_bytes(seed)
        .expect("32 bytes")
        .public()
        .to_peer_id()
}

/// One node of a 1,000-node mesh in which 25 members are dead: it takes 16/976 of the
/// mesh's budget of dead dials, so together its ~975 live members dial dead peers ~16 times
/// per redial interval, not 4 times each.
#[test]
fn a_big_mesh_shares_one_budget_of_dead_dials() {
    let t0 = Instant::now();
    let mut p = DialPlanner::new(fixed_peer(0), &[], REDIAL_MAX, t0);
    let members: Vec<PeerId> = (1..1000).map(fixed_peer).collect();
    for (k, other) in members.iter().enumerate() {
        let a = addr(k as u16 + 1);
        p.on_discovered(*other, vec![a.clone()], t0);
        p.on_connected(*other, Some(&a), t0);
    }
    let dead = &members[..25];
    for other in dead {
        p.on_disconnected(other, t0);
        p.on_membership(other, PeerState::Dead, t0);
    }
    let mut times = Vec::new();
    let mut t = t0;
    while t < t0 + DEAD_GRACE {
        times.extend(dialed(&p.poll(t, never)).into_iter().map(|d| (t - t0, d)));
        t += ms(50);
    }
    // Each dead peer every 2 s × 25 / (16 / 975) ≈ 51 min: ~0.5 dials in the first minute
    // (these ids give one); with a budget of 4 per node it was 120, with none 750.
    assert!(times.len() <= 3, "{times:?}");
    assert!(times.iter().all(|(_, d)| dead.contains(d)), "{times:?}");
    // Had it been alone with them (every link down), its share is the whole per-node budget.
    let mut alone = DialPlanner::new(fixed_peer(0), &[], REDIAL_MAX, t0);
    for (k, other) in dead.iter().enumerate() {
        let a = addr(k as u16 + 1);
        alone.on_discovered(*other, vec![a.clone()], t0);
        alone.on_connected(*other, Some(&a), t0);
        alone.on_disconnected(other, t0);
        alone.on_membership(other, PeerState::Dead, t0);
    }
    let mut n = 0;
    let mut t = t0;
    while t < t0 + DEAD_GRACE {
        n += alone.poll(t, never).len();
        t += ms(50);
    }
    // 4 dials per 2 s for a minute: 120 (each peer every 12.5 s, the first at its own point).
    assert!((100..=125).contains(&n), "{n}");
}

/// The members of a mesh do not all redial a peer declared dead at the same moment: the
/// first redial of each comes at its own point of the pace.
#[test]
fn the_first_redials_of_a_dead_peer_are_spread() {
    let t0 = Instant::now();
    let dead = fixed_peer(1000);
    let firsts: Vec<Duration> = (0..50)
        .map(|k| {
            let mut p = DialPlanner::new(fixed_peer(k), &[], REDIAL_MAX, t0);
            p.on_discovered(dead, vec![addr(1)], t0);
            p.on_connected(dead, Some(&addr(1)), t0);
            p.on_disconnected(&dead, t0);
            p.on_membership(&dead, PeerState::Dead, t0);
            let times = dial_times(&mut p, dead, t0, t0 + REDIAL_MAX * 2, ms(10));
            times[0]
        })
        .collect();
    assert!(
        firsts.iter().all(|f| *f >= REDIAL_MIN && *f <= REDIAL_MAX),
        "{firsts:?}"
    );
    let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
    assert!(distinct.len() >= 40, "{firsts:?}");
}

#[test]
fn a_peer_back_from_the_dead_is_dialed_normally() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let other = peer();
    p.on_discovered(other, vec![addr(1)], t0);
    p.on_membership(&other, PeerState::Dead, t0);
    let later = t0 + Duration::from_secs(120);
    dial_times(&mut p, other, t0, later, ms(500));
    p.on_membership(&other, PeerState::Alive, later);
    let times = dial_times(
        &mut p,
        other,
        later,
        later + Duration::from_secs(20),
        ms(250),
    );
    assert!(times.len() >= 9, "dialed at {times:?}");
}

#[test]
fn dead_and_left_peers_are_forgotten_after_an_hour() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let (dead, left) = (peer(), peer());
    p.on_discovered(dead, vec![addr(1)], t0);
    p.on_discovered(left, vec![addr(2)], t0);
    p.on_membership(&dead, PeerState::Dead, t0);
    p.on_membership(&left, PeerState::Left, t0);
    p.poll(t0 + FORGET_AFTER - ms(1), never);
    assert_eq!(p.stats().targets, 2);
    assert!(p.next_deadline() <= Some(t0 + FORGET_AFTER));
    p.poll(t0 + FORGET_AFTER, never);
    assert_eq!(p.stats().targets, 0);
    assert_eq!(p.stats().forgotten, 2);
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn an_address_that_answers_with_another_peer_id_ends_the_old_one_at_every_address() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let (old, new) = (peer(), peer());
    // The second address is the same host's link-local one, which never answers.
    p.on_discovered(old, vec![addr(1), addr(2)], t0);
    assert_eq!(dialed(&p.poll(t0, never)), vec![old]);
    let reported: Multiaddr = format!("{}/p2p/{old}", addr(1)).parse().expect("multiaddr");
    p.on_wrong_peer_id(&old, new, &reported, t0 + ms(5));
    assert!(p.addrs_of(&old).is_empty());
    assert_eq!(p.stats().targets, 0);
    let times = dial_times(
        &mut p,
        old,
        t0 + ms(10),
        t0 + Duration::from_secs(600),
        ms(250),
    );
    assert!(times.is_empty(), "dialed at {times:?}");
    assert_eq!(p.stats().wrong_peer_id, 1);
    assert_eq!(p.stats().forgotten, 1);
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn a_connected_peer_is_not_forgotten_for_a_wrong_peer_id_at_an_old_address() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let (moved, newcomer) = (peer(), peer());
    p.on_discovered(moved, vec![addr(1)], t0);
    p.on_connected(moved, None, t0);
    p.on_wrong_peer_id(&moved, newcomer, &addr(1), t0);
    assert_eq!(p.addrs_of(&moved), &[addr(1)]);
}

#[test]
fn a_peer_forgotten_for_a_wrong_peer_id_is_dialed_again_when_discovered_again() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let (moved, newcomer) = (peer(), peer());
    p.on_discovered(moved, vec![addr(1)], t0);
    p.poll(t0, never);
    p.on_wrong_peer_id(&moved, newcomer, &addr(1), t0 + ms(5));
    p.on_discovered(moved, vec![addr(2)], t0 + ms(10));
    assert_eq!(
        p.poll(t0 + ms(10), never),
        vec![Dial::Peer {
            peer: moved,
            addrs: vec![addr(2)]
        }]
    );
}

#[test]
fn identities_that_came_and_went_at_one_address_stop_being_dialed_after_one_dial_each() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let identities: Vec<PeerId> = (0..10).map(|_| peer()).collect();
    let current = peer();
    for id in &identities {
        p.on_discovered(*id, vec![addr(1)], t0);
        p.on_membership(id, PeerState::Dead, t0);
    }
    let dials = p.poll(t0, never);
    assert_eq!(dials.len(), 10);
    for id in &identities {
        p.on_wrong_peer_id(id, current, &addr(1), t0 + ms(5));
    }
    let mut later = 0;
    let mut now = t0 + ms(10);
    while now < t0 + Duration::from_secs(600) {
        later += p.poll(now, never).len();
        now += ms(250);
    }
    assert_eq!(later, 0);
    assert_eq!(p.stats().dials, 10);
}

#[test]
fn a_static_peer_is_dialed_by_address_then_by_the_id_it_answered_with() {
    let t0 = Instant::now();
    let mut p = DialPlanner::new(peer(), &[addr(9)], REDIAL_MAX, t0);
    assert_eq!(p.poll(t0, never), vec![Dial::Address(addr(9))]);
    let first = peer();
    p.on_connected(first, Some(&addr(9)), t0 + ms(5));
    assert!(p.poll(t0 + Duration::from_secs(10), never).is_empty());
    p.on_disconnected(&first, t0 + Duration::from_secs(10));
    assert_eq!(
        p.poll(t0 + Duration::from_secs(11), never),
        vec![Dial::Peer {
            peer: first,
            addrs: vec![addr(9)]
        }]
    );
    // The host was reinstalled: another identity answers there now.
    let second = peer();
    p.on_wrong_peer_id(&first, second, &addr(9), t0 + Duration::from_secs(11));
    assert_eq!(
        p.poll(t0 + Duration::from_secs(20), never),
        vec![Dial::Peer {
            peer: second,
            addrs: vec![addr(9)]
        }]
    );
}

#[test]
fn the_target_list_is_bounded_and_evicts_the_most_failing_target() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let first = peer();
    p.on_discovered(first, vec![addr(1)], t0);
    for i in 0..5 {
        p.poll(t0 + Duration::from_secs(10 * i), never);
    }
    for i in 1..MAX_DIAL_TARGETS {
        p.on_discovered(peer(), vec![addr(i as u16)], t0);
    }
    assert_eq!(p.stats().targets, MAX_DIAL_TARGETS);
    p.on_discovered(peer(), vec![addr(1)], t0);
    assert_eq!(p.stats().targets, MAX_DIAL_TARGETS);
    assert!(
        p.addrs_of(&first).is_empty(),
        "the most failing target went"
    );
}

#[test]
fn both_sides_keep_the_connection_the_lower_id_dialed() {
    // The lower id sees: its own dial (kept), then the higher's dial (closed).
    assert_eq!(duplicates_to_close(true, &[(1, true), (2, false)]), vec![2]);
    // The higher id may see them in the other order: it closes its own dial.
    assert_eq!(
        duplicates_to_close(false, &[(2, true), (1, false)]),
        vec![2]
    );
    assert_eq!(
        duplicates_to_close(false, &[(1, false), (2, true)]),
        vec![2]
    );
    // One connection: nothing to settle.
    assert!(duplicates_to_close(true, &[(1, false)]).is_empty());
    // Only the higher id dialed (twice): the first stays.
    assert_eq!(
        duplicates_to_close(true, &[(1, false), (2, false)]),
        vec![2]
    );
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_member_from_the_document_is_dialed_at_once_and_an_identity_found_gone_is_not_brought_back() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let member = peer();
    p.on_member_addrs(member, vec![addr(1)], t0);
    assert_eq!(dialed(&p.poll(t0, never)), vec![member]);
    // Another identity answers there: the member's identity is gone.
    p.on_wrong_peer_id(&member, peer(), &addr(1), t0 + ms(5));
    p.on_member_addrs(member, vec![addr(1)], t0 + ms(10));
    assert!(p.poll(t0 + Duration::from_secs(10), never).is_empty());
    // Discovery brings it back.
    p.on_discovered(member, vec![addr(2)], t0 + Duration::from_secs(11));
    assert_eq!(
        dialed(&p.poll(t0 + Duration::from_secs(11), never)),
        vec![member]
    );
}

#[test]
fn a_target_never_reached_slows_to_once_a_minute_and_is_forgotten_after_an_hour() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let ghost = peer();
    p.on_discovered(ghost, vec![addr(3)], t0);
    let times = dial_times(&mut p, ghost, t0, t0 + Duration::from_secs(200), ms(50));
    // The doubling pace until 8 dials have failed (the 9th goes at 11.75 s), then one a
    // minute.
    assert_eq!(
        times,
        [
            0, 250, 750, 1750, 3750, 5750, 7750, 9750, 11750, 71750, 131750, 191750
        ]
        .map(Duration::from_millis)
    );
    assert!(p.poll(t0 + FORGET_AFTER, never).is_empty());
    assert_eq!(p.stats().targets, 0);
    assert_eq!(p.stats().forgotten, 1);
}

#[test]
fn a_reached_target_keeps_the_normal_pace() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let friend = peer();
    p.on_discovered(friend, vec![addr(4)], t0);
    p.poll(t0, never);
    p.on_connected(friend, Some(&addr(4)), t0 + ms(5));
    p.on_disconnected(&friend, t0 + Duration::from_secs(1));
    let from = t0 + Duration::from_secs(1);
    let times = dial_times(&mut p, friend, from, from + Duration::from_secs(40), ms(50));
    // Never more than redial_max apart, well past UNREACHED_DIALS failures.
    assert!(times.len() > 15, "{times:?}");
    assert!(times.windows(2).all(|w| w[1] - w[0] <= REDIAL_MAX));
}

#[test]
fn a_peer_given_as_ip_and_port_is_one_static_peer_dialed_over_quic_then_tcp() {
    let t0 = Instant::now();
    let quic: Multiaddr = "/ip4/10.0.0.9/udp/7400/quic-v1".parse().unwrap();
    let tcp: Multiaddr = "/ip4/10.0.0.9/tcp/7400".parse().unwrap();
    let mut p = DialPlanner::new(peer(), &[tcp.clone(), quic.clone()], REDIAL_MAX, t0);
    assert_eq!(p.poll(t0, never), vec![Dial::Address(quic.clone())]);
    assert_eq!(
        p.poll(t0 + REDIAL_MIN, never),
        vec![Dial::Address(tcp.clone())]
    );
    // Answered over TCP: from now on dialed by id, QUIC alone first, then both.
    let id = peer();
    p.on_connected(id, Some(&tcp), t0 + Duration::from_secs(1));
    p.on_disconnected(&id, t0 + Duration::from_secs(2));
    assert_eq!(
        p.poll(t0 + Duration::from_secs(3), never),
        vec![Dial::Peer {
            peer: id,
            addrs: vec![quic.clone()]
        }]
    );
    assert_eq!(
        p.poll(t0 + Duration::from_secs(4), never),
        vec![Dial::Peer {
            peer: id,
            addrs: vec![quic, tcp]
        }]
    );
}

#[test]
fn a_rendezvous_address_names_its_peer_from_the_start() {
    let t0 = Instant::now();
    let point = peer();
    let at: Multiaddr = format!("/ip4/10.0.0.5/tcp/7400/p2p/{point}")
        .parse()
        .unwrap();
    let mut p = DialPlanner::new(peer(), std::slice::from_ref(&at), REDIAL_MAX, t0);
    assert_eq!(
        p.poll(t0, never),
        vec![Dial::Peer {
            peer: point,
            addrs: vec![at]
        }]
    );
}

#[test]
fn without_quic_first_the_first_dial_takes_every_address() {
    let t0 = Instant::now();
    let mut p = planner(t0);
    let both = vec![
        addr(7400),
        "/ip4/10.0.0.1/tcp/7400".parse::<Multiaddr>().unwrap(),
    ];
    let peer_a = peer();
    p.on_discovered(peer_a, both.clone(), t0);
    assert_eq!(
        p.poll(t0, never),
        vec![Dial::Peer {
            peer: peer_a,
            addrs: vec![addr(7400)]
        }]
    );
    p.set_quic_first(false);
    let peer_b = peer();
    p.on_discovered(peer_b, both.clone(), t0);
    assert_eq!(
        p.poll(t0, never),
        vec![Dial::Peer {
            peer: peer_b,
            addrs: both
        }]
    );
}

#[test]
fn the_indexes_match_the_targets_after_any_sequence_of_events() {
    // `poll` and `next_deadline` read only the indexes; this drives every event in a
    // pseudo-random order and checks them against a pass over all targets.
    let t0 = Instant::now();
    let mut p = planner(t0);
    let peers: Vec<PeerId> = (0..6).map(|_| peer()).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut dials = 0;
    for step in 0..4_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let now = t0 + ms(step * 700);
        let who = peers[(x % 6) as usize];
        match (x >> 8) % 11 {
            0 => p.on_discovered(who, vec![addr(1)], now),
            1 => p.on_member_addrs(who, vec![addr(2)], now),
            2 => p.on_listen_addrs(who, vec![addr(3)], now),
            3 => p.on_connected(who, Some(&addr(1)), now),
            4 => p.on_connected(who, None, now),
            5 => p.on_disconnected(&who, now),
            6 => p.on_discovery_lost(&who, now),
            7 => p.on_membership(&who, PeerState::Dead, now),
            8 => p.on_membership(&who, PeerState::Left, now),
            9 => p.on_membership(&who, PeerState::Alive, now),
            _ => p.on_wrong_peer_id(&who, peers[0], &addr(1), now),
        }
        match step % 3 {
            0 => dials += p.poll(now + Duration::from_secs(3_600), never).len(),
            1 => dials += p.poll(now, |q| *q == peers[(x >> 20) as usize % 6]).len(),
            _ => {}
        }
        assert_eq!(p.next_deadline(), p.check_index(), "after step {step}");
    }
    assert!(dials > 100, "the run dialed ({dials} dials)");
    assert!(p.stats().forgotten > 0, "the run forgot targets");
}

impl DialPlanner {
    /// Panics unless the indexes hold exactly what a pass over every target finds, and
    /// returns the next deadline that pass finds.
    fn check_index(&self) -> Option<Instant> {
        let (mut due, mut expiring, mut dead) = (BTreeSet::new(), BTreeSet::new(), 0);
        for (peer, t) in &self.targets {
            let f = t.filing();
            assert_eq!(t.filed, f, "target {peer} filed stale");
            due.extend(f.due.map(|at| (at, *peer)));
            expiring.extend(f.forget.map(|at| (at, *peer)));
            dead += usize::from(f.dead);
        }
        assert_eq!(self.due, due);
        assert_eq!(self.expiring, expiring);
        assert_eq!(self.dead, dead);
        let statics = self
            .statics
            .iter()
            .filter(|s| s.peer.is_none_or(|p| !self.connected.contains(&p)))
            .map(|s| s.next_dial);
        due.iter()
            .chain(&expiring)
            .map(|(at, _)| *at)
            .chain(statics)
            .min()
    }
}
