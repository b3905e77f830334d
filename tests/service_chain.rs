//! Services across nodes, in-process: two nodes on the memory transport, each supervising
//! with a fake launcher, in paused time. Driven and read through the API router (the routes
//! `mesh service add`, `mesh services` and `mesh ports` use), without sockets.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use mesh::node::NodeHandle;
use mesh::supervisor::spec::{DependencyRestart, HealthCheck, HealthSpec, PortSpec, ServiceSpec};
use mesh::supervisor::{ExitStatus, launcher::fake::FakeLauncher};
use serde_json::{Value, json};
use tempfile::TempDir;

use cluster::{CEILING, Cluster, api, supervisor_config, wait_all_alive};

/// Budget of the chain test (the acceptance: under 2 s of wall time). Nothing in it
/// waits on the real clock (paused time, memory transport, fake processes), so its wall time
/// is its CPU time on an idle machine (measured: 0.6 s of CPU in a debug build, 0.7 s wall
/// when idle, up to 1.9 s wall at a load of 8 on 2 cores). The test asserts the CPU time,
/// which other processes' load does not inflate, and prints the wall time.
const BUDGET: Duration = Duration::from_secs(2);

/// CPU time (user + system) this test process has used so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// `name` on `node`, with one auto port checked over HTTP, depending on `after`.
fn http_service(name: &str, node: &str, after: &[&str]) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "fake-server");
    spec.target = Some(node.to_string());
    spec.after = after.iter().map(|s| s.to_string()).collect();
    spec.ports = vec![PortSpec {
        name: Some("http".to_string()),
        ..PortSpec::auto()
    }];
    spec.health = Some(HealthSpec::new(HealthCheck::Http {
        path: "/".to_string(),
    }));
    spec
}

/// `mesh services` and `mesh ports` as one node answers them, read back to back.
async fn services_and_ports(node: &NodeHandle) -> (Vec<Value>, Vec<Value>) {
    let (status, services) = api(node, "GET", "/v1/services", None).await;
    assert_eq!(status, 200, "{services}");
    let (status, ports) = api(node, "GET", "/v1/ports", None).await;
    assert_eq!(status, 200, "{ports}");
    let list = |v: Value| v.as_array().cloned().unwrap_or_default();
    (list(services), list(ports))
}

fn field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry[key].as_str().unwrap_or_default()
}

/// Waits (on document changes) until `mesh services` on `observer` shows every service of
/// `wanted` with its state and `also` holds; then checks that `mesh ports`, read right after, shows each
/// healthy service's leases `in-use` (no lease check has to run first). Returns the entries.
async fn wait_services(
    observer: &NodeHandle,
    wanted: &[(&str, &str)],
    also: impl Fn() -> bool,
    what: &str,
) -> Vec<Value> {
    let mut doc = observer.state().subscribe();
    let waited = tokio::time::timeout(CEILING, async {
        loop {
            let (services, ports) = services_and_ports(observer).await;
            let state_of = |name: &str| {
                services
                    .iter()
                    .find(|s| field(s, "name") == name)
                    .map(|s| field(s, "state").to_string())
            };
            if also()
                && wanted
                    .iter()
                    .all(|(name, state)| state_of(name).as_deref() == Some(*state))
            {
                for (name, _) in wanted.iter().filter(|(_, state)| *state == "healthy") {
                    let leases: Vec<_> = ports
                        .iter()
                        .filter(|p| field(p, "service") == *name && field(p, "state") != "released")
                        .collect();
                    assert!(
                        !leases.is_empty(),
                        "{name} is healthy without a lease: {ports:?}"
                    );
                    assert!(
                        leases.iter().all(|p| field(p, "state") == "in-use"),
                        "{name} is healthy but `mesh ports` shows {leases:?}"
                    );
                }
                return services;
            }
            doc.changed().await.expect("the state actor runs");
        }
    })
    .await;
    match waited {
        Ok(services) => services,
        Err(_) => panic!(
            "timed out waiting for {what}: {:?}",
            services_and_ports(observer).await
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn a_chain_across_two_nodes_comes_up_restarts_and_its_dependent_reacts() {
    let wall = std::time::Instant::now();
    let cpu = cpu_time();
    let dir = TempDir::new().expect("temp dir");
    let cluster = Cluster::in_memory();
    let (launcher_a, launcher_b) = (FakeLauncher::new(), FakeLauncher::new());
    let mut config_a = cluster.config("a");
    config_a.supervisor = Some(supervisor_config(&dir.path().join("a"), launcher_a.clone()));
    let mut config_b = cluster.config("b");
    config_b.supervisor = Some(supervisor_config(&dir.path().join("b"), launcher_b.clone()));
    let a = cluster.start(config_a).await;
    let b = cluster.start(config_b).await;
    let nodes = [a.clone(), b.clone()];
    wait_all_alive(&nodes).await;
    // Both node records on both sides: `b` is a name the API on `a` can place on.
    cluster::wait_states(&[&a, &b], "both node records everywhere", |s| {
        s.iter().all(|s| s.state.nodes.len() == 2)
    })
    .await;

    // db on a; api on b, after db, restarting whenever db does.
    let mut api_spec = http_service("api", "b", &["db"]);
    api_spec.on_dependency_restart = DependencyRestart::Restart;
    let (status, added) = api(
        &a,
        "POST",
        "/v1/services",
        Some(json!({ "services": [http_service("db", "a", &[]), api_spec] })),
    )
    .await;
    assert_eq!(status, 200, "{added}");

    // The chain comes up, as both nodes show it.
    for observer in [&a, &b] {
        wait_services(
            observer,
            &[("db", "healthy"), ("api", "healthy")],
            || true,
            "the chain healthy",
        )
        .await;
    }
    assert_eq!(launcher_a.launch_count("db"), 1);
    assert_eq!(launcher_b.launch_count("api"), 1);
    assert_eq!(launcher_a.launch_count("api"), 0, "api runs on b only");
    let db_port = launcher_a.launches()[0].ports["PORT"];
    assert!(launcher_a.listening(db_port));

    // db crashes: a restarts it; api on b is stopped while db has no process (its policy),
    // and started again once db is healthy.
    assert!(launcher_a.crash("db", ExitStatus::Code(1)));
    let services = wait_services(
        &b,
        &[("db", "healthy"), ("api", "healthy")],
        || launcher_a.launch_count("db") == 2 && launcher_b.launch_count("api") == 2,
        "the chain healthy again after db crashed",
    )
    .await;
    assert_eq!(launcher_a.launch_count("db"), 2, "db was restarted");
    assert_eq!(
        launcher_b.launch_count("api"),
        2,
        "api reacted with a restart"
    );
    let db = services
        .iter()
        .find(|s| field(s, "name") == "db")
        .expect("db listed");
    assert_eq!(db["restarts"], json!(1), "{db}");

    for node in &nodes {
        node.shutdown().await;
    }
    assert!(launcher_a.pid_of("db").is_none() && launcher_b.pid_of("api").is_none());
    let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
    eprintln!("the in-process chain test took {wall:?} of wall time, {cpu:?} of CPU");
    assert!(
        cpu < BUDGET,
        "the in-process chain test used {cpu:?} of CPU ({wall:?} of wall time); budget {BUDGET:?}"
    );
}
