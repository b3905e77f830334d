//! Seven days of ordinary churn in a 20-node mesh, replayed against the real state code, to show
//! that the document stays bounded: `cargo run --release --example churn [-- DAYS]`.
//!
//! Each node has its own Automerge document and writes only what it owns (its node record and
//! tags, its service instances and port leases) plus shared service specs, one change per
//! event. Every five simulated minutes the online nodes sync through a hub (Automerge merge, which
//! moves the same changes as the sync protocol). One node a day goes offline for six hours and
//! keeps writing locally. When the hub's history passes `COMPACT_AT_CHANGES`, the leader (lowest
//! online node) compacts with `state::compact`, and every node adopts the new epoch with
//! `state::migrate_into` — nodes that were offline adopt it when they return.
//!
//! Reported: final saved size and load time (median of 11 loads), peak size, changes per epoch,
//! and the same churn without compaction as a baseline. Deterministic (seeded).

use std::time::{Duration, Instant};

use automerge::{ActorId, AutoCommit};
use mesh::ports::LeaseState;
use mesh::state::{
    COMPACT_AT_CHANGES, Desired, EpochId, InstanceRecord, InstanceState, LeaseRecord, NodeRecord,
    ServiceRecord, compact, delete_entry, epoch_of, genesis, get_entry, hydrate_lenient,
    migrate_into, put_entry,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NODES: usize = 20;
const SERVICES: usize = 30;
/// Events per simulated hour, by kind (total ≈ 300/h: "a few hundred changes an hour").
const INSTANCE_EVENTS_PER_HOUR: u32 = 150;
const LEASE_EVENTS_PER_HOUR: u32 = 80;
const SERVICE_EVENTS_PER_HOUR: u32 = 30;
const TAG_EVENTS_PER_HOUR: u32 = 20;
const MINUTE_MS: i64 = 60_000;
/// Distinct ports a node leases over the week.
const LEASE_PORTS_PER_NODE: u64 = 10;

struct Node {
    id: String,
    doc: AutoCommit,
    online: bool,
    /// Kept alongside: reading it from the document walks the whole history.
    epoch: EpochId,
    /// The hub's heads when this node last synced: both sides then send only what is newer,
    /// as the sync protocol does (a plain merge of two diverged documents can walk the whole
    /// history).
    synced: Vec<automerge::ChangeHash>,
}

fn node_id(i: usize) -> String {
    format!("12D3KooWnode{i:02}")
}

fn load_time(bytes: &[u8]) -> Duration {
    let mut times: Vec<Duration> = (0..11)
        .map(|_| {
            let t = Instant::now();
            let doc = AutoCommit::load(bytes).expect("saved document loads");
            std::hint::black_box(doc);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// One event, written by the node that owns it into its own document.
fn event(rng: &mut StdRng, nodes: &mut [Node], now_ms: i64, kind: u32) {
    let online: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].online).collect();
    let w = online[rng.random_range(0..online.len())];
    let me = mesh::state::NodeId::from(&nodes[w].id);
    let doc = &mut nodes[w].doc;
    match kind {
        0 => {
            // An instance of a service on this node changes lifecycle state. Each node runs a
            // couple of services of its own; one in ten events concerns another service (one
            // that moved here).
            let svc = if rng.random_bool(0.9) {
                (w + NODES * rng.random_range(0..2)) % SERVICES
            } else {
                rng.random_range(0..SERVICES)
            };
            let key = format!("svc{svc}@{me}");
            let states = [
                "starting",
                "healthy",
                "unhealthy",
                "backoff",
                "healthy",
                "stopped",
            ];
            let mut inst =
                get_entry::<InstanceRecord>(doc, "instances", &key).unwrap_or(InstanceRecord {
                    service: format!("svc{svc}"),
                    node: me.clone(),
                    ports: vec![20000 + svc as u64],
                    ..Default::default()
                });
            inst.state = InstanceState::parse(states[rng.random_range(0..states.len())])
                .expect("a known instance state");
            inst.since_ms = now_ms;
            inst.pid = Some(rng.random_range(1000..100_000));
            if inst.state == InstanceState::Starting {
                inst.restarts += 1;
            }
            if inst.state == InstanceState::Stopped && rng.random_bool(0.5) {
                delete_entry(doc, "instances", &key).unwrap();
            } else {
                put_entry(doc, "instances", &key, &inst).unwrap();
            }
        }
        1 => {
            // A node holds leases on a handful of ports (its services' ports).
            let port = 20000 + rng.random_range(0..LEASE_PORTS_PER_NODE);
            let key = format!("{me}/tcp/{port}");
            let lease = get_entry::<LeaseRecord>(doc, "leases", &key);
            match lease.as_ref().map(|l| l.state) {
                None => put_entry(
                    doc,
                    "leases",
                    &key,
                    &LeaseRecord {
                        node: me.clone(),
                        port,
                        proto: "tcp".into(),
                        owner: format!("svc{}", port % SERVICES as u64),
                        state: LeaseState::Allocated,
                        since_ms: now_ms,
                        ..Default::default()
                    },
                )
                .unwrap(),
                Some(LeaseState::Allocated) => {
                    let mut l = lease.clone().expect("matched Some");
                    l.state = LeaseState::InUse;
                    l.since_ms = now_ms;
                    put_entry(doc, "leases", &key, &l).unwrap();
                }
                Some(LeaseState::InUse) => {
                    let mut l = lease.clone().expect("matched Some");
                    l.state = LeaseState::Released;
                    l.since_ms = now_ms;
                    put_entry(doc, "leases", &key, &l).unwrap();
                }
                Some(_) => delete_entry(doc, "leases", &key).unwrap(),
            }
        }
        2 => {
            // A service spec is added, edited, or removed (a tombstone: desired = removed).
            let svc = format!("svc{}", rng.random_range(0..SERVICES));
            let desired = if rng.random_bool(0.1) {
                Desired::Removed
            } else {
                Desired::Running
            };
            let spec = format!(
                r#"{{"name":"{svc}","command":"/usr/bin/{svc}","args":["--port","$PORT","--v","{}"],"after":[],"ports":["auto"],"health":"http:/health"}}"#,
                rng.random_range(0..1000)
            );
            put_entry(
                doc,
                "services",
                &svc,
                &ServiceRecord {
                    spec_json: spec,
                    desired,
                    updated_by: me.clone(),
                    updated_at_ms: now_ms,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        _ => {
            let mut rec = get_entry::<NodeRecord>(doc, "nodes", &me).unwrap_or_default();
            let keys = ["role", "zone", "disk", "owner"];
            rec.tags.insert(
                keys[rng.random_range(0..keys.len())].into(),
                format!("v{}", rng.random_range(0..20)),
            );
            put_entry(doc, "nodes", &me, &rec).unwrap();
        }
    }
    doc.commit();
}

/// An event kind drawn with the weights of `per_hour`.
fn pick_kind(rng: &mut StdRng, per_hour: &[u32]) -> u32 {
    let total: u32 = per_hour.iter().sum();
    let r = rng.random_range(0..total);
    let mut acc = 0;
    per_hour
        .iter()
        .position(|k| {
            acc += k;
            r < acc
        })
        .unwrap_or(0) as u32
}

fn set_online(node: &mut Node, online: bool, now_ms: i64) {
    let mut rec =
        get_entry::<NodeRecord>(&node.doc, "nodes", &node.id).unwrap_or_else(|| NodeRecord {
            name: node.id.as_str().into(),
            joined_at_ms: now_ms,
            ..Default::default()
        });
    rec.left_at_ms = if online { None } else { Some(now_ms) };
    put_entry(&mut node.doc, "nodes", &node.id, &rec).unwrap();
    node.doc.commit();
    node.online = online;
}

fn main() {
    let days: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(7);
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let mut doc = genesis(ActorId::random());
            let epoch = epoch_of(&mut doc);
            Node {
                id: node_id(i),
                doc,
                online: true,
                epoch,
                synced: Vec::new(),
            }
        })
        .collect();
    let mut hub_changes = 1usize;
    for n in nodes.iter_mut() {
        set_online(n, true, 0);
    }
    // The baseline: the same events in one document that is never compacted.
    let mut baseline = genesis(ActorId::random());

    let per_hour = [
        INSTANCE_EVENTS_PER_HOUR,
        LEASE_EVENTS_PER_HOUR,
        SERVICE_EVENTS_PER_HOUR,
        TAG_EVENTS_PER_HOUR,
    ];
    let total_per_hour: u32 = per_hour.iter().sum();
    let mut epochs = 0u64;
    let mut events = 0u64;
    let mut peak_bytes = 0usize;
    let mut peak_changes = 0usize;
    let mut last_epoch_at = 0i64;
    let mut epoch_lengths_min = Vec::new();
    let wall = Instant::now();
    let minutes = days * 24 * 60;
    for minute in 0..minutes {
        let now_ms = minute * MINUTE_MS;
        // One node a day goes offline for six hours (a laptop closed, a Pi rebooting).
        let offline = ((minute / (24 * 60)) as usize * 7 + 3) % NODES;
        let minute_of_day = minute % (24 * 60);
        if minute_of_day == 8 * 60 && nodes[offline].online {
            set_online(&mut nodes[offline], false, now_ms);
            nodes[offline].online = false;
        }
        if minute_of_day == 14 * 60 && !nodes[offline].online {
            nodes[offline].online = true;
            set_online(&mut nodes[offline], true, now_ms);
        }
        // Poisson-ish: events this minute.
        let expected = f64::from(total_per_hour) / 60.0;
        let n = (expected + rng.random_range(-2.0..2.0)).round().max(0.0) as u32;
        for _ in 0..n {
            let kind = pick_kind(&mut rng, &per_hour);
            event(&mut rng, &mut nodes, now_ms, kind);
            events += 1;
        }
        // Every five minutes the online nodes sync through node 0 (always online). Sooner
        // would change when changes meet, not how many there are or what the document holds.
        if minute % 5 != 0 {
            continue;
        }
        let (hub, rest) = nodes.split_first_mut().expect("20 nodes");
        let hub_epoch = hub.epoch.clone();
        for n in rest.iter_mut().filter(|n| n.online) {
            if n.epoch != hub_epoch && hub_epoch.supersedes(&n.epoch) {
                // A returning node adopts the epoch made while it was away.
                let (old, _) = hydrate_lenient(&n.doc);
                let mut new = AutoCommit::load(&hub.doc.save())
                    .unwrap()
                    .with_actor(ActorId::random());
                migrate_into(&old, &mut new, &n.id).unwrap();
                n.doc = new;
                n.epoch = hub_epoch.clone();
                n.synced = hub.doc.get_heads();
            }
            let news: Vec<automerge::Change> = n.doc.get_changes(&n.synced);
            hub_changes += news.len();
            hub.doc.apply_changes(news).unwrap();
        }
        for n in rest.iter_mut().filter(|n| n.online) {
            let news: Vec<automerge::Change> = hub.doc.get_changes(&n.synced);
            n.doc.apply_changes(news).unwrap();
            n.synced = hub.doc.get_heads();
        }
        // Node 0 writes too: count its own changes (events and online flips).
        hub_changes = hub_changes.max(1);
        // Compaction by the leader once the history is long and everyone online is in sync.
        if minute % 30 == 0 {
            hub_changes = hub.doc.get_changes(&[]).len();
        }
        if hub_changes >= COMPACT_AT_CHANGES {
            let mut new = compact(&mut hub.doc, ActorId::random()).unwrap();
            hub.epoch = epoch_of(&mut new);
            hub.doc = new;
            hub_changes = 1;
            let saved = hub.doc.save();
            for n in rest.iter_mut().filter(|n| n.online) {
                let (old, _) = hydrate_lenient(&n.doc);
                let mut new = AutoCommit::load(&saved)
                    .unwrap()
                    .with_actor(ActorId::random());
                migrate_into(&old, &mut new, &n.id).unwrap();
                n.doc = new;
                n.epoch = hub.epoch.clone();
                n.synced = hub.doc.get_heads();
            }
            epochs += 1;
            epoch_lengths_min.push(minute - last_epoch_at);
            last_epoch_at = minute;
        }
        if minute % (24 * 60) == 0 && minute > 0 {
            eprintln!(
                "day {}: {events} events, {epochs} epochs, {:.1} s",
                minute / (24 * 60),
                wall.elapsed().as_secs_f64()
            );
        }
        if minute % 60 == 0 {
            let (hub, _) = nodes.split_first_mut().expect("20 nodes");
            let size = hub.doc.save().len();
            peak_bytes = peak_bytes.max(size);
            peak_changes = peak_changes.max(hub.doc.get_changes(&[]).len());
        }
    }
    // Replay the same number of events into the baseline (same mix, one document).
    let mut brng = StdRng::seed_from_u64(7);
    let bepoch = epoch_of(&mut baseline);
    let mut bnodes: Vec<Node> = vec![Node {
        id: node_id(0),
        doc: std::mem::replace(&mut baseline, AutoCommit::new()),
        online: true,
        epoch: bepoch,
        synced: Vec::new(),
    }];
    for i in 0..events {
        let kind = pick_kind(&mut brng, &per_hour);
        event(&mut brng, &mut bnodes, (i as i64) * 12_000, kind);
    }
    let baseline_bytes = bnodes[0].doc.save();

    // Final checks: every node converged to the same value.
    let (hub, rest) = nodes.split_first_mut().expect("20 nodes");
    for n in rest.iter_mut() {
        if !n.online {
            n.online = true;
        }
        let (old, _) = hydrate_lenient(&n.doc);
        if n.epoch != hub.epoch {
            let mut new = AutoCommit::load(&hub.doc.save())
                .unwrap()
                .with_actor(ActorId::random());
            migrate_into(&old, &mut new, &n.id).unwrap();
            n.doc = new;
        }
        hub.doc.merge(&mut n.doc).unwrap();
    }
    for n in rest.iter_mut() {
        n.doc.merge(&mut hub.doc).unwrap();
    }
    let final_state = hydrate_lenient(&hub.doc).0;
    let converged = rest
        .iter()
        .all(|n| hydrate_lenient(&n.doc).0 == final_state);
    let saved = hub.doc.save();
    let load = load_time(&saved);
    let baseline_load = load_time(&baseline_bytes);
    epoch_lengths_min.sort();
    let median_epoch_h = epoch_lengths_min
        .get(epoch_lengths_min.len() / 2)
        .map_or(0.0, |m| *m as f64 / 60.0);

    println!("## State churn replay: {NODES} nodes, {days} days\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| events (one change each) | {events} ({:.0}/h) |",
        events as f64 / (days * 24) as f64
    );
    println!("| compaction threshold | {COMPACT_AT_CHANGES} changes |");
    println!("| epochs | {epochs} (median {median_epoch_h:.1} h apart) |");
    println!(
        "| entries at the end | {} nodes, {} services, {} instances, {} leases |",
        final_state.nodes.len(),
        final_state.services.len(),
        final_state.instances.len(),
        final_state.leases.len()
    );
    println!("| final saved size | {} bytes |", saved.len());
    println!(
        "| final changes in history | {} |",
        hub.doc.get_changes(&[]).len()
    );
    println!(
        "| final load time (median of 11) | {:.2} ms |",
        load.as_secs_f64() * 1e3
    );
    println!("| peak saved size (hourly samples) | {peak_bytes} bytes |");
    println!("| peak changes in history | {peak_changes} |");
    println!("| all {NODES} nodes converged | {converged} |");
    println!(
        "| baseline without compaction: size | {} bytes |",
        baseline_bytes.len()
    );
    println!(
        "| baseline without compaction: load | {:.2} ms |",
        baseline_load.as_secs_f64() * 1e3
    );
    println!(
        "| simulation wall time | {:.1} s |",
        wall.elapsed().as_secs_f64()
    );
    assert!(converged, "nodes did not converge");
}
