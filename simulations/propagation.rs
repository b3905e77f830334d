//! Propagation benchmark: how fast, and at what wire cost, one tag change reaches the mesh.
//!
//! Starts three in-process nodes (in-memory discovery, real QUIC on loopback), waits until they
//! are linked and their documents converged, then [`CHANGES`] times sets a tag on node 0 and
//! measures the time from `set_tag` returning (the change is committed and fsynced locally) to
//! the tag being visible in *both* other nodes' state snapshots. Prints the median, p90 and
//! maximum latency (and the same from the call, which adds the local commit and fsync: the
//! change is pushed before it is fsynced), and the sync bytes sent per change (the growth of `sync.bytes_out` summed
//! over the three nodes, divided by [`CHANGES`]; Automerge sync message bytes only, without
//! CBOR, stream or QUIC framing).
//!
//! Run: `cargo run --release --example propagation`. Not a test: it asserts nothing beyond
//! convergence within [`CEILING`]; the figures are for the reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::admission::MeshKey;
use mesh::discovery::memory::MemoryDiscovery;
use mesh::node::{DiscoveryMode, NodeConfig, NodeHandle, start_node};
use mesh::state::actor::StateSnapshot;
use tokio::sync::watch;

/// Nodes in the mesh: one writer, two readers.
const NODES: usize = 3;
/// Tag changes measured. 50 gives a stable median and a meaningful p90 in a few seconds.
const CHANGES: usize = 50;
/// Ceiling for linking, convergence, and each propagation. Loopback typically takes
/// milliseconds; anything near this is a bug, and the run aborts.
const CEILING: Duration = Duration::from_secs(20);

/// Waits until `pred` holds for the receiver's current snapshot, or panics after [`CEILING`].
async fn wait_until(
    rx: &mut watch::Receiver<Arc<StateSnapshot>>,
    what: &str,
    mut pred: impl FnMut(&StateSnapshot) -> bool,
) {
    let ok = tokio::time::timeout(CEILING, async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.expect("the state actor runs");
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for {what}");
}

/// All nodes hold the same heads and every node's record is everywhere.
fn converged(nodes: &[NodeHandle]) -> bool {
    let snaps: Vec<_> = nodes.iter().map(|n| n.state().snapshot()).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id().to_base58()).collect();
    snaps.iter().all(|s| s.heads == snaps[0].heads)
        && snaps
            .iter()
            .all(|s| ids.iter().all(|id| s.state.nodes.contains_key(id)))
}

/// Waits (on state changes of any node) until [`converged`] holds.
async fn wait_converged(nodes: &[NodeHandle]) {
    let mut rxs: Vec<_> = nodes.iter().map(|n| n.state().subscribe()).collect();
    let ok = tokio::time::timeout(CEILING, async {
        loop {
            if converged(nodes) {
                return;
            }
            let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let _ = futures::future::select_all(changes).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "the nodes did not converge within {CEILING:?}");
}

fn bytes_out(nodes: &[NodeHandle]) -> u64 {
    nodes
        .iter()
        .map(|n| n.state().snapshot().sync.bytes_out)
        .sum()
}

fn messages_out(nodes: &[NodeHandle]) -> u64 {
    nodes
        .iter()
        .map(|n| n.state().snapshot().sync.messages_out)
        .sum()
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        mesh::daemon::init_tracing(mesh::daemon::LogFormat::Human);
    }
    let lan = MemoryDiscovery::new();
    let key = MeshKey::generate();
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let config = NodeConfig::for_test(
            &format!("n{i}"),
            key.clone(),
            DiscoveryMode::Memory(lan.clone()),
        );
        nodes.push(start_node(config).await.expect("node starts"));
    }
    let started = Instant::now();
    wait_converged(&nodes).await;
    println!(
        "{NODES} nodes linked and converged in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    let writer = nodes[0].peer_id().to_base58();
    let mut readers: Vec<_> = nodes[1..].iter().map(|n| n.state().subscribe()).collect();
    let (bytes_before, messages_before) = (bytes_out(&nodes), messages_out(&nodes));
    let mut latencies = Vec::with_capacity(CHANGES);
    let mut from_call = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let value = format!("v{i}");
        let called_at = Instant::now();
        nodes[0]
            .state()
            .set_tag("bench", Some(&value))
            .await
            .expect("tag is valid");
        let set_at = Instant::now();
        for rx in &mut readers {
            wait_until(rx, &format!("change {i}"), |s| {
                s.state.nodes.get(&writer).and_then(|r| r.tags.get("bench")) == Some(&value)
            })
            .await;
        }
        latencies.push(set_at.elapsed());
        from_call.push(called_at.elapsed());
    }
    // Count the whole exchange of the last change too (acknowledgements), not only the part
    // before it became visible.
    wait_converged(&nodes).await;
    let bytes = bytes_out(&nodes) - bytes_before;
    let messages = messages_out(&nodes) - messages_before;

    latencies.sort();
    from_call.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "changes: {CHANGES} tag sets on node 0, visible on the {} others",
        NODES - 1
    );
    println!(
        "latency (set_tag returned -> visible everywhere): median {:.2} ms, p90 {:.2} ms, \
         max {:.2} ms, min {:.2} ms",
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.9)),
        ms(latencies[latencies.len() - 1]),
        ms(latencies[0]),
    );
    // The change is pushed to peers before it is fsynced, so it can be visible before
    // `set_tag` returns; this second figure includes the local commit and fsync.
    println!(
        "latency (set_tag called -> visible everywhere): median {:.2} ms, p90 {:.2} ms, \
         max {:.2} ms",
        ms(quantile(&from_call, 0.5)),
        ms(quantile(&from_call, 0.9)),
        ms(from_call[from_call.len() - 1]),
    );
    println!(
        "wire: {:.0} sync bytes per change ({:.1} messages per change), summed over all nodes",
        bytes as f64 / CHANGES as f64,
        messages as f64 / CHANGES as f64,
    );
    for n in &nodes {
        n.shutdown().await;
    }
}
