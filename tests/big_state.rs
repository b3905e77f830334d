//! Documents near their size bound, over real QUIC sockets (loopback) between in-process
//! nodes: a fresh node receives a document whose history does not fit one sync message (it
//! travels as a snapshot in parts), nodes that compacted big documents apart settle on one
//! epoch without losing what only one of them held, and sync health reads `ok` once they
//! agree.
//!
//! Spec texts are pseudo-random (incompressible), so Automerge's compression cannot make the
//! documents small. Every wait is on a condition with a generous ceiling.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::Arc;
use std::time::Duration;

use mesh::discovery::memory::MemoryDiscovery;
use mesh::node::{DiscoveryMode, NodeHandle, start_node};
use mesh::state::actor::{EntryWrite, StateSnapshot};
use mesh::state::{Desired, MAX_DOCUMENT_BYTES, ServiceRecord, now_ms};
use mesh::sync::SyncHealth;
use mesh::transport::MAX_SYNC_MESSAGE;

use cluster::Cluster;

/// Ceiling of every wait: several MiB through debug-build Automerge on a loaded 2-core machine
/// take seconds, and on a slow one over a minute (a fresh node's sync near the bound took
/// ~85-105 s on one CI-sized machine); the ceiling is far past that.
const CEILING: Duration = Duration::from_secs(300);
/// Bytes of one spec: seven fit under the bound.
const SPEC_BYTES: usize = 280 * 1024;

/// `n` pseudo-random alphanumeric characters from `seed` (xorshift).
fn noise(seed: u64, n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

fn service(seed: u64, desired: &str) -> ServiceRecord {
    ServiceRecord {
        spec_json: format!("{{\"blob\":\"{}\"}}", noise(seed, SPEC_BYTES)),
        desired: Desired::parse(desired).expect("a desired state"),
        updated_by: "test".into(),
        updated_at_ms: now_ms(),
        ..Default::default()
    }
}

async fn put(node: &NodeHandle, name: &str, record: ServiceRecord) {
    node.state()
        .write(vec![EntryWrite::Service {
            name: name.into(),
            record,
        }])
        .await
        .expect("a write within the bound");
}

/// Builds a history far larger than one sync message (and than the old 8 MiB frame) while
/// the value stays under the bound: services added and removed over and over, then `keep`
/// big ones left running. Returns the names left running.
async fn churn(node: &NodeHandle, prefix: &str, rounds: u64, keep: u64) -> Vec<String> {
    for r in 0..rounds {
        let name = format!("{prefix}-gone{r}");
        put(node, &name, service(r, "running")).await;
        put(node, &name, service(r, "removed")).await;
    }
    let mut names = Vec::new();
    for k in 0..keep {
        let name = format!("{prefix}-kept{k}");
        put(node, &name, service(1000 + k, "running")).await;
        names.push(name);
    }
    names
}

/// [`cluster::wait_states`] with this file's [`CEILING`].
async fn wait_states(
    nodes: &[&NodeHandle],
    what: &str,
    pred: impl FnMut(&[Arc<StateSnapshot>]) -> bool,
) -> Vec<Arc<StateSnapshot>> {
    cluster::wait_states_within(CEILING, nodes, what, pred).await
}

fn same_document(s: &[Arc<StateSnapshot>]) -> bool {
    let sorted = |h: &[String]| {
        let mut h = h.to_vec();
        h.sort();
        h
    };
    s.iter()
        .all(|x| x.epoch == s[0].epoch && sorted(&x.heads) == sorted(&s[0].heads))
}

fn all_ok(s: &[Arc<StateSnapshot>]) -> bool {
    s.iter().all(|x| {
        !x.peers.is_empty()
            && x.peers
                .iter()
                .filter(|p| p.connected)
                .all(|p| p.health == SyncHealth::Ok)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_syncs_a_document_near_the_bound() {
    let cluster = Cluster::new();
    let dir_a = tempfile::TempDir::new().unwrap();
    let a = start_node(cluster.config_in("a", Some(dir_a.path())))
        .await
        .unwrap();
    // ~9.5 MB of history (more than the sync frame) and ~2 MB of value (near the bound).
    let kept = churn(&a, "a", 17, 7).await;
    let snap = a.state().snapshot();
    assert!(
        snap.value_bytes > MAX_DOCUMENT_BYTES * 9 / 10,
        "{}",
        snap.value_bytes
    );
    assert!(snap.value_bytes <= MAX_DOCUMENT_BYTES);
    for s in snap
        .state
        .services
        .values()
        .filter(|s| s.desired == Desired::Removed)
    {
        assert!(s.spec_json.is_empty(), "tombstones keep no spec");
    }

    let dir_b = tempfile::TempDir::new().unwrap();
    let b = start_node(cluster.config_in("b", Some(dir_b.path())))
        .await
        .unwrap();
    let snaps = wait_states(&[&a, &b], "the fresh node to hold the same document", |s| {
        same_document(s) && all_ok(s)
    })
    .await;
    for name in &kept {
        assert_eq!(
            snaps[1].state.services[name], snaps[0].state.services[name],
            "{name} reached the fresh node whole"
        );
    }
    let _ = MAX_SYNC_MESSAGE;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_compacted_big_documents_apart_settle_on_one_epoch() {
    // Two LANs, one mesh key.
    let cluster_a = Cluster::new();
    let cluster_b = Cluster {
        lan: MemoryDiscovery::new(),
        ..cluster_a.clone()
    };
    let (dir_a, dir_b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    // Apart: each builds a big document of its own and compacts it.
    let a = start_node(cluster_a.config_in("a", Some(dir_a.path())))
        .await
        .unwrap();
    let mut cfg_b = cluster_b.config_in("b", Some(dir_b.path()));
    let b = start_node(cfg_b.clone()).await.unwrap();
    let kept_a = churn(&a, "a", 4, 4).await;
    let kept_b = churn(&b, "b", 4, 4).await;
    a.state().set_tag("side", Some("a")).await.unwrap();
    b.state().set_tag("side", Some("b")).await.unwrap();
    a.state().compact_now(true).await.unwrap();
    b.state().compact_now(true).await.unwrap();
    let (ea, eb) = (
        a.state().snapshot().epoch.clone(),
        b.state().snapshot().epoch.clone(),
    );
    assert_ne!(ea, eb, "two epochs made apart");
    // b restarts on a's network: they meet.
    b.shutdown().await;
    cfg_b.discovery = DiscoveryMode::Memory(cluster_a.lan.clone());
    let b = start_node(cfg_b).await.unwrap();
    let snaps = wait_states(&[&a, &b], "one epoch and the same document on both", |s| {
        same_document(s) && all_ok(s)
    })
    .await;
    let winner = if ea.supersedes(&eb) { &ea } else { &eb };
    assert_eq!(&snaps[0].epoch, winner, "the superseding epoch wins");
    for s in &snaps {
        for name in kept_a.iter().chain(&kept_b) {
            assert_eq!(
                s.state.services.get(name).map(|r| r.desired.as_str()),
                Some("running"),
                "{name}: what only one side held survives"
            );
        }
        for (node, side) in [(&a, "a"), (&b, "b")] {
            assert_eq!(
                s.state.nodes[&node.peer_id().to_base58()]
                    .tags
                    .get("side")
                    .map(String::as_str),
                Some(side)
            );
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}
