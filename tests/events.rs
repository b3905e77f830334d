//! The mesh-wide audit trail with real agents on loopback: `mesh events` without `--node`
//! merges every reachable node's events in time order, each labelled with its node, and
//! following it with the answer's per-node cursors returns only what is new, from any node.

#[path = "support/agent.rs"]
mod agent;

use agent::{Agent, key_file, wait_until};
use serde_json::Value;

/// Through the support helper, which retries on "no node named" (a guard: a node `agent`
/// sees alive resolves through membership even before its record reaches the document).
fn add(agent: &Agent, name: &str, node: &str) {
    agent.add_service(&[name, "--node", node, "--pinned", "--", "sleep", "100000"]);
}

/// `GET /v1/events?cursors=…` through `mesh api`.
fn events_after(agent: &Agent, cursors: &Value) -> Value {
    let encoded: Vec<String> = cursors
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, seq)| format!("{id}:{seq}"))
        .collect();
    let path = format!("/v1/events?cursors={}", encoded.join(","));
    let out = agent.cli(&["api", "GET", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_merged_trail_holds_every_node_in_time_order_and_follows_with_cursors() {
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let a = Agent::start(tmp.path(), "a", &key, &[]);
    let b = Agent::start(tmp.path(), "b", &key, &[a.quic_addr()]);
    let b_id = b.id();
    wait_until("a sees b alive", || {
        (a.state_of(&b_id).as_deref() == Some("alive")).then_some(())
    });
    add(&a, "on-a", "a");
    add(&a, "on-b", "b");
    a.wait_service_state("on-a", "healthy");
    a.wait_service_state("on-b", "healthy");

    let merged = wait_until("a's merged trail has both services' starts", || {
        let v = a.json(&["events", "-n", "1000"]);
        let events = v["events"].as_array()?.clone();
        let has = |node: &str, service: &str| {
            events
                .iter()
                .any(|e| e["node"] == node && e["service"] == service && e["kind"] == "spawned")
        };
        (has("a", "on-a") && has("b", "on-b")).then_some(v)
    });
    let events = merged["events"].as_array().unwrap();
    let times: Vec<i64> = events
        .iter()
        .map(|e| e["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not in time order: {times:?}"
    );
    assert_eq!(merged["node"], "mesh");
    let cursors = merged["cursors"].clone();
    assert_eq!(cursors.as_object().unwrap().len(), 2, "{cursors}");
    // One node's trail alone is still there.
    assert!(b.events(None).iter().all(|e| e["node"] == "b"));

    // Following: only what came after the cursors, from whichever node.
    add(&a, "later-on-b", "b");
    a.wait_service_state("later-on-b", "healthy");
    let next = wait_until("the follow-up has later-on-b", || {
        let v = events_after(&a, &cursors);
        v["events"]
            .as_array()?
            .iter()
            .any(|e| e["node"] == "b" && e["service"] == "later-on-b")
            .then_some(v)
    });
    assert!(
        next["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["service"] != "on-a" && e["service"] != "on-b"),
        "old events came back: {next}"
    );
}
