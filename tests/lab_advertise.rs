//! Lab test of LAN advertisement (`advertise = "_http._tcp"` in a spec): real agents in network
//! namespaces (`simulations/lab/lab.sh`) and, in a host that runs no agent, python-zeroconf
//! browsing `_http._tcp` as a phone or laptop that is not a member would. The copy's node
//! must announce the service under its own name with the copy's port and the node's address,
//! the record must lead to the running service (an HTTP fetch from the browser's host), and
//! goodbyes must withdraw it when the copy stops and when the agent stops.
//!
//! A second test checks that the record follows a failover: the owner's agent killed, the
//! browser finds the service on the node that took it over.
//!
//! The helpers are meant for more scenarios: [`DnsSdBrowser::wait_advertised_by`] waits for the
//! record as announced by a given node (TXT `node`), and [`assert_record_leads_to`] checks it
//! against that node's address and the copy's port and fetches through it.
//!
//! Requirements: root, `ip` (iproute2), `nft` (nftables), python3 with `zeroconf` (Debian
//! `python3-zeroconf`). Without them the test prints `skipping: <reason>` and passes.

#[macro_use]
#[path = "support/lab.rs"]
mod lab;
#[path = "support/dns_sd.rs"]
mod dns_sd;

use std::time::Instant;

use serde_json::Value;

use dns_sd::DnsSdBrowser;
use lab::{Lab, MESH_BIN, check, python_prerequisites, start_converged};

/// The instance the service is advertised as: its name, under its type.
const WEB: &str = "web._http._tcp.local.";
/// The host that runs no agent, only the browser.
const BROWSER_HOST: usize = 3;

/// `mesh service add` of `web` (an HTTP server on `$PORT`, checked over HTTP) on `node`,
/// advertised as `_http._tcp`; for an existing `web`, an update that moves it there.
fn add_web(node: &str) -> Vec<&str> {
    vec![
        MESH_BIN,
        "service",
        "add",
        "web",
        "--node",
        node,
        "--port",
        "auto",
        "--health",
        "http:/",
        "--advertise",
        "_http._tcp",
        "--",
        "python3",
        "-m",
        "http.server",
        "$PORT",
    ]
}

/// Host `k`'s IPv4 address in the lab.
fn address(lab: &Lab, k: usize) -> String {
    let out = lab.lab_ok(&["addr", &k.to_string()]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `web`'s row in host `k`'s `mesh services --json`, once it is healthy on `node`.
fn healthy_web_on(lab: &Lab, k: usize, node: &str) -> Value {
    let mut row = Value::Null;
    lab.wait(&format!("web is healthy on {node}"), || {
        row = lab
            .mesh_json(k, &["services", "--json"])
            .ok()
            .and_then(|rows| {
                rows.as_array()?
                    .iter()
                    .find(|s| s["name"] == "web" && s["state"] == "healthy" && s["node"] == node)
                    .cloned()
            })
            .unwrap_or(Value::Null);
        !row.is_null()
    });
    row
}

/// Checks a browser's record of `web` against host `k` (the node running the copy): its
/// address, the copy's first port, the TXT keys; then fetches `/` through it from host `from`,
/// as a client that found the service by browsing would.
fn assert_record_leads_to(lab: &Lab, from: usize, record: &Value, k: usize) {
    let node = format!("h{k}");
    let copy = healthy_web_on(lab, k, &node);
    let port = copy["ports"][0].as_u64().expect("web has a port");
    assert_eq!(record["port"].as_u64(), Some(port), "SRV port: {record}");
    let addr = address(lab, k);
    let addrs: Vec<&str> = record["addresses"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        addrs.contains(&addr.as_str()),
        "{node}'s {addr} in {record}"
    );
    assert_eq!(record["properties"]["node"], node.as_str(), "{record}");
    assert_eq!(record["properties"]["mesh"], "web", "{record}");
    let server = record["server"].as_str().unwrap_or_default();
    assert!(
        server.starts_with("web-") && server.ends_with(".local."),
        "SRV target {server}"
    );
    let url = format!("http://{addr}:{port}/");
    let out = lab.exec(
        from,
        &[
            "python3",
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)",
            &url,
        ],
    );
    check(&out, &format!("h{from}: GET {url}"));
}

#[test]
fn an_advertised_service_is_found_from_outside_the_mesh_and_withdrawn_when_it_stops() {
    require_lab!();
    if let Err(reason) = python_prerequisites(&["zeroconf"]) {
        eprintln!("skipping: {reason} (apt-get install -y python3-zeroconf)");
        return;
    }
    let lab = Lab::up("adv", 3);
    let key = lab.new_key("mesh.key");
    // A mesh of h1 and h2; h3 is a LAN host that is not a member.
    start_converged(&lab, 2, &key);
    let mut browser = DnsSdBrowser::start(&lab, BROWSER_HOST, "_http._tcp.local.");

    let added = Instant::now();
    check(
        &lab.exec(1, &add_web("h1")),
        "h1: mesh service add web --advertise _http._tcp",
    );
    let record = browser.wait_advertised_by(WEB, "h1");
    eprintln!(
        "[{}] python-zeroconf found {WEB} {:?} after the add (start, health check, probing): {record}",
        lab.id,
        added.elapsed()
    );
    assert_record_leads_to(&lab, BROWSER_HOST, &record, 1);

    // The copy stops: goodbyes, before the process is gone.
    let stopped = Instant::now();
    check(
        &lab.exec(1, &[MESH_BIN, "service", "stop", "web"]),
        "mesh service stop web",
    );
    browser.wait_removed(WEB);
    eprintln!(
        "[{}] {WEB} removed {:?} after `mesh service stop`",
        lab.id,
        stopped.elapsed()
    );

    // Back again, then moved to h2 by its operator: the record moves with the copy.
    check(
        &lab.exec(1, &[MESH_BIN, "service", "start", "web"]),
        "mesh service start web",
    );
    let record = browser.wait_advertised_by(WEB, "h1");
    assert_record_leads_to(&lab, BROWSER_HOST, &record, 1);
    let moved = Instant::now();
    check(
        &lab.exec(1, &add_web("h2")),
        "h1: mesh service add web --node h2 (a move)",
    );
    let record = browser.wait_advertised_by(WEB, "h2");
    eprintln!(
        "[{}] {WEB} advertised by h2 {:?} after the move: {record}",
        lab.id,
        moved.elapsed()
    );
    assert_record_leads_to(&lab, BROWSER_HOST, &record, 2);

    // The agent running it stops (SIGTERM): withdrawn as well.
    let stopped = Instant::now();
    lab.lab_ok(&["stop", "2"]);
    browser.wait_removed(WEB);
    eprintln!(
        "[{}] {WEB} removed {:?} after SIGTERM to h2's agent (incl. lab.sh stop)",
        lab.id,
        stopped.elapsed()
    );
    for k in [1, 2] {
        assert!(
            lab.agent_log(k)
                .contains("advertise: withdrawing from the LAN service=web"),
            "h{k} logs its withdrawal"
        );
    }
}

/// The record follows a failover: `web` advertised from h1, h1's agent killed (`kill -9`, so
/// no goodbye), h2 takes the copy and announces it; the browser (not a member) finds it on h2
/// with h2's address and the new copy's port, and fetches through it.
#[test]
fn an_advertised_service_is_found_on_the_new_node_after_a_failover() {
    require_lab!();
    if let Err(reason) = python_prerequisites(&["zeroconf"]) {
        eprintln!("skipping: {reason} (apt-get install -y python3-zeroconf)");
        return;
    }
    let lab = Lab::up("advf", 3);
    let key = lab.new_key("mesh.key");
    // A mesh of h1 and h2; h3 is a LAN host that is not a member.
    start_converged(&lab, 2, &key);
    let mut browser = DnsSdBrowser::start(&lab, BROWSER_HOST, "_http._tcp.local.");
    check(
        &lab.exec(1, &add_web("h1")),
        "h1: mesh service add web --advertise _http._tcp",
    );
    let record = browser.wait_advertised_by(WEB, "h1");
    assert_record_leads_to(&lab, BROWSER_HOST, &record, 1);

    let killed = Instant::now();
    lab.lab_ok(&["kill", "1"]);
    let record = browser.wait_advertised_by(WEB, "h2");
    eprintln!(
        "[{}] {WEB} advertised by h2 {:?} after kill -9 of h1's agent: {record}",
        lab.id,
        killed.elapsed()
    );
    assert_record_leads_to(&lab, BROWSER_HOST, &record, 2);
}
