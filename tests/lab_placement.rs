//! Lab tests of placement and failover (issue 10) on real agents in network namespaces
//! (`simulations/lab/lab.sh`): a service whose agent is killed (`kill -9`) or stopped (SIGTERM)
//! comes up healthy on another node; `replicas = 2` keeps two copies on distinct nodes; an
//! exclusive singleton whose node is partitioned away (nftables drop at the hub) never runs
//! twice and comes up on the majority side; a non-exclusive service runs on both sides and is
//! back to exactly `replicas` copies after the heal; of 20 services only the killed node's move,
//! the returning node takes none back (sticky), `mesh service rebalance` moves one back without
//! a gap, and `mesh drain` empties a node with every new copy healthy before the old one stops.
//!
//! How it is observed: `mesh services --json` and `mesh events --json` (every placement
//! decision is an event, with the agent's wall clock: all namespaces share this machine's
//! clock, so event times compare with the test's own), and the process table: every agent of
//! the lab runs on this machine, so a [`ProcessSampler`] counts the copies of a service by its
//! unique command line (`sleep <unique seconds>`, or `http.server --directory <unique dir>`)
//! every 20 ms, from outside any agent. A `kill -9`ed agent's copies keep running (nothing
//! stops them until that agent starts again and stops its leftovers), so process counts are
//! only asserted where no agent was killed since, or after it came back.
//!
//! A debug build on a loaded 2-core machine: every wait has a generous ceiling
//! ([`lab::CEILING`]) and times are printed, never asserted (`simulations/lab/measure_failover.sh`
//! measures them on a release build). Each test has its own lab of 3 hosts and runs its cases
//! one after the other on it.
//!
//! Requirements: root, `ip` (iproute2), `nft` (nftables), python3. Without them each test prints
//! `skipping: <reason>` and passes.

#[macro_use]
#[path = "support/lab.rs"]
mod lab;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use lab::{CEILING, Lab, MESH_BIN, check, start_converged};

/// How often the process table is read: the acceptance criterion's sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

// ------------------------------------------------------------------------------ helpers

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64
}

/// `"h2"` → 2.
fn host_of(node: &str) -> usize {
    node.strip_prefix('h')
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("not a lab host name: {node}"))
}

/// A `sleep` argument no other process of this machine has: `base` (a few per test) and this
/// test process's pid, so parallel runs do not count each other's copies. About 25 years.
fn unique_seconds(base: u32) -> String {
    (800_000_000 + (std::process::id() % 100_000) * 100 + base).to_string()
}

/// Host `k`'s `mesh services --json` rows (empty while its API does not answer).
fn services(lab: &Lab, k: usize) -> Vec<Value> {
    lab.mesh_json(k, &["services", "--json"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Nodes whose row of `name` is `healthy`, but for `except` (nodes known dead: their last
/// record stays in the document, `healthy`, until they come back).
fn healthy_nodes(rows: &[Value], name: &str, except: &[&str]) -> Vec<String> {
    let mut nodes: Vec<String> = rows
        .iter()
        .filter(|r| r["name"] == name && r["state"] == "healthy")
        .filter_map(|r| r["node"].as_str())
        .filter(|n| !except.contains(n))
        .map(str::to_owned)
        .collect();
    nodes.sort();
    nodes
}

/// Nodes whose row of `name` says a process runs or comes up (what `copies` counts).
fn running_nodes(rows: &[Value], name: &str) -> Vec<String> {
    let mut nodes: Vec<String> = rows
        .iter()
        .filter(|r| r["name"] == name)
        .filter(|r| {
            matches!(
                r["state"].as_str(),
                Some("starting" | "healthy" | "unhealthy" | "backoff" | "stopping")
            )
        })
        .filter_map(|r| r["node"].as_str())
        .map(str::to_owned)
        .collect();
    nodes.sort();
    nodes
}

/// Waits until host `k`'s agent, just (re)started, is past its start-up: leftovers of its
/// previous run stopped, then in sync with a peer (or given up waiting for one, 5 s). Only
/// then does it place services; its API answers well before (about 1.5 s in a debug build,
/// up to 6.5 s when no peer syncs), and a failover or a "takes nothing back" check made
/// meanwhile would measure its start-up, or nothing.
fn wait_supervising(lab: &Lab, k: usize) {
    lab.wait(&format!("h{k}'s agent is past its start-up"), || {
        let log = lab.agent_log(k);
        let this_run = log.rsplit("# lab.sh:").next().unwrap_or_default();
        this_run.contains("in sync with a peer; starting services")
            || this_run.contains("no peer synced in time")
    });
}

/// Node `node`'s audit trail, read through host `k`.
fn events(lab: &Lab, k: usize, node: &str) -> Vec<Value> {
    lab.mesh_json(k, &["events", "--node", node, "--json", "-n", "1000"])
        .ok()
        .and_then(|v| v["events"].as_array().cloned())
        .unwrap_or_default()
}

/// Events of `service` of `kind` at or after `since_ms`.
fn events_of<'a>(
    all: &'a [Value],
    service: &str,
    kind: &str,
    since_ms: i64,
) -> impl Iterator<Item = &'a Value> {
    all.iter().filter(move |e| {
        e["service"] == service && e["kind"] == kind && e["at_ms"].as_i64() >= Some(since_ms)
    })
}

/// When a copy of `service` became ready on the node of `all` (its trail) at or after
/// `since_ms`: its `healthy` event, or for a service without a health check (healthy while it
/// runs) its `spawned` one.
fn ready_at(all: &[Value], service: &str, since_ms: i64) -> Option<i64> {
    all.iter()
        .filter(|e| e["service"] == service && e["at_ms"].as_i64() >= Some(since_ms))
        .find(|e| {
            e["kind"] == "healthy"
                || (e["kind"] == "spawned"
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("no health check")))
        })
        .and_then(|e| e["at_ms"].as_i64())
}

/// `mesh service add -f FILE` in host `k` of `toml` (written to the lab's scratch dir, so the
/// unique command lines never appear in a command line of the CLI).
fn add_services(lab: &Lab, k: usize, file: &str, toml: &str) {
    let path = lab.scratch().join(file);
    std::fs::write(&path, toml).expect("write the services file");
    let path = path.to_str().expect("UTF-8 temp path");
    check(
        &lab.exec(k, &[MESH_BIN, "service", "add", "-f", path]),
        &format!("h{k}: mesh service add -f {file}"),
    );
}

/// A `[[service]]` table: `sleep <seconds>`, no health check (healthy while it runs).
fn sleep_service(name: &str, seconds: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ncommand = \"sleep\"\nargs = [\"{seconds}\"]\n{extra}\n"
    )
}

/// A `[[service]]` table: an HTTP server on `$PORT` serving `dir` (its unique command-line
/// mark), checked over HTTP.
fn http_service(name: &str, dir: &Path, extra: &str) -> String {
    std::fs::create_dir_all(dir).expect("create the served dir");
    format!(
        "[[service]]\nname = \"{name}\"\ncommand = \"{}\"\n\
         args = [\"-m\", \"http.server\", \"$PORT\", \"--directory\", \"{}\"]\n\
         ports = [{{}}]\nhealth = {{ check = \"http\" }}\n{extra}\n",
        python(),
        dir.display()
    )
}

/// The spans during which a copy of `service` ran on the node of `trail`, from its
/// `spawned` event to the next `stopped` (or `now_ms` while it still runs), agent clock.
fn run_spans(trail: &[Value], service: &str, now_ms: i64) -> Vec<(i64, i64)> {
    let mut spans = Vec::new();
    let mut open = None;
    for e in trail.iter().filter(|e| e["service"] == service) {
        let at = e["at_ms"].as_i64().unwrap_or_default();
        match e["kind"].as_str() {
            Some("spawned") => open = Some(at),
            Some("stopped" | "exited") => {
                if let Some(from) = open.take() {
                    spans.push((from, at));
                }
            }
            _ => {}
        }
    }
    spans.extend(open.map(|from| (from, now_ms)));
    spans
}

fn python_missing() -> bool {
    lab::python_prerequisites(&[]).is_err()
}

/// The python3 interpreter itself (`sys.executable`), not a wrapper such as a pyenv shim,
/// which forks helpers with the same arguments while it starts (they would count as copies).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("run python3");
    check(&out, "python3 -c 'print(sys.executable)'");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ------------------------------------------------------------------------------ process sampler

/// When a sample was taken, and the count of each mark.
type Sample = (Instant, Vec<usize>);

/// Counts, every [`SAMPLE_EVERY`], the live processes whose command line has one of `marks`
/// as an argument (all lab agents share this machine's process table). Samples are kept for
/// "never two at once" and "never none" checks over windows.
struct ProcessSampler {
    marks: Vec<String>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProcessSampler {
    fn start(marks: Vec<String>) -> ProcessSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (marks, samples, stop) = (marks.clone(), samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + SAMPLE_EVERY;
                    let counts = count_processes(&marks);
                    samples
                        .lock()
                        .expect("sampler lock")
                        .push((Instant::now(), counts));
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        let sampler = ProcessSampler {
            marks,
            samples,
            stop,
            thread: Some(thread),
        };
        // The first sample exists before anyone asks.
        assert!(lab::wait_until(CEILING, || sampler.latest().is_some()).is_some());
        sampler
    }

    fn index(&self, mark: &str) -> usize {
        self.marks
            .iter()
            .position(|m| m == mark)
            .unwrap_or_else(|| panic!("{mark} is not sampled"))
    }

    fn latest(&self) -> Option<Vec<usize>> {
        let samples = self.samples.lock().expect("sampler lock");
        samples.last().map(|(_, c)| c.clone())
    }

    /// Waits for a sample taken after this call (so a condition just caused is seen).
    fn fresh(&self) -> Vec<usize> {
        let asked = Instant::now();
        let mut seen = None;
        lab::wait_until(CEILING, || {
            let samples = self.samples.lock().expect("sampler lock");
            seen = samples
                .last()
                .filter(|(at, _)| *at > asked)
                .map(|(_, c)| c.clone());
            seen.is_some()
        });
        seen.expect("the sampler keeps sampling")
    }

    /// Smallest and largest count of `mark` over the samples taken since `since`.
    fn range(&self, mark: &str, since: Instant) -> (usize, usize) {
        let i = self.index(mark);
        let samples = self.samples.lock().expect("sampler lock");
        samples
            .iter()
            .filter(|(at, _)| *at >= since)
            .fold((usize::MAX, 0), |(lo, hi), (_, c)| {
                (lo.min(c[i]), hi.max(c[i]))
            })
    }

    /// When the count of `mark` first satisfied `pred` since `since` (and held at the end).
    fn settled_at(&self, mark: &str, since: Instant, pred: impl Fn(usize) -> bool) -> Instant {
        let i = self.index(mark);
        let samples = self.samples.lock().expect("sampler lock");
        let mut at = None;
        for (t, c) in samples.iter().filter(|(t, _)| *t >= since) {
            match (pred(c[i]), at) {
                (true, None) => at = Some(*t),
                (false, _) => at = None,
                _ => {}
            }
        }
        at.unwrap_or_else(|| panic!("{mark}: the count never settled"))
    }

    /// Number of samples since `since`, the mean and the longest pause between two.
    fn cadence(&self, since: Instant) -> (usize, Duration, Duration) {
        let samples = self.samples.lock().expect("sampler lock");
        let times: Vec<Instant> = samples
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= since)
            .collect();
        let longest = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let mean = match (times.first(), times.last()) {
            (Some(first), Some(last)) if times.len() > 1 => {
                (*last - *first) / (times.len() as u32 - 1)
            }
            _ => Duration::ZERO,
        };
        (times.len(), mean, longest)
    }
}

impl Drop for ProcessSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// For each mark, the processes with it as an argument (`/proc/*/cmdline`; a zombie's is
/// empty, so an exited copy is not counted).
fn count_processes(marks: &[String]) -> Vec<usize> {
    let mut counts = vec![0; marks.len()];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return counts;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).skip(1).collect();
        for (i, mark) in marks.iter().enumerate() {
            if args.contains(&mark.as_bytes()) {
                counts[i] += 1;
            }
        }
    }
    counts
}

// ------------------------------------------------------------------------------ event follower

/// `mesh events --follow --json` inside a host, collected until that agent stops (its API
/// closes): the trail of an agent that is about to exit (it lives in memory only).
struct EventFollower {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
}

impl EventFollower {
    fn start(lab: &Lab, k: usize) -> EventFollower {
        let mut child = lab
            .command(&[
                "exec",
                &k.to_string(),
                MESH_BIN,
                "events",
                "--follow",
                "--node",
                &format!("h{k}"),
                "--json",
                "-n",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mesh events --follow");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(event) = serde_json::from_str::<Value>(&line) {
                        lines.lock().expect("follower lock").push(event);
                    }
                }
            })
        };
        let follower = EventFollower {
            child,
            lines,
            reader: Some(reader),
        };
        // `-n 1`: the last event comes at once, so the stream is open once it is here.
        let open = lab::wait_until(CEILING, || {
            !follower.lines.lock().expect("follower lock").is_empty()
        });
        assert!(open.is_some(), "h{k}: mesh events --follow printed nothing");
        follower
    }

    /// Waits until the stream ends (the agent stopped), returns every event received.
    fn finish(mut self) -> Vec<Value> {
        let ended = lab::wait_until(CEILING, || self.child.try_wait().ok().flatten().is_some());
        if ended.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines.lock().expect("follower lock").clone()
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------ tests

/// `web` (one replica, not exclusive, checked over HTTP) on h1: after `kill -9` of h1's agent
/// it is healthy on another node, whose `placement-take` names the dead node and its rank;
/// h1 restarted takes nothing back (sticky: its record of the copy it ran is superseded by
/// the newer claim); SIGTERM of the agent now running it moves it again, the leaving agent
/// recording its leave before it stops the copy. Then `replicas = 2`: two copies on distinct
/// nodes, and two again after one of their nodes is killed.
#[test]
fn services_of_a_killed_or_stopped_agent_come_up_elsewhere() {
    require_lab!();
    if python_missing() {
        eprintln!("skipping: python3 is not installed");
        return;
    }
    let lab = Lab::up("plf", 3);
    let key = lab.new_key("mesh.key");
    start_converged(&lab, 3, &key);
    let web = http_service("web", &lab.scratch().join("www-web"), "");
    add_services(&lab, 1, "web.toml", &web);
    lab.wait("web is healthy on h1 (its home)", || {
        healthy_nodes(&services(&lab, 2), "web", &[]) == ["h1"]
    });

    // kill -9 of the agent running it.
    let killed_ms = unix_ms();
    lab.lab_ok(&["kill", "1"]);
    let mut taker = String::new();
    let polled = lab.wait("web is healthy on h2 or h3", || {
        match healthy_nodes(&services(&lab, 2), "web", &["h1"]).as_slice() {
            [node] => {
                taker = node.clone();
                true
            }
            _ => false,
        }
    });
    let trail = events(&lab, 2, &taker);
    let take = events_of(&trail, "web", "placement-take", killed_ms)
        .next()
        .unwrap_or_else(|| panic!("no placement-take of web on {taker}: {trail:#?}"));
    let reason = take["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("{taker} takes web: h1 dead for "))
            && reason.contains("ranks 1st of 2 eligible alive nodes"),
        "the take names the dead node and the rank: {reason}"
    );
    let healthy = ready_at(&trail, "web", killed_ms).expect("a healthy event");
    eprintln!(
        "[{}] kill -9 of h1 -> web healthy on {taker} after {} ms (agent clock; {polled:?} polled): {reason}",
        lab.id,
        healthy - killed_ms
    );
    let pid = |rows: &[Value], node: &str| {
        rows.iter()
            .find(|r| r["name"] == "web" && r["node"] == node)
            .and_then(|r| r["pid"].as_u64())
    };
    let taker_pid = pid(&services(&lab, 2), &taker).expect("web has a pid");

    // h1 comes back: it takes nothing back.
    let returned_ms = unix_ms();
    lab.start(1, &key);
    wait_supervising(&lab, 1);
    lab.wait(
        "h1 is back and sees web placed on the node that took it",
        || {
            let rows = services(&lab, 1);
            let row = rows.iter().find(|r| r["name"] == "web");
            running_nodes(&rows, "web") == [taker.as_str()]
                && row.is_some_and(|r| {
                    r["placement"] == "placed"
                        && r["copies"] == "1/1"
                        && r["owners"][0]["name"] == taker.as_str()
                })
        },
    );
    let h1_trail = events(&lab, 1, "h1");
    assert!(
        events_of(&h1_trail, "web", "placement-take", returned_ms)
            .next()
            .is_none(),
        "h1 took web back: {h1_trail:#?}"
    );
    let trail = events(&lab, 1, &taker);
    assert!(
        events_of(&trail, "web", "placement-release", killed_ms)
            .next()
            .is_none(),
        "{taker} released web when h1 returned: {trail:#?}"
    );
    assert_eq!(
        pid(&services(&lab, 1), &taker),
        Some(taker_pid),
        "web on {taker} kept running"
    );

    // SIGTERM of the agent running it: it records its leave, then stops its copy.
    let leaving = host_of(&taker);
    let watcher = if leaving == 1 { 2 } else { 1 };
    let follower = EventFollower::start(&lab, leaving);
    let stopped_ms = unix_ms();
    lab.lab_ok(&["stop", &leaving.to_string()]);
    let mut second = String::new();
    let polled = lab.wait(
        &format!("web is healthy on a node other than {taker}"),
        || match healthy_nodes(&services(&lab, watcher), "web", &[taker.as_str()]).as_slice() {
            [node] => {
                second = node.clone();
                true
            }
            _ => false,
        },
    );
    let last_trail = follower.finish();
    let leave = last_trail
        .iter()
        .position(|e| e["kind"] == "placement-leave")
        .unwrap_or_else(|| panic!("{taker} recorded no leave: {last_trail:#?}"));
    if let Some(stop) = last_trail
        .iter()
        .position(|e| e["service"] == "web" && e["kind"] == "stop")
    {
        assert!(
            leave < stop,
            "{taker} stopped web before recording its leave"
        );
    }
    let trail = events(&lab, watcher, &second);
    let take = events_of(&trail, "web", "placement-take", stopped_ms)
        .next()
        .unwrap_or_else(|| panic!("no placement-take of web on {second}: {trail:#?}"));
    let reason = take["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("{taker} is leaving"))
            || reason.contains(&format!("{taker} left")),
        "the take says the node leaves: {reason}"
    );
    let healthy = ready_at(&trail, "web", stopped_ms).expect("a healthy event");
    eprintln!(
        "[{}] SIGTERM of {taker} -> web healthy on {second} after {} ms (agent clock; {polled:?} polled, incl. lab.sh stop): {reason}",
        lab.id,
        healthy - stopped_ms
    );
    lab.start(leaving, &key);
    wait_supervising(&lab, leaving);

    // replicas = 2: two copies on distinct nodes, and two again after a kill.
    let pair = http_service("pair", &lab.scratch().join("www-pair"), "replicas = 2");
    add_services(&lab, 1, "pair.toml", &pair);
    let mut copies = Vec::new();
    lab.wait("pair runs healthy on two distinct nodes", || {
        copies = healthy_nodes(&services(&lab, 1), "pair", &[]);
        copies.len() == 2 && copies[0] != copies[1]
    });
    let before = copies.clone();
    let victim = copies[1].clone();
    let watcher = if host_of(&victim) == 1 { 2 } else { 1 };
    let killed_ms = unix_ms();
    lab.lab_ok(&["kill", &host_of(&victim).to_string()]);
    let polled = lab.wait(
        &format!("pair runs healthy on two nodes other than {victim}"),
        || {
            copies = healthy_nodes(&services(&lab, watcher), "pair", &[victim.as_str()]);
            copies.len() == 2 && copies[0] != copies[1]
        },
    );
    let fresh = copies
        .iter()
        .find(|n| !before.contains(n))
        .expect("a copy on the node that was not running one");
    let ready = ready_at(&events(&lab, watcher, fresh), "pair", killed_ms)
        .expect("the new copy has a healthy event");
    eprintln!(
        "[{}] kill -9 of {victim} -> pair healthy on {copies:?} again after {} ms (agent clock; {polled:?} polled)",
        lab.id,
        ready - killed_ms
    );
}

/// A dependent on another node: `MESH_ENDPOINT_DB` gives it the dependency's address; when
/// the dependency's node is killed and `db` comes up elsewhere, `api`
/// (`on_dependency_restart = "restart"`) is restarted with the new address.
#[test]
fn a_dependent_gets_its_dependency_s_address_and_restarts_when_it_moves() {
    require_lab!();
    if python_missing() {
        eprintln!("skipping: python3 is not installed");
        return;
    }
    let lab = Lab::up("pld", 3);
    let key = lab.new_key("mesh.key");
    start_converged(&lab, 3, &key);
    let seen = lab.scratch().join("api-endpoints");
    let db = http_service("db", &lab.scratch().join("www-db"), "node = \"h1\"");
    let api = format!(
        "[[service]]\nname = \"api\"\ncommand = \"sh\"\n\
         args = [\"-c\", \"echo \\\"$MESH_ENDPOINT_DB\\\" >> {}; exec sleep {}\"]\n\
         node = \"h2\"\nafter = [\"db\"]\non_dependency_restart = \"restart\"\n",
        seen.display(),
        unique_seconds(3)
    );
    add_services(&lab, 1, "dep.toml", &(db + &api));
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&seen)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    lab.wait("api runs on h2 with db's address on h1", || {
        healthy_nodes(&services(&lab, 2), "db", &[]) == ["h1"]
            && healthy_nodes(&services(&lab, 2), "api", &[]) == ["h2"]
            && lines().len() == 1
    });
    let first = lines()[0].clone();
    let (host, port) = first
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("MESH_ENDPOINT_DB is host:port, got {first:?}"));
    assert!(!host.is_empty() && port.parse::<u16>().is_ok(), "{first:?}");
    let killed_ms = unix_ms();
    lab.lab_ok(&["kill", "1"]);
    let moved = Instant::now();
    lab.wait(
        "db healthy elsewhere and api restarted with its new address",
        || {
            let done =
                healthy_nodes(&services(&lab, 2), "db", &["h1"]).len() == 1 && lines().len() >= 2;
            if !done && moved.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "api saw {:?}; services {:#?}; h2 events {:#?}",
                    lines(),
                    services(&lab, 2),
                    events(&lab, 2, "h2")
                );
            }
            done
        },
    );
    let moved_to = healthy_nodes(&services(&lab, 2), "db", &["h1"])[0].clone();
    let now = lines();
    assert!(
        !now[1].starts_with(&format!("{host}:")) && now[1].contains(':'),
        "api's second start got the new address of db (on {moved_to}): {now:?}"
    );
    // Restarted because db moved (`restart`), or stopped while db was down and started again
    // once it was healthy on its new node (rule 6 of the dependencies): either way a new start
    // after the kill.
    let trail = events(&lab, 2, "h2");
    let restart = events_of(&trail, "api", "restart", killed_ms)
        .chain(events_of(&trail, "api", "start", killed_ms))
        .next()
        .unwrap_or_else(|| panic!("api was not started again on h2: {trail:#?}"));
    eprintln!(
        "[{}] db moved from h1 to {moved_to}; api restarted: {}",
        lab.id, restart["reason"]
    );
}

/// An exclusive singleton (`stop_grace = "1s"`, so the fence is 1.5 s) and a non-exclusive
/// service of two replicas both have a copy on h3, which is then partitioned away (its frames
/// dropped at the hub). Sampled every 20 ms from outside: the singleton never runs twice, the
/// majority side (h1, h2) runs it; the other service runs on both sides (three copies). After
/// the heal: exactly one copy of the singleton and two of the other, and every host agrees.
#[test]
fn an_exclusive_service_never_runs_twice_across_a_partition_and_the_heal_restores_replicas() {
    require_lab!();
    let lab = Lab::up("plp", 3);
    let key = lab.new_key("mesh.key");
    start_converged(&lab, 3, &key);
    let (lock_mark, multi_mark) = (unique_seconds(1), unique_seconds(2));
    let toml = sleep_service(
        "lock",
        &lock_mark,
        "exclusive = true\nstop_grace = \"1s\"\nnode = \"h3\"",
    ) + &sleep_service("multi", &multi_mark, "replicas = 2\nnode = \"h3\"");
    let sampler = ProcessSampler::start(vec![lock_mark.clone(), multi_mark.clone()]);
    let began = Instant::now();
    add_services(&lab, 1, "partition.toml", &toml);
    let mut multi_nodes = Vec::new();
    lab.wait("lock runs on h3, multi on h3 and one other node", || {
        let rows = services(&lab, 1);
        multi_nodes = running_nodes(&rows, "multi");
        running_nodes(&rows, "lock") == ["h3"]
            && healthy_nodes(&rows, "lock", &[]) == ["h3"]
            && multi_nodes.len() == 2
            && multi_nodes.contains(&"h3".to_string())
            && sampler.fresh() == [1, 2]
    });

    let cut = Instant::now();
    let cut_ms = unix_ms();
    lab.lab_ok(&["partition", "3"]);
    let mut majority = String::new();
    let polled = lab.wait(
        "the majority side (h1, h2) runs lock",
        || match healthy_nodes(&services(&lab, 1), "lock", &["h3"]).as_slice() {
            [node] => {
                majority = node.clone();
                true
            }
            _ => false,
        },
    );
    let trail = events(&lab, 1, &majority);
    let started = ready_at(&trail, "lock", cut_ms).expect("lock started on the majority side");
    let take = events_of(&trail, "lock", "placement-take", cut_ms)
        .next()
        .and_then(|e| e["reason"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let fenced: Vec<String> = events_of(&trail, "lock", "placement-fenced", cut_ms)
        .map(|e| {
            format!(
                "{} ms: {}",
                e["at_ms"].as_i64().unwrap_or_default() - cut_ms,
                e["reason"]
            )
        })
        .collect();
    eprintln!(
        "[{}] partition of h3 -> lock runs on {majority} after {} ms (agent clock; {polled:?} polled): {take}; fenced before: {fenced:?}",
        lab.id,
        started - cut_ms
    );
    let h3_trail = events(&lab, 3, "h3");
    let released = events_of(&h3_trail, "lock", "placement-release", cut_ms)
        .next()
        .unwrap_or_else(|| panic!("h3 never released lock: {h3_trail:#?}"));
    assert!(
        released["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no majority")),
        "h3 stops lock for want of a majority: {released}"
    );
    eprintln!(
        "[{}] h3 stopped its copy of lock {} ms after the partition",
        lab.id,
        released["at_ms"].as_i64().unwrap_or_default() - cut_ms
    );
    lab.wait(
        "multi runs on both sides: h3 keeps its copy, h1 and h2 run one each",
        || {
            running_nodes(&services(&lab, 3), "multi").contains(&"h3".to_string())
                && healthy_nodes(&services(&lab, 1), "multi", &["h3"]) == ["h1", "h2"]
                && sampler.fresh()[1] == 3
        },
    );

    let healed = Instant::now();
    lab.lab_ok(&["heal", "3"]);
    let mut agreed = Vec::new();
    let polled = lab.wait(
        "after the heal: one copy of lock, two of multi, on the same nodes in every view",
        || {
            let views: Vec<(Vec<String>, Vec<String>)> = (1..=3)
                .map(|k| {
                    let rows = services(&lab, k);
                    (running_nodes(&rows, "lock"), running_nodes(&rows, "multi"))
                })
                .collect();
            agreed = views[0].0.clone();
            agreed.extend(views[0].1.iter().cloned());
            views.iter().all(|v| *v == views[0])
                && views[0].0.len() == 1
                && views[0].1.len() == 2
                && sampler.fresh() == [1, 2]
        },
    );
    let one_lock = sampler.settled_at(&lock_mark, healed, |n| n == 1);
    let two_multi = sampler.settled_at(&multi_mark, healed, |n| n == 2);
    let (samples, mean, longest) = sampler.cadence(began);
    eprintln!(
        "[{}] heal -> exactly 1 lock after {:?}, exactly 2 multi after {:?} (process table); \
         all views agree ({agreed:?}) after {polled:?}; {samples} samples, every {mean:?} on average, longest pause {longest:?}",
        lab.id,
        one_lock.saturating_duration_since(healed),
        two_multi.saturating_duration_since(healed)
    );
    // From inside as well: the agents' own trails (spawned .. stopped) never overlap.
    let now_ms = unix_ms();
    let trails: Vec<Vec<Value>> = (1..=3).map(|k| events(&lab, k, &format!("h{k}"))).collect();
    let spans: Vec<(usize, (i64, i64))> = trails
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            run_spans(t, "lock", now_ms)
                .into_iter()
                .map(move |s| (i + 1, s))
        })
        .collect();
    let lock_events = || {
        trails
            .iter()
            .flatten()
            .filter(|e| e["service"] == "lock")
            .map(|e| format!("{} {} {} {}", e["at_ms"], e["node"], e["kind"], e["reason"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (a, (a_from, a_to)) in &spans {
        for (b, (b_from, b_to)) in &spans {
            assert!(
                a == b || a_to <= b_from || b_to <= a_from,
                "lock ran on h{a} ({a_from}..{a_to}) and on h{b} ({b_from}..{b_to}) at once:\n{}",
                lock_events()
            );
        }
    }
    eprintln!("[{}] lock ran: {spans:?}", lab.id);
    let (_, most) = sampler.range(&lock_mark, began);
    assert!(
        most <= 1,
        "two copies of the exclusive lock ran at once ({most} processes in one sample):\n{}",
        lock_events()
    );
    let (fewest, _) = sampler.range(&lock_mark, cut);
    eprintln!(
        "[{}] lock: at most {most} copy at once; {fewest} at the fewest (the fence: none for a moment)",
        lab.id
    );
}

/// 20 services spread over 3 nodes by their `node` (3 of them HTTP servers with a health
/// check, the others `sleep`). Killing h1 moves exactly its services, each to a node that
/// stays; the others keep their process. h1 restarted takes none back (sticky). `mesh service
/// rebalance` moves one back to h1, its new copy healthy before the old one stops, the process
/// count never at zero. `mesh drain h2` empties h2 the same way (new copies healthy before the
/// old ones stop); `mesh undrain h2` lets h2 take services again.
#[test]
fn of_twenty_services_only_the_killed_node_s_move_and_rebalance_and_drain_leave_no_gap() {
    require_lab!();
    if python_missing() {
        eprintln!("skipping: python3 is not installed");
        return;
    }
    let lab = Lab::up("plt", 3);
    let key = lab.new_key("mesh.key");
    start_converged(&lab, 3, &key);
    let names: Vec<String> = (1..=20).map(|i| format!("s{i:02}")).collect();
    let mut marks = Vec::new();
    let mut toml = String::new();
    for (i, name) in names.iter().enumerate() {
        let home = format!("node = \"h{}\"", i % 3 + 1);
        if i < 3 {
            let dir = lab.scratch().join(format!("www-{name}"));
            toml += &http_service(name, &dir, &home);
            marks.push(dir.display().to_string());
        } else {
            let mark = unique_seconds(10 + i as u32);
            toml += &sleep_service(name, &mark, &home);
            marks.push(mark);
        }
    }
    let mark_of = |name: &str| marks[names.iter().position(|n| n == name).expect("ours")].clone();
    let sampler = ProcessSampler::start(marks.clone());
    add_services(&lab, 1, "twenty.toml", &toml);

    // Where each runs, by host k's view: name -> (node, pid), for healthy copies on `up` nodes.
    let placed = |k: usize, up: &[&str]| -> Option<Vec<(String, u64)>> {
        let rows = services(&lab, k);
        names
            .iter()
            .map(|name| {
                let row = rows.iter().find(|r| {
                    r["name"] == name.as_str()
                        && r["state"] == "healthy"
                        && r["node"].as_str().is_some_and(|n| up.contains(&n))
                })?;
                let others = running_nodes(&rows, name)
                    .iter()
                    .filter(|n| up.contains(&n.as_str()))
                    .count();
                (others == 1).then_some(())?;
                Some((row["node"].as_str()?.to_owned(), row["pid"].as_u64()?))
            })
            .collect()
    };
    let all = ["h1", "h2", "h3"];
    let mut before = Vec::new();
    lab.wait("the 20 services run healthy, each on its home", || {
        before = placed(2, &all).unwrap_or_default();
        before.len() == 20
            && before
                .iter()
                .enumerate()
                .all(|(i, (node, _))| *node == format!("h{}", i % 3 + 1))
            && sampler.fresh().iter().all(|n| *n == 1)
    });
    let on_h1: Vec<&String> = names
        .iter()
        .zip(&before)
        .filter(|(_, (node, _))| node == "h1")
        .map(|(name, _)| name)
        .collect();

    // kill -9 h1: exactly its services move.
    let killed_ms = unix_ms();
    lab.lab_ok(&["kill", "1"]);
    let mut after = Vec::new();
    let polled = lab.wait("every service runs healthy on h2 or h3", || {
        after = placed(2, &["h2", "h3"]).unwrap_or_default();
        after.len() == 20
    });
    for ((name, old), new) in names.iter().zip(&before).zip(&after) {
        if old.0 == "h1" {
            assert_ne!(new.0, "h1", "{name} left h1");
        } else {
            assert_eq!(
                new, old,
                "{name} did not run on h1: same node, same process"
            );
        }
    }
    let latest = on_h1
        .iter()
        .filter_map(|name| {
            let node = &after[names.iter().position(|n| n == *name)?].0;
            ready_at(&events(&lab, 2, node), name, killed_ms)
        })
        .max()
        .expect("the moved services have ready events");
    eprintln!(
        "[{}] kill -9 of h1 -> its {} services healthy on h2/h3 after {} ms (agent clock; {polled:?} polled); the other {} kept their process",
        lab.id,
        on_h1.len(),
        latest - killed_ms,
        20 - on_h1.len()
    );

    // h1 returns: it takes nothing back, and stops what its killed run left behind.
    let returned_ms = unix_ms();
    lab.start(1, &key);
    wait_supervising(&lab, 1);
    lab.wait(
        "h1 is back, sees every service where it runs now, its leftovers are gone",
        || {
            placed(1, &all).is_some_and(|now| now == after)
                && sampler.fresh().iter().all(|n| *n == 1)
        },
    );
    let h1_trail = events(&lab, 1, "h1");
    let taken: Vec<&Value> = h1_trail
        .iter()
        .filter(|e| e["kind"] == "placement-take" && e["at_ms"].as_i64() >= Some(returned_ms))
        .collect();
    assert!(taken.is_empty(), "h1 took services back: {taken:#?}");
    assert_eq!(placed(2, &all), Some(after.clone()), "nothing moved");

    // Rebalance one of h1's services back home: make before break.
    let back = on_h1[0].clone();
    let from = after[names.iter().position(|n| *n == back).expect("ours")]
        .0
        .clone();
    let asked = Instant::now();
    let asked_ms = unix_ms();
    check(
        &lab.exec(1, &[MESH_BIN, "service", "rebalance", &back]),
        &format!("mesh service rebalance {back}"),
    );
    lab.wait(&format!("{back} runs on h1 only"), || {
        let rows = services(&lab, 1);
        healthy_nodes(&rows, &back, &[]) == ["h1"]
            && running_nodes(&rows, &back) == ["h1"]
            && sampler.fresh()[names.iter().position(|n| *n == back).expect("ours")] == 1
    });
    let (fewest, most) = sampler.range(&mark_of(&back), asked);
    assert!(
        fewest >= 1,
        "{back} had no copy at some moment of its rebalance"
    );
    let new_ready = ready_at(&events(&lab, 1, "h1"), &back, asked_ms).expect("healthy on h1");
    let old_stop = events_of(&events(&lab, 1, &from), &back, "stop", asked_ms)
        .next()
        .and_then(|e| e["at_ms"].as_i64())
        .expect("the old copy stopped");
    assert!(
        new_ready <= old_stop,
        "{back}: the old copy on {from} stopped ({old_stop}) before the new one on h1 was healthy ({new_ready})"
    );
    eprintln!(
        "[{}] rebalance {back}: healthy on h1 {} ms after the request, {from}'s copy stopped {} ms later; copies {fewest}..{most}",
        lab.id,
        new_ready - asked_ms,
        old_stop - new_ready
    );

    // Drain h2: it runs nothing, every service healthy elsewhere, new copies first.
    let on_h2: Vec<String> = placed(1, &all)
        .expect("every service runs")
        .iter()
        .zip(&names)
        .filter(|((node, _), _)| node == "h2")
        .map(|(_, name)| name.clone())
        .collect();
    let drained = Instant::now();
    let drained_ms = unix_ms();
    check(&lab.exec(1, &[MESH_BIN, "drain", "h2"]), "mesh drain h2");
    let mut now = Vec::new();
    let polled = lab.wait("h2 runs nothing, every service healthy on h1 or h3", || {
        now = placed(1, &["h1", "h3"]).unwrap_or_default();
        let rows = services(&lab, 1);
        now.len() == 20
            && names
                .iter()
                .all(|name| !running_nodes(&rows, name).contains(&"h2".to_string()))
            && sampler.fresh().iter().all(|n| *n == 1)
    });
    let h2_trail = events(&lab, 1, "h2");
    for name in &on_h2 {
        let (fewest, _) = sampler.range(&mark_of(name), drained);
        assert!(
            fewest >= 1,
            "{name} had no copy at some moment of the drain"
        );
        let node = &now[names.iter().position(|n| n == name).expect("ours")].0;
        let new_ready = ready_at(&events(&lab, 1, node), name, drained_ms)
            .unwrap_or_else(|| panic!("{name} ready on {node}"));
        let old_stop = events_of(&h2_trail, name, "stop", drained_ms)
            .next()
            .and_then(|e| e["at_ms"].as_i64())
            .unwrap_or_else(|| panic!("{name} stopped on h2: {h2_trail:#?}"));
        assert!(
            new_ready <= old_stop,
            "{name}: h2's copy stopped ({old_stop}) before the one on {node} was healthy ({new_ready})"
        );
    }
    eprintln!(
        "[{}] drain h2: its {} services moved, each healthy elsewhere before h2's copy stopped ({polled:?} polled)",
        lab.id,
        on_h2.len()
    );
    assert!(
        h2_trail.iter().any(|e| e["kind"] == "placement-drain"),
        "h2 tells its drain: {h2_trail:#?}"
    );

    // Undrain: h2 takes services again (a new one whose home it is).
    check(
        &lab.exec(1, &[MESH_BIN, "undrain", "h2"]),
        "mesh undrain h2",
    );
    let late_mark = unique_seconds(40);
    add_services(
        &lab,
        1,
        "late.toml",
        &sleep_service("late", &late_mark, "node = \"h2\""),
    );
    lab.wait("late, added for h2 after the undrain, runs on h2", || {
        healthy_nodes(&services(&lab, 1), "late", &[]) == ["h2"]
    });
}
