//! Shared helpers of the lab tests (`tests/lab.rs`, `tests/lab_state.rs`): the prerequisite
//! check, the [`Lab`] guard around `simulations/lab/lab.sh`, and condition waits.
//!
//! Included by each lab test file with `#[macro_use] #[path = "support/lab.rs"] mod lab;`, so it
//! is compiled into each test binary separately; helpers one file does not use are not dead
//! code in the other, hence the `allow`.
//!
//! Every wait is on a condition polled through the agent's CLI (`mesh peers --json`,
//! `mesh status --json`, `mesh state --json`) run inside the host, with a generous ceiling;
//! nothing sleeps a fixed time except the poll interval.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The agent binary under test, built by cargo for this test target.
pub const MESH_BIN: &str = env!("CARGO_BIN_EXE_mesh");
/// The lab script: namespaces, bridge, agents, faults.
pub const LAB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/simulations/lab/lab.sh");

/// Ceiling for any convergence or state change. Typical times are 0.5-3 s; CI is a loaded
/// 2-core box running all lab tests (a dozen debug agents) at once, and each poll pays an
/// `ip netns exec` (~100 ms under load).
pub const CEILING: Duration = Duration::from_secs(20);
/// Pause between two polls of a condition.
pub const POLL: Duration = Duration::from_millis(50);
/// Lines of each agent's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

// ------------------------------------------------------------------------------ prerequisites

/// `Err(reason)` if lab tests cannot run here: not root, or `ip` / `nft` missing.
pub fn lab_prerequisites() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status ({e}); not Linux?"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or("no Uid line in /proc/self/status")?;
    if euid != "0" {
        return Err(format!(
            "lab tests need root (network namespaces); effective uid is {euid}"
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("setsid", "util-linux"),
    ] {
        if find_in_path(tool).is_none() {
            return Err(format!(
                "`{tool}` not found in PATH (apt-get install -y {package})"
            ));
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
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `Err(reason)` unless `python3` runs and can import each of `modules`.
pub fn python_prerequisites(modules: &[&str]) -> Result<(), String> {
    let imports = if modules.is_empty() {
        "pass".to_owned()
    } else {
        format!("import {}", modules.join(", "))
    };
    match Command::new("python3").args(["-c", &imports]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "python3 cannot run `{imports}`: {}",
            stderr(&out).trim()
        )),
        Err(e) => Err(format!("no python3 ({e})")),
    }
}

/// Runs the test body only if the lab can run here; otherwise says why and passes.
macro_rules! require_lab {
    () => {
        if let Err(reason) = $crate::lab::lab_prerequisites() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

// ------------------------------------------------------------------------------ the lab guard

/// One lab: `lab.sh up N` on creation, `lab.sh down` on drop (also during a panic).
pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub hosts: usize,
    /// Holds `dir` and the key files; removed after `down` (fields drop after `Drop::drop`).
    tmp: tempfile::TempDir,
}

impl Lab {
    /// Builds a lab of `hosts` hosts. `name` (a few letters and digits) makes the id unique
    /// among the lab tests of every file; the pid part keeps two concurrent `cargo test` runs
    /// apart. Namespace names stay short.
    pub fn up(name: &str, hosts: usize) -> Lab {
        Self::up_with(name, hosts, &[])
    }

    /// [`Lab::up`] with `lab.sh up` options (`--subnets S`, `--nat S`).
    pub fn up_with(name: &str, hosts: usize, options: &[&str]) -> Lab {
        let id = format!("{name}p{}", std::process::id() % 1000);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("mesh-lab-{id}-"))
            .tempdir()
            .expect("create a tempdir for the lab");
        let lab = Lab {
            id,
            dir: tmp.path().join("lab"),
            hosts,
            tmp,
        };
        let n = hosts.to_string();
        let up: Vec<&str> = ["up", n.as_str()]
            .into_iter()
            .chain(options.iter().copied())
            .collect();
        let out = lab.lab(&up);
        if !out.status.success() && stderr(&out).contains("already exists") {
            // Left over by a crashed run that had the same pid modulo 1000: ours to remove.
            eprintln!("[{}] removing a stale lab with the same id", lab.id);
            lab.lab(&["down"]);
            lab.lab_ok(&up);
        } else {
            check(&out, &format!("lab.sh up {hosts}"));
        }
        lab
    }

    /// A scratch directory that lives as long as the lab (outside the lab's work dir).
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(LAB_SH);
        cmd.args(args)
            .env("LAB_ID", &self.id)
            .env("LAB_DIR", &self.dir)
            .env("MESH_BIN", MESH_BIN);
        cmd
    }

    /// Runs `lab.sh ARGS`, whatever its exit code.
    pub fn lab(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {LAB_SH}: {e}"))
    }

    /// Runs `lab.sh ARGS` and panics (with its output) unless it succeeds.
    pub fn lab_ok(&self, args: &[&str]) -> Output {
        let out = self.lab(args);
        check(&out, &format!("[{}] lab.sh {}", self.id, args.join(" ")));
        out
    }

    /// A fresh mesh key file (`mesh key generate`), named `name`, mode 0600.
    pub fn new_key(&self, name: &str) -> PathBuf {
        let out = Command::new(MESH_BIN)
            .args(["key", "generate"])
            .output()
            .expect("run mesh key generate");
        check(&out, "mesh key generate");
        let hex = String::from_utf8(out.stdout).expect("key is UTF-8");
        let hex = hex.trim();
        assert_eq!(hex.len(), 64, "mesh key generate printed {hex:?}");
        let path = self.tmp.path().join(name);
        std::fs::write(&path, format!("{hex}\n")).expect("write key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        path
    }

    pub fn start(&self, k: usize, key: &Path) {
        let key = key.to_str().expect("UTF-8 temp path");
        self.lab_ok(&["start", &k.to_string(), "--", "--mesh-key", key]);
    }

    /// Runs `CMD ARGS` inside host `k`.
    pub fn exec(&self, k: usize, args: &[&str]) -> Output {
        let k = k.to_string();
        let mut all = vec!["exec", k.as_str()];
        all.extend_from_slice(args);
        self.lab(&all)
    }

    /// Runs `mesh ARGS` inside host `k` and parses its stdout as JSON, or `Err` while the
    /// agent's API does not answer.
    pub fn mesh_json(&self, k: usize, args: &[&str]) -> Result<Value, String> {
        let mut all = vec![MESH_BIN];
        all.extend_from_slice(args);
        let out = self.exec(k, &all);
        if !out.status.success() {
            return Err(format!(
                "h{k}: mesh {} failed: {}",
                args.join(" "),
                stderr(&out).trim()
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("h{k}: mesh {}: bad JSON: {e}", args.join(" ")))
    }

    /// Host `k`'s `mesh peers --json`, or `Err` while its API does not answer.
    pub fn peers(&self, k: usize) -> Result<Vec<Value>, String> {
        match self.mesh_json(k, &["peers", "--json"])? {
            Value::Array(rows) => Ok(rows),
            other => Err(format!("h{k}: mesh peers --json is not an array: {other}")),
        }
    }

    /// Host `k`'s `mesh status --json`, or `Err` while its API does not answer.
    pub fn status(&self, k: usize) -> Result<Value, String> {
        self.mesh_json(k, &["status", "--json"])
    }

    /// Host `k`'s `mesh state --json`, or `Err` while its API does not answer.
    pub fn state(&self, k: usize) -> Result<Value, String> {
        self.mesh_json(k, &["state", "--json"])
    }

    /// Host `k`'s node id, waiting for its API to answer.
    pub fn node_id(&self, k: usize) -> String {
        let mut id = None;
        self.wait(&format!("h{k}'s API answers mesh status"), || {
            id = self
                .status(k)
                .ok()
                .and_then(|s| s["id"].as_str().map(str::to_owned));
            id.is_some()
        });
        id.expect("set when the wait succeeded")
    }

    /// State of `id` in host `k`'s view: `Some("alive")`…, `None` if not listed or no answer.
    pub fn state_of(&self, k: usize, id: &str) -> Option<String> {
        let rows = self.peers(k).ok()?;
        state_in(&rows, id).map(str::to_owned)
    }

    /// Waits until `cond` holds, polling every [`POLL`], for at most [`CEILING`]; panics with
    /// every host's view otherwise. Returns the time it took.
    pub fn wait(&self, what: &str, cond: impl FnMut() -> bool) -> Duration {
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
    pub fn views(&self) -> String {
        (1..=self.hosts)
            .map(|k| match self.peers(k) {
                Ok(rows) => format!("  h{k} sees: {}", summary(&rows)),
                Err(e) => format!("  {e}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Times (seconds of the UTC day) of host `k`'s log lines containing `needle`.
    pub fn log_times(&self, k: usize, needle: &str) -> Vec<f64> {
        self.agent_log(k)
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                let time = l
                    .split_whitespace()
                    .next()?
                    .split('T')
                    .nth(1)?
                    .trim_end_matches('Z');
                let mut parts = time.split(':');
                let h: f64 = parts.next()?.parse().ok()?;
                let m: f64 = parts.next()?.parse().ok()?;
                let s: f64 = parts.next()?.parse().ok()?;
                Some(h * 3600.0 + m * 60.0 + s)
            })
            .collect()
    }

    /// Starts host `k`'s agent with `key`, no mDNS, and `extra` arguments.
    pub fn start_no_mdns(&self, k: usize, key: &Path, extra: &[&str]) {
        let (k, key) = (k.to_string(), key.to_str().expect("UTF-8 temp path"));
        let mut args = vec!["start", k.as_str(), "--", "--mesh-key", key, "--no-mdns"];
        args.extend_from_slice(extra);
        self.lab_ok(&args);
    }

    /// The rendezvous point host `k` serves: its address starting with `prefix` (e.g.
    /// `/ip4/10.77.0.1/tcp/`), as `mesh status` prints it for `--rendezvous`.
    pub fn point_addr(&self, k: usize, prefix: &str) -> String {
        self.status(k).expect("status answers")["rendezvous_point"]["addrs"]
            .as_array()
            .expect("host k serves a rendezvous point")
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with(prefix))
            .unwrap_or_else(|| panic!("no point address starting with {prefix}"))
            .to_string()
    }

    /// Whether host `k` lists every id of `ids` (but its own) alive.
    pub fn sees_alive(&self, k: usize, ids: &[String]) -> bool {
        let Ok(rows) = self.peers(k) else {
            return false;
        };
        let me = rows
            .iter()
            .find(|r| r["self"] == true)
            .map(|r| r["id"].clone());
        ids.iter()
            .filter(|id| me.as_ref().is_none_or(|m| m != &Value::from(id.as_str())))
            .all(|id| state_in(&rows, id) == Some("alive"))
    }

    /// Whether hosts `1..=ids.len()` each list all the others alive (`ids[k-1]` is host k's).
    pub fn all_alive(&self, ids: &[String]) -> bool {
        (1..=ids.len()).all(|k| self.sees_alive(k, ids))
    }

    /// Host `k`'s agent log (every start appends to it).
    pub fn agent_log(&self, k: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("h{k}/agent.log"))).unwrap_or_default()
    }

    fn log_tails(&self) -> String {
        let mut all = String::new();
        for k in 1..=self.hosts {
            let log = self.dir.join(format!("h{k}/agent.log"));
            let text = self.agent_log(k);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            all.push_str(&format!(
                "--- {} (last {} lines)\n{}\n",
                log.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[{}] test failed; agent logs:\n{}",
                self.id,
                self.log_tails()
            );
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
pub fn wait_until(ceiling: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
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

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

pub fn state_in<'a>(rows: &'a [Value], id: &str) -> Option<&'a str> {
    rows.iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["state"].as_str())
}

pub fn summary(rows: &[Value]) -> String {
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
pub fn sees_exactly(rows: &[Value], me: &str, others: &[&str], state: &str) -> bool {
    let self_ok = rows.iter().any(|r| r["self"] == true && r["id"] == me);
    let others_ok = others.iter().all(|id| state_in(rows, id) == Some(state));
    self_ok && others_ok && rows.len() == 1 + others.len()
}

/// Starts hosts `1..=n` with `key` and waits until each lists all the others `alive`.
/// Returns the node ids, index 0 for host 1.
pub fn start_converged(lab: &Lab, n: usize, key: &Path) -> Vec<String> {
    for k in 1..=n {
        lab.start(k, key);
    }
    let ids: Vec<String> = (1..=n).map(|k| lab.node_id(k)).collect();
    let took = lab.wait(&format!("hosts 1..{n} see each other alive"), || {
        (1..=n).all(|k| {
            let others: Vec<&str> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i + 1 != k)
                .map(|(_, s)| s.as_str())
                .collect();
            lab.peers(k)
                .is_ok_and(|rows| sees_exactly(&rows, &ids[k - 1], &others, "alive"))
        })
    });
    eprintln!(
        "[{}] {n} agents converged {took:?} after the last start",
        lab.id
    );
    ids
}
