//! Supervised services end to end: real agents (separate processes on loopback) running real
//! service processes (`python3 -m http.server $PORT`, `sh` scripts), driven and inspected only
//! through the `mesh` CLI, as a user would. Waits are on conditions with generous ceilings.
//!
//! Needs `python3` and `sh`; without python3 each test prints `skipping: ...` and passes.
//! Each test gives its agents their own port pool, so tests running in parallel never race
//! for the same ports.

#[path = "support/agent.rs"]
mod agent;

use std::net::TcpListener;
use std::path::Path;

use agent::{Agent, key_file, ok, wait_until};
use serde_json::Value;

/// A service command: a web server on `$PORT`, on loopback only, its output unbuffered (a
/// service's environment is clean: nothing like `PYTHONUNBUFFERED` comes from the agent's).
const HTTP_SERVER: [&str; 7] = [
    "python3",
    "-u",
    "-m",
    "http.server",
    "--bind",
    "127.0.0.1",
    "$PORT",
];

/// `mesh service add NAME FLAGS... -- <HTTP_SERVER>` on `agent`, whatever its outcome.
fn add_http_with(agent: &Agent, name: &str, flags: &[&str]) -> std::process::Output {
    let mut args = vec!["service", "add", name];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend(HTTP_SERVER);
    agent.cli(&args)
}

fn have_python() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: python3 is not installed");
    }
    ok
}

/// Two agents in one mesh, each with the port pool `first..=first+99`.
fn two_agents(dir: &Path, first: u16) -> (Agent, Agent) {
    let key = key_file(dir);
    let pool = format!("default={first}-{}", first + 99);
    let a = Agent::start_with(dir, "alpha", &key, &[], &["--port-pool", &pool]);
    let seed = a.quic_addr();
    let b = Agent::start_with(dir, "beta", &key, &[seed], &["--port-pool", &pool]);
    let b_id = b.id();
    wait_until("alpha sees beta alive", || {
        (a.state_of(&b_id).as_deref() == Some("alive")).then_some(())
    });
    (a, b)
}

fn add_http(agent: &Agent, name: &str, after: &[&str], health: &str) {
    let mut flags = vec!["--port", "auto", "--health", health];
    for dep in after {
        flags.extend(["--after", dep]);
    }
    ok(add_http_with(agent, name, &flags));
}

#[test]
fn chain_starts_in_order_is_healthy_everywhere_and_rides_through_kill_9() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_agents(dir.path(), 31000);
    add_http(&a, "db", &[], "tcp");
    add_http(&a, "api", &["db"], "http:/");
    add_http(&a, "web", &["api"], "http:/");
    // A dependent configured to restart with its dependency.
    ok(a.cli(&[
        "service",
        "add",
        "worker",
        "--after",
        "db",
        "--on-dependency-restart",
        "restart",
        "--",
        "sleep",
        "100000",
    ]));

    // Healthy as seen from the other node, through the replicated document.
    for name in ["db", "api", "web"] {
        let s = b.wait_service_state(name, "healthy");
        assert_eq!(s["node"], "alpha");
        assert_eq!(s["health"], "healthy");
        assert!(s["pid"].as_u64().is_some());
        assert_eq!(s["ports"].as_array().unwrap().len(), 1);
    }
    // Started in dependency order: each spawned only after its dependency was healthy.
    let trail = a.events(None);
    let at = |service: &str, kind: &str| {
        trail
            .iter()
            .position(|e| e["service"] == service && e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event for {service}: {trail:#?}"))
    };
    assert!(at("db", "healthy") < at("api", "spawned"));
    assert!(at("api", "healthy") < at("web", "spawned"));

    // Leases: in use, seen from the other node.
    let leases = wait_until("three in-use leases seen from beta", || {
        let ports = b.json(&["ports"]);
        let rows: Vec<Value> = ports
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["node"] == "alpha" && p["state"] == "in-use")
            .cloned()
            .collect();
        (rows.len() == 3).then_some(rows)
    });
    let mut owners: Vec<&str> = leases
        .iter()
        .map(|l| l["service"].as_str().unwrap())
        .collect();
    owners.sort();
    assert_eq!(owners, ["api", "db", "web"]);

    // kill -9 the db: it comes back; its dependents ride through (same pids).
    let db = a.service("db").unwrap();
    // Placed on the other node from here, depending on a service of this node.
    ok(a.cli(&[
        "service", "add", "remote", "--node", "beta", "--after", "db", "--", "sleep", "100000",
    ]));
    let remote = a.wait_service_state("remote", "healthy");
    assert_eq!(remote["node"], "beta");
    let api_pid = a.service("api").unwrap()["pid"].clone();
    let worker_pid = a.wait_service_state("worker", "healthy")["pid"].clone();
    let db_pid = db["pid"].as_u64().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &db_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let back = wait_until("db back with a new pid", || {
        a.service("db")
            .filter(|s| s["state"] == "healthy" && s["pid"].as_u64().is_some_and(|p| p != db_pid))
    });
    assert_eq!(back["restarts"], 1);
    assert_eq!(back["ports"], db["ports"], "the db keeps its port");
    assert_eq!(
        a.service("api").unwrap()["pid"],
        api_pid,
        "api rode through"
    );
    assert_eq!(
        b.service("remote").unwrap()["pid"],
        remote["pid"],
        "a dependent on another node rode through too"
    );
    let worker = wait_until("worker restarted with db", || {
        a.service("worker")
            .filter(|s| s["state"] == "healthy" && s["pid"] != worker_pid)
    });
    assert_eq!(
        worker["restarts"], 0,
        "a restart with its dependency is not a failure"
    );
    // The story, with reasons, asked of alpha from beta through the mesh.
    let story = b.events(Some("alpha"));
    let exited = story
        .iter()
        .find(|e| e["service"] == "db" && e["kind"] == "exited")
        .expect("an exited event");
    assert!(
        exited["reason"].as_str().unwrap().contains("SIGKILL"),
        "{exited}"
    );
    let backoff = story
        .iter()
        .find(|e| e["service"] == "db" && e["kind"] == "backoff")
        .expect("a backoff event");
    assert!(
        backoff["reason"]
            .as_str()
            .unwrap()
            .contains("restarting in"),
        "{backoff}"
    );
    // Logs of a service on another node, through the mesh.
    let logs = b.json(&["logs", "db", "-n", "5"]);
    assert_eq!(logs["node"], "alpha");
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("Serving HTTP")),
        "{logs}"
    );
    // The listening sockets of alpha, asked from beta: the db's port, with its service.
    let db_port = back["ports"][0].as_u64().unwrap();
    let listening = b.json(&["ports", "--listening", "--node", "alpha"]);
    let row = listening["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"].as_u64() == Some(db_port))
        .unwrap_or_else(|| panic!("port {db_port} not listed: {listening}"))
        .clone();
    assert_eq!(row["service"], "db");

    // Stop in reverse order on agent shutdown: web, then api, then db.
    drop(b);
    let mut a = a;
    a.signal("-TERM");
    let log = a.log();
    let stopped = |name: &str| {
        log.find(&format!("service={name} kind=stopped"))
            .unwrap_or_else(|| panic!("{name} not stopped: {log}"))
    };
    assert!(stopped("web") < stopped("api"));
    assert!(stopped("api") < stopped("db"));
}

#[test]
fn a_crashing_service_backs_off_fails_stops_its_dependents_and_comes_back() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_agents(dir.path(), 31200);
    let marker = dir.path().join("healthy-marker");
    std::fs::write(&marker, "").unwrap();
    // `flaky` serves while the marker exists, else says why and exits 3 at once.
    let file = dir.path().join("services.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[service]]
name = "flaky"
command = "sh"
args = ["-c", "test -f {marker} || {{ echo 'no marker, giving up' >&2; exit 3; }}; exec python3 -u -m http.server --bind 127.0.0.1 $PORT"]
ports = [{{}}]
health = {{ check = "tcp", interval = "200ms" }}
restart = {{ first_delay = "50ms", cap = "800ms", failed_after = 4, keep_retrying_when_failed = false }}

[[service]]
name = "app"
command = "python3"
args = ["-u", "-m", "http.server", "--bind", "127.0.0.1", "$PORT"]
after = ["flaky"]
ports = [{{}}]
health = {{ check = "http", path = "/", interval = "200ms" }}
"#,
            marker = marker.display()
        ),
    )
    .unwrap();
    ok(a.cli(&["service", "add", "-f", file.to_str().unwrap()]));
    b.wait_service_state("app", "healthy");

    // Break it: every start now exits at once.
    std::fs::remove_file(&marker).unwrap();
    let pid = a.service("flaky").unwrap()["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let failed = b.wait_service_state("flaky", "failed");
    assert_eq!(failed["last_exit"], "exit status 3");
    assert!(
        failed["log_tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("no marker")),
        "the failure carries its log tail: {failed}"
    );
    let app = b.wait_service_state("app", "stopped");
    assert!(
        app["reason"].as_str().unwrap().contains("dependency flaky"),
        "{app}"
    );
    // Delays doubled: 50, 100, 200 ms (jitter only shortens, by at most 10 %).
    let delays: Vec<u64> = a
        .events(None)
        .iter()
        .filter(|e| e["service"] == "flaky" && e["kind"] == "backoff")
        .map(|e| {
            let reason = e["reason"].as_str().unwrap();
            let ms = reason
                .split("restarting in ")
                .nth(1)
                .and_then(|r| r.split(" ms").next())
                .unwrap_or_else(|| panic!("no delay in {reason}"));
            ms.parse().unwrap()
        })
        .collect();
    assert!(delays.len() >= 3, "{delays:?}");
    for (delay, nominal) in delays.iter().zip([50u64, 100, 200]) {
        assert!(
            *delay <= nominal && *delay * 10 >= nominal * 9,
            "{delays:?}"
        );
    }
    let failed_text = ok(a.cli(&["services"]));
    assert!(failed_text.contains("flaky failed"), "{failed_text}");

    // Fix it and restart it (from the other node): the chain comes back.
    std::fs::write(&marker, "").unwrap();
    ok(b.cli(&["service", "restart", "flaky"]));
    b.wait_service_state("flaky", "healthy");
    b.wait_service_state("app", "healthy");
}

#[test]
fn ports_fixed_conflicts_are_refused_and_foreign_ports_skipped() {
    if !have_python() {
        return;
    }
    // A foreign process (this test) holds the first port of the pool.
    let foreign = TcpListener::bind("0.0.0.0:0").unwrap();
    let held = foreign.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let pool = format!("default={held}-{}", held.saturating_add(50));
    let a = Agent::start_with(dir.path(), "alpha", &key, &[], &["--port-pool", &pool]);

    add_http(&a, "one", &[], "tcp");
    let one = a.wait_service_state("one", "healthy");
    let port = one["ports"][0].as_u64().unwrap();
    assert_ne!(port, u64::from(held), "auto never hands out a port in use");

    // Two services asking for the same fixed port: the second is refused, naming the first.
    let fixed = {
        let probe = TcpListener::bind("0.0.0.0:0").unwrap();
        probe.local_addr().unwrap().port().to_string()
    };
    ok(add_http_with(&a, "two", &["--port", &fixed]));
    let refused = add_http_with(&a, "three", &["--port", &fixed]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("two") && err.contains(&fixed) && err.contains("fixed port"),
        "{err}"
    );
    a.wait_service_state("two", "healthy");

    // A fixed port held by a foreign process: the service cannot start, and says why.
    let held_text = held.to_string();
    ok(add_http_with(
        &a,
        "four",
        &["--port", &held_text, "--restart", "never"],
    ));
    let four = a.wait_service_state("four", "failed");
    let reason = four["reason"].as_str().unwrap();
    assert!(
        reason.contains(&held_text) && reason.contains("in use by another process"),
        "{reason}"
    );

    // Unknown dependency and cycles are refused at add time, naming the problem.
    let unknown = a.cli(&["service", "add", "five", "--after", "nope", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nope"));
    // A dependency in use blocks removal.
    ok(a.cli(&[
        "service", "add", "six", "--after", "one", "--", "sleep", "1000",
    ]));
    let rm = a.cli(&["service", "rm", "one"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("six"));
    // Stop and start by request.
    ok(a.cli(&["service", "stop", "six"]));
    a.wait_service_state("six", "stopped");
    ok(a.cli(&["service", "start", "six"]));
    a.wait_service_state("six", "healthy");
    ok(a.cli(&["service", "rm", "six"]));
    wait_until("six gone", || a.service("six").is_none().then_some(()));
    drop(foreign);
}

#[test]
fn an_agent_crash_leaves_no_unsupervised_service_behind() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let pool = ["--port-pool", "default=31400-31499"];
    let mut a = Agent::start_with(dir.path(), "alpha", &key, &[], &pool);
    ok(a.cli(&["service", "add", "sleeper", "--", "sleep", "100000"]));
    let old_pid = a.wait_service_state("sleeper", "healthy")["pid"]
        .as_u64()
        .unwrap();
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .starts_with('Z')
        })
    };
    // The agent dies without stopping anything: its service keeps running, unsupervised.
    a.signal("-KILL");
    assert!(alive(old_pid), "a crashed agent's service survives it");
    // The next agent stops the leftover before starting its own copy.
    let a = Agent::start_with(dir.path(), "alpha", &key, &[], &pool);
    wait_until("the leftover stopped", || (!alive(old_pid)).then_some(()));
    let new = wait_until("a new sleeper", || {
        a.service("sleeper")
            .filter(|s| s["state"] == "healthy" && s["pid"] != old_pid)
    });
    assert!(alive(new["pid"].as_u64().unwrap()));
    let story = a.events(None);
    assert!(
        story
            .iter()
            .any(|e| e["kind"] == "leftover-stopped" && e["service"] == "sleeper"),
        "{story:#?}"
    );
}
