//! In-process tests of the replicated state: several nodes in one process on real QUIC sockets
//! (loopback), found through the in-memory discovery registry, each with its own state actor
//! and (where a test needs it) its own data dir in a tempdir.
//!
//! Covered here: convergence after concurrent edits, restart from the persisted document, a
//! corrupt document recovered from peers, a torn tail ignored, a node with the wrong mesh key
//! never receiving the document, and divergent edits on both sides of an emulated partition
//! merging on heal. Merge semantics as such are property-tested on the pure functions in
//! `tests/state_merge.rs`; real partitions (a network that silently drops packets) are covered
//! by the lab (`tests/lab.rs`).
//!
//! Every wait is on a condition (a state or node snapshot) with a generous ceiling; nothing
//! sleeps a fixed time.

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::{AutoCommit, LoadOptions, OnPartialLoad};
use libp2p::PeerId;
use mesh::admission::MeshKey;
use mesh::node::{DiscoveryMode, NodeConfig, NodeHandle, start_node};
use mesh::state::actor::{STATE_DIR, StateSnapshot};
use tempfile::TempDir;

use cluster::{CEILING, Cluster, init_logs, shutdown_all, wait_state_of, wait_states};

/// The document file inside `DATA_DIR/state/` (private to the state actor).
const DOC_FILE: &str = "doc.automerge";

fn doc_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DIR).join(DOC_FILE)
}

/// Loads a document file refusing any torn or unreadable part.
fn load_strictly(path: &Path) -> Result<AutoCommit, automerge::AutomergeError> {
    let bytes = std::fs::read(path).expect("the state file exists");
    AutoCommit::load_with_options(
        &bytes,
        LoadOptions::new().on_partial_load(OnPartialLoad::Error),
    )
}

/// A node's own tags as `snap` shows them (`None` if its record is absent).
fn tags_in(snap: &StateSnapshot, node: PeerId) -> Option<BTreeMap<String, String>> {
    snap.state
        .nodes
        .get(&node.to_base58())
        .map(|r| r.tags.clone())
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sorted(heads: &[String]) -> Vec<String> {
    let mut h = heads.to_vec();
    h.sort();
    h
}

/// Every node holds every node's record and the same heads.
fn converged(snaps: &[Arc<StateSnapshot>], ids: &[PeerId]) -> bool {
    let heads = sorted(&snaps[0].heads);
    snaps.iter().all(|s| {
        sorted(&s.heads) == heads
            && ids
                .iter()
                .all(|id| s.state.nodes.contains_key(&id.to_base58()))
    })
}

async fn wait_converged(nodes: &[&NodeHandle]) -> Vec<Arc<StateSnapshot>> {
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer_id()).collect();
    wait_states(nodes, "converged documents", |s| converged(s, &ids)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_after_concurrent_edits() {
    let cluster = Cluster::new();
    let (a, b, c) = (
        start_node(cluster.config_in("a", None)).await.unwrap(),
        start_node(cluster.config_in("b", None)).await.unwrap(),
        start_node(cluster.config_in("c", None)).await.unwrap(),
    );
    let all = [&a, &b, &c];
    wait_converged(&all).await;

    // Every node writes several tags at once while the others do the same: each write is its
    // own change, pushed while the others' pushes are in flight.
    let (sa, sb, sc) = (a.state(), b.state(), c.state());
    let results = tokio::join!(
        // Polled in order, so each node's commands reach its actor in the order written.
        biased;
        sa.set_tag("role", Some("db")),
        sa.set_tag("zone", Some("attic")),
        sa.set_tag("gpu", Some("none")),
        sb.set_tag("role", Some("web")),
        sb.set_tag("zone", Some("cellar")),
        sb.set_tag("disk", Some("ssd")),
        sc.set_tag("role", Some("cache")),
        sc.set_tag("zone", Some("attic")),
        sc.set_tag("arch.note", Some("pi-4")),
        // A set and a removal of the same key race on one node: the actor applies them in
        // order, so the tag ends up absent.
        sc.set_tag("tmp", Some("x")),
        sc.set_tag("tmp", None),
    );
    for (i, r) in [
        results.0, results.1, results.2, results.3, results.4, results.5, results.6, results.7,
        results.8, results.9, results.10,
    ]
    .into_iter()
    .enumerate()
    {
        assert!(r.expect("tag write succeeds"), "write {i} changed nothing");
    }

    let expected = [
        (
            a.peer_id(),
            tags(&[("role", "db"), ("zone", "attic"), ("gpu", "none")]),
        ),
        (
            b.peer_id(),
            tags(&[("role", "web"), ("zone", "cellar"), ("disk", "ssd")]),
        ),
        (
            c.peer_id(),
            tags(&[("role", "cache"), ("zone", "attic"), ("arch.note", "pi-4")]),
        ),
    ];
    let snaps = wait_states(
        &all,
        "every node's tags everywhere and equal heads",
        |snaps| {
            converged(snaps, &[a.peer_id(), b.peer_id(), c.peer_id()])
                && snaps.iter().all(|s| {
                    expected
                        .iter()
                        .all(|(id, want)| tags_in(s, *id).as_ref() == Some(want))
                })
        },
    )
    .await;
    // Beyond tags, the whole state is the same everywhere, and nothing was skipped.
    for s in &snaps {
        assert_eq!(s.state, snaps[0].state);
        assert_eq!(s.hydrate.skipped_entries, 0);
        assert_eq!(s.sync.malformed, 0);
    }
    shutdown_all(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_crash_loads_the_document_from_disk() {
    init_logs();
    let dir = TempDir::new().unwrap();
    let mut cfg = NodeConfig::for_test("solo", MeshKey::generate(), DiscoveryMode::Off);
    cfg.data_dir = Some(dir.path().to_path_buf());
    let first = start_node(cfg.clone()).await.unwrap();
    assert!(first.state().set_tag("role", Some("nas")).await.unwrap());
    assert!(first.state().set_tag("zone", Some("attic")).await.unwrap());
    assert!(first.state().set_tag("zone", None).await.unwrap());
    let joined_at = first.state().snapshot().state.nodes[&first.peer_id().to_base58()].joined_at_ms;
    // `set_tag` answers once the change is fsynced: a crash right after loses nothing.
    first.abort();

    // Same key pair and data dir, no peers at all: whatever it shows came from its own file.
    let second = start_node(cfg).await.unwrap();
    assert_eq!(second.peer_id(), first.peer_id());
    let snap = second.state().snapshot();
    let record = &snap.state.nodes[&second.peer_id().to_base58()];
    assert_eq!(record.tags, tags(&[("role", "nas")]));
    assert_eq!(
        record.joined_at_ms, joined_at,
        "first-join time survives a restart"
    );
    assert_eq!(record.left_at_ms, None);
    assert!(!snap.recovered_from_corruption);
    assert_eq!(snap.state.nodes.len(), 1);
    second.shutdown().await;
}

/// A member that died while this node was down (so membership never saw it) is still listed
/// in `mesh peers`, from the document: `unknown` if it crashed, `left` (with when) if it
/// stopped gracefully before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_went_while_this_node_was_down_are_listed_from_the_document() {
    init_logs();
    let cluster = Cluster::new();
    let dir_b = TempDir::new().unwrap();
    let a = start_node(cluster.config("a")).await.unwrap();
    let cfg_b = cluster.config_in("b", Some(dir_b.path()));
    let b = start_node(cfg_b.clone()).await.unwrap();
    let c = start_node(cluster.config("c")).await.unwrap();
    wait_converged(&[&a, &b, &c]).await;
    // c stops gracefully while b runs: b's document says when.
    let c_id = c.peer_id().to_base58();
    c.shutdown().await;
    wait_state_of(&b, "c's leave in b's document", |s| {
        s.state
            .nodes
            .get(&c_id)
            .is_some_and(|r| r.left_at_ms.is_some())
    })
    .await;
    // b goes down; a crashes while b is down.
    b.shutdown().await;
    a.abort();
    // b comes back alone: its membership never sees a or c.
    let mut cfg_b = cfg_b;
    cfg_b.discovery = DiscoveryMode::Off;
    let b = start_node(cfg_b).await.unwrap();
    let rows = mesh::api::server::convert::peer_entries(
        &b.snapshot(),
        &b.state().snapshot(),
        tokio::time::Instant::now(),
    );
    let row = |id: &str| rows.iter().find(|r| r.id == id).cloned();
    let a_row = row(&a.peer_id().to_base58()).expect("a is listed");
    assert_eq!(a_row.state, "unknown");
    assert_eq!(a_row.name.as_deref(), Some("a"));
    assert!(!a_row.connected);
    assert_eq!(a_row.last_seen_ms_ago, None);
    let c_row = row(&c_id).expect("c is listed");
    assert_eq!(c_row.state, "left");
    assert_eq!(c_row.name.as_deref(), Some("c"));
    assert!(c_row.last_seen_ms_ago.is_some(), "{c_row:?}");
    assert_eq!(rows.len(), 3, "self, a and c: {rows:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_document_is_moved_aside_and_recovered_from_peers() {
    let cluster = Cluster::new();
    let dir_a = TempDir::new().unwrap();
    let dir_b = TempDir::new().unwrap();
    let a = start_node(cluster.config_in("a", Some(dir_a.path())))
        .await
        .unwrap();
    let cfg_b = cluster.config_in("b", Some(dir_b.path()));
    let b = start_node(cfg_b.clone()).await.unwrap();
    a.state().set_tag("role", Some("db")).await.unwrap();
    a.state().set_tag("zone", Some("attic")).await.unwrap();
    b.state().set_tag("role", Some("web")).await.unwrap();
    let a_tags = tags(&[("role", "db"), ("zone", "attic")]);
    wait_states(&[&a, &b], "both nodes' tags on both", |s| {
        s.iter().all(|s| {
            tags_in(s, a.peer_id()).as_ref() == Some(&a_tags)
                && tags_in(s, b.peer_id()) == Some(tags(&[("role", "web")]))
        })
    })
    .await;

    b.shutdown().await;
    let path = doc_path(dir_b.path());
    assert!(path.exists(), "b persisted its document");
    std::fs::write(
        &path,
        b"this is not an automerge document, not even a torn one",
    )
    .unwrap();

    let b = start_node(cfg_b)
        .await
        .expect("a corrupt state file does not stop the agent");
    assert!(b.state().snapshot().recovered_from_corruption);
    let state_dir = dir_b.path().join(STATE_DIR);
    let aside: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{DOC_FILE}.corrupt-")))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the unreadable file is kept beside the new one as {DOC_FILE}.corrupt-*; state dir holds {:?}",
        std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(state_dir.join(&aside[0])).unwrap(),
        b"this is not an automerge document, not even a torn one",
        "the corrupt file is moved aside unchanged"
    );

    // b gets the mesh's document back from a, and a keeps b's current record.
    let snaps = wait_states(&[&a, &b], "b recovered from a", |s| {
        converged(s, &[a.peer_id(), b.peer_id()])
            && s.iter()
                .all(|s| tags_in(s, a.peer_id()).as_ref() == Some(&a_tags))
    })
    .await;
    assert!(
        snaps[1].recovered_from_corruption,
        "the flag stays set until restart"
    );
    // What b recovered is durable: its new file loads on its own.
    load_strictly(&path).expect("the new state file is whole");
    shutdown_all(&[&a, &b]).await;
}

/// After its file is lost, a node gets its own record back from its peers as one record: its
/// tags as the mesh knew them, and this run's addresses with no `left_at_ms`. Were the restarted
/// node to write its record before syncing, it would create `nodes.<id>` anew, concurrently
/// with the record its peers hold, and Automerge would keep one of the two maps whole (by actor
/// id, a coin flip): either the tags or the current fields would be lost. Each outcome breaks
/// one of the conditions below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_node_gets_its_own_tags_back_and_a_current_record() {
    let cluster = Cluster::new();
    let dir_b = TempDir::new().unwrap();
    let a = start_node(cluster.config_in("a", None)).await.unwrap();
    let cfg_b = cluster.config_in("b", Some(dir_b.path()));
    let b = start_node(cfg_b.clone()).await.unwrap();
    b.state().set_tag("role", Some("web")).await.unwrap();
    let b_tags = tags(&[("role", "web")]);
    wait_state_of(&a, "b's tag on a", |s| {
        tags_in(s, b.peer_id()).as_ref() == Some(&b_tags)
    })
    .await;
    b.shutdown().await;
    std::fs::write(doc_path(dir_b.path()), b"garbage").unwrap();

    let b = start_node(cfg_b).await.unwrap();
    assert!(b.state().snapshot().recovered_from_corruption);
    let addr = b.snapshot().local.listen_addrs[0].to_string();
    let id = b.peer_id().to_base58();
    wait_states(
        &[&a, &b],
        "b's recovered record: old tags, current fields",
        |s| {
            converged(s, &[a.peer_id(), b.peer_id()])
                && s.iter().all(|s| {
                    let r = &s.state.nodes[&id];
                    r.tags == b_tags && r.addrs == [addr.clone()] && r.left_at_ms.is_none()
                })
        },
    )
    .await;
    shutdown_all(&[&a, &b]).await;
}

/// Like [`recovered_node_gets_its_own_tags_back_and_a_current_record`], but no peer answers
/// before the node has to write its record (its peers are unreachable for longer than its grace
/// period, as after a power cut that took the switch down too): the two record objects are
/// created concurrently for certain, and must still end up as one record with the old tags and
/// the current fields once the node rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_node_cut_off_past_its_grace_still_gets_its_tags_back() {
    let cluster = Cluster::new();
    let dir_b = TempDir::new().unwrap();
    let a = start_node(cluster.config_in("a", None)).await.unwrap();
    let cfg_b = cluster.config_in("b", Some(dir_b.path()));
    let b = start_node(cfg_b.clone()).await.unwrap();
    b.state().set_tag("role", Some("web")).await.unwrap();
    let b_tags = tags(&[("role", "web")]);
    let id = b.peer_id().to_base58();
    wait_state_of(&a, "b's tag on a", |s| {
        tags_in(s, b.peer_id()).as_ref() == Some(&b_tags)
    })
    .await;
    b.shutdown().await;
    std::fs::write(doc_path(dir_b.path()), b"garbage").unwrap();

    // Back without its file and without peers: it writes a fresh record of its own.
    let mut alone = cfg_b.clone();
    alone.discovery = DiscoveryMode::Off;
    let b = start_node(alone).await.unwrap();
    assert!(b.state().snapshot().recovered_from_corruption);
    wait_state_of(&b, "b's fresh record", |s| s.state.nodes.contains_key(&id)).await;
    b.shutdown().await;

    // Back on the LAN: one record, with the tags the mesh knew and this run's fields.
    let b = start_node(cfg_b).await.unwrap();
    let addr = b.snapshot().local.listen_addrs[0].to_string();
    wait_states(
        &[&a, &b],
        "b's record merged: old tags, current fields",
        |s| {
            converged(s, &[a.peer_id(), b.peer_id()])
                && s.iter().all(|s| {
                    let r = &s.state.nodes[&id];
                    r.tags == b_tags && r.addrs == [addr.clone()] && r.left_at_ms.is_none()
                })
        },
    )
    .await;
    shutdown_all(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_ignored_without_marking_corruption() {
    init_logs();
    let dir = TempDir::new().unwrap();
    let mut cfg = NodeConfig::for_test("solo", MeshKey::generate(), DiscoveryMode::Off);
    cfg.data_dir = Some(dir.path().to_path_buf());
    let path = doc_path(dir.path());

    // 1. Garbage appended after a valid file (a write of a chunk that never got its bytes).
    let node = start_node(cfg.clone()).await.unwrap();
    node.state().set_tag("role", Some("nas")).await.unwrap();
    node.state().set_tag("zone", Some("attic")).await.unwrap();
    node.shutdown().await;
    let whole = std::fs::read(&path).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(&[0x85, 0x6f, 0x4a, 0x83, 0x00, 0x17, 0xff]);
    std::fs::write(&path, &torn).unwrap();

    let node = start_node(cfg.clone()).await.unwrap();
    let snap = node.state().snapshot();
    assert!(
        !snap.recovered_from_corruption,
        "a torn tail is not corruption"
    );
    assert_eq!(
        tags_in(&snap, node.peer_id()),
        Some(tags(&[("role", "nas"), ("zone", "attic")]))
    );
    // The file was rewritten whole at start: it loads strictly again.
    load_strictly(&path).expect("the torn file was rewritten");

    // 2. The last chunk cut short (a crash in the middle of an append): only it is lost.
    node.state().set_tag("disk", Some("ssd")).await.unwrap();
    node.abort();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let node = start_node(cfg).await.unwrap();
    let snap = node.state().snapshot();
    assert!(!snap.recovered_from_corruption);
    assert_eq!(
        tags_in(&snap, node.peer_id()),
        Some(tags(&[("role", "nas"), ("zone", "attic")])),
        "everything before the torn chunk is kept, the torn change is gone"
    );
    let state_dir = dir.path().join(STATE_DIR);
    for entry in std::fs::read_dir(&state_dir).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().contains("corrupt"),
            "nothing is moved aside for a torn tail: {name:?}"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_another_key_never_receives_the_document() {
    let cluster = Cluster::new();
    let a = start_node(cluster.config_in("a", None)).await.unwrap();
    let b = start_node(cluster.config_in("b", None)).await.unwrap();
    a.state()
        .set_tag("secret", Some("members-only"))
        .await
        .unwrap();
    wait_converged(&[&a, &b]).await;

    let mut cfg = NodeConfig::for_test("intruder", MeshKey::generate(), DiscoveryMode::Off);
    cfg.static_peers = vec![a.snapshot().local.listen_addrs[0].clone()];
    let intruder = start_node(cfg).await.unwrap();
    // Both sides of the handshake have failed at least once: a refused the intruder, and the
    // intruder saw a's proof fail.
    let refused = a
        .wait_for(CEILING, |s| {
            let adm = &s.stats.admission;
            adm.bad_proof
                + adm.denied
                + adm.protocol
                + adm.transport
                + adm.timeout
                + adm.abandoned
                + adm.refused_in_backoff
                > 0
        })
        .await;
    assert!(refused.is_some(), "a never counted a refusal");
    let denied = intruder
        .wait_for(CEILING, |s| s.stats.admission.bad_proof > 0)
        .await;
    assert!(denied.is_some(), "the intruder never saw a bad proof");
    // Meanwhile the mesh keeps writing: nothing of it may leak.
    a.state().set_tag("after", Some("intruder")).await.unwrap();
    wait_converged(&[&a, &b]).await;

    // With no peer to hear from, the intruder writes its own record once its grace period
    // (waiting for the mesh's copy) ends; its document then holds that record and nothing else.
    let intruder_id = intruder.peer_id().to_base58();
    let own = wait_state_of(&intruder, "the intruder's own record", |s| {
        s.state.nodes.contains_key(&intruder_id)
    })
    .await;
    assert_eq!(
        own.state.nodes.keys().collect::<Vec<_>>(),
        vec![&intruder_id],
        "the intruder's document holds only its own record"
    );
    assert!(own.peers.is_empty(), "the intruder has no sync session");
    assert_eq!(own.sync.messages_in, 0);
    assert_eq!(own.sync.messages_out, 0);
    for member in [&a, &b] {
        let snap = member.state().snapshot();
        assert!(
            snap.peers.iter().all(|p| p.peer != intruder.peer_id()),
            "a member has a sync session with the intruder"
        );
        assert!(
            !snap
                .state
                .nodes
                .contains_key(&intruder.peer_id().to_base58())
        );
    }
    intruder.shutdown().await;
    shutdown_all(&[&a, &b]).await;
}

/// An in-process stand-in for a partition: b is cut off by restarting it without discovery
/// (it knows no peer, and no peer knows its new port), both sides keep writing, then b
/// restarts on the LAN again. What this checks is the merge of histories that diverged while
/// both sides wrote, resumed from persisted sync states; a network that silently drops
/// packets between live agents is the lab's job (`tests/lab.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergent_edits_during_a_partition_merge_on_heal() {
    let cluster = Cluster::new();
    let dir_b = TempDir::new().unwrap();
    let a = start_node(cluster.config_in("a", None)).await.unwrap();
    let c = start_node(cluster.config_in("c", None)).await.unwrap();
    let cfg_b = cluster.config_in("b", Some(dir_b.path()));
    let b = start_node(cfg_b.clone()).await.unwrap();
    a.state().set_tag("role", Some("db")).await.unwrap();
    b.state().set_tag("role", Some("web")).await.unwrap();
    b.state().set_tag("zone", Some("attic")).await.unwrap();
    wait_states(&[&a, &b, &c], "tags everywhere before the partition", |s| {
        converged(s, &[a.peer_id(), b.peer_id(), c.peer_id()])
            && s.iter().all(|s| {
                tags_in(s, a.peer_id()) == Some(tags(&[("role", "db")]))
                    && tags_in(s, b.peer_id()).is_some_and(|t| t.len() == 2)
            })
    })
    .await;
    b.shutdown().await;

    // Partitioned: b alone, the others together; both sides write.
    let mut isolated = cfg_b.clone();
    isolated.discovery = DiscoveryMode::Off;
    let b = start_node(isolated).await.unwrap();
    b.state().set_tag("role", Some("cache")).await.unwrap();
    b.state().set_tag("zone", None).await.unwrap();
    b.state().set_tag("disk", Some("ssd")).await.unwrap();
    a.state().set_tag("role", Some("primary")).await.unwrap();
    c.state().set_tag("gpu", Some("yes")).await.unwrap();
    let during = wait_states(&[&a, &c], "a and c agree during the partition", |s| {
        converged(s, &[a.peer_id(), c.peer_id()])
            && s.iter()
                .all(|s| tags_in(s, c.peer_id()) == Some(tags(&[("gpu", "yes")])))
    })
    .await;
    assert_eq!(
        tags_in(&during[0], b.peer_id()),
        Some(tags(&[("role", "web"), ("zone", "attic")])),
        "the others still show b's tags from before the partition"
    );
    let b_alone = b.state().snapshot();
    assert_eq!(
        tags_in(&b_alone, a.peer_id()),
        Some(tags(&[("role", "db")]))
    );
    assert_ne!(
        sorted(&b_alone.heads),
        sorted(&during[0].heads),
        "the histories diverged"
    );
    b.shutdown().await;

    // Healed.
    let b = start_node(cfg_b).await.unwrap();
    let want = [
        (a.peer_id(), tags(&[("role", "primary")])),
        (b.peer_id(), tags(&[("role", "cache"), ("disk", "ssd")])),
        (c.peer_id(), tags(&[("gpu", "yes")])),
    ];
    let snaps = wait_states(&[&a, &b, &c], "both sides' edits everywhere", |s| {
        converged(s, &[a.peer_id(), b.peer_id(), c.peer_id()])
            && s.iter().all(|s| {
                want.iter()
                    .all(|(id, t)| tags_in(s, *id).as_ref() == Some(t))
            })
    })
    .await;
    for s in &snaps {
        assert_eq!(s.state, snaps[0].state);
    }
    assert_eq!(
        snaps[0].state.nodes[&b.peer_id().to_base58()].left_at_ms,
        None,
        "b is running again, and its record says so"
    );
    shutdown_all(&[&a, &b, &c]).await;
}
