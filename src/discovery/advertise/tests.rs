//! Tests of LAN advertisement: the rule ([`plan`]) and the record (pure), and the registrar
//! with real mdns-sd daemons on loopback.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};

use super::registrar::{LanRegistrar, RegistrarConfig};
use super::*;
use crate::state::ServiceRecord;
use crate::supervisor::spec::{HealthCheck, HealthSpec, PortSpec};

const HERE: &str = "id-here";
const THERE: &str = "id-there";

fn web_spec() -> ServiceSpec {
    let mut spec = ServiceSpec::new("web", "python3");
    spec.args = vec!["-m".into(), "http.server".into(), "$PORT".into()];
    spec.ports = vec![PortSpec::auto()];
    spec.advertise = Some("_http._tcp".into());
    spec
}

fn with_health(mut spec: ServiceSpec) -> ServiceSpec {
    spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
    spec
}

/// A document with `spec` wanted running and one instance of it per `(node, state, ports)`.
fn state_with(spec: &ServiceSpec, instances: &[(&str, InstanceState, &[u64])]) -> MeshState {
    let mut state = MeshState::default();
    state.services.insert(
        spec.name.clone(),
        ServiceRecord {
            spec_json: serde_json::to_string(spec).expect("serialises"),
            ..Default::default()
        },
    );
    for (node, instance_state, ports) in instances {
        state.instances.insert(
            format!("{}@{node}", spec.name),
            InstanceRecord {
                service: spec.name.clone(),
                node: NodeId::from(*node),
                state: *instance_state,
                ports: ports.to_vec(),
                ..Default::default()
            },
        );
    }
    state
}

fn plan_of(state: &MeshState) -> AdvertisePlan {
    plan(state, &ParsedSpecs::parse(state), &NodeId::from(HERE))
}

#[test]
fn a_healthy_copy_here_is_advertised_on_its_first_published_port() {
    let state = state_with(
        &web_spec(),
        &[(HERE, InstanceState::Healthy, &[20001, 20002])],
    );
    let plan = plan_of(&state);
    assert_eq!(
        plan.here.get("web"),
        Some(&Advertisement {
            service: "web".into(),
            service_type: "_http._tcp".into(),
            port: 20001,
        })
    );
    assert!(
        plan.elsewhere.is_empty() && plan.refused.is_empty(),
        "{plan:?}"
    );
    let advertisement = &plan.here["web"];
    assert_eq!(advertisement.type_domain(), "_http._tcp.local.");
    assert_eq!(advertisement.fullname(), "web._http._tcp.local.");
}

#[test]
fn only_a_ready_copy_is_advertised() {
    use InstanceState::*;
    let all = [
        Stopped, Starting, Healthy, Unhealthy, Stopping, Backoff, Failed, Refused,
    ];
    for state in all {
        let without_check = plan_of(&state_with(&web_spec(), &[(HERE, state, &[20001])]));
        let with_check = plan_of(&state_with(
            &with_health(web_spec()),
            &[(HERE, state, &[20001])],
        ));
        // Without a health check the supervisor publishes `healthy` as soon as the process
        // runs; `starting` would mean the same, so it counts too.
        assert_eq!(
            without_check.here.contains_key("web"),
            matches!(state, Healthy | Starting),
            "{state} without a health check"
        );
        assert_eq!(
            with_check.here.contains_key("web"),
            state == Healthy,
            "{state} with a health check"
        );
    }
}

#[test]
fn a_service_not_wanted_running_or_not_asking_is_not_advertised() {
    let mut state = state_with(&web_spec(), &[(HERE, InstanceState::Healthy, &[20001])]);
    state.services.get_mut("web").expect("inserted").desired = Desired::Stopped;
    assert_eq!(plan_of(&state), AdvertisePlan::default());
    state.services.get_mut("web").expect("inserted").desired = Desired::Removed;
    assert_eq!(plan_of(&state), AdvertisePlan::default());

    let mut plain = web_spec();
    plain.advertise = None;
    let state = state_with(&plain, &[(HERE, InstanceState::Healthy, &[20001])]);
    assert_eq!(plan_of(&state), AdvertisePlan::default());

    // An instance whose service record is gone (removed and collected) is not advertised.
    let mut state = state_with(&web_spec(), &[(HERE, InstanceState::Healthy, &[20001])]);
    state.services.clear();
    assert_eq!(plan_of(&state), AdvertisePlan::default());
}

#[test]
fn copies_on_other_nodes_are_elsewhere_not_here() {
    let state = state_with(
        &web_spec(),
        &[
            (HERE, InstanceState::Healthy, &[20001]),
            (THERE, InstanceState::Healthy, &[20005]),
            ("id-third", InstanceState::Stopping, &[20009]),
        ],
    );
    let ours = plan_of(&state);
    assert_eq!(ours.here.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(
        ours.elsewhere.into_iter().collect::<Vec<_>>(),
        [("web".to_string(), NodeId::from(THERE))]
    );

    // The same document read on the other node: the roles swap.
    let there = plan(&state, &ParsedSpecs::parse(&state), &NodeId::from(THERE));
    assert_eq!(there.here["web"].port, 20005);
    assert!(
        there
            .elsewhere
            .contains(&("web".to_string(), NodeId::from(HERE)))
    );
}

#[test]
fn a_copy_elsewhere_that_goes_away_makes_ours_announce_again() {
    let both = state_with(
        &web_spec(),
        &[
            (HERE, InstanceState::Healthy, &[20001]),
            (THERE, InstanceState::Healthy, &[20005]),
        ],
    );
    let before = plan_of(&both).elsewhere;
    // The other copy stops (a drain, the loser of a healed partition): ours goes on.
    let alone = state_with(
        &web_spec(),
        &[
            (HERE, InstanceState::Healthy, &[20001]),
            (THERE, InstanceState::Stopping, &[20005]),
        ],
    );
    let after = plan_of(&alone);
    assert_eq!(
        withdrawn_elsewhere(&before, &after)
            .into_iter()
            .collect::<Vec<_>>(),
        ["web"]
    );
    // Nothing to do when ours is not advertised either, or when nothing went away.
    let neither = state_with(
        &web_spec(),
        &[
            (HERE, InstanceState::Stopping, &[20001]),
            (THERE, InstanceState::Stopping, &[20005]),
        ],
    );
    assert!(withdrawn_elsewhere(&before, &plan_of(&neither)).is_empty());
    assert!(withdrawn_elsewhere(&before, &plan_of(&both)).is_empty());
}

#[test]
fn a_copy_here_that_cannot_be_advertised_says_why() {
    let state = state_with(&web_spec(), &[(HERE, InstanceState::Healthy, &[])]);
    let plan = plan_of(&state);
    assert!(plan.here.is_empty());
    assert_eq!(plan.refused["web"], "the running copy published no port");

    let state = state_with(&web_spec(), &[(HERE, InstanceState::Healthy, &[70000])]);
    assert!(plan_of(&state).refused["web"].contains("70000"));

    // A spec written by another agent version with a type this one refuses.
    let mut spec = web_spec();
    spec.advertise = Some("http".into());
    let state = state_with(&spec, &[(HERE, InstanceState::Healthy, &[20001])]);
    let plan = plan_of(&state);
    assert!(plan.here.is_empty());
    assert!(
        plan.refused["web"].starts_with("advertise `http`: expected"),
        "{plan:?}"
    );
    // On another node it is simply not advertised, and not this node's to report.
    let state = state_with(&spec, &[(THERE, InstanceState::Healthy, &[20001])]);
    assert_eq!(plan_of(&state), AdvertisePlan::default());
}

#[test]
fn host_names_are_one_label_unique_per_copy() {
    assert_eq!(host_name("web", "Kv8j3Rt1Qx"), "web-kv8j3rt1qx.local.");
    let long = "a".repeat(63);
    let host = host_name(&long, "Kv8j3Rt1Qx");
    let label = host.strip_suffix(".local.").expect("in .local.");
    assert_eq!(label.len(), 63);
    assert!(label.ends_with("-kv8j3rt1qx"));
    // A cut that ends on a '-' does not leave two in a row.
    let dashed = format!("{}-b", "a".repeat(51));
    assert_eq!(
        host_name(&dashed, "Kv8j3Rt1Qx"),
        format!("{}-kv8j3rt1qx.local.", "a".repeat(51))
    );
}

#[test]
fn the_record_carries_the_service_name_port_and_node() {
    let advertisement = Advertisement {
        service: "web".into(),
        service_type: "_http._tcp".into(),
        port: 20001,
    };
    let info = service_info(&advertisement, "kitchen-pi", "web-kv8j3rt1qx.local.").expect("valid");
    assert_eq!(info.get_fullname(), "web._http._tcp.local.");
    assert_eq!(info.get_type(), "_http._tcp.local.");
    assert_eq!(info.get_hostname(), "web-kv8j3rt1qx.local.");
    assert_eq!(info.get_port(), 20001);
    assert!(info.is_addr_auto());
    assert_eq!(info.get_property_val_str(TXT_NODE), Some("kitchen-pi"));
    assert_eq!(info.get_property_val_str(TXT_SERVICE), Some("web"));
    // A node name too long for one TXT string is cut on a character boundary.
    let long = "é".repeat(200);
    let info = service_info(&advertisement, &long, "web-x.local.").expect("valid");
    let node = info.get_property_val_str(TXT_NODE).expect("present");
    assert!(node.len() <= MAX_TXT_NODE_NAME_LEN && long.starts_with(node));
}

// ---- Real daemons on loopback -------------------------------------------------------

/// Ceiling for anything that crosses the daemons (probing alone takes ~0.8 s).
const CEILING: Duration = Duration::from_secs(10);

/// Whether real mdns-sd daemons may run here: mdns-sd joins the mDNS groups on every up
/// interface before our interface selection applies, so only where every up interface is
/// loopback (a network namespace with only `lo`), or when asked with `MESH_TEST_MDNS=1`.
fn skip_reason() -> Option<String> {
    if std::env::var_os("MESH_TEST_MDNS").is_some_and(|v| v == "1") {
        return None;
    }
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Some("cannot list interfaces; set MESH_TEST_MDNS=1 to run".into());
    };
    const IFF_UP: u32 = 0x1;
    const IFF_LOOPBACK: u32 = 0x8;
    let lan: Vec<String> = entries
        .flatten()
        .filter(|entry| {
            let flags = std::fs::read_to_string(entry.path().join("flags")).unwrap_or_default();
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
            flags & IFF_UP != 0 && flags & IFF_LOOPBACK == 0
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    (!lan.is_empty()).then(|| {
        format!(
            "up non-loopback interfaces {lan:?} would see mDNS traffic; run in a network \
             namespace with only lo (unshare -rn), or set MESH_TEST_MDNS=1"
        )
    })
}

fn registrar(node: &str) -> (LanRegistrar, PeerId) {
    let peer_id = Keypair::generate_ed25519().public().to_peer_id();
    let registrar = LanRegistrar::loopback_only(RegistrarConfig {
        node_name: node.into(),
        peer_id,
        ip_check_interval: Duration::from_secs(1),
    });
    (registrar, peer_id)
}

/// `service` advertised as `_http._tcp` on `port`. Each test uses its own service name: the
/// tests run at once, on one loopback.
fn http(service: &str, port: u16) -> BTreeMap<String, Advertisement> {
    BTreeMap::from([(
        service.to_string(),
        Advertisement {
            service: service.into(),
            service_type: "_http._tcp".into(),
            port,
        },
    )])
}

/// A third-party view: a bare mdns-sd daemon on loopback browsing `_http._tcp`.
struct Browser {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
}

impl Browser {
    fn new() -> Self {
        let daemon = ServiceDaemon::new().expect("daemon");
        daemon.disable_interface(IfKind::All).expect("disable");
        daemon
            .enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .expect("enable loopback");
        let events = daemon.browse("_http._tcp.local.").expect("browse");
        Self { daemon, events }
    }

    /// Waits for the first event `pick` maps to a value.
    async fn wait<T>(&self, what: &str, mut pick: impl FnMut(&ServiceEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + CEILING;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv_async()).await {
                Ok(Ok(event)) => {
                    if let Some(value) = pick(&event) {
                        return value;
                    }
                }
                Ok(Err(_)) => panic!("{what}: browse channel closed"),
                Err(_) => panic!("{what}: not within {CEILING:?}"),
            }
        }
    }

    async fn resolved(&self, fullname: &str) -> (u16, String, String) {
        self.wait(&format!("{fullname} resolved"), |event| match event {
            ServiceEvent::ServiceResolved(service) if service.fullname == fullname => Some((
                service.port,
                service.host.clone(),
                service
                    .txt_properties
                    .get_property_val_str(TXT_NODE)
                    .unwrap_or_default()
                    .to_string(),
            )),
            _ => None,
        })
        .await
    }

    async fn removed(&self, fullname: &str) {
        self.wait(&format!("{fullname} removed"), |event| match event {
            ServiceEvent::ServiceRemoved(_, name) if name == fullname => Some(()),
            _ => None,
        })
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_service_is_browsed_then_withdrawn_with_goodbyes() {
    if let Some(reason) = skip_reason() {
        return eprintln!("skipping the mDNS daemon test: {reason}");
    }
    let browser = Browser::new();
    let (mut registrar, peer_id) = registrar("alpha");
    assert!(registrar.apply(&http("solo", 20001)).is_empty());
    let (port, host, node) = browser.resolved("solo._http._tcp.local.").await;
    assert_eq!(port, 20001);
    assert_eq!(
        host,
        host_name("solo", &crate::identity::short_id(&peer_id))
    );
    assert_eq!(node, "alpha");
    assert_eq!(registrar.registered()["solo"], "solo");

    // A new port replaces the record at once, under the same name (no second probe that the
    // old record could answer).
    assert!(registrar.apply(&http("solo", 20002)).is_empty());
    let port = browser
        .wait("the new port", |event| match event {
            ServiceEvent::ServiceResolved(service)
                if service.fullname == "solo._http._tcp.local." && service.port == 20002 =>
            {
                Some(service.port)
            }
            _ => None,
        })
        .await;
    assert_eq!(port, 20002);

    // Not wanted any more: goodbyes.
    assert!(registrar.apply(&BTreeMap::new()).is_empty());
    browser.removed("solo._http._tcp.local.").await;
    registrar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_is_renamed_and_takes_the_name_back_when_the_first_withdraws() {
    if let Some(reason) = skip_reason() {
        return eprintln!("skipping the mDNS daemon test: {reason}");
    }
    let browser = Browser::new();
    let (mut first, _) = registrar("alpha");
    assert!(first.apply(&http("web", 20001)).is_empty());
    browser.resolved("web._http._tcp.local.").await;

    // A second copy (a drain with no gap) probes the taken name and is renamed.
    let (mut second, _) = registrar("beta");
    assert!(second.apply(&http("web", 20002)).is_empty());
    let renamed = browser
        .wait("the second copy under another name", |event| match event {
            ServiceEvent::ServiceResolved(service)
                if service.fullname.starts_with("web") && service.port == 20002 =>
            {
                Some(service.fullname.clone())
            }
            _ => None,
        })
        .await;
    assert_ne!(renamed, "web._http._tcp.local.");
    let deadline = tokio::time::Instant::now() + CEILING;
    while !second.is_renamed("web") {
        let event = tokio::time::timeout_at(deadline, second.next_event())
            .await
            .expect("the rename is reported");
        second.on_event(event);
    }

    // The first copy stops; the second takes the service's own name back.
    first.shutdown().await;
    browser.removed("web._http._tcp.local.").await;
    second.reclaim("web").await.expect("registers again");
    let (port, _, node) = browser.resolved("web._http._tcp.local.").await;
    assert_eq!((port, node.as_str()), (20002, "beta"));
    assert_eq!(second.registered()["web"], "web");
    second.shutdown().await;
}
