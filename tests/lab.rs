//! Lab tests: real `mesh` agent processes in network namespaces, one namespace per host, joined
//! by a bridge (`simulations/lab/lab.sh`). They find each other over real mDNS and link over
//! real QUIC, so these tests cover what the in-process tests (`tests/mesh.rs`) cannot: the
//! binary, its signals, its data dir, multicast on a LAN, and a third-party DNS-SD browser.
//!
//! Requirements: root, `ip` (iproute2) and `nft` (nftables); the DNS-SD test also needs
//! python3 with `zeroconf`. Without them each test prints `skipping: <reason>` and passes.
//!
//! Each test builds its own lab (its own `LAB_ID`, namespaces and work dir in a tempdir), so
//! the tests run in parallel threads without seeing each other; a [`Lab`] guard runs
//! `lab.sh down` when dropped, also when the test panics (it first prints the agents' logs).
//! Every wait is on a condition polled through `mesh peers --json` / `mesh status --json` run
//! inside the host, with a generous ceiling; nothing sleeps a fixed time except the poll
//! interval.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The agent binary under test, built by cargo for this test target.
const MESH_BIN: &str = env!("CARGO_BIN_EXE_mesh");
/// The lab script: namespaces, bridge, agents, faults.
const LAB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/simulations/lab/lab.sh");
/// The third-party DNS-SD browser (python-zeroconf).
const BROWSE_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/browse_mesh.py");

/// Ceiling for any convergence or state change. Typical times are 0.5-3 s; CI is a loaded
/// 2-core box running all lab tests (a dozen debug agents) at once, and each poll pays an
/// `ip netns exec` (~100 ms under load).
const CEILING: Duration = Duration::from_secs(20);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);
/// How long the loss test watches the mesh for false `dead` verdicts.
const LOSS_WATCH: Duration = Duration::from_secs(20);
/// Lines of each agent's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

// ------------------------------------------------------------------------------ prerequisites

/// `Err(reason)` if lab tests cannot run here: not root, or `ip` / `nft` missing.
fn lab_prerequisites() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status ({e}); not Linux?"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or("no Uid line in /proc/self/status")?;
    if euid != "0" {
        return Err(format!("lab tests need root (network namespaces); effective uid is {euid}"));
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables"), ("setsid", "util-linux")] {
        if find_in_path(tool).is_none() {
            return Err(format!("`{tool}` not found in PATH (apt-get install -y {package})"));
        }
    }
    Ok(())
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    // Root's PATH may lack the sbin dirs, where `ip` and `nft` live.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Runs the test body only if the lab can run here; otherwise says why and passes.
macro_rules! require_lab {
    () => {
        if let Err(reason) = lab_prerequisites() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

// ------------------------------------------------------------------------------ the lab guard

/// One lab: `lab.sh up N` on creation, `lab.sh down` on drop (also during a panic).
struct Lab {
    id: String,
    dir: PathBuf,
    hosts: usize,
    /// Holds `dir` and the key files; removed after `down` (fields drop after `Drop::drop`).
    _tmp: tempfile::TempDir,
}

impl Lab {
    /// Builds a lab of `hosts` hosts. `index` makes the id unique among this file's tests; the
    /// pid part keeps two concurrent `cargo test` runs apart. Namespace names stay short.
    fn up(index: u32, hosts: usize) -> Lab {
        let id = format!("t{index}p{}", std::process::id() % 1000);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("mesh-lab-{id}-"))
            .tempdir()
            .expect("create a tempdir for the lab");
        let lab = Lab { id, dir: tmp.path().join("lab"), hosts, _tmp: tmp };
        let out = lab.lab(&["up", &hosts.to_string()]);
        if !out.status.success() && stderr(&out).contains("already exists") {
            // Left over by a crashed run that had the same pid modulo 1000: ours to remove.
            eprintln!("[{}] removing a stale lab with the same id", lab.id);
            lab.lab(&["down"]);
            lab.lab_ok(&["up", &hosts.to_string()]);
        } else {
            check(&out, &format!("lab.sh up {hosts}"));
        }
        lab
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(LAB_SH);
        cmd.args(args)
            .env("LAB_ID", &self.id)
            .env("LAB_DIR", &self.dir)
            .env("MESH_BIN", MESH_BIN);
        cmd
    }

    /// Runs `lab.sh ARGS`, whatever its exit code.
    fn lab(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {LAB_SH}: {e}"))
    }

    /// Runs `lab.sh ARGS` and panics (with its output) unless it succeeds.
    fn lab_ok(&self, args: &[&str]) -> Output {
        let out = self.lab(args);
        check(&out, &format!("[{}] lab.sh {}", self.id, args.join(" ")));
        out
    }

    /// A fresh mesh key file (`mesh key generate`), named `name`, mode 0600.
    fn new_key(&self, name: &str) -> PathBuf {
        let out = Command::new(MESH_BIN)
            .args(["key", "generate"])
            .output()
            .expect("run mesh key generate");
        check(&out, "mesh key generate");
        let hex = String::from_utf8(out.stdout).expect("key is UTF-8");
        let hex = hex.trim();
        assert_eq!(hex.len(), 64, "mesh key generate printed {hex:?}");
        let path = self._tmp.path().join(name);
        std::fs::write(&path, format!("{hex}\n")).expect("write key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        path
    }

    fn start(&self, k: usize, key: &Path) {
        let key = key.to_str().expect("UTF-8 temp path");
        self.lab_ok(&["start", &k.to_string(), "--", "--mesh-key", key]);
    }

    /// Runs `CMD ARGS` inside host `k`.
    fn exec(&self, k: usize, args: &[&str]) -> Output {
        let k = k.to_string();
        let mut all = vec!["exec", k.as_str()];
        all.extend_from_slice(args);
        self.lab(&all)
    }

    /// Host `k`'s `mesh peers --json`, or `Err` while its API does not answer.
    fn peers(&self, k: usize) -> Result<Vec<Value>, String> {
        let out = self.exec(k, &[MESH_BIN, "peers", "--json"]);
        if !out.status.success() {
            return Err(format!("h{k}: mesh peers failed: {}", stderr(&out).trim()));
        }
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(Value::Array(rows)) => Ok(rows),
            other => Err(format!("h{k}: mesh peers --json is not an array: {other:?}")),
        }
    }

    /// Host `k`'s `mesh status --json`, or `Err` while its API does not answer.
    fn status(&self, k: usize) -> Result<Value, String> {
        let out = self.exec(k, &[MESH_BIN, "status", "--json"]);
        if !out.status.success() {
            return Err(format!("h{k}: mesh status failed: {}", stderr(&out).trim()));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("h{k}: bad status JSON: {e}"))
    }

    /// Host `k`'s node id, waiting for its API to answer.
    fn node_id(&self, k: usize) -> String {
        let mut id = None;
        self.wait(&format!("h{k}'s API answers mesh status"), || {
            id = self.status(k).ok().and_then(|s| s["id"].as_str().map(str::to_owned));
            id.is_some()
        });
        id.expect("set when the wait succeeded")
    }

    /// State of `id` in host `k`'s view: `Some("alive")`…, `None` if not listed or no answer.
    fn state_of(&self, k: usize, id: &str) -> Option<String> {
        let rows = self.peers(k).ok()?;
        state_in(&rows, id).map(str::to_owned)
    }

    /// Waits until `cond` holds, polling every [`POLL`], for at most [`CEILING`]; panics with
    /// every host's view otherwise. Returns the time it took.
    fn wait(&self, what: &str, cond: impl FnMut() -> bool) -> Duration {
        match wait_until(CEILING, cond) {
            Some(took) => took,
            None => panic!(
                "[{}] timed out after {CEILING:?} waiting until {what}\n{}",
                self.id,
                self.views()
            ),
        }
    }

    /// Every host's view, `name:state` per row, for failure messages.
    fn views(&self) -> String {
        (1..=self.hosts)
            .map(|k| match self.peers(k) {
                Ok(rows) => format!("  h{k} sees: {}", summary(&rows)),
                Err(e) => format!("  {e}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_tails(&self) -> String {
        let mut all = String::new();
        for k in 1..=self.hosts {
            let log = self.dir.join(format!("h{k}/agent.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            all.push_str(&format!("--- {} (last {} lines)\n{}\n", log.display(), tail.len(), tail.join("\n")));
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[{}] test failed; agent logs:\n{}", self.id, self.log_tails());
        }
        match self.command(&["down"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("[{}] lab.sh down failed: {}", self.id, stderr(&out)),
            Err(e) => eprintln!("[{}] cannot run lab.sh down: {e}", self.id),
        }
    }
}

// ------------------------------------------------------------------------------ helpers

/// Polls `cond` every [`POLL`] until it holds (returns the time taken) or `ceiling` passes.
fn wait_until(ceiling: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= ceiling {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

fn state_in<'a>(rows: &'a [Value], id: &str) -> Option<&'a str> {
    rows.iter().find(|r| r["id"] == id).and_then(|r| r["state"].as_str())
}

fn summary(rows: &[Value]) -> String {
    rows.iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap_or("?");
            let me = if r["self"] == true { "(self)" } else { "" };
            format!("{name}{me}:{}", r["state"].as_str().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// True if `rows` (one host's `mesh peers`) are exactly: the self row with id `me`, and each
/// of `others` in `state`.
fn sees_exactly(rows: &[Value], me: &str, others: &[&str], state: &str) -> bool {
    let self_ok = rows.iter().any(|r| r["self"] == true && r["id"] == me);
    let others_ok = others.iter().all(|id| state_in(rows, id) == Some(state));
    self_ok && others_ok && rows.len() == 1 + others.len()
}

/// Starts hosts `1..=n` with `key` and waits until each lists all the others `alive`.
/// Returns the node ids, index 0 for host 1.
fn start_converged(lab: &Lab, n: usize, key: &Path) -> Vec<String> {
    for k in 1..=n {
        lab.start(k, key);
    }
    let ids: Vec<String> = (1..=n).map(|k| lab.node_id(k)).collect();
    let took = lab.wait(&format!("hosts 1..{n} see each other alive"), || {
        (1..=n).all(|k| {
            let others: Vec<&str> = ids.iter().enumerate().filter(|(i, _)| i + 1 != k).map(|(_, s)| s.as_str()).collect();
            lab.peers(k).is_ok_and(|rows| sees_exactly(&rows, &ids[k - 1], &others, "alive"))
        })
    });
    eprintln!("[{}] {n} agents converged {took:?} after the last start", lab.id);
    ids
}

// ------------------------------------------------------------------------------ tests

#[test]
fn three_agents_see_each_other() {
    require_lab!();
    let lab = Lab::up(1, 3);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 3, &key);
    // `alive` can come from gossip before the direct link is admitted (then `name` is still
    // null); wait for the direct links too.
    lab.wait("every host is connected to the two others and knows their names", || {
        (1..=3).all(|k| {
            lab.peers(k).is_ok_and(|rows| {
                rows.len() == 3 && rows.iter().all(|r| r["connected"] == true && r["name"].is_string())
            })
        })
    });

    for k in 1..=3 {
        let rows = lab.peers(k).expect("API answers");
        let me = rows.iter().find(|r| r["self"] == true).expect("a self row");
        assert_eq!(me["id"], ids[k - 1], "h{k}'s self row");
        assert_eq!(me["name"], format!("h{k}"), "h{k}'s self row");
        for (j, id) in ids.iter().enumerate().filter(|(j, _)| j + 1 != k) {
            let row = rows.iter().find(|r| r["id"] == *id).expect("listed");
            assert_eq!(row["name"], format!("h{}", j + 1), "h{k}'s row of h{}", j + 1);
            assert_eq!(row["self"], false);
            assert_eq!(row["connected"], true, "h{k}'s row of h{}: {row}", j + 1);
        }
    }
}

#[test]
fn agent_with_another_key_is_isolated() {
    require_lab!();
    let lab = Lab::up(2, 4);
    let key = lab.new_key("mesh.key");
    let other_key = lab.new_key("other.key");
    let ids = start_converged(&lab, 3, &key);
    lab.start(4, &other_key);
    let outsider = lab.node_id(4);
    assert!(!ids.contains(&outsider));

    // Not vacuous: host 4 has heard the three others over mDNS (and ignored them), and has run
    // for a few seconds, long enough to have tried anything it would try.
    lab.wait("h4 has run 3 s and ignored the 3 agents of the other mesh", || {
        lab.status(4).is_ok_and(|s| {
            s["uptime_s"].as_u64() >= Some(3)
                && s["counters"]["mdns_foreign_mesh_ignored"].as_u64() >= Some(3)
        })
    });
    let rows4 = lab.peers(4).expect("h4's API answers");
    assert!(
        rows4.len() == 1 && rows4[0]["self"] == true && rows4[0]["id"] == outsider,
        "h4 must list only itself, lists: {}",
        summary(&rows4)
    );
    for k in 1..=3 {
        let rows = lab.peers(k).expect("API answers");
        assert!(
            state_in(&rows, &outsider).is_none(),
            "h{k} lists the outsider h4: {}",
            summary(&rows)
        );
        let others: Vec<&str> = ids.iter().filter(|id| **id != ids[k - 1]).map(String::as_str).collect();
        assert!(sees_exactly(&rows, &ids[k - 1], &others, "alive"), "h{k}: {}", summary(&rows));
        let status = lab.status(k).expect("API answers");
        assert_eq!(status["counters"]["admitted"].as_u64().map(|n| n >= 2), Some(true), "h{k}: {status}");
    }
    let s4 = lab.status(4).expect("API answers");
    assert_eq!(s4["peers"], serde_json::json!({"alive": 0, "suspect": 0, "dead": 0, "left": 0}));
}

#[test]
fn kill_9_is_dead_and_sigterm_is_left() {
    require_lab!();
    let lab = Lab::up(3, 3);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 3, &key);
    let victim = ids[2].clone();

    let killed_at = Instant::now();
    lab.lab_ok(&["kill", "3"]);
    lab.wait("h1 and h2 show h3 dead after kill -9", || {
        [1, 2].iter().all(|&k| lab.state_of(k, &victim).as_deref() == Some("dead"))
    });
    eprintln!("[{}] kill -9 -> dead on h1 and h2 in {:?} (incl. polling cost)", lab.id, killed_at.elapsed());

    // Restart with the same data dir: same identity, and the others take it back.
    let restarted_at = Instant::now();
    lab.start(3, &key);
    assert_eq!(lab.node_id(3), victim, "the restarted agent must keep its node id");
    lab.wait("h1 and h2 show the restarted h3 alive", || {
        [1, 2].iter().all(|&k| lab.state_of(k, &victim).as_deref() == Some("alive"))
    });
    lab.wait("the restarted h3 sees h1 and h2 alive", || {
        lab.peers(3).is_ok_and(|rows| sees_exactly(&rows, &victim, &[&ids[0], &ids[1]], "alive"))
    });
    eprintln!("[{}] restart -> alive again on h1 and h2 in {:?}", lab.id, restarted_at.elapsed());

    let stopped_at = Instant::now();
    lab.lab_ok(&["stop", "3"]);
    let mut seen_dead = false;
    lab.wait("h1 and h2 show h3 left after SIGTERM", || {
        let states: Vec<Option<String>> = [1, 2].iter().map(|&k| lab.state_of(k, &victim)).collect();
        seen_dead |= states.iter().any(|s| s.as_deref() == Some("dead"));
        states.iter().all(|s| s.as_deref() == Some("left"))
    });
    let took = stopped_at.elapsed();
    eprintln!("[{}] SIGTERM -> left on h1 and h2 in {took:?} (incl. lab.sh stop and polling cost)", lab.id);
    assert!(!seen_dead, "a gracefully stopped agent must go to left, never through dead");
}

#[test]
fn third_party_dns_sd_browser_sees_agents() {
    require_lab!();
    let python = Command::new("python3").args(["-c", "import zeroconf"]).output();
    match python {
        Ok(out) if out.status.success() => {}
        Ok(_) => return eprintln!("skipping: python3 cannot import zeroconf (pip install zeroconf)"),
        Err(e) => return eprintln!("skipping: no python3 ({e})"),
    }
    let lab = Lab::up(4, 2);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 2, &key);
    let mesh_id = lab.status(1).expect("API answers")["mesh_id"].as_str().expect("mesh_id").to_owned();

    // The browser stops as soon as it has resolved both, or after its timeout.
    let timeout = CEILING.as_secs().to_string();
    let out = lab.exec(1, &["python3", BROWSE_PY, "--expect", "2", "--timeout", &timeout]);
    check(&out, "browse_mesh.py in h1");
    let services: Vec<Value> = serde_json::from_slice(&out.stdout).expect("browse_mesh.py prints a JSON array");
    for s in &services {
        eprintln!("[{}] python-zeroconf saw {} TXT {}", lab.id, s["name"], s["properties"]);
    }

    let by_id: BTreeMap<&str, &Value> = services
        .iter()
        .filter_map(|s| Some((s["properties"]["id"].as_str()?, s)))
        .collect();
    for (k, id) in ids.iter().enumerate() {
        let service = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("h{} ({id}) not seen by python-zeroconf: {services:?}", k + 1));
        let props = &service["properties"];
        for txt in ["id", "mesh", "pv", "v"] {
            assert!(props[txt].is_string(), "h{}: TXT key {txt} missing: {service}", k + 1);
        }
        assert_eq!(props["mesh"], mesh_id, "h{}'s TXT mesh", k + 1);
        let name = service["name"].as_str().unwrap_or_default();
        assert!(name.ends_with("._mesh._udp.local."), "instance name {name}");
    }
}

#[test]
fn no_false_dead_at_5_percent_loss() {
    require_lab!();
    let lab = Lab::up(5, 3);
    let key = lab.new_key("mesh.key");
    let ids = start_converged(&lab, 3, &key);
    for k in 1..=3 {
        lab.lab_ok(&["loss", &k.to_string(), "5"]);
    }

    let start = Instant::now();
    let (mut polls, mut suspects) = (0u32, 0u32);
    let mut dead = Vec::new();
    while start.elapsed() < LOSS_WATCH {
        for k in 1..=3 {
            let Ok(rows) = lab.peers(k) else { continue };
            polls += 1;
            for (j, id) in ids.iter().enumerate().filter(|(j, _)| j + 1 != k) {
                match state_in(&rows, id) {
                    Some("suspect") => suspects += 1,
                    Some("alive") => {}
                    other => dead.push(format!("at {:?}: h{k} sees h{} as {other:?}", start.elapsed(), j + 1)),
                }
            }
        }
        std::thread::sleep(POLL);
    }
    eprintln!(
        "[{}] 5% loss for {LOSS_WATCH:?}: {polls} views polled, {suspects} suspect sightings, {} dead/missing",
        lab.id,
        dead.len()
    );
    assert!(polls >= 30, "too few polls ({polls}) to mean anything");
    assert!(dead.is_empty(), "false verdicts under 5% loss:\n{}\n{}", dead.join("\n"), lab.views());
}
