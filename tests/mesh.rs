//! In-process multi-node tests: several nodes in one process on real QUIC sockets (loopback),
//! found through the in-memory discovery registry. Every wait is on a condition with a
//! generous ceiling; nothing sleeps a fixed time.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use mesh::admission::MeshKey;
use mesh::api::PeerEntry;
use mesh::api::client::ApiClient;
use mesh::membership::PeerState;
use mesh::node::{DiscoveryMode, NodeConfig, NodeHandle, start_node};

use cluster::{CEILING, Cluster, peer_state as state_of, wait_peer_state as wait_state};

/// `n` linked nodes on QUIC over loopback, with the cluster (its LAN and key) they share.
async fn start_mesh(n: usize) -> (Vec<NodeHandle>, Cluster) {
    let cluster = Cluster::new();
    let nodes = cluster.start_linked("n", n).await;
    (nodes, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_with_names_and_hardware() {
    let (nodes, _cluster) = start_mesh(3).await;
    // A peer can be `alive` through gossip a moment before our own link to it is admitted:
    // wait for both links (with their handshake info), then check what they carry.
    let snap = nodes[0]
        .wait_for(CEILING, |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.connected && p.info.is_some())
        })
        .await
        .expect("both peers connected and admitted");
    assert_eq!(snap.peers.len(), 2);
    for p in &snap.peers {
        let info = p.info.as_ref().expect("handshake info of a connected peer");
        assert!(info.name.starts_with('n'));
        assert!(info.hardware.cores >= 1);
        assert!(p.connected);
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_dead_and_graceful_stop_is_left() {
    let (nodes, _cluster) = start_mesh(4).await;
    let (crashed, leaver) = (&nodes[2], &nodes[3]);
    crashed.abort();
    for n in &nodes[..2] {
        wait_state(n, crashed.peer_id(), PeerState::Dead).await;
    }
    leaver.shutdown().await;
    for n in &nodes[..2] {
        wait_state(n, leaver.peer_id(), PeerState::Left).await;
    }
    // A dead node stays dead, a left one stays left: nothing flaps back.
    let snap = nodes[0].snapshot();
    assert_eq!(state_of(&snap, crashed.peer_id()), Some(PeerState::Dead));
    assert_eq!(state_of(&snap, leaver.peer_id()), Some(PeerState::Left));
    for n in &nodes[..2] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_id_and_is_alive_again() {
    let (nodes, cluster) = start_mesh(2).await;
    let mut config = cluster.config("again");
    let first = start_node(config.clone()).await.unwrap();
    let id = first.peer_id();
    wait_state(&nodes[0], id, PeerState::Alive).await;
    first.abort();
    wait_state(&nodes[0], id, PeerState::Dead).await;
    // Same key pair (as the agent loads it from its data dir), new process incarnation.
    config.name = "again".into();
    let second = start_node(config).await.unwrap();
    assert_eq!(second.peer_id(), id);
    wait_state(&nodes[0], id, PeerState::Alive).await;
    wait_state(&nodes[1], id, PeerState::Alive).await;
    second.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_another_key_is_refused_both_ways() {
    let (nodes, _cluster) = start_mesh(2).await;
    let target = nodes[0].snapshot().local.listen_addrs[0].clone();
    // The intruder knows the address (a static peer), but not the key.
    let mut config = NodeConfig::for_test("intruder", MeshKey::generate(), DiscoveryMode::Off);
    config.static_peers = vec![target];
    let intruder = start_node(config).await.unwrap();
    // Wait until the member side has refused at least one handshake.
    let refused = nodes[0]
        .wait_for(CEILING, |s| {
            let a = &s.stats.admission;
            a.bad_proof + a.denied + a.protocol + a.transport + a.timeout + a.abandoned > 0
        })
        .await;
    assert!(refused.is_some(), "no refusal counted");
    let denied = intruder
        .wait_for(CEILING, |s| s.stats.admission.bad_proof > 0)
        .await;
    assert!(denied.is_some(), "the intruder never saw a bad proof");
    assert!(
        intruder.snapshot().peers.is_empty(),
        "the intruder lists no one"
    );
    for n in &nodes {
        assert!(
            state_of(&n.snapshot(), intruder.peer_id()).is_none(),
            "a member lists the intruder"
        );
    }
    intruder.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_peer_joins_without_discovery() {
    let (nodes, cluster) = start_mesh(2).await;
    let mut config = cluster.config("static");
    config.discovery = DiscoveryMode::Off;
    config.static_peers = vec![nodes[0].snapshot().local.listen_addrs[0].clone()];
    let joiner = start_node(config).await.unwrap();
    // It dialed only node 0, and learns node 1 through membership gossip.
    for n in &nodes {
        wait_state(&joiner, n.peer_id(), PeerState::Alive).await;
        wait_state(n, joiner.peer_id(), PeerState::Alive).await;
    }
    joiner.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_peers_and_status_as_documented() {
    let (nodes, _cluster) = start_mesh(2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(mesh::api::server::serve(
        listener,
        nodes[0].clone(),
        stop.clone(),
    ));
    let (rows, raw, status) = tokio::task::spawn_blocking(move || {
        let client = ApiClient::new(&addr.to_string());
        let rows = client.get::<Vec<PeerEntry>>("/v1/peers").unwrap();
        let raw = client.request("GET", "/v1/peers", None).unwrap().2;
        let status = client.request("GET", "/v1/status", None).unwrap().2;
        (rows, raw, status)
    })
    .await
    .unwrap();
    assert!(rows.version.is_some());
    assert_eq!(rows.body.len(), 2);
    assert!(rows.body[0].is_self, "self comes first");
    assert_eq!(rows.body[1].state, "alive");
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for field in [
        "id",
        "name",
        "self",
        "state",
        "addrs",
        "rtt_ms",
        "last_seen_ms_ago",
        "os",
        "arch",
        "device_class",
        "profile",
        "score",
        "version",
    ] {
        assert!(
            json[1].get(field).is_some(),
            "peers[1] lacks {field}: {json}"
        );
    }
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["peers"]["alive"], 1);
    assert_eq!(status["mesh_id"].as_str().unwrap().len(), 16);
    stop.cancel();
    server.await.unwrap().unwrap();
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_on_change() {
    let (nodes, _cluster) = start_mesh(2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(mesh::api::server::serve(
        listener,
        nodes[0].clone(),
        stop.clone(),
    ));
    // Wait until the other node's record has synced, so the next change is the tag.
    let other = nodes[1].peer_id().to_base58();
    let mut rx = nodes[0].state().subscribe();
    tokio::time::timeout(CEILING, async {
        while !rx.borrow_and_update().state.nodes.contains_key(&other) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the other node's record syncs");
    let (got_first, first_done) = tokio::sync::oneshot::channel();
    let poll = tokio::task::spawn_blocking(move || {
        let client = ApiClient::new(&addr.to_string());
        let first = client.get::<Vec<PeerEntry>>("/v1/peers").unwrap();
        let v = first.version.unwrap();
        let _ = got_first.send(());
        // Like `mesh peers --watch`: poll again after every answer until the tag shows. Each
        // poll waits up to 20 s, so finishing well before that means a change woke it.
        let t = std::time::Instant::now();
        let mut seen = v;
        loop {
            let r = client
                .get::<Vec<PeerEntry>>(&format!("/v1/peers?wait={seen}&timeout_ms=20000"))
                .unwrap();
            seen = r.version.unwrap();
            let tagged = r.body.iter().any(|row| row.tags.contains_key("role"));
            if tagged || t.elapsed() > CEILING {
                return (v, seen, r.body, t.elapsed());
            }
        }
    });
    // A tag change on the other node (replicated state, not membership) must wake the poll.
    // It comes after the first GET; if it lands before the poll parks, the poll answers at once.
    first_done.await.unwrap();
    nodes[1].state().set_tag("role", Some("nas")).await.unwrap();
    let (before, after, body, took) = poll.await.unwrap();
    assert!(after > before);
    assert!(
        took < Duration::from_secs(20),
        "answered on change, not at the timeout"
    );
    let row = body
        .iter()
        .find(|r| r.id == other)
        .expect("the other node is listed");
    assert_eq!(row.tags.get("role").map(String::as_str), Some("nas"));
    stop.cancel();
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Both sides dial as soon as they learn of each other (no tie-break delay); when the dials
/// cross, both keep the same one connection, and the pair is admitted and synced all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_whose_dials_cross_keeps_one_connection() {
    let (nodes, _cluster) = start_mesh(4).await;
    for n in &nodes {
        let one_each = n
            .wait_for(CEILING, |s| {
                s.stats.connections == nodes.len() - 1
                    && s.peers
                        .iter()
                        .all(|p| p.connected && p.state == PeerState::Alive)
            })
            .await;
        assert!(
            one_each.is_some(),
            "{} does not settle on one connection per peer: {:?}",
            n.peer_id(),
            n.snapshot().stats
        );
    }
    // Sync runs over what is left: a tag written on one node reaches every other.
    nodes[0]
        .state()
        .set_tag("zone", Some("attic"))
        .await
        .expect("tag written");
    let id = nodes[0].peer_id().to_base58();
    for n in &nodes[1..] {
        let mut rx = n.state().subscribe();
        let seen = tokio::time::timeout(CEILING, async {
            loop {
                if rx
                    .borrow_and_update()
                    .state
                    .nodes
                    .get(&id)
                    .is_some_and(|r| r.tags.get("zone").map(String::as_str) == Some("attic"))
                {
                    return;
                }
                rx.changed().await.expect("the state actor runs");
            }
        })
        .await;
        assert!(seen.is_ok(), "{} never got the tag", n.peer_id());
    }
    let closed: u64 = nodes
        .iter()
        .map(|n| n.snapshot().stats.duplicate_connections_closed)
        .sum();
    eprintln!("duplicate connections closed across 4 nodes: {closed}");
    for n in &nodes {
        n.shutdown().await;
    }
}
