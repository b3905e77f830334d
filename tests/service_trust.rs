//! Trust before cleverness, for services: real agents running real processes, checked from
//! the outside (`/proc/*/cmdline`, `/proc/PID/status`, files the services write) and through
//! the `mesh` CLI.
//!
//! - a service with `user` runs as that user, without the agent's supplementary groups; an
//!   unknown user is refused at add time;
//! - services that daemonize (`(sleep &)`, `setsid`) leave nothing behind after restarts,
//!   `service rm` and an agent stop;
//! - `kill -9` of the agent and then of a service's main process leaves exactly one copy
//!   after the agent restarts; so do restarts with `--leave-services-running`;
//! - a service removed while its node was down does not run again when it comes back;
//! - `--accept-services own|none` refuse services placed from another node, visibly, and a
//!   node restarted with `none` runs none of its own; a node lacking a spec's user refuses it;
//! - add-time refusals: a port pool that does not exist, `max_services`, bounds.
//!
//! Needs root (uids, cgroups) and `sh`, `sleep`, `id`; without root each test prints
//! `skipping: ...` and passes. Every wait is on a condition with a generous ceiling.

#[path = "support/agent.rs"]
mod agent;

use std::path::Path;
use std::process::Output;

use agent::{Agent, key_file, ok, wait_until};
use serde_json::Value;

fn is_root() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    });
    if !root {
        eprintln!("skipping: needs root (service accounts, cgroups, signalling services)");
    }
    root
}

/// A sleep argument no other test (or run) uses, so processes can be counted by cmdline.
fn unique_seconds(slot: u32) -> String {
    (1_000_000 + (std::process::id() % 10_000) * 100 + slot).to_string()
}

/// Live processes whose command line is exactly `sleep SECONDS` (zombies have none).
fn sleeps(seconds: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{seconds}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

fn refused(out: Output) -> String {
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8(out.stderr).unwrap()
}

fn has_event(agent: &Agent, node: Option<&str>, service: &str, kind: &str) -> bool {
    agent
        .events(node)
        .iter()
        .any(|e| e["service"] == service && e["kind"] == kind)
}

/// `mesh service add NAME FLAGS... -- sh -c SCRIPT`.
fn add_sh(agent: &Agent, name: &str, flags: &[&str], script: &str) -> Output {
    let mut args = vec!["service", "add", name];
    args.extend_from_slice(flags);
    args.extend(["--", "/bin/sh", "-c", script]);
    agent.cli(&args)
}

/// [`add_sh`] for another node, retried while this node's document does not know that node
/// yet (membership can be faster than the first sync).
fn add_sh_remote(agent: &Agent, name: &str, flags: &[&str], script: &str) {
    wait_until(&format!("{name} added through {}", agent.name), || {
        let out = add_sh(agent, name, flags, script);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success() || err.contains("no node named"),
            "{err}"
        );
        out.status.success().then_some(())
    });
}

fn one_agent(dir: &Path, extra: &[&str]) -> (Agent, std::path::PathBuf) {
    let key = key_file(dir);
    (Agent::start_with(dir, "alpha", &key, &[], extra), key)
}

#[test]
fn a_service_with_a_user_runs_as_that_user_without_supplementary_groups() {
    if !is_root() {
        return;
    }
    let nobody = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    if !nobody.status.success() {
        eprintln!("skipping: no user `nobody`");
        return;
    }
    let uid = String::from_utf8(nobody.stdout).unwrap().trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    // A directory the service's user may write to (the test's tempdir is root's alone).
    let out = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let (a, _) = one_agent(dir.path(), &[]);
    let seconds = unique_seconds(1);
    let script = format!(
        "id -u > {d}/uid; id -G > {d}/groups; pwd > {d}/pwd; exec sleep {seconds}",
        d = out.path().display()
    );
    ok(add_sh(&a, "as-nobody", &["--user", "nobody"], &script));
    let running = a.wait_service_state("as-nobody", "healthy");
    let read = |file: &str| {
        wait_until(&format!("{file} written"), || {
            std::fs::read_to_string(out.path().join(file))
                .ok()
                .filter(|s| s.ends_with('\n'))
        })
    };
    assert_eq!(read("uid").trim(), uid);
    let primary = String::from_utf8(
        std::process::Command::new("id")
            .args(["-g", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // Only its primary group: root's supplementary groups are not inherited.
    assert_eq!(read("groups").trim(), primary.trim());
    assert_eq!(read("pwd").trim(), "/");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", running["pid"])).unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid)),
        "{status}"
    );

    // An unknown user is refused at add time, on the node that would run it.
    let err = refused(add_sh(
        &a,
        "ghost",
        &["--user", "mesh-no-such-user"],
        "exit 0",
    ));
    assert!(
        err.contains("user `mesh-no-such-user` does not exist on this node"),
        "{err}"
    );
    assert!(a.service("ghost").is_none());
}

#[test]
fn daemonizing_services_leave_nothing_behind_after_restarts_removal_and_agent_stop() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = one_agent(dir.path(), &[]);
    let (double_fork, setsid, kept, kept_child) = (
        unique_seconds(10),
        unique_seconds(11),
        unique_seconds(12),
        unique_seconds(13),
    );
    // Both exit at once, leaving a detached sleep: restarted (exit 0 under `always`) each time.
    ok(add_sh(
        &a,
        "double-fork",
        &["--restart", "always"],
        &format!("(sleep {double_fork} &); exit 0"),
    ));
    ok(add_sh(
        &a,
        "setsid",
        &["--restart", "always"],
        &format!("setsid sleep {setsid} & exit 0"),
    ));
    wait_until("both restarted at least three times", || {
        let restarts = |name| {
            a.service(name)
                .and_then(|s| s["restarts"].as_u64())
                .unwrap_or(0)
        };
        (restarts("double-fork") >= 3 && restarts("setsid") >= 3).then_some(())
    });
    // Each exit stopped what it left behind: never more than the newest copy.
    assert!(
        sleeps(&double_fork).len() <= 1,
        "{:?}",
        sleeps(&double_fork)
    );
    assert!(sleeps(&setsid).len() <= 1, "{:?}", sleeps(&setsid));
    ok(a.cli(&["service", "rm", "double-fork"]));
    ok(a.cli(&["service", "rm", "setsid"]));
    wait_until("no detached sleep after rm", || {
        (sleeps(&double_fork).is_empty() && sleeps(&setsid).is_empty()).then_some(())
    });

    // A running service with a detached child: the agent's stop takes both.
    ok(add_sh(
        &a,
        "keeper",
        &[],
        &format!("setsid sleep {kept_child} & exec sleep {kept}"),
    ));
    wait_until("keeper and its detached child run", || {
        (sleeps(&kept).len() == 1 && sleeps(&kept_child).len() == 1).then_some(())
    });
    a.signal("-TERM");
    assert!(sleeps(&kept).is_empty(), "{:?}", sleeps(&kept));
    assert!(sleeps(&kept_child).is_empty(), "{:?}", sleeps(&kept_child));
}

#[test]
fn kill_9_of_the_agent_then_of_the_main_process_leaves_exactly_one_copy() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut a, key) = one_agent(dir.path(), &[]);
    let (child, main) = (unique_seconds(20), unique_seconds(21));
    ok(add_sh(
        &a,
        "pair",
        &[],
        &format!("sleep {child} & exec sleep {main}"),
    ));
    let old = a.wait_service_state("pair", "healthy")["pid"]
        .as_u64()
        .unwrap();
    wait_until("the pair runs", || {
        (sleeps(&child).len() == 1 && sleeps(&main).len() == 1).then_some(())
    });
    a.signal("-KILL");
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &old.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the main process is gone", || {
        sleeps(&main).is_empty().then_some(())
    });
    assert_eq!(sleeps(&child).len(), 1, "its child outlived it");

    let a = Agent::start_with(dir.path(), "alpha", &key, &[], &[]);
    wait_until("a new pair", || {
        a.service("pair")
            .filter(|s| s["state"] == "healthy" && s["pid"] != old)
    });
    wait_until("exactly one copy of each", || {
        (sleeps(&child).len() == 1 && sleeps(&main).len() == 1).then_some(())
    });
    assert!(
        has_event(&a, None, "pair", "leftover-stopped"),
        "{:#?}",
        a.events(None)
    );
}

#[test]
fn restarts_with_leave_services_running_keep_exactly_one_copy() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--leave-services-running"];
    let (mut a, key) = one_agent(dir.path(), &flags);
    let seconds = unique_seconds(30);
    ok(add_sh(&a, "lasting", &[], &format!("exec sleep {seconds}")));
    a.wait_service_state("lasting", "healthy");
    for round in 0..4 {
        a.signal("-TERM");
        let left = sleeps(&seconds);
        assert_eq!(left.len(), 1, "round {round}: left running");
        a = Agent::start_with(dir.path(), "alpha", &key, &[], &flags);
        wait_until(&format!("round {round}: exactly one, new copy"), || {
            let now = sleeps(&seconds);
            (now.len() == 1 && now != left).then_some(())
        });
        a.wait_service_state("lasting", "healthy");
    }
    let left = sleeps(&seconds);
    a.signal("-TERM");
    let a = Agent::start_with(dir.path(), "alpha", &key, &[], &[]);
    // The document may still show the left copy as healthy: wait for the replacement.
    wait_until("the left copy stopped", || {
        has_event(&a, None, "lasting", "leftover-stopped").then_some(())
    });
    wait_until("one new copy after a plain restart", || {
        let now = sleeps(&seconds);
        (now.len() == 1 && now != left).then_some(())
    });
}

#[test]
fn a_service_removed_while_its_node_was_down_does_not_run_again() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let a = Agent::start(dir.path(), "alpha", &key, &[]);
    let seed = a.quic_addr();
    let mut b = Agent::start(dir.path(), "beta", &key, std::slice::from_ref(&seed));
    let (removed, stopped) = (unique_seconds(40), unique_seconds(41));
    // Pinned: this is about what beta does when it returns, so they must not fail over to
    // alpha while beta is down.
    ok(add_sh(
        &b,
        "removed",
        &["--pinned"],
        &format!("exec sleep {removed}"),
    ));
    ok(add_sh(
        &b,
        "stopped",
        &["--pinned"],
        &format!("exec sleep {stopped}"),
    ));
    a.wait_service_state("removed", "healthy");
    a.wait_service_state("stopped", "healthy");
    b.signal("-TERM");
    assert!(sleeps(&removed).is_empty() && sleeps(&stopped).is_empty());
    ok(a.cli(&["service", "rm", "removed"]));
    ok(a.cli(&["service", "stop", "stopped"]));

    // Back up: it learns of both changes before it starts anything.
    let b = Agent::start(dir.path(), "beta", &key, std::slice::from_ref(&seed));
    wait_until("beta has synced the removal", || {
        b.service("removed").is_none().then_some(())
    });
    wait_until("beta publishes `stopped` as stopped", || {
        b.service("stopped").filter(|s| s["desired"] == "stopped")
    });
    assert!(sleeps(&removed).is_empty(), "the removed service ran again");
    assert!(sleeps(&stopped).is_empty(), "the stopped service ran again");
    let story = b.events(None);
    assert!(
        !story
            .iter()
            .any(|e| (e["service"] == "removed" || e["service"] == "stopped")
                && e["kind"] == "start"),
        "{story:#?}"
    );
    drop(b);

    // Without a reachable peer it waits a bounded time, says so, and starts what it knows.
    drop(a);
    ok(Agent::start(dir.path(), "alpha", &key, &[]).cli(&["status"]));
    let b = Agent::start(dir.path(), "beta", &key, &[]);
    wait_until("beta gives up waiting for a peer", || {
        has_event(&b, None, "-", "startup-sync-timeout").then_some(())
    });
}

#[test]
fn accept_services_own_and_none_refuse_services_placed_from_another_node() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let a = Agent::start(dir.path(), "alpha", &key, &[]);
    let seed = a.quic_addr();
    let own = Agent::start_with(
        dir.path(),
        "own",
        &key,
        std::slice::from_ref(&seed),
        &["--accept-services", "own"],
    );
    let none = Agent::start_with(
        dir.path(),
        "none",
        &key,
        std::slice::from_ref(&seed),
        &["--accept-services", "none"],
    );
    assert_eq!(own.status().unwrap()["accept_services"], "own");
    assert_eq!(none.status().unwrap()["accept_services"], "none");
    assert_eq!(a.status().unwrap()["accept_services"], "all");
    for peer in [own.id(), none.id()] {
        wait_until("alpha knows its peers", || {
            (a.state_of(&peer).as_deref() == Some("alive")).then_some(())
        });
    }
    let seconds = unique_seconds(50);
    for target in ["own", "none"] {
        let name = format!("pushed-to-{target}");
        // Pinned: refused there, it stays there (an unpinned one moves on, below).
        add_sh_remote(
            &a,
            &name,
            &["--node", target, "--pinned"],
            &format!("exec sleep {seconds}"),
        );
        let row = a.wait_service_state(&name, "refused");
        assert!(
            row["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("--accept-services {target}")),
            "{row}"
        );
        wait_until("the refusal is an event on that node", || {
            has_event(&a, Some(target), &name, "refused").then_some(())
        });
    }
    // A node that lacks a spec's account refuses it, visibly (the API of `own` cannot check
    // another node's accounts).
    add_sh_remote(
        &own,
        "ghost-on-alpha",
        &["--node", "alpha", "--pinned", "--user", "mesh-no-such-user"],
        "exit 0",
    );
    let row = a.wait_service_state("ghost-on-alpha", "refused");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("user `mesh-no-such-user` does not exist on this node"),
        "{row}"
    );
    assert!(has_event(&a, None, "ghost-on-alpha", "refused"));
    // `own` runs what is added through its own API; `none` refuses even that, at add time.
    ok(add_sh(
        &own,
        "local-to-own",
        &[],
        &format!("exec sleep {seconds}"),
    ));
    a.wait_service_state("local-to-own", "healthy");
    let err = refused(add_sh(&none, "local-to-none", &[], "exec sleep 1"));
    assert!(err.contains("--accept-services none"), "{err}");
    assert_eq!(sleeps(&seconds).len(), 1, "only the own service runs");
    // Not pinned: `none` refuses it, and placement moves it to a node that takes it (alpha
    // is the only one), where it stays; the refusal stays published, so nothing flaps.
    let moving = unique_seconds(52);
    add_sh_remote(
        &a,
        "moves-on",
        &["--node", "none"],
        &format!("exec sleep {moving}"),
    );
    wait_until("moves-on runs on alpha", || {
        a.services()
            .into_iter()
            .find(|s| s["name"] == "moves-on" && s["state"] == "healthy" && s["node"] == "alpha")
    });
    let rows: Vec<_> = a
        .services()
        .into_iter()
        .filter(|s| s["name"] == "moves-on")
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("none".into(), "refused".into())),
        "{rows:?}"
    );
    assert_eq!(sleeps(&moving).len(), 1);
    assert!(has_event(&a, None, "moves-on", "placement-take"));
}

#[test]
fn add_time_refusals_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = one_agent(dir.path(), &["--profile", "lite"]);
    // A pool this node does not have.
    let err = refused(a.cli(&[
        "service",
        "add",
        "pooled",
        "--port",
        "auto:nopool",
        "--",
        "true",
    ]));
    assert!(err.contains("port pool `nopool` does not exist"), "{err}");
    // A fixed port asked twice on this node, once by name and once by id.
    let id = a.id();
    ok(a.cli(&[
        "service", "add", "fixed-a", "--port", "31999", "--", "sleep", "1",
    ]));
    let err = refused(a.cli(&[
        "service", "add", "fixed-b", "--node", &id, "--port", "31999", "--", "sleep", "1",
    ]));
    assert!(err.contains("fixed port 31999"), "{err}");
    // The lite profile runs one service.
    let err = refused(a.cli(&["service", "add", "second", "--", "sleep", "1"]));
    assert!(err.contains("at most 1"), "{err}");
    // A huge argument list is refused with its limit; a huge name is not echoed whole.
    let big = "x".repeat(1_900_000);
    let body = serde_json::json!({"services": [{"name": "big", "command": "true", "args": [big]}]});
    let client = a.client();
    match client.post_json::<Value, Value>("/v1/services", &body) {
        Err(mesh::api::client::ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(status, 400);
            assert_eq!(code, mesh::api::ErrorCode::BadRequest);
            assert!(
                message.contains("the limit is 8192"),
                "{}",
                &message[..message.len().min(300)]
            );
            assert!(
                message.len() < 2_000,
                "the refusal does not echo the argument"
            );
        }
        other => panic!("a 1.9 MB argument must be refused: {other:?}"),
    }
    let name = "n".repeat(10_000);
    let err = refused(a.cli(&["service", "add", &name, "--", "true"]));
    assert!(err.len() < 500, "{} bytes echoed", err.len());
}

#[test]
fn a_node_restarted_with_accept_services_none_runs_none_of_its_services() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut a, key) = one_agent(dir.path(), &[]);
    let seconds = unique_seconds(60);
    ok(add_sh(&a, "kept", &[], &format!("exec sleep {seconds}")));
    a.wait_service_state("kept", "healthy");
    a.signal("-TERM");
    let a = Agent::start_with(
        dir.path(),
        "alpha",
        &key,
        &[],
        &["--accept-services", "none"],
    );
    let row = a.wait_service_state("kept", "refused");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("--accept-services none"),
        "{row}"
    );
    assert!(has_event(&a, None, "kept", "refused"));
    assert!(
        sleeps(&seconds).is_empty(),
        "a refused service never starts"
    );
}
