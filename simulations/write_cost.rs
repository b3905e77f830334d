//! Write-cost benchmark: does the cost of one local write follow the change or the document?
//!
//! Starts two in-process nodes (in-memory discovery, real QUIC on loopback, each with a data
//! dir, so every write is appended and fsynced and pushed to the peer), then on node 0:
//! 1. adds [`SERVICES`] services with a ~1 KiB spec each, one write at a time, and reports the
//!    mean latency of `StateHandle::write` over the first and the last ten;
//! 2. sets [`TAG_WRITES`] tag values in a row, and reports the mean latency and the process CPU
//!    time they took (both nodes, since they share the process), then waits until the peer
//!    holds the last value.
//!
//! Run: `cargo run --release --example write_cost` (figures in BENCHMARKS.md). Not a test.

use std::time::{Duration, Instant};

use mesh::admission::MeshKey;
use mesh::discovery::memory::MemoryDiscovery;
use mesh::node::{DiscoveryMode, NodeConfig, NodeHandle, start_node};
use mesh::state::actor::EntryWrite;
use mesh::state::{Desired, ServiceRecord, now_ms};

/// Services added: the size at which the slowdown was reported.
const SERVICES: usize = 200;
/// Tag writes in a row: the load that was reported to hold both cores.
const TAG_WRITES: usize = 2000;
/// Environment variable that overrides [`TAG_WRITES`] (a quicker run on a slow build).
const TAG_WRITES_ENV: &str = "WRITE_COST_TAGS";
/// Ceiling for linking and for the peer to catch up.
const CEILING: Duration = Duration::from_secs(120);

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (clock ticks of
/// 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state field.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn wait_for(node: &NodeHandle, what: &str, pred: impl Fn(&NodeHandle) -> bool) {
    let mut rx = node.state().subscribe();
    tokio::time::timeout(CEILING, async {
        while !pred(node) {
            let _ = rx.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lan = MemoryDiscovery::new();
    let key = MeshKey::generate();
    let dirs = [
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    ];
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut cfg = NodeConfig::for_test(
            &format!("w{i}"),
            key.clone(),
            DiscoveryMode::Memory(lan.clone()),
        );
        cfg.data_dir = Some(dir.path().to_path_buf());
        nodes.push(start_node(cfg).await.unwrap());
    }
    let (writer, peer) = (&nodes[0], &nodes[1]);
    wait_for(peer, "both node records", |n| {
        n.state().snapshot().state.nodes.len() == 2
    })
    .await;

    let mut latencies = Vec::new();
    for i in 0..SERVICES {
        let record = ServiceRecord {
            spec_json: format!(
                "{{\"name\":\"svc{i}\",\"command\":[\"/usr/bin/server\",\"--port\",\"{i}\",\"{}\"]}}",
                "x".repeat(900)
            ),
            desired: Desired::Stopped,
            updated_by: writer.peer_id().into(),
            updated_at_ms: now_ms(),
            ..Default::default()
        };
        let started = Instant::now();
        writer
            .state()
            .write(vec![EntryWrite::Service {
                name: format!("svc{i}"),
                record,
            }])
            .await
            .unwrap();
        latencies.push(started.elapsed());
    }
    let mean = |d: &[Duration]| ms(d.iter().sum::<Duration>()) / d.len() as f64;
    println!(
        "service add: {:.2} ms mean for the first 10, {:.2} ms for the last 10 (at {SERVICES} services)",
        mean(&latencies[..10]),
        mean(&latencies[SERVICES - 10..])
    );

    let tag_writes: usize = std::env::var(TAG_WRITES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TAG_WRITES)
        .max(1);
    let cpu_before = cpu_time();
    let started = Instant::now();
    for i in 0..tag_writes {
        writer
            .state()
            .set_tag(&format!("k{}", i % 32), Some(&i.to_string()))
            .await
            .unwrap();
    }
    let wall = started.elapsed();
    let last = (tag_writes - 1).to_string();
    let writer_id = writer.peer_id().to_base58();
    wait_for(peer, "the peer to hold the last tag", |n| {
        n.state()
            .snapshot()
            .state
            .nodes
            .get(&writer_id)
            .and_then(|r| r.tags.get(&format!("k{}", (tag_writes - 1) % 32)).cloned())
            == Some(last.clone())
    })
    .await;
    let cpu = cpu_time() - cpu_before;
    println!(
        "{tag_writes} tag writes: {:.2} ms mean, {:.1} s wall; {:.1} s CPU for both nodes until the peer caught up",
        ms(wall) / tag_writes as f64,
        wall.as_secs_f64(),
        cpu.as_secs_f64()
    );
    for n in &nodes {
        n.shutdown().await;
    }
}
