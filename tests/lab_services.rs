//! Lab test of supervision: three real agents in network namespaces (`simulations/lab/lab.sh`),
//! found over real mDNS and linked over real QUIC, one of them running the example chain
//! `deploy/examples/chain.toml` (db ← api ← web, each `python3 -m http.server $PORT` checked
//! over HTTP). Every host's `mesh services` must show the chain healthy, and its `mesh ports`
//! the chain's leases `in-use` at that very moment (a passed health check marks them, no lease
//! check has to run first); a `kill -9` of the db must be healed and told in `mesh events`,
//! read from another host through the mesh.
//!
//! Requirements: root, `ip` (iproute2), `nft` (nftables) and python3. Without them the test
//! prints `skipping: <reason>` and passes. The [`Lab`] guard runs `lab.sh down` when dropped,
//! also on panic; the agents stop their services when the lab stops them (SIGTERM).

#[macro_use]
#[path = "support/lab.rs"]
mod lab;

use serde_json::Value;

use lab::{Lab, MESH_BIN, check, start_converged};

const CHAIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/chain.toml");

fn services(lab: &Lab, k: usize) -> Vec<Value> {
    lab.mesh_json(k, &["services", "--json"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn find<'a>(rows: &'a [Value], name: &str) -> Option<&'a Value> {
    rows.iter().find(|s| s["name"] == name)
}

/// `mesh ports` on host `k`: h1's live (not released) leases of `services`.
fn live_leases(lab: &Lab, k: usize, services: &[&str]) -> Vec<Value> {
    lab.mesh_json(k, &["ports", "--json"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p["node"] == "h1"
                && p["state"] != "released"
                && services.iter().any(|name| p["service"] == *name)
        })
        .collect()
}

/// Asserts that host `k`, which has just shown `services` healthy in `mesh services`, shows
/// their leases `in-use` in `mesh ports` read right after: a passed health check marks its
/// lease at once, without waiting for the 2 s lease check.
fn assert_leases_in_use(lab: &Lab, k: usize, services: &[&str]) {
    let leases = live_leases(lab, k, services);
    assert!(
        leases.len() == services.len() && leases.iter().all(|p| p["state"] == "in-use"),
        "h{k} shows {services:?} healthy, but `mesh ports` shows their leases as {leases:?}"
    );
}

#[test]
fn the_example_chain_runs_on_one_host_and_is_seen_healthy_from_all() {
    require_lab!();
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: python3 is not installed");
        return;
    }
    let lab = Lab::up("sv", 3);
    let key = lab.new_key("mesh.key");
    start_converged(&lab, 3, &key);

    let out = lab.exec(1, &[MESH_BIN, "service", "add", "-f", CHAIN]);
    check(&out, "h1: mesh service add -f chain.toml");

    let chain = ["db", "api", "web"];
    let mut seen_healthy = [false; 4];
    lab.wait(
        "the chain is healthy on h1 in every host's mesh services",
        || {
            (1..=3).all(|k| {
                if seen_healthy[k] {
                    return true;
                }
                let rows = services(&lab, k);
                let healthy = chain.iter().all(|name| {
                    find(&rows, name).is_some_and(|s| s["state"] == "healthy" && s["node"] == "h1")
                });
                if healthy {
                    // The moment this host first shows the chain healthy.
                    assert_leases_in_use(&lab, k, &chain);
                    seen_healthy[k] = true;
                }
                healthy
            })
        },
    );
    lab.wait("h3 lists h1's three leases in use", || {
        lab.mesh_json(3, &["ports", "--json"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|rows| {
                rows.iter()
                    .filter(|p| p["node"] == "h1" && p["state"] == "in-use")
                    .count()
                    == 3
            })
    });

    // kill -9 the db (the namespaces share the pid space): healed, seen from h2.
    let db = find(&services(&lab, 1), "db").cloned().expect("db listed");
    let db_pid = db["pid"].as_u64().expect("db has a pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &db_pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    lab.wait("h2 sees the db healthy again with a new pid", || {
        find(&services(&lab, 2), "db").is_some_and(|s| {
            s["state"] == "healthy"
                && s["restarts"] == 1
                && s["pid"].as_u64().is_some_and(|p| p != db_pid)
        })
    });
    assert_leases_in_use(&lab, 2, &["db"]);
    let events = lab
        .mesh_json(2, &["events", "--node", "h1", "--json", "-n", "1000"])
        .expect("h2 reads h1's events");
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events array")
        .iter()
        .filter(|e| e["service"] == "db")
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in ["exited", "backoff", "restart", "spawned"] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let logs = lab
        .mesh_json(3, &["logs", "web", "--json", "-n", "20"])
        .expect("h3 reads web's log on h1");
    assert_eq!(logs["node"], "h1");
}
