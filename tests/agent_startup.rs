//! What the real `mesh agent` refuses at start, and what it says when it does: a data dir
//! already in use by a running agent, a QUIC port held by another program. Agents run as
//! separate processes on loopback (static peers, no mDNS); waits are on conditions with
//! generous ceilings.

#[path = "support/agent.rs"]
mod agent;

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use agent::{Agent, CEILING, MESH, key_file, wait_until};

/// Runs `mesh agent ARGS` expecting it to exit by itself; kills it and panics past [`CEILING`]
/// (an agent that starts instead of refusing runs until stopped).
fn agent_that_exits(args: &[&str]) -> Output {
    let mut child = Command::new(MESH)
        .arg("agent")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh agent");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait for mesh agent").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if start.elapsed() > CEILING {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "the agent did not exit by itself: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn service_pid(a: &Agent, name: &str) -> Option<u64> {
    a.json(&["services"])
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?["pid"]
        .as_u64()
}

fn process_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_second_agent_on_the_same_data_dir_exits_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let a = Agent::start(dir.path(), "alpha", &key, &[]);
    let a_pid = a.child.as_ref().unwrap().id();
    let out = a.cli(&["service", "add", "sleeper", "--", "sleep", "600"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = wait_until("the service runs", || service_pid(&a, "sleeper"));
    let api_before = std::fs::read(a.dir.join("api.addr")).unwrap();
    let node_id = a.id();

    // Same data dir and name, its own ports: the same node id if it got that far.
    let data_dir = a.dir.display().to_string();
    let key = key.display().to_string();
    let out = agent_that_exits(&[
        "--data-dir",
        &data_dir,
        "--name",
        "alpha",
        "--mesh-key",
        &key,
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("pid {a_pid}")), "{err}");
    assert!(err.contains(&data_dir), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "the refused agent did nothing it could log: {err}"
    );

    assert_eq!(
        std::fs::read(a.dir.join("api.addr")).unwrap(),
        api_before,
        "api.addr is untouched"
    );
    assert!(
        process_alive(service),
        "the running agent's service lives on"
    );
    assert_eq!(service_pid(&a, "sleeper"), Some(service), "not restarted");
    assert_eq!(a.id(), node_id, "the first agent still answers");
}

#[test]
fn a_busy_quic_port_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let data_dir = dir.path().join("d").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = agent_that_exits(&[
        "--data-dir",
        &data_dir,
        "--listen",
        &listen,
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("UDP port {port}")), "{last}");
    assert!(
        last.contains("another mesh agent or another program"),
        "{last}"
    );
    assert!(last.contains("--listen"), "{last}");
}
