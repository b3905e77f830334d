//! Rendezvous, TCP links and peer exchange with real agents on loopback (`--no-mdns`, no
//! `--peer` between members unless a test says so): members given only a rendezvous point's
//! address find each other; a point's restart is survived; a member given one other member
//! reaches all (peer exchange); an open point serves another mesh without mixing the two; a
//! third-party point (libp2p's stock server over TCP, run here, not a mesh agent) works as a
//! mesh's only point. The routed-lab versions (two subnets, UDP blocked) are in
//! `tests/lab_rendezvous.rs`.

#[path = "support/agent.rs"]
mod agent;

use agent::{Agent, key_file, wait_until};
use serde_json::Value;

/// A port free for both UDP and TCP on loopback now (for a point restarted at the same
/// address).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `--rendezvous` address an agent serving a point prints, TCP or QUIC.
fn point_addr(point: &Agent, transport: &str) -> String {
    let status = point.status().expect("status");
    status["rendezvous_point"]["addrs"]
        .as_array()
        .expect("a served point lists its addresses")
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.contains(transport))
        .expect("an address of that transport")
        .to_string()
}

/// Whether `agent` lists every id of `ids` alive.
fn sees_alive(agent: &Agent, ids: &[String]) -> bool {
    let me = agent.id();
    ids.iter()
        .filter(|id| **id != me)
        .all(|id| agent.state_of(id).as_deref() == Some("alive"))
}

/// Waits until each of `agents` lists all the others alive; on time-out, panics with every
/// agent's view and log tail.
fn wait_all_alive(what: &str, agents: &[&Agent]) {
    let ids: Vec<String> = agents.iter().map(|a| a.id()).collect();
    let start = std::time::Instant::now();
    while !agents.iter().all(|a| sees_alive(a, &ids)) {
        if start.elapsed() > agent::CEILING {
            let views: Vec<String> = agents
                .iter()
                .map(|a| {
                    let rows = a.json(&["peers", "--all"]);
                    let seen: Vec<String> = rows
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .map(|p| format!("{}:{}", p["name"], p["state"]))
                                .collect()
                        })
                        .unwrap_or_default();
                    let log = a.log();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    format!(
                        "{} sees {seen:?}\n{}",
                        a.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("timed out waiting until {what}:\n{}", views.join("\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// This node's registration state at its first point (`mesh status --json`).
fn registered(agent: &Agent) -> bool {
    agent.status().ok().is_some_and(|s| {
        s["rendezvous"][0]["registered_for_s"]
            .as_u64()
            .is_some_and(|left| left > 0)
    })
}

#[test]
fn members_given_only_a_point_find_each_other_survive_its_restart_and_exchange_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let point_args = ["--rendezvous-server", "--listen", listen.as_str()];
    let mut point = Agent::start_with(tmp.path(), "point", &key, &[], &point_args);
    // The fixed port's address (the test agent also listens on a random one).
    let via = point_addr(&point, &format!("/tcp/{port}/"));
    let rv = ["--rendezvous", via.as_str()];
    let a = Agent::start_with(tmp.path(), "a", &key, &[], &rv);
    let b = Agent::start_with(tmp.path(), "b", &key, &[], &rv);
    let c = Agent::start_with(tmp.path(), "c", &key, &[], &rv);
    wait_all_alive(
        "a, b, c and the point see each other",
        &[&point, &a, &b, &c],
    );
    wait_until("a, b and c registered at the point", || {
        [&a, &b, &c].iter().all(|x| registered(x)).then_some(())
    });
    let served = point.status().unwrap()["rendezvous_point"].clone();
    assert_eq!(served["open"], false);
    assert!(served["registrations"].as_u64().unwrap() >= 3, "{served}");
    assert_eq!(
        served["not_admitted"], 0,
        "members wait for admission: {served}"
    );

    // The point goes away: the members stay linked, and one given only a member's address
    // (peer exchange) reaches every member.
    point.signal("-TERM");
    wait_until("a sees the point gone", || {
        let state = a
            .json(&["peers"])
            .as_array()?
            .iter()
            .find(|p| p["name"] == "point")?["state"]
            .as_str()?
            .to_string();
        (state == "left").then_some(())
    });
    let d = Agent::start(tmp.path(), "d", &key, &[a.quic_addr()]);
    wait_all_alive("d reaches b and c through a's document", &[&a, &b, &c, &d]);

    // The point comes back at the same address: members register again, and a newcomer given
    // only the point finds the mesh.
    let point = Agent::start_with(tmp.path(), "point", &key, &[], &point_args);
    wait_until("a registered again at the restarted point", || {
        registered(&a).then_some(())
    });
    let e = Agent::start_with(tmp.path(), "e", &key, &[], &rv);
    wait_all_alive("e finds everyone", &[&point, &a, &b, &c, &d, &e]);
    // Tags written anywhere reach the newcomer.
    assert!(a.cli(&["tag", "add", "site=attic"]).status.success());
    wait_until("e sees a's tag", || {
        e.json(&["peers"])
            .as_array()?
            .iter()
            .any(|p| p["name"] == "a" && p["tags"]["site"] == "attic")
            .then_some(())
    });
}

#[test]
fn an_open_point_serves_another_mesh_without_mixing_the_two() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = key_file(tmp.path());
    let other_dir = tmp.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let theirs = key_file(&other_dir);
    let point = Agent::start_with(
        tmp.path(),
        "point",
        &ours,
        &[],
        &["--rendezvous-server", "--rendezvous-open"],
    );
    let via = point_addr(&point, "/quic-v1/");
    let rv = ["--rendezvous", via.as_str()];
    let a = Agent::start_with(tmp.path(), "a", &ours, &[], &rv);
    let x = Agent::start_with(&other_dir, "x", &theirs, &[], &rv);
    let y = Agent::start_with(&other_dir, "y", &theirs, &[], &rv);
    wait_all_alive("x and y find each other at our open point", &[&x, &y]);
    wait_all_alive("a and the point", &[&point, &a]);
    wait_until("x registered at the open point", || {
        registered(&x).then_some(())
    });
    // Neither side lists the other mesh's nodes, and none of them was admitted by the other.
    let names = |agent: &Agent| -> Vec<String> {
        agent
            .json(&["peers", "--all"])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    for theirs in [&x, &y] {
        let seen = names(theirs);
        assert!(
            !seen.iter().any(|n| n == "a" || n == "point"),
            "{} lists {seen:?}",
            theirs.name
        );
    }
    for ours in [&a, &point] {
        let seen = names(ours);
        assert!(
            !seen.iter().any(|n| n == "x" || n == "y"),
            "{} lists {seen:?}",
            ours.name
        );
    }
    let served = point.status().unwrap()["rendezvous_point"].clone();
    assert_eq!(served["open"], true);
    assert!(served["registrations"].as_u64().unwrap() >= 3, "{served}");
}

/// libp2p's stock rendezvous server, alone on TCP (Noise, Yamux), in a thread of its own:
/// what a third party would run as a point. Returns its address with `/p2p/ID`.
fn third_party_point() -> String {
    use futures::StreamExt;
    use libp2p::{SwarmBuilder, noise, rendezvous, tcp, yamux};
    // One message, once: a rendezvous channel is the bounded kind the lint asks for.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut swarm = SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    tcp::Config::default(),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|_| {
                    rendezvous::server::Behaviour::new(rendezvous::server::Config::default())
                })
                .unwrap()
                .with_swarm_config(|c| {
                    c.with_idle_connection_timeout(std::time::Duration::from_secs(60))
                })
                .build();
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
            let id = *swarm.local_peer_id();
            loop {
                if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                    swarm.select_next_some().await
                {
                    tx.send(format!("{address}/p2p/{id}")).unwrap();
                    break;
                }
            }
            loop {
                swarm.select_next_some().await;
            }
        });
    });
    rx.recv().unwrap()
}

#[test]
fn a_third_party_point_over_tcp_is_enough_for_a_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let via = third_party_point();
    let rv = ["--rendezvous", via.as_str()];
    let a = Agent::start_with(tmp.path(), "a", &key, &[], &rv);
    let b = Agent::start_with(tmp.path(), "b", &key, &[], &rv);
    wait_all_alive("a and b find each other through the stock point", &[&a, &b]);
    wait_until("both registered", || {
        [&a, &b].iter().all(|x| registered(x)).then_some(())
    });
    // The point is no member: listed nowhere, and not backed off.
    for x in [&a, &b] {
        let peers = x.json(&["peers", "--all"]);
        assert_eq!(peers.as_array().unwrap().len(), 2, "{peers}");
        assert_eq!(x.status().unwrap()["counters"]["refused_in_backoff"], 0);
    }
}
