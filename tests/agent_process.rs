//! The real `mesh` binary as a user runs it: agents as separate processes on loopback (static
//! peers, no mDNS, so no root is needed), driven and inspected through the CLI. Waits are on
//! conditions with generous ceilings.

use std::process::Command;

#[path = "support/agent.rs"]
mod agent;

use agent::{Agent, MESH, key_file, mesh, wait_until};

#[test]
fn cli_without_an_agent_says_how_to_start_one() {
    // Port 9 (discard) on loopback: nothing listens there.
    let out = mesh(&["peers", "--api", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mesh agent"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn real_agents_detect_crash_restart_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let a = Agent::start(dir.path(), "alpha", &key, &[]);
    let seed = a.quic_addr();
    let b = Agent::start(dir.path(), "beta", &key, std::slice::from_ref(&seed));
    let mut c = Agent::start(dir.path(), "gamma", &key, std::slice::from_ref(&seed));
    let c_id = c.id();
    for (obs, other) in [(&a, &b), (&b, &a), (&a, &c), (&b, &c)] {
        let id = other.id();
        wait_until("alive", || {
            (obs.state_of(&id).as_deref() == Some("alive")).then_some(())
        });
    }
    // Table output: self first and marked.
    let table = mesh(&["peers", "--api", &a.api()]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().nth(1).unwrap().starts_with("alpha (self)"),
        "{text}"
    );

    c.signal("-KILL");
    for obs in [&a, &b] {
        wait_until("dead after kill -9", || {
            (obs.state_of(&c_id).as_deref() == Some("dead")).then_some(())
        });
    }
    // Restart with the same data dir: same node id, alive again.
    let mut c = Agent::start(dir.path(), "gamma", &key, std::slice::from_ref(&seed));
    assert_eq!(c.id(), c_id, "the node id survives a restart");
    for obs in [&a, &b] {
        wait_until("alive after restart", || {
            (obs.state_of(&c_id).as_deref() == Some("alive")).then_some(())
        });
    }
    c.signal("-TERM");
    for obs in [&a, &b] {
        wait_until("left after SIGTERM", || {
            (obs.state_of(&c_id).as_deref() == Some("left")).then_some(())
        });
    }
}

#[test]
fn bad_mesh_key_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let out = Command::new(MESH)
        .args([
            "agent",
            "--data-dir",
            &dir.path().join("d").display().to_string(),
            "--mesh-key",
            &bad.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("64 hex characters"), "{err}");
}
