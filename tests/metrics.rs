//! Prometheus metrics with real agents and a real Prometheus (Debian package `prometheus`),
//! both on loopback: `promtool check metrics` accepts what `/metrics` serves; a Prometheus
//! started by the test scrapes three agents (two on the API listener, one on
//! `--metrics-listen` only) every second, finds every target up and every metric family
//! present, and sees a killed service's restart within a scrape. Skips with a printed reason
//! when `prometheus` or `promtool` is not installed.

#[path = "support/agent.rs"]
mod agent;

use std::process::{Child, Command, Stdio};

use agent::{Agent, key_file, wait_until};
use serde_json::Value;

/// Every metric family the agent exports (names as Prometheus stores them).
const FAMILIES: &[&str] = &[
    "mesh_peers",
    "mesh_links",
    "mesh_peer_rtt_seconds",
    "mesh_connections",
    "mesh_admission_outcomes_total",
    "mesh_membership_datagrams_total",
    "mesh_sync_messages_total",
    "mesh_sync_bytes_total",
    "mesh_document_value_bytes",
    "mesh_document_changes",
    "mesh_document_epoch",
    "mesh_services",
    "mesh_service_restarts_total",
    "mesh_service_cpu_seconds_total",
    "mesh_service_resident_memory_bytes",
    "mesh_service_health_check_duration_seconds_bucket",
    "mesh_service_health_check_passing",
    "libp2p_swarm_connections_established_total",
    "libp2p_swarm_connections_establishment_duration_bucket",
    "mesh_port_leases",
    "mesh_uptime_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
];

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(url: &str) -> Option<String> {
    ureq::get(url).call().ok()?.body_mut().read_to_string().ok()
}

/// Prometheus, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query (the first series), if any.
fn query(port: u16, expr: &str) -> Option<f64> {
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/query?query={}",
        expr.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
            .replace(' ', "%20")
    );
    let body: Value = serde_json::from_str(&get(&url)?).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_three_agents_and_sees_a_service_restart() {
    if !have("prometheus") || !have("promtool") {
        eprintln!("skipped: prometheus and promtool not installed (apt-get install -y prometheus)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path());
    let a = Agent::start(tmp.path(), "a", &key, &[]);
    let b = Agent::start(tmp.path(), "b", &key, &[a.quic_addr()]);
    let lan_port = free_port();
    let lan = format!("127.0.0.1:{lan_port}");
    let c = Agent::start_with(
        tmp.path(),
        "c",
        &key,
        &[a.quic_addr()],
        &["--metrics-listen", &lan],
    );
    let ids: Vec<String> = [&a, &b, &c].iter().map(|x| x.id()).collect();
    wait_until("three agents alive everywhere", || {
        [&a, &b, &c]
            .iter()
            .all(|x| {
                ids.iter()
                    .filter(|id| **id != x.id())
                    .all(|id| x.state_of(id).as_deref() == Some("alive"))
            })
            .then_some(())
    });
    let out = a.cli(&["service", "add", "victim", "--", "sleep", "100000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.wait_service_state("victim", "healthy");
    // A service with a health check, for the check latency histogram.
    let out = a.cli(&[
        "service",
        "add",
        "checked",
        "--port",
        "auto",
        "--health",
        "tcp",
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "$PORT",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.wait_service_state("checked", "healthy");

    // What a scrape gets passes promtool's checks (format and naming lints).
    let api = |x: &Agent| x.api().trim_start_matches("http://").to_string();
    let text = get(&format!("http://{}/metrics", api(&a))).expect("GET /metrics answers");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The metrics-only listener serves metrics and nothing else.
    assert!(get(&format!("http://{lan}/metrics")).is_some_and(|t| t.contains("mesh_peers")));
    assert!(get(&format!("http://{lan}/v1/status")).is_none());

    // A real Prometheus scrapes all three every second.
    let port = free_port();
    let targets: Vec<String> = [api(&a), api(&b), lan.clone()].to_vec();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: mesh\n    static_configs:\n      - targets: [{}]\n",
            targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    wait_until("Prometheus sees all three targets up", || {
        (query(port, "sum(up)")? == 3.0).then_some(())
    });
    for family in FAMILIES {
        wait_until(&format!("Prometheus has {family}"), || {
            query(port, &format!("count({family})")).filter(|n| *n >= 1.0)
        });
    }
    assert_eq!(query(port, "sum(mesh_peers{state=\"alive\"})"), Some(6.0));
    wait_until("victim healthy in Prometheus", || {
        (query(port, "sum(mesh_services{state=\"healthy\"})")? >= 1.0).then_some(())
    });

    // kill -9 of the service's process: the restart shows within a scrape or two.
    let pid = a.service("victim").unwrap()["pid"]
        .as_i64()
        .expect("a running copy has a pid");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let killed = std::time::Instant::now();
    wait_until("Prometheus sees the restart", || {
        (query(port, "sum(mesh_service_restarts_total{service=\"victim\"})")? >= 1.0).then_some(())
    });
    eprintln!(
        "restart seen in Prometheus {} ms after kill -9 (scrape interval 1 s)",
        killed.elapsed().as_millis()
    );
}
