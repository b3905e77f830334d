//! The rendezvous client's rules, with exact timings.

use super::*;

fn point() -> PeerId {
    PeerId::random()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn discover(point: PeerId, cookie: Option<Vec<u8>>) -> RendezvousAction {
    RendezvousAction::Discover { point, cookie }
}

#[test]
fn nothing_is_sent_to_a_point_that_is_not_connected() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    assert!(c.poll(t0).is_empty());
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn a_connected_point_is_asked_once_its_admission_ends_either_way() {
    let t0 = Instant::now();
    let both = |p| vec![RendezvousAction::Register(p), discover(p, None)];
    // A member's point: admitted after the handshake.
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    assert!(c.poll(t0).is_empty());
    c.on_admitted(&p, t0 + ms(3));
    assert_eq!(c.poll(t0 + ms(3)), both(p));
    // In flight: not sent twice.
    assert!(c.poll(t0 + ms(100)).is_empty());
    // A third-party point: not a member.
    let q = point();
    let mut c = RendezvousClient::new([q]);
    c.on_connected(&q, t0);
    c.on_not_member(&q, t0 + ms(2));
    assert_eq!(c.poll(t0 + ms(2)), both(q));
    // Neither heard of: at the handshake's deadline anyway.
    let r = point();
    let mut c = RendezvousClient::new([r]);
    c.on_connected(&r, t0);
    assert!(c.poll(t0 + ADMISSION_WAIT - ms(1)).is_empty());
    assert_eq!(c.poll(t0 + ADMISSION_WAIT), both(r));
}

#[test]
fn a_registration_is_renewed_at_half_its_ttl() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    c.on_registered(&p, 7200, t0 + ms(10));
    c.on_discovered(&p, 0, vec![1], t0 + ms(10));
    let renew = t0 + ms(10) + Duration::from_secs(3600);
    let before: Vec<_> = c
        .poll(renew - ms(1))
        .into_iter()
        .filter(|a| matches!(a, RendezvousAction::Register(_)))
        .collect();
    assert!(before.is_empty());
    assert!(c.poll(renew).contains(&RendezvousAction::Register(p)));
}

#[test]
fn discovery_repeats_every_period_with_the_last_cookie() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    c.on_registered(&p, 7200, t0);
    c.on_discovered(&p, 3, vec![7, 7], t0 + ms(5));
    assert_eq!(c.next_deadline(), Some(t0 + ms(5) + DISCOVER_PERIOD));
    assert!(c.poll(t0 + ms(5) + DISCOVER_PERIOD - ms(1)).is_empty());
    assert_eq!(
        c.poll(t0 + ms(5) + DISCOVER_PERIOD),
        vec![discover(p, Some(vec![7, 7]))]
    );
}

#[test]
fn a_full_page_is_followed_by_the_next_at_once() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    c.on_discovered(&p, DISCOVER_LIMIT as usize, vec![9], t0 + ms(5));
    assert!(c.poll(t0 + ms(5)).contains(&discover(p, Some(vec![9]))));
}

#[test]
fn failures_are_retried_with_a_doubling_wait() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    c.on_register_failed(&p, "unavailable".into(), t0);
    assert!(c.poll(t0 + RETRY_MIN - ms(1)).is_empty());
    assert_eq!(c.poll(t0 + RETRY_MIN), vec![RendezvousAction::Register(p)]);
    c.on_register_failed(&p, "unavailable".into(), t0 + RETRY_MIN);
    assert!(c.poll(t0 + RETRY_MIN * 3 - ms(1)).is_empty());
    assert_eq!(
        c.poll(t0 + RETRY_MIN * 3),
        vec![RendezvousAction::Register(p)]
    );
    assert_eq!(
        c.status(t0)[0].last_error.as_deref(),
        Some("register: unavailable")
    );
}

#[test]
fn an_admitted_point_is_asked_again_at_once_after_refusing_us() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    // The members-only point refused: our handshake had not ended yet.
    c.on_register_failed(&p, "refused".into(), t0 + ms(2));
    c.on_discover_failed(&p, "refused".into(), false, t0 + ms(2));
    c.on_admitted(&p, t0 + ms(3));
    assert_eq!(
        c.poll(t0 + ms(3)),
        vec![RendezvousAction::Register(p), discover(p, None)]
    );
}

#[test]
fn a_point_that_comes_back_is_registered_at_again_from_scratch() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    c.on_registered(&p, 7200, t0);
    c.on_discovered(&p, 2, vec![5], t0);
    c.on_disconnected(&p);
    assert!(c.poll(t0 + Duration::from_secs(5)).is_empty());
    let back = t0 + Duration::from_secs(6);
    c.on_connected(&p, back);
    c.on_admitted(&p, back);
    assert_eq!(
        c.poll(back),
        vec![RendezvousAction::Register(p), discover(p, None)]
    );
}

#[test]
fn an_invalid_cookie_is_dropped() {
    let t0 = Instant::now();
    let p = point();
    let mut c = RendezvousClient::new([p]);
    c.on_connected(&p, t0);
    c.on_admitted(&p, t0);
    c.poll(t0);
    c.on_discovered(&p, 1, vec![4], t0);
    let next = t0 + DISCOVER_PERIOD;
    assert_eq!(c.poll(next), vec![discover(p, Some(vec![4]))]);
    c.on_discover_failed(&p, "invalid cookie".into(), true, next);
    assert_eq!(c.poll(next + RETRY_MIN), vec![discover(p, None)]);
}

#[test]
fn the_namespace_is_the_mesh_id_never_the_key() {
    let key = crate::admission::MeshKey::generate();
    let ns = namespace(&key.mesh_id());
    assert_eq!(ns, format!("mesh/{}", key.mesh_id()));
    assert!(!ns.contains(&key.to_hex()));
    assert!(ns.len() <= 255);
}
