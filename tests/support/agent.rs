//! A real `mesh agent` process for tests: started on loopback (no mDNS, static peers, API on
//! a free port), driven through the real CLI, killed when dropped. Shared by
//! the integration tests that run real agents.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MESH: &str = env!("CARGO_BIN_EXE_mesh");
/// Ceiling of every wait: generous, as tests wait on conditions, not times.
pub const CEILING: Duration = Duration::from_secs(60);

pub fn mesh(args: &[&str]) -> Output {
    Command::new(MESH).args(args).output().expect("run mesh")
}

/// The stdout of a command that must have succeeded (its stderr in the panic otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Polls `f` every 50 ms until it returns `Some`, panicking after [`CEILING`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < CEILING, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Agent {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub name: String,
    log: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, name: &str, key: &Path, peers: &[String]) -> Agent {
        Self::start_with(dir, name, key, peers, &[])
    }

    /// Starts an agent with extra `mesh agent` arguments.
    pub fn start_with(
        dir: &Path,
        name: &str,
        key: &Path,
        peers: &[String],
        extra: &[&str],
    ) -> Agent {
        Self::start_wrapped(dir, name, key, peers, extra, &[])
    }

    /// Starts an agent through `wrapper` (a command that runs the rest of its arguments, e.g.
    /// `sh -c 'ulimit -n 1024 && exec "$0" "$@"'`), with extra `mesh agent` arguments.
    pub fn start_wrapped(
        dir: &Path,
        name: &str,
        key: &Path,
        peers: &[String],
        extra: &[&str],
        wrapper: &[&str],
    ) -> Agent {
        Self::start_args(dir, name, Some(key), peers, extra, wrapper)
    }

    /// Starts an agent without `--mesh-key`: it uses (or creates) its data dir's `mesh.key`,
    /// as a fresh device does; for joins with a ticket.
    pub fn start_keyless(dir: &Path, name: &str, extra: &[&str]) -> Agent {
        Self::start_args(dir, name, None, &[], extra, &[])
    }

    fn start_args(
        dir: &Path,
        name: &str,
        key: Option<&Path>,
        peers: &[String],
        extra: &[&str],
        wrapper: &[&str],
    ) -> Agent {
        let mut args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            dir.join(name).display().to_string(),
            "--name".into(),
            name.into(),
        ];
        if let Some(key) = key {
            args.extend(["--mesh-key".to_string(), key.display().to_string()]);
        }
        args.extend(["--listen".into(), "127.0.0.1:0".into(), "--no-mdns".into()]);
        // A test may fix the API address (to reach the same one after a restart).
        if !extra.contains(&"--api") {
            args.extend(["--api".to_string(), "127.0.0.1:0".into()]);
        }
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join(format!("{name}.log"));
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(MESH);
                c
            }
            None => Command::new(MESH),
        };
        let child = command
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn agent");
        let agent = Agent {
            child: Some(child),
            dir: dir.join(name),
            name: name.into(),
            log,
        };
        wait_until("the agent's API", || agent.status().ok());
        agent
    }

    pub fn api(&self) -> String {
        wait_until("api.addr", || {
            std::fs::read_to_string(self.dir.join("api.addr"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
    }

    /// A typed API client of this agent holding its token, as the CLI would find it.
    #[allow(dead_code)]
    pub fn client(&self) -> mesh::api::client::ApiClient {
        let token = std::fs::read_to_string(self.dir.join("api.token"))
            .expect("the agent wrote its API token");
        mesh::api::client::ApiClient::new(&self.api()).with_token(mesh::api::auth::ClientToken {
            token: Some(token.trim().to_string()),
            note: None,
        })
    }

    /// Runs `mesh ARGS --api <this agent>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        // Through the environment: a trailing `--api` would land in `service add ... -- CMD`.
        // The data dir tells the CLI where this agent's API token is.
        Command::new(MESH)
            .args(args)
            .env("MESH_API", self.api())
            .env("MESH_DATA_DIR", &self.dir)
            .output()
            .expect("run mesh")
    }

    /// Runs `mesh ARGS --json` and parses the output; panics with stderr if it fails.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.insert(1.min(all.len()), "--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "mesh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `mesh services --json` of this agent.
    pub fn services(&self) -> Vec<serde_json::Value> {
        self.json(&["services"])
            .as_array()
            .expect("services are an array")
            .clone()
    }

    /// The row of service `name` in this agent's `mesh services`.
    pub fn service(&self, name: &str) -> Option<serde_json::Value> {
        self.services().into_iter().find(|s| s["name"] == name)
    }

    /// Waits until service `name` is in state `want` as this agent sees it.
    pub fn wait_service_state(&self, name: &str, want: &str) -> serde_json::Value {
        wait_until(&format!("{name} {want} on {}", self.name), || {
            self.service(name).filter(|s| s["state"] == want)
        })
    }

    /// The audit trail of this agent (`node: None`) or of another node, asked through it.
    /// The audit trail of `node`, or of this agent's own node (`None`); the merged trail of
    /// the mesh is `mesh events` without `--node`.
    pub fn events(&self, node: Option<&str>) -> Vec<serde_json::Value> {
        let node = node.unwrap_or(self.name.as_str());
        let args = vec!["events", "-n", "1000", "--node", node];
        self.json(&args)["events"]
            .as_array()
            .expect("events are an array")
            .clone()
    }

    pub fn status(&self) -> Result<serde_json::Value, String> {
        let api = std::fs::read_to_string(self.dir.join("api.addr")).map_err(|e| e.to_string())?;
        let out = mesh(&["status", "--json", "--api", api.trim()]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn peers(&self) -> Vec<serde_json::Value> {
        self.json(&["peers"]).as_array().unwrap().clone()
    }

    /// `mesh service add ARGS`, retried while the node it names is not yet in this agent's
    /// document (membership can know a member by name a moment before its record syncs).
    pub fn add_service(&self, args: &[&str]) {
        let mut all = vec!["service", "add"];
        all.extend(args);
        wait_until(&format!("mesh {all:?}"), || {
            let out = self.cli(&all);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                out.status.success() || err.contains("no node named"),
                "mesh {all:?}: {err}"
            );
            out.status.success().then_some(())
        });
    }

    /// Waits until this agent sees `count` alive members (itself included) known by name: a
    /// service can then be placed on any of them by name.
    pub fn wait_members(&self, count: usize) {
        wait_until(
            &format!("{} to know {count} members by name", self.name),
            || {
                let alive = self
                    .peers()
                    .into_iter()
                    .filter(|p| p["state"] == "alive" && p["name"].is_string())
                    .count();
                (alive == count).then_some(())
            },
        );
    }

    pub fn state_of(&self, id: &str) -> Option<String> {
        self.peers()
            .into_iter()
            .find(|p| p["id"] == id)
            .map(|p| p["state"].as_str().unwrap().to_string())
    }

    pub fn id(&self) -> String {
        self.status().unwrap()["id"].as_str().unwrap().to_string()
    }

    /// The agent's QUIC listen address (it also listens on TCP).
    pub fn quic_addr(&self) -> String {
        self.status().unwrap()["listen_addrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.contains("/quic-v1"))
            .expect("a QUIC listen address")
            .to_string()
    }

    /// Sends `sig` (e.g. `-TERM`) to the agent and waits for it to exit.
    pub fn signal(&mut self, sig: &str) {
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

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first: the agent stops its services; SIGKILL would orphan them.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh mesh key in `dir`, from `mesh key generate`.
pub fn key_file(dir: &Path) -> PathBuf {
    let out = mesh(&["key", "generate"]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(key.trim().len(), 64);
    let path = dir.join("mesh.key.shared");
    std::fs::write(&path, key).unwrap();
    path
}

/// The mesh id of the key in an agent's data dir (`mesh.key`).
pub fn key_in(dir: &Path) -> String {
    let key: mesh::admission::MeshKey = std::fs::read_to_string(dir.join("mesh.key"))
        .expect("a mesh.key")
        .trim()
        .parse()
        .expect("a key");
    key.mesh_id().to_string()
}
