//! Joining with invite tickets, with real agents on loopback (`--no-mdns`): a fresh agent joins
//! with `mesh join TICKET` and both list each other alive; the same ticket again, an expired
//! one, one pinning another node id and one with a forged secret are refused, and the refused
//! agent gets no key; first boot with `--join-file` joins and deletes the file.

#[path = "support/agent.rs"]
mod agent;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agent::{Agent, key_file, key_in, wait_until};
use mesh::invite::Ticket;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Asserts that the command's stderr says `what`; otherwise shows it and the agents' logs.
fn said(out: &std::process::Output, what: &str, agents: &[&Agent]) {
    let logs: Vec<String> = agents
        .iter()
        .map(|x| format!("--- {}:\n{}", x.name, x.log()))
        .collect();
    assert!(
        stderr(out).contains(what),
        "{}\n{}",
        stderr(out),
        logs.join("\n")
    );
}

/// A new ticket from `inviter` (extra `mesh invite` flags in `args`).
fn invite(inviter: &Agent, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["invite"];
    all.extend_from_slice(args);
    inviter.json(&all)
}

fn mesh_id(agent: &Agent) -> String {
    agent.status().expect("status")["mesh_id"]
        .as_str()
        .expect("mesh_id")
        .to_string()
}

fn alive_in(observer: &Agent, id: &str) -> bool {
    observer.state_of(id).as_deref() == Some("alive")
}

fn join_events(agent: &Agent, kind: &str) -> Vec<serde_json::Value> {
    agent
        .events(None)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn a_ticket_joins_a_fresh_agent_once_and_bad_tickets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let a = Agent::start(tmp.path(), "a", &key, &[]);
    let a_mesh = mesh_id(&a);
    let created = invite(&a, &["--name", "pi"]);
    let ticket = created["ticket"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("MESH1"));
    assert!(!ticket.contains(&std::fs::read_to_string(&key).unwrap().trim().to_uppercase()));

    // A fresh agent (its own generated key) joins with `mesh join`, restarts under the key,
    // and both list each other alive.
    let b = Agent::start_keyless(tmp.path(), "b", &[]);
    let b_id = b.id();
    assert_ne!(mesh_id(&b), a_mesh);
    let started = Instant::now();
    let out = b.cli(&["join", &ticket]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), b.log());
    assert!(stdout(&out).contains("joined mesh"), "{}", stdout(&out));
    let a_id = a.id();
    wait_until("b runs with a's key", || {
        b.status().ok().filter(|s| s["mesh_id"] == a_mesh.as_str())
    });
    wait_until("a and b list each other alive", || {
        (alive_in(&a, &b_id) && alive_in(&b, &a_id)).then_some(())
    });
    eprintln!(
        "join to alive on both sides: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(b.id(), b_id, "b keeps its node identity");
    assert_eq!(key_in(&b.dir), a_mesh);
    assert_eq!(join_events(&a, "join_accepted").len(), 1);

    // The same ticket again, from a third agent: refused, no key, listed by no one.
    let c = Agent::start_keyless(tmp.path(), "c", &[]);
    let c_mesh = mesh_id(&c);
    let c_id = c.id();
    let out = c.cli(&["join", &ticket]);
    assert!(!out.status.success());
    said(&out, "already used", &[&a, &c]);
    assert_eq!(key_in(&c.dir), c_mesh);
    assert_eq!(mesh_id(&c), c_mesh);
    assert!(a.state_of(&c_id).is_none());
    assert!(b.state_of(&c_id).is_none());

    // An expired ticket: refused by the inviter's clock.
    let short = invite(&a, &["--ttl", "1s"]);
    let expires = short["invite"]["expires"].as_u64().unwrap();
    wait_until("the short ticket expires", || {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        (now.as_secs() >= expires).then_some(())
    });
    let out = c.cli(&["join", short["ticket"].as_str().unwrap()]);
    assert!(!out.status.success());
    said(&out, "expired", &[&a, &c]);
    assert_eq!(key_in(&c.dir), c_mesh);

    // A ticket pinning another node id at a's address: the dial fails on the TLS handshake,
    // so the secret never leaves c; a records no attempt and the invite stays unused.
    let pinned = invite(&a, &[]);
    let mut forged = Ticket::decode(pinned["ticket"].as_str().unwrap()).unwrap();
    forged.inviter = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let refused_before = join_events(&a, "join_refused").len();
    let out = c.cli(&["join", &forged.encode()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&forged.inviter.to_base58())
            && stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(join_events(&a, "join_refused").len(), refused_before);
    let pinned_id = pinned["invite"]["id"].as_str().unwrap();
    let list = a.json(&["invite", "--list"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == pinned_id)
        .unwrap()
        .clone();
    assert_eq!(
        (row["used"].as_u64(), row["status"].as_str()),
        (Some(0), Some("open"))
    );

    // A forged secret at the right node: refused as unknown, recorded by the inviter.
    let mut wrong_secret = Ticket::decode(pinned["ticket"].as_str().unwrap()).unwrap();
    wrong_secret.secret[0] ^= 1;
    let out = c.cli(&["join", &wrong_secret.encode()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown"), "{}", stderr(&out));
    assert_eq!(key_in(&c.dir), c_mesh);
    wait_until("a records the refusal", || {
        (join_events(&a, "join_refused").len() > refused_before).then_some(())
    });

    // A revoked ticket.
    let out = a.cli(&["invite", "--revoke", pinned_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.cli(&["join", pinned["ticket"].as_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    assert_eq!(mesh_id(&c), c_mesh);
    assert!(a.state_of(&c_id).is_none());
}

#[test]
fn first_boot_joins_with_the_ticket_file_and_deletes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let a = Agent::start(tmp.path(), "a", &key, &[]);
    let a_mesh = mesh_id(&a);
    let a_id = a.id();
    let ticket = invite(&a, &[])["ticket"].as_str().unwrap().to_string();
    let file = tmp.path().join("mesh-ticket.txt");
    // As a person would write it on a boot partition: with a trailing line break.
    std::fs::write(&file, format!("{ticket}\r\n")).unwrap();
    let started = Instant::now();
    let pi = Agent::start_keyless(tmp.path(), "pi", &["--join-file", file.to_str().unwrap()]);
    assert_eq!(mesh_id(&pi), a_mesh, "{}", pi.log());
    assert!(!file.exists(), "the ticket file is deleted after the join");
    let pi_id = pi.id();
    wait_until("a and the pi list each other alive", || {
        (alive_in(&a, &pi_id) && alive_in(&pi, &a_id)).then_some(())
    });
    eprintln!("first boot to alive: {} ms", started.elapsed().as_millis());

    // Without the file, the agent starts as it is (and still finds the mesh: the inviter's
    // addresses were kept).
    let mut pi = pi;
    pi.signal("-TERM");
    let pi = Agent::start_keyless(tmp.path(), "pi", &["--join-file", file.to_str().unwrap()]);
    assert_eq!(mesh_id(&pi), a_mesh);
    wait_until("the restarted pi is alive again", || {
        (alive_in(&a, &pi_id) && alive_in(&pi, &a_id)).then_some(())
    });
}
