//! Fault injection: the state file's filesystem fills up under a real `mesh agent` process.
//!
//! The agent's `DATA_DIR/state` is a 3 MB tmpfs mounted in a private mount namespace (held by
//! a `sleep` process started under `unshare -m`; the agent and the helpers that fill and free
//! the disk join it with `nsenter -m`), so nothing is mounted on the host. Checks: a write that
//! cannot reach the disk is refused at the API with a clear error and is not kept in memory;
//! writes after space is freed succeed; after a restart every acknowledged write is there and
//! nothing was set aside as damaged.
//!
//! Needs root (mount namespaces and tmpfs); skips with a printed reason otherwise.

#[path = "support/agent.rs"]
mod agent;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use agent::{MESH, key_file, wait_until};

/// A process holding a private mount namespace with a small tmpfs at `mount_point`.
struct Namespace {
    holder: Child,
}

impl Namespace {
    fn new(mount_point: &Path) -> Namespace {
        let script = format!(
            "mount -t tmpfs -o size=3m,mode=0700 tmpfs '{}' && echo ready && exec sleep 600",
            mount_point.display()
        );
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read from the namespace holder");
        assert_eq!(line.trim(), "ready", "the tmpfs could not be mounted");
        Namespace { holder }
    }

    /// A command that runs `program` inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "--", program]);
        c
    }

    fn sh(&self, script: &str) -> Output {
        self.command("sh")
            .args(["-c", script])
            .output()
            .expect("run sh in the namespace")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

/// A test that fails part-way still stops its agent (a stopped one is already reaped).
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(ns: &Namespace, dir: &Path, key: &Path, log: &Path) -> Agent {
        let _ = std::fs::remove_file(dir.join("api.addr"));
        let child = ns
            .command(MESH)
            .args(["agent", "--data-dir"])
            .arg(dir)
            .args(["--name", "solo", "--mesh-key"])
            .arg(key)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--no-mdns",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create the log"))
            .spawn()
            .expect("spawn the agent");
        let agent = Agent {
            child,
            dir: dir.to_path_buf(),
        };
        wait_until("the agent's API", || {
            agent
                .api()
                .filter(|_| agent.cli(&["status"]).status.success())
        });
        agent
    }

    fn api(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("api.addr"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(MESH)
            .args(args)
            .env("MESH_API", self.api().unwrap_or_default())
            // Where the CLI finds the agent's API token.
            .env("MESH_DATA_DIR", &self.dir)
            .output()
            .expect("run mesh")
    }

    /// This node's tags as its API shows them.
    fn tags(&self) -> serde_json::Map<String, serde_json::Value> {
        let out = self.cli(&["peers", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.into_iter()
            .find(|r| r["self"] == true)
            .and_then(|r| r["tags"].as_object().cloned())
            .unwrap_or_default()
    }

    fn stop(mut self) {
        // nsenter without a PID namespace does not fork: the child is the agent itself.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn a_full_disk_refuses_writes_and_loses_no_acknowledged_one() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a tmpfs in a private mount namespace");
        return;
    }
    if Command::new("unshare").arg("--version").output().is_err()
        || Command::new("nsenter").arg("--version").output().is_err()
    {
        eprintln!("SKIPPED: needs unshare and nsenter (util-linux)");
        return;
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let key = key_file(tmp.path());
    let data = tmp.path().join("solo");
    let state = data.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let ns = Namespace::new(&state);
    let log = tmp.path().join("solo.log");
    let agent = Agent::start(&ns, &data, &key, &log);

    let mut acknowledged = serde_json::Map::new();
    let long = "x".repeat(255);
    for i in 0..4 {
        let out = agent.cli(&["tag", "add", &format!("before{i}={long}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        acknowledged.insert(format!("before{i}"), long.clone().into());
    }

    // Fill the filesystem: dd stops at ENOSPC.
    let state_dir = state.display().to_string();
    ns.sh(&format!(
        "dd if=/dev/zero of='{state_dir}/filler' bs=4k 2>/dev/null; sync"
    ));

    // Write until one is refused. Each change is a few hundred bytes, so within a few pages.
    let mut refused = None;
    for i in 0..40 {
        let key = format!("full{i}");
        let out = agent.cli(&["tag", "add", &format!("{key}={long}")]);
        if out.status.success() {
            acknowledged.insert(key, long.clone().into());
        } else {
            refused = Some((key, String::from_utf8_lossy(&out.stderr).to_string()));
            break;
        }
    }
    let (refused_key, message) = refused.unwrap_or_else(|| {
        panic!(
            "no write was refused on a full disk; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(
        message.contains("the change was not made") && message.contains("No space left"),
        "the error names what happened: {message}"
    );
    let tags = agent.tags();
    assert!(
        !tags.contains_key(&refused_key),
        "a refused write is not kept in memory either"
    );
    assert_eq!(tags, acknowledged, "every acknowledged write is visible");

    // Free space; writes work again.
    ns.sh(&format!("rm -f '{state_dir}/filler'"));
    let out = agent.cli(&["tag", "add", &format!("after={long}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    acknowledged.insert("after".into(), long.clone().into());

    agent.stop();
    let agent = Agent::start(&ns, &data, &key, &log.with_extension("2.log"));
    assert_eq!(
        agent.tags(),
        acknowledged,
        "after a restart every acknowledged write is still there, the refused one is not"
    );
    let listing = ns.sh(&format!("ls -a '{state_dir}'"));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        !listing.contains("damaged") && !listing.contains("corrupt"),
        "nothing was set aside: {listing}"
    );
    let out = agent.cli(&["state", "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["recovered_from_corruption"], false);
    agent.stop();
}
