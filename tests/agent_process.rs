//! The real `mesh` binary as a user runs it: agents as separate processes on loopback (static
//! peers, no mDNS, so no root is needed), driven and inspected through the CLI. Waits are on
//! conditions with generous ceilings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MESH: &str = env!("CARGO_BIN_EXE_mesh");
const CEILING: Duration = Duration::from_secs(30);

fn mesh(args: &[&str]) -> Output {
    Command::new(MESH).args(args).output().expect("run mesh")
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < CEILING, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
}

impl Agent {
    fn start(dir: &Path, name: &str, key: &Path, peers: &[String]) -> Agent {
        let mut args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            dir.join(name).display().to_string(),
            "--name".into(),
            name.into(),
            "--mesh-key".into(),
            key.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--no-mdns".into(),
        ];
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(MESH)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        let agent = Agent {
            child: Some(child),
            dir: dir.join(name),
            name: name.into(),
        };
        wait_until("the agent's API", || agent.status().ok());
        agent
    }

    fn api(&self) -> String {
        wait_until("api.addr", || {
            std::fs::read_to_string(self.dir.join("api.addr"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
    }

    fn status(&self) -> Result<serde_json::Value, String> {
        let api = std::fs::read_to_string(self.dir.join("api.addr")).map_err(|e| e.to_string())?;
        let out = mesh(&["status", "--json", "--api", api.trim()]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn peers(&self) -> Vec<serde_json::Value> {
        let out = mesh(&["peers", "--json", "--api", &self.api()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn state_of(&self, id: &str) -> Option<String> {
        self.peers()
            .into_iter()
            .find(|p| p["id"] == id)
            .map(|p| p["state"].as_str().unwrap().to_string())
    }

    fn id(&self) -> String {
        self.status().unwrap()["id"].as_str().unwrap().to_string()
    }

    fn quic_addr(&self) -> String {
        self.status().unwrap()["listen_addrs"][0]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn signal(&mut self, sig: &str) {
        let child = self.child.as_mut().expect("running");
        let ok = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = child.wait().unwrap();
        self.child = None;
        eprintln!("{} exited: {status}", self.name);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn key_file(dir: &Path) -> PathBuf {
    let out = mesh(&["key", "generate"]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(key.trim().len(), 64);
    let path = dir.join("mesh.key.shared");
    std::fs::write(&path, key).unwrap();
    path
}

#[test]
fn cli_without_an_agent_says_how_to_start_one() {
    // Port 9 (discard) on loopback: nothing listens there.
    let out = mesh(&["peers", "--api", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mesh agent"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn real_agents_detect_crash_restart_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let a = Agent::start(dir.path(), "alpha", &key, &[]);
    let seed = a.quic_addr();
    let b = Agent::start(dir.path(), "beta", &key, std::slice::from_ref(&seed));
    let mut c = Agent::start(dir.path(), "gamma", &key, std::slice::from_ref(&seed));
    let c_id = c.id();
    for (obs, other) in [(&a, &b), (&b, &a), (&a, &c), (&b, &c)] {
        let id = other.id();
        wait_until("alive", || {
            (obs.state_of(&id).as_deref() == Some("alive")).then_some(())
        });
    }
    // Table output: self first and marked.
    let table = mesh(&["peers", "--api", &a.api()]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().nth(1).unwrap().starts_with("alpha (self)"),
        "{text}"
    );

    c.signal("-KILL");
    for obs in [&a, &b] {
        wait_until("dead after kill -9", || {
            (obs.state_of(&c_id).as_deref() == Some("dead")).then_some(())
        });
    }
    // Restart with the same data dir: same node id, alive again.
    let mut c = Agent::start(dir.path(), "gamma", &key, std::slice::from_ref(&seed));
    assert_eq!(c.id(), c_id, "the node id survives a restart");
    for obs in [&a, &b] {
        wait_until("alive after restart", || {
            (obs.state_of(&c_id).as_deref() == Some("alive")).then_some(())
        });
    }
    c.signal("-TERM");
    for obs in [&a, &b] {
        wait_until("left after SIGTERM", || {
            (obs.state_of(&c_id).as_deref() == Some("left")).then_some(())
        });
    }
}

#[test]
fn bad_mesh_key_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let out = Command::new(MESH)
        .args([
            "agent",
            "--data-dir",
            &dir.path().join("d").display().to_string(),
            "--mesh-key",
            &bad.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("64 hex characters"), "{err}");
}
