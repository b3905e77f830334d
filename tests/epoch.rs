//! State epochs over real sockets: a compaction on one node is adopted by the others, nothing
//! is lost, and writes keep flowing in the new epoch. Waits are on conditions with ceilings.

#[path = "support/cluster.rs"]
mod cluster;

use mesh::node::NodeHandle;

use cluster::{Cluster, wait_state_of as wait_state};

fn tag_of(node: &NodeHandle, owner: &NodeHandle, key: &str) -> Option<String> {
    node.state()
        .snapshot()
        .state
        .nodes
        .get(&owner.peer_id().to_base58())
        .and_then(|n| n.tags.get(key).cloned())
}

async fn mesh_of(n: usize) -> Vec<NodeHandle> {
    let cluster = Cluster::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(cluster.start(cluster.config(&format!("e{i}"))).await);
    }
    // Everyone has everyone's node record.
    for a in &nodes {
        wait_state(a, "all node records", |s| s.state.nodes.len() == n).await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_is_adopted_everywhere_without_loss() {
    let t0 = std::time::Instant::now();
    let nodes = mesh_of(3).await;
    eprintln!("mesh up: {:?}", t0.elapsed());
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..20 {
            n.state()
                .set_tag("k", Some(&format!("{i}-{j}")))
                .await
                .unwrap();
        }
    }
    for a in &nodes {
        for b in &nodes {
            let want = format!(
                "{}-19",
                nodes
                    .iter()
                    .position(|x| x.peer_id() == b.peer_id())
                    .unwrap()
            );
            wait_state(a, "tags", |_| {
                tag_of(a, b, "k").as_deref() == Some(want.as_str())
            })
            .await;
        }
    }
    eprintln!("tags converged: {:?}", t0.elapsed());
    let before = nodes[0].state().snapshot();
    assert!(before.changes > 60);
    assert!(nodes[0].state().compact_now(true).await.unwrap());
    let epoch = nodes[0].state().snapshot().epoch.clone();
    assert_eq!(epoch.number, 1);
    for n in &nodes {
        wait_state(n, "the new epoch", |s| s.epoch == epoch).await;
        let snap = n.state().snapshot();
        assert_eq!(
            snap.state.nodes, before.state.nodes,
            "nothing lost in compaction"
        );
        assert!(
            snap.changes < 10,
            "history was compacted: {} changes",
            snap.changes
        );
    }
    eprintln!("epoch adopted: {:?}", t0.elapsed());
    // Writes keep flowing in the new epoch.
    nodes[2]
        .state()
        .set_tag("after", Some("yes"))
        .await
        .unwrap();
    for n in &nodes {
        wait_state(n, "a tag written after compaction", |_| {
            tag_of(n, &nodes[2], "after").as_deref() == Some("yes")
        })
        .await;
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compactions_settle_on_one_epoch() {
    let nodes = mesh_of(2).await;
    nodes[0].state().set_tag("a", Some("1")).await.unwrap();
    nodes[1].state().set_tag("b", Some("2")).await.unwrap();
    // Both compact at once, possibly from different heads.
    let (ra, rb) = tokio::join!(
        nodes[0].state().compact_now(true),
        nodes[1].state().compact_now(true)
    );
    assert!(ra.unwrap() && rb.unwrap());
    wait_state(&nodes[0], "one epoch", |s| {
        s.epoch == nodes[1].state().snapshot().epoch && s.heads == nodes[1].state().snapshot().heads
    })
    .await;
    for n in &nodes {
        assert_eq!(tag_of(n, &nodes[0], "a").as_deref(), Some("1"));
        assert_eq!(tag_of(n, &nodes[1], "b").as_deref(), Some("2"));
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
