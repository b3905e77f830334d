//! Tests of mDNS discovery: the record format and classification (pure), and the actor on
//! loopback interfaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::identity::Keypair;

use libp2p::PeerId;
use mdns_sd::TxtProperties;
use tokio::time::Instant;

use super::record::*;
use super::*;
use crate::discovery::DiscoveredPeer;

fn random_peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

const MESH: &str = "00112233aabbccdd";
const OTHER_MESH: &str = "ffeeddccbbaa9988";

fn local(peer_id: PeerId) -> LocalNode {
    LocalNode::from_config(&MdnsConfig::new("alpha", peer_id, MESH, 7400)).expect("valid config")
}

/// Fuzz target (bolero; see `fuzz/README.md`): a TXT record's wire bytes, random or a
/// valid record of our mesh with byte-level mutations, parsed by mdns-sd and classified
/// with a random full name, port and addresses. Never a panic; a record taken as a peer
/// carries a peer id from its TXT, a name (its TXT `name`, or a non-empty start of the
/// instance name) and at least one address.
#[test]
fn fuzz_txt_record() {
    let me = local(random_peer());
    let them = random_peer();
    let id = them.to_base58();
    let seed: Vec<u8> = {
        let mut wire = Vec::new();
        for (key, value) in [
            ("id", id.as_bytes()),
            ("mesh", MESH.as_bytes()),
            ("pv", b"1".as_slice()),
            ("v", b"0.1.0".as_slice()),
            ("name", b"beta".as_slice()),
        ] {
            let entry = [key.as_bytes(), b"=", value].concat();
            wire.push(u8::try_from(entry.len()).expect("short entries"));
            wire.extend_from_slice(&entry);
        }
        wire
    };
    type Input = (Vec<u8>, Vec<(u8, u16, u8)>, String, u16, Vec<[u8; 4]>, bool);
    bolero::check!()
        .with_type::<Input>()
        .with_test_time(Duration::from_millis(300))
        .for_each(|(raw, mutations, fullname, port, v4, loopback)| {
            let mut wire = if mutations.is_empty() {
                raw.clone()
            } else {
                seed.clone()
            };
            for &(kind, at, value) in mutations.iter().take(16) {
                let at = usize::from(at) % wire.len().max(1);
                match (kind % 4, wire.is_empty()) {
                    (0, false) => wire[at] ^= 1 << (value % 8),
                    (1, false) => wire[at] = value,
                    (2, _) => wire.insert(at.min(wire.len()), value),
                    (3, _) => wire.truncate(at),
                    _ => {}
                }
            }
            let txt = TxtProperties::from(&wire[..]);
            let instance = instance_of(fullname);
            let addrs: Vec<IpAddr> = v4.iter().map(|o| IpAddr::from(*o)).collect();
            let record = ServiceRecord {
                instance,
                port: *port,
                addrs,
                txt: &txt,
            };
            let policy = if *loopback {
                InterfacePolicy::LoopbackOnly
            } else {
                InterfacePolicy::Lan
            };
            if let Verdict::Peer(peer) = classify(&record, &me, policy) {
                assert_eq!(Ok(peer.peer_id), parse_peer_id(&txt));
                assert!(
                    txt_str(&txt, TXT_NAME) == Ok(peer.name.as_str())
                        || (!peer.name.is_empty() && instance.starts_with(&peer.name))
                        || peer.name == crate::identity::short_id(&peer.peer_id),
                    "name {:?} from instance {instance:?}",
                    peer.name
                );
                assert!(!peer.addrs.is_empty());
            }
        });
}

/// A TXT record as on the wire: length-prefixed `key=value` strings.
fn txt(entries: &[(&str, &[u8])]) -> TxtProperties {
    let mut wire = Vec::new();
    for (key, value) in entries {
        let mut entry = key.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value);
        wire.push(u8::try_from(entry.len()).expect("test entries are short"));
        wire.extend_from_slice(&entry);
    }
    TxtProperties::from(&wire[..])
}

fn valid_txt(peer: &PeerId, mesh: &str) -> TxtProperties {
    let id = peer.to_base58();
    txt(&[
        ("id", id.as_bytes()),
        ("mesh", mesh.as_bytes()),
        ("pv", b"1"),
        ("v", b"0.1.0"),
    ])
}

fn record<'a>(txt: &'a TxtProperties, addrs: &[&str]) -> ServiceRecord<'a> {
    ServiceRecord {
        instance: "beta",
        port: 7401,
        addrs: addrs
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect(),
        txt,
    }
}

#[test]
fn a_valid_record_of_our_mesh_is_a_peer_with_quic_addresses() {
    let me = local(random_peer());
    let them = random_peer();
    let txt = valid_txt(&them, MESH);
    let rec = record(
        &txt,
        &[
            "192.0.2.7",
            "fd00::7",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.3.4",
        ],
    );
    let Verdict::Peer(peer) = classify(&rec, &me, InterfacePolicy::Lan) else {
        panic!(
            "expected a peer, got {:?}",
            classify(&rec, &me, InterfacePolicy::Lan)
        );
    };
    assert_eq!(peer.peer_id, them);
    assert_eq!(peer.name, "beta");
    assert_eq!(peer.version, "0.1.0");
    let addrs: Vec<String> = peer.addrs.iter().map(ToString::to_string).collect();
    assert_eq!(
        addrs,
        [
            "/ip4/192.0.2.7/udp/7401/quic-v1",
            "/ip6/fd00::7/udp/7401/quic-v1"
        ]
    );
}

#[test]
fn mesh_ids_compare_without_case() {
    let me = local(random_peer());
    let txt = valid_txt(&random_peer(), &MESH.to_uppercase());
    assert!(matches!(
        classify(&record(&txt, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
        Verdict::Peer(_)
    ));
}

#[test]
fn own_foreign_incompatible_and_unreachable_records_are_told_apart() {
    let my_id = random_peer();
    let me = local(my_id);
    let own = valid_txt(&my_id, OTHER_MESH);
    assert_eq!(
        classify(&record(&own, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
        Verdict::Own
    );

    let them = random_peer();
    let foreign = valid_txt(&them, OTHER_MESH);
    assert_eq!(
        classify(&record(&foreign, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
        Verdict::ForeignMesh {
            peer_id: them,
            mesh: OTHER_MESH.to_string()
        }
    );

    let id = them.to_base58();
    let newer = txt(&[
        ("id", id.as_bytes()),
        ("mesh", MESH.as_bytes()),
        ("pv", b"2"),
        ("v", b"9"),
    ]);
    assert_eq!(
        classify(&record(&newer, &["192.0.2.7"]), &me, InterfacePolicy::Lan),
        Verdict::Incompatible {
            peer_id: them,
            protocol_version: 2
        }
    );

    let ours = valid_txt(&them, MESH);
    assert_eq!(
        classify(
            &record(&ours, &["127.0.0.1", "fe80::1"]),
            &me,
            InterfacePolicy::Lan
        ),
        Verdict::NoUsableAddress { peer_id: them }
    );
    // Loopback addresses count in the loopback-only test mode; link-local never does.
    assert!(matches!(
        classify(&record(&ours, &["127.0.0.1", "fe80::1"]), &me, InterfacePolicy::LoopbackOnly),
        Verdict::Peer(p) if p.addrs.len() == 1
    ));
}

#[test]
fn malformed_records_are_rejected_with_a_reason() {
    let me = local(random_peer());
    let id = random_peer().to_base58();
    let id = id.as_bytes();
    let cases: Vec<(&str, TxtProperties)> = vec![
        (
            "no id",
            txt(&[("mesh", MESH.as_bytes()), ("pv", b"1"), ("v", b"x")]),
        ),
        (
            "bad id",
            txt(&[
                ("id", b"not-a-peer-id"),
                ("mesh", MESH.as_bytes()),
                ("pv", b"1"),
                ("v", b"x"),
            ]),
        ),
        (
            "id not UTF-8",
            txt(&[
                ("id", &[0xff, 0xfe]),
                ("mesh", MESH.as_bytes()),
                ("pv", b"1"),
                ("v", b"x"),
            ]),
        ),
        ("no mesh", txt(&[("id", id), ("pv", b"1"), ("v", b"x")])),
        (
            "mesh not hex",
            txt(&[("id", id), ("mesh", b"zz"), ("pv", b"1"), ("v", b"x")]),
        ),
        (
            "no pv",
            txt(&[("id", id), ("mesh", MESH.as_bytes()), ("v", b"x")]),
        ),
        (
            "pv not a number",
            txt(&[
                ("id", id),
                ("mesh", MESH.as_bytes()),
                ("pv", b"-1"),
                ("v", b"x"),
            ]),
        ),
        (
            "no v",
            txt(&[("id", id), ("mesh", MESH.as_bytes()), ("pv", b"1")]),
        ),
        (
            "v too long",
            txt(&[
                ("id", id),
                ("mesh", MESH.as_bytes()),
                ("pv", b"1"),
                ("v", &[b'x'; 65]),
            ]),
        ),
        ("empty TXT", txt(&[])),
    ];
    for (what, txt) in &cases {
        let verdict = classify(&record(txt, &["192.0.2.7"]), &me, InterfacePolicy::Lan);
        assert!(
            matches!(verdict, Verdict::Malformed { .. }),
            "{what}: {verdict:?}"
        );
    }
    let ok = txt(&[
        ("id", id),
        ("mesh", MESH.as_bytes()),
        ("pv", b"1"),
        ("v", b"x"),
    ]);
    let mut zero_port = record(&ok, &["192.0.2.7"]);
    zero_port.port = 0;
    assert!(matches!(
        classify(&zero_port, &me, InterfacePolicy::Lan),
        Verdict::Malformed { .. }
    ));
}

#[test]
fn quic_addresses_are_sorted_deduplicated_and_filtered() {
    let addrs: Vec<IpAddr> = vec![
        Ipv4Addr::new(10, 0, 0, 2).into(),
        Ipv4Addr::new(10, 0, 0, 1).into(),
        Ipv4Addr::new(10, 0, 0, 2).into(),
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::new(224, 0, 0, 251).into(),
        Ipv4Addr::BROADCAST.into(),
        "::ffff:10.0.0.9"
            .parse::<Ipv6Addr>()
            .expect("v4-mapped")
            .into(),
        "2001:db8::1".parse::<Ipv6Addr>().expect("global").into(),
    ];
    let got: Vec<String> = quic_addrs(&addrs, 9, InterfacePolicy::Lan)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "/ip4/10.0.0.1/udp/9/quic-v1",
            "/ip4/10.0.0.2/udp/9/quic-v1",
            "/ip6/2001:db8::1/udp/9/quic-v1"
        ]
    );
}

#[test]
fn instance_part_of_a_full_name() {
    assert_eq!(instance_of("alpha._mesh._udp.local."), "alpha");
    assert_eq!(instance_of("Lab (2)._MESH._UDP.local."), "Lab (2)");
    assert_eq!(instance_of("a.b._mesh._udp.local."), "a.b");
    assert_eq!(instance_of("_mesh._udp.local."), "_mesh._udp.local.");
    assert_eq!(instance_of("x._other._udp.local."), "x._other._udp.local.");
    assert_eq!(instance_of("é"), "é");
    // A multi-byte character where the '.' before the type would be must not panic.
    assert_eq!(instance_of("abcémesh._udp.local."), "abcémesh._udp.local.");
}

#[test]
fn host_names_are_one_lowercase_label_with_the_short_id() {
    assert_eq!(
        host_name("My Laptop.lan", "Kv8j3Rt1Qx"),
        "my-laptop-lan-kv8j3rt1qx.local."
    );
    assert_eq!(host_name("--Über__Pi--", "abc"), "ber-pi-abc.local.");
    assert_eq!(host_name("", "abc"), "mesh-abc.local.");
    assert_eq!(host_name("ü!", "abc"), "mesh-abc.local.");
    let long = host_name(&"x".repeat(200), "Kv8j3Rt1Qx");
    let label = long.strip_suffix(".local.").expect("suffix");
    assert_eq!(label.len(), MAX_LABEL_LEN);
    assert!(label.ends_with("-kv8j3rt1qx"));
}

#[test]
fn instance_names_are_the_node_name_and_the_short_id_in_one_label() {
    assert_eq!(display_name("  lab\t01\n", "abc"), "lab 01");
    assert_eq!(display_name("\u{7}", "abc"), "mesh-abc");
    assert_eq!(instance_name("lab 01", "Kv8j3Rt1Qx"), "lab 01 (Kv8j3Rt1Qx)");
    // A long name is cut (on a character boundary) so that the id still fits the label.
    let long = display_name(&"é".repeat(40), "Kv8j3Rt1Qx"); // 80 bytes
    assert_eq!(long, "é".repeat(40), "TXT `name` keeps up to 128 bytes");
    let instance = instance_name(&long, "Kv8j3Rt1Qx");
    assert!(instance.len() <= MAX_LABEL_LEN, "{instance}");
    assert!(instance.ends_with("é (Kv8j3Rt1Qx)"), "{instance}");
    let cut = display_name(&"x".repeat(200), "abc");
    assert_eq!(cut.len(), MAX_TXT_NAME_LEN);
}

/// A record under `instance`, with `txt`.
fn named_record<'a>(instance: &'a str, txt: &'a TxtProperties) -> ServiceRecord<'a> {
    ServiceRecord {
        instance,
        port: 7401,
        addrs: vec!["192.0.2.7".parse().expect("test address")],
        txt,
    }
}

fn txt_with_name(peer: &PeerId, name: &[u8]) -> TxtProperties {
    let id = peer.to_base58();
    txt(&[
        ("id", id.as_bytes()),
        ("mesh", MESH.as_bytes()),
        ("pv", b"1"),
        ("v", b"0.1.0"),
        ("name", name),
    ])
}

#[test]
fn a_peer_is_named_by_its_txt_name_else_by_its_instance_without_the_id() {
    let me = local(random_peer());
    let them = random_peer();
    let short = crate::identity::short_id(&them);
    let ours = instance_name("lab", &short);
    let name_of = |rec: &ServiceRecord<'_>| match classify(rec, &me, InterfacePolicy::Lan) {
        Verdict::Peer(p) => p.name,
        other => panic!("expected a peer, got {other:?}"),
    };

    // This version: TXT `name`, whatever the instance says.
    let named = txt_with_name(&them, b"lab");
    assert_eq!(name_of(&named_record(&ours, &named)), "lab");
    // An agent before TXT `name`: the instance name is the node name.
    let old = valid_txt(&them, MESH);
    assert_eq!(name_of(&named_record("lab", &old)), "lab");
    // Without TXT `name`, the id this version appends is dropped; another suffix is not.
    assert_eq!(name_of(&named_record(&ours, &old)), "lab");
    assert_eq!(name_of(&named_record("lab (2)", &old)), "lab (2)");
    let only_id = format!(" ({short})");
    assert_eq!(name_of(&named_record(&only_id, &old)), only_id);
    // A TXT `name` that is blank, too long, not UTF-8 or has control characters is not used;
    // the record stays valid.
    let long = vec![b'x'; MAX_TXT_NAME_LEN + 1];
    for bad in [b"  ".as_slice(), &long, &[0xff, 0xfe], b"a\nb"] {
        let txt = txt_with_name(&them, bad);
        assert_eq!(name_of(&named_record(&ours, &txt)), "lab", "{bad:?}");
    }
}

#[test]
fn ip_check_interval_rounds_up_to_seconds() {
    assert_eq!(ip_check_secs(Duration::ZERO), 0);
    assert_eq!(ip_check_secs(Duration::from_millis(300)), 1);
    assert_eq!(ip_check_secs(Duration::from_secs(1)), 1);
    assert_eq!(ip_check_secs(Duration::from_millis(1500)), 2);
}

#[test]
fn config_is_validated_and_the_service_carries_our_txt() {
    let peer = random_peer();
    let bad_mesh = MdnsConfig::new("alpha", peer, "not hex", 7400);
    assert!(matches!(
        LocalNode::from_config(&bad_mesh),
        Err(MdnsError::InvalidConfig { .. })
    ));

    let local = LocalNode::from_config(&MdnsConfig::new("Alpha", peer, MESH.to_uppercase(), 7400))
        .expect("valid");
    let info = build_service_info(&local).expect("valid service");
    let short = crate::identity::short_id(&peer);
    assert_eq!(
        info.get_fullname(),
        format!("Alpha ({short})._mesh._udp.local.")
    );
    assert!(
        !info.requires_probe(),
        "our names carry our id: announced at once"
    );
    assert_eq!(info.get_port(), 7400);
    assert!(info.get_hostname().starts_with("alpha-") && info.get_hostname().ends_with(".local."));
    let expected_id = peer.to_base58();
    assert_eq!(info.get_property_val_str("id"), Some(expected_id.as_str()));
    assert_eq!(info.get_property_val_str("mesh"), Some(MESH));
    assert_eq!(
        info.get_property_val_str("pv"),
        Some(crate::PROTOCOL_VERSION.to_string().as_str())
    );
    assert_eq!(info.get_property_val_str("v"), Some(crate::AGENT_VERSION));
    assert_eq!(info.get_property_val_str("name"), Some("Alpha"));
    // The record we send is one we accept, under the name we gave.
    let me = local_with_other_id();
    let rec = ServiceRecord {
        instance: instance_of(info.get_fullname()),
        port: 7400,
        addrs: vec!["192.0.2.1".parse().expect("ip")],
        txt: info.get_properties(),
    };
    assert!(
        matches!(classify(&rec, &me, InterfacePolicy::Lan), Verdict::Peer(p) if p.peer_id == peer && p.name == "Alpha")
    );
}

fn local_with_other_id() -> LocalNode {
    local(random_peer())
}

// ---- Real daemons on loopback -------------------------------------------------------

/// Generous ceiling for anything that crosses the daemons; measured times are printed.
const CEILING: Duration = Duration::from_secs(10);

/// Whether real mdns-sd daemons may run here. mdns-sd joins the mDNS groups on *every* up
/// interface when its thread starts, before our interface selection applies, so on a host
/// with a LAN link the test would announce its group memberships there. It runs when that
/// cannot happen (a network namespace with only `lo`, Linux), or when asked to with
/// `MESH_TEST_MDNS=1`.
fn may_run_daemons() -> Result<(), String> {
    if std::env::var_os("MESH_TEST_MDNS").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let entries = std::fs::read_dir("/sys/class/net").map_err(|_| {
        "cannot list interfaces (not Linux?); set MESH_TEST_MDNS=1 to run".to_string()
    })?;
    let mut lan = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let flags = std::fs::read_to_string(entry.path().join("flags")).unwrap_or_default();
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
        const IFF_UP: u32 = 0x1;
        const IFF_LOOPBACK: u32 = 0x8;
        if flags & IFF_UP == 0 {
            continue;
        }
        if flags & IFF_LOOPBACK == 0 {
            lan.push(name);
        }
    }
    if !lan.is_empty() {
        return Err(format!(
            "up non-loopback interfaces {lan:?} would see mDNS group joins; run in a network \
             namespace with only lo (ip netns exec), or set MESH_TEST_MDNS=1"
        ));
    }
    Ok(())
}

/// Whether multicast works on loopback here: one bare mdns-sd daemon must hear itself.
async fn loopback_multicast_works() -> Result<(), String> {
    let daemon = ServiceDaemon::new().map_err(|e| format!("cannot create a daemon: {e}"))?;
    let outcome = async {
        daemon
            .disable_interface(IfKind::All)
            .map_err(|e| e.to_string())?;
        daemon
            .enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(|e| e.to_string())?;
        let ty = "_meshprobe._udp.local.";
        let mut info = ServiceInfo::new(ty, "probe", "probe.local.", (), 9, None)
            .map_err(|e| e.to_string())?
            .enable_addr_auto();
        info.set_requires_probe(false);
        daemon.register(info).map_err(|e| e.to_string())?;
        let browse = daemon.browse(ty).map_err(|e| e.to_string())?;
        let heard = tokio::time::timeout(Duration::from_secs(3), async {
            while let Ok(event) = browse.recv_async().await {
                if matches!(event, ServiceEvent::ServiceResolved(_)) {
                    return true;
                }
            }
            false
        })
        .await;
        match heard {
            Ok(true) => Ok(()),
            _ => Err(
                "a daemon restricted to loopback does not hear itself (no multicast on lo?)"
                    .to_string(),
            ),
        }
    }
    .await;
    let _ = daemon.shutdown();
    outcome
}

async fn skip_reason() -> Option<String> {
    if let Err(reason) = may_run_daemons() {
        return Some(reason);
    }
    loopback_multicast_works().await.err()
}

/// Event buffer of this size keeps the actor's backpressure path in play.
const TEST_EVENT_CAPACITY: usize = 16;

struct TestNode {
    peer_id: PeerId,
    handle: MdnsHandle,
    events: mpsc::Receiver<DiscoveryEvent>,
    /// Everything received so far, for "never reported" assertions.
    seen: Vec<DiscoveryEvent>,
}

impl TestNode {
    fn spawn(name: &str, mesh: &str, port: u16, shutdown: &CancellationToken) -> Self {
        Self::spawn_as(random_peer(), name, mesh, port, shutdown)
    }

    /// A node with a given identity (a restart keeps its peer id).
    fn spawn_as(
        peer_id: PeerId,
        name: &str,
        mesh: &str,
        port: u16,
        shutdown: &CancellationToken,
    ) -> Self {
        let (tx, events) = mpsc::channel(TEST_EVENT_CAPACITY);
        let config = MdnsConfig::new(name, peer_id, mesh, port);
        let handle = spawn_with_policy(config, InterfacePolicy::LoopbackOnly, tx, shutdown.clone())
            .expect("mdns starts");
        Self {
            peer_id,
            handle,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for the first event matching `pred` (or fails at `CEILING`).
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&DiscoveryEvent) -> bool,
    ) -> DiscoveryEvent {
        let deadline = Instant::now() + CEILING;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("{what}: event channel closed"),
                Err(_) => panic!("{what}: not within {CEILING:?}; saw {:?}", self.seen),
            }
        }
    }

    async fn wait_found(&mut self, peer: PeerId, what: &str) -> DiscoveredPeer {
        match self
            .wait_for(
                what,
                |e| matches!(e, DiscoveryEvent::Found(p) if p.peer_id == peer),
            )
            .await
        {
            DiscoveryEvent::Found(p) => p,
            DiscoveryEvent::Lost(_) => unreachable!("the predicate only accepts Found"),
        }
    }

    /// Takes what arrived without waiting.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
    }

    fn ever_reported(&self, peer: PeerId) -> bool {
        self.seen
            .iter()
            .any(|e| matches!(e, DiscoveryEvent::Found(p) if p.peer_id == peer))
    }
}

/// Polls a cheap condition until it holds (or fails at `CEILING`).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + CEILING;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {CEILING:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_a_mesh_find_each_other_and_ignore_another_mesh() {
    if let Some(reason) = skip_reason().await {
        eprintln!("skipping the mDNS daemon test: {reason}");
        return;
    }
    let shutdown = CancellationToken::new();
    let mut alpha = TestNode::spawn("alpha", MESH, 7401, &shutdown);
    let mut gamma = TestNode::spawn("gamma", OTHER_MESH, 7403, &shutdown);
    // Once alpha and gamma have heard each other (and ignored each other: other mesh),
    // both have finished probing and answer queries.
    let settling = Instant::now();
    wait_until("alpha and gamma established", || {
        alpha.handle.stats().foreign_mesh_ignored > 0
            && gamma.handle.stats().foreign_mesh_ignored > 0
    })
    .await;
    eprintln!(
        "mdns: alpha and gamma heard each other after {:?}",
        settling.elapsed()
    );

    // beta starts later and must find the running alpha quickly: alpha answers its query.
    let started = Instant::now();
    let mut beta = TestNode::spawn("beta", MESH, 7402, &shutdown);
    let alpha_seen = beta.wait_found(alpha.peer_id, "beta finds alpha").await;
    let beta_finds_alpha = started.elapsed();
    let beta_seen = alpha.wait_found(beta.peer_id, "alpha finds beta").await;
    let alpha_finds_beta = started.elapsed();
    eprintln!(
        "mdns: beta found alpha after {beta_finds_alpha:?}, alpha found beta after {alpha_finds_beta:?}"
    );

    assert_eq!(alpha_seen.name, "alpha");
    assert_eq!(alpha_seen.version, crate::AGENT_VERSION);
    assert!(
        alpha_seen
            .addrs
            .iter()
            .all(|a| a.to_string().ends_with("/udp/7401/quic-v1")),
        "{alpha_seen:?}"
    );
    assert_eq!(beta_seen.name, "beta");

    // gamma's records reach both and are ignored (counted), never reported.
    wait_until("beta ignores gamma", || {
        beta.handle.stats().foreign_mesh_ignored > 0
    })
    .await;
    wait_until("gamma ignores beta too", || {
        gamma.handle.stats().foreign_mesh_ignored >= 2
    })
    .await;
    alpha.drain();
    beta.drain();
    gamma.drain();
    assert!(!alpha.ever_reported(gamma.peer_id) && !beta.ever_reported(gamma.peer_id));
    assert!(gamma.seen.is_empty(), "gamma reported {:?}", gamma.seen);
    assert!(
        !alpha.ever_reported(alpha.peer_id) && !beta.ever_reported(beta.peer_id),
        "heard itself"
    );
    assert_eq!(alpha.handle.stats().malformed_ignored, 0);

    // beta leaves with goodbyes: alpha hears it.
    let beta_id = beta.peer_id;
    let stopping = Instant::now();
    beta.handle.stop().await;
    alpha
        .wait_for("alpha sees beta's goodbye", |e| {
            *e == DiscoveryEvent::Lost(beta_id)
        })
        .await;
    eprintln!(
        "mdns: alpha lost beta {:?} after stop began",
        stopping.elapsed()
    );

    // Cancelling the parent token stops the others too.
    shutdown.cancel();
    alpha.handle.stop().await;
    gamma.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_name_are_all_found_each_with_its_own_addresses() {
    if let Some(reason) = skip_reason().await {
        eprintln!("skipping the mDNS daemon test: {reason}");
        return;
    }
    let shutdown = CancellationToken::new();
    // Two nodes with one name (so one host label too, as in the lab's namespaces), started at
    // once: with probing they raced for the name; the id in both names keeps them apart.
    let mut observer = TestNode::spawn("observer", MESH, 7410, &shutdown);
    let started = Instant::now();
    let mut first = TestNode::spawn("lab", MESH, 7411, &shutdown);
    let mut second = TestNode::spawn("lab", MESH, 7412, &shutdown);
    let first_seen = observer
        .wait_found(first.peer_id, "observer finds first")
        .await;
    let second_seen = observer
        .wait_found(second.peer_id, "observer finds second")
        .await;
    eprintln!(
        "mdns: the observer found both same-name nodes {:?} after they started",
        started.elapsed()
    );
    let seconds_view = second.wait_found(first.peer_id, "second finds first").await;
    let firsts_view = first.wait_found(second.peer_id, "first finds second").await;
    for (seen, port, what) in [
        (&first_seen, 7411, "first, seen by the observer"),
        (&seconds_view, 7411, "first, seen by second"),
        (&second_seen, 7412, "second, seen by the observer"),
        (&firsts_view, 7412, "second, seen by first"),
    ] {
        assert_eq!(seen.name, "lab", "{what}: {seen:?}");
        let port = format!("/udp/{port}/quic-v1");
        assert!(
            !seen.addrs.is_empty() && seen.addrs.iter().all(|a| a.to_string().ends_with(&port)),
            "{what} must carry its own addresses only: {seen:?}"
        );
    }
    // Nobody reported itself, and nothing was taken for malformed.
    observer.drain();
    first.drain();
    second.drain();
    assert!(!first.ever_reported(first.peer_id) && !second.ever_reported(second.peer_id));
    assert_eq!(observer.handle.stats().malformed_ignored, 0);
    shutdown.cancel();
    observer.handle.stop().await;
    first.handle.stop().await;
    second.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_at_once_stays_found_after_its_goodbye() {
    if let Some(reason) = skip_reason().await {
        eprintln!("skipping the mDNS daemon test: {reason}");
        return;
    }
    let shutdown = CancellationToken::new();
    let mut observer = TestNode::spawn("observer", MESH, 7420, &shutdown);
    let node = TestNode::spawn("node", MESH, 7421, &shutdown);
    let marker = TestNode::spawn("marker", MESH, 7422, &shutdown);
    let id = node.peer_id;
    observer.wait_found(id, "observer finds node").await;
    if !observer.ever_reported(marker.peer_id) {
        observer
            .wait_found(marker.peer_id, "observer finds marker")
            .await;
    }

    // A restart: goodbyes for the names, then the same identity announces the same names at
    // once (no probing). Receivers drop a goodbye'd record 1 s later unless it is announced
    // again in between, which it is.
    node.handle.stop().await;
    let restarted = TestNode::spawn_as(id, "node", MESH, 7421, &shutdown);
    // The marker's goodbye is sent after the node's, so its `Lost` comes after the node's
    // records would have been dropped: by then every event about the node has arrived.
    let marker_id = marker.peer_id;
    marker.handle.stop().await;
    observer
        .wait_for("observer sees the marker's goodbye", |e| {
            *e == DiscoveryEvent::Lost(marker_id)
        })
        .await;
    let about_node: Vec<&DiscoveryEvent> = observer
        .seen
        .iter()
        .filter(|e| match e {
            DiscoveryEvent::Found(p) => p.peer_id == id,
            DiscoveryEvent::Lost(p) => *p == id,
        })
        .collect();
    assert!(
        matches!(about_node.last(), Some(DiscoveryEvent::Found(_))),
        "the restarted node must end up found: {about_node:?}"
    );
    shutdown.cancel();
    observer.handle.stop().await;
    restarted.handle.stop().await;
}
